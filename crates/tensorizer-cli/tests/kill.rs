//! A write killed with SIGKILL at any moment leaves the previous file
//! intact and nothing else in its directory, and a rerun succeeds: every
//! command that writes a local file stages it in an unnamed (`O_TMPFILE`)
//! file that only gets a name at commit.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tensorizer::{Serializer, TensorData};

fn tz() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tensorizer"))
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A 320 MiB model: large enough that each write takes a good part of a
/// second, so the kills land before, during and after the data.
fn write_model(path: &Path) {
    let values: Vec<Vec<u32>> = (0..10u32)
        .map(|i| (0..(8u32 << 20)).map(|v| v.wrapping_mul(i + 7)).collect())
        .collect();
    let mut s = Serializer::new();
    s.write_state_dict(values.iter().enumerate().map(|(i, v)| {
        (
            format!("layer.{i}.weight"),
            TensorData::from_slice(&[8 << 20], v).unwrap(),
        )
    }))
    .unwrap();
    s.write_to_file(path).unwrap();
}

/// Runs `args` repeatedly, killing it after each delay; after every kill
/// the output is the old file or (if the command won the race) a complete
/// new one, and the directory holds nothing else.
fn kill_at_several_points(dir: &Path, args: &[&str], output: &Path, expected: &[&str]) {
    std::fs::write(output, b"the previous file").unwrap();
    let mut killed_mid_write = 0;
    for delay_ms in [5u64, 30, 80, 150, 250, 400] {
        let mut child = tz().args(args).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let finished = child.try_wait().unwrap().is_some();
        if !finished {
            child.kill().unwrap(); // SIGKILL: no destructor, no clean-up
            killed_mid_write += 1;
        }
        child.wait().unwrap();
        assert_eq!(listing(dir), expected, "after a kill at {delay_ms} ms");
        if !finished {
            let now = std::fs::read(output).unwrap();
            if now != b"the previous file" {
                // Killed after the rename: the new file is whole.
                verify(output);
            }
        }
        std::fs::write(output, b"the previous file").unwrap();
    }
    assert!(
        killed_mid_write >= 3,
        "only {killed_mid_write} kills landed"
    );
    let rerun = tz().args(args).output().unwrap();
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    assert_eq!(listing(dir), expected);
}

/// A complete output: `tensorizer verify` for a `.tensors` file (every
/// hash), a full parse for a `.safetensors` one (`verify` reads only
/// tensorizer files; a kill that lands just after the rename leaves one).
fn verify(file: &Path) {
    if file.extension().is_some_and(|e| e == "safetensors") {
        let bytes = std::fs::read(file).unwrap();
        let parsed = safetensors::SafeTensors::deserialize(&bytes)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!(parsed.len(), 10, "{}", file.display());
        return;
    }
    let out = tz().arg("verify").arg(file).output().unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn killed_writes_leave_the_old_file_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name);
    let s = |name: &str| d(name).to_str().unwrap().to_owned();
    write_model(&d("model.tensors"));
    std::fs::write(d("k.key"), [7u8; 32]).unwrap();

    // tensors -> safetensors, and back.
    kill_at_several_points(
        dir.path(),
        &["convert", &s("model.tensors"), &s("out.safetensors")],
        &d("out.safetensors"),
        &["k.key", "model.tensors", "out.safetensors"],
    );
    // The rerun's output is whole (and `verify` reads safetensors too).
    verify(&d("out.safetensors"));
    tz().args(["convert", &s("model.tensors"), &s("st.safetensors")])
        .output()
        .unwrap();
    kill_at_several_points(
        dir.path(),
        &["convert", &s("st.safetensors"), &s("out.tensors")],
        &d("out.tensors"),
        &[
            "k.key",
            "model.tensors",
            "out.safetensors",
            "out.tensors",
            "st.safetensors",
        ],
    );
    verify(&d("out.tensors"));
    kill_at_several_points(
        dir.path(),
        &["copy", &s("model.tensors"), &s("copy.tensors")],
        &d("copy.tensors"),
        &[
            "copy.tensors",
            "k.key",
            "model.tensors",
            "out.safetensors",
            "out.tensors",
            "st.safetensors",
        ],
    );
    assert_eq!(
        std::fs::read(d("copy.tensors")).unwrap(),
        std::fs::read(d("model.tensors")).unwrap()
    );
    kill_at_several_points(
        dir.path(),
        &[
            "encrypt",
            &s("model.tensors"),
            &s("enc.tensors"),
            "--key-file",
            &s("k.key"),
        ],
        &d("enc.tensors"),
        &[
            "copy.tensors",
            "enc.tensors",
            "k.key",
            "model.tensors",
            "out.safetensors",
            "out.tensors",
            "st.safetensors",
        ],
    );
    let out = tz()
        .args(["verify", &s("enc.tensors"), "--key-file", &s("k.key")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
