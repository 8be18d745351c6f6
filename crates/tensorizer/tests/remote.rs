//! S3 (moto), GCS (fake-gcs-server), Azure (Azurite) and Redis (redis-server)
//! end to end, with the Python library on
//! the other side: every fixture read through each source gives what the
//! local file gives; files we write through each sink are read back by us
//! and by Python; files Python pushes to Redis (`to_redis`) load here.
#![cfg(all(feature = "s3", feature = "redis", feature = "encryption"))]

#[path = "../../tensorizer-io/tests/support/mod.rs"]
mod support;

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicI64, Ordering};

use common::*;
use serde_json::{Value, json};
use tensorizer::io::{FileLayout, IoError, ObjectSink, Sink};
use tensorizer::{
    Decryption, Deserializer, Dtype, Encryption, EncryptionKey, S3Options, Serializer,
    StorageOptions, StreamingSerializer, TensorData, Verify,
};

fn oracle_python() -> PathBuf {
    let py = std::env::var_os("TENSORIZER_ORACLE_PYTHON").unwrap_or_else(|| {
        panic!(
            "TENSORIZER_ORACLE_PYTHON is not set: this test needs the Python tensorizer oracle. \
             Run `cargo xtask test`, or: export TENSORIZER_ORACLE_PYTHON=$(bash scripts/setup_oracle.sh | tail -n1)"
        )
    });
    PathBuf::from(py)
}

fn oracle_batch(jobs: &[Value]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let jobs_file = dir.path().join("jobs.json");
    std::fs::write(&jobs_file, serde_json::to_vec(jobs).unwrap()).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/oracle_batch.py");
    let out = Command::new(oracle_python())
        .arg(script)
        .arg(&jobs_file)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every `.tensors` fixture, with its key or passphrase when it has one.
fn fixture_files() -> Vec<(PathBuf, Option<PathBuf>, Option<PathBuf>)> {
    let mut files = Vec::new();
    for set in ["tensorizer-2.12.1", "tensorizer-2.12.1-extended-dtypes"] {
        let dir = fixtures().join(set);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "tensors") {
                let key = path.with_extension("key");
                let pass = path.with_extension("passphrase");
                files.push((
                    path,
                    key.exists().then_some(key),
                    pass.exists().then_some(pass),
                ));
            }
        }
    }
    files.sort();
    assert!(files.len() >= 50, "fixtures missing: {}", files.len());
    files
}

fn decryption(key: &Option<PathBuf>, pass: &Option<PathBuf>) -> Option<Decryption> {
    if let Some(k) = key {
        return Some(Decryption::Key(
            EncryptionKey::from_key_file(&std::fs::read(k).unwrap()).unwrap(),
        ));
    }
    pass.as_ref()
        .map(|p| Decryption::passphrase(std::fs::read(p).unwrap()))
}

/// What loading gives: every tensor's fields, or that it failed.
fn outcome(d: tensorizer::Result<Deserializer>, dec: Option<Decryption>) -> Result<Vec<Value>, ()> {
    let mut d = d.map_err(|_| ())?.verify(Verify::All);
    if let Some(dec) = dec {
        d = d.decryption(dec).map_err(|_| ())?;
    }
    let tensors = d.read_all().map_err(|_| ())?;
    Ok(tensors.iter().map(tensor_fields).collect())
}

fn s3_options(port: u16) -> S3Options {
    S3Options {
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        part_size: Some(5 << 20),
        ..Default::default()
    }
}

#[test]
fn every_fixture_loads_from_s3_like_from_disk() {
    let moto = support::moto("fixtures");
    let storage = StorageOptions {
        s3: s3_options(moto.port),
        ..Default::default()
    };
    let mut loaded = 0;
    for (path, key, pass) in fixture_files() {
        let bytes = std::fs::read(&path).unwrap();
        let uri = format!(
            "s3://fixtures/{}",
            path.file_name().unwrap().to_string_lossy()
        );
        let sink = ObjectSink::s3(&uri, &storage.s3, &storage.retry).unwrap();
        sink.reserve(&FileLayout::with_len(bytes.len() as u64))
            .unwrap();
        sink.write_all_at(0, &bytes).unwrap();
        Box::new(sink).commit().unwrap();

        let source = tensorizer::io::open_source(&uri, &storage).unwrap();
        assert_eq!(
            source.read_range(0, source.len()).unwrap(),
            bytes,
            "{uri} bytes"
        );
        let local = outcome(Deserializer::open(&path), decryption(&key, &pass));
        let remote = outcome(
            Deserializer::open_uri_with(&uri, &storage),
            decryption(&key, &pass),
        );
        assert_eq!(local, remote, "{uri}");
        loaded += usize::from(local.is_ok());
    }
    assert!(loaded >= 30, "only {loaded} fixtures loaded");
}

#[test]
fn fixtures_pushed_by_python_to_redis_load_here() {
    let redis = support::redis_server();
    let files = fixture_files();
    let jobs: Vec<Value> = files
        .iter()
        .enumerate()
        .map(|(i, (path, key, _))| {
            json!({
                "op": "to_redis",
                "file": path,
                "uri": format!("redis://127.0.0.1:{}/fixture{i}", redis.port),
                "key_hex": key.as_ref().map(|k| hex(EncryptionKey::from_key_file(&std::fs::read(k).unwrap()).unwrap().as_bytes())),
            })
        })
        .collect();
    let results = oracle_batch(&jobs);
    let mut pushed = 0;
    for (i, ((path, key, pass), result)) in files.iter().zip(&results).enumerate() {
        if result["ok"] != true {
            // Python cannot open it (a broken fixture): nothing was pushed.
            continue;
        }
        pushed += 1;
        let uri = format!("redis://127.0.0.1:{}/fixture{i}", redis.port);
        let bytes = std::fs::read(path).unwrap();
        let source = tensorizer::io::open_source(&uri, &StorageOptions::default()).unwrap();
        let stored = source.read_range(0, source.len()).unwrap();
        assert_eq!(
            stored,
            bytes[..stored.len()],
            "{uri}: the bytes Python stored"
        );
        let local = outcome(Deserializer::open(path), decryption(key, pass));
        let remote = outcome(Deserializer::open_uri(&uri), decryption(key, pass));
        assert_eq!(local, remote, "{} via {uri}", path.display());
    }
    assert!(pushed >= 30, "Python pushed only {pushed} fixtures");
}

/// A model with the usual dtypes, a structured name, an empty tensor and a
/// tensor bigger than one S3 part.
fn model() -> Vec<(String, Dtype, Vec<u64>, Vec<u8>)> {
    let bytes = |n: usize, seed: u8| -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    };
    vec![
        (
            "model.embed.weight".into(),
            Dtype::BF16,
            vec![1024, 3200],
            bytes(1024 * 3200 * 2, 1),
        ),
        (
            "model.layers.0.norm".into(),
            Dtype::F32,
            vec![3200],
            bytes(3200 * 4, 2),
        ),
        (
            "model.layers.0.q.weight".into(),
            Dtype::F16,
            vec![64, 64],
            bytes(64 * 64 * 2, 3),
        ),
        ("model.empty".into(), Dtype::I64, vec![0], Vec::new()),
        (
            "lm_head.weight".into(),
            Dtype::F16,
            vec![512, 1024],
            bytes(512 * 1024 * 2, 4),
        ),
    ]
}

fn write_model(uri: &str, storage: &StorageOptions, key: Option<&EncryptionKey>) {
    let model = model();
    let mut s = Serializer::new();
    let tensors: Vec<(String, TensorData<'_>)> = model
        .iter()
        .map(|(name, dtype, shape, data)| {
            (name.clone(), TensorData::new(*dtype, shape, data).unwrap())
        })
        .collect();
    s.write_state_dict(tensors).unwrap();
    if let Some(key) = key {
        s.encryption(Encryption::with_key(key.clone()));
    }
    s.write_to_uri_with(uri, storage).unwrap();
}

/// The model written one tensor a call, each reaching the sink at once.
fn write_model_streaming(uri: &str, storage: &StorageOptions, key: Option<&EncryptionKey>) {
    let mut w = StreamingSerializer::create_uri(uri, storage).unwrap();
    if let Some(key) = key {
        w.encryption(Encryption::with_key(key.clone())).unwrap();
    }
    for (name, dtype, shape, data) in model() {
        w.write_state_dict([(name, TensorData::new(dtype, &shape, &data).unwrap())])
            .unwrap();
    }
    w.finish().unwrap();
}

fn check_ours(uri: &str, storage: &StorageOptions, key: Option<&EncryptionKey>) {
    let mut d = Deserializer::open_uri_with(uri, storage)
        .unwrap()
        .verify(Verify::All);
    if let Some(key) = key {
        d = d.decryption(Decryption::Key(key.clone())).unwrap();
    }
    let tensors = d.read_all().unwrap();
    let model = model();
    assert_eq!(tensors.len(), model.len());
    for (t, (name, _, shape, data)) in tensors.iter().zip(&model) {
        assert_eq!(t.path().to_string(), *name);
        assert_eq!(t.shape(), shape.as_slice());
        assert_eq!(t.as_bytes(), data.as_slice(), "{uri} {name}");
    }
}

fn python_job(uri: &str, port: u16, key: Option<&EncryptionKey>) -> Value {
    json!({
        "op": "read_uri",
        "uri": uri,
        "key_hex": key.map(|k| hex(k.as_bytes())),
        "s3": {"access_key": "testing", "secret_key": "testing", "endpoint": format!("http://127.0.0.1:{port}")},
    })
}

fn check_python(result: &Value, uri: &str) {
    assert_eq!(result["ok"], true, "Python could not read {uri}: {result}");
    let got: Vec<(String, String)> = result["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name_hex"].as_str().unwrap().to_owned(),
                t["sha256"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = model()
        .iter()
        .map(|(name, _, _, data)| (hex(name.as_bytes()), sha256_hex(data)))
        .collect();
    assert_eq!(got, want, "{uri}");
}

#[test]
fn files_written_to_s3_and_redis_are_read_by_us_and_by_python() {
    let moto = support::moto("out");
    let redis = support::redis_server();
    let storage = StorageOptions {
        s3: s3_options(moto.port),
        ..Default::default()
    };
    let key = EncryptionKey::from_bytes([7; 32]);
    let targets = [
        ("s3://out/vllm/m/v1/model.tensors".to_owned(), None),
        (
            "s3://out/vllm/m/v1/model-encrypted.tensors".to_owned(),
            Some(&key),
        ),
        (format!("redis://127.0.0.1:{}/m", redis.port), None),
        (
            format!("redis://127.0.0.1:{}/m-encrypted", redis.port),
            Some(&key),
        ),
    ];
    let mut jobs = Vec::new();
    let mut written = Vec::new();
    for (uri, key) in &targets {
        write_model(uri, &storage, *key);
        check_ours(uri, &storage, *key);
        jobs.push(python_job(uri, moto.port, *key));
        written.push(uri.clone());
        // The streaming writer, into the same kinds of sink.
        let streamed = format!("{uri}-streamed");
        write_model_streaming(&streamed, &storage, *key);
        check_ours(&streamed, &storage, *key);
        jobs.push(python_job(&streamed, moto.port, *key));
        written.push(streamed);
    }
    // Overwriting replaces the file whole.
    write_model(&targets[0].0, &storage, None);
    check_ours(&targets[0].0, &storage, None);

    for (uri, result) in written.iter().zip(oracle_batch(&jobs)) {
        check_python(&result, uri);
    }
}

/// Forwards to a real sink, then fails once `budget` bytes have passed.
#[derive(Debug)]
struct FailAfter {
    inner: Box<dyn Sink>,
    budget: AtomicI64,
}

impl Sink for FailAfter {
    fn uri(&self) -> &str {
        self.inner.uri()
    }
    fn reserve(&self, layout: &FileLayout) -> tensorizer::io::Result<()> {
        self.inner.reserve(layout)
    }
    fn announce(&self, segments: &[tensorizer::io::Segment]) -> tensorizer::io::Result<()> {
        self.inner.announce(segments)
    }
    fn write_all_at(&self, offset: u64, data: &[u8]) -> tensorizer::io::Result<()> {
        if self.budget.fetch_sub(data.len() as i64, Ordering::SeqCst) < data.len() as i64 {
            return Err(IoError::Protocol {
                uri: self.uri().to_owned(),
                message: "injected failure".into(),
            });
        }
        self.inner.write_all_at(offset, data)
    }
    fn commit(self: Box<Self>) -> tensorizer::io::Result<()> {
        self.inner.commit()
    }
}

#[test]
fn a_failed_write_keeps_the_previous_remote_file() {
    let moto = support::moto("out");
    let redis = support::redis_server();
    let storage = StorageOptions {
        s3: s3_options(moto.port),
        ..Default::default()
    };
    for uri in [
        "s3://out/model.tensors".to_owned(),
        format!("redis://127.0.0.1:{}/model", redis.port),
    ] {
        write_model(&uri, &storage, None);
        let other = vec![9u8; 12 << 20];
        let mut s = Serializer::new();
        s.write_state_dict(vec![(
            "other".to_owned(),
            TensorData::new(Dtype::U8, &[12 << 20], &other).unwrap(),
        )])
        .unwrap();
        let sink = FailAfter {
            inner: tensorizer::io::create_sink(&uri, &storage).unwrap(),
            budget: AtomicI64::new(6 << 20),
        };
        let err = s.write_to_sink(Box::new(sink)).unwrap_err().to_string();
        assert!(err.contains("injected failure"), "{err}");
        check_ours(&uri, &storage, None);

        // Streaming: a sink failing mid-tensor, and a writer dropped unfinished.
        let sink = FailAfter {
            inner: tensorizer::io::create_sink(&uri, &storage).unwrap(),
            budget: AtomicI64::new(6 << 20),
        };
        let mut w = StreamingSerializer::new(Box::new(sink));
        let t = TensorData::new(Dtype::U8, &[12 << 20], &other).unwrap();
        let err = w.write_state_dict([("other", t)]).unwrap_err().to_string();
        assert!(err.contains("injected failure"), "{err}");
        assert!(w.finish().is_err());
        let mut w = StreamingSerializer::create_uri(&uri, &storage).unwrap();
        let t = TensorData::new(Dtype::U8, &[12 << 20], &other).unwrap();
        w.write_state_dict([("other", t)]).unwrap();
        drop(w);
        check_ours(&uri, &storage, None);
    }
    let (_, uploads) = support::http_request(moto.port, "GET", "/out?uploads");
    assert!(!uploads.contains("<UploadId>"), "aborted: {uploads}");
}

/// GCS (fake-gcs-server) and Azure Blob (Azurite), reached as a user
/// would: through URIs and `StorageOptions`.
#[cfg(all(feature = "gcs", feature = "azure"))]
fn cloud_storage(gcs_port: u16, azurite_port: u16) -> StorageOptions {
    StorageOptions {
        gcs: tensorizer::GcsOptions {
            endpoint: Some(format!("http://127.0.0.1:{gcs_port}")),
            anonymous: true,
            ..Default::default()
        },
        azure: tensorizer::AzureOptions {
            use_emulator: true,
            endpoint: Some(format!("http://127.0.0.1:{azurite_port}/devstoreaccount1")),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[cfg(all(feature = "gcs", feature = "azure"))]
#[test]
fn every_fixture_loads_from_gcs_and_azure_like_from_disk() {
    let gcs = support::fake_gcs("fixtures");
    let azurite = support::azurite("fixtures");
    let storage = cloud_storage(gcs.port, azurite.port);
    let mut loaded = 0;
    for (path, key, pass) in fixture_files() {
        let bytes = std::fs::read(&path).unwrap();
        let local = outcome(Deserializer::open(&path), decryption(&key, &pass));
        let name = path.file_name().unwrap().to_string_lossy();
        for uri in [
            format!("gs://fixtures/{name}"),
            format!("az://fixtures/{name}"),
        ] {
            let sink = tensorizer::io::create_sink(&uri, &storage).unwrap();
            sink.reserve(&FileLayout::with_len(bytes.len() as u64))
                .unwrap();
            sink.write_all_at(0, &bytes).unwrap();
            sink.commit().unwrap();
            let source = tensorizer::io::open_source(&uri, &storage).unwrap();
            assert_eq!(
                source.read_range(0, source.len()).unwrap(),
                bytes,
                "{uri} bytes"
            );
            let remote = outcome(
                Deserializer::open_uri_with(&uri, &storage),
                decryption(&key, &pass),
            );
            assert_eq!(local, remote, "{uri}");
        }
        loaded += usize::from(local.is_ok());
    }
    assert!(loaded >= 30, "only {loaded} fixtures loaded");
}

#[cfg(all(feature = "gcs", feature = "azure"))]
#[test]
fn files_serialized_to_gcs_and_azure_load_back() {
    let gcs = support::fake_gcs("out");
    let azurite = support::azurite("out");
    let storage = cloud_storage(gcs.port, azurite.port);
    let key = EncryptionKey::from_bytes([9; 32]);
    for uri in [
        "gs://out/vllm/m/v1/model.tensors",
        "az://out/vllm/m/v1/model.tensors",
    ] {
        for key in [None, Some(&key)] {
            write_model(uri, &storage, key);
            check_ours(uri, &storage, key);
            write_model_streaming(uri, &storage, key);
            check_ours(uri, &storage, key);
        }
    }
}
