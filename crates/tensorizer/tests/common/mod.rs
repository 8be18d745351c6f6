//! Helpers shared by the facade's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use sha2::{Digest, Sha256};
use tensorizer::{PathComponent, Tensor, TensorPath};

/// `tests/fixtures` at the repository root (or `TENSORIZER_FIXTURES`, for
/// test binaries carried to another machine).
pub fn fixtures() -> PathBuf {
    std::env::var_os("TENSORIZER_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures"))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A path as the oracle prints it: a string, or an array of strings and ints.
pub fn path_json(path: &TensorPath) -> serde_json::Value {
    match path.as_plain() {
        Some(p) => p.into(),
        None => path
            .components()
            .iter()
            .map(|c| match c {
                PathComponent::Key(k) => serde_json::Value::from(k.as_str()),
                PathComponent::Index(i) => serde_json::Value::from(*i),
            })
            .collect(),
    }
}

pub fn manifest(set: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join(set).join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The fields of a loaded tensor that the fixture manifests record, minus the
/// offsets (which come from the index).
pub fn tensor_fields(t: &Tensor) -> serde_json::Value {
    serde_json::json!({
        "name": path_json(t.path()),
        "name_hex": hex(&t.path().encode()),
        "dtype": t.dtype().torch_name(),
        "file_dtype": t.dtype_string().as_str(),
        "shape": t.shape(),
        "nbytes": t.as_bytes().len(),
        "sha256": sha256_hex(t.as_bytes()),
        "tensor_type": t.tensor_type().name(),
        "module_idx": t.module_idx(),
        "meta": t.is_meta(),
    })
}

/// The decryption a fixture needs: its `.key` or `.passphrase` file beside it.
#[cfg(feature = "encryption")]
#[allow(dead_code)]
pub fn key_of(path: &std::path::Path) -> Option<tensorizer::Decryption> {
    let key = path.with_extension("key");
    let pass = path.with_extension("passphrase");
    if key.exists() {
        Some(tensorizer::Decryption::Key(
            tensorizer::EncryptionKey::from_key_file(&std::fs::read(key).unwrap()).unwrap(),
        ))
    } else if pass.exists() {
        Some(tensorizer::Decryption::passphrase(
            std::fs::read(pass).unwrap(),
        ))
    } else {
        None
    }
}
