//! Test servers on 127.0.0.1: a misbehaving in-process HTTP server, nginx,
//! moto and s3s-fs (S3), fake-gcs-server (GCS), Azurite (Azure Blob),
//! redis-server, and a fault-injecting TCP proxy. Every loop here is
//! bounded and every server stops when dropped.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// How the in-process server misbehaves.
#[derive(Debug, Clone, Default)]
pub struct Behavior {
    /// Answer 200 with the whole body, ignoring Range.
    pub ignore_range: bool,
    /// Answer this status to the first `fail_first` requests.
    pub fail_status: u16,
    /// How many requests get `fail_status` (0 = none).
    pub fail_first: usize,
    /// Close the connection after this many body bytes, for the first `cut_first` requests.
    pub cut_after: Option<usize>,
    /// Requests with an index below this are cut (the probe, index 0, never is).
    pub cut_first: usize,
    /// Stall (send headers, then nothing) on every request after the probe.
    pub stall_body: bool,
    /// Answer with this Content-Range start instead of the right one.
    pub wrong_range_start: Option<u64>,
    /// Cut the probe too (with `ignore_range`, the probe's answer is the body).
    pub cut_probe: bool,
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    /// Body bytes the server managed to write (a client that hangs up
    /// early receives less than was sent to the socket's buffer).
    pub bytes_sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl TestServer {
    pub fn start(body: Vec<u8>, behavior: Behavior) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let bytes_sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s, body) = (requests.clone(), stop.clone(), Arc::new(body));
        let sent = bytes_sent.clone();
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let n = r.fetch_add(1, Ordering::SeqCst);
                        let (body, b, sent) = (body.clone(), behavior.clone(), sent.clone());
                        thread::spawn(move || serve(stream, &body, &b, n, &sent));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Self {
            addr,
            requests,
            bytes_sent,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/model.tensors", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(mut stream: TcpStream, body: &[u8], b: &Behavior, n: usize, sent: &AtomicU64) {
    stream.set_nonblocking(false).ok();
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(k) => req.extend_from_slice(&buf[..k]),
        }
        if req.len() > 64 * 1024 {
            return;
        }
    }
    let text = String::from_utf8_lossy(&req).to_ascii_lowercase();
    let range = text
        .lines()
        .find_map(|l| l.strip_prefix("range: bytes="))
        .and_then(|r| {
            let (a, b) = r.trim().split_once('-')?;
            Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?))
        });
    if n < b.fail_first {
        let _ = write!(
            stream,
            "HTTP/1.1 {} Nope\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            b.fail_status
        );
        return;
    }
    let (status, start, end) = match range {
        Some((a, z)) if !b.ignore_range => {
            if a >= body.len() as u64 {
                let _ = write!(
                    stream,
                    "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                return;
            }
            (
                "206 Partial Content",
                a as usize,
                (z as usize + 1).min(body.len()),
            )
        }
        _ => ("200 OK", 0, body.len()),
    };
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        end - start
    );
    if status.starts_with("206") {
        let shown = b.wrong_range_start.unwrap_or(start as u64);
        head += &format!(
            "Content-Range: bytes {shown}-{}/{}\r\n",
            end - 1,
            body.len()
        );
    }
    head += "\r\n";
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let probe = range == Some((0, 0));
    if b.stall_body && !probe {
        thread::sleep(Duration::from_secs(5));
        return;
    }
    let mut payload = &body[start..end];
    // Written in pieces, counting what the client took.
    let mut send = |payload: &[u8]| {
        for piece in payload.chunks(16 << 10) {
            if stream.write_all(piece).is_err() {
                return;
            }
            sent.fetch_add(piece.len() as u64, Ordering::SeqCst);
        }
    };
    if let Some(cut) = b
        .cut_after
        .filter(|_| n < b.cut_first + b.fail_first && (!probe || b.cut_probe))
    {
        payload = &payload[..cut.min(payload.len())];
        send(payload);
        let _ = stream.shutdown(Shutdown::Both);
        return;
    }
    send(payload);
}

/// nginx serving `root` on a loopback port, stopped on drop.
pub struct Nginx {
    pub port: u16,
    tls: bool,
    child: Child,
    _dir: tempfile::TempDir,
}

/// A private CA and a certificate it signed for `127.0.0.1` and
/// `localhost`, made with the `openssl` command in `dir`: (CA file, server
/// certificate, server key).
pub fn private_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        let o = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| {
                panic!("openssl is not installed ({e}): apt-get install -y openssl")
            });
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    std::fs::write(
        dir.join("ext.cnf"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=tensorizer test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

impl Nginx {
    pub fn start(root: &Path) -> Self {
        Self::start_with(root, None)
    }

    /// nginx serving `root` over https with this certificate and key.
    pub fn start_tls(root: &Path, cert: &Path, key: &Path) -> Self {
        Self::start_with(root, Some((cert, key)))
    }

    fn start_with(root: &Path, tls: Option<(&Path, &Path)>) -> Self {
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().map(PathBuf::from).find(|p| p.exists()).unwrap_or_else(|| {
            panic!("nginx is not installed: run `cargo xtask test` (installs it) or `apt-get install -y nginx-light`")
        });
        let dir = tempfile::tempdir().unwrap();
        // Written for each port tried (see `spawn_listening`).
        let conf = |port: &str| {
            let conf = format!(
                "daemon off; master_process off; pid {d}/nginx.pid; error_log {d}/error.log;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};\n\
                 uwsgi_temp_path {d}; scgi_temp_path {d}; sendfile on; keepalive_requests 10000;\n\
                 server {{ listen 127.0.0.1:{port}{ssl}; root {root}; {certs} }} }}\n",
                d = dir.path().display(),
                root = root.display(),
                ssl = if tls.is_some() { " ssl" } else { "" },
                certs = tls.map_or(String::new(), |(cert, key)| format!(
                    "ssl_certificate {}; ssl_certificate_key {};",
                    cert.display(),
                    key.display()
                )),
            );
            std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
            // One process, no workers (master_process off): killing it stops
            // everything, and no orphan keeps the test's output pipes open.
            [
                "-c",
                &dir.path().join("nginx.conf").to_string_lossy(),
                "-p",
                &dir.path().to_string_lossy(),
            ]
            .map(String::from)
            .to_vec()
        };
        let (child, port) = spawn_listening(&nginx, conf);
        Self {
            port,
            tls: tls.is_some(),
            child,
            _dir: dir,
        }
    }

    pub fn url(&self, name: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "server on port {port} did not start"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// What the proxy does to a connection.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Pass everything.
    None,
    /// Reset the first `n` connections after `bytes` bytes from upstream.
    ResetAfter { bytes: usize, connections: usize },
    /// Close the first `connections` connections after a few bytes of the response header.
    CloseMidHeader { connections: usize },
    /// Answer `503 Slow Down` on the first `connections` connections.
    Unavailable { connections: usize },
    /// Answer `403 Forbidden` on every connection, counting them.
    Forbidden,
    /// Hold the first `connections` connections open without a byte for `stall`.
    Stall { connections: usize, stall: Duration },
}

/// A TCP proxy from a loopback port to `upstream`, injecting `fault`.
pub struct FaultProxy {
    pub port: u16,
    pub connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    pub fn start(upstream: u16, fault: Fault) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (connections.clone(), stop.clone());
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Ok((client, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(2));
                    continue;
                };
                let n = c.fetch_add(1, Ordering::SeqCst);
                thread::spawn(move || relay(client, upstream, fault, n));
            }
        });
        Self {
            port,
            connections,
            stop,
        }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn relay(mut client: TcpStream, upstream: u16, fault: Fault, n: usize) {
    client.set_nonblocking(false).ok();
    match fault {
        Fault::Unavailable { connections } if n < connections => {
            let mut request = [0u8; 4096];
            let _ = client.set_read_timeout(Some(Duration::from_millis(200)));
            let _ = client.read(&mut request);
            let body = "<Error><Code>SlowDown</Code><Message>injected</Message></Error>";
            let _ = write!(
                client,
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            return;
        }
        Fault::Forbidden => {
            let mut request = [0u8; 4096];
            let _ = client.set_read_timeout(Some(Duration::from_millis(200)));
            let _ = client.read(&mut request);
            let body = r#"{"error":{"code":403,"message":"injected: permission denied"}}"#;
            let _ = write!(
                client,
                "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            return;
        }
        Fault::Stall { connections, stall } if n < connections => {
            thread::sleep(stall);
            return;
        }
        _ => {}
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    thread::spawn(move || {
        let _ = std::io::copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(Shutdown::Write);
    });
    let limit = match fault {
        Fault::ResetAfter { bytes, connections } if n < connections => Some(bytes),
        Fault::CloseMidHeader { connections } if n < connections => Some(7),
        _ => None,
    };
    let (mut s_read, mut c_write) = (server, client);
    let mut sent = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let k = match s_read.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => k,
        };
        let k = limit.map_or(k, |l| k.min(l - sent));
        if c_write.write_all(&buf[..k]).is_err() {
            break;
        }
        sent += k;
        if limit.is_some_and(|l| sent >= l) {
            let _ = c_write.shutdown(Shutdown::Both);
            let _ = s_read.shutdown(Shutdown::Both);
            return;
        }
    }
    let _ = c_write.shutdown(Shutdown::Write);
}

/// Kills the child when dropped.
pub struct Process {
    pub port: u16,
    child: Child,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `program` with `args(port)` listening on a fresh loopback port it is
/// the one listening on (see `emulators::listening_child`); at most
/// `PORT_ATTEMPTS` ports.
fn spawn_listening(program: &Path, args: impl Fn(&str) -> Vec<String>) -> (Child, u16) {
    for _ in 0..emulators::PORT_ATTEMPTS {
        let port = free_port();
        let args = args(&port.to_string());
        let mut child = spawn_quiet(
            program,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        if emulators::listening_child(&mut child, port) {
            return (child, port);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!(
        "{} did not start on any of {} fresh ports",
        program.display(),
        emulators::PORT_ATTEMPTS
    )
}

fn spawn_quiet(program: &Path, args: &[&str]) -> Child {
    Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()))
}

fn find_tool(env: &str, candidates: &[PathBuf], install: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env).map(PathBuf::from) {
        return p;
    }
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| panic!("{install} (or set {env}); `cargo xtask test` installs it"))
}

fn home() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
}

/// Where `cargo install` puts binaries: `$CARGO_HOME/bin`, else
/// `~/.cargo/bin` (the rule `scripts/setup_servers.sh` installs by).
fn cargo_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cargo"))
        .join("bin")
}

/// A raw HTTP/1.1 request; returns status and body.
pub fn http_request(port: u16, method: &str, path: &str) -> (u16, String) {
    emulators::http_request_body(port, method, path, &[], "")
}

/// moto's S3 server (does not check signatures), with a bucket.
pub fn moto(bucket: &str) -> Process {
    let mut candidates = vec![home().join(".cache/tensorizer-oracle/bin/moto_server")];
    if let Some(py) = std::env::var_os("TENSORIZER_ORACLE_PYTHON") {
        candidates.insert(0, Path::new(&py).with_file_name("moto_server"));
    }
    let program = find_tool(
        "TENSORIZER_MOTO_SERVER",
        &candidates,
        "moto is not installed: pip install 'moto[server]==5.2.5' into the oracle venv",
    );
    let (child, port) = spawn_listening(&program, |port| {
        ["-H", "127.0.0.1", "-p", port].map(String::from).to_vec()
    });
    let server = Process {
        port,
        child,
        _dir: None,
    };
    let (status, body) = http_request(port, "PUT", &format!("/{bucket}"));
    assert_eq!(status, 200, "creating bucket {bucket} on moto: {body}");
    server
}

/// s3s-fs: an S3 server over a directory that checks SigV4 signatures.
pub fn s3s_fs(bucket: &str, access_key: &str, secret_key: &str) -> Process {
    let program = find_tool(
        "TENSORIZER_S3S_FS",
        &[cargo_bin().join("s3s-fs")],
        "s3s-fs is not installed: cargo install s3s-fs@0.14.1 --features binary --locked",
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(bucket)).unwrap();
    let (child, port) = spawn_listening(&program, |port| {
        [
            "--host",
            "127.0.0.1",
            "--port",
            port,
            "--access-key",
            access_key,
            "--secret-key",
            secret_key,
            &dir.path().to_string_lossy(),
        ]
        .map(String::from)
        .to_vec()
    });
    Process {
        port,
        child,
        _dir: Some(dir),
    }
}

/// redis-server without persistence.
pub fn redis_server() -> Process {
    redis_server_with(&[])
}

/// redis-server with extra arguments (`--requirepass`, ...).
pub fn redis_server_with(extra: &[&str]) -> Process {
    let program = find_tool(
        "TENSORIZER_REDIS_SERVER",
        &[
            PathBuf::from("/usr/bin/redis-server"),
            PathBuf::from("/usr/local/bin/redis-server"),
        ],
        "redis-server is not installed: apt-get install -y redis-server",
    );
    let dir = tempfile::tempdir().unwrap();
    let (child, port) = spawn_listening(&program, |port| {
        [
            "--port",
            port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir.path().to_string_lossy(),
        ]
        .iter()
        .chain(extra)
        .map(|a| a.to_string())
        .collect()
    });
    Process {
        port,
        child,
        _dir: Some(dir),
    }
}

#[path = "emulators.rs"]
mod emulators;
pub use emulators::Emulator;

/// fake-gcs-server (GCS JSON and XML APIs, no authentication) over plain
/// HTTP, with a bucket.
pub fn fake_gcs(bucket: &str) -> Emulator {
    emulators::fake_gcs(bucket).unwrap_or_else(|e| panic!("{e}"))
}

/// Azurite's blob service, in memory, with a container.
pub fn azurite(container: &str) -> Emulator {
    emulators::azurite(container).unwrap_or_else(|e| panic!("{e}"))
}
