//! HTTP(S) objects read with `Range` requests over pooled keep-alive
//! connections; many threads may read at once.
//!
//! A broken body is resumed from the last byte received; connection errors,
//! 5xx and 429 are retried with backoff; other 4xx fail at once. A server
//! that ignores `Range` is detected (never mis-read) and its body is
//! downloaded once, in order, into an unnamed temporary file that every
//! read is then served from (with a warning): reading it range by range
//! would download the object once per read.

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, RANGE};
use reqwest::{Client, Response, StatusCode};

use crate::error::{IoError, Result};
use crate::runtime::{block, runtime};
use crate::{RangeSource, ReadHints, RetryPolicy};

/// The total timeout of a request for a whole body: none to speak of (an
/// object takes as long as it takes); stalls end it instead.
const WHOLE_BODY_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// An object behind an `http://` or `https://` URL.
pub struct HttpSource {
    uri: String,
    url: String,
    /// The body of a server that ignores `Range`, spooled once.
    spool: OnceLock<std::result::Result<Arc<Spool>, String>>,
    client: Client,
    len: u64,
    ranges: bool,
    policy: RetryPolicy,
}

/// A Range-ignoring server's body, written in order into an unnamed
/// temporary file by one thread while readers wait for the bytes they need.
struct Spool {
    file: std::fs::File,
    state: Mutex<SpoolState>,
    arrived: Condvar,
    /// Set when the source is dropped: the download stops.
    stop: AtomicBool,
    gets: AtomicU64,
}

impl Spool {
    /// Changes the state and wakes every waiting reader.
    fn update(&self, change: impl FnOnce(&mut SpoolState)) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut state);
        self.arrived.notify_all();
    }
}

#[derive(Default)]
struct SpoolState {
    /// Bytes `0..written` are in the file.
    written: u64,
    /// Why the download ended early; `None` while it runs or once whole.
    failed: Option<String>,
    /// The download ended (whole or failed).
    ended: bool,
}

impl std::fmt::Debug for HttpSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSource")
            .field("uri", &crate::uri::redact(&self.uri))
            .field("len", &self.len)
            .field("ranges", &self.ranges)
            .finish_non_exhaustive()
    }
}

/// One failed attempt.
#[derive(Debug)]
struct Failure {
    message: String,
    status: Option<u16>,
    retryable: bool,
}

impl Failure {
    fn transport(e: impl std::fmt::Display) -> Self {
        Self {
            message: e.to_string(),
            status: None,
            retryable: true,
        }
    }

    /// A client error with its causes (reqwest's own message says only
    /// "error sending request"); a certificate the client refuses is not
    /// retried, it will be refused again.
    fn request(e: reqwest::Error) -> Self {
        let mut message = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            message = format!("{message}: {c}");
            cause = c.source();
        }
        let tls = message.to_lowercase().contains("certificate");
        Self {
            message: if tls {
                format!("{message} (a private CA? trust it with --ca-file or CAInfo(cacert=...))")
            } else {
                message
            },
            status: None,
            retryable: !tls,
        }
    }

    fn status(status: StatusCode) -> Self {
        let code = status.as_u16();
        let hint = match code {
            401 | 403 => " (access denied: check credentials)",
            404 => " (no such object)",
            _ => "",
        };
        Self {
            message: format!("HTTP {status}{hint}"),
            status: Some(code),
            retryable: status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS,
        }
    }

    fn protocol(message: String) -> Self {
        Self {
            message,
            status: None,
            retryable: false,
        }
    }
}

impl HttpSource {
    /// Opens `uri`: one ranged request learns the size and whether the
    /// server honours `Range`.
    pub fn open(uri: &str, policy: RetryPolicy) -> Result<Self> {
        Self::open_with(uri, policy, &crate::TrustOptions::default())
    }

    /// [`HttpSource::open`], trusting `trust`'s CA certificates too.
    pub fn open_with(uri: &str, policy: RetryPolicy, trust: &crate::TrustOptions) -> Result<Self> {
        let shown = crate::uri::redact(uri);
        // One client per policy and trust for the process: a checkpoint's
        // shards (and a vLLM rank's files) reuse its warm connections.
        let trust = trust.for_url(uri);
        let client = crate::net::cached(format!("http|{policy:?}|{trust:?}"), || {
            crate::net::client_builder(&policy, &trust)?
                .build()
                .map_err(|e| IoError::Protocol {
                    uri: shown.clone(),
                    message: format!("cannot build an HTTP client: {e}"),
                })
        })?;
        let mut me = Self {
            uri: shown,
            url: uri.to_owned(),
            spool: OnceLock::new(),
            client,
            len: 0,
            ranges: true,
            policy,
        };
        let started = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            match me.probe(attempts > 1) {
                Ok(()) => return Ok(me),
                Err(f) if f.retryable && me.policy.may_retry(attempts, started) => {
                    std::thread::sleep(me.policy.backoff(attempts));
                }
                Err(f) => return Err(me.remote_error(0, 1, f, attempts)),
            }
        }
    }

    /// `fresh`: on a connection of its own (see [`fresh_connection`]).
    fn probe(&mut self, fresh: bool) -> Result<(), Failure> {
        // A server that ignores Range answers with the whole body, which
        // becomes the spool: no total timeout on it, only one on the wait
        // for the answer (and, while spooling, on each stall).
        let request = self
            .client
            .get(&self.url)
            .header(RANGE, "bytes=0-0")
            .timeout(WHOLE_BODY_TIMEOUT);
        let request = fresh_connection(request, fresh);
        let stall = self.policy.request_timeout;
        let resp = block(
            async move { tokio::time::timeout(stall, request.send()).await },
            &self.uri,
        )
        .map_err(|e| Failure::protocol(e.to_string()))?
        .map_err(|_| Failure::transport("no answer within the request timeout"))?
        .map_err(Failure::request)?;
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => {
                let (_, _, total) = content_range(&resp).map_err(Failure::protocol)?;
                self.len = total;
                self.ranges = true;
            }
            StatusCode::OK => {
                self.len = header_u64(&resp, CONTENT_LENGTH).ok_or_else(|| {
                    Failure::protocol("server ignores Range and sends no Content-Length".into())
                })?;
                self.ranges = false;
                // The answer is the whole body: it becomes the spool, so the
                // object is downloaded exactly once.
                let spool = self.start_spool(Some(resp));
                self.spool = OnceLock::from(spool);
                tracing::warn!(uri = %self.uri, "server ignores Range requests: downloading the object once, in order, into an unnamed temporary file (in TMPDIR) that reads are served from");
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                // An empty object: "Content-Range: bytes */0".
                self.len = 0;
            }
            other => return Err(Failure::status(other)),
        }
        Ok(())
    }

    /// True when the server honours `Range` requests.
    pub fn supports_ranges(&self) -> bool {
        self.ranges
    }

    /// GETs of the whole object made so far for a server that ignores
    /// `Range` (one, plus one per read behind the stream).
    /// GETs of the whole object made for a server that ignores `Range`.
    pub fn whole_object_requests(&self) -> u64 {
        match self.spool.get() {
            Some(Ok(spool)) => spool.gets.load(Ordering::Relaxed),
            _ => 0,
        }
    }

    /// The spool (started by the probe, or by the first read).
    fn spool(&self) -> std::result::Result<&Arc<Spool>, Failure> {
        self.spool
            .get_or_init(|| self.start_spool(None))
            .as_ref()
            .map_err(|e| Failure::protocol(e.clone()))
    }

    /// Starts downloading the body into an unnamed temporary file, from
    /// `first` (a 200 answer already received) or a new GET.
    fn start_spool(&self, first: Option<Response>) -> std::result::Result<Arc<Spool>, String> {
        let file = tempfile::tempfile()
            .map_err(|e| format!("cannot create a temporary file to spool into: {e}"))?;
        let spool = Arc::new(Spool {
            file,
            state: Mutex::default(),
            arrived: Condvar::new(),
            stop: AtomicBool::new(false),
            gets: AtomicU64::new(u64::from(first.is_some())),
        });
        let (client, url, len, policy) = (
            self.client.clone(),
            self.url.clone(),
            self.len,
            self.policy.clone(),
        );
        let worker = spool.clone();
        std::thread::Builder::new()
            .name("tensorizer-spool".into())
            .spawn(move || download(&worker, first, &client, &url, len, &policy))
            .map_err(|e| format!("cannot start the spooling thread: {e}"))?;
        Ok(spool)
    }

    /// Bytes `start..start + dst.len()` from the spool, once they are in.
    fn fetch_spooled(&self, start: u64, dst: &mut [u8]) -> (usize, Option<Failure>) {
        let spool = match self.spool() {
            Ok(s) => s,
            Err(f) => return (0, Some(f)),
        };
        let end = start + dst.len() as u64;
        let mut state = spool.state.lock().unwrap_or_else(|e| e.into_inner());
        // The downloader ends (whole, failed, or stalled past the request
        // timeout), so this wait ends.
        while state.written < end && !state.ended {
            state = spool.arrived.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        if state.written < end {
            let why = state.failed.clone().unwrap_or_default();
            let message = format!(
                "the body ended at byte {} of the {} the server announced{}",
                state.written,
                self.len,
                if why.is_empty() {
                    String::new()
                } else {
                    format!(": {why}")
                }
            );
            // The downloader already retried.
            return (0, Some(Failure::protocol(message)));
        }
        drop(state);
        match spool.file.read_exact_at(dst, start) {
            Ok(()) => (dst.len(), None),
            Err(e) => (
                0,
                Some(Failure::protocol(format!("reading the spooled body: {e}"))),
            ),
        }
    }

    fn remote_error(&self, start: u64, end: u64, f: Failure, attempts: u32) -> IoError {
        IoError::Remote {
            uri: self.uri.clone(),
            start,
            end,
            message: f.message,
            attempts,
            status: f.status,
        }
    }

    /// One request for `dst.len()` bytes at `start`; returns how many bytes
    /// arrived (all of them, or fewer with the failure that cut it short).
    /// One GET of `start..start + dst.len()`: the request runs on the I/O
    /// runtime and its body arrives chunk by chunk on a channel, copied
    /// into `dst` here. Returns the bytes received before any failure.
    fn fetch(&self, start: u64, dst: &mut [u8], fresh: bool) -> (usize, Option<Failure>) {
        if !self.ranges {
            return self.fetch_spooled(start, dst);
        }
        let mut got = 0;
        let failure = self.fetch_range(start, dst.len(), fresh, |bytes| {
            dst[got..got + bytes.len()].copy_from_slice(bytes);
            got += bytes.len();
            Ok(())
        });
        (got, failure)
    }

    /// One ranged GET of `len` bytes at `start`, its body handed to `put`
    /// as it arrives (never more than `len` bytes); `None` when all came.
    fn fetch_range(
        &self,
        start: u64,
        len: usize,
        fresh: bool,
        mut put: impl FnMut(&[u8]) -> std::result::Result<(), Failure>,
    ) -> Option<Failure> {
        let end = start + len as u64;
        let request = self
            .client
            .get(&self.url)
            .header(RANGE, format!("bytes={start}-{}", end - 1));
        let request = fresh_connection(request, fresh);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, Failure>>(64);
        let runtime = match runtime() {
            Ok(r) => r,
            Err(e) => return Some(Failure::protocol(e.to_string())),
        };
        runtime.spawn(async move {
            let resp = match request.send().await {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(Failure::request(e))).await;
                    return;
                }
            };
            let mut resp = match check_response(resp, true, start, end) {
                Ok(r) => r,
                Err(f) => {
                    let _ = tx.send(Err(f)).await;
                    return;
                }
            };
            loop {
                let chunk = match resp.chunk().await {
                    Ok(Some(c)) => c,
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(Failure::request(e))).await;
                        return;
                    }
                };
                if !chunk.is_empty() && tx.send(Ok(chunk)).await.is_err() {
                    return; // the reader has what it needs
                }
            }
        });
        let mut got = 0;
        while got < len {
            match crate::runtime::wait_on(rx.recv()) {
                Some(Ok(chunk)) => {
                    let n = chunk.len().min(len - got);
                    if let Err(f) = put(&chunk[..n]) {
                        return Some(f);
                    }
                    got += n;
                }
                Some(Err(f)) if got > 0 => {
                    let msg = format!("after {got} of {len} bytes: {}", f.message);
                    return Some(Failure { message: msg, ..f });
                }
                Some(Err(f)) => return Some(f),
                None => {
                    let msg = format!("connection closed after {got} of {len} bytes");
                    return Some(Failure::transport(msg));
                }
            }
        }
        None
    }
}

/// A retry asks for a connection of its own (`Connection: close`): a
/// server that closes connections after each answer without saying so
/// makes a pooled connection fail when it is reused (a redirect within the
/// origin reuses the connection of the 3xx), and every attempt would race
/// the same way.
fn fresh_connection(request: reqwest::RequestBuilder, fresh: bool) -> reqwest::RequestBuilder {
    if fresh {
        request.header(reqwest::header::CONNECTION, "close")
    } else {
        request
    }
}

impl Drop for HttpSource {
    fn drop(&mut self) {
        if let Some(Ok(spool)) = self.spool.get() {
            spool.stop.store(true, Ordering::Relaxed);
        }
    }
}

/// Downloads the whole object into `spool`, in order. A broken or stalled
/// body is fetched again (the server cannot resume), skipping what is
/// already in; retries follow `policy`, counted afresh after progress. Each
/// chunk must come within the request timeout, so a stalled server ends it.
fn download(
    spool: &Spool,
    mut first: Option<Response>,
    client: &Client,
    url: &str,
    len: u64,
    policy: &RetryPolicy,
) {
    let mut attempts = 0;
    let mut started = Instant::now();
    loop {
        attempts += 1;
        let answer = first.take();
        if answer.is_none() {
            spool.gets.fetch_add(1, Ordering::Relaxed);
        }
        let before = spool.state.lock().map_or(0, |s| s.written);
        let outcome = download_once(spool, answer, client, url, len, policy.request_timeout);
        let written = spool.state.lock().map_or(0, |s| s.written);
        let failure = match outcome {
            Ok(()) => {
                spool.update(|s| s.ended = true);
                return;
            }
            Err(f) => f,
        };
        if written > before {
            attempts = 1;
            started = Instant::now();
        }
        if spool.stop.load(Ordering::Relaxed)
            || !(failure.retryable && policy.may_retry(attempts, started))
        {
            spool.update(|s| {
                s.failed = Some(failure.message.clone());
                s.ended = true;
            });
            return;
        }
        std::thread::sleep(policy.backoff(attempts));
    }
}

fn download_once(
    spool: &Spool,
    answer: Option<Response>,
    client: &Client,
    url: &str,
    len: u64,
    stall: Duration,
) -> std::result::Result<(), Failure> {
    // One request may take as long as the object needs; a stall may not.
    let request = client.get(url).timeout(WHOLE_BODY_TIMEOUT);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, Failure>>(64);
    runtime()
        .map_err(|e| Failure::protocol(e.to_string()))?
        .spawn(async move {
            let sent = match answer {
                Some(r) => Ok(Ok(r)),
                None => tokio::time::timeout(stall, request.send()).await,
            };
            let resp = match sent {
                Ok(Ok(r)) if r.status() == StatusCode::OK => r,
                Ok(Ok(r)) => {
                    let _ = tx.send(Err(Failure::status(r.status()))).await;
                    return;
                }
                Ok(Err(e)) => {
                    let _ = tx.send(Err(Failure::request(e))).await;
                    return;
                }
                Err(_) => {
                    let _ = tx
                        .send(Err(Failure::transport(
                            "no answer within the request timeout",
                        )))
                        .await;
                    return;
                }
            };
            let mut resp = resp;
            loop {
                let chunk = match tokio::time::timeout(stall, resp.chunk()).await {
                    Ok(Ok(Some(c))) => Ok(c),
                    Ok(Ok(None)) => return,
                    Ok(Err(e)) => Err(Failure::request(e)),
                    Err(_) => Err(Failure::transport(format!(
                        "no byte for {} s (stalled)",
                        stall.as_secs_f64()
                    ))),
                };
                let failed = chunk.is_err();
                if tx.send(chunk).await.is_err() || failed {
                    return;
                }
            }
        });
    let mut at = 0u64;
    while at < len {
        if spool.stop.load(Ordering::Relaxed) {
            return Err(Failure::protocol("the source was closed".into()));
        }
        let chunk = match crate::runtime::wait_on(rx.recv()) {
            Some(Ok(c)) => c,
            Some(Err(f)) => return Err(f),
            None => {
                return Err(Failure::transport(format!(
                    "the body ended at byte {at} of {len}"
                )));
            }
        };
        let written = spool.state.lock().map_or(0, |s| s.written);
        // Bytes past the announced length are not the object's.
        let chunk = &chunk[..chunk.len().min((len - at) as usize)];
        let (chunk_start, chunk_end) = (at, at + chunk.len() as u64);
        at = chunk_end;
        if chunk_end <= written {
            continue; // already in, from an earlier attempt
        }
        let skip = written.saturating_sub(chunk_start) as usize;
        spool
            .file
            .write_all_at(&chunk[skip..], chunk_start + skip as u64)
            .map_err(|e| Failure::protocol(format!("spooling to a temporary file: {e}")))?;
        spool.update(|s| s.written = chunk_end);
    }
    Ok(())
}

/// Checks a response's status and `Content-Range` against the request.
fn check_response(resp: Response, ranges: bool, start: u64, end: u64) -> Result<Response, Failure> {
    let status = resp.status();
    if !ranges {
        return if status == StatusCode::OK {
            Ok(resp)
        } else {
            Err(Failure::status(status))
        };
    }
    if status != StatusCode::PARTIAL_CONTENT {
        return Err(if status == StatusCode::OK {
            Failure::protocol(
                "server ignored the Range header (answered 200 with the whole object)".into(),
            )
        } else {
            Failure::status(status)
        });
    }
    match content_range(&resp) {
        Ok((a, b, _)) if a == start && b == end - 1 => Ok(resp),
        Ok((a, b, _)) => Err(Failure::protocol(format!(
            "asked for bytes {start}-{}, server sent {a}-{b}",
            end - 1
        ))),
        Err(msg) => Err(Failure::protocol(msg)),
    }
}

impl RangeSource for HttpSource {
    fn uri(&self) -> &str {
        &self.uri
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(offset, buf.len())?;
        let started = Instant::now();
        let mut done = 0;
        let mut attempts = 0;
        while done < buf.len() {
            attempts += 1;
            let (got, failure) = self.fetch(offset + done as u64, &mut buf[done..], attempts > 1);
            // Resume after whatever arrived.
            done += got;
            let Some(f) = failure else { continue };
            if !(f.retryable && self.policy.may_retry(attempts, started)) {
                return Err(self.remote_error(offset, offset + buf.len() as u64, f, attempts));
            }
            tracing::debug!(uri = %self.uri, attempt = attempts, error = %f.message, "retrying");
            std::thread::sleep(self.policy.backoff(attempts));
        }
        Ok(())
    }

    /// One request, its buffer growing as the body arrives (the size asked
    /// for may come from a hostile index, and costs nothing until sent).
    fn read_range(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let n = self.check_range(offset, usize::try_from(len).unwrap_or(usize::MAX))?;
        if !self.ranges {
            // Served from the spool, a local file.
            return crate::read_range_growing(self, offset, n);
        }
        let started = Instant::now();
        let mut buf = Vec::new();
        let mut attempts = 0;
        while buf.len() < n {
            attempts += 1;
            let at = offset + buf.len() as u64;
            let failure = self.fetch_range(at, n - buf.len(), attempts > 1, |bytes| {
                crate::append_arrived(&mut buf, bytes, &self.uri)
                    .map_err(|e| Failure::protocol(e.to_string()))
            });
            let Some(f) = failure else { continue };
            if !(f.retryable && self.policy.may_retry(attempts, started)) {
                return Err(self.remote_error(offset, offset + n as u64, f, attempts));
            }
            std::thread::sleep(self.policy.backoff(attempts));
        }
        Ok(buf)
    }

    fn hints(&self) -> ReadHints {
        if self.ranges {
            ReadHints {
                request_size: 16 << 20,
                concurrency: 16,
                block_size: 16 << 20,
            }
        } else {
            // Reads come from the spool: a local file, read by as many
            // threads as the machine has, while the download goes on.
            ReadHints {
                request_size: 8 << 20,
                concurrency: 1,
                block_size: 1 << 20,
            }
        }
    }
}

fn header_u64(resp: &Response, name: reqwest::header::HeaderName) -> Option<u64> {
    resp.headers().get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Parses `Content-Range: bytes A-B/TOTAL`.
fn content_range(resp: &Response) -> std::result::Result<(u64, u64, u64), String> {
    let raw = resp
        .headers()
        .get(CONTENT_RANGE)
        .ok_or("206 response without Content-Range")?
        .to_str()
        .map_err(|_| "unreadable Content-Range")?;
    let parse = || -> Option<(u64, u64, u64)> {
        let rest = raw.strip_prefix("bytes ")?;
        let (range, total) = rest.split_once('/')?;
        let (a, b) = range.split_once('-')?;
        Some((
            a.trim().parse().ok()?,
            b.trim().parse().ok()?,
            total.trim().parse().ok()?,
        ))
    };
    parse().ok_or_else(|| format!("malformed Content-Range {raw:?}"))
}
