//! The Python library's own test-suite on `tensorizer_rs`.
//!
//! `cargo xtask python-test` runs the `tests/` of the tensorizer 2.12.1
//! sdist (downloaded from PyPI and checked against a pinned hash by
//! `scripts/upstream/setup.sh`, never copied here) with `import tensorizer`
//! bound to `tensorizer_rs`, offline, in a network namespace that has only
//! a loopback interface. It fails when tensorizer_rs misses a test that
//! the real library passes in the same environment. The library's results
//! are `bindings/python/tests/upstream/reference.json`, made by
//! `cargo xtask python-test --reference` (which says how in the file).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Result, root, run};

/// Tests that need the internet (the hub, CoreWeave's public S3 bucket,
/// GitHub): deselected on both sides, with the reason.
const DESELECTED: &[(&str, &str)] = &[
    (
        "test_stream_io.py::TestCurlStream",
        "reads a README from GitHub",
    ),
    (
        "test_serialization.py::TestDeserialization::test_s3",
        "reads CoreWeave's public bucket",
    ),
    (
        "test_serialization.py::TestDeserialization::test_s3_multiple_readers",
        "reads CoreWeave's public bucket",
    ),
    (
        "test_serialization.py::TestDeserialization::test_s3_fp16",
        "reads CoreWeave's public bucket",
    ),
    (
        "test_serialization.py::TestDeserialization::test_s3_lazy_load",
        "reads CoreWeave's public bucket",
    ),
    (
        "test_serialization.py::TestDeserialization::test_redis",
        "fills Redis from CoreWeave's public bucket",
    ),
];

/// Tests the library passes that tensorizer_rs does not, each with why it
/// cannot: the gate accepts these and no others.
const EXCEPTIONS: &[(&str, &str)] = &[
    (
        "test_stream_io.py::TestS3::test_upload",
        "moto 4's mock_s3 patches botocore inside the test process: only an \
         implementation that uploads through boto3 can reach the mocked bucket \
         (ours uploads with the Rust core's own S3 client)",
    ),
    (
        "test_serialization.py::TestSerialization::test_meta_tensors",
        "a deliberate divergence (issue 27): a meta tensor of an encrypted file \
         is not authenticated (anyone can make one of any tensor without the \
         key), so TensorDeserializer refuses it unless allowed by name \
         (allow_unauthenticated_meta=[...] or True; vLLM's marker is allowed by \
         default); the test passes with TENSORIZER_RS_ALLOW_UNAUTHENTICATED_META=1, \
         which the gate also runs",
    ),
];

/// Tests run a second time on tensorizer_rs with the library's behaviour
/// restored by the environment, where a deliberate divergence is listed
/// above: they must pass so.
const WITH_LIBRARY_BEHAVIOUR: &[(&str, &str, &str)] = &[(
    "test_serialization.py::TestSerialization::test_meta_tensors",
    "TENSORIZER_RS_ALLOW_UNAUTHENTICATED_META",
    "1",
)];

/// The suite's S3 tests, written for moto 4 (moto 5 removed `mock_s3`, so
/// under the suite's moto 5 they fail for the library too): run on both
/// sides with moto 4 first on the path, compared live.
const MOTO4_TESTS: &str = "test_stream_io.py::TestS3";

/// The reference results, checked in.
fn reference_file() -> PathBuf {
    root().join("bindings/python/tests/upstream/reference.json")
}

/// What `scripts/upstream/setup.sh` prepared.
pub struct Suite {
    pub python: PathBuf,
    tests: PathBuf,
    hf_home: PathBuf,
    moto4: PathBuf,
}

pub fn setup() -> Result<Suite> {
    eprintln!(
        "\n==> upstream suite: scripts/upstream/setup.sh (tensorizer 2.12.1 tests, torch 2 venv, stand-in model)"
    );
    let out = Command::new("bash")
        .arg(root().join("scripts/upstream/setup.sh"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run bash: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().rev().take(4).collect();
    if !out.status.success() || lines.len() < 4 {
        return Err("scripts/upstream/setup.sh failed; it needs network access to PyPI (and root for apt-get)".into());
    }
    Ok(Suite {
        python: PathBuf::from(lines[3].trim()),
        tests: PathBuf::from(lines[2].trim()),
        hf_home: PathBuf::from(lines[1].trim()),
        moto4: PathBuf::from(lines[0].trim()),
    })
}

/// Runs the suite with `side` ("reference" or "tensorizer_rs") bound to
/// `import tensorizer`; returns each test's outcome.
fn run_side(suite: &Suite, side: &str) -> Result<BTreeMap<String, String>> {
    run_tests(suite, side, Run::Suite)
}

/// What one pytest run covers.
enum Run<'a> {
    /// The suite, less [`DESELECTED`].
    Suite,
    /// [`MOTO4_TESTS`], with moto 4 first on the path.
    Moto4(&'a Path),
    /// One test, with an environment variable set.
    WithEnv(&'a str, &'a str, &'a str),
}

/// Runs `what` with `side` bound to `import tensorizer`.
fn run_tests(suite: &Suite, side: &str, what: Run<'_>) -> Result<BTreeMap<String, String>> {
    std::fs::copy(
        root().join("scripts/upstream/conftest.py"),
        suite.tests.join("conftest.py"),
    )
    .map_err(|e| format!("conftest.py: {e}"))?;
    let tag = match what {
        Run::Suite => "",
        Run::Moto4(_) => "-moto4",
        Run::WithEnv(..) => "-env",
    };
    let results = suite.tests.join(format!("results-{side}{tag}.json"));
    let _ = std::fs::remove_file(&results);
    let mut cmd = Command::new("unshare");
    // A network namespace with loopback only: the suite cannot reach the
    // hub or any bucket, so what passes passes offline.
    cmd.args([
        "--net",
        "bash",
        "-c",
        "ip link set lo up && exec \"$@\"",
        "netns",
    ])
    .arg(&suite.python)
    .args([
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        "console_output_style=classic",
    ]);
    let label = match what {
        Run::Moto4(dir) => {
            cmd.arg(MOTO4_TESTS).env("PYTHONPATH", dir);
            format!("{MOTO4_TESTS} on {side} with moto 4")
        }
        Run::WithEnv(test, var, value) => {
            cmd.arg(test).env(var, value);
            format!("{test} on {side} with {var}={value}")
        }
        Run::Suite => {
            for (test, _) in DESELECTED {
                cmd.arg("--deselect").arg(test);
            }
            format!("tests on {side}")
        }
    };
    cmd.current_dir(&suite.tests)
        .env("TENSORIZER_UPSTREAM_SIDE", side)
        .env("TENSORIZER_UPSTREAM_RESULTS", &results)
        .env("HF_HOME", &suite.hf_home)
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .env("TOKENIZERS_PARALLELISM", "false");
    // pytest's exit status says some tests failed; the comparison below is
    // the verdict.
    let _ = run(&format!("tensorizer 2.12.1's {label} (offline)"), &mut cmd);
    let text = std::fs::read_to_string(&results).map_err(|e| {
        format!(
            "{}: {e} (the suite did not finish; is `unshare --net` permitted here?)",
            results.display()
        )
    })?;
    parse_results(&text)
}

fn parse_results(text: &str) -> Result<BTreeMap<String, String>> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("suite results: {e}"))?;
    let map = value
        .get("results")
        .unwrap_or(&value)
        .as_object()
        .ok_or("suite results: not an object")?;
    Ok(map
        .iter()
        .filter(|(k, _)| !k.starts_with("__"))
        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
        .collect())
}

fn python_versions(python: &Path) -> String {
    let out = Command::new(python)
        .args([
            "-c",
            "import sys, torch, transformers, moto, numpy; print(f'python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}, moto {moto.__version__}, numpy {numpy.__version__}')",
        ])
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// `--reference`: the real library's results, written to the checked-in file.
pub fn reference() -> Result {
    let suite = setup()?;
    let results = run_side(&suite, "reference")?;
    let doc = serde_json::json!({
        "made_by": "cargo xtask python-test --reference: the tests/ of the tensorizer 2.12.1 sdist (PyPI, SHA-256 pinned in scripts/upstream/setup.sh) run with pytest against the real tensorizer 2.12.1, offline (a network namespace with loopback only), HF_HUB_OFFLINE=1, the stand-in model of scripts/upstream/make_standin.py, no GPU, 2 cores, 24 GiB",
        "environment": python_versions(&suite.python),
        "deselected": DESELECTED.iter().map(|(t, why)| (t.to_string(), why.to_string())).collect::<BTreeMap<_, _>>(),
        "results": results,
    });
    let path = reference_file();
    std::fs::create_dir_all(path.parent().expect("a parent")).map_err(|e| e.to_string())?;
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&doc).expect("json") + "\n",
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    let passed = results.values().filter(|o| *o == "passed").count();
    eprintln!(
        "reference: {passed} of {} tests passed; written to {}",
        results.len(),
        path.display()
    );
    Ok(())
}

/// The suite on tensorizer_rs (installed in `suite.python`), compared with
/// the checked-in reference.
pub fn check(suite: &Suite) -> Result {
    let text = std::fs::read_to_string(reference_file()).map_err(|e| {
        format!(
            "{}: {e} (make it with cargo xtask python-test --reference)",
            reference_file().display()
        )
    })?;
    let mut reference = parse_results(&text)?;
    let mut ours = run_side(suite, "tensorizer_rs")?;
    // The S3 tests, live on both sides under moto 4; their moto-5 results
    // (failing on both sides) give way.
    let lib_s3 = run_tests(suite, "reference", Run::Moto4(&suite.moto4))?;
    let rs_s3 = run_tests(suite, "tensorizer_rs", Run::Moto4(&suite.moto4))?;
    if lib_s3.values().filter(|o| *o == "passed").count() == 0 {
        return Err(format!(
            "the library passes none of {MOTO4_TESTS} under moto 4: the moto 4 folder {} is broken",
            suite.moto4.display()
        ));
    }
    reference.retain(|k, _| !k.starts_with(MOTO4_TESTS));
    ours.retain(|k, _| !k.starts_with(MOTO4_TESTS));
    reference.extend(lib_s3.into_iter().map(|(k, v)| (k, v + " (moto 4)")));
    ours.extend(rs_s3.into_iter().map(|(k, v)| (k, v + " (moto 4)")));
    let passed = |o: &str| o == "passed" || o == "passed (moto 4)";
    let mut missed = Vec::new();
    eprintln!(
        "\n{:<78} {:>16} {:>16}",
        "tensorizer 2.12.1 test", "library", "tensorizer_rs"
    );
    let mut names: Vec<&String> = reference.keys().chain(ours.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let lib = reference.get(name).map_or("-", String::as_str);
        let rs = ours.get(name).map_or("-", String::as_str);
        eprintln!("{name:<78} {lib:>16} {rs:>16}");
        if passed(lib) && !passed(rs) {
            match EXCEPTIONS.iter().find(|(t, _)| t == name) {
                Some((_, why)) => eprintln!("    accepted exception: {why}"),
                None => missed.push(name.clone()),
            }
        }
    }
    let lib_passed = reference.values().filter(|o| passed(o)).count();
    let rs_passed = ours.values().filter(|o| passed(o)).count();
    eprintln!(
        "\nupstream suite: the library passes {lib_passed}, tensorizer_rs passes {rs_passed} (tests that need the internet deselected on both sides: {} patterns, in reference.json)",
        DESELECTED.len()
    );
    // A deliberate divergence must be one: with the library's behaviour
    // restored, the test passes.
    for (test, var, value) in WITH_LIBRARY_BEHAVIOUR {
        let outcome = run_tests(suite, "tensorizer_rs", Run::WithEnv(test, var, value))?;
        match outcome.get(*test).map(String::as_str) {
            Some("passed") => eprintln!("{test}: passed with {var}={value}"),
            other => missed.push(format!("{test} with {var}={value} ({other:?})")),
        }
    }
    if missed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "tensorizer_rs fails {} test(s) the library passes: {}",
            missed.len(),
            missed.join(", ")
        ))
    }
}
