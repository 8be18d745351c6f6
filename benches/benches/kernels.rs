//! Criterion benchmarks of the kernels on the load and write paths:
//! header parsing, planning, hashing, and loading a warm file next to the
//! parallel-`pread` limit of the same file. `cargo bench -p tensorizer-benches`.

use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tensorizer::{Deserializer, Dtype, Serializer, TensorData, Verify};
use tensorizer_format::{
    FilePlan, HashKind, Metadata, PlanOptions, RecordSpec, TensorHasher, TensorPath, TensorType,
};

fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name);
    std::fs::read(p).expect("fixture")
}

fn parse_and_plan(c: &mut Criterion) {
    let many = fixture("tensorizer-2.12.1/many_tensors.tensors");
    c.bench_function("metadata parse, 1000 tensors", |b| {
        b.iter(|| Metadata::parse(black_box(&many)).unwrap())
    });
    let specs: Vec<RecordSpec> = (0..1000)
        .map(|i| {
            RecordSpec::new(
                0,
                TensorType::StateDict,
                TensorPath::from(format!("model.layers.{i}.weight")),
                Dtype::BF16,
                [4096, 4096],
            )
        })
        .collect();
    c.bench_function("plan, 1000 tensors", |b| {
        b.iter(|| FilePlan::new(black_box(specs.clone()), PlanOptions::default()).unwrap())
    });
}

fn hashing(c: &mut Criterion) {
    let data = vec![0x5au8; 64 << 20];
    let mut g = c.benchmark_group("hash 64 MiB, one core");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    for kind in [HashKind::Crc32, HashKind::Sha256] {
        g.bench_function(kind.name(), |b| {
            b.iter(|| {
                let mut h = TensorHasher::new([kind]);
                h.update(&data);
                h.finish()
            })
        });
    }
    g.finish();
}

fn load(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.tensors");
    let chunk = vec![7u8; 16 << 20];
    let mut s = Serializer::new();
    for i in 0..16 {
        s.write_state_dict([(
            format!("w{i}"),
            TensorData::new(Dtype::BF16, &[8 << 20], &chunk).unwrap(),
        )])
        .unwrap();
    }
    let bytes = s.write_to_file(&path).unwrap().bytes;
    let mut g = c.benchmark_group("load 256 MiB, warm page cache");
    g.throughput(Throughput::Bytes(bytes));
    g.sample_size(10);
    let file = std::fs::File::open(&path).unwrap();
    let mut dest = vec![0u8; bytes as usize];
    g.bench_function("limit: parallel pread into one buffer", |b| {
        b.iter(|| {
            let pieces: Vec<(u64, &mut [u8])> = dest
                .chunks_mut(16 << 20)
                .enumerate()
                .map(|(i, c)| ((i as u64) << 24, c))
                .collect();
            std::thread::scope(|s| {
                for (off, piece) in pieces {
                    let file = &file;
                    s.spawn(move || file.read_exact_at(piece, off).unwrap());
                }
            });
        })
    });
    for (verify, label) in [
        (Verify::None, "read_all, no hashes"),
        (Verify::Crc32, "read_all, CRC-32"),
    ] {
        g.bench_function(label, |b| {
            b.iter(|| {
                Deserializer::open(&path)
                    .unwrap()
                    .verify(verify)
                    .read_all()
                    .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, parse_and_plan, hashing, load);
criterion_main!(benches);
