//! Encrypted files: every encrypted fixture decrypts to its manifest; with
//! the fixtures' key, salt and nonces our writer reproduces them byte for
//! byte; each kind of damage is a distinct error naming tensor and chunk;
//! and the Python library reads what we encrypt and we read what it does.
#![cfg(feature = "encryption")]

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tensorizer::format::{CryptChunk, FormatVersion, TensorHeader};
use tensorizer::{
    Decryption, Deserializer, Dtype, Encryption, EncryptionKey, Error, KdfParams, KdfStrength,
    Nonce, Serializer, TensorData, UnauthenticatedMeta, Verify,
};

fn decryption_for(dir: &Path, enc: &Value) -> Decryption {
    if let Some(k) = enc["key_file"].as_str() {
        Decryption::Key(EncryptionKey::from_key_file(&std::fs::read(dir.join(k)).unwrap()).unwrap())
    } else {
        Decryption::passphrase(
            std::fs::read(dir.join(enc["passphrase_file"].as_str().unwrap())).unwrap(),
        )
    }
}

#[test]
fn encrypted_fixtures_decrypt_to_their_manifest() {
    let mut files = 0;
    for set in ["tensorizer-2.12.1", "tensorizer-2.12.1-extended-dtypes"] {
        let dir = fixtures().join(set);
        for f in manifest(set)["fixtures"].as_array().unwrap() {
            if f["encryption"].is_null() || f["must_fail"].as_bool().unwrap() {
                continue;
            }
            let name = f["file"].as_str().unwrap();
            // Written by the real library: its meta tensors are trusted.
            let d = Deserializer::open(dir.join(name))
                .unwrap()
                .verify(Verify::All)
                .unauthenticated_meta(UnauthenticatedMeta::AllowAll);
            let d = d
                .decryption(decryption_for(&dir, &f["encryption"]))
                .unwrap();
            let tensors = d.read_all().unwrap_or_else(|e| panic!("{e}"));
            for (t, want) in tensors.iter().zip(f["tensors"].as_array().unwrap()) {
                assert_eq!(path_json(t.path()), want["name"], "{name}");
                assert_eq!(
                    sha256_hex(t.as_bytes()),
                    want["sha256"].as_str().unwrap(),
                    "{name}: {}",
                    t.name()
                );
            }
            files += 1;
        }
    }
    let spec = fixtures().join("spec");
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(spec.join("manifest.json")).unwrap())
            .unwrap();
    for (file, fm) in m.as_object().unwrap() {
        let Some(key) = fm["key_hex"].as_str() else {
            continue;
        };
        let key = EncryptionKey::from_key_file(key.as_bytes()).unwrap();
        let d = Deserializer::open(spec.join(file))
            .unwrap()
            .verify(Verify::All)
            .unauthenticated_meta(UnauthenticatedMeta::AllowAll)
            .decryption(Decryption::Key(key))
            .unwrap();
        for (t, want) in d
            .read_all()
            .unwrap()
            .iter()
            .zip(fm["tensors"].as_array().unwrap())
        {
            if want["data_length"].as_u64().unwrap() > 0 {
                assert_eq!(
                    sha256_hex(t.as_bytes()),
                    want["plaintext_sha256"].as_str().unwrap(),
                    "{file}"
                );
            }
        }
        files += 1;
    }
    assert_eq!(files, 9);
}

/// Re-encrypts the tensors of `path` with `encryption` and returns our bytes.
fn reencrypt(path: &Path, decryption: Decryption, encryption: Encryption) -> Vec<u8> {
    let tensors = Deserializer::open(path)
        .unwrap()
        .unauthenticated_meta(UnauthenticatedMeta::AllowAll)
        .decryption(decryption)
        .unwrap()
        .read_all()
        .unwrap();
    let mut s = Serializer::new();
    s.encryption(encryption);
    s.write_tensors(&tensors).unwrap();
    s.to_bytes().unwrap()
}

fn spec_nonces() -> Vec<Nonce> {
    (0..8)
        .map(|k| {
            Nonce(
                Sha256::digest(format!("tensorizer-fixture-nonce-{k}"))[..24]
                    .try_into()
                    .unwrap(),
            )
        })
        .collect()
}

#[test]
fn writer_reproduces_encrypted_fixtures_byte_for_byte() {
    // FORMAT.md §10.2 and the spec fixtures: key 00..1f, and "pw" via Argon2id.
    let spec = fixtures().join("spec");
    let key = EncryptionKey::from_bytes(std::array::from_fn(|i| i as u8));
    let path = spec.join("v4_enc_key_meta.tensors");
    let ours = reencrypt(
        &path,
        Decryption::Key(key.clone()),
        Encryption::with_key(key).with_nonces(spec_nonces()),
    );
    assert!(
        ours == std::fs::read(&path).unwrap(),
        "v4_enc_key_meta differs"
    );

    let params = KdfParams::with_salt(1, 8192, std::array::from_fn(|i| i as u8)).unwrap();
    let path = spec.join("v3_enc_pwhash.tensors");
    let enc = Encryption::from_passphrase(b"pw", params)
        .unwrap()
        .with_nonces(spec_nonces());
    let ours = reencrypt(&path, Decryption::passphrase("pw"), enc);
    assert!(
        ours == std::fs::read(&path).unwrap(),
        "v3_enc_pwhash differs"
    );

    // The real 2.12.1 writer's deterministic encrypted fixture.
    let set = fixtures().join("tensorizer-2.12.1");
    let f = manifest("tensorizer-2.12.1")["fixtures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["file"] == "encrypted_deterministic.tensors")
        .unwrap()
        .clone();
    let nonces: Vec<Nonce> = f["nonces_hex"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| Nonce(unhex(h.as_str().unwrap()).try_into().unwrap()))
        .collect();
    let key = EncryptionKey::from_key_file(
        &std::fs::read(set.join("encrypted_deterministic.key")).unwrap(),
    )
    .unwrap();
    let path = set.join("encrypted_deterministic.tensors");
    let ours = reencrypt(
        &path,
        Decryption::Key(key.clone()),
        Encryption::with_key(key).with_nonces(nonces),
    );
    assert!(
        ours == std::fs::read(&path).unwrap(),
        "encrypted_deterministic differs"
    );
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn broken_encrypted_fixtures_fail_clearly() {
    let dir = fixtures().join("tensorizer-2.12.1");
    let key_of = |name: &str| {
        Decryption::Key(
            EncryptionKey::from_key_file(&std::fs::read(dir.join(name)).unwrap()).unwrap(),
        )
    };
    let read = |file: &str, d: Option<Decryption>| {
        let mut r = Deserializer::open(dir.join(file))?;
        if let Some(d) = d {
            r = r.decryption(d)?;
        }
        r.read_all()
    };
    let err = read(
        "corrupt_encrypted_flip.tensors",
        Some(key_of("corrupt_encrypted_flip.key")),
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::Decryption { .. }) && err.to_string().contains("chunk"),
        "{err}"
    );
    let err = read(
        "corrupt_wrong_key.tensors",
        Some(key_of("corrupt_wrong_key.key")),
    )
    .unwrap_err();
    assert!(err.to_string().contains("wrong key or passphrase"), "{err}");
    let pw = std::fs::read(dir.join("corrupt_wrong_passphrase.passphrase")).unwrap();
    let err = read(
        "corrupt_wrong_passphrase.tensors",
        Some(Decryption::passphrase(pw)),
    )
    .unwrap_err();
    assert!(err.to_string().contains("check the passphrase"), "{err}");
    let err = read(
        "fail_key_on_plain.tensors",
        Some(key_of("fail_key_on_plain.key")),
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::NotEncrypted { version: 1, .. }),
        "{err}"
    );
    let err = read("fail_encrypted_without_key.tensors", None).unwrap_err();
    assert!(matches!(err, Error::Encrypted { .. }), "{err}");
}

/// A passphrase-encrypted file with a 3-chunk tensor, written by us.
fn sample(dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = dir.join("enc.tensors");
    let big: Vec<u8> = (0..(5 << 20) + 123)
        .map(|i: usize| (i * 31 % 251) as u8)
        .collect();
    let small = [1.5f32, -2.0];
    let mut s = Serializer::new();
    s.encryption(
        Encryption::from_passphrase(b"secret", KdfParams::new(KdfStrength::Min).unwrap()).unwrap(),
    );
    s.write_state_dict([
        ("small", TensorData::from_slice(&[2], &small).unwrap()),
        (
            "big",
            TensorData::new(Dtype::U8, &[big.len() as u64], &big).unwrap(),
        ),
        ("empty", TensorData::new(Dtype::F32, &[0, 3], &[]).unwrap()),
        ("ghost", TensorData::meta(Dtype::F16, &[4])),
    ])
    .unwrap();
    let summary = s.write_to_file(&path).unwrap();
    assert_eq!(summary.version, 4); // encrypted + meta
    (path, big)
}

fn open_pw(path: &Path, pw: &str) -> tensorizer::Result<Vec<tensorizer::Tensor>> {
    Deserializer::open(path)?
        .verify(Verify::All)
        // The meta tensors these tests write themselves.
        .unauthenticated_meta(UnauthenticatedMeta::Allow(vec!["ghost".into(), "m".into()]))
        .decryption(Decryption::passphrase(pw))?
        .read_all()
}

/// Rewrites the header of tensor `i` after `change` edits it (same length).
fn tamper_header(path: &Path, i: usize, change: impl FnOnce(&mut TensorHeader)) {
    let d = Deserializer::open(path).unwrap();
    let mut h = d.read_header(i).unwrap();
    change(&mut h);
    let bytes = h.encode().unwrap();
    assert_eq!(bytes.len() as u64, d.entries()[i].header_size());
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(&bytes, d.entries()[i].header_offset)
        .unwrap();
}

fn parallel(h: &mut TensorHeader) -> (&mut [u8; 24], &mut Vec<[u8; 16]>) {
    for c in &mut h.crypt_info.as_mut().unwrap().chunks {
        if let CryptChunk::XSalsa20Parallel { nonce, macs, .. } = c {
            return (nonce, macs);
        }
    }
    panic!("no cipher chunk")
}

#[test]
fn each_kind_of_damage_is_a_distinct_error() {
    let dir = tempfile::tempdir().unwrap();
    let (path, big) = sample(dir.path());
    let ok = open_pw(&path, "secret").unwrap();
    assert_eq!(ok[1].as_bytes(), &big[..]);
    assert!(ok[2].as_bytes().is_empty() && ok[3].is_meta());

    let expect = |file: &Path, pw: &str, phrase: &str| {
        let err = match open_pw(file, pw) {
            Ok(_) => panic!("{} with {pw:?} loaded, expected {phrase:?}", file.display()),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(phrase), "expected {phrase:?} in: {err}");
        assert!(
            err.contains("tensor \""),
            "error must name the tensor: {err}"
        );
    };
    expect(&path, "wrong", "none of the 1 chunks authenticates");
    expect(&path, "wrong", "check the passphrase");

    let copy = |name: &str| {
        let p = dir.path().join(name);
        std::fs::copy(&path, &p).unwrap();
        p
    };
    let d = Deserializer::open(&path).unwrap();
    let big_at = d.entries()[1].data_offset;

    let p = copy("flip_data.tensors");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    // Flip bits of the stored ciphertext byte (a byte derived from the
    // plaintext would equal it one run in 256).
    let at = big_at + (2 << 20) + 5;
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[byte[0] ^ 0x55], at).unwrap();
    expect(&p, "secret", "chunk 1 of 3 failed authentication");

    let p = copy("flip_mac.tensors");
    tamper_header(&p, 1, |h| parallel(h).1[2][0] ^= 1);
    expect(&p, "secret", "chunk 2 of 3 failed authentication");

    let p = copy("flip_nonce.tensors");
    tamper_header(&p, 1, |h| parallel(h).0[7] ^= 1);
    expect(&p, "secret", "none of the 3 chunks authenticates");

    let p = copy("swap.tensors");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    let mut c0 = vec![0u8; 2 << 20];
    let mut c1 = vec![0u8; 2 << 20];
    f.read_exact_at(&mut c0, big_at).unwrap();
    f.read_exact_at(&mut c1, big_at + (2 << 20)).unwrap();
    f.write_all_at(&c1, big_at).unwrap();
    f.write_all_at(&c0, big_at + (2 << 20)).unwrap();
    expect(&p, "secret", "chunks 0 and 1 of 3 are swapped");

    let p = copy("kdf_salt.tensors");
    tamper_header(&p, 1, |h| {
        if let CryptChunk::KeyDerivation(k) = &mut h.crypt_info.as_mut().unwrap().chunks[0] {
            k.salt[0] ^= 1;
        }
    });
    expect(&p, "secret", "none of the 3 chunks authenticates");

    let p = copy("kdf_mem.tensors");
    tamper_header(&p, 1, |h| {
        if let CryptChunk::KeyDerivation(k) = &mut h.crypt_info.as_mut().unwrap().chunks[0] {
            k.memlimit = 1 << 50;
        }
    });
    expect(&p, "secret", "memlimit");

    let p = copy("truncated_macs.tensors");
    tamper_header(&p, 1, |h| {
        if let CryptChunk::XSalsa20Parallel { chunk_size, .. } =
            &mut h.crypt_info.as_mut().unwrap().chunks[1]
        {
            *chunk_size = 4 << 20; // 5 MiB of data in 4 MiB chunks needs 2 MACs, 3 are stored
        }
    });
    expect(&p, "secret", "need 2 MACs, but 3 are stored");
}

#[test]
fn raw_key_files_need_the_key_not_a_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.tensors");
    let key = EncryptionKey::random().unwrap();
    let data = [7i64; 3];
    let mut s = Serializer::new();
    s.encryption(Encryption::with_key(key.clone()));
    s.write_state_dict([("x", TensorData::from_slice(&[3], &data).unwrap())])
        .unwrap();
    s.write_to_file(&path).unwrap();
    let err = open_pw(&path, "anything").unwrap_err();
    assert!(
        err.to_string().contains("no key-derivation record"),
        "{err}"
    );
    let t = Deserializer::open(&path)
        .unwrap()
        .decryption(Decryption::Key(key))
        .unwrap()
        .read("x")
        .unwrap();
    assert_eq!(t.as_slice::<i64>().unwrap(), &data);
    // Without a key: listing works, data does not.
    let d = Deserializer::open(&path).unwrap();
    assert_eq!(d.entries().len(), 1);
    assert!(matches!(d.read("x"), Err(Error::Encrypted { .. })));
}

#[test]
fn rewrite_encrypts_decrypts_and_rekeys() {
    let dir = tempfile::tempdir().unwrap();
    let plain = fixtures().join("tensorizer-2.12.1/module.tensors");
    let enc = dir.path().join("enc.tensors");
    let re = dir.path().join("re.tensors");
    let back = dir.path().join("back.tensors");
    let k1 = EncryptionKey::random().unwrap();
    tensorizer::rewrite(&plain, &enc, None, Some(Encryption::with_key(k1.clone()))).unwrap();
    let params = KdfParams::new(KdfStrength::Min).unwrap();
    tensorizer::rewrite(
        &enc,
        &re,
        Some(Decryption::Key(k1)),
        Some(Encryption::from_passphrase(b"pw2", params).unwrap()),
    )
    .unwrap();
    tensorizer::rewrite(&re, &back, Some(Decryption::passphrase("pw2")), None).unwrap();
    assert!(
        std::fs::read(&back).unwrap() == std::fs::read(&plain).unwrap(),
        "decrypted copy must equal the original bytes"
    );
}

fn oracle_python() -> PathBuf {
    PathBuf::from(std::env::var_os("TENSORIZER_ORACLE_PYTHON").unwrap_or_else(|| {
        panic!("TENSORIZER_ORACLE_PYTHON is not set; run `cargo xtask test` or export TENSORIZER_ORACLE_PYTHON=$(bash scripts/setup_oracle.sh | tail -n1)")
    }))
}

#[test]
fn python_reads_ours_and_we_read_pythons() {
    let py = oracle_python();
    let dir = tempfile::tempdir().unwrap();
    let (_, big) = sample(dir.path());
    let ours_key = dir.path().join("ours_key.tensors");
    let key = EncryptionKey::random().unwrap();
    let bf: Vec<half::bf16> = (0..3000).map(|i| half::bf16::from_f32(i as f32)).collect();
    let mut s = Serializer::new();
    s.encryption(Encryption::with_key(key.clone()));
    s.write_state_dict([
        ("bf", TensorData::from_slice(&[3000], &bf).unwrap()),
        (
            "big",
            TensorData::new(Dtype::U8, &[big.len() as u64], &big).unwrap(),
        ),
    ])
    .unwrap();
    s.write_to_file(&ours_key).unwrap();

    // Python writes with random nonces; we must read it back.
    std::fs::write(dir.path().join("big.bin"), &big).unwrap();
    let spec_key = json!({"encryption": {"key_hex": hex(key.as_bytes())},
        "tensors": [{"name": "big", "dtype": "uint8", "shape": [big.len()], "data": {"file": "big.bin", "offset": 0}}]});
    let spec_pw = json!({"encryption": {"passphrase": "pyth0n", "opslimit": "MIN", "memlimit": "MIN"},
        "tensors": [{"name": "big", "dtype": "uint8", "shape": [big.len()], "data": {"file": "big.bin", "offset": 0}},
                    {"name": "m", "dtype": "float16", "shape": [2, 2], "data": "meta"}]});
    for (name, spec) in [("spec_key.json", &spec_key), ("spec_pw.json", &spec_pw)] {
        std::fs::write(dir.path().join(name), serde_json::to_vec(spec).unwrap()).unwrap();
    }
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let jobs = json!([
        {"op": "read", "file": p("enc.tensors"), "passphrase": "secret"},
        {"op": "read", "file": p("ours_key.tensors"), "key_hex": hex(key.as_bytes())},
        {"op": "write", "spec": p("spec_key.json"), "out": p("py_key.tensors")},
        {"op": "write", "spec": p("spec_pw.json"), "out": p("py_pw.tensors")},
    ]);
    std::fs::write(
        dir.path().join("jobs.json"),
        serde_json::to_vec(&jobs).unwrap(),
    )
    .unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/oracle_batch.py");
    let out = Command::new(&py)
        .arg(&script)
        .arg(dir.path().join("jobs.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    for r in &results {
        assert_eq!(r["ok"], true, "{}", r["error"]);
    }
    let big_sha = sha256_hex(&big);
    let py_pw = &results[0]["info"]["tensors"];
    assert_eq!(py_pw[1]["sha256"], big_sha.as_str());
    assert_eq!(
        py_pw[2]["shape"],
        json!([0, 3]),
        "our encrypted zero-byte tensor reads in Python"
    );
    assert_eq!(
        py_pw[3]["sha256"],
        sha256_hex(&[0u8; 8]),
        "meta tensor loads as zeros"
    );
    assert_eq!(
        results[1]["info"]["tensors"][0]["sha256"],
        sha256_hex(bytemuck_bytes(&bf))
    );

    let ours = Deserializer::open(dir.path().join("py_key.tensors"))
        .unwrap()
        .verify(Verify::All)
        .decryption(Decryption::Key(key))
        .unwrap();
    assert_eq!(sha256_hex(ours.read("big").unwrap().as_bytes()), big_sha);
    let ours = open_pw(&dir.path().join("py_pw.tensors"), "pyth0n").unwrap();
    assert_eq!(sha256_hex(ours[0].as_bytes()), big_sha);
    assert!(ours[1].is_meta());
}

fn bytemuck_bytes(v: &[half::bf16]) -> &[u8] {
    bytemuck::cast_slice(v)
}

/// Key-derivation parameters come from the file: one asking for more work
/// than the strongest preset the Python library writes is refused at once
/// (a 3-tensor file with opslimit 1024 was still deriving after 60 s), and
/// opens when the caller raises the limit explicitly.
#[test]
fn key_derivation_work_is_bounded_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hard.tensors");
    let params = KdfParams::with_salt(5, 8192, [3; 16]).unwrap();
    let data = [1.0f32, 2.0, 3.0];
    let mut s = Serializer::new();
    s.write_state_dict(["a", "b", "c"].map(|n| (n, TensorData::from_slice(&[3], &data).unwrap())))
        .unwrap();
    s.encryption(Encryption::from_passphrase(b"pw", params).unwrap());
    s.write_to_file(&path).unwrap();
    let started = std::time::Instant::now();
    let err = Deserializer::open(&path)
        .unwrap()
        .decryption(Decryption::passphrase("pw"))
        .unwrap()
        .read_all()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("opslimit 5") && err.contains("kdf_limits"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let loaded = Deserializer::open(&path)
        .unwrap()
        .decryption(Decryption::passphrase("pw"))
        .unwrap()
        .kdf_limits(tensorizer::KdfLimits {
            max_opslimit: 5,
            ..Default::default()
        })
        .read_all()
        .unwrap();
    assert_eq!(loaded.len(), 3);
    assert_eq!(loaded[2].as_slice::<f32>().unwrap(), data);
}

/// What an attacker without the key makes of an encrypted file: every
/// record rewritten with `data_length = 0` (a meta tensor, loading as
/// zeros), its hashes dropped; its crypt-info block kept or, the careful
/// forger, emptied as in a genuine meta record.
fn forge_meta(input: &Path, out: &Path, keep_crypt_info: bool, version: u32) {
    let d = Deserializer::open(input).unwrap();
    let mut meta = d.metadata().clone();
    meta.header.version = FormatVersion::new(version).unwrap();
    meta.header.tensor_size = 0;
    let mut records = Vec::new();
    let mut offset = meta.records_offset();
    for (i, entry) in meta.entries.iter_mut().enumerate() {
        let mut h = d.read_header(i).unwrap();
        h.data_length = 0;
        h.hashes.clear();
        if !keep_crypt_info && let Some(info) = &mut h.crypt_info {
            info.chunks.clear();
        }
        let bytes = h.encode().unwrap();
        entry.header_offset = offset;
        entry.data_offset = offset + bytes.len() as u64;
        entry.data_length = 0;
        offset = entry.data_offset;
        records.extend(bytes);
    }
    let mut file = meta.encode().unwrap();
    file.extend(records);
    std::fs::write(out, file).unwrap();
}

#[test]
fn meta_tensors_of_an_encrypted_file_are_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = sample(dir.path());
    let pw = || Decryption::passphrase("secret");
    let refused = |e: &Error| {
        let msg = e.to_string();
        assert!(
            matches!(e, Error::Unverifiable { .. }) && msg.contains("meta tensor"),
            "{msg}"
        );
    };

    // A genuine meta tensor: refused by keyed loads and by checks by
    // default, accepted when named.
    let d = Deserializer::open(&path)
        .unwrap()
        .verify(Verify::All)
        .decryption(pw())
        .unwrap();
    refused(&d.read_all().unwrap_err());
    let checks = d.check_strict(|_| true, false);
    refused(checks[3].outcome.as_ref().unwrap_err());
    assert!(checks[..3].iter().all(|c| c.outcome.is_ok()));
    let d = d.unauthenticated_meta(UnauthenticatedMeta::Allow(vec!["ghost".into()]));
    assert!(d.read_all().unwrap()[3].is_meta());
    // Without a key, checking the file refuses it too.
    let keyless = Deserializer::open(&path).unwrap().verify(Verify::All);
    refused(
        keyless.check_strict(|_| true, false)[3]
            .outcome
            .as_ref()
            .unwrap_err(),
    );
    // decrypt and rekey go through the same loads.
    let out = dir.path().join("plain.tensors");
    let e = tensorizer::rewrite(&path, &out, Some(pw()), None).unwrap_err();
    refused(&e);
    assert!(!out.exists());

    // Forged: MACs kept for data that is no longer there. The header
    // itself is refused, whatever the key and policy.
    let forged = dir.path().join("forged.tensors");
    forge_meta(&path, &forged, true, 4);
    let d = Deserializer::open(&forged)
        .unwrap()
        .verify(Verify::All)
        .unauthenticated_meta(UnauthenticatedMeta::AllowAll)
        .decryption(Decryption::Key(EncryptionKey::random().unwrap()))
        .unwrap();
    let e = d.read("small").unwrap_err().to_string();
    assert!(
        e.contains("cipher chunk(s) for a record that stores no data"),
        "{e}"
    );
    assert!(
        d.check_strict(|_| true, false)
            .iter()
            .any(|c| c.outcome.is_err())
    );

    // Forged carefully (empty crypt info, as a genuine meta record): every
    // tensor refused with a wrong key as with the right one.
    forge_meta(&path, &forged, false, 4);
    for key in [pw(), Decryption::Key(EncryptionKey::random().unwrap())] {
        let d = Deserializer::open(&forged)
            .unwrap()
            .verify(Verify::All)
            .decryption(key)
            .unwrap();
        let checks = d.check_strict(|_| true, false);
        let meta: Vec<_> = checks
            .iter()
            .filter(|c| c.stored.unwrap().has_data)
            .collect();
        assert!(meta.is_empty(), "the forger left no data");
        for c in checks.iter().filter(|c| c.name.to_string() != "empty") {
            refused(c.outcome.as_ref().unwrap_err());
            assert!(!c.stored.unwrap().macs, "a MAC over no data checks nothing");
        }
        assert!(d.read_all().is_err());
    }

    // A data version below 4 has no meta tensors: such a file is refused
    // when opened.
    forge_meta(&path, &forged, false, 3);
    let e = Deserializer::open(&forged).unwrap_err().to_string();
    assert!(e.contains("which data version 3 does not have"), "{e}");
}
