//! Known answers from libsodium 1.0.18 (see tests/vectors/README.md):
//! secretbox at every length class, nonce increments, HSalsa20 and Argon2id
//! at libsodium's presets, on every keystream backend.

use serde_json::Value;
use sha2::{Digest, Sha256};
use tensorizer_crypto::{Backend, EncryptionKey, KdfParams, Nonce, hsalsa20, open, seal};

fn vectors() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/libsodium.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn secretbox_matches_libsodium() {
    let v = vectors();
    let cases = v["secretbox"].as_array().unwrap();
    assert_eq!(cases.len(), 11);
    for (i, c) in cases.iter().enumerate() {
        let n = c["len"].as_u64().unwrap() as usize;
        let key = EncryptionKey::from_slice(&unhex(c["key"].as_str().unwrap())).unwrap();
        let nonce = Nonce(unhex(c["nonce"].as_str().unwrap()).try_into().unwrap());
        let plain: Vec<u8> = (0..n).map(|j| ((j * 131 + i) % 251) as u8).collect();
        for backend in Backend::available() {
            let mut buf = plain.clone();
            let mac = seal(backend, &key, &nonce, &mut buf);
            assert_eq!(
                hex(&mac),
                c["mac"].as_str().unwrap(),
                "len {n} {}",
                backend.name()
            );
            match c.get("ciphertext") {
                Some(ct) => assert_eq!(hex(&buf), ct.as_str().unwrap()),
                None => assert_eq!(
                    hex(&Sha256::digest(&buf)),
                    c["ciphertext_sha256"].as_str().unwrap()
                ),
            }
            assert!(
                open(backend, &key, &nonce, &mut buf, &mac),
                "open len {n} {}",
                backend.name()
            );
            assert_eq!(buf, plain);
        }
    }
}

#[test]
fn nonce_increment_matches_sodium_increment() {
    for c in vectors()["increment"].as_array().unwrap() {
        let n = Nonce(unhex(c["in"].as_str().unwrap()).try_into().unwrap());
        assert_eq!(hex(&n.add(1).0), c["out"].as_str().unwrap());
    }
}

#[test]
fn hsalsa20_matches_libsodium() {
    for c in vectors()["hsalsa20"].as_array().unwrap() {
        let key: [u8; 32] = unhex(c["key"].as_str().unwrap()).try_into().unwrap();
        let input: [u8; 16] = unhex(c["input"].as_str().unwrap()).try_into().unwrap();
        assert_eq!(hex(&hsalsa20(&key, &input)), c["out"].as_str().unwrap());
    }
}

#[test]
fn argon2id_matches_crypto_pwhash() {
    for c in vectors()["pwhash"].as_array().unwrap() {
        let salt: [u8; 16] = unhex(c["salt"].as_str().unwrap()).try_into().unwrap();
        let params = KdfParams::with_salt(
            c["opslimit"].as_u64().unwrap(),
            c["memlimit"].as_u64().unwrap(),
            salt,
        )
        .unwrap();
        let started = std::time::Instant::now();
        let key =
            EncryptionKey::derive(c["passphrase"].as_str().unwrap().as_bytes(), &params).unwrap();
        println!(
            "argon2id ops {} mem {}: {:.3} s",
            params.opslimit,
            params.memlimit,
            started.elapsed().as_secs_f64()
        );
        assert_eq!(hex(key.as_bytes()), c["key"].as_str().unwrap());
    }
}

#[test]
fn keys_are_redacted_and_validated() {
    let key = EncryptionKey::from_bytes([0xab; 32]);
    assert_eq!(format!("{key:?}"), "EncryptionKey(<redacted>)");
    assert!(EncryptionKey::from_slice(&[0; 31]).is_err());
    let hex_file = format!("{}\n", "ab".repeat(32));
    assert_eq!(
        EncryptionKey::from_key_file(hex_file.as_bytes())
            .unwrap()
            .as_bytes(),
        key.as_bytes()
    );
    assert!(EncryptionKey::from_key_file(b"short").is_err());
    assert!(EncryptionKey::derive(b"", &KdfParams::with_salt(1, 8192, [0; 16]).unwrap()).is_err());
    assert!(KdfParams::with_salt(0, 8192, [0; 16]).is_err());
    assert!(
        KdfParams::with_salt(2, 1 << 50, [0; 16])
            .unwrap_err()
            .to_string()
            .contains("memlimit")
    );
    assert!(
        KdfParams::from_stored(1, 8192, &[0; 8])
            .unwrap_err()
            .to_string()
            .contains("salt")
    );
}
