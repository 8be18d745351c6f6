//! Google Cloud Storage (fake-gcs-server) and Azure Blob (Azurite) through
//! the shared object-store source and sink: byte-exact round trips, atomic
//! commits, faults injected by a TCP proxy in front of each emulator, and
//! errors that name the endpoint and the credential source.
#![cfg(all(feature = "gcs", feature = "azure"))]

mod support;

use std::time::{Duration, Instant};

use support::*;
use tensorizer_io::{
    AzureOptions, FileLayout, GcsOptions, IoError, ObjectSink, ObjectSource, RangeSource,
    RetryPolicy, Sink, StorageOptions, copy_object, create_sink, exists, open_source,
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

fn blob(n: usize, seed: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 131 + seed) % 251) as u8).collect()
}

/// One emulator and how to reach it through a given port (its own, or a
/// proxy's in front of it).
#[derive(Clone, Copy)]
enum Emulator {
    Gcs,
    Azure,
}

impl Emulator {
    fn start(self) -> support::Emulator {
        match self {
            Self::Gcs => fake_gcs("models"),
            Self::Azure => azurite("models"),
        }
    }

    fn uri(self, key: &str) -> String {
        match self {
            Self::Gcs => format!("gs://models/{key}"),
            Self::Azure => format!("az://models/{key}"),
        }
    }

    fn storage(self, port: u16) -> StorageOptions {
        let mut storage = StorageOptions {
            retry: policy(),
            ..Default::default()
        };
        match self {
            Self::Gcs => {
                storage.gcs = GcsOptions {
                    endpoint: Some(format!("http://127.0.0.1:{port}")),
                    anonymous: true,
                    part_size: Some(5 * MIB as u64),
                    ..Default::default()
                }
            }
            Self::Azure => {
                storage.azure = AzureOptions {
                    use_emulator: true,
                    endpoint: Some(format!("http://127.0.0.1:{port}/devstoreaccount1")),
                    part_size: Some(5 * MIB as u64),
                    ..Default::default()
                }
            }
        }
        storage
    }
}

/// Writes `data` through a sink in 3 MiB pieces from the back (so parts
/// fill out of order) from two threads, then commits. Files of 64 MiB and
/// more are not announced (as a streaming writer does not know its size).
fn upload(uri: &str, storage: &StorageOptions, data: &[u8]) {
    let sink = create_sink(uri, storage).unwrap();
    if data.len() < 64 * MIB {
        sink.reserve(&FileLayout::with_len(data.len() as u64))
            .unwrap();
    }
    let piece = 3 * MIB;
    let mut offsets: Vec<usize> = (0..data.len()).step_by(piece).collect();
    offsets.reverse();
    std::thread::scope(|s| {
        for chunk in offsets.chunks(offsets.len().div_ceil(2).max(1)) {
            let sink = &sink;
            s.spawn(move || {
                for &o in chunk {
                    let end = (o + piece).min(data.len());
                    sink.write_all_at(o as u64, &data[o..end]).unwrap();
                }
            });
        }
    });
    sink.commit().unwrap();
}

fn read_back(uri: &str, storage: &StorageOptions) -> Vec<u8> {
    let src = open_source(uri, storage).unwrap();
    src.read_range(0, src.len()).unwrap()
}

fn round_trips_byte_exact(emulator: Emulator) {
    let server = emulator.start();
    let storage = emulator.storage(server.port);
    for (name, len) in [
        ("small", 1000),
        ("exact", 10 * MIB),
        ("multi", 23 * MIB + 17),
        // Unannounced, the first part last: on GCS (in order) most parts
        // wait on local disk for it.
        ("waiting", 70 * MIB + 3),
    ] {
        let data = blob(len, len);
        let uri = emulator.uri(&format!("vllm/m/v1/{name}.tensors"));
        upload(&uri, &storage, &data);
        assert_eq!(read_back(&uri, &storage), data, "{uri}");
        let src = open_source(&uri, &storage).unwrap();
        for (start, n) in [(0, 1), (len / 3, len / 2), (len - 5, 5)] {
            assert_eq!(
                src.read_range(start as u64, n as u64).unwrap(),
                &data[start..start + n],
                "{uri} {start}+{n}"
            );
        }
        let err = src.read_range(len as u64 - 1, 2).unwrap_err();
        assert!(matches!(err, IoError::OutOfRange { .. }), "{err}");
        assert!(exists(&uri, &storage).unwrap());
    }
    let missing = emulator.uri("missing.tensors");
    assert!(!exists(&missing, &storage).unwrap());
    let err = open_source(&missing, &storage).unwrap_err().to_string();
    assert!(
        err.contains(&missing)
            && err.contains("no such object")
            && err.contains(&format!("127.0.0.1:{}", server.port)),
        "{err}"
    );

    // A server-side copy within the bucket.
    let (from, to) = (
        emulator.uri("vllm/m/v1/small.tensors"),
        emulator.uri("copy/small.tensors"),
    );
    copy_object(&from, &to, &storage).unwrap();
    assert_eq!(read_back(&to, &storage), blob(1000, 1000));
}

#[test]
fn gcs_round_trips_byte_exact() {
    round_trips_byte_exact(Emulator::Gcs);
}

#[test]
fn azure_round_trips_byte_exact() {
    round_trips_byte_exact(Emulator::Azure);
}

fn an_uncommitted_upload_leaves_the_old_object(emulator: Emulator) {
    let server = emulator.start();
    let storage = emulator.storage(server.port);
    let uri = emulator.uri("model.tensors");
    let old = blob(2 * MIB, 1);
    upload(&uri, &storage, &old);

    let new = blob(12 * MIB, 2);
    let sink = create_sink(&uri, &storage).unwrap();
    sink.reserve(&FileLayout::with_len(new.len() as u64))
        .unwrap();
    // Two full parts go up, then the writer fails and drops the sink.
    sink.write_all_at(0, &new[..10 * MIB]).unwrap();
    drop(sink);
    assert_eq!(
        read_back(&uri, &storage),
        old,
        "{uri} after a dropped upload"
    );

    // A commit with a hole in the middle is refused.
    let sink = create_sink(&uri, &storage).unwrap();
    sink.reserve(&FileLayout::with_len(new.len() as u64))
        .unwrap();
    sink.write_all_at(0, &new[..MIB]).unwrap();
    sink.write_all_at(11 * MIB as u64, &new[11 * MIB..])
        .unwrap();
    let err = sink.commit().unwrap_err().to_string();
    assert!(err.contains("never written"), "{err}");
    assert_eq!(
        read_back(&uri, &storage),
        old,
        "{uri} after a refused commit"
    );
}

#[test]
fn gcs_an_uncommitted_upload_leaves_the_old_object() {
    an_uncommitted_upload_leaves_the_old_object(Emulator::Gcs);
}

#[test]
fn azure_an_uncommitted_upload_leaves_the_old_object() {
    an_uncommitted_upload_leaves_the_old_object(Emulator::Azure);
}

fn faults_are_retried_and_reads_stay_byte_exact(emulator: Emulator) {
    let server = emulator.start();
    let data = blob(9 * MIB, 3);
    let uri = emulator.uri("faulty.tensors");
    upload(&uri, &emulator.storage(server.port), &data);

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
        let proxy = FaultProxy::start(server.port, fault);
        let storage = emulator.storage(proxy.port);
        assert_eq!(read_back(&uri, &storage), data, "{uri}: {what}");
        let connections = proxy.connections.load(std::sync::atomic::Ordering::SeqCst);
        eprintln!("{uri} {what}: completed over {connections} connections");
        assert!(
            connections <= 2 + 3 + 4,
            "{what}: bounded retries, {connections} connections"
        );
    }
}

#[test]
fn gcs_faults_are_retried_and_reads_stay_byte_exact() {
    faults_are_retried_and_reads_stay_byte_exact(Emulator::Gcs);
}

#[test]
fn azure_faults_are_retried_and_reads_stay_byte_exact() {
    faults_are_retried_and_reads_stay_byte_exact(Emulator::Azure);
}

/// Access denied comes back at once, naming the endpoint, the addressing,
/// where the credentials came from and what to set.
fn access_denied_is_one_attempt_and_says_what_to_set(emulator: Emulator, expect: &[&str]) {
    let server = emulator.start();
    let uri = emulator.uri("m.tensors");
    upload(&uri, &emulator.storage(server.port), b"abc");
    let proxy = FaultProxy::start(server.port, Fault::Forbidden);
    let started = Instant::now();
    let err = open_source(&uri, &emulator.storage(proxy.port)).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            IoError::Remote {
                status: Some(403),
                attempts: 1,
                ..
            }
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!("127.0.0.1:{}", proxy.port)),
        "endpoint: {text}"
    );
    for word in expect {
        assert!(text.contains(word), "{word:?} missing: {text}");
    }
    assert_eq!(
        proxy.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one attempt"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn gcs_access_denied_is_one_attempt_and_says_what_to_set() {
    access_denied_is_one_attempt_and_says_what_to_set(
        Emulator::Gcs,
        &[
            "GCS",
            "credentials: --gcs-anonymous",
            "GOOGLE_APPLICATION_CREDENTIALS",
        ],
    );
}

#[test]
fn azure_access_denied_is_one_attempt_and_says_what_to_set() {
    access_denied_is_one_attempt_and_says_what_to_set(
        Emulator::Azure,
        &[
            "Azure Blob",
            "account devstoreaccount1",
            "Azurite's development key",
            "AZURE_STORAGE_KEY",
        ],
    );
}

#[test]
fn azurite_checks_the_account_key() {
    let server = Emulator::Azure.start();
    let uri = "az://models/signed.tensors";
    let good = Emulator::Azure.storage(server.port);
    upload(uri, &good, &blob(MIB, 5));
    let mut bad = good.clone();
    bad.azure.access_key = Some("d3Jvbmcga2V5".into()); // "wrong key"
    let err = ObjectSource::azure(uri, &bad.azure, &bad.retry).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            IoError::Remote {
                status: Some(403),
                attempts: 1,
                ..
            }
        ),
        "{text}"
    );
    assert!(text.contains("credentials: --azure-access-key"), "{text}");
}

#[test]
fn the_typed_constructors_match_the_uri_dispatch() {
    let server = Emulator::Gcs.start();
    let storage = Emulator::Gcs.storage(server.port);
    let uri = "gs://models/typed.tensors";
    let sink = ObjectSink::gcs(uri, &storage.gcs, &storage.retry).unwrap();
    assert_eq!(sink.service().name, "GCS");
    sink.reserve(&FileLayout::with_len(3)).unwrap();
    sink.write_all_at(0, b"xyz").unwrap();
    Box::new(sink).commit().unwrap();
    let src = ObjectSource::gcs(uri, &storage.gcs, &storage.retry).unwrap();
    assert_eq!(src.read_range(0, 3).unwrap(), b"xyz");
    assert!(
        src.service()
            .to_string()
            .contains("credentials: --gcs-anonymous")
    );
}

/// `Debug` of the public types that hold a store client shows service,
/// endpoint, bucket and key, never the account key or a SAS signature
/// (object_store's Azure client prints both).
#[test]
fn debug_output_of_sources_and_sinks_holds_no_secret() {
    let server = Emulator::Azure.start();
    let mut storage = Emulator::Azure.storage(server.port);
    // Azurite's well-known key, given explicitly, plus a SAS token.
    let account_key =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
    storage.azure.access_key = Some(account_key.into());
    let uri = Emulator::Azure.uri("debug/m.tensors");
    upload(&uri, &storage, b"bytes");
    let src = open_source(&uri, &storage).unwrap();
    let sink = create_sink(&Emulator::Azure.uri("debug/n.tensors"), &storage).unwrap();
    for shown in [format!("{src:?}"), format!("{sink:?}")] {
        assert!(!shown.contains(&account_key[..20]), "{shown}");
        assert!(shown.contains("debug/"), "{shown}");
    }
    let mut sas = storage.clone();
    sas.azure.access_key = None;
    sas.azure.sas_token = Some("sv=2024&sig=SASSIGNATURE".into());
    if let Ok(src) = open_source(&uri, &sas) {
        assert!(!format!("{src:?}").contains("SASSIGNATURE"));
    }
}
