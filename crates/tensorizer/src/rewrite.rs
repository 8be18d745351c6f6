//! Re-writing a file with other encryption: encrypt, decrypt, change keys.

use std::path::Path;

use tensorizer_io::StorageOptions;

use crate::encryption::{Decryption, Encryption};
use crate::error::Result;
use crate::{Deserializer, ProgressFn, Serializer, UnauthenticatedMeta, Verify, WriteSummary};

/// Reads `input` (decrypting with `decryption` if given, every hash checked)
/// and writes the same tensors to `output` (encrypted with `encryption` if
/// given): module indices, types, dtype spellings and meta tensors are kept,
/// so an unencrypted result is byte-identical to what Python would write.
///
/// The whole model is held in memory. `output` is replaced atomically.
pub fn rewrite(
    input: &Path,
    output: &Path,
    decryption: Option<Decryption>,
    encryption: Option<Encryption>,
) -> Result<WriteSummary> {
    rewrite_uri(
        &input.to_string_lossy(),
        &output.to_string_lossy(),
        &StorageOptions::default(),
        decryption,
        encryption,
    )
}

/// [`rewrite`] between URIs: local paths, `s3://`, `redis://`, and
/// `http(s)://` as input.
pub fn rewrite_uri(
    input: &str,
    output: &str,
    storage: &StorageOptions,
    decryption: Option<Decryption>,
    encryption: Option<Encryption>,
) -> Result<WriteSummary> {
    rewrite_with_progress(
        input,
        output,
        storage,
        decryption,
        encryption,
        UnauthenticatedMeta::Refuse,
        None,
    )
}

/// [`rewrite_uri`], keeping the meta tensors of an encrypted input that
/// `meta` allows (see [`Deserializer::unauthenticated_meta`]) and calling
/// `progress` after every tensor read.
pub fn rewrite_with_progress(
    input: &str,
    output: &str,
    storage: &StorageOptions,
    decryption: Option<Decryption>,
    encryption: Option<Encryption>,
    meta: UnauthenticatedMeta,
    progress: Option<ProgressFn>,
) -> Result<WriteSummary> {
    let mut reader = Deserializer::open_uri_with(input, storage)?
        .verify(Verify::All)
        .unauthenticated_meta(meta);
    if let Some(f) = progress {
        reader = reader.on_progress(move |p| f(p));
    }
    if let Some(d) = decryption {
        reader = reader.decryption(d)?;
    }
    let tensors = reader.read_all()?;
    let mut s = Serializer::new();
    if let Some(e) = encryption {
        s.encryption(e);
    }
    s.write_tensors(&tensors)?;
    s.write_to_uri_with(output, storage)
}
