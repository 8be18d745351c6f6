//! Hostile input: truncation at every offset, flipped bytes, absurd counts.
//! Every case must end in an error or a successful parse, never a panic.

use std::path::PathBuf;

use proptest::prelude::*;
use tensorizer_format::{FormatError, Metadata, TensorizerFile};

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Parses everything the way a reader would, returning the first error.
fn parse_all(bytes: &[u8]) -> Result<usize, FormatError> {
    let file = TensorizerFile::parse(bytes)?;
    let mut n = 0;
    for record in file.records() {
        let record = record?;
        // Encrypted data can only be checked after decryption (tensorizer-crypto).
        if !record
            .header
            .crypt_info
            .as_ref()
            .is_some_and(|c| c.is_encrypted())
        {
            record.header.verify(record.data, |_| true)?;
        }
        n += 1;
    }
    Ok(n)
}

#[test]
fn every_truncation_is_an_error() {
    for name in [
        "spec/v1_nested.tensors",
        "tensorizer-2.12.1/long_dims.tensors",
        "spec/v3_enc_pwhash.tensors",
    ] {
        let bytes = fixture(name);
        // The file minus its 8-byte terminator is still complete.
        let complete = bytes.len() - 8;
        assert!(parse_all(&bytes[..complete]).is_ok(), "{name}");
        for cut in 0..complete {
            match parse_all(&bytes[..cut]) {
                Err(_) => {}
                Ok(n) => panic!("{name} cut at {cut} of {} parsed {n} tensors", bytes.len()),
            }
        }
    }
}

#[test]
fn huge_tensor_count_fails_before_allocating() {
    let mut bytes = fixture("spec/v1_plain.tensors");
    bytes[57..65].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let err = Metadata::parse(&bytes).unwrap_err();
    assert!(matches!(err, FormatError::TooManyTensors { .. }), "{err}");
    // metadata_len claiming 2^63 bytes: refused by its bound, before any
    // read or allocation.
    let mut bytes = fixture("spec/v1_plain.tensors");
    bytes[65..73].copy_from_slice(&(1u64 << 63).to_le_bytes());
    let err = Metadata::parse(&bytes).unwrap_err();
    assert!(matches!(err, FormatError::IndexTooLarge { .. }), "{err}");
    // Within the bound but past the bytes given: truncation.
    let mut bytes = fixture("spec/v1_plain.tensors");
    bytes[65..73].copy_from_slice(&(1u64 << 20).to_le_bytes());
    let err = Metadata::parse(&bytes).unwrap_err();
    assert!(matches!(err, FormatError::Truncated { .. }), "{err}");
}

#[test]
fn fixed_errors_are_named() {
    type Mutation = fn(&mut Vec<u8>);
    let cases: &[(&str, Mutation, &str)] = &[
        ("bad magic", |b| b[3] = b'X', "not a tensorizer file"),
        (
            "version",
            |b| b[5] = 99,
            "unsupported data-format version 99",
        ),
        ("flags", |b| b[9] = 4, "unsupported feature flags"),
        (
            "versioned before v5",
            |b| b[9] = 2,
            "versioned_headers (2) is set in a version 1 file",
        ),
        (
            "tensor type",
            |b| b[73 + 2 + 1] = 7,
            "invalid tensor type 7",
        ),
        ("dtype", |b| b[73 + 2 + 1 + 2] = b'x', "invalid dtype"),
    ];
    for (what, mutate, expect) in cases {
        let mut bytes = fixture("spec/v1_plain.tensors");
        mutate(&mut bytes);
        let err = parse_all(&bytes).unwrap_err().to_string();
        assert!(err.contains(expect), "{what}: {err}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Flip bytes anywhere in the file header, the used part of the index, or
    /// the tensor headers: an error or a (consistent) parse, never a panic.
    #[test]
    fn flipped_header_bytes_never_panic(flips in proptest::collection::vec((0usize..4096, any::<u8>()), 1..8)) {
        let mut bytes = fixture("spec/v1_nested.tensors");
        let headers_start = 262_217;
        for (pos, value) in flips {
            // First half of the range hits header and index, second half the records.
            let at = if pos < 2048 { pos % 400 } else { headers_start + (pos - 2048) % (bytes.len() - headers_start) };
            bytes[at] ^= value | 1;
        }
        let _ = parse_all(&bytes);
    }

    /// Arbitrary bytes after a valid magic and header.
    #[test]
    fn random_tails_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut bytes = fixture("spec/v1_plain.tensors")[..65].to_vec();
        bytes.extend_from_slice(&((tail.len() as u64).saturating_sub(8)).to_le_bytes());
        bytes.extend_from_slice(&tail);
        let _ = parse_all(&bytes);
    }
}
