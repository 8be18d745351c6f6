//! Loading through `http://` URIs (nginx on loopback) gives the same tensors
//! as loading the local file; unknown schemes and missing objects are clear
//! errors.
#![cfg(feature = "http")]

#[path = "../../tensorizer-io/tests/support/mod.rs"]
mod support;

use std::path::PathBuf;

use tensorizer::{Decryption, Deserializer, EncryptionKey, Verify};

#[test]
fn fixtures_load_over_http_like_from_disk() {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tensorizer-2.12.1");
    let nginx = support::Nginx::start(&dir);
    for name in [
        "dtypes_all_v2.tensors",
        "many_tensors.tensors",
        "long_dims.tensors",
        "names.tensors",
    ] {
        let local = Deserializer::open(dir.join(name))
            .unwrap()
            .verify(Verify::All)
            .read_all()
            .unwrap();
        let remote = Deserializer::open_uri(&nginx.url(name))
            .unwrap()
            .verify(Verify::All)
            .read_all()
            .unwrap();
        assert_eq!(local.len(), remote.len());
        for (a, b) in local.iter().zip(&remote) {
            assert_eq!((a.name(), a.as_bytes()), (b.name(), b.as_bytes()), "{name}");
        }
    }
    let key =
        EncryptionKey::from_key_file(&std::fs::read(dir.join("encrypted_random_key.key")).unwrap())
            .unwrap();
    let remote = Deserializer::open_uri(&nginx.url("encrypted_random_key.tensors"))
        .unwrap()
        .decryption(Decryption::Key(key))
        .unwrap()
        .read_all()
        .unwrap();
    assert_eq!(remote.len(), 5);

    let err = Deserializer::open_uri(&nginx.url("missing.tensors"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("404") && err.contains("missing.tensors"),
        "{err}"
    );
    let err = Deserializer::open_uri("ftp://example/model.tensors")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown URI scheme"), "{err}");
}
