//! Run:ai Model Streamer's own tests on `tensorizer_rs`'s
//! `runai_model_streamer`.
//!
//! `cargo xtask runai-test` runs the test files of runai-model-streamer
//! 0.17.0's wheel (downloaded from PyPI and checked against a pinned hash
//! by `scripts/runai/setup.sh`, never copied here) that reach its public
//! API, once with `import runai_model_streamer` loading the real package
//! and once loading ours, in the same venv. It fails on a test the real
//! package passes that ours does not, unless listed in [`EXCEPTIONS`] with
//! the reason.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use crate::{Result, root, run};

/// The test files of the public API, relative to the tests folder.
const SELECTED: &[&str] = &[
    "safetensors_streamer/test_safetensors_streamer.py",
    "safetensors_streamer/test_metadata_ordering.py",
    "safetensors_streamer/test_alignment.py",
    "safetensors_streamer/test_object_storage_model.py",
    "file_streamer/test_list_files.py",
    "runai_model_streamer/test_annotations.py",
];

/// Test files left out, with why: they test Run:ai's internals, or what the
/// next issue brings.
pub const OUT_OF_SCOPE: &[(&str, &str)] = &[
    (
        "file_streamer/test_file_streamer.py",
        "Run:ai's request submission to its C library (buffers, slots)",
    ),
    (
        "file_streamer/test_requests_iterator.py",
        "Run:ai's request iterators and CPU ring",
    ),
    ("file_streamer/test_slot_pool.py", "Run:ai's slot pool"),
    (
        "libstreamer/test_libstreamer.py",
        "the ctypes bindings of Run:ai's C library",
    ),
    (
        "safetensors_streamer/test_mock.py",
        "patches Run:ai's internal streamer classes (streamer_mock.StreamerPatcher)",
    ),
    (
        "distributed_streamer/test_partition.py",
        "Run:ai's partitioning functions (`partition`, `partition_for_rank`, its \
         policies); ours is the core's `tensorizer::distributed::partition`, \
         tested in the workspace",
    ),
    (
        "distributed_streamer/test_rank_memory_limit.py",
        "Run:ai's private `_distributedStreamer.rank_memory_limit`; the rule \
         (RUNAI_STREAMER_MEMORY_LIMIT a node total, divided among the node's \
         ranks, at least the largest chunk) is `tensorizer_rs.distributed.env_budget`",
    ),
    (
        "distributed_streamer/test_none_device.py",
        "Run:ai's CPU ring hand-over (RUNAI_STREAMER_RING_BUFFERS, pads per \
         buffer): ours has no ring to hand over",
    ),
];

/// The distributed test files, run on a gloo group of [`DIST_WORLD`]
/// ranks on loopback by `scripts/runai/dist_run.py`.
const DIST_SELECTED: &[&str] = &[
    "distributed_streamer/dist_test_distributed_streamer.py",
    "safetensors_streamer/dist_test_safetensors_streamer.py",
];

/// Ranks of the distributed test runs.
const DIST_WORLD: usize = 2;

/// Tests the real package passes that ours does not, each with why: each
/// reaches into how Run:ai's package is built rather than what it does.
const EXCEPTIONS: &[(&str, &str)] = &[
    (
        "file_streamer/test_list_files.py::TestListFilesS3::test_credentials_applied_once_per_streamer",
        CREDENTIALS,
    ),
    (
        "file_streamer/test_list_files.py::TestListFilesS3::test_credentials_applied_to_each_distinct_streamer",
        CREDENTIALS,
    ),
    (
        "file_streamer/test_list_files.py::TestListFilesS3::test_handle_object_store_resolves_and_applies_credentials",
        CREDENTIALS,
    ),
    (
        "safetensors_streamer/test_alignment.py::TestElementSize::test_the_attribute_path_does_not_build_tensors",
        ELEMENT_SIZE,
    ),
    (
        "safetensors_streamer/test_alignment.py::TestElementSize::test_the_fallback_agrees_with_the_attribute",
        ELEMENT_SIZE,
    ),
    (
        "safetensors_streamer/test_alignment.py::TestElementSize::test_the_fallback_memoises_by_dtype",
        ELEMENT_SIZE,
    ),
    (
        "safetensors_streamer/test_alignment.py::TestSessionCountsAlignmentCopies::test_a_copy_is_made_and_counted",
        CHUNKS,
    ),
    (
        "safetensors_streamer/test_alignment.py::TestSessionCountsAlignmentCopies::test_a_misaligned_tensor_that_slips_through_is_refused",
        CHUNKS,
    ),
    (
        "safetensors_streamer/test_alignment.py::TestSessionCountsAlignmentCopies::test_a_zero_element_tensor_passes_the_post_check",
        CHUNKS,
    ),
    (
        "safetensors_streamer/test_alignment.py::TestSessionCountsAlignmentCopies::test_nothing_is_copied_when_every_address_is_usable",
        CHUNKS,
    ),
    (
        "safetensors_streamer/test_alignment.py::TestSessionCountsAlignmentCopies::test_the_count_belongs_to_the_session",
        CHUNKS,
    ),
    (
        "safetensors_streamer/test_safetensors_streamer.py::TestOwnedTensorsEndToEnd::test_without_owning_the_same_memory_serves_several_tensors",
        "asserts that owned=False recycles memory (tensors share addresses); ours \
         gives every tensor its own memory whatever `owned` says, which keeps \
         owned=False's promise (consume before advancing) and more",
    ),
    (
        "safetensors_streamer/test_safetensors_streamer.py::TestSafetensorsStreamer::test_get_actual_file_size_object_storage_is_not_checked",
        PHYSICAL_LENGTH,
    ),
    (
        "safetensors_streamer/test_safetensors_streamer.py::TestSafetensorsStreamer::test_validate_physical_length_matches_succeeds",
        PHYSICAL_LENGTH,
    ),
    (
        "safetensors_streamer/test_safetensors_streamer.py::TestSafetensorsStreamer::test_validate_physical_length_too_long_raises",
        PHYSICAL_LENGTH,
    ),
    (
        "safetensors_streamer/test_safetensors_streamer.py::TestSafetensorsStreamer::test_validate_physical_length_too_short_raises",
        PHYSICAL_LENGTH,
    ),
    (
        "safetensors_streamer/test_safetensors_streamer.py::TestSafetensorsStreamer::test_validate_physical_length_unknown_actual_bytes_skips",
        PHYSICAL_LENGTH,
    ),
    (
        "safetensors_streamer/test_safetensors_streamer.py::TestSafetensorsStreamer::test_get_actual_file_size_local_path",
        PHYSICAL_LENGTH,
    ),
    (
        "safetensors_streamer/test_safetensors_streamer.py::TestSafetensorsStreamer::test_ring_info_is_none_for_a_rank_whose_partition_is_empty",
        RING,
    ),
    (
        "safetensors_streamer/test_safetensors_streamer.py::TestSafetensorsStreamer::test_the_ring_is_reported_once_per_load_with_the_rank",
        RING,
    ),
    (
        "distributed_streamer/dist_test_distributed_streamer.py::TestDistributedStreamer::test_1_broadcast_metadata_identifies_tensors_a_rank_never_read",
        DIST_INTERNALS,
    ),
    (
        "distributed_streamer/dist_test_distributed_streamer.py::TestDistributedStreamer::test_1_success_deep_ring_buffer",
        DIST_INTERNALS,
    ),
    (
        "distributed_streamer/dist_test_distributed_streamer.py::TestDistributedStreamer::test_1_owned_tensors_have_independent_storage",
        "asserts that owned=False tensors alias at most two staging buffers; \
         ours gives every chunk memory of its own whatever `owned` says (the \
         owned=True half of the test passes)",
    ),
];

const RING: &str = "checks the report of Run:ai's CPU staging ring (`ring_info()`, \
    its \"CPU ring\" INFO line) by patching its private `_distributedStreamer`; \
    ours has no such ring (the core reads into each tensor's own memory), \
    and `ring_info()` says so (None)";

const DIST_INTERNALS: &str = "reads Run:ai's private attributes \
    (`streamer.distributed_streamer.rank_dicts_map`, \
    `.file_streamer.requests_iterator.buffer_size`); the behaviour they \
    stand for (every rank yields every chunk, whoever read it; memory \
    bounded by the node's share of the limit) is tested by the other \
    distributed tests and bindings/python/tests/test_distributed.py";

const CREDENTIALS: &str = "patches `s3_credentials_module` (Run:ai's boto3 credential \
    resolution) and counts calls that hand credentials to its C library's \
    streamer handles; here the core's S3 client resolves credentials itself \
    (S3Credentials, the AWS_* environment, ~/.aws), once per process and store";
const ELEMENT_SIZE: &str = "tests private memoisation (`_DTYPE_HAS_ITEMSIZE`, \
    `_element_sizes`) of a torch-2.0 fallback; `element_size_of` itself gives \
    the same sizes";
const CHUNKS: &str = "drives `get_tensors` by replacing `file_streamer.get_chunks` \
    with hand-made uint8 buffers: ours reads tensors through the Rust core \
    (never through chunks), into 64-byte aligned memory that needs no \
    alignment copy";
const PHYSICAL_LENGTH: &str = "calls the private helpers `_validate_physical_length` \
    and `_get_actual_file_size`; the rule they implement (the file's size must \
    equal the header's) is the core's parser's, on every store (Run:ai checks \
    it for local files only), and the public tests of it \
    (test_truncated_tensor_data, test_file_longer_than_header_declares_raises) pass";

/// What `scripts/runai/setup.sh` prepared.
pub struct Suite {
    pub python: PathBuf,
    tests: PathBuf,
    /// The pinned wheels (runai-model-streamer and its S3 backend).
    pub wheels: Vec<PathBuf>,
}

pub fn setup() -> Result<Suite> {
    eprintln!(
        "\n==> Run:ai suite: scripts/runai/setup.sh (runai-model-streamer 0.17.0 tests, torch 2 venv; ~1 min once after the venv)"
    );
    let out = Command::new("bash")
        .arg(root().join("scripts/runai/setup.sh"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run bash: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().rev().take(3).collect();
    if !out.status.success() || lines.len() < 3 {
        return Err("scripts/runai/setup.sh failed; it needs network access to PyPI".into());
    }
    let cache = PathBuf::from(lines[0].trim());
    let wheels = std::fs::read_dir(&cache)
        .map_err(|e| format!("{}: {e}", cache.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
        .collect();
    Ok(Suite {
        python: PathBuf::from(lines[2].trim()),
        tests: PathBuf::from(lines[1].trim()),
        wheels,
    })
}

/// Runs the selected tests with `side` bound to `import runai_model_streamer`.
fn run_side(suite: &Suite, side: &str) -> Result<BTreeMap<String, serde_json::Value>> {
    std::fs::copy(
        root().join("scripts/runai/conftest.py"),
        suite.tests.join("conftest.py"),
    )
    .map_err(|e| format!("conftest.py: {e}"))?;
    let results = suite.tests.join(format!("results-{side}.json"));
    let _ = std::fs::remove_file(&results);
    let mut cmd = Command::new(&suite.python);
    cmd.args([
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--import-mode=importlib",
        "-o",
        "console_output_style=classic",
    ])
    .args(SELECTED)
    .current_dir(&suite.tests)
    .env("RUNAI_TEST_SIDE", side)
    .env("RUNAI_TEST_RESULTS", &results);
    // pytest's own status says whether some test failed; the comparison
    // below is the verdict.
    let _ = run(
        &format!("runai-model-streamer 0.17.0's tests on {side}"),
        &mut cmd,
    );
    let mut all = read_results(&results)?;
    // The distributed files: one pytest per rank of a gloo group.
    let dist_results = suite.tests.join(format!("results-{side}-dist.json"));
    let _ = std::fs::remove_file(&dist_results);
    let mut cmd = Command::new(&suite.python);
    cmd.arg(root().join("scripts/runai/dist_run.py"))
        .arg(DIST_WORLD.to_string())
        .arg(side)
        .arg(&dist_results)
        .args(DIST_SELECTED)
        .current_dir(&suite.tests);
    let _ = run(
        &format!(
            "runai-model-streamer 0.17.0's distributed tests on {side}, {DIST_WORLD} gloo ranks"
        ),
        &mut cmd,
    );
    for (k, v) in read_results(&dist_results)? {
        match (k.as_str(), all.get_mut("__why__")) {
            ("__why__", Some(serde_json::Value::Object(why))) => {
                if let serde_json::Value::Object(more) = v {
                    why.extend(more);
                }
            }
            _ => {
                all.insert(k, v);
            }
        }
    }
    Ok(all)
}

fn read_results(path: &std::path::Path) -> Result<BTreeMap<String, serde_json::Value>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: {e} (the run did not finish)", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("results: {e}"))?;
    Ok(value
        .as_object()
        .ok_or("results: not an object")?
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect())
}

fn outcome(results: &BTreeMap<String, serde_json::Value>, name: &str) -> String {
    results
        .get(name)
        .and_then(|v| v.as_str())
        .unwrap_or("-")
        .to_owned()
}

/// Both sides, compared: what the real package passes, ours must.
pub fn check(suite: &Suite) -> Result {
    // The files the safetensors tests read (the wheel does not ship them),
    // made before either side runs so both see the same tests.
    run(
        "generate Run:ai's safetensors_streamer/test_files",
        Command::new(&suite.python)
            .arg(root().join("scripts/runai/dist_run.py"))
            .arg("--prepare")
            .current_dir(&suite.tests),
    )?;
    let theirs = run_side(suite, "reference")?;
    let ours = run_side(suite, "tensorizer_rs")?;
    let mut names: Vec<&String> = theirs
        .keys()
        .chain(ours.keys())
        .filter(|k| !k.starts_with("__"))
        .collect();
    names.sort();
    names.dedup();
    eprintln!(
        "\n{:<96} {:>9} {:>13}",
        "runai-model-streamer 0.17.0 test", "Run:ai", "tensorizer_rs"
    );
    let why = ours.get("__why__").cloned().unwrap_or_default();
    let mut missed = Vec::new();
    for name in &names {
        let (lib, rs) = (outcome(&theirs, name), outcome(&ours, name));
        eprintln!("{name:<96} {lib:>9} {rs:>13}");
        if lib == "passed" && rs != "passed" {
            match EXCEPTIONS.iter().find(|(t, _)| t == name) {
                Some((_, reason)) => eprintln!("    accepted exception: {reason}"),
                None => {
                    if let Some(w) = why.get(name.as_str()).and_then(|w| w.as_str()) {
                        let tail: String = w.lines().rev().take(6).collect::<Vec<_>>().join(" | ");
                        eprintln!("    why: {tail}");
                    }
                    missed.push((*name).clone());
                }
            }
        }
    }
    let count = |r: &BTreeMap<String, serde_json::Value>| {
        names.iter().filter(|n| outcome(r, n) == "passed").count()
    };
    eprintln!(
        "\nRun:ai suite: the real package passes {}, tensorizer_rs passes {} of {} tests ({} files; out of scope: {})",
        count(&theirs),
        count(&ours),
        names.len(),
        SELECTED.len() + DIST_SELECTED.len(),
        OUT_OF_SCOPE
            .iter()
            .map(|(f, why)| format!("{f} ({why})"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    if missed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "tensorizer_rs fails {} Run:ai test(s) the real package passes: {}",
            missed.len(),
            missed.join(", ")
        ))
    }
}
