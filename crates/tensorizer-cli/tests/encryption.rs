//! keygen, encrypt, decrypt, rekey, and key options on inspect and verify.

use std::path::PathBuf;
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn tz(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tensorizer"));
    c.args(args).env_remove("TENSORIZER_PASSPHRASE");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn keygen_encrypt_verify_rekey_decrypt() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let plain = fixtures().join("tensorizer-2.12.1/dtypes_all_v2.tensors");
    let plain = plain.to_str().unwrap();

    ok(&tz(&["keygen", &p("k1")], &[]));
    assert_eq!(std::fs::read(p("k1")).unwrap().len(), 32);
    let again = tz(&["keygen", &p("k1")], &[]);
    assert_eq!(
        again.status.code(),
        Some(1),
        "keygen must not overwrite a key"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(p("k1")).unwrap().permissions().mode() & 0o777,
        0o600
    );

    ok(&tz(
        &["encrypt", plain, &p("enc"), "--key-file", &p("k1")],
        &[],
    ));
    ok(&tz(&["verify", &p("enc"), "--key-file", &p("k1")], &[]));
    let no_key = tz(&["verify", &p("enc")], &[]);
    assert_eq!(no_key.status.code(), Some(1));
    let said = String::from_utf8_lossy(&no_key.stderr);
    assert!(said.contains("no decryption key was given"), "{said}");
    assert_eq!(
        said.matches("no decryption key").count(),
        1,
        "one line for the file, not one per tensor: {said}"
    );

    ok(&tz(&["keygen", &p("k2")], &[]));
    let wrong = tz(&["verify", &p("enc"), "--key-file", &p("k2")], &[]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("wrong key"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );

    std::fs::write(p("pw"), b"hunter2").unwrap();
    ok(&tz(
        &[
            "rekey",
            &p("enc"),
            &p("enc2"),
            "--old-key-file",
            &p("k1"),
            "--new-passphrase-file",
            &p("pw"),
            "--kdf",
            "min",
        ],
        &[],
    ));
    let listing = tz(
        &["inspect", "--json", &p("enc2")],
        &[("TENSORIZER_PASSPHRASE", "hunter2")],
    );
    ok(&listing);
    let doc: serde_json::Value = serde_json::from_slice(&listing.stdout).unwrap();
    assert_eq!(doc["format_version"], 3);
    assert!(doc["tensors"][0]["sha256"].is_string());

    ok(&tz(
        &[
            "decrypt",
            &p("enc2"),
            &p("back"),
            "--passphrase-file",
            &p("pw"),
        ],
        &[],
    ));
    assert!(
        std::fs::read(p("back")).unwrap() == std::fs::read(plain).unwrap(),
        "round trip must restore the exact bytes"
    );

    ok(&tz(
        &["encrypt", plain, &p("enc3"), "--kdf", "min"],
        &[("TENSORIZER_PASSPHRASE", "from env")],
    ));
    ok(&tz(
        &["verify", &p("enc3")],
        &[("TENSORIZER_PASSPHRASE", "from env")],
    ));
    let missing = tz(&["encrypt", plain, &p("enc4")], &[]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--key-file"));
}

/// `keygen --force` replaces a key with a new file of mode 0600, whatever
/// the old file's mode, and replaces a link at the path instead of
/// writing through it.
#[test]
fn keygen_force_makes_a_private_file_and_never_writes_through_links() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    std::fs::write(p("k"), [1u8; 32]).unwrap();
    std::fs::set_permissions(p("k"), std::fs::Permissions::from_mode(0o644)).unwrap();
    ok(&tz(&["keygen", &p("k"), "--force"], &[]));
    let mode = |n: &str| std::fs::metadata(p(n)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("k"), 0o600);
    assert_ne!(std::fs::read(p("k")).unwrap(), [1u8; 32]);
    std::fs::write(p("target"), b"precious").unwrap();
    std::os::unix::fs::symlink(p("target"), p("link")).unwrap();
    ok(&tz(&["keygen", &p("link"), "--force"], &[]));
    assert_eq!(std::fs::read(p("target")).unwrap(), b"precious");
    assert!(
        !std::fs::symlink_metadata(p("link"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(mode("link"), 0o600);
}

/// A meta tensor of an encrypted file is not authenticated (anyone can make
/// one without the key): `verify`, `load` and `decrypt` refuse it unless it
/// is allowed by name, and a file whose tensors a forger turned into meta
/// tensors never verifies under any key.
#[test]
fn meta_tensors_of_encrypted_files_need_to_be_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let set = fixtures().join("tensorizer-2.12.1");
    let file = set.join("encrypted_meta.tensors");
    let file = file.to_str().unwrap();
    let key = set.join("encrypted_meta.key");
    let key = key.to_str().unwrap();
    let refused = |o: &Output| {
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains("\"meta\"") && err.contains("meta tensor") && err.contains("--allow-meta"),
            "{err}"
        );
    };
    refused(&tz(&["verify", file, "--key-file", key], &[]));
    refused(&tz(&["load", file, "--key-file", key], &[]));
    refused(&tz(&["decrypt", file, &p("plain"), "--key-file", key], &[]));
    assert!(!dir.path().join("plain").exists());
    let o = tz(
        &["verify", file, "--key-file", key, "--allow-meta", "meta"],
        &[],
    );
    ok(&o);
    let said = String::from_utf8_lossy(&o.stdout);
    // 12 + 10 bytes of data were checked, not the 16 bytes the meta tensor claims.
    assert!(
        said.contains("3 tensors OK (MACs: 2") && said.contains(" 22 bytes"),
        "{said}"
    );
    ok(&tz(
        &[
            "decrypt",
            file,
            &p("plain"),
            "--key-file",
            key,
            "--allow-all-meta",
        ],
        &[],
    ));

    // The forger's file: every tensor a meta tensor, written under a key of
    // their own (meta tensors need none). No key verifies it.
    let d = tensorizer::Deserializer::open(file).unwrap();
    let mut s = tensorizer::Serializer::new();
    s.encryption(tensorizer::Encryption::with_key(
        tensorizer::EncryptionKey::random().unwrap(),
    ));
    let ghosts: Vec<_> = d
        .entries()
        .iter()
        .map(|e| {
            (
                e.name.to_string(),
                tensorizer::TensorData::meta(e.dtype.dtype(), e.shape.dims()),
            )
        })
        .collect();
    s.write_state_dict(ghosts).unwrap();
    s.write_to_file(p("forged")).unwrap();
    ok(&tz(&["keygen", &p("random.key")], &[]));
    for k in [key, &p("random.key")] {
        let o = tz(&["verify", &p("forged"), "--key-file", k], &[]);
        assert_eq!(o.status.code(), Some(1));
        refused(&o);
    }
}
