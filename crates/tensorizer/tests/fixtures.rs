//! Every fixture written by the real Python tensorizer 2.12.1 reads with the
//! names, dtypes, shapes and SHA-256 of its manifest; every broken one fails
//! with an error that names the problem; every deterministic one is
//! re-written byte for byte by our serializer.

mod common;

use common::*;
use serde_json::Value;
use tensorizer::{Deserializer, Error, Serializer, UnauthenticatedMeta, Verify};

const SETS: [&str; 2] = ["tensorizer-2.12.1", "tensorizer-2.12.1-extended-dtypes"];

fn fixtures_of(set: &str) -> Vec<Value> {
    manifest(set)["fixtures"].as_array().unwrap().clone()
}

fn is_encrypted(f: &Value) -> bool {
    !f["encryption"].is_null() || f["file"].as_str().unwrap().contains("encrypted")
}

/// The reader's verdict on a broken fixture, and a phrase its message must hold.
fn expected_failure(file: &str) -> Option<&'static str> {
    Some(match file {
        "fail_empty_index.tensors" => "index is empty",
        "fail_empty_name.tensors" => "empty tensor name",
        "corrupt_data_flip.tensors"
        | "corrupt_crc_flip.tensors"
        | "corrupt_header_flip.tensors" => "failed CRC32 verification",
        "corrupt_sha_flip.tensors" => "failed SHA256 verification",
        "corrupt_header_name_flip.tensors" | "corrupt_index_name_flip.tensors" => {
            "disagrees with the index on name"
        }
        "corrupt_truncated_data.tensors" => "but the file has only",
        "corrupt_truncated_header.tensors" => "truncated file header",
        "corrupt_truncated_index.tensors" => "truncated metadata index",
        "corrupt_magic.tensors" => "not a tensorizer file",
        "corrupt_version.tensors" => "unsupported data-format version 99",
        "corrupt_unknown_flag.tensors" => "unsupported feature flags",
        "fail_encrypted_without_key.tensors" => "is encrypted, but no decryption key was given",
        _ => return None,
    })
}

#[test]
fn valid_fixtures_match_their_manifest() {
    let mut files = 0;
    let mut tensors = 0;
    for set in SETS {
        for f in fixtures_of(set) {
            if f["must_fail"].as_bool().unwrap() || is_encrypted(&f) {
                continue;
            }
            let name = f["file"].as_str().unwrap();
            let path = fixtures().join(set).join(name);
            let d = Deserializer::open(&path).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                u64::from(d.metadata().header.version.get()),
                f["format_version"].as_u64().unwrap(),
                "{name}"
            );
            assert_eq!(
                u64::from(d.metadata().header.flags.bits()),
                f["feature_flags"].as_u64().unwrap(),
                "{name}"
            );
            let loaded = d
                .verify(Verify::All)
                .read_all()
                .unwrap_or_else(|e| panic!("{e}"));
            let expected = f["tensors"].as_array().unwrap();
            assert_eq!(loaded.len(), expected.len(), "{name}");
            let entries = Deserializer::open(&path).unwrap();
            for ((t, want), entry) in loaded.iter().zip(expected).zip(entries.entries()) {
                let mut got = tensor_fields(t);
                got["data_length"] = entry.data_length.into();
                got["header_offset"] = entry.header_offset.into();
                got["data_offset"] = entry.data_offset.into();
                assert_eq!(&got, want, "{name}");
                tensors += 1;
            }
            files += 1;
        }
    }
    assert_eq!(files, 22, "fixture count changed");
    assert!(tensors > 1100, "{tensors}");
}

#[test]
fn broken_fixtures_fail_with_clear_errors() {
    let mut checked = 0;
    for set in SETS {
        for f in fixtures_of(set) {
            let name = f["file"].as_str().unwrap();
            let Some(phrase) = expected_failure(name) else {
                continue;
            };
            assert!(f["must_fail"].as_bool().unwrap(), "{name}");
            let path = fixtures().join(set).join(name);
            let err = Deserializer::open(&path)
                .and_then(|d| d.verify(Verify::All).read_all())
                .unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(phrase), "{name}: {msg}");
            assert!(msg.contains(name), "error does not name the file: {msg}");
            checked += 1;
        }
    }
    assert_eq!(checked, 15);
}

/// The Python reader cannot load zero-element or meta tensors of opaque
/// dtypes (FORMAT.md §11 a); we can.
#[test]
fn python_reader_bugs_are_read_correctly() {
    for (set, name) in [
        ("tensorizer-2.12.1", "fail_empty_opaque.tensors"),
        ("tensorizer-2.12.1", "fail_meta_opaque.tensors"),
        (
            "tensorizer-2.12.1-extended-dtypes",
            "fail_empty_float8.tensors",
        ),
    ] {
        let d = Deserializer::open(fixtures().join(set).join(name)).unwrap();
        let tensors = d
            .verify(Verify::All)
            .read_all()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let opaque: Vec<_> = tensors.iter().filter(|t| t.dtype().is_opaque()).collect();
        assert!(!opaque.is_empty(), "{name}");
        for t in opaque {
            let numel: u64 = t.shape().iter().product();
            assert_eq!(
                t.as_bytes().len() as u64,
                numel * t.dtype().itemsize() as u64,
                "{name}"
            );
            assert!(t.as_bytes().iter().all(|&b| b == 0), "{name}");
            assert!(numel == 0 || t.is_meta(), "{name}");
        }
    }
}

/// Encrypted fixtures list from the index alone; their data needs a key
/// (decryption is `tensorizer-crypto`'s), meta tensors in them load as zeros.
#[test]
fn encrypted_fixtures_list_and_refuse_data_without_key() {
    for set in SETS {
        for f in fixtures_of(set)
            .iter()
            .filter(|f| is_encrypted(f) && !f["must_fail"].as_bool().unwrap())
        {
            let name = f["file"].as_str().unwrap();
            // Written by the real library: its meta tensors are trusted.
            let d = Deserializer::open(fixtures().join(set).join(name))
                .unwrap()
                .unauthenticated_meta(UnauthenticatedMeta::AllowAll);
            assert!(d.metadata().header.has_crypt_info(), "{name}");
            for (entry, want) in d.entries().iter().zip(f["tensors"].as_array().unwrap()) {
                assert_eq!(path_json(entry.name.path()), want["name"], "{name}");
                assert_eq!(
                    entry.data_offset,
                    want["data_offset"].as_u64().unwrap(),
                    "{name}"
                );
                let result = d.read(entry.name.path().clone());
                if entry.data_length > 0 {
                    assert!(matches!(result, Err(Error::Encrypted { .. })), "{name}");
                } else {
                    assert_eq!(
                        sha256_hex(result.unwrap().as_bytes()),
                        want["sha256"].as_str().unwrap()
                    );
                }
            }
        }
    }
}

/// Reading a deterministic fixture and writing its tensors back gives the
/// Python writer's bytes exactly.
#[test]
fn deterministic_fixtures_rewrite_byte_identically() {
    let mut rewritten = 0;
    for set in SETS {
        for f in fixtures_of(set) {
            let deterministic = f["deterministic"].as_bool().unwrap();
            let plain_valid = f["category"] == "valid" && !is_encrypted(&f);
            if !(deterministic && plain_valid) {
                continue;
            }
            let name = f["file"].as_str().unwrap();
            let path = fixtures().join(set).join(name);
            let tensors = Deserializer::open(&path).unwrap().read_all().unwrap();
            let mut s = Serializer::new();
            s.write_tensors(&tensors).unwrap();
            let ours = s.to_bytes().unwrap();
            let theirs = std::fs::read(&path).unwrap();
            assert!(ours == theirs, "{name}: our bytes differ from Python's");
            rewritten += 1;
        }
    }
    assert!(rewritten >= 17, "{rewritten}");
}

/// The spec's annotated files (FORMAT.md §10), checked against their manifest.
#[test]
fn spec_fixtures_match_their_manifest() {
    let dir = fixtures().join("spec");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    for (file, m) in manifest.as_object().unwrap() {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        assert_eq!(sha256_hex(&bytes), m["file_sha256"].as_str().unwrap());
        let d = Deserializer::open(dir.join(file))
            .map(|d| d.unauthenticated_meta(UnauthenticatedMeta::AllowAll))
            .unwrap()
            .verify(Verify::All);
        let h = &d.metadata().header;
        assert_eq!(
            u64::from(h.version.get()),
            m["version"].as_u64().unwrap(),
            "{file}"
        );
        assert_eq!(
            u64::from(h.flags.bits()),
            m["flags"].as_u64().unwrap(),
            "{file}"
        );
        assert_eq!(h.tensor_size, m["tensor_size"].as_u64().unwrap(), "{file}");
        for (i, (entry, want)) in d
            .entries()
            .iter()
            .zip(m["tensors"].as_array().unwrap())
            .enumerate()
        {
            let header = d.read_header(i).unwrap();
            assert_eq!(
                String::from_utf8_lossy(entry.name.as_bytes()),
                want["name"].as_str().unwrap()
            );
            assert_eq!(
                u64::from(header.module_idx),
                want["module_idx"].as_u64().unwrap()
            );
            assert_eq!(entry.tensor_type as u64, want["type"].as_u64().unwrap());
            assert_eq!(entry.dtype.as_str(), want["dtype"].as_str().unwrap());
            assert_eq!(serde_json::json!(entry.shape.dims()), want["shape"]);
            assert_eq!(entry.header_offset, want["header_offset"].as_u64().unwrap());
            assert_eq!(entry.header_size(), want["header_size"].as_u64().unwrap());
            assert_eq!(entry.data_length, want["data_length"].as_u64().unwrap());
            if want["encrypted"].as_bool().unwrap() {
                assert!(matches!(d.read_at(i), Err(Error::Encrypted { .. })));
            } else {
                let t = d.read_at(i).unwrap();
                if entry.data_length > 0 {
                    assert_eq!(
                        sha256_hex(t.as_bytes()),
                        want["plaintext_sha256"].as_str().unwrap(),
                        "{file}"
                    );
                }
            }
        }
    }
}
