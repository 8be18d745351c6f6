//! HTTP sources against nginx and against misbehaving servers: byte-exact
//! reads, bounded retries, resumption, and clear final errors.
#![cfg(feature = "http")]

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::*;
use tensorizer_io::{HttpSource, IoError, RangeSource, RetryPolicy};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        deadline: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(1),
    }
}

fn blob(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 131 % 251) as u8).collect()
}

/// Reads the whole source in `piece`-byte ranges from four threads.
fn read_all(src: &dyn RangeSource, piece: usize) -> Vec<u8> {
    let mut out = vec![0u8; src.len() as usize];
    std::thread::scope(|s| {
        for (i, chunk) in out.chunks_mut(piece).enumerate() {
            s.spawn(move || src.read_exact_at((i * piece) as u64, chunk).unwrap());
        }
    });
    out
}

#[test]
fn every_fixture_reads_byte_exact_through_nginx() {
    for set in ["tensorizer-2.12.1", "spec"] {
        let dir = fixtures().join(set);
        let nginx = Nginx::start(&dir);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "tensors") {
                continue;
            }
            let name = path.file_name().unwrap().to_str().unwrap();
            let src = HttpSource::open(&nginx.url(name), RetryPolicy::default()).unwrap();
            assert!(src.supports_ranges());
            let local = std::fs::read(&path).unwrap();
            assert_eq!(src.len(), local.len() as u64, "{name}");
            assert!(read_all(&src, 100_003) == local, "{name}");
            n += 1;
        }
        assert!(n >= 6);
    }
}

#[test]
fn retries_5xx_then_succeeds() {
    let body = blob(300_000);
    for status in [503, 429, 500] {
        let server = TestServer::start(
            body.clone(),
            Behavior {
                fail_status: status,
                fail_first: 2,
                ..Behavior::default()
            },
        );
        let src = HttpSource::open(&server.url(), fast_policy()).unwrap();
        assert_eq!(src.read_range(1000, 5000).unwrap(), &body[1000..6000]);
        assert_eq!(
            server.requests.load(std::sync::atomic::Ordering::SeqCst),
            4,
            "2 failures, probe, read"
        );
    }
}

#[test]
fn broken_bodies_resume_at_the_last_byte() {
    let body = blob(1 << 20);
    let server = TestServer::start(
        body.clone(),
        Behavior {
            cut_after: Some(40_000),
            cut_first: 4,
            ..Behavior::default()
        },
    );
    let src = HttpSource::open(&server.url(), fast_policy()).unwrap();
    assert_eq!(src.read_range(0, body.len() as u64).unwrap(), body);
    // The probe, three cut requests (indices 1-3), then one resumed request for the rest.
    assert_eq!(server.requests.load(std::sync::atomic::Ordering::SeqCst), 5);
}

#[test]
fn servers_ignoring_range_are_downloaded_once_not_misread() {
    let body = blob(200_000);
    let server = TestServer::start(
        body.clone(),
        Behavior {
            ignore_range: true,
            ..Behavior::default()
        },
    );
    let src = HttpSource::open(&server.url(), fast_policy()).unwrap();
    assert!(!src.supports_ranges());
    assert_eq!(
        src.read_range(123_456, 1000).unwrap(),
        &body[123_456..124_456]
    );
    // In order, out of order, from many threads: one download serves all
    // (an 84 MB model took 83 GETs and 3.77 GB once; 12 GETs for 25 MB
    // with reads behind the stream restarting it).
    std::thread::scope(|s| {
        for t in 0..4usize {
            let (src, body) = (&src, &body);
            s.spawn(move || {
                for start in (t * 1_000..190_000).step_by(7_000).rev() {
                    assert_eq!(
                        src.read_range(start as u64, 5_000).unwrap(),
                        &body[start..start + 5_000]
                    );
                }
            });
        }
    });
    assert_eq!(src.read_range(10, 20).unwrap(), &body[10..30]);
    assert_eq!(src.read_range(199_000, 1_000).unwrap(), &body[199_000..]);
    assert_eq!(src.whole_object_requests(), 1);
    // The probe's answer was the body: one request in all, sent once.
    assert_eq!(server.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        server.bytes_sent.load(std::sync::atomic::Ordering::SeqCst),
        body.len() as u64
    );
}

/// A Range-ignoring server whose body stops early: the spool retries (the
/// server cannot resume, so each attempt skips what is in) and then every
/// waiting read fails with what happened; none hangs.
#[test]
fn a_range_ignoring_body_cut_short_fails_every_waiting_read() {
    let body = blob(300_000);
    let server = TestServer::start(
        body.clone(),
        Behavior {
            ignore_range: true,
            cut_after: Some(100_000),
            cut_first: 1000,
            cut_probe: true,
            ..Behavior::default()
        },
    );
    let src = HttpSource::open(&server.url(), fast_policy()).unwrap();
    assert_eq!(src.read_range(0, 1000).unwrap(), &body[..1000]);
    let err = src.read_range(250_000, 1000).unwrap_err().to_string();
    assert!(
        err.contains("the body ended at byte 100000 of the 300000"),
        "{err}"
    );
    assert!(src.whole_object_requests() >= 2, "the spool retried");
}

#[test]
fn a_wrong_content_range_is_an_error_not_data() {
    let server = TestServer::start(
        blob(10_000),
        Behavior {
            wrong_range_start: Some(5),
            ..Behavior::default()
        },
    );
    // The probe asks for 0-0 and is told 5-0: refused at open.
    let err = HttpSource::open(&server.url(), fast_policy())
        .err()
        .map(|e| e.to_string());
    let err = err.unwrap_or_else(|| {
        let src = HttpSource::open(&server.url(), fast_policy()).unwrap();
        src.read_range(100, 10).unwrap_err().to_string()
    });
    assert!(
        err.contains("server sent 5-") || err.contains("malformed"),
        "{err}"
    );
}

#[test]
fn client_errors_fail_at_once() {
    for (status, phrase) in [
        (403, "check credentials"),
        (401, "check credentials"),
        (404, "no such object"),
    ] {
        let server = TestServer::start(
            blob(100),
            Behavior {
                fail_status: status,
                fail_first: 100,
                ..Behavior::default()
            },
        );
        let err = HttpSource::open(&server.url(), fast_policy()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(phrase) && msg.contains(&server.url()), "{msg}");
        assert!(matches!(err, IoError::Remote { attempts: 1, .. }), "{msg}");
        assert_eq!(server.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}

#[test]
fn a_stalled_server_ends_in_a_clear_error_within_the_deadline() {
    let server = TestServer::start(
        blob(100_000),
        Behavior {
            stall_body: true,
            ..Behavior::default()
        },
    );
    let policy = RetryPolicy {
        max_attempts: 3,
        request_timeout: Duration::from_millis(300),
        ..fast_policy()
    };
    let src = HttpSource::open(&server.url(), policy).unwrap();
    let started = Instant::now();
    let err = src.read_range(10, 5000).unwrap_err();
    let msg = err.to_string();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        msg.contains("bytes 10..5010") && msg.contains("after 3 attempts"),
        "{msg}"
    );
}

#[test]
fn the_fault_proxy_cannot_corrupt_reads() {
    let dir = fixtures().join("tensorizer-2.12.1");
    let nginx = Nginx::start(&dir);
    let local = std::fs::read(dir.join("encrypted_random_key.tensors")).unwrap();
    for fault in [
        Fault::ResetAfter {
            bytes: 70_000,
            connections: 3,
        },
        Fault::CloseMidHeader { connections: 2 },
    ] {
        let proxy = FaultProxy::start(nginx.port, fault);
        let src =
            HttpSource::open(&proxy.url("encrypted_random_key.tensors"), fast_policy()).unwrap();
        assert!(read_all(&src, 1 << 20) == local, "{fault:?}");
        assert!(proxy.connections.load(std::sync::atomic::Ordering::SeqCst) >= 3);
    }
    // A fault that never ends: bounded attempts, then the error.
    let proxy = FaultProxy::start(
        nginx.port,
        Fault::ResetAfter {
            bytes: 70_000,
            connections: usize::MAX,
        },
    );
    let started = Instant::now();
    let result = HttpSource::open(&proxy.url("encrypted_random_key.tensors"), fast_policy())
        .and_then(|s| s.read_range(0, 1 << 20));
    let msg = result.unwrap_err().to_string();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        msg.contains("gave up after 4 attempts") && msg.contains("bytes 0..1048576"),
        "{msg}"
    );
}

/// A redirect to another origin is not followed (the signature in a
/// presigned URL's query reached 127.0.0.2 through reqwest's defaults, as
/// `Referer` and in the request), one within the origin is; no request
/// ever carries a `Referer`.
#[test]
fn redirects_stay_within_the_origin_and_carry_no_referer() {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::{Arc, Mutex};
    fn serve(
        ip: &str,
        answer: impl Fn(&str, &mut std::net::TcpStream) + Send + Sync + 'static,
    ) -> (u16, Arc<Mutex<Vec<String>>>) {
        let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let answer = Arc::new(answer);
        std::thread::spawn(move || {
            for con in listener.incoming() {
                let Ok(mut con) = con else { return };
                let (log, answer) = (log.clone(), answer.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(con.try_clone().unwrap());
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                            break;
                        }
                        head.push_str(&line);
                    }
                    log.lock().unwrap().push(head.clone());
                    answer(&head, &mut con);
                });
            }
        });
        (port, seen)
    }
    let body = b"0123456789".to_vec();
    let (other, other_seen) = serve("127.0.0.2", |_, con| {
        let _ = con.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    });
    let (port, seen) = serve("127.0.0.1", move |head, con| {
        let path = head.split_whitespace().nth(1).unwrap_or("");
        if path.starts_with("/away") {
            let _ = write!(
                con,
                "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.2:{other}/stolen\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        } else if path.starts_with("/moved") {
            let _ = con.write_all(
                b"HTTP/1.1 301 Moved\r\nLocation: /real?sig=SIG\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        } else {
            let _ = write!(
                con,
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-0/{}\r\nContent-Length: 1\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = con.write_all(&body[..1]);
        }
    });
    let err = HttpSource::open(
        &format!("http://127.0.0.1:{port}/away?X-Amz-Signature=SIG"),
        fast_policy(),
    )
    .map(|_| ())
    .unwrap_err()
    .to_string();
    assert!(err.contains("302"), "{err}");
    assert!(!err.contains("SIG"), "the query must not be shown: {err}");
    assert!(
        other_seen.lock().unwrap().is_empty(),
        "another origin was contacted"
    );
    let src = HttpSource::open(&format!("http://127.0.0.1:{port}/moved"), fast_policy()).unwrap();
    assert_eq!(src.len(), 10);
    for head in seen.lock().unwrap().iter() {
        assert!(!head.to_ascii_lowercase().contains("referer"), "{head}");
    }
}

/// A server that closes each connection after one answer without saying
/// so (`Connection: close` absent): the client reuses the connection of a
/// 301 for the redirected request and finds it closed. Retries go on
/// connections of their own, so every open succeeds (the cause of a gate
/// failure about 1 run in 30).
#[test]
fn a_server_closing_connections_silently_is_still_read() {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for con in listener.incoming().take(10_000) {
            let Ok(mut con) = con else { return };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(con.try_clone().unwrap());
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                let _ = if path.starts_with("/moved") {
                    con.write_all(
                        b"HTTP/1.1 301 Moved\r\nLocation: /real\r\nContent-Length: 0\r\n\r\n",
                    )
                } else {
                    con.write_all(
                        b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-0/10\r\nContent-Length: 1\r\n\r\n0",
                    )
                };
                // Dropped: closed, unannounced.
            });
        }
    });
    for _ in 0..50 {
        let src = HttpSource::open(&format!("http://127.0.0.1:{port}/moved"), fast_policy())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(src.len(), 10);
    }
}

/// A server whose certificate a private CA signed (an S3-compatible store
/// on premises, say): refused against the system's roots, read once the CA
/// file or a directory holding it is trusted; a missing CA file is named.
#[test]
fn a_private_ca_is_trusted_only_when_given() {
    use tensorizer_io::TrustOptions;
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = private_ca(dir.path());
    let root = dir.path().join("www");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("m.bin"), blob(100_000)).unwrap();
    let nginx = Nginx::start_tls(&root, &cert, &key);
    let url = nginx.url("m.bin");
    let err = HttpSource::open(&url, fast_policy())
        .unwrap_err()
        .to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let ca_dir = dir.path().join("cas");
    std::fs::create_dir(&ca_dir).unwrap();
    std::fs::copy(&ca, ca_dir.join("private.pem")).unwrap();
    std::fs::write(ca_dir.join("README"), "not a certificate").unwrap();
    for trust in [
        TrustOptions {
            ca_file: Some(ca.clone()),
            ..Default::default()
        },
        TrustOptions {
            ca_dir: Some(ca_dir.clone()),
            ..Default::default()
        },
    ] {
        let src = HttpSource::open_with(&url, fast_policy(), &trust).unwrap();
        assert_eq!(src.read_range(0, 100_000).unwrap(), blob(100_000));
    }
    // Verification off only when asked for by name.
    let insecure = TrustOptions {
        accept_invalid_certs: true,
        ..Default::default()
    };
    assert!(HttpSource::open_with(&url, fast_policy(), &insecure).is_ok());
    let missing = TrustOptions {
        ca_file: Some(dir.path().join("nope.pem")),
        ..Default::default()
    };
    let err = HttpSource::open_with(&url, fast_policy(), &missing)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nope.pem") && err.contains("CA certificates"),
        "{err}"
    );
    // Plain http exchanges no certificate: the trust is not loaded (as curl
    // ignores --cacert there), so a CA named for https does not matter.
    let plain = TestServer::start(blob(1000), Behavior::default());
    let src = HttpSource::open_with(&plain.url(), fast_policy(), &missing).unwrap();
    assert_eq!(src.read_range(0, 1000).unwrap(), blob(1000));
}
