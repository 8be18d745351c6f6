//! The CLI with remote URIs: copy to S3 (moto) and Redis and back, inspect
//! and verify through `s3://` with the `--s3-*` flags and through
//! `redis://`, encrypt straight into S3, and credentials errors.
#![cfg(all(feature = "s3", feature = "redis"))]

#[path = "../../tensorizer-io/tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tensorizer-2.12.1")
        .join(name)
}

fn run(args: &[&str], home: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tensorizer"))
        .args(args)
        // No credentials from the developer's machine leak in.
        .env("HOME", home)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("S3_ACCESS_KEY_ID")
        .env_remove("S3_SECRET_ACCESS_KEY")
        .env_remove("S3_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_S3")
        .env_remove("STORAGE_EMULATOR_HOST")
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .env_remove("AZURE_STORAGE_ACCOUNT")
        .env_remove("AZURE_STORAGE_KEY")
        .env_remove("AZURE_STORAGE_CONNECTION_STRING")
        .env_remove("AZURE_STORAGE_USE_EMULATOR")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the CLI")
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn copy_inspect_verify_and_encrypt_through_s3_and_redis() {
    let moto = support::moto("models");
    let redis = support::redis_server();
    let home = tempfile::tempdir().unwrap();
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    let s3 = [
        "--s3-access-key-id",
        "testing",
        "--s3-secret-access-key",
        "testing",
        "--s3-endpoint",
        &endpoint,
    ];
    let local = fixture("module.tensors");
    let local = local.to_str().unwrap();
    let s3_uri = "s3://models/vllm/module/v1/model.tensors";
    let redis_uri = format!("redis://127.0.0.1:{}/module", redis.port);

    let out = ok(&run(
        &[&["copy", local, s3_uri][..], &s3].concat(),
        home.path(),
    ));
    assert!(out.contains("15 tensors"), "{out}");
    ok(&run(
        &[&["copy", s3_uri, &redis_uri][..], &s3].concat(),
        home.path(),
    ));
    let back = home.path().join("back.tensors");
    ok(&run(
        &["copy", &redis_uri, back.to_str().unwrap()],
        home.path(),
    ));
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(local).unwrap());

    let want: Value =
        serde_json::from_str(&ok(&run(&["inspect", "--json", local], home.path()))).unwrap();
    for uri in [s3_uri, redis_uri.as_str()] {
        let got: Value = serde_json::from_str(&ok(&run(
            &[&["inspect", "--json", uri][..], &s3].concat(),
            home.path(),
        )))
        .unwrap();
        assert_eq!(got["tensors"], want["tensors"], "{uri}");
        if uri.starts_with("s3://") {
            // Redis holds no terminator (as in Python), so only S3 has the same file hash.
            assert_eq!(got["file_sha256"], want["file_sha256"], "{uri}");
        }
        let out = ok(&run(&[&["verify", uri][..], &s3].concat(), home.path()));
        assert!(out.contains("15 tensors OK"), "{out}");
    }

    // Credentials from ~/.s3cfg, as the Python library reads them.
    std::fs::write(
        home.path().join(".s3cfg"),
        format!("[default]\naccess_key = testing\nsecret_key = testing\nhost_base = 127.0.0.1:{}\nuse_https = False\n", moto.port),
    )
    .unwrap();
    let key = home.path().join("k.key");
    ok(&run(&["keygen", key.to_str().unwrap()], home.path()));
    let enc_uri = "s3://models/vllm/module/v1/model-encrypted.tensors";
    ok(&run(
        &[
            "encrypt",
            local,
            enc_uri,
            "--key-file",
            key.to_str().unwrap(),
        ],
        home.path(),
    ));
    let out = ok(&run(
        &["verify", enc_uri, "--key-file", key.to_str().unwrap()],
        home.path(),
    ));
    assert!(out.contains("15 tensors OK"), "{out}");

    // HTTP is read-only; a missing object names the URI.
    let err = run(
        &["copy", local, "http://127.0.0.1:1/x.tensors"],
        home.path(),
    );
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("read-only"));
    let err = run(&["inspect", "s3://models/nope.tensors"], home.path());
    let text = String::from_utf8_lossy(&err.stderr);
    assert!(
        !err.status.success()
            && text.contains("s3://models/nope.tensors")
            && text.contains("no such object"),
        "{text}"
    );
}

/// `copy` between every pair of stores, S3 → GCS → Azure → Redis → disk,
/// each hop byte-exact, with the emulators' flags; then `inspect` and
/// `verify` straight from `gs://` and `az://`.
#[cfg(all(feature = "gcs", feature = "azure"))]
#[test]
fn copy_between_s3_gcs_azure_and_redis() {
    let moto = support::moto("models");
    let gcs = support::fake_gcs("models");
    let azurite = support::azurite("models");
    let redis = support::redis_server();
    let home = tempfile::tempdir().unwrap();
    let (s3_endpoint, gcs_endpoint, azure_endpoint) = (
        format!("http://127.0.0.1:{}", moto.port),
        format!("http://127.0.0.1:{}", gcs.port),
        format!("http://127.0.0.1:{}/devstoreaccount1", azurite.port),
    );
    let flags = [
        "--s3-access-key-id",
        "testing",
        "--s3-secret-access-key",
        "testing",
        "--s3-endpoint",
        &s3_endpoint,
        "--gcs-endpoint",
        &gcs_endpoint,
        "--gcs-anonymous",
        "--azure-use-emulator",
        "--azure-endpoint",
        &azure_endpoint,
    ];
    let local = fixture("encrypted_meta.tensors");
    let local = local.to_str().unwrap();
    let back = home.path().join("back.tensors");
    let redis_uri = format!("redis://127.0.0.1:{}/m", redis.port);
    let hops = [
        local,
        "s3://models/vllm/m/v1/model.tensors",
        "gs://models/vllm/m/v1/model.tensors",
        "az://models/vllm/m/v1/model.tensors",
        &redis_uri,
        back.to_str().unwrap(),
    ];
    for pair in hops.windows(2) {
        ok(&run(
            &[&["copy", pair[0], pair[1]][..], &flags].concat(),
            home.path(),
        ));
    }
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(local).unwrap());

    let key = fixture("encrypted_meta.key");
    let key = key.to_str().unwrap();
    let inspect = |uri: &str| -> Value {
        // The fixture's meta tensor "meta" is the real library's, trusted.
        let args = [
            &[
                "inspect",
                "--json",
                uri,
                "--key-file",
                key,
                "--allow-meta",
                "meta",
            ][..],
            &flags,
        ]
        .concat();
        let mut v: Value = serde_json::from_str(&ok(&run(&args, home.path()))).unwrap();
        v.as_object_mut().unwrap().remove("file");
        v
    };
    let want = inspect(local);
    for uri in &hops[2..4] {
        let got = inspect(uri);
        assert_eq!(got, want, "{uri}");
        ok(&run(
            &[
                &["verify", uri, "--key-file", key, "--allow-meta", "meta"][..],
                &flags,
            ]
            .concat(),
            home.path(),
        ));
    }

    // Without the emulator flags, Azure names what it lacks.
    let o = run(
        &["inspect", "az://models/vllm/m/v1/model.tensors"],
        home.path(),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("no Azure storage account"),
        "{err}"
    );
}
