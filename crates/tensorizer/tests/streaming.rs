//! The streaming writer: records reach the sink at each call, with the
//! Python writer's layout (byte-identical files for the same calls), the
//! "Metadata overflow" rule, encryption, and nothing left by a failure.

mod common;

use common::*;
use serde_json::Value;
use tensorizer::{
    Decryption, Deserializer, Dtype, Encryption, EncryptionKey, Error, KdfParams, KdfStrength,
    Serializer, StreamingSerializer, TensorData, TensorType, UnauthenticatedMeta, Verify,
};

/// One record of a test model: module index, name, type, dtype, shape and
/// the bytes (`None` for a meta tensor).
type Record = (u16, String, TensorType, Dtype, Vec<u64>, Option<Vec<u8>>);

/// A small model with every kind of record: params, buffers, a state dict
/// batch, an empty tensor and a meta tensor.
fn model() -> Vec<Record> {
    let bytes = |n: usize, seed: u8| -> Option<Vec<u8>> {
        Some(
            (0..n)
                .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed))
                .collect(),
        )
    };
    vec![
        (
            0,
            "embed.weight".into(),
            TensorType::Param,
            Dtype::BF16,
            vec![512, 640],
            bytes(512 * 640 * 2, 1),
        ),
        (
            0,
            "layers.0.norm".into(),
            TensorType::Param,
            Dtype::F32,
            vec![640],
            bytes(640 * 4, 2),
        ),
        (
            1,
            "layers.0.mask".into(),
            TensorType::Buffer,
            Dtype::Bool,
            vec![8, 8],
            bytes(64, 3),
        ),
        (
            1,
            "layers.0.empty".into(),
            TensorType::Param,
            Dtype::I64,
            vec![0],
            Some(Vec::new()),
        ),
        (
            2,
            "layers.0.meta".into(),
            TensorType::Param,
            Dtype::F16,
            vec![3, 4],
            None,
        ),
        (
            0,
            "lm_head.weight".into(),
            TensorType::Param,
            Dtype::F16,
            vec![300, 1000],
            bytes(300 * 1000 * 2, 4),
        ),
    ]
}

fn data<'a>(dtype: Dtype, shape: &'a [u64], bytes: &'a Option<Vec<u8>>) -> TensorData<'a> {
    match bytes {
        Some(b) => TensorData::new(dtype, shape, b).unwrap(),
        None => TensorData::meta(dtype, shape),
    }
}

/// The model written all at once by the buffered writer.
fn buffered(encryption: Option<Encryption>) -> Vec<u8> {
    let model = model();
    let mut s = Serializer::new();
    for (m, name, ty, dtype, shape, bytes) in &model {
        s.write_tensor(*m, name.as_str(), *ty, data(*dtype, shape, bytes))
            .unwrap();
    }
    if let Some(e) = encryption {
        s.encryption(e);
    }
    s.to_bytes().unwrap()
}

/// The model streamed into a file: the first two tensors one call each,
/// the rest as one batch.
fn streamed(path: &std::path::Path, encryption: Option<Encryption>) -> Vec<u8> {
    let model = model();
    let mut w = StreamingSerializer::create_file(path).unwrap();
    if let Some(e) = encryption {
        w.encryption(e).unwrap();
    }
    for (m, name, ty, dtype, shape, bytes) in &model[..2] {
        w.write_tensor(*m, name.as_str(), *ty, data(*dtype, shape, bytes))
            .unwrap();
    }
    w.write_batch(model[2..].iter().map(|(m, name, ty, dtype, shape, bytes)| {
        (*m, name.as_str().into(), *ty, data(*dtype, shape, bytes))
    }))
    .unwrap();
    assert_eq!(w.len(), model.len());
    let summary = w.finish().unwrap();
    let file = std::fs::read(path).unwrap();
    assert_eq!(summary.bytes, file.len() as u64);
    file
}

#[test]
fn streamed_files_equal_the_buffered_writers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.tensors");
    assert!(
        streamed(&path, None) == buffered(None),
        "plain files differ"
    );

    // With the same nonces, encrypted files are the same bytes too.
    let key = EncryptionKey::from_bytes([5; 32]);
    let nonces = || (0..64u8).map(|i| tensorizer::Nonce([i; 24]));
    let enc = || Encryption::with_key(key.clone()).with_nonces(nonces());
    assert!(
        streamed(&path, Some(enc())) == buffered(Some(enc())),
        "encrypted files differ"
    );

    // And they read back, verified, with the key (and a passphrase).
    let check = |d: Deserializer| {
        let allow = UnauthenticatedMeta::Allow(vec!["layers.0.meta".into()]);
        let got = d
            .unauthenticated_meta(allow)
            .verify(Verify::All)
            .read_all()
            .unwrap();
        for (t, (_, name, _, _, shape, bytes)) in got.iter().zip(model()) {
            assert_eq!(t.path().to_string(), name);
            assert_eq!(t.shape(), shape.as_slice());
            if let Some(b) = bytes {
                assert_eq!(t.as_bytes(), b.as_slice(), "{name}");
            }
        }
    };
    check(
        Deserializer::open(&path)
            .unwrap()
            .decryption(Decryption::Key(key.clone()))
            .unwrap(),
    );
    let params = KdfParams::new(KdfStrength::Min).unwrap();
    streamed(
        &path,
        Some(Encryption::from_passphrase(b"pw", params).unwrap()),
    );
    check(
        Deserializer::open(&path)
            .unwrap()
            .decryption(Decryption::passphrase("pw"))
            .unwrap(),
    );
}

/// Python's fixtures, re-written one tensor a call, are Python's bytes.
#[test]
fn fixtures_streamed_one_tensor_at_a_time_are_pythons_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut rewritten = 0;
    for set in ["tensorizer-2.12.1", "tensorizer-2.12.1-extended-dtypes"] {
        let manifest = manifest(set);
        for f in manifest["fixtures"].as_array().unwrap() {
            let encrypted =
                !f["encryption"].is_null() || f["file"].as_str().unwrap().contains("encrypted");
            if f["deterministic"] != Value::Bool(true) || f["category"] != "valid" || encrypted {
                continue;
            }
            let name = f["file"].as_str().unwrap();
            let path = fixtures().join(set).join(name);
            let tensors = Deserializer::open(&path).unwrap().read_all().unwrap();
            let out = dir.path().join(name);
            let mut w = StreamingSerializer::create_file(&out).unwrap();
            for t in &tensors {
                w.write_tensors(std::slice::from_ref(t)).unwrap();
            }
            w.finish().unwrap();
            assert!(
                std::fs::read(&out).unwrap() == std::fs::read(&path).unwrap(),
                "{name}: streamed bytes differ from Python's"
            );
            rewritten += 1;
        }
    }
    assert!(rewritten >= 17, "{rewritten}");
}

#[test]
fn an_index_overflow_is_refused_and_the_writer_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.tensors");
    let one = [1u8];
    let long = "x".repeat(2000);
    let mut w = StreamingSerializer::create_file(&path).unwrap();
    let mut written = 0;
    let err = loop {
        let name = format!("{long}.{written}");
        match w.write_tensor(
            0,
            name.as_str(),
            TensorType::Param,
            TensorData::new(Dtype::U8, &[1], &one).unwrap(),
        ) {
            Ok(_) => written += 1,
            Err(e) => break e,
        }
        assert!(written < 1000, "256 KiB cannot hold 1000 entries of 2 KB");
    };
    assert!(err.to_string().contains("Metadata overflow"), "{err}");
    assert!(written > 100, "{written}");
    // A dry run says the same and writes nothing; a batch that fits passes it.
    let spec = |name: String| (0, name.into(), TensorType::Param, Dtype::U8, vec![1], false);
    let bytes_before = w.bytes();
    let refused = w.check_batch([spec("short".into()), spec(format!("{long}.again"))]);
    assert!(
        refused
            .unwrap_err()
            .to_string()
            .contains("Metadata overflow")
    );
    w.check_batch([spec("short".into())]).unwrap();
    assert_eq!((w.len(), w.bytes()), (written, bytes_before));
    // A shorter name still fits; the file holds what was accepted.
    w.write_tensor(
        0,
        "short",
        TensorType::Param,
        TensorData::new(Dtype::U8, &[1], &one).unwrap(),
    )
    .unwrap();
    let summary = w.finish().unwrap();
    assert_eq!(summary.tensors, written + 1);
    let d = Deserializer::open(&path).unwrap().verify(Verify::All);
    assert_eq!(d.read_all().unwrap().len(), written + 1);

    // A larger reserved index takes them all.
    let mut w = StreamingSerializer::create_file(&path).unwrap();
    w.index_capacity(8 << 20).unwrap();
    for i in 0..written + 10 {
        let name = format!("{long}.{i}");
        w.write_tensor(
            0,
            name.as_str(),
            TensorType::Param,
            TensorData::new(Dtype::U8, &[1], &one).unwrap(),
        )
        .unwrap();
    }
    // Settings that shape the file are refused once tensors went out.
    assert!(matches!(
        w.index_capacity(1 << 20),
        Err(Error::TooLate { .. })
    ));
    assert_eq!(w.finish().unwrap().tensors, written + 10);
}

#[test]
fn a_failed_write_leaves_the_previous_file_and_no_debris() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.tensors");
    let before = streamed(&path, None);

    let mut w = StreamingSerializer::create_file(&path).unwrap();
    let big = vec![7u8; 4 << 20];
    w.write_tensor(
        0,
        "first",
        TensorType::Param,
        TensorData::new(Dtype::U8, &[4 << 20], &big).unwrap(),
    )
    .unwrap();
    let err = w
        .write_tensor_with(
            0,
            "second",
            TensorType::Param,
            Dtype::U8,
            &[1 << 20],
            |_| Err("the GPU fell off the bus".into()),
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("the GPU fell off the bus"),
        "{err}"
    );
    // The writer is spent: every later call names the first failure.
    let again = w
        .write_tensor(
            0,
            "third",
            TensorType::Param,
            TensorData::new(Dtype::U8, &[1], &big[..1]).unwrap(),
        )
        .unwrap_err();
    assert!(matches!(again, Error::WriteAbandoned { .. }), "{again}");
    assert!(
        again.to_string().contains("the GPU fell off the bus"),
        "{again}"
    );
    assert!(matches!(w.finish(), Err(Error::WriteAbandoned { .. })));
    assert!(std::fs::read(&path).unwrap() == before);

    // A dropped writer leaves nothing either.
    let mut w = StreamingSerializer::create_file(&path).unwrap();
    w.write_tensor(
        0,
        "first",
        TensorType::Param,
        TensorData::new(Dtype::U8, &[4 << 20], &big).unwrap(),
    )
    .unwrap();
    drop(w);
    assert!(std::fs::read(&path).unwrap() == before);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["model.tensors"], "debris left: {names:?}");

    // Nothing written is an error, not an empty file.
    let empty = StreamingSerializer::create_file(dir.path().join("empty.tensors")).unwrap();
    assert!(matches!(empty.finish(), Err(Error::NothingToWrite { .. })));
    assert!(!dir.path().join("empty.tensors").exists());
}

/// Set in the child process of [`in_a_child_under_a_memory_limit`].
const CHILD: &str = "TENSORIZER_MEMORY_LIMIT_CHILD";
/// Address space the child may add to what it has mapped at its start.
const HEADROOM: u64 = 384 << 20;
/// The test models: 48 tensors of 32 MiB, 1.5 GiB, four times the limit.
const TENSOR: usize = 32 << 20;
const TENSORS: usize = 48;

/// Runs the calling test again in a child process whose address space is
/// limited (`RLIMIT_AS`) to what it has at its start plus [`HEADROOM`],
/// and returns the child's peak RSS above its baseline; in the child, runs
/// `body` under the limit and prints that peak (and returns 0).
fn in_a_child_under_a_memory_limit(
    test: &str,
    dir: &std::path::Path,
    body: fn(&std::path::Path),
) -> u64 {
    if std::env::var_os(CHILD).is_some() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let field = |name: &str| -> u64 {
            let line = status.lines().find(|l| l.starts_with(name)).unwrap();
            line.split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap()
                << 10
        };
        let (size, baseline) = (field("VmSize:"), field("VmRSS:"));
        let limit = libc::rlimit {
            rlim_cur: size + HEADROOM,
            rlim_max: size + HEADROOM,
        };
        // SAFETY: setrlimit reads the struct it is given.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) }, 0);
        body(dir);
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let peak = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse::<u64>()
            .unwrap()
            << 10;
        // On a line of its own: libtest prints the test's name before it.
        println!(
            "\npeak-rss-above-baseline={}",
            peak.saturating_sub(baseline)
        );
        return 0;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(CHILD, dir)
        // One malloc arena per thread reserves 64 MiB of address space each.
        .env("MALLOC_ARENA_MAX", "2")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the child under the memory limit failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peak: u64 = stdout
        .lines()
        .find_map(|l| l.split("peak-rss-above-baseline=").nth(1))
        .expect("the child printed its peak RSS")
        .trim()
        .parse()
        .unwrap();
    println!("{test}: peak RSS {} MiB above the baseline", peak >> 20);
    peak
}

/// The directory a child works in: the parent's temporary directory.
fn child_dir(parent: &tempfile::TempDir) -> std::path::PathBuf {
    std::env::var_os(CHILD).map_or_else(|| parent.path().to_path_buf(), Into::into)
}

/// Tensor `i` of the test models: a fixed pattern with `i` in its first
/// eight bytes, so that each tensor is told apart.
fn pattern() -> Vec<u8> {
    (0..TENSOR).map(|j| (j % 251) as u8).collect()
}

fn stamp(buf: &mut [u8], i: usize) {
    buf[..8].copy_from_slice(&(i as u64).to_le_bytes());
}

/// Checks every tensor of a written file, hashes included, one at a time.
fn check_streamed_model(path: &std::path::Path, name: impl Fn(usize) -> String) {
    let d = Deserializer::open(path).unwrap().verify(Verify::All);
    assert_eq!(d.len(), TENSORS);
    let mut expected = pattern();
    for i in 0..TENSORS {
        stamp(&mut expected, i);
        let t = d.read(name(i).as_str()).unwrap();
        assert!(t.as_bytes() == &expected[..], "tensor {i} differs");
    }
    assert_eq!(d.verified_tensors(), TENSORS);
}

#[test]
fn a_model_four_times_the_memory_limit_streams_from_one_buffer() {
    const NAME: &str = "a_model_four_times_the_memory_limit_streams_from_one_buffer";
    let parent = tempfile::tempdir().unwrap();
    let dir = child_dir(&parent);
    let name = |i: usize| format!("layers.{i:02}.weight");
    let peak = in_a_child_under_a_memory_limit(NAME, &dir, |dir| {
        let mut w = StreamingSerializer::create_file(dir.join("model.tensors")).unwrap();
        let mut buf = pattern();
        for i in 0..TENSORS {
            stamp(&mut buf, i);
            let t = TensorData::new(Dtype::U8, &[TENSOR as u64], &buf).unwrap();
            w.write_tensor(
                0,
                format!("layers.{i:02}.weight").as_str(),
                TensorType::Param,
                t,
            )
            .unwrap();
        }
        assert_eq!(w.finish().unwrap().tensors, TENSORS);
    });
    if std::env::var_os(CHILD).is_none() {
        // The caller's one buffer, and the writer's fixed staging.
        assert!(peak <= (TENSOR as u64) + (128 << 20), "peak RSS {peak}");
        check_streamed_model(&dir.join("model.tensors"), name);
    }
}

#[test]
fn a_checkpoint_four_times_the_memory_limit_converts_within_it() {
    const NAME: &str = "a_checkpoint_four_times_the_memory_limit_converts_within_it";
    let parent = tempfile::tempdir().unwrap();
    let dir = child_dir(&parent);
    let name = |i: usize| format!("t{i:02}");
    if std::env::var_os(CHILD).is_none() {
        // A safetensors file written by hand, one tensor at a time.
        let mut header = serde_json::Map::new();
        for i in 0..TENSORS {
            let at = (i * TENSOR) as u64;
            header.insert(
                name(i),
                serde_json::json!({"dtype": "U8", "shape": [TENSOR], "data_offsets": [at, at + TENSOR as u64]}),
            );
        }
        let mut json = serde_json::to_vec(&Value::Object(header)).unwrap();
        json.resize(json.len().next_multiple_of(8), b' ');
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(dir.join("model.safetensors")).unwrap());
        use std::io::Write;
        f.write_all(&(json.len() as u64).to_le_bytes()).unwrap();
        f.write_all(&json).unwrap();
        let mut buf = pattern();
        for i in 0..TENSORS {
            stamp(&mut buf, i);
            f.write_all(&buf).unwrap();
        }
        f.into_inner().unwrap().sync_all().unwrap();
    }
    let peak = in_a_child_under_a_memory_limit(NAME, &dir, |dir| {
        let input = dir.join("model.safetensors");
        let output = dir.join("model.tensors");
        let summary = tensorizer::safetensors::checkpoint_to_tensorizer(
            input.to_str().unwrap(),
            output.to_str().unwrap(),
            &Default::default(),
        )
        .unwrap();
        assert_eq!(summary.tensors, TENSORS);
    });
    if std::env::var_os(CHILD).is_none() {
        // The tensors the writer threads fill share the default budget.
        assert!(
            peak <= tensorizer::DEFAULT_FILL_BUDGET + (128 << 20),
            "peak RSS {peak}"
        );
        check_streamed_model(&dir.join("model.tensors"), name);
    }
}

#[test]
fn tensors_the_writers_fill_share_the_fill_budget() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (live, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let dir = tempfile::tempdir().unwrap();
    let mut s = Serializer::new();
    // Room for one 2 MiB tensor at a time, whatever the threads.
    s.fill_budget(3 << 20);
    for i in 0..6 {
        s.write_tensor_with(
            0,
            format!("t{i}").as_str(),
            TensorType::Param,
            Dtype::U8,
            &[2 << 20],
            |buf| {
                let now = live.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(20));
                buf.fill(1);
                live.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            },
        )
        .unwrap();
    }
    assert_eq!(
        s.write_to_file(dir.path().join("m.tensors"))
            .unwrap()
            .tensors,
        6
    );
    assert_eq!(most.load(Ordering::SeqCst), 1);
}

#[test]
fn tensors_handed_over_in_pieces_are_written_as_whole_ones() {
    let dir = tempfile::tempdir().unwrap();
    // 5 MiB + 3: several write blocks and cipher chunks, and a short tail.
    let bytes: Vec<u8> = (0..(5 << 20) + 3).map(|i| (i % 253) as u8).collect();
    let shape = [bytes.len() as u64];
    // Odd piece sizes, smaller and larger than a block.
    let produce = |each: &mut dyn FnMut(&[u8]) -> Result<(), tensorizer::BoxError>| {
        let mut at = 0;
        for size in [7usize, 1 << 20, 3 << 20, 12345].into_iter().cycle() {
            if at == bytes.len() {
                return Ok(());
            }
            let n = size.min(bytes.len() - at);
            each(&bytes[at..at + n])?;
            at += n;
        }
        unreachable!()
    };
    let key = EncryptionKey::from_bytes([5; 32]);
    for encrypted in [false, true] {
        let whole = dir.path().join("whole.tensors");
        let pieces = dir.path().join("pieces.tensors");
        for (path, from_pieces) in [(&whole, false), (&pieces, true)] {
            let mut w = StreamingSerializer::create_file(path).unwrap();
            if encrypted {
                w.encryption(Encryption::with_key(key.clone())).unwrap();
            }
            if from_pieces {
                w.write_tensor_from(0, "t", TensorType::Param, Dtype::U8, &shape, produce)
                    .unwrap();
            } else {
                let t = TensorData::new(Dtype::U8, &shape, &bytes).unwrap();
                w.write_tensor(0, "t", TensorType::Param, t).unwrap();
            }
            w.finish().unwrap();
        }
        if !encrypted {
            assert!(std::fs::read(&whole).unwrap() == std::fs::read(&pieces).unwrap());
        }
        let mut d = Deserializer::open(&pieces).unwrap().verify(Verify::All);
        if encrypted {
            d = d.decryption(Decryption::Key(key.clone())).unwrap();
        }
        assert!(d.read("t").unwrap().as_bytes() == &bytes[..]);
    }

    // A producer that gives too little or too much is named.
    let path = dir.path().join("short.tensors");
    let mut w = StreamingSerializer::create_file(&path).unwrap();
    let err = w
        .write_tensor_from(0, "short", TensorType::Param, Dtype::U8, &[10], |each| {
            each(&[1; 4])
        })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("4 bytes were given for a tensor of 10 bytes"),
        "{err}"
    );
    let mut w = StreamingSerializer::create_file(&path).unwrap();
    let err = w
        .write_tensor_from(0, "long", TensorType::Param, Dtype::U8, &[10], |each| {
            each(&[1; 6])?;
            each(&[1; 6])
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("more than the tensor's 10 bytes"), "{err}");
    assert!(!path.exists());
}
