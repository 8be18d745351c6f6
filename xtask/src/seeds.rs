//! Small, valid seed inputs for each fuzz target, cut from the fixtures.
//!
//! Python-written fixtures carry a 256 KiB index block of mostly zeros;
//! fuzzing those wastes time, so whole-file seeds are re-planned with an index
//! just large enough for their entries.

use std::path::Path;

use tensorizer_format::{FilePlan, PlanOptions, RecordSpec, TERMINATOR, TensorizerFile};

pub fn write_all(fixtures: &Path, corpus: &Path) -> std::io::Result<()> {
    let mut n = 0usize;
    let mut put = |target: &str, bytes: &[u8]| -> std::io::Result<()> {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        n += 1;
        std::fs::write(dir.join(format!("seed-{n:05}")), bytes)
    };
    for set in [
        "spec",
        "tensorizer-2.12.1",
        "tensorizer-2.12.1-extended-dtypes",
    ] {
        for entry in std::fs::read_dir(fixtures.join(set))? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "tensors") {
                continue;
            }
            let bytes = std::fs::read(&path)?;
            put("file_header", &bytes[..bytes.len().min(65)])?;
            let Ok(file) = TensorizerFile::parse(&bytes) else {
                continue;
            };
            let has_crypt = file.metadata().header.has_crypt_info();
            let mut records = Vec::new();
            for (i, entry) in file.metadata().entries.iter().enumerate().take(64) {
                let Ok(rec) = file.record(i) else { continue };
                put("dtype", entry.dtype.as_str().as_bytes())?;
                put("tensor_path", entry.name.as_bytes())?;
                let mode = u8::from(entry.wide_dims) | (u8::from(has_crypt) << 1);
                let mut header = vec![mode];
                header.extend_from_slice(
                    &bytes[entry.header_offset as usize..entry.data_offset as usize],
                );
                put("tensor_header", &header)?;
                if let Some(ci) = &rec.header.crypt_info {
                    let mut block = Vec::new();
                    ci.encode(&mut block);
                    put("crypt_info", &block[8..])?;
                }
                if rec.data.len() <= 4096 {
                    records.push(rec);
                }
            }
            if let Some(compact) = compact_copy(&records, has_crypt) {
                put("metadata", &compact)?;
                put("whole_file", &compact)?;
                // deserializer: a mode byte (bit 0: the spec key, bit 1:
                // SHA-256, bit 2: check), then the file.
                for mode in [u8::from(has_crypt), u8::from(has_crypt) | 6] {
                    put("deserializer", &[&[mode][..], &compact].concat())?;
                }
            }
        }
    }
    hostile(&mut put)?;
    safetensors(&mut put)?;
    eprintln!("xtask: wrote {n} fuzz seeds under {}", corpus.display());
    Ok(())
}

/// Seeds whose header fields size allocations: a huge index length, meta
/// tensors claiming up to 2^64 bytes, key-derivation records asking for
/// enormous work. The parser and loader must refuse them cheaply.
fn hostile(put: &mut impl FnMut(&str, &[u8]) -> std::io::Result<()>) -> std::io::Result<()> {
    use tensorizer_format::{
        CryptChunk, CryptInfo, Dtype, KeyDerivation, Shape, TensorName, TensorType,
    };
    let spec = |name: &str, dtype: Dtype, dims: Vec<u64>, meta: bool| {
        let mut s = RecordSpec::new(
            0,
            TensorType::StateDict,
            TensorName::from(tensorizer_format::TensorPath::from(name.to_owned())),
            dtype,
            Shape(dims),
        );
        s.meta = meta;
        s
    };
    let file = |specs: Vec<RecordSpec>| -> Option<Vec<u8>> {
        let plan = FilePlan::new(
            specs,
            PlanOptions {
                encrypted: false,
                min_index_len: 0,
            },
        )
        .ok()?;
        let mut out = plan.metadata.encode().ok()?;
        for h in &plan.headers {
            out.extend(h.encode().ok()?);
            // Data of the non-meta records: zeros of their length.
            out.resize(out.len() + usize::try_from(h.data_length).ok()?, 0);
        }
        out.extend(TERMINATOR);
        Some(out)
    };
    // Meta tensors claiming 2^64 - 2^20 bytes, then a small real tensor.
    if let Some(bytes) = file(vec![
        spec("huge", Dtype::U8, vec![u64::MAX - (1 << 20) + 1], true),
        spec("real", Dtype::F32, vec![4], false),
        spec("wide", Dtype::F64, vec![1 << 40, 1 << 20], true),
    ]) {
        put("whole_file", &bytes)?;
        put("metadata", &bytes)?;
        for mode in [0u8, 6] {
            put("deserializer", &[&[mode][..], &bytes].concat())?;
        }
        // The same file with its index length claiming 2^39 and 2^64 - 1
        // bytes (the field after the 65-byte file header).
        for claim in [1u64 << 39, u64::MAX] {
            let mut lying = bytes.clone();
            lying[65..73].copy_from_slice(&claim.to_le_bytes());
            put("file_header", &lying[..73])?;
            put("metadata", &lying)?;
            put("deserializer", &[&[6u8][..], &lying].concat())?;
        }
    }
    // Key-derivation records asking for more work than any preset.
    for (ops, mem) in [(u64::MAX, u64::MAX), (1024, 16 << 30), (5, 8192)] {
        let info = CryptInfo {
            chunks: vec![CryptChunk::KeyDerivation(KeyDerivation {
                method: 1,
                opslimit: ops,
                memlimit: mem,
                alg: 2,
                salt: vec![7; 16],
            })],
        };
        let mut block = Vec::new();
        info.encode(&mut block);
        put("crypt_info", &block[8..])?;
    }
    read_sizes(put, &file)?;
    Ok(())
}

/// Seeds for the fields that size reads: a per-tensor header claiming far
/// more than the format needs (the loader reads only what arrives, and
/// refuses past the format's bound), a cipher chunk claiming 2^40 MACs or
/// MACs for a record that stores no data, and a meta tensor in a data
/// version that has none.
fn read_sizes(
    put: &mut impl FnMut(&str, &[u8]) -> std::io::Result<()>,
    file: &impl Fn(Vec<RecordSpec>) -> Option<Vec<u8>>,
) -> std::io::Result<()> {
    use tensorizer_format::{
        CryptChunk, CryptInfo, Dtype, FormatVersion, Metadata, Shape, TensorName, TensorType,
    };
    let spec = |name: &str, dims: Vec<u64>| {
        RecordSpec::new(
            0,
            TensorType::StateDict,
            TensorName::from(tensorizer_format::TensorPath::from(name.to_owned())),
            Dtype::U8,
            Shape(dims),
        )
    };
    let Some(bytes) = file(vec![spec("a", vec![16]), spec("b", vec![8])]) else {
        return Ok(());
    };
    let Ok(meta) = Metadata::parse(&bytes) else {
        return Ok(());
    };
    // Tensor "a"'s header claimed 200 KB long (the index's header length),
    // the file padded so that the claim lies inside it.
    let mut long = meta.clone();
    long.entries[0].data_offset += 200_000;
    long.entries[1].header_offset += 200_000;
    long.entries[1].data_offset += 200_000;
    if let Ok(mut out) = long.encode() {
        let records = &bytes[meta.records_offset() as usize..];
        let first_header = (meta.entries[0].data_offset - meta.entries[0].header_offset) as usize;
        out.extend_from_slice(&records[..first_header]);
        out.resize(out.len() + 200_000, 0);
        out.extend_from_slice(&records[first_header..]);
        put("metadata", &out)?;
        for mode in [0u8, 6] {
            put("deserializer", &[&[mode][..], &out].concat())?;
        }
    }
    // A meta tensor in a data-version-1 file.
    let mut old = meta.clone();
    old.header.version = FormatVersion::NON_OPAQUE;
    old.entries[1].data_length = 0;
    if let Ok(out) = old.encode() {
        put("metadata", &out)?;
        put(
            "deserializer",
            &[&[0u8][..], &out, &bytes[meta.records_offset() as usize..]].concat(),
        )?;
    }
    // Cipher chunks: one claiming 2^40 MACs, and MACs for no data.
    let parallel = |macs: Vec<[u8; 16]>| CryptInfo {
        chunks: vec![CryptChunk::XSalsa20Parallel {
            chunk_size: 1 << 20,
            nonce: [3; 24],
            macs,
        }],
    };
    let mut block = Vec::new();
    parallel(vec![[1; 16]]).encode(&mut block);
    let count_at = block.len() - 16 - 8;
    let mut lying = block.clone();
    lying[count_at..count_at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    put("crypt_info", &lying[8..])?;
    if let Some(mut h) = tensorizer_format::FilePlan::new(
        vec![{
            let mut s = spec("cut", vec![4]);
            s.meta = true;
            s.crypt_info = Some(parallel(vec![[1; 16]]));
            s
        }],
        PlanOptions {
            encrypted: true,
            min_index_len: 0,
        },
    )
    .ok()
    .and_then(|p| p.headers.into_iter().next())
    {
        h.data_length = 0;
        if let Ok(encoded) = h.encode() {
            // Mode byte: bit 1 says the file has crypt info.
            put("tensor_header", &[&[2u8][..], &encoded].concat())?;
        }
    }
    Ok(())
}

/// The same records in a file with a minimal index block, hashes kept.
fn compact_copy(records: &[tensorizer_format::Record<'_>], encrypted: bool) -> Option<Vec<u8>> {
    if records.is_empty() {
        return None;
    }
    let specs = records
        .iter()
        .map(|r| {
            let h = &r.header;
            let mut s = RecordSpec::new(
                h.module_idx,
                h.tensor_type,
                h.name.clone(),
                h.dtype.clone(),
                h.shape.clone(),
            );
            s.meta = r.entry.is_meta();
            s.crypt_info = h.crypt_info.clone();
            s
        })
        .collect();
    let mut plan = FilePlan::new(
        specs,
        PlanOptions {
            encrypted,
            min_index_len: 0,
        },
    )
    .ok()?;
    let mut out = plan.metadata.encode().ok()?;
    for (i, r) in records.iter().enumerate() {
        plan.headers[i] = r.header.clone();
        out.extend(plan.headers[i].encode().ok()?);
        out.extend_from_slice(r.data);
    }
    out.extend(TERMINATOR);
    Some(out)
}

/// A safetensors file of `json` and `data` bytes of tensor data.
fn safetensors_file(json: &str, data: usize) -> Vec<u8> {
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out.extend((0..data).map(|i| i as u8));
    out
}

/// Safetensors seeds for the header parser and the load path: valid files
/// (every dtype, zero-size tensors, metadata, padding) and hostile ones
/// (huge lengths and shapes, overlaps, holes, duplicates, deep nesting).
fn safetensors(put: &mut impl FnMut(&str, &[u8]) -> std::io::Result<()>) -> std::io::Result<()> {
    let t = |name: &str, dtype: &str, shape: &str, start: u64, end: u64| {
        format!(r#""{name}":{{"dtype":"{dtype}","shape":{shape},"data_offsets":[{start},{end}]}}"#)
    };
    let valid = [
        (format!("{{{}}}", t("w", "F32", "[2,2]", 0, 16)), 16),
        (
            format!(
                r#"{{"__metadata__":{{"format":"pt"}},{},{},{}}}"#,
                t("a", "BF16", "[3]", 0, 6),
                t("e", "I64", "[0]", 6, 6),
                t("b", "U8", "[2]", 6, 8)
            ),
            8,
        ),
        (format!("{{{}}}        ", t("x", "F8_E4M3", "[5]", 0, 5)), 5),
        ("{}".to_owned(), 0),
    ];
    let hostile = [
        (
            format!(
                "{{{},{}}}",
                t("a", "F32", "[2]", 0, 8),
                t("b", "F32", "[2]", 4, 12)
            ),
            12,
        ),
        (
            format!(
                "{{{},{}}}",
                t("a", "F32", "[1]", 0, 4),
                t("b", "F32", "[1]", 8, 12)
            ),
            12,
        ),
        (
            format!(
                "{{{},{}}}",
                t("a", "F32", "[1]", 0, 4),
                t("a", "F32", "[1]", 4, 8)
            ),
            8,
        ),
        (
            format!("{{{}}}", t("w", "F32", "[4294967296,4294967296]", 0, 8)),
            8,
        ),
        (format!("{{{}}}", t("w", "F4", "[2]", 0, 1)), 1),
        (
            format!(r#"{{"w":{{"x":{}{}}}}}"#, "[".repeat(300), "]".repeat(300)),
            0,
        ),
    ];
    for (json, data) in valid.iter().chain(&hostile) {
        let file = safetensors_file(json, *data);
        put("safetensors", &file)?;
        for mode in [0u8, 2, 4] {
            put("deserializer", &[&[mode][..], &file].concat())?;
        }
    }
    let mut huge = (1u64 << 63).to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    put("safetensors", &huge)?;
    put("deserializer", &[&[0u8][..], &huge].concat())?;
    Ok(())
}
