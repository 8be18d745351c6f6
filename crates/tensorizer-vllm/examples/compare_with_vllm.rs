//! Compares what `tensorizer_vllm::serialize` writes per rank with what
//! vLLM itself holds per rank for the same checkpoint: names, order,
//! module indices, types, dtypes, shapes and the SHA-256 of every tensor,
//! vLLM's side listed by `scripts/vllm_reference.py` (vLLM's model classes
//! built on the CPU, weights loaded by vLLM's own loaders). Run by
//! `cargo xtask vllm-reference`, which installs vLLM into a venv (9.4 GB).
//!
//! Usage: compare_with_vllm PYTHON_WITH_VLLM [OUT_DIR]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use common::{Tiny, write_checkpoint};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tensorizer::Deserializer;
use tensorizer_vllm::{SerializeOptions, serialize};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let python = PathBuf::from(
        args.next()
            .expect("usage: compare_with_vllm PYTHON_WITH_VLLM [OUT_DIR]"),
    );
    let keep = args.next().map(PathBuf::from);
    let tmp = tempfile::tempdir().unwrap();
    let root = keep.unwrap_or_else(|| tmp.path().to_path_buf());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/vllm_reference.py");
    let mut failures = 0;
    for (tiny, tp) in [
        (Tiny::Llama, 2),
        (Tiny::Llama31, 2),
        (Tiny::Mistral, 4),
        (Tiny::Qwen2, 4),
        (Tiny::Opt, 2),
    ] {
        let name = format!("{tiny:?}-tp{tp}").to_lowercase();
        let model = write_checkpoint(&root.join(&name), tiny, false);
        let mut o = SerializeOptions::new(
            model.display().to_string(),
            root.join("out").display().to_string(),
        );
        o.model_name = Some(format!("tiny/{name}"));
        o.suffix = Some("v1".into());
        o.tensor_parallel_size = tp;
        o.overwrite = true;
        let report = serialize(&o, &|_| {}).unwrap();
        let reference = root.join(format!("{name}.vllm.json"));
        let template = format!("{}/model-rank-%03d.tensors", report.directory);
        let status = Command::new(&python)
            .arg(&script)
            .arg(&model)
            .arg(tp.to_string())
            .arg(&reference)
            .arg(&template)
            .status()
            .unwrap();
        if !status.success() {
            eprintln!("{name}: vllm_reference.py failed ({status})");
            failures += 1;
            continue;
        }
        let vllm: Vec<Value> = serde_json::from_slice(&std::fs::read(&reference).unwrap()).unwrap();
        for (rank, listing) in vllm.iter().enumerate() {
            let rows = listing["tensors"].as_array().unwrap();
            let file = format!("{}/model-rank-{rank:03}.tensors", report.directory);
            let ours = Deserializer::open(&file).unwrap().read_all().unwrap();
            let mut diffs = Vec::new();
            if ours.len() != rows.len() {
                diffs.push(format!(
                    "{} tensors here, {} in vLLM",
                    ours.len(),
                    rows.len()
                ));
            }
            let mut rotary_values = None;
            for (t, r) in ours.iter().zip(rows) {
                let here = (
                    t.name(),
                    u64::from(t.module_idx()),
                    format!("{:?}", t.tensor_type()).to_uppercase(),
                    t.dtype().to_string(),
                    t.shape().to_vec(),
                );
                let there = (
                    r["name"].as_str().unwrap().to_owned(),
                    r["module_idx"].as_u64().unwrap(),
                    r["type"].as_str().unwrap().to_owned(),
                    r["dtype"].as_str().unwrap().to_owned(),
                    r["shape"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|d| d.as_u64().unwrap())
                        .collect::<Vec<_>>(),
                );
                if here != there {
                    diffs.push(format!("ours {here:?} vs vLLM {there:?}"));
                    continue;
                }
                let Some(want) = r["sha256"].as_str() else {
                    continue;
                };
                let got: String = Sha256::digest(t.as_bytes())
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                if got != want {
                    if t.name().ends_with("cos_sin_cache") {
                        rotary_values = Some(t.name());
                    } else {
                        diffs.push(format!("{}: bytes differ", t.name()));
                    }
                }
            }
            // Our file through vLLM's own tensorizer loading path.
            let loaded = &listing["loaded"];
            if loaded["ok"] != true {
                diffs.push(format!(
                    "vLLM's loader refused our file: {}",
                    loaded["error"]
                ));
            } else {
                for k in loaded["differ"].as_array().unwrap() {
                    let k = k.as_str().unwrap();
                    if !k.ends_with("cos_sin_cache") {
                        diffs.push(format!(
                            "after load_into_module, {k} differs from vLLM's own load"
                        ));
                    }
                }
            }
            println!(
                "{name} rank {rank}: {} tensors, {} differences, loaded by vLLM's tensorizer path ({} state-dict entries){}",
                rows.len(),
                diffs.len(),
                loaded["entries"],
                rotary_values
                    .map(|n| {
                        let r = &loaded["rotary"][&n];
                        format!(
                            " ({n}: {} of {} values differ, by at most {})",
                            r[0], r[1], r[2]
                        )
                    })
                    .unwrap_or_default()
            );
            for d in diffs.iter().take(10) {
                println!("    {d}");
            }
            failures += usize::from(!diffs.is_empty());
        }
    }
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
