//! The vLLM workflow against the Python side and real storage: tensorizer
//! 2.12.1 reads every file `serialize` writes (with the key when
//! encrypted); the rotary cache equals torch's computation of vLLM's
//! formula; a real model (all-MiniLM-L6-v2) goes to a local directory and
//! to S3 (moto) and loads back. Needs `TENSORIZER_ORACLE_PYTHON`, moto and
//! `TENSORIZER_MINILM_DIR` (`cargo xtask test` provides all three).
#![cfg(feature = "s3")]

#[path = "../../tensorizer-io/tests/support/mod.rs"]
mod support;

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{Tiny, write_checkpoint, write_lora};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tensorizer::{Decryption, Deserializer, EncryptionKey, S3Options, StorageOptions};
use tensorizer_vllm::{
    Checkpoint, Device, Layout, SerializeOptions, TensorizerConfig, load_ranks, serialize,
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

fn scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts")
}

fn oracle_batch(jobs: &[Value]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let jobs_file = dir.path().join("jobs.json");
    std::fs::write(&jobs_file, serde_json::to_vec(jobs).unwrap()).unwrap();
    let out = Command::new(oracle_python())
        .arg(scripts().join("oracle_batch.py"))
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

fn minilm() -> PathBuf {
    let dir = std::env::var_os("TENSORIZER_MINILM_DIR").map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "TENSORIZER_MINILM_DIR is not set: this test needs all-MiniLM-L6-v2. Run `cargo xtask test`, or: \
             export TENSORIZER_MINILM_DIR=$(bash scripts/setup_models.sh $TENSORIZER_ORACLE_PYTHON | tail -n1)"
        )
    });
    assert!(
        dir.join("model.safetensors").is_file(),
        "{}: no model.safetensors; run scripts/setup_models.sh",
        dir.display()
    );
    dir
}

/// name → sha256 of its bytes, as we load the file.
fn our_hashes(path: &Path, key: Option<&[u8]>) -> HashMap<String, String> {
    let mut d = Deserializer::open(path).unwrap();
    if let Some(k) = key {
        // vLLM's marker is the one meta tensor of its files.
        d = d
            .decryption(Decryption::Key(EncryptionKey::from_key_file(k).unwrap()))
            .unwrap()
            .unauthenticated_meta(tensorizer::UnauthenticatedMeta::Allow(vec![
                tensorizer_vllm::MARKER_TENSOR.into(),
            ]));
    }
    d.read_all()
        .unwrap()
        .into_iter()
        .map(|t| (t.name(), to_hex(&Sha256::digest(t.as_bytes()))))
        .collect()
}

fn python_hashes(info: &Value) -> HashMap<String, String> {
    info["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let name = String::from_utf8(hex(t["name_hex"].as_str().unwrap())).unwrap();
            (name, t["sha256"].as_str().unwrap().to_owned())
        })
        .collect()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn python_reads_every_file_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<(PathBuf, Option<Vec<u8>>)> = Vec::new();
    for (tiny, tp, encrypted) in [
        (Tiny::Llama, 2, true),
        (Tiny::Qwen2, 4, false),
        (Tiny::Opt, 1, false),
        (Tiny::Mistral, 4, true),
    ] {
        let name = format!("{tiny:?}-{tp}");
        let model = write_checkpoint(&dir.path().join(&name), tiny, true);
        let mut o = SerializeOptions::new(
            model.display().to_string(),
            dir.path().join("out").display().to_string(),
        );
        o.model_name = Some(format!("acme/{name}"));
        o.suffix = Some("v1".into());
        o.tensor_parallel_size = tp;
        let key_path = dir.path().join(format!("{name}.key"));
        if encrypted {
            o.keyfile = Some(key_path.display().to_string());
        }
        if tiny == Tiny::Llama {
            o.lora_path = Some(write_lora(&dir.path().join("lora")));
        }
        let report = serialize(&o, &|_| {}).unwrap();
        let key = encrypted.then(|| std::fs::read(&key_path).unwrap());
        for (uri, _) in &report.files {
            if uri.ends_with(".tensors") {
                // The adapter is written unencrypted, as vLLM writes it.
                let k = if uri.ends_with("adapter_model.tensors") {
                    None
                } else {
                    key.clone()
                };
                files.push((PathBuf::from(uri), k));
            }
        }
    }
    assert_eq!(files.len(), 2 + 1 + 4 + 1 + 4);
    let mut jobs: Vec<Value> = files
        .iter()
        .map(|(f, k)| json!({"op": "read", "file": f, "key_hex": k.as_deref().map(to_hex), "passphrase": null}))
        .collect();
    // An encrypted rank without its key is refused by Python too.
    let (locked, _) = files.iter().find(|(_, k)| k.is_some()).unwrap();
    jobs.push(json!({"op": "read", "file": locked, "key_hex": null, "passphrase": null}));
    let results = oracle_batch(&jobs);
    for ((file, key), r) in files.iter().zip(&results) {
        assert_eq!(r["ok"], true, "{}: {r}", file.display());
        assert_eq!(
            python_hashes(&r["info"]),
            our_hashes(file, key.as_deref()),
            "{}",
            file.display()
        );
    }
    let refused = results.last().unwrap();
    assert_eq!(refused["ok"], false, "{refused}");
}

#[test]
fn rotary_cache_matches_torch() {
    use tensorizer_vllm::RotarySpec;
    use tensorizer_vllm::config::{Rope, RopeScaling};
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        // Llama-3-8B: theta 500 000, head_dim 128, 8 192 positions, bfloat16.
        (500_000.0, 128, 8192, "bfloat16", None),
        // Llama-3.1's llama3 scaling (positions cut to 16 384 for time).
        (
            500_000.0,
            128,
            16384,
            "bfloat16",
            Some((8.0, 1.0, 4.0, 8192.0)),
        ),
        // Qwen2-like: theta 1e6, head_dim 64, float16.
        (1_000_000.0, 64, 4096, "float16", None),
    ];
    for (theta, dim, positions, dtype, llama3) in cases {
        let spec = RotarySpec {
            max_position: positions,
            rotary_dim: dim,
            rope: Rope {
                theta,
                scaling: match llama3 {
                    None => RopeScaling::None,
                    Some((factor, low, high, orig)) => RopeScaling::Llama3 {
                        factor,
                        low_freq_factor: low,
                        high_freq_factor: high,
                        original_max_position: orig,
                    },
                },
                partial_rotary_factor: 1.0,
            },
        };
        let spec_file = dir.path().join("spec.json");
        let llama3_json = llama3.map(|(f, l, h, o)| {
            json!({"factor": f, "low_freq_factor": l, "high_freq_factor": h, "original_max_position_embeddings": o})
        });
        std::fs::write(
            &spec_file,
            json!({"theta": theta, "rotary_dim": dim, "max_position": positions, "dtype": dtype, "llama3": llama3_json})
                .to_string(),
        )
        .unwrap();
        let (f32_out, cast_out) = (dir.path().join("f32"), dir.path().join("cast"));
        let out = Command::new(oracle_python())
            .arg(scripts().join("vllm_rope.py"))
            .args([&spec_file, &f32_out, &cast_out])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let torch: Vec<f32> = std::fs::read(&f32_out)
            .unwrap()
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let ours = spec.compute();
        assert_eq!(ours.len(), torch.len());
        // f32: torch's vectorised pow/cos/sin may be 1 ulp from the correctly
        // rounded values we compute; never more.
        let ulps = |a: f32, b: f32| (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs();
        let max_ulp = ours
            .iter()
            .zip(&torch)
            .map(|(&a, &b)| ulps(a, b))
            .max()
            .unwrap();
        let off = ours.iter().zip(&torch).filter(|(a, b)| a != b).count();
        // In the model dtype, what vLLM actually keeps.
        let torch_cast = std::fs::read(&cast_out).unwrap();
        let to = tensorizer_vllm::config::parse_dtype(dtype).unwrap();
        let ours_f32: Vec<u8> = ours.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut ours_cast = vec![0u8; torch_cast.len()];
        tensorizer_vllm::checkpoint::cast_into(
            &ours_f32,
            tensorizer::Dtype::F32,
            &mut ours_cast,
            to,
        )
        .unwrap();
        let cast_off = ours_cast
            .chunks(2)
            .zip(torch_cast.chunks(2))
            .filter(|(a, b)| a != b)
            .count();
        eprintln!(
            "rotary theta {theta} dim {dim} x {positions} {dtype} llama3 {}: f32 {off} of {} differ (max {max_ulp} ulp); {dtype}: {cast_off} differ",
            llama3.is_some(),
            ours.len()
        );
        assert!(max_ulp <= 1, "max {max_ulp} ulp");
        assert!(
            cast_off * 10_000 <= ours.len(),
            "{cast_off} of {} differ in {dtype}",
            ours.len()
        );
    }
}

#[test]
fn real_model_to_local_and_s3_and_back() {
    let model = minilm();
    let checkpoint = Checkpoint::open(&model).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = support::moto("models");
    let storage = StorageOptions {
        s3: S3Options {
            access_key_id: Some("test".into()),
            secret_access_key: Some("test".into()),
            endpoint: Some(format!("http://127.0.0.1:{}", server.port)),
            ..Default::default()
        },
        ..Default::default()
    };
    for destination in [
        dir.path().display().to_string(),
        "s3://models/prefix".to_owned(),
    ] {
        for tp in [1, 2] {
            let mut o = SerializeOptions::new(model.display().to_string(), destination.clone());
            o.model_name = Some("sentence-transformers/all-MiniLM-L6-v2".into());
            o.suffix = Some(format!("tp{tp}"));
            o.tensor_parallel_size = tp;
            o.storage = storage.clone();
            o.keyfile = Some(format!("{destination}/keys/minilm-tp{tp}.key"));
            let started = Instant::now();
            let report = serialize(&o, &|_| {}).unwrap();
            let wrote = started.elapsed().as_secs_f64();
            assert_eq!(report.layout, Layout::Hf);
            assert_eq!(
                report.warnings.len(),
                usize::from(tp > 1),
                "BertModel has no rules: {:?}",
                report.warnings
            );
            let uri = if tp == 1 {
                "model.tensors"
            } else {
                "model-rank-%03d.tensors"
            };
            let config = TensorizerConfig::from_json(
                &json!({
                    "tensorizer_uri": format!("{}/{uri}", report.directory),
                    "encryption_keyfile": o.keyfile,
                    "verify_hash": true,
                    "s3_access_key_id": "test", "s3_secret_access_key": "test",
                    "s3_endpoint": storage.s3.endpoint,
                })
                .to_string(),
            )
            .unwrap();
            let started = Instant::now();
            let loads = load_ranks(&config, tp, Device::Cpu, &mut |_| {}).unwrap();
            let read = started.elapsed().as_secs_f64();
            let bytes: u64 = checkpoint
                .tensors()
                .values()
                .map(|t| t.range.len() as u64)
                .sum();
            for l in &loads {
                assert_eq!((l.tensors, l.bytes), (checkpoint.tensors().len(), bytes));
            }
            // Same bytes as the checkpoint, through our reader.
            let d = config.open_rank(tp - 1).unwrap();
            for t in d.read_all().unwrap() {
                assert_eq!(
                    t.as_bytes(),
                    &*checkpoint
                        .bytes(checkpoint.get(&t.name()).unwrap())
                        .unwrap(),
                    "{}",
                    t.name()
                );
            }
            eprintln!(
                "all-MiniLM-L6-v2 -> {destination} tp {tp}: serialize {wrote:.3} s, load {read:.3} s ({} ranks, {bytes} tensor bytes each)",
                loads.len()
            );
            if destination.starts_with("s3://") && tp == 1 {
                let key = {
                    let src = tensorizer::io::open_source(o.keyfile.as_deref().unwrap(), &storage)
                        .unwrap();
                    src.read_range(0, src.len()).unwrap()
                };
                let r = oracle_batch(&[json!({
                    "op": "read_uri", "uri": format!("{}/model.tensors", report.directory), "key_hex": to_hex(&key),
                    "s3": {"access_key": "test", "secret_key": "test", "endpoint": storage.s3.endpoint},
                })]);
                assert_eq!(r[0]["ok"], true, "{}", r[0]);
                assert_eq!(
                    r[0]["tensors"].as_array().unwrap().len(),
                    checkpoint.tensors().len()
                );
                // The model's files sit beside the weights, so the folder serves as the model.
                let cfg = tensorizer::io::open_source(
                    &format!("{}/config.json", report.directory),
                    &storage,
                )
                .unwrap();
                assert_eq!(
                    cfg.read_range(0, cfg.len()).unwrap(),
                    std::fs::read(model.join("config.json")).unwrap()
                );
            }
        }
    }
}

#[test]
fn vllm_layout_to_s3_loads_like_the_local_one() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_checkpoint(&dir.path().join("ckpt"), Tiny::Mistral, true);
    let server = support::moto("tiny");
    let endpoint = format!("http://127.0.0.1:{}", server.port);
    let mut remote = SerializeOptions::new(model.display().to_string(), "s3://tiny/models/");
    remote.model_name = Some("mistralai/tiny".into());
    remote.suffix = Some("v1".into());
    remote.tensor_parallel_size = 2;
    remote.keyfile = Some("s3://tiny/keys/tiny.key".into());
    remote.storage.s3 = S3Options {
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".into()),
        endpoint: Some(endpoint.clone()),
        ..Default::default()
    };
    let report = serialize(&remote, &|_| {}).unwrap();
    assert_eq!(report.directory, "s3://tiny/models/vllm/mistralai/tiny/v1");
    let mut local = SerializeOptions::new(
        model.display().to_string(),
        dir.path().join("out").display().to_string(),
    );
    local.model_name = remote.model_name.clone();
    local.suffix = Some("v1".into());
    local.tensor_parallel_size = 2;
    serialize(&local, &|_| {}).unwrap();
    // The key is on S3, never replaced: a second run is refused.
    let e = serialize(&remote, &|_| {}).unwrap_err().to_string();
    assert!(e.contains("already exists"), "{e}");
    let config = TensorizerConfig::from_json(
        &json!({
            "tensorizer_uri": format!("{}/model-rank-%03d.tensors", report.directory),
            "encryption_keyfile": "s3://tiny/keys/tiny.key",
            "s3_access_key_id": "test", "s3_secret_access_key": "test", "s3_endpoint": endpoint,
        })
        .to_string(),
    )
    .unwrap();
    for rank in 0..2 {
        let from_s3 = config.open_rank(rank).unwrap().read_all().unwrap();
        let from_disk = Deserializer::open(dir.path().join(format!(
            "out/vllm/mistralai/tiny/v1/model-rank-{rank:03}.tensors"
        )))
        .unwrap()
        .read_all()
        .unwrap();
        assert_eq!(from_s3.len(), from_disk.len());
        for (a, b) in from_s3.iter().zip(&from_disk) {
            assert_eq!(
                (a.name(), a.shape(), a.as_bytes()),
                (b.name(), b.shape(), b.as_bytes())
            );
        }
    }
}

/// Uploads every file of the local directory `dir` under `prefix`.
fn upload_dir(dir: &Path, prefix: &str, storage: &StorageOptions) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let uri = format!("{prefix}/{}", path.file_name().unwrap().to_string_lossy());
        let sink = tensorizer::io::create_sink(&uri, storage).unwrap();
        sink.write_all_at(0, &std::fs::read(&path).unwrap())
            .unwrap();
        sink.commit().unwrap();
    }
}

/// Every file under `dir`, by path relative to it, with its bytes.
fn tree(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    for (name, _) in
        tensorizer::io::list(&dir.display().to_string(), true, &Default::default()).unwrap()
    {
        out.insert(name.clone(), std::fs::read(dir.join(&name)).unwrap());
    }
    out
}

#[test]
fn vllm_serialize_reads_the_model_from_s3_as_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_checkpoint(&dir.path().join("qwen"), Tiny::Qwen2, true);
    std::fs::write(model.join("tokenizer.json"), r#"{"version": "1.0"}"#).unwrap();
    let server = support::moto("ckpt");
    let storage = StorageOptions {
        s3: S3Options {
            access_key_id: Some("test".into()),
            secret_access_key: Some("test".into()),
            endpoint: Some(format!("http://127.0.0.1:{}", server.port)),
            ..Default::default()
        },
        ..Default::default()
    };
    upload_dir(&model, "s3://ckpt/models/qwen", &storage);
    for tp in [1, 2] {
        let run = |source: String, out: &Path| {
            let mut o = SerializeOptions::new(source, out.display().to_string());
            o.suffix = Some(format!("tp{tp}"));
            o.tensor_parallel_size = tp;
            o.storage = storage.clone();
            serialize(&o, &|_| {}).unwrap()
        };
        let from_disk = dir.path().join(format!("disk{tp}"));
        let from_s3 = dir.path().join(format!("s3-{tp}"));
        run(model.display().to_string(), &from_disk);
        let report = run("s3://ckpt/models/qwen/".into(), &from_s3);
        // The folder's name, as for a directory.
        assert!(
            report.directory.ends_with(
                "/vllm/qwen/tp{tp}"
                    .replace("{tp}", &tp.to_string())
                    .as_str()
            ),
            "{}",
            report.directory
        );
        let (a, b) = (tree(&from_disk), tree(&from_s3));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        assert!(
            a.keys().any(|k| k.ends_with("tokenizer.json")),
            "{:?}",
            a.keys()
        );
        for (name, bytes) in &a {
            assert!(
                &b[name] == bytes,
                "tp {tp}: {name} differs between disk and S3"
            );
        }
    }
    // An index whose shard climbs out of the prefix is refused before any read.
    let index = serde_json::json!({"weight_map": {"lm_head.weight": "../other/model.safetensors"}});
    let sink = tensorizer::io::create_sink(
        "s3://ckpt/models/evil/model.safetensors.index.json",
        &storage,
    )
    .unwrap();
    sink.write_all_at(0, index.to_string().as_bytes()).unwrap();
    sink.commit().unwrap();
    let mut o = SerializeOptions::new(
        "s3://ckpt/models/evil",
        dir.path().join("evil").display().to_string(),
    );
    o.storage = storage.clone();
    let e = serialize(&o, &|_| {}).unwrap_err().to_string();
    assert!(e.contains("../other/model.safetensors"), "{e}");
    // A missing model names the prefix and the object, with no secret.
    let mut o = SerializeOptions::new(
        "s3://ckpt/models/absent/",
        dir.path().join("absent").display().to_string(),
    );
    o.storage = storage;
    let e = serialize(&o, &|_| {}).unwrap_err().to_string();
    assert!(e.contains("absent") && !e.contains("test:test"), "{e}");
}
