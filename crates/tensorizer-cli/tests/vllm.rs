//! `tensorizer vllm serialize | deserialize` end to end on a tiny Qwen2
//! checkpoint: the serialized tree, the printed vLLM line, every rank
//! loaded back with its key, and one-line errors with exit status 1.

#[path = "../../tensorizer-vllm/tests/common/mod.rs"]
mod common;

use std::process::{Command, Output};

use common::{Tiny, write_checkpoint};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tensorizer"))
        .args(args)
        .env("HOME", "/nonexistent")
        .output()
        .expect("run the CLI")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `vllm serialize` of a tiny Qwen2 at tensor parallelism 2 with a key
/// file, into `dir/out`; returns the run and the key's path.
fn serialize_tp2(dir: &std::path::Path) -> (Output, std::path::PathBuf) {
    let model = write_checkpoint(&dir.join("Qwen2-tiny"), Tiny::Qwen2, true);
    let out = dir.join("out");
    let key = dir.join("keys/qwen.key");
    let o = run(&[
        "vllm",
        "serialize",
        "--model",
        model.to_str().unwrap(),
        "--serialized-directory",
        out.to_str().unwrap(),
        "--tensor-parallel-size",
        "2",
        "--keyfile",
        key.to_str().unwrap(),
        "--suffix",
        "v1",
    ]);
    (o, key)
}

#[test]
fn serialize_then_deserialize_every_rank() {
    let dir = tempfile::tempdir().unwrap();
    let (o, key) = serialize_tp2(dir.path());
    let (model, out) = (dir.path().join("Qwen2-tiny"), dir.path().join("out"));
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    // Without --model-name the directory's name is the model's.
    let base = out.join("vllm/Qwen2-tiny/v1");
    for f in [
        "model-rank-000.tensors",
        "model-rank-001.tensors",
        "config.json",
        "tokenizer.json",
    ] {
        assert!(base.join(f).is_file(), "{f}: {stdout}");
    }
    assert!(stdout.contains("vllm layout, bfloat16"), "{stdout}");
    assert!(
        stdout.contains("--load-format tensorizer --tensor-parallel-size 2"),
        "{stdout}"
    );
    assert!(stdout.contains("model-rank-%03d.tensors"), "{stdout}");

    let template = format!("{}/model-rank-%03d.tensors", base.display());
    let o = run(&[
        "vllm",
        "deserialize",
        "--path-to-tensors",
        &template,
        "--tensor-parallel-size",
        "2",
        "--keyfile",
        key.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stdout.contains("rank 0: ") && stdout.contains("rank 1: "),
        "{stdout}"
    );
    assert!(
        stdout.contains("all 2 ranks") && stdout.contains("hashes verified"),
        "{stdout}"
    );

    // The same through vLLM's --model-loader-extra-config JSON.
    let extra =
        serde_json::json!({"tensorizer_uri": template, "encryption_keyfile": key}).to_string();
    let o = run(&[
        "vllm",
        "deserialize",
        "--tensor-parallel-size",
        "2",
        "--model-loader-extra-config",
        &extra,
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(!text(&o).1.contains("warning"), "{}", text(&o).1);
    // From a file (`@FILE`), a secret in it stays off the command line;
    // inline, the same secret is warned about.
    let with_secret = serde_json::json!({
        "tensorizer_uri": template,
        "encryption_keyfile": key,
        "s3_secret_access_key": "not-used-locally",
    })
    .to_string();
    let config = dir.path().join("extra.json");
    std::fs::write(&config, &with_secret).unwrap();
    let from_file = format!("@{}", config.display());
    for (arg, warned) in [(from_file.as_str(), false), (with_secret.as_str(), true)] {
        let o = run(&[
            "vllm",
            "deserialize",
            "--tensor-parallel-size",
            "2",
            "--model-loader-extra-config",
            arg,
        ]);
        let (_, stderr) = text(&o);
        assert!(o.status.success(), "{stderr}");
        assert_eq!(
            stderr.contains("s3_secret_access_key in --model-loader-extra-config"),
            warned,
            "{stderr}"
        );
        assert!(!stderr.contains("not-used-locally"), "{stderr}");
    }

    // Errors: one line, exit status 1.
    let cases: [(&[&str], &str); 5] = [
        (
            &[
                "vllm",
                "deserialize",
                "--path-to-tensors",
                &template,
                "--tensor-parallel-size",
                "2",
            ],
            "encrypted",
        ),
        (
            &[
                "vllm",
                "deserialize",
                "--path-to-tensors",
                &base.join("model-rank-000.tensors").display().to_string(),
                "--tensor-parallel-size",
                "2",
                "--keyfile",
                key.to_str().unwrap(),
            ],
            "rank placeholder",
        ),
        (
            &[
                "vllm",
                "deserialize",
                "--tensor-parallel-size",
                "2",
                "--model-loader-extra-config",
                r#"{"tensorizer_uri": "x", "num_reader": 4}"#,
            ],
            "num_reader",
        ),
        (
            &[
                "vllm",
                "serialize",
                "--model",
                model.to_str().unwrap(),
                "--serialized-directory",
                out.to_str().unwrap(),
                "--suffix",
                "v1",
                "--tensor-parallel-size",
                "2",
            ],
            "--overwrite",
        ),
        (
            &[
                "vllm",
                "serialize",
                "--model",
                "acme/not-cached",
                "--serialized-directory",
                out.to_str().unwrap(),
            ],
            "not in the Hugging Face cache",
        ),
    ];
    for (args, want) in cases {
        let o = run(args);
        let (_, stderr) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(want) && stderr.lines().count() == 1,
            "{args:?}: {stderr}"
        );
    }
}

/// `vllm deserialize --device cuda` with tensor parallelism 2, on the
/// simulated CUDA driver (preloaded, so the CLI's `dlopen("libcuda.so")`
/// finds it): each rank onto its own GPU, decrypted and verified on the
/// way, every byte copied once, nothing left allocated, no violation.
#[cfg(feature = "cuda")]
#[test]
fn deserialize_onto_simulated_gpus() {
    let sim = tensorizer_cuda_sim::library_path().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let (o, key) = serialize_tp2(dir.path());
    assert!(o.status.success(), "{}", text(&o).1);
    let out = dir.path().join("out");
    let template = out.join("vllm/Qwen2-tiny/v1/model-rank-%03d.tensors");
    let report = dir.path().join("sim-report");
    let o = Command::new(env!("CARGO_BIN_EXE_tensorizer"))
        .args([
            "vllm",
            "deserialize",
            "--path-to-tensors",
            template.to_str().unwrap(),
            "--tensor-parallel-size",
            "2",
            "--keyfile",
            key.to_str().unwrap(),
            "--device",
            "cuda",
        ])
        .env("HOME", "/nonexistent")
        .env("LD_PRELOAD", &sim)
        .env("TSIM_DEVICES", "2")
        .env("TSIM_REPORT", &report)
        .output()
        .expect("run the CLI");
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("all 2 ranks") && stdout.contains("hashes verified"),
        "{stdout}"
    );
    let report_text = std::fs::read_to_string(&report).unwrap();
    let report = report_text;
    let value = |name: &str| -> u64 {
        report
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing from the report:\n{report}"))
            .parse()
            .unwrap()
    };
    assert!(!report.contains("violation:"), "{report}");
    assert_eq!(value("devices_used"), 0b11, "rank r on GPU r: {report}");
    // (bytes stored, bytes placed): meta tensors (vLLM's marker) are zeroed
    // on the device, not copied.
    let (stored, placed) = (0..2)
        .flat_map(|r| {
            let path = template
                .to_str()
                .unwrap()
                .replace("%03d", &format!("{r:03}"));
            let d = tensorizer::Deserializer::open(path).unwrap();
            d.entries()
                .iter()
                .map(|e| (e.data_length, e.deserialized_length().unwrap()))
                .collect::<Vec<_>>()
        })
        .fold((0, 0), |(s, p), (a, b)| (s + a, p + b));
    assert!(placed > stored, "the marker is a meta tensor");
    assert_eq!(value("h2d_bytes"), stored, "{report}");
    // What the CLI reports is what the ranks hold.
    assert!(
        stdout.contains(&format!("all 2 ranks: {placed} bytes")),
        "{stdout}"
    );
    for gone in [
        "live_device_allocations",
        "live_pinned_allocations",
        "live_streams",
        "retained_contexts",
    ] {
        assert_eq!(value(gone), 0, "{gone}: {report}");
    }
}

/// A file named `ESC ]0;TITLE BEL notes.txt` in the model directory: the
/// printed file list and messages show it escaped, never raw.
#[test]
fn serialize_prints_hostile_file_names_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_checkpoint(&dir.path().join("m"), Tiny::Qwen2, false);
    std::fs::write(model.join("\u{1b}]0;TITLE\u{7} notes.txt"), "hi").unwrap();
    let out = dir.path().join("out");
    let o = run(&[
        "vllm",
        "serialize",
        "--model",
        model.to_str().unwrap(),
        "--serialized-directory",
        out.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&o);
    for shown in [&stdout, &stderr] {
        assert!(
            !shown.contains('\u{1b}') && !shown.contains('\u{7}'),
            "{shown:?}"
        );
    }
    if o.status.success() {
        assert!(
            stdout.contains("\\u{1b}]0;TITLE\\u{7} notes.txt"),
            "{stdout}"
        );
    } else {
        assert!(
            stderr.contains("\\u{1b}]0;TITLE\\u{7} notes.txt"),
            "{stderr}"
        );
    }
}
