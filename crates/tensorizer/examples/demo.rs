//! Writes a synthetic LLM-shaped model with the Rust serializer, reads it
//! back with hash verification and prints sizes and GiB/s both ways.
//!
//! `cargo xtask demo [--size 1GiB] [--dir DIR]`

use std::path::PathBuf;
use std::time::Instant;

use tensorizer::{Deserializer, Dtype, Serializer, TensorData, Verify};

fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let n: f64 = num.parse().ok()?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kib" | "k" => 1024.0,
        "mib" | "m" => 1024.0 * 1024.0,
        "gib" | "g" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some((n * mult) as u64)
}

/// Fills `buf` with cheap pseudo-random bits (splitmix64), so no page is
/// trivially compressible or all zeros.
fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed;
    for chunk in buf.chunks_mut(8) {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes()[..chunk.len()]);
    }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut size = 1u64 << 30;
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/demo");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--size" => {
                size = args
                    .next()
                    .and_then(|s| parse_size(&s))
                    .ok_or("--size needs a size like 1GiB or 256MiB")?
            }
            "--dir" => dir = args.next().ok_or("--dir needs a directory")?.into(),
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: demo [--size 1GiB] [--dir DIR]"
                )
                .into());
            }
        }
    }
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("demo-model.tensors");

    // A small decoder: per layer four hidden x hidden bf16 projections, two
    // hidden x 4*hidden fp16 MLP matrices and f32 norms, until `size` is used.
    let hidden: u64 = if size >= 1 << 30 { 2048 } else { 512 };
    let mut layout: Vec<(String, Dtype, Vec<u64>)> = vec![(
        "model.embed_tokens.weight".into(),
        Dtype::BF16,
        vec![8192, hidden],
    )];
    let mut total = 8192 * hidden * 2;
    let mut layer = 0;
    while total < size {
        for (n, d, s) in [
            ("self_attn.q_proj.weight", Dtype::BF16, vec![hidden, hidden]),
            ("self_attn.k_proj.weight", Dtype::BF16, vec![hidden, hidden]),
            ("self_attn.v_proj.weight", Dtype::BF16, vec![hidden, hidden]),
            ("self_attn.o_proj.weight", Dtype::BF16, vec![hidden, hidden]),
            ("mlp.up_proj.weight", Dtype::F16, vec![4 * hidden, hidden]),
            ("mlp.down_proj.weight", Dtype::F16, vec![hidden, 4 * hidden]),
            ("input_layernorm.weight", Dtype::F32, vec![hidden]),
        ] {
            total += s.iter().product::<u64>() * d.itemsize() as u64;
            layout.push((format!("model.layers.{layer}.{n}"), d, s));
        }
        layer += 1;
    }
    let buffers: Vec<Vec<u8>> = layout
        .iter()
        .enumerate()
        .map(|(i, (_, d, s))| {
            let mut b = vec![0u8; (s.iter().product::<u64>() * d.itemsize() as u64) as usize];
            fill(&mut b, i as u64);
            b
        })
        .collect();

    let mut s = Serializer::new();
    for ((name, dtype, shape), bytes) in layout.iter().zip(&buffers) {
        s.write_state_dict([(name.as_str(), TensorData::new(*dtype, shape, bytes)?)])?;
    }
    let started = Instant::now();
    let summary = s.write_to_file(&path)?;
    let write_secs = started.elapsed().as_secs_f64();
    println!(
        "Serialized   {:.2} GiB ({} tensors, {layer} layers) to {} in {write_secs:.2} s: {:.2} GiB/s (CRC-32 + SHA-256 computed, fsync'd)",
        gib(summary.bytes),
        summary.tensors,
        path.display(),
        gib(summary.bytes) / write_secs
    );

    for (verify, label) in [
        (Verify::Crc32, "CRC-32"),
        (Verify::All, "CRC-32 + SHA-256"),
        (Verify::Crc32, "CRC-32, repeat run"),
    ] {
        let started = Instant::now();
        let tensors = Deserializer::open(&path)?.verify(verify).read_all()?;
        let secs = started.elapsed().as_secs_f64();
        let bytes: u64 = tensors.iter().map(|t| t.as_bytes().len() as u64).sum();
        println!(
            "Deserialized {:.2} GiB ({} tensors) in {secs:.2} s: {:.2} GiB/s ({label} verified, warm page cache)",
            gib(bytes),
            tensors.len(),
            gib(bytes) / secs
        );
        for (t, original) in tensors.iter().zip(&buffers) {
            assert_eq!(t.as_bytes(), &original[..], "{}", t.name());
        }
    }
    if std::env::var_os("DEMO_KEEP").is_none() {
        std::fs::remove_file(&path)?;
    }
    Ok(())
}
