//! HTTP(S) objects read with `Range` requests over pooled keep-alive
//! connections; many threads may read at once.
//!
//! A broken body is resumed from the last byte received; connection errors,
//! 5xx and 429 are retried with backoff; other 4xx fail at once. A server
//! that ignores `Range` is detected (never mis-read) and its body streamed
//! once, in order, each read continuing where the last stopped (a read
//! behind the stream starts it again), with a warning: reading it range by
//! range would download the object once per read.

use std::sync::Mutex;
use std::time::Instant;

use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, RANGE};
use reqwest::{Client, Response, StatusCode};
use tokio::sync::mpsc::Receiver;

use crate::error::{IoError, Result};
use crate::runtime::{block, runtime};
use crate::{RangeSource, ReadHints, RetryPolicy};

/// An object behind an `http://` or `https://` URL.
pub struct HttpSource {
    /// The URL, credentials and query redacted: what messages show.
    uri: String,
    /// The URL requests go to.
    url: String,
    /// For a server that ignores `Range`: the one body being read, and how
    /// many GETs were made for it.
    sequential: Mutex<Sequential>,
    client: Client,
    len: u64,
    ranges: bool,
    policy: RetryPolicy,
}

/// The whole-object body of a server that ignores `Range`, read in order.
#[derive(Default)]
struct Sequential {
    body: Option<Receiver<std::result::Result<bytes::Bytes, Failure>>>,
    /// Offset of the next byte the body yields.
    at: u64,
    /// Bytes received but not yet handed out.
    pending: bytes::Bytes,
    gets: u64,
}

/// The URL with credentials and query redacted.
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
        let shown = crate::uri::redact(uri);
        let client =
            crate::net::client_builder(&policy)
                .build()
                .map_err(|e| IoError::Protocol {
                    uri: shown.clone(),
                    message: format!("cannot build an HTTP client: {e}"),
                })?;
        let mut me = Self {
            uri: shown,
            url: uri.to_owned(),
            sequential: Mutex::default(),
            client,
            len: 0,
            ranges: true,
            policy,
        };
        let started = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            match me.probe() {
                Ok(()) => return Ok(me),
                Err(f) if f.retryable && me.policy.may_retry(attempts, started) => {
                    std::thread::sleep(me.policy.backoff(attempts));
                }
                Err(f) => return Err(me.remote_error(0, 1, f, attempts)),
            }
        }
    }

    fn probe(&mut self) -> Result<(), Failure> {
        let request = self.client.get(&self.url).header(RANGE, "bytes=0-0");
        let resp = block(async move { request.send().await }, &self.uri)
            .map_err(|e| Failure::protocol(e.to_string()))?
            .map_err(Failure::transport)?;
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
                tracing::warn!(uri = %self.uri, "server ignores Range requests: streaming the object once, in order");
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
    pub fn whole_object_requests(&self) -> u64 {
        self.sequential.lock().map_or(0, |s| s.gets)
    }

    /// Starts streaming the whole object (status checked) into a channel.
    fn start_body(
        &self,
    ) -> std::result::Result<Receiver<std::result::Result<bytes::Bytes, Failure>>, Failure> {
        let request = self.client.get(&self.url);
        let (tx, rx) = tokio::sync::mpsc::channel::<std::result::Result<bytes::Bytes, Failure>>(64);
        let runtime = runtime().map_err(|e| Failure::protocol(e.to_string()))?;
        runtime.spawn(async move {
            let mut resp = match request.send().await {
                Ok(r) if r.status() == StatusCode::OK => r,
                Ok(r) => {
                    let _ = tx.send(Err(Failure::status(r.status()))).await;
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(Failure::transport(e))).await;
                    return;
                }
            };
            loop {
                match resp.chunk().await {
                    Ok(Some(c)) => {
                        if tx.send(Ok(c)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(Failure::transport(e))).await;
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    /// `start..start + dst.len()` from the in-order body, restarting it
    /// when the read lies behind it. Returns the bytes delivered.
    fn fetch_sequential(&self, start: u64, dst: &mut [u8]) -> (usize, Option<Failure>) {
        let mut s = self.sequential.lock().unwrap_or_else(|e| e.into_inner());
        if s.body.is_none() || s.at > start {
            match self.start_body() {
                Ok(rx) => {
                    s.body = Some(rx);
                    s.at = 0;
                    s.pending = bytes::Bytes::new();
                    s.gets += 1;
                }
                Err(f) => return (0, Some(f)),
            }
        }
        let mut got = 0;
        while got < dst.len() {
            if s.pending.is_empty() {
                let Some(rx) = s.body.as_mut() else {
                    return (got, Some(Failure::transport("no body")));
                };
                match crate::runtime::wait_on(rx.recv()) {
                    Some(Ok(chunk)) => s.pending = chunk,
                    Some(Err(f)) => {
                        s.body = None;
                        return (got, Some(f));
                    }
                    None => {
                        s.body = None;
                        let msg = format!("the body ended at byte {}", s.at);
                        return (got, Some(Failure::transport(msg)));
                    }
                }
            }
            let want = start + got as u64;
            // Skip what lies before the read, then copy.
            let skip = (want - s.at).min(s.pending.len() as u64) as usize;
            if skip > 0 {
                s.pending = s.pending.slice(skip..);
                s.at += skip as u64;
                continue;
            }
            let n = s.pending.len().min(dst.len() - got);
            dst[got..got + n].copy_from_slice(&s.pending[..n]);
            s.pending = s.pending.slice(n..);
            s.at += n as u64;
            got += n;
        }
        (got, None)
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
    fn fetch(&self, start: u64, dst: &mut [u8]) -> (usize, Option<Failure>) {
        if !self.ranges {
            return self.fetch_sequential(start, dst);
        }
        let end = start + dst.len() as u64;
        let request = self
            .client
            .get(&self.url)
            .header(RANGE, format!("bytes={start}-{}", end - 1));
        let ranges = self.ranges;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, Failure>>(64);
        let runtime = match runtime() {
            Ok(r) => r,
            Err(e) => return (0, Some(Failure::protocol(e.to_string()))),
        };
        runtime.spawn(async move {
            let resp = match request.send().await {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(Failure::transport(e))).await;
                    return;
                }
            };
            let mut resp = match check_response(resp, ranges, start, end) {
                Ok(r) => r,
                Err(f) => {
                    let _ = tx.send(Err(f)).await;
                    return;
                }
            };
            // A server that ignores Range sends everything: skip to `start`.
            let mut skip = if ranges { 0 } else { start };
            loop {
                let chunk = match resp.chunk().await {
                    Ok(Some(c)) => c,
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(Failure::transport(e))).await;
                        return;
                    }
                };
                let chunk = if skip > 0 {
                    let n = skip.min(chunk.len() as u64);
                    skip -= n;
                    chunk.slice(n as usize..)
                } else {
                    chunk
                };
                if !chunk.is_empty() && tx.send(Ok(chunk)).await.is_err() {
                    return; // the reader has what it needs
                }
            }
        });
        let mut got = 0;
        while got < dst.len() {
            match crate::runtime::wait_on(rx.recv()) {
                Some(Ok(chunk)) => {
                    let n = chunk.len().min(dst.len() - got);
                    dst[got..got + n].copy_from_slice(&chunk[..n]);
                    got += n;
                }
                Some(Err(f)) if got > 0 => {
                    let msg = format!("after {got} of {} bytes: {}", dst.len(), f.message);
                    return (got, Some(Failure { message: msg, ..f }));
                }
                Some(Err(f)) => return (0, Some(f)),
                None => {
                    let msg = format!("connection closed after {got} of {} bytes", dst.len());
                    return (got, Some(Failure::transport(msg)));
                }
            }
        }
        (got, None)
    }
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
            let (got, failure) = self.fetch(offset + done as u64, &mut buf[done..]);
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

    fn hints(&self) -> ReadHints {
        if self.ranges {
            ReadHints {
                request_size: 16 << 20,
                concurrency: 16,
                block_size: 16 << 20,
            }
        } else {
            ReadHints {
                request_size: usize::MAX,
                concurrency: 1,
                block_size: usize::MAX,
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
