//! The `tensorizer` binary end to end: JSON listing equal to the fixture
//! manifests (which hold what the Python oracle prints), verification exit
//! codes, conversion round trips and one-line errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use tensorizer::{Deserializer, Dtype, Serializer, TensorData};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn run(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tensorizer"))
        .args(args)
        .output()
        .expect("run the CLI")
}

fn run_str(args: &[&str]) -> Output {
    run(&args.iter().map(std::ffi::OsStr::new).collect::<Vec<_>>())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn inspect_json_matches_the_oracle_manifest() {
    let set = fixtures().join("tensorizer-2.12.1");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(set.join("manifest.json")).unwrap()).unwrap();
    let mut checked = 0;
    for f in manifest["fixtures"].as_array().unwrap() {
        if f["must_fail"].as_bool().unwrap() || !f["encryption"].is_null() {
            continue;
        }
        let file = set.join(f["file"].as_str().unwrap());
        let out = run(&["inspect".as_ref(), "--json".as_ref(), file.as_os_str()]);
        assert!(out.status.success(), "{}", stderr(&out));
        let mut doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(doc["format_version"], f["format_version"]);
        assert_eq!(doc["feature_flags"], f["feature_flags"]);
        assert_eq!(doc["file_sha256"], f["sha256"]);
        assert_eq!(doc["ok"], true);
        // Ours adds what the oracle cannot say: each tensor's stored
        // hashes checked.
        for t in doc["tensors"].as_array_mut().unwrap() {
            assert_eq!(t["verified"], true, "{t}");
            // Against what: every fixture stores both hashes.
            assert_eq!(t["checked"], serde_json::json!(["crc32", "sha256"]), "{t}");
            t.as_object_mut().unwrap().remove("verified");
            t.as_object_mut().unwrap().remove("checked");
        }
        assert_eq!(doc["tensors"], f["tensors"], "{}", file.display());
        checked += 1;
    }
    assert!(checked >= 18, "{checked}");
}

#[test]
fn verify_names_the_failing_tensor() {
    let set = fixtures().join("tensorizer-2.12.1");
    let ok = run_str(&["verify", set.join("module.tensors").to_str().unwrap()]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("15 tensors OK"));
    for (file, phrase) in [
        (
            "corrupt_sha_flip.tensors",
            "tensor \"float32_tensor\" failed SHA256 verification",
        ),
        (
            "corrupt_data_flip.tensors",
            "tensor \"float32_tensor\" failed CRC32 verification",
        ),
    ] {
        let out = run_str(&["verify", set.join(file).to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{file}");
        assert!(stderr(&out).contains(phrase), "{file}: {}", stderr(&out));
    }
}

#[test]
fn inspect_json_reports_a_stored_hash_that_does_not_match() {
    let set = fixtures().join("tensorizer-2.12.1");
    let out = run_str(&[
        "inspect",
        "--json",
        set.join("corrupt_sha_flip.tensors").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["failed_tensors"], 1);
    let bad: Vec<&Value> = doc["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["verified"] == false)
        .collect();
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0]["name"], "float32_tensor");
    assert!(
        bad[0]["error"].as_str().unwrap().contains("SHA256"),
        "{}",
        bad[0]
    );
    assert!(
        bad[0]["sha256"].is_null(),
        "no hash of data that failed its check"
    );
    assert!(stderr(&out).contains("float32_tensor"));
}

#[test]
fn load_reports_bytes_and_speed_for_each_verification() {
    let file = fixtures().join("tensorizer-2.12.1/module.tensors");
    for verify in ["none", "crc32", "all"] {
        let out = run_str(&["load", file.to_str().unwrap(), "--verify", verify]);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("15 tensors") && text.contains("GiB/s") && text.contains(verify),
            "{text}"
        );
    }
    let bad = fixtures().join("tensorizer-2.12.1/corrupt_sha_flip.tensors");
    let out = run_str(&["load", bad.to_str().unwrap(), "--verify", "all"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("float32_tensor"), "{}", stderr(&out));
    let out = run_str(&["load", bad.to_str().unwrap(), "--verify", "none"]);
    assert!(out.status.success(), "no check, no failure");
}

#[test]
fn errors_are_one_line_naming_the_file() {
    let missing = run_str(&["inspect", "/nonexistent/model.tensors"]);
    assert_eq!(missing.status.code(), Some(1));
    let err = stderr(&missing);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("/nonexistent/model.tensors") && err.contains("No such file"),
        "{err}"
    );

    let bad = fixtures().join("tensorizer-2.12.1/corrupt_version.tensors");
    let out = run(&["inspect".as_ref(), bad.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out).lines().count(), 1);
    assert!(stderr(&out).contains("corrupt_version.tensors: unsupported data-format version 99"));
}

fn write_sample(path: &Path) {
    let bf16: Vec<half::bf16> = (0..12)
        .map(|i| half::bf16::from_f32(i as f32 * 0.25))
        .collect();
    let f32s: Vec<f32> = (0..6).map(|i| i as f32 - 2.5).collect();
    let i64s = [i64::MIN, -1, 0, 1, i64::MAX];
    let bools = [0u8, 1, 1, 0];
    let fp8 = [0x38u8, 0x40, 0xb8];
    let mut s = Serializer::new();
    s.write_state_dict([
        ("z.bf16", TensorData::from_slice(&[3, 4], &bf16).unwrap()),
        ("a.f32", TensorData::from_slice(&[2, 3], &f32s).unwrap()),
        ("m.i64", TensorData::from_slice(&[5], &i64s).unwrap()),
        (
            "b.bool",
            TensorData::new(Dtype::Bool, &[2, 2], &bools).unwrap(),
        ),
        (
            "f.fp8",
            TensorData::new(Dtype::F8E4M3FN, &[3], &fp8).unwrap(),
        ),
        ("s.scalar", TensorData::from_slice(&[], &[7u16]).unwrap()),
    ])
    .unwrap();
    s.write_to_file(path).unwrap();
}

#[test]
fn convert_round_trips_through_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("model.tensors");
    let st = dir.path().join("model.safetensors");
    let back = dir.path().join("back.tensors");
    write_sample(&original);
    for (from, to) in [(&original, &st), (&st, &back)] {
        let out = run(&["convert".as_ref(), from.as_os_str(), to.as_os_str()]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let mut a = Deserializer::open(&original).unwrap().read_all().unwrap();
    let b = Deserializer::open(&back).unwrap().read_all().unwrap();
    a.sort_by_key(|t| t.name());
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (x.name(), x.dtype(), x.shape()),
            (y.name(), y.dtype(), y.shape())
        );
        assert_eq!(x.as_bytes(), y.as_bytes(), "{}", x.name());
    }
    // Written in name order, as the safetensors header lists them sorted.
    let names: Vec<String> = b.iter().map(|t| t.name()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
}

#[test]
fn convert_refuses_dtypes_safetensors_lacks_and_keeps_the_old_output() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out.safetensors");
    std::fs::write(&out_path, b"previous contents").unwrap();
    let input = fixtures().join("tensorizer-2.12.1/dtypes_all_v2.tensors");
    let out = run(&["convert".as_ref(), input.as_os_str(), out_path.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("has no safetensors equivalent"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&out_path).unwrap(), b"previous contents");
}

/// A tensor name carrying a terminal escape sequence is shown escaped:
/// `inspect` must not let a file drive the user's terminal.
#[test]
fn inspect_escapes_control_characters_in_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("evil.tensors");
    let mut s = Serializer::new();
    s.write_state_dict([(
        "w\x1b]0;pwned\x07\x1b[2J",
        TensorData::from_slice(&[1], &[1.0f32]).unwrap(),
    )])
    .unwrap();
    s.write_to_file(&path).unwrap();
    let out = run(&[std::ffi::OsStr::new("inspect"), path.as_os_str()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
    assert!(text.contains("w\\u{1b}]0;pwned\\u{7}\\u{1b}[2J"), "{text}");
}

/// `verify` says what it checked, and fails what it could not: a file
/// without stored hashes and a flipped data byte used to be "1 tensors OK
/// (CRC-32 and SHA-256)".
#[test]
fn verify_fails_a_tensor_without_stored_hashes() {
    use tensorizer::format::{HashKind, TensorHeader};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nohash.tensors");
    let mut s = Serializer::new();
    s.write_state_dict([(
        "w",
        TensorData::from_slice(&[4], &[1.0f32, 2.0, 3.0, 4.0]).unwrap(),
    )])
    .unwrap();
    s.write_to_file(&path).unwrap();
    let ok = run_str(&["verify", path.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let said = String::from_utf8_lossy(&ok.stdout);
    assert!(
        said.contains("CRC-32: 1") && said.contains("SHA-256: 1"),
        "{said}"
    );

    // Rewrite the file with the tensor's hashes stripped (its header
    // shrinks, so the index moves its data offset), then flip a data byte.
    let d = Deserializer::open(&path).unwrap();
    let mut meta = d.metadata().clone();
    let entry = meta.entries[0].clone();
    let bytes = std::fs::read(&path).unwrap();
    let header = &bytes[entry.header_offset as usize..entry.data_offset as usize];
    let mut stripped = TensorHeader::parse(header, entry.wide_dims, false).unwrap();
    assert!(stripped.stored_hash(HashKind::Sha256).is_some());
    stripped.hashes.clear();
    let encoded = stripped.encode().unwrap();
    meta.entries[0].data_offset = entry.header_offset + encoded.len() as u64;
    let mut out = meta.encode().unwrap();
    assert_eq!(out.len() as u64, entry.header_offset);
    out.extend_from_slice(&encoded);
    let mut data = bytes
        [entry.data_offset as usize..(entry.data_offset + entry.data_length) as usize]
        .to_vec();
    data[0] ^= 0x40;
    out.extend_from_slice(&data);
    out.extend_from_slice(&tensorizer::format::TERMINATOR);
    std::fs::write(&path, &out).unwrap();
    drop(d);
    let bad = run_str(&["verify", path.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("no stored hash"), "{}", stderr(&bad));
    let json = run_str(&["inspect", "--json", path.to_str().unwrap()]);
    let doc: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(doc["tensors"][0]["verified"], false);
    assert_eq!(doc["tensors"][0]["checked"], serde_json::json!([]));
}

/// An "encrypted" file whose tensors carry no data (turned into meta
/// tensors, say) authenticates nothing: `verify` with any key used to say
/// "OK (MACs and SHA-256)".
#[test]
fn verify_fails_an_encrypted_file_that_authenticates_nothing() {
    use tensorizer::{Encryption, EncryptionKey};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hollow.tensors");
    let key = dir.path().join("any.key");
    std::fs::write(&key, [9u8; 32]).unwrap();
    let mut s = Serializer::new();
    s.write_state_dict([
        ("a", TensorData::meta(Dtype::F32, &[1024])),
        ("b", TensorData::meta(Dtype::F16, &[8, 8])),
    ])
    .unwrap();
    s.encryption(Encryption::with_key(EncryptionKey::from_bytes([1; 32])));
    s.write_to_file(&path).unwrap();
    let out = run_str(&[
        "verify",
        path.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Each tensor is a meta tensor nothing authenticates.
    assert!(
        stderr(&out).contains("\"a\": is a meta tensor")
            && stderr(&out).contains("\"b\": is a meta tensor"),
        "{}",
        stderr(&out)
    );
    // Allowed by name, the file still authenticates nothing.
    let out = run_str(&[
        "verify",
        path.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
        "--allow-all-meta",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("carries a MAC"), "{}", stderr(&out));
}

/// Secrets go in files (or standard input), not on the command line: the
/// inline forms still work but warn that `ps` shows them.
#[test]
fn secrets_come_from_files_and_inline_ones_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.tensors");
    write_sample(&path);
    let secret = dir.path().join("s3.secret");
    std::fs::write(&secret, "not-a-real-secret\n").unwrap();
    let quiet = run_str(&[
        "verify",
        path.to_str().unwrap(),
        "--s3-secret-access-key-file",
        secret.to_str().unwrap(),
    ]);
    assert!(quiet.status.success(), "{}", stderr(&quiet));
    assert!(!stderr(&quiet).contains("warning"), "{}", stderr(&quiet));
    let loud = run_str(&[
        "verify",
        path.to_str().unwrap(),
        "--s3-secret-access-key",
        "inline-secret",
    ]);
    assert!(loud.status.success(), "{}", stderr(&loud));
    let said = stderr(&loud);
    assert!(
        said.contains("--s3-secret-access-key on the command line is visible"),
        "{said}"
    );
    assert!(!said.contains("inline-secret"), "{said}");
    // A key file from standard input.
    let key = dir.path().join("k");
    std::fs::write(&key, [5u8; 32]).unwrap();
    let enc = dir.path().join("e.tensors");
    assert!(
        run_str(&[
            "encrypt",
            path.to_str().unwrap(),
            enc.to_str().unwrap(),
            "--key-file",
            key.to_str().unwrap()
        ])
        .status
        .success()
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tensorizer"))
        .args(["verify", enc.to_str().unwrap(), "--key-file", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&[5u8; 32]).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A copy of `input` whose records store no hashes (headers re-encoded
/// without them, the layout moved to match).
fn without_hashes(input: &Path, out: &Path) {
    let d = Deserializer::open(input).unwrap();
    let mut meta = d.metadata().clone();
    let mut records = Vec::new();
    let mut offset = meta.records_offset();
    for (i, entry) in meta.entries.iter_mut().enumerate() {
        let mut h = d.read_header(i).unwrap();
        h.hashes.clear();
        let header = h.encode().unwrap();
        let data = d
            .source()
            .read_range(entry.data_offset, entry.data_length)
            .unwrap();
        entry.header_offset = offset;
        entry.data_offset = offset + header.len() as u64;
        offset = entry.data_offset + data.len() as u64;
        records.extend(header);
        records.extend(data);
    }
    let mut file = meta.encode().unwrap();
    file.extend(records);
    std::fs::write(out, file).unwrap();
}

/// `load --verify ...` of a file that stores no hashes loads it and says
/// that nothing was verified (it exited 0 in silence); `verify` refuses it.
#[test]
fn a_load_that_verified_nothing_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("p.tensors");
    write_sample(&plain);
    let bare = dir.path().join("bare.tensors");
    without_hashes(&plain, &bare);
    for level in ["crc32", "all"] {
        let o = run_str(&["load", bare.to_str().unwrap(), "--verify", level]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("nothing was verified"),
            "{level}: {}",
            stderr(&o)
        );
        let o = run_str(&["load", plain.to_str().unwrap(), "--verify", level]);
        assert!(o.status.success());
        assert!(
            !stderr(&o).contains("nothing was verified"),
            "{}",
            stderr(&o)
        );
    }
    let o = run_str(&["verify", bare.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no stored hash"), "{}", stderr(&o));
}

/// Terminal escapes in names and paths never reach the terminal: a tensor
/// named `ESC ]0;TITLE BEL` in `verify`'s failure lines, an output path
/// holding one in `copy`'s summary.
#[test]
fn escapes_in_names_and_paths_are_shown_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.tensors");
    let hostile = "\u{1b}]0;TITLE\u{7}w";
    let mut s = Serializer::new();
    s.write_state_dict([(hostile, TensorData::from_slice(&[4], &[1.0f32; 4]).unwrap())])
        .unwrap();
    s.write_to_file(&path).unwrap();
    // Flip a data byte: verify names the tensor.
    let mut bytes = std::fs::read(&path).unwrap();
    let at = Deserializer::open(&path).unwrap().entries()[0].data_offset as usize;
    bytes[at] ^= 0xff;
    let bad = dir.path().join("bad.tensors");
    std::fs::write(&bad, &bytes).unwrap();
    let o = run_str(&["verify", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(!err.contains('\u{1b}') && !err.contains('\u{7}'), "{err:?}");
    assert!(err.contains("\\u{1b}]0;TITLE\\u{7}w"), "{err}");
    let out = dir.path().join("out\u{1b}[2J.tensors");
    let o = run(&[
        std::ffi::OsStr::new("copy"),
        path.as_os_str(),
        out.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        !said.contains('\u{1b}') && said.contains("\\u{1b}[2J"),
        "{said:?}"
    );
}

/// A small safetensors file of two tensors.
fn safetensors_file(path: &Path, seed: u8) -> Vec<u8> {
    use safetensors::tensor::{Dtype as St, TensorView};
    let a: Vec<u8> = (0..64u8).map(|i| i.wrapping_add(seed)).collect();
    let b: Vec<u8> = (0..12u8).map(|i| i ^ seed).collect();
    let names = [format!("w{seed}"), format!("b{seed}")];
    let views = vec![
        (
            names[0].clone(),
            TensorView::new(St::F32, vec![4, 4], &a).unwrap(),
        ),
        (
            names[1].clone(),
            TensorView::new(St::I16, vec![6], &b).unwrap(),
        ),
    ];
    let bytes = safetensors::tensor::serialize(views, None).unwrap();
    std::fs::write(path, &bytes).unwrap();
    bytes
}

#[test]
fn inspect_load_and_verify_take_safetensors_checkpoints() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    let one = safetensors_file(&model.join("model-00001-of-00002.safetensors"), 1);
    safetensors_file(&model.join("model-00002-of-00002.safetensors"), 2);
    let model_s = model.to_string_lossy().into_owned();
    let out = run_str(&["inspect", &model_s]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("checkpoint of 2 files, 4 tensors")
            && text.contains("safetensors, 2 tensors"),
        "{text}"
    );
    let out = run_str(&["load", &model_s]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 files, 4 tensors, 152 bytes"));
    // Safetensors stores no hashes: verify says so unless a digest is known.
    let out = run_str(&["verify", &model_s]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("stores no hashes"),
        "{}",
        stderr(&out)
    );
    let file = model.join("model-00001-of-00002.safetensors");
    let file_s = file.to_string_lossy().into_owned();
    let digest: String = sha2::Sha256::digest(&one)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let out = run_str(&["verify", "--sha256", &digest, &file_s]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("SHA-256"),
        "{:?}",
        out
    );
    let wrong = "0".repeat(64);
    for cmd in ["verify", "load"] {
        let out = run_str(&[cmd, "--sha256", &wrong, &file_s]);
        assert!(!out.status.success(), "{cmd}");
        assert!(
            stderr(&out).contains("expected 0000"),
            "{cmd}: {}",
            stderr(&out)
        );
    }
    // copy moves a safetensors file byte for byte (and Redis, which holds
    // tensorizer files in the library's layout, is refused).
    let copied = dir.path().join("copied.safetensors");
    let out = run(&["copy".as_ref(), file.as_os_str(), copied.as_os_str()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(&copied).unwrap(), one);
    let out = run_str(&["copy", &file_s, "redis://127.0.0.1:1/x"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("convert first"), "{}", stderr(&out));
    let out = run_str(&["inspect", "--json", &file_s]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["format"], "safetensors");
    assert_eq!(doc["file_sha256"], digest);
    assert_eq!(doc["tensors"][0]["verified"], Value::Null);
}

#[test]
fn convert_reads_a_sharded_checkpoint_and_writes_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    safetensors_file(&model.join("a.safetensors"), 1);
    safetensors_file(&model.join("b.safetensors"), 2);
    let tensors = dir.path().join("model.tensors");
    let out = run(&["convert".as_ref(), model.as_os_str(), tensors.as_os_str()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let d = Deserializer::open(&tensors).unwrap();
    let names: Vec<String> = d.entries().iter().map(|e| e.name.to_string()).collect();
    assert_eq!(names, ["b1", "b2", "w1", "w2"]);
    let back = dir.path().join("back.safetensors");
    let out = run(&["convert".as_ref(), tensors.as_os_str(), back.as_os_str()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let bytes = std::fs::read(&back).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let original = std::fs::read(model.join("a.safetensors")).unwrap();
    let a = safetensors::SafeTensors::deserialize(&original).unwrap();
    assert_eq!(
        st.tensor("w1").unwrap().data(),
        a.tensor("w1").unwrap().data()
    );
    assert_eq!(st.len(), 4);
}
