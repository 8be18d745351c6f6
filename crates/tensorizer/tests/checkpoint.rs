//! Safetensors files and sharded checkpoints through the same engine as
//! `.tensors` files: local directories, Hugging Face cache snapshots (the
//! blob's SHA-256 checked), S3 (moto) and HTTP (nginx); each rule of a
//! hostile checkpoint refused with a message naming it.
#![cfg(all(feature = "s3", feature = "http"))]

#[path = "../../tensorizer-io/tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype as StDtype, TensorView};
use sha2::{Digest, Sha256};
use tensorizer::{Checkpoint, Deserializer, Dtype, Error, FileFormat, S3Options, StorageOptions};

/// Deterministic tensors: name → (dtype, shape, bytes).
fn tensors(seed: u8, names: &[&str]) -> Vec<(String, StDtype, Vec<usize>, Vec<u8>)> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let (dtype, shape, size) = match i % 3 {
                0 => (StDtype::F32, vec![4, 8 + i], 4),
                1 => (StDtype::BF16, vec![3 + i], 2),
                _ => (StDtype::I64, vec![2, 2], 8),
            };
            let n: usize = shape.iter().product::<usize>() * size;
            let bytes = (0..n)
                .map(|k| (k as u8).wrapping_mul(31).wrapping_add(seed + i as u8))
                .collect();
            (name.to_string(), dtype, shape, bytes)
        })
        .collect()
}

fn safetensors_bytes(ts: &[(String, StDtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(String, TensorView<'_>)> = ts
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize(views, Some(meta)).unwrap()
}

/// Writes a two-shard checkpoint with its index into `dir`; returns every
/// tensor's name and bytes.
fn sharded(dir: &Path) -> HashMap<String, Vec<u8>> {
    let a = tensors(
        1,
        &["model.embed.weight", "model.layers.0.w", "model.layers.0.b"],
    );
    let b = tensors(2, &["model.layers.1.w", "lm_head.weight"]);
    std::fs::write(
        dir.join("model-00001-of-00002.safetensors"),
        safetensors_bytes(&a),
    )
    .unwrap();
    std::fs::write(
        dir.join("model-00002-of-00002.safetensors"),
        safetensors_bytes(&b),
    )
    .unwrap();
    let mut map = serde_json::Map::new();
    for (n, ..) in &a {
        map.insert(n.clone(), "model-00001-of-00002.safetensors".into());
    }
    for (n, ..) in &b {
        map.insert(n.clone(), "model-00002-of-00002.safetensors".into());
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    a.into_iter()
        .chain(b)
        .map(|(n, _, _, bytes)| (n, bytes))
        .collect()
}

fn loaded(c: &Checkpoint) -> HashMap<String, Vec<u8>> {
    c.read_all()
        .unwrap()
        .into_iter()
        .map(|t| (t.name().to_string(), t.as_bytes().to_vec()))
        .collect()
}

#[test]
fn a_safetensors_file_loads_through_the_deserializer() {
    let dir = tempfile::tempdir().unwrap();
    let ts = tensors(9, &["a", "b", "c", "d"]);
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, safetensors_bytes(&ts)).unwrap();
    let d = Deserializer::open(&path).unwrap();
    match d.format() {
        FileFormat::Safetensors { metadata } => {
            assert_eq!(metadata.as_ref().unwrap()["format"], "pt")
        }
        other => panic!("{other:?}"),
    }
    let all = d.read_all().unwrap();
    assert_eq!(all.len(), 4);
    for (name, dtype, shape, bytes) in &ts {
        let t = d.read(name.as_str()).unwrap();
        assert_eq!(t.as_bytes(), &bytes[..], "{name}");
        let want: Vec<u64> = shape.iter().map(|&x| x as u64).collect();
        assert_eq!(t.shape(), &want[..]);
        let expect = match dtype {
            StDtype::F32 => Dtype::F32,
            StDtype::BF16 => Dtype::BF16,
            _ => Dtype::I64,
        };
        assert_eq!(t.dtype(), expect);
    }
    // The same bytes as safetensors' own reader, streamed under a budget.
    let mut streamed = 0;
    d.stream(64, |t| {
        streamed += t.as_bytes().len();
        Ok(())
    })
    .unwrap();
    assert_eq!(streamed, ts.iter().map(|t| t.3.len()).sum::<usize>());
}

#[test]
fn a_sharded_directory_loads_as_one_model_and_its_index_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let want = sharded(dir.path());
    let c = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(c.shards().len(), 2);
    assert_eq!(c.len(), 5);
    assert_eq!(loaded(&c), want);
    let mut streamed = HashMap::new();
    c.stream(1 << 10, |t| {
        streamed.insert(t.name().to_string(), t.as_bytes().to_vec());
        Ok(())
    })
    .unwrap();
    assert_eq!(streamed, want);
    // The index file itself names the checkpoint too.
    let by_index = Checkpoint::open(dir.path().join("model.safetensors.index.json")).unwrap();
    assert_eq!(loaded(&by_index), want);

    let index_path = dir.path().join("model.safetensors.index.json");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: [(&str, Edit, &str); 4] = [
        (
            "a tensor named in the index but absent from its shard",
            Box::new(|v| {
                v["weight_map"]["ghost"] = "model-00001-of-00002.safetensors".into();
            }),
            "which does not hold it",
        ),
        (
            "a shard's tensor absent from the index",
            Box::new(|v| {
                v["weight_map"]
                    .as_object_mut()
                    .unwrap()
                    .remove("lm_head.weight");
            }),
            "is not in the index's weight_map",
        ),
        (
            "a shard name climbing out",
            Box::new(|v| {
                v["weight_map"]["lm_head.weight"] = "../model-00002-of-00002.safetensors".into();
            }),
            "climbs out",
        ),
        (
            "an absolute shard name",
            Box::new(|v| {
                v["weight_map"]["lm_head.weight"] = "/etc/passwd".into();
            }),
            "not a name relative",
        ),
    ];
    for (what, edit, message) in cases {
        let mut v = index.clone();
        edit(&mut v);
        std::fs::write(&index_path, v.to_string()).unwrap();
        let err = Checkpoint::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains(message), "{what}: {err}");
    }
}

#[test]
fn a_link_out_of_the_model_directory_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("model");
    std::fs::create_dir(&model).unwrap();
    std::fs::write(
        root.path().join("elsewhere.safetensors"),
        safetensors_bytes(&tensors(3, &["w"])),
    )
    .unwrap();
    std::os::unix::fs::symlink("../elsewhere.safetensors", model.join("model.safetensors"))
        .unwrap();
    let err = Checkpoint::open(&model).unwrap_err().to_string();
    assert!(
        err.contains("outside the model directory") || err.contains("leads out"),
        "{err}"
    );
}

/// A Hugging Face cache repository: `blobs/<sha256>`, a snapshot linking
/// to it, `refs/main`.
fn hf_cache(root: &Path, bytes: &[u8]) -> (std::path::PathBuf, std::path::PathBuf) {
    let repo = root.join("models--acme--tiny");
    let rev = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo.join("snapshots").join(rev);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), rev).unwrap();
    let digest: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let blob = repo.join("blobs").join(&digest);
    std::fs::write(&blob, bytes).unwrap();
    std::os::unix::fs::symlink(
        format!("../../blobs/{digest}"),
        snapshot.join("model.safetensors"),
    )
    .unwrap();
    (repo, blob)
}

#[test]
fn a_cache_snapshot_is_hashed_against_its_blob_name() {
    let root = tempfile::tempdir().unwrap();
    let ts = tensors(5, &["w", "b", "e", "z"]);
    let bytes = safetensors_bytes(&ts);
    let (repo, blob) = hf_cache(root.path(), &bytes);
    let c = Checkpoint::open(&repo).unwrap();
    assert!(c.shards()[0].expected_sha256().is_some());
    assert_eq!(loaded(&c).len(), 4);
    assert!(c.check(false).iter().flatten().all(|t| t.outcome.is_ok()));

    // One byte of tensor data flipped: the blob no longer is what its name says.
    let mut bad = bytes.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    std::fs::write(&blob, &bad).unwrap();
    let c = Checkpoint::open(&repo).unwrap();
    let err = c.read_all().unwrap_err();
    assert!(matches!(err, Error::FileDigest { .. }), "{err}");
    assert!(err.to_string().contains("SHA-256"), "{err}");
    let checks = c.check(false);
    assert!(
        checks
            .iter()
            .flatten()
            .any(|t| matches!(t.outcome, Err(Error::FileDigest { .. })))
    );
    // Streaming fails at its end too; filtered loads cannot check and do not.
    assert!(c.stream(1 << 20, |_| Ok(())).is_err());
    assert!(
        c.shards()[0]
            .read_filtered(|e| e.name.to_string() == "w")
            .is_ok()
    );
}

#[test]
fn hostile_safetensors_headers_get_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = safetensors_bytes(&tensors(4, &["w", "v"]));
    let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let json = String::from_utf8(good[8..8 + n].to_vec()).unwrap();
    let with_json = |json: &str, data: usize| {
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(json.as_bytes());
        out.resize(out.len() + data, 0);
        out
    };
    let huge_len = {
        let mut b = (1u64 << 63).to_le_bytes().to_vec();
        b.extend_from_slice(b"{}");
        b
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("a header length of 2^63", huge_len, "exceeds limit"),
        (
            "a header over 100 MB",
            {
                let mut b = (100_000_001u64).to_le_bytes().to_vec();
                b.push(b'{');
                b
            },
            "exceeds limit",
        ),
        // 100,000 levels inside a field nobody reads: skipped without
        // recursion, then the entry is judged (no stack overflow).
        (
            "deep nesting",
            with_json(
                &format!(
                    "{{\"w\":{{\"x\":{}{}}}}}",
                    "[".repeat(100_000),
                    "]".repeat(100_000)
                ),
                0,
            ),
            "missing field `dtype`",
        ),
        (
            "deep nesting where a value is read",
            with_json(
                &format!(
                    "{{\"__metadata__\":{}{}}}",
                    "[".repeat(100_000),
                    "]".repeat(100_000)
                ),
                0,
            ),
            "strings to strings",
        ),
        (
            "overlapping offsets",
            with_json(
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                12,
            ),
            "overlaps",
        ),
        (
            "out-of-file offsets",
            with_json(
                r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
                8,
            ),
            "truncated",
        ),
        (
            "a shape whose product overflows",
            with_json(
                r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}}"#,
                8,
            ),
            "overflows",
        ),
        (
            "a truncated file",
            good[..good.len() - 3].to_vec(),
            "truncated",
        ),
        (
            "a truncated header",
            good[..8 + n / 2].to_vec(),
            "truncated",
        ),
    ];
    let _ = json;
    for (what, bytes, message) in cases {
        let path = dir.path().join("bad.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        let err = match Deserializer::open(&path) {
            Ok(_) => panic!("{what}: opened"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(message), "{what}: {err}");
    }
}

fn s3_options(port: u16) -> S3Options {
    S3Options {
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".into()),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        region: Some("us-east-1".into()),
        ..Default::default()
    }
}

fn put(uri: &str, bytes: &[u8], storage: &StorageOptions) {
    let sink = tensorizer::io::create_sink(uri, storage).unwrap();
    sink.reserve(&tensorizer::io::FileLayout::with_len(bytes.len() as u64))
        .unwrap();
    sink.write_all_at(0, bytes).unwrap();
    sink.commit().unwrap();
}

#[test]
fn a_sharded_checkpoint_loads_from_s3_and_http() {
    let dir = tempfile::tempdir().unwrap();
    let want = sharded(dir.path());
    // S3: with its index, then listed without it.
    let moto = support::moto("models");
    let storage = StorageOptions {
        s3: s3_options(moto.port),
        ..Default::default()
    };
    for name in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ] {
        let bytes = std::fs::read(dir.path().join(name)).unwrap();
        put(&format!("s3://models/tiny/{name}"), &bytes, &storage);
        if name.ends_with(".safetensors") {
            put(&format!("s3://models/listed/{name}"), &bytes, &storage);
        }
    }
    for uri in [
        "s3://models/tiny/",
        "s3://models/tiny",
        "s3://models/listed/",
        "s3://models/tiny/model.safetensors.index.json",
    ] {
        let c = Checkpoint::open_uri_with(uri, &storage).unwrap();
        assert_eq!(loaded(&c), want, "{uri}");
    }
    let err = Checkpoint::open_uri_with("s3://models/absent/", &storage)
        .unwrap_err()
        .to_string();
    assert!(err.contains("holds no"), "{err}");
    // HTTP has no listing: the index names the shards.
    let nginx = support::Nginx::start(dir.path());
    let c = Checkpoint::open_uri(&nginx.url("")).unwrap();
    assert_eq!(loaded(&c), want);
    let one = Deserializer::open_uri(&nginx.url("model-00002-of-00002.safetensors")).unwrap();
    assert_eq!(one.read_all().unwrap().len(), 2);
}

#[test]
fn a_server_that_truncates_a_shard_mid_stream_is_resumed_or_named() {
    use support::{Behavior, TestServer};
    let ts = tensors(6, &["a", "b", "c", "d", "e", "f"]);
    let bytes = safetensors_bytes(&ts);
    let storage = StorageOptions {
        retry: tensorizer::RetryPolicy {
            max_attempts: 3,
            base_delay: std::time::Duration::from_millis(5),
            max_delay: std::time::Duration::from_millis(20),
            ..Default::default()
        },
        ..Default::default()
    };
    // Cut three times, then whole: the reads resume where the bytes stopped.
    let flaky = TestServer::start(
        bytes.clone(),
        Behavior {
            cut_after: Some(100),
            cut_first: 4,
            ..Behavior::default()
        },
    );
    let d = Deserializer::open_uri_with(&flaky.url(), &storage).unwrap();
    assert_eq!(d.read_all().unwrap().len(), 6);
    // Cut on every request: one error naming the range and the attempts.
    let broken = TestServer::start(
        bytes,
        Behavior {
            cut_after: Some(100),
            cut_first: usize::MAX,
            ..Behavior::default()
        },
    );
    let started = std::time::Instant::now();
    let err = Deserializer::open_uri_with(&broken.url(), &storage)
        .and_then(|d| d.read_all())
        .unwrap_err()
        .to_string();
    assert!(err.contains("bytes") && err.contains("attempt"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}
