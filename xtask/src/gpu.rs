//! `cargo xtask gpu-test` and `cargo xtask gpu-bench`: build the GPU suite
//! / benchmark here and stage them with what they need in `target/gpu/`
//! (self-contained: no Rust toolchain needed to run). The suite runs at once,
//! on the GPU where `nvidia-smi` finds one and on the simulated CUDA driver
//! (`crates/tensorizer-cuda-sim`, staged beside it) elsewhere; the benchmark
//! runs only where a GPU is, and elsewhere prints how to run the staged
//! folder on a GPU machine (`target/gpu/run-bench.sh`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Result, cargo, root, run};

fn gpu_here() -> bool {
    Path::new("/dev/nvidiactl").exists()
        || Command::new("nvidia-smi")
            .arg("-L")
            .output()
            .is_ok_and(|o| o.status.success())
}

fn stage_dir() -> Result<PathBuf> {
    let dir = root().join("target/gpu");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

/// The executable cargo built for test target `name`, from its JSON messages.
fn test_executable(name: &str, features: &str) -> Result<PathBuf> {
    let out = cargo()
        .args([
            "test",
            "--release",
            "--locked",
            "-p",
            "tensorizer",
            "--features",
            features,
            "--test",
            name,
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .output()
        .map_err(|e| format!("cargo test --no-run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building the GPU tests failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("\"name\":\"{name}\"")) && l.contains("\"executable\":\""))
        .find_map(|l| {
            let at = l.find("\"executable\":\"")? + 14;
            Some(PathBuf::from(&l[at..at + l[at..].find('"')?]))
        })
        .ok_or_else(|| format!("no executable for test target {name}"))
}

fn copy_dir(from: &Path, to: &Path) -> Result {
    std::fs::create_dir_all(to).map_err(|e| e.to_string())?;
    for entry in std::fs::read_dir(from).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        let dest = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

fn write_script(path: &Path, body: &str) -> Result {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, body).map_err(|e| e.to_string())?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())
}

fn run_or_explain(script: &Path) -> Result {
    if gpu_here() {
        run(
            &format!("{} (GPU present)", script.display()),
            &mut Command::new(script),
        )
    } else {
        eprintln!(
            "\nNo GPU on this machine: nothing ran. Staged in {}; on a GPU machine (NVIDIA driver, CUDA 12.x) run:\n    {}\n(the folder is self-contained; copy it over or run it from a copy of this tree)",
            script.parent().unwrap_or(Path::new(".")).display(),
            script.display()
        );
        Ok(())
    }
}

/// Builds the GPU suite (`crates/tensorizer/tests/cuda.rs`) with the
/// simulated CUDA driver beside it and runs it: on the machine's GPU where
/// there is one, on the simulator elsewhere. Either way it closes with one
/// line: which driver, `N passed, M failed`.
pub fn gpu_test() -> Result {
    let dir = stage_dir()?;
    eprintln!("==> building the GPU suite (release, feature cuda) and the simulated CUDA driver");
    let exe = test_executable("cuda", "cuda,encryption")?;
    std::fs::copy(&exe, dir.join("cuda-tests")).map_err(|e| e.to_string())?;
    // The simulator is a dev-dependency of the suite: cargo built its
    // cdylib beside the test executable.
    let sim = exe
        .parent()
        .map(|d| d.join("libtensorizer_cuda_sim.so"))
        .filter(|p| p.is_file())
        .ok_or("the simulated CUDA driver was not built beside the GPU suite")?;
    std::fs::copy(&sim, dir.join("libtensorizer_cuda_sim.so")).map_err(|e| e.to_string())?;
    copy_dir(&root().join("tests/fixtures"), &dir.join("fixtures"))?;
    let script = dir.join("run-tests.sh");
    write_script(
        &script,
        r#"#!/usr/bin/env bash
# The GPU suite: every fixture and a 2 GiB model to the device and back,
# out-of-memory, faults, several devices, TP shards. On the machine's GPU
# when there is one (or GPU_DRIVER=real), else on the simulated CUDA driver
# staged beside it (GPU_DRIVER=sim forces it).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
driver=${GPU_DRIVER:-}
if [ -z "$driver" ]; then
  if nvidia-smi -L >/dev/null 2>&1; then driver=real; else driver=sim; fi
fi
if [ "$driver" = real ]; then
  name="the real CUDA driver ($(nvidia-smi -L 2>/dev/null | head -1))"
  export TENSORIZER_GPU_DRIVER=real
else
  name="the simulated CUDA driver (tensorizer-cuda-sim, no GPU used)"
  export TENSORIZER_CUDA_SIM="$here/libtensorizer_cuda_sim.so"
fi
echo "GPU suite on $name"
log=$(mktemp)
TENSORIZER_FIXTURES="$here/fixtures" TENSORIZER_GPU_TMP="${TMPDIR:-/tmp}"   "$here/cuda-tests" --test-threads 1 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
passed=$(sed -n 's/^test result: .* \([0-9]*\) passed; \([0-9]*\) failed.*/\1/p' "$log" | tail -1)
failed=$(sed -n 's/^test result: .* \([0-9]*\) passed; \([0-9]*\) failed.*/\2/p' "$log" | tail -1)
rm -f "$log"
echo "gpu-test on $name: ${passed:-0} passed, ${failed:-?} failed"
exit "$status"
"#,
    )?;
    run("GPU suite", &mut Command::new(&script))
}

pub fn gpu_bench() -> Result {
    let dir = stage_dir()?;
    run(
        "build release bench-load and tensorizer (feature cuda)",
        cargo().args([
            "build",
            "--release",
            "--locked",
            "-p",
            "tensorizer-benches",
            "-p",
            "tensorizer-cli",
            "--bins",
        ]),
    )?;
    for (bin, name) in [("bench-load", "bench-load"), ("tensorizer", "tensorizer")] {
        std::fs::copy(root().join("target/release").join(bin), dir.join(name))
            .map_err(|e| format!("{bin}: {e}"))?;
    }
    std::fs::copy(
        root().join("scripts/bench_gpu.py"),
        dir.join("bench_gpu.py"),
    )
    .map_err(|e| e.to_string())?;
    let script = dir.join("run-bench.sh");
    write_script(
        &script,
        r#"#!/usr/bin/env bash
# GPU benchmark: pinned host -> device peak, our file (warm page cache) -> HBM,
# encrypted too, and safetensors + torch on the same tensors when installed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=${TMPDIR:-/tmp}/tensorizer-gpu-bench
size=${SIZE:-4GiB}
mkdir -p "$work"
[ -f "$work/model.tensors" ] || "$here/bench-load" make-model "$work/model.tensors" --size "$size" >/dev/null
[ -f "$work/k.key" ] || "$here/tensorizer" keygen "$work/k.key" >/dev/null
[ -f "$work/enc.tensors" ] || "$here/tensorizer" encrypt "$work/model.tensors" "$work/enc.tensors" --key-file "$work/k.key" >/dev/null
cat "$work/model.tensors" "$work/enc.tensors" > /dev/null   # warm the page cache
row() { printf '| %-44s | %s |\n' "$1" "$2"; }
echo "| row | result (GiB/s per run, peak RSS KiB) |"
echo "|---|---|"
row "pinned host -> device peak (256 MiB copies, 4 streams)" "$("$here/bench-load" h2d --size "$size")"
row "ours: file -> GPU 0 (CRC-32 verified)" "$("$here/bench-load" cuda "$work/model.tensors")"
row "ours: file -> GPU 0, no verification" "$("$here/bench-load" cuda "$work/model.tensors" --verify none)"
row "ours: encrypted file -> GPU 0" "$("$here/bench-load" cuda "$work/enc.tensors" --key-file "$work/k.key")"
if python3 -c "import torch, safetensors" 2>/dev/null; then
  [ -f "$work/model.safetensors" ] || "$here/tensorizer" convert "$work/model.tensors" "$work/model.safetensors" >/dev/null
  cat "$work/model.safetensors" > /dev/null
  row "safetensors + torch load_file(device=cuda:0)" "$(python3 "$here/bench_gpu.py" "$work/model.safetensors")"
else
  row "safetensors + torch" "not installed here (pip install torch safetensors)"
fi
"#,
    )?;
    run_or_explain(&script)
}
