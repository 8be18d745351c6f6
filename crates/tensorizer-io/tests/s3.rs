//! S3 sources and sinks against moto (S3 semantics, multipart) and s3s-fs
//! (which checks SigV4 signatures), with faults injected by a TCP proxy.
#![cfg(feature = "s3")]

mod support;

use std::time::{Duration, Instant};

use support::*;
use tensorizer_io::{
    FileLayout, IoError, ObjectSink, ObjectSource, RangeSource, RetryPolicy, S3Options, Sink,
    StorageOptions, create_sink, open_source,
};

const MIB: usize = 1 << 20;

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        deadline: Duration::from_secs(20),
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
    }
}

fn options(port: u16) -> S3Options {
    S3Options {
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        part_size: Some(5 * MIB as u64),
        ..Default::default()
    }
}

fn blob(n: usize, seed: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 131 + seed) % 251) as u8).collect()
}

/// Writes `data` through a sink in 3 MiB pieces from the back (so parts
/// fill out of order), then commits.
fn upload(uri: &str, opts: &S3Options, data: &[u8]) {
    let sink = ObjectSink::s3(uri, opts, &policy()).unwrap();
    sink.reserve(&FileLayout::with_len(data.len() as u64))
        .unwrap();
    let piece = 3 * MIB;
    let mut offsets: Vec<usize> = (0..data.len()).step_by(piece).collect();
    offsets.reverse();
    std::thread::scope(|s| {
        for chunk in offsets.chunks(2) {
            let sink = &sink;
            s.spawn(move || {
                for &o in chunk {
                    let end = (o + piece).min(data.len());
                    sink.write_all_at(o as u64, &data[o..end]).unwrap();
                }
            });
        }
    });
    Box::new(sink).commit().unwrap();
}

fn read_back(uri: &str, opts: &S3Options) -> Vec<u8> {
    let src = ObjectSource::s3(uri, opts, &policy()).unwrap();
    src.read_range(0, src.len()).unwrap()
}

#[test]
fn multipart_and_single_put_round_trip_byte_exact() {
    let moto = moto("models");
    let opts = options(moto.port);
    for (name, len) in [
        ("small", 1000),
        ("exact", 10 * MIB),
        ("multi", 23 * MIB + 17),
    ] {
        let data = blob(len, len);
        let uri = format!("s3://models/vllm/m/v1/{name}.tensors");
        upload(&uri, &opts, &data);
        assert_eq!(read_back(&uri, &opts), data, "{name}");
        // Ranges inside, across parts, at the end.
        let src = ObjectSource::s3(&uri, &opts, &policy()).unwrap();
        for (start, n) in [(0, 1), (len / 3, len / 2), (len - 5, 5)] {
            assert_eq!(
                src.read_range(start as u64, n as u64).unwrap(),
                &data[start..start + n]
            );
        }
        let err = src.read_range(len as u64 - 1, 2).unwrap_err();
        assert!(matches!(err, IoError::OutOfRange { .. }), "{err}");
    }
}

#[test]
fn dispatch_by_uri_and_missing_objects() {
    let moto = moto("bkt");
    let storage = StorageOptions {
        retry: policy(),
        s3: options(moto.port),
        ..Default::default()
    };
    let sink = create_sink("s3://bkt/a/b.bin", &storage).unwrap();
    sink.reserve(&FileLayout::with_len(3)).unwrap();
    sink.write_all_at(0, b"abc").unwrap();
    sink.commit().unwrap();
    let src = open_source("s3://bkt/a/b.bin", &storage).unwrap();
    assert_eq!(src.read_range(0, 3).unwrap(), b"abc");

    let err = open_source("s3://bkt/missing.tensors", &storage)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("s3://bkt/missing.tensors") && err.contains("no such object"),
        "{err}"
    );
    let err = open_source("s3://bkt", &storage).unwrap_err().to_string();
    assert!(err.contains("expected s3://bucket/key"), "{err}");
}

#[test]
fn an_uncommitted_upload_is_aborted_and_the_old_object_stays() {
    let moto = moto("bkt");
    let opts = options(moto.port);
    let uri = "s3://bkt/model.tensors";
    let old = blob(2 * MIB, 1);
    upload(uri, &opts, &old);

    let new = blob(12 * MIB, 2);
    let sink = ObjectSink::s3(uri, &opts, &policy()).unwrap();
    sink.reserve(&FileLayout::with_len(new.len() as u64))
        .unwrap();
    // Two full parts go up, then the writer fails and drops the sink.
    sink.write_all_at(0, &new[..10 * MIB]).unwrap();
    let (_, listing) = http_request(moto.port, "GET", "/bkt?uploads");
    assert!(
        listing.contains("<UploadId>"),
        "an upload is in progress: {listing}"
    );
    drop(sink);
    let (_, listing) = http_request(moto.port, "GET", "/bkt?uploads");
    assert!(
        !listing.contains("<UploadId>"),
        "the upload was aborted: {listing}"
    );
    assert_eq!(read_back(uri, &opts), old);

    // A commit with a hole in the middle is refused, and aborted.
    let sink = ObjectSink::s3(uri, &opts, &policy()).unwrap();
    sink.reserve(&FileLayout::with_len(new.len() as u64))
        .unwrap();
    sink.write_all_at(0, &new[..MIB]).unwrap();
    sink.write_all_at(11 * MIB as u64, &new[11 * MIB..])
        .unwrap();
    let err = Box::new(sink).commit().unwrap_err().to_string();
    assert!(err.contains("never written"), "{err}");
    assert_eq!(read_back(uri, &opts), old);
}

#[test]
fn signatures_are_checked_by_a_verifying_server() {
    let server = s3s_fs(
        "secure",
        "AKIDEXAMPLE",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    );
    let good = S3Options {
        access_key_id: Some("AKIDEXAMPLE".into()),
        secret_access_key: Some("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into()),
        endpoint: Some(format!("http://127.0.0.1:{}", server.port)),
        part_size: Some(5 * MIB as u64),
        ..Default::default()
    };
    let data = blob(11 * MIB + 3, 9);
    // Key with characters that need canonical URI encoding.
    let uri = "s3://secure/vllm/Llama-3 8B/v1/model-rank-000.tensors";
    upload(uri, &good, &data);
    assert_eq!(read_back(uri, &good), data);

    let bad = S3Options {
        secret_access_key: Some("not-the-secret".into()),
        ..good.clone()
    };
    let err = ObjectSource::s3(uri, &bad, &policy())
        .unwrap_err()
        .to_string();
    assert!(err.contains("check credentials"), "{err}");
    let anonymous = S3Options {
        access_key_id: Some(String::new()),
        secret_access_key: Some(String::new()),
        ..good
    };
    let err = ObjectSource::s3(uri, &anonymous, &policy())
        .unwrap_err()
        .to_string();
    assert!(err.contains("check credentials"), "{err}");
}

#[test]
fn faults_are_retried_and_reads_stay_byte_exact() {
    let moto = moto("bkt");
    let data = blob(9 * MIB, 3);
    let uri = "s3://bkt/faulty.tensors";
    upload(uri, &options(moto.port), &data);

    for (what, fault) in [
        (
            "reset mid-body",
            Fault::ResetAfter {
                bytes: 300_000,
                connections: 2,
            },
        ),
        ("503 then success", Fault::Unavailable { connections: 2 }),
        ("close mid-header", Fault::CloseMidHeader { connections: 2 }),
        (
            "stall past the timeout",
            Fault::Stall {
                connections: 1,
                stall: Duration::from_secs(3),
            },
        ),
    ] {
        let proxy = FaultProxy::start(moto.port, fault);
        let opts = options(proxy.port);
        assert_eq!(read_back(uri, &opts), data, "{what}");
        let connections = proxy.connections.load(std::sync::atomic::Ordering::SeqCst);
        eprintln!("S3 {what}: completed over {connections} connections");
        assert!(
            connections <= 2 + 3 + 4,
            "{what}: bounded retries, {connections} connections"
        );
    }
}

#[test]
fn an_endless_fault_ends_in_a_clear_error_in_bounded_time() {
    let moto = moto("bkt");
    let uri = "s3://bkt/x.tensors";
    upload(uri, &options(moto.port), &blob(1000, 4));
    let proxy = FaultProxy::start(
        moto.port,
        Fault::Unavailable {
            connections: usize::MAX,
        },
    );
    let started = Instant::now();
    let err = ObjectSource::s3(uri, &options(proxy.port), &policy()).unwrap_err();
    let elapsed = started.elapsed();
    let text = err.to_string();
    assert!(text.contains(uri) && text.contains("503"), "{text}");
    assert!(
        elapsed < Duration::from_secs(20),
        "gave up after {elapsed:?}"
    );
    let connections = proxy.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(connections, 4, "max_attempts = 4 requests");
}
