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

#[test]
fn serialize_then_deserialize_every_rank() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_checkpoint(&dir.path().join("Qwen2-tiny"), Tiny::Qwen2, true);
    let out = dir.path().join("out");
    let key = dir.path().join("keys/qwen.key");
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
