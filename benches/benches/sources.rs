//! Loopback throughput of every source and sink of `tensorizer-io`, each
//! against a real server started here (nginx, moto, s3s-fs, redis-server;
//! `cargo xtask test` installs them): one 256 MiB object read whole in
//! 16 MiB ranges from 8 threads, and written through each sink.
//! `cargo bench -p tensorizer-benches --bench sources`.

#[path = "../../crates/tensorizer-io/tests/support/mod.rs"]
mod support;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tensorizer_io::{
    FileLayout, LocalSink, ObjectSink, ObjectSource, RangeSource, RetryPolicy, S3Options, Segment,
    SegmentKind, Sink, StorageOptions, open_source,
};

const SIZE: usize = 256 << 20;
const PIECE: usize = 16 << 20;
const THREADS: usize = 8;

fn data() -> Vec<u8> {
    (0..SIZE).map(|i| (i * 131 % 251) as u8).collect()
}

/// Reads the whole source from `THREADS` threads in `PIECE` ranges.
fn read_all(source: &dyn RangeSource, buf: &mut [u8]) {
    let pieces: Vec<(usize, &mut [u8])> = buf.chunks_mut(PIECE).enumerate().collect();
    let queue = std::sync::Mutex::new(pieces);
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                loop {
                    let Some((i, chunk)) = queue.lock().unwrap().pop() else {
                        return;
                    };
                    source.read_exact_at((i * PIECE) as u64, chunk).unwrap();
                }
            });
        }
    });
}

/// Writes `data` through `sink` from `THREADS` threads, then commits.
fn write_all(sink: Box<dyn Sink>, data: &[u8], layout: &FileLayout) {
    sink.reserve(layout).unwrap();
    let pieces: Vec<(usize, &[u8])> = data.chunks(PIECE).enumerate().collect();
    let queue = std::sync::Mutex::new(pieces);
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                loop {
                    let Some((i, chunk)) = queue.lock().unwrap().pop() else {
                        return;
                    };
                    sink.write_all_at((i * PIECE) as u64, chunk).unwrap();
                }
            });
        }
    });
    sink.commit().unwrap();
}

/// A file of one tensor per 16 MiB piece, so a Redis sink has keys to name.
fn layout() -> FileLayout {
    FileLayout {
        len: SIZE as u64,
        segments: (0..SIZE / PIECE)
            .map(|i| Segment {
                offset: (i * PIECE) as u64,
                len: PIECE as u64,
                kind: if i == 0 {
                    SegmentKind::Prologue
                } else {
                    SegmentKind::TensorData(format!("t{i}"))
                },
            })
            .collect(),
    }
}

fn s3_options(port: u16, key: &str, secret: &str) -> S3Options {
    S3Options {
        access_key_id: Some(key.into()),
        secret_access_key: Some(secret.into()),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        ..Default::default()
    }
}

fn sources(c: &mut Criterion) {
    let data = data();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blob.tensors");
    std::fs::write(&file, &data).unwrap();
    let nginx = support::Nginx::start(dir.path());
    let moto = support::moto("bench");
    let s3s = support::s3s_fs("bench", "AKIDBENCH", "benchsecret");
    let redis = support::redis_server();
    let policy = RetryPolicy::default();

    let moto_opts = s3_options(moto.port, "testing", "testing");
    let s3s_opts = s3_options(s3s.port, "AKIDBENCH", "benchsecret");
    let redis_uri = format!("redis://127.0.0.1:{}/bench", redis.port);
    for (uri, opts) in [
        ("s3://bench/blob.tensors", &moto_opts),
        ("s3://bench/blob.tensors", &s3s_opts),
    ] {
        write_all(
            Box::new(ObjectSink::s3(uri, opts, &policy).unwrap()),
            &data,
            &layout(),
        );
    }
    write_all(
        tensorizer_io::create_sink(&redis_uri, &StorageOptions::default()).unwrap(),
        &data,
        &layout(),
    );

    let mut group = c.benchmark_group("read 256 MiB over loopback");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.sample_size(10);
    let mut buf = vec![0u8; SIZE];
    let local = open_source(file.to_str().unwrap(), &StorageOptions::default()).unwrap();
    let http = open_source(&nginx.url("blob.tensors"), &StorageOptions::default()).unwrap();
    let moto_src = ObjectSource::s3("s3://bench/blob.tensors", &moto_opts, &policy).unwrap();
    let s3s_src = ObjectSource::s3("s3://bench/blob.tensors", &s3s_opts, &policy).unwrap();
    let redis_src = open_source(&redis_uri, &StorageOptions::default()).unwrap();
    let cases: [(&str, &dyn RangeSource); 5] = [
        ("local file (page cache)", local.as_ref()),
        ("http (nginx)", http.as_ref()),
        ("s3 (moto, Python)", &moto_src),
        ("s3 (s3s-fs, SigV4 checked)", &s3s_src),
        ("redis", redis_src.as_ref()),
    ];
    for (name, source) in cases {
        group.bench_function(name, |b| b.iter(|| read_all(source, &mut buf)));
        assert_eq!(buf, data, "{name} read back wrong bytes");
    }
    group.finish();

    let mut group = c.benchmark_group("write 256 MiB over loopback");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.sample_size(10);
    group.bench_function("local file (fsync + rename)", |b| {
        b.iter(|| {
            write_all(
                Box::new(LocalSink::create(&dir.path().join("out.tensors")).unwrap()),
                &data,
                &layout(),
            )
        })
    });
    group.bench_function("s3 multipart (s3s-fs)", |b| {
        b.iter(|| {
            write_all(
                Box::new(ObjectSink::s3("s3://bench/out.tensors", &s3s_opts, &policy).unwrap()),
                &data,
                &layout(),
            )
        })
    });
    group.bench_function("s3 multipart (moto)", |b| {
        b.iter(|| {
            write_all(
                Box::new(ObjectSink::s3("s3://bench/out.tensors", &moto_opts, &policy).unwrap()),
                &data,
                &layout(),
            )
        })
    });
    group.bench_function("redis", |b| {
        b.iter(|| {
            write_all(
                tensorizer_io::create_sink(
                    &format!("redis://127.0.0.1:{}/out", redis.port),
                    &StorageOptions::default(),
                )
                .unwrap(),
                &data,
                &layout(),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, sources);
criterion_main!(benches);
