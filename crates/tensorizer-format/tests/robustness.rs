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

/// A safetensors file of `json` plus `data` bytes.
fn safetensors_file(json: &str, data: usize) -> Vec<u8> {
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out.resize(out.len() + data, 0xa5);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// Headers made of plausible pieces (dtypes, shapes, offsets that may
    /// overlap, leave holes or run past the end): our parser accepts
    /// exactly what the `safetensors` crate accepts, with the same
    /// tensors, names being distinct.
    #[test]
    fn safetensors_headers_are_judged_as_the_safetensors_crate_judges_them(
        tensors in proptest::collection::vec(
            (prop::sample::select(vec!["F32", "BF16", "U8", "I64", "BOOL", "F8_E4M3", "Q9"]),
             proptest::collection::vec(0u64..5, 0..3),
             0u64..64, 0u64..64),
            0..5),
        slack in 0usize..3,
    ) {
        let body: Vec<String> = tensors.iter().enumerate().map(|(i, (dtype, shape, a, b))| {
            format!(r#""t{i}":{{"dtype":"{dtype}","shape":{shape:?},"data_offsets":[{a},{b}]}}"#)
        }).collect();
        let json = format!("{{{}}}", body.join(","));
        let data = tensors.iter().map(|t| t.3 as usize).max().unwrap_or(0) + slack.saturating_sub(1);
        let bytes = safetensors_file(&json, data);
        let ours = tensorizer_format::safetensors::parse_file(&bytes);
        let theirs = safetensors::SafeTensors::deserialize(&bytes);
        prop_assert_eq!(ours.is_ok(), theirs.is_ok(), "ours {:?}", ours.as_ref().err());
        if let (Ok(ours), Ok(theirs)) = (ours, theirs) {
            prop_assert_eq!(ours.tensors.len(), theirs.len());
            for t in &ours.tensors {
                let view = theirs.tensor(&t.name).unwrap();
                prop_assert_eq!(view.shape().iter().map(|&d| d as u64).collect::<Vec<_>>(), t.shape.clone());
                prop_assert_eq!(view.data().len() as u64, t.end - t.start);
            }
        }
    }
}
