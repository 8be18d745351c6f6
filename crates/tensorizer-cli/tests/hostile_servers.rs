//! The CLI against servers that lie: one that ignores `Range` is read once
//! for `load`, `verify` and `copy` alike; one that claims 100 GB and sends
//! kilobytes costs kilobytes of memory, not what it claims.

#[path = "../../tensorizer-io/tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use support::{Behavior, TestServer};
use tensorizer::format::{
    Dtype, DtypeString, FileHeader, FormatVersion, IndexEntry, Metadata, Shape, TensorName,
    TensorType,
};

/// Runs the CLI; its exit status, stdout, stderr and peak RSS in bytes.
///
/// The peak is the child's own `VmHWM`, read from `/proc` every 2 ms while
/// it runs: `wait4`'s `ru_maxrss` would report this test process's size
/// (a spawned child execs from the parent's address space, and the kernel
/// keeps that address space's peak across the exec).
fn run_measured(args: &[&str]) -> (i32, String, String, u64) {
    let child = Command::new(env!("CARGO_BIN_EXE_tensorizer"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = done.clone();
    let sampler = std::thread::spawn(move || {
        let mut peak = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let kib = std::fs::read_to_string(&status).ok().and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            });
            peak = peak.max(kib.unwrap_or(0) * 1024);
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        peak
    });
    let output = child.wait_with_output().unwrap();
    done.store(true, Ordering::SeqCst);
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        sampler.join().unwrap(),
    )
}

/// A model of 40 tensors, 25 MB in all.
fn model(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("m.tensors");
    let data: Vec<Vec<u8>> = (0..40u32)
        .map(|i| {
            let n = if i % 4 == 0 {
                2_000_000
            } else {
                50_000 + i as usize
            };
            (0..n).map(|k| (k as u32 * 7 + i) as u8).collect()
        })
        .collect();
    let tensors: Vec<_> = data
        .iter()
        .enumerate()
        .map(|(i, d)| {
            (
                format!("layer.{i}.weight"),
                tensorizer::TensorData::new(Dtype::U8, &[d.len() as u64], d).unwrap(),
            )
        })
        .collect();
    let mut s = tensorizer::Serializer::new();
    s.write_state_dict(tensors).unwrap();
    s.write_to_file(&path).unwrap();
    path
}

#[test]
fn a_range_ignoring_server_is_read_once_by_load_verify_and_copy() {
    let dir = tempfile::tempdir().unwrap();
    let file = model(dir.path());
    let body = std::fs::read(&file).unwrap();
    let out = dir.path().join("copy.tensors");
    let commands: [Vec<String>; 3] = [
        vec!["load".into(), "--verify".into(), "all".into()],
        vec!["verify".into()],
        vec!["copy".into()],
    ];
    for command in commands {
        let server = TestServer::start(
            body.clone(),
            Behavior {
                ignore_range: true,
                ..Behavior::default()
            },
        );
        let url = server.url();
        let mut args: Vec<&str> = command.iter().map(String::as_str).collect();
        args.push(&url);
        let out_s = out.to_string_lossy().into_owned();
        if command[0] == "copy" {
            args.push(&out_s);
        }
        let (code, stdout, stderr, _) = run_measured(&args);
        assert_eq!(code, 0, "{command:?}: {stdout}{stderr}");
        assert_eq!(
            server.requests.load(Ordering::SeqCst),
            1,
            "{command:?}: one GET"
        );
        assert_eq!(
            server.bytes_sent.load(Ordering::SeqCst),
            body.len() as u64,
            "{command:?}: the file's size once"
        );
        eprintln!(
            "{command:?}: 1 GET, {} bytes for a {}-byte file",
            server.bytes_sent.load(Ordering::SeqCst),
            body.len()
        );
    }
    assert!(std::fs::read(&out).unwrap() == body, "copy is byte-exact");
}

/// The prologue of an encrypted (v3) file of 16 tensors of 6.25 GB each,
/// whose headers each claim 100 MB (the most crypt info 6.25 GB of data
/// may carry): 100 GB in all.
fn claimed_100_gb() -> (Vec<u8>, u64) {
    const TENSORS: u64 = 16;
    const DATA: u64 = 6_250_000_000;
    const HEADER: u64 = 100_000_000;
    let index_len = 1024;
    let mut at = 73 + index_len;
    let entries = (0..TENSORS)
        .map(|i| {
            let e = IndexEntry {
                name: TensorName::parse(format!("t{i:02}").as_bytes()).unwrap(),
                tensor_type: TensorType::StateDict,
                dtype: DtypeString::new(Dtype::U8),
                shape: Shape::from(vec![62_500, DATA / 62_500]),
                wide_dims: false,
                header_offset: at,
                data_offset: at + HEADER,
                data_length: DATA,
            };
            at += HEADER + DATA;
            e
        })
        .collect();
    let metadata = Metadata {
        header: FileHeader {
            version: FormatVersion::ENCRYPTION,
            flags: Default::default(),
            tensor_size: TENSORS * DATA,
            tensor_count: TENSORS,
        },
        index_len,
        entries,
    };
    (metadata.encode().unwrap(), at)
}

/// Serves an object of `total` bytes whose first bytes are `head`: every
/// range is announced whole (206, `Content-Range`, `Content-Length`), then
/// only the bytes of `head` it overlaps are sent and the connection closed.
fn lying_server(head: Vec<u8>, total: u64) -> (u16, Arc<AtomicU64>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let head = Arc::new(head);
    std::thread::spawn(move || {
        // Bounded: the test's requests, retries included, are far fewer.
        for con in listener.incoming().take(4096) {
            let Ok(mut con) = con else { return };
            let (head, counter) = (head.clone(), counter.clone());
            std::thread::spawn(move || {
                con.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                    .ok();
                let mut reader = BufReader::new(con.try_clone().unwrap());
                let mut range = (0u64, total - 1);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if let Some(r) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        let (a, b) = r.trim().split_once('-').unwrap();
                        range = (a.parse().unwrap(), b.parse().unwrap());
                    }
                    if line == "\r\n" {
                        let (a, b) = range;
                        let _ = write!(
                            con,
                            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/{total}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            b - a + 1
                        );
                        let real =
                            head.get(a as usize..=(b as usize).min(head.len().saturating_sub(1)));
                        if let Some(bytes) = real.filter(|_| (a as usize) < head.len())
                            && con.write_all(bytes).is_ok()
                        {
                            counter.fetch_add(bytes.len() as u64, Ordering::SeqCst);
                        }
                        return;
                    }
                }
            });
        }
    });
    (port, sent)
}

#[test]
fn a_server_claiming_100_gb_and_sending_kilobytes_costs_kilobytes() {
    let (head, total) = claimed_100_gb();
    assert!(total > 100_000_000_000);
    let (port, sent) = lying_server(head, total);
    let url = format!("http://127.0.0.1:{port}/m.tensors");
    // The goal is 64 MiB above the CLI's baseline; its whole peak must be
    // under that (the baseline, some 10 MiB, is too quick to sample).
    for args in [
        vec!["load", "--num-readers", "16", url.as_str()],
        vec!["verify", url.as_str()],
    ] {
        let (code, stdout, stderr, peak) = run_measured(&args);
        assert_eq!(code, 1, "{args:?} must fail: {stdout}{stderr}");
        assert!(
            stderr.contains("t0") && !stderr.contains("memory allocation"),
            "{args:?}: a clear error naming a tensor: {stderr}"
        );
        eprintln!(
            "{args:?}: peak RSS {:.1} MiB, {} bytes received",
            peak as f64 / (1 << 20) as f64,
            sent.load(Ordering::SeqCst)
        );
        assert!(peak > 0, "sampled");
        assert!(peak < 64 << 20, "{args:?}: peak RSS {peak} bytes");
    }
}

/// A server whose certificate a private CA signed: refused (naming the
/// certificate problem) until the CA is trusted with `--ca-file` or the
/// environment's `SSL_CERT_FILE` / `AWS_CA_BUNDLE`.
#[test]
fn a_private_ca_is_trusted_through_the_flag_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = support::private_ca(dir.path());
    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    model(&www);
    let nginx = support::Nginx::start_tls(&www, &cert, &key);
    let url = nginx.url("m.tensors");
    let tz = |args: &[&str], env: &[(&str, &std::path::Path)]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tensorizer"));
        c.args(args)
            .env_remove("SSL_CERT_FILE")
            .env_remove("AWS_CA_BUNDLE")
            .env_remove("SSL_CERT_DIR");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let refused = tz(&["verify", &url], &[]);
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("certificate") && err.contains("--ca-file"),
        "{err}"
    );
    let ca_s = ca.to_string_lossy().into_owned();
    for o in [
        tz(&["verify", &url, "--ca-file", &ca_s], &[]),
        tz(&["verify", &url], &[("SSL_CERT_FILE", &ca)]),
        tz(&["verify", &url], &[("AWS_CA_BUNDLE", &ca)]),
    ] {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

/// Every URI the CLI shows goes through one display type: `inspect
/// --json`'s `file` field was the raw last segment (a presigned query, or
/// `alice:s3cr3t@host` for a URI without a path); a password holding `/`
/// or `#` was shown past them.
#[test]
fn uris_are_shown_without_their_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let body = std::fs::read(model(dir.path())).unwrap();
    let server = TestServer::start(body, Behavior::default());
    let port = server.addr.port();
    for url in [
        format!("http://127.0.0.1:{port}/m.tensors?X-Amz-Signature=S3CR3T"),
        format!("http://alice:S3CR3T@127.0.0.1:{port}"),
        format!("http://alice:pa/S3CR3T@127.0.0.1:{port}/m.tensors"),
        format!("http://alice:pa#S3CR3T@127.0.0.1:{port}/m.tensors"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_tensorizer"))
            .args(["inspect", "--json", &url])
            .output()
            .unwrap();
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        assert!(
            !out.contains("S3CR3T") && !err.contains("S3CR3T"),
            "{url}: {out}{err}"
        );
        if url.contains('?') {
            assert!(o.status.success(), "{err}");
            let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(doc["file"], "m.tensors?***", "{out}");
        }
    }
}
