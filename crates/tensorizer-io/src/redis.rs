//! Files stored in Redis with the Python library's key layout
//! (`TensorDeserializer.to_redis`, `RedisStreamFile`): each key holds the
//! bytes of the file starting at the offset after its last `:`.
//!
//! ```text
//! {prefix}:header:0                 magic, header, index   (bytes 0 .. 73 + metadata_len)
//! {prefix}:{name}:{header_offset}   a tensor's header
//! {prefix}:{name}:{data_offset}     its data
//! ```
//!
//! Reading lists `{prefix}:*`, sorts the keys by offset and serves any byte
//! range with `GETRANGE`s over a pool of connections. Writing stores every
//! key under a temporary prefix, then swaps the whole file in with one
//! `MULTI`/`EXEC` (old keys deleted, new ones renamed), so readers see the
//! old file or the new one, never a mix; an uncommitted sink deletes its
//! temporary keys, and a killed writer's expire after
//! [`STAGING_TTL_SECONDS`]. Data larger than [`MAX_VALUE`] is split into several
//! keys, which Python reads the same way (Redis refuses values over 512 MB).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Mutex, RwLock};
use std::time::Instant;

use redis::{Client, Connection, RedisError};

use crate::error::{IoError, Result};
use crate::{FileLayout, RangeSource, ReadHints, RetryPolicy, Segment, SegmentKind, Sink};

/// Largest value written to one key.
pub const MAX_VALUE: u64 = 256 << 20;
/// Staged keys of a write outlive it by at most this long if the writer is
/// killed before it commits or cleans up (a day: longer than any write).
pub const STAGING_TTL_SECONDS: u64 = 24 * 3600;
/// Largest `GETRANGE` answer asked for at once.
const MAX_GET: u64 = 16 << 20;
/// Most keys one prefix may hold (a 100 000-tensor model has 200 001).
const MAX_SCAN_KEYS: usize = 4_000_000;
/// Most `SCAN` round trips for one listing.
const MAX_SCAN_ROUNDS: usize = 100_000;
/// Largest `{prefix}:header:0` read to find an old file's keys.
const MAX_PROLOGUE: u64 = MAX_VALUE;

/// Where a Redis-stored file lives: the server (with its credentials, for
/// every connection) and the key prefix.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisAddress {
    /// `host:port`.
    pub host_port: String,
    /// `AUTH` user name (Redis 6 ACLs), if any.
    pub username: Option<String>,
    /// `AUTH` password, if any.
    pub password: Option<String>,
    /// The key prefix.
    pub prefix: String,
}

impl std::fmt::Debug for RedisAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAddress")
            .field("host_port", &self.host_port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisAddress {
    /// The redis-rs URL (database 0, credentials included).
    fn client_url(&self) -> String {
        let enc = |s: &str| crate::uri::percent_encode_userinfo(s);
        let auth = match (&self.username, &self.password) {
            (Some(u), Some(p)) => format!("{}:{}@", enc(u), enc(p)),
            (None, Some(p)) => format!(":{}@", enc(p)),
            (Some(u), None) => format!("{}@", enc(u)),
            (None, None) => String::new(),
        };
        format!("redis://{auth}{}/0", self.host_port)
    }
}

/// Parses `redis://[[user]:password@]host[:port]/prefix`.
pub fn parse_redis_uri(uri: &str) -> Result<RedisAddress> {
    let bad = |why: &str| IoError::Unsupported {
        uri: crate::uri::redact(uri),
        message: format!(
            "not a Redis URI ({why}); expected redis://[[user]:password@]host[:port]/prefix"
        ),
    };
    let rest = uri
        .split_once("://")
        .filter(|(s, _)| s.eq_ignore_ascii_case("redis"))
        .ok_or_else(|| bad("scheme is not redis"))?
        .1;
    let (authority, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = prefix.trim_start_matches('/');
    let (userinfo, authority) = match authority.rsplit_once('@') {
        Some((u, a)) => (Some(u), a),
        None => (None, authority),
    };
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    if prefix.is_empty() {
        return Err(bad("no key prefix"));
    }
    let dec = |s: &str| {
        crate::uri::percent_decode(s).ok_or_else(|| bad("bad %-escape in the credentials"))
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(u) => match u.split_once(':') {
            Some((user, pass)) => (Some(dec(user)?).filter(|u| !u.is_empty()), Some(dec(pass)?)),
            None => (Some(dec(u)?), None),
        },
    };
    let host_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        || authority.ends_with(']')
    {
        authority.to_owned()
    } else {
        format!("{authority}:6379")
    };
    Ok(RedisAddress {
        host_port,
        username,
        password,
        prefix: prefix.to_owned(),
    })
}

/// Escapes glob characters so `SCAN MATCH` takes the prefix literally.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Connections to one server, reused across threads.
struct Pool {
    /// The URI, credentials and query redacted (for messages).
    uri: String,
    client: Client,
    idle: Mutex<Vec<Connection>>,
    /// Where the plain connections of [`Pool::getrange_into`] go, and how
    /// they authenticate.
    address: RedisAddress,
    raw: Mutex<Vec<TcpStream>>,
    policy: RetryPolicy,
}

/// Why a `GETRANGE` read straight into a buffer failed.
enum RawError {
    /// The connection failed: retried on a new one.
    Io(std::io::Error),
    /// The server answered an error or a different length: not retried.
    Answer(String),
}

impl From<std::io::Error> for RawError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

impl Pool {
    fn new(uri: &str, address: &RedisAddress, policy: &RetryPolicy) -> Result<Self> {
        let uri = crate::uri::redact(uri);
        let client = Client::open(address.client_url()).map_err(|e| IoError::Unsupported {
            uri: uri.clone(),
            message: format!("bad Redis address: {e}"),
        })?;
        Ok(Self {
            uri,
            client,
            idle: Mutex::new(Vec::new()),
            address: address.clone(),
            raw: Mutex::new(Vec::new()),
            policy: policy.clone(),
        })
    }

    /// A plain connection, authenticated (and on database 0) like redis-rs's.
    fn raw_connect(&self) -> std::result::Result<TcpStream, RawError> {
        let mut last = None;
        for addr in self.address.host_port.to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, self.policy.connect_timeout) {
                Ok(mut con) => {
                    con.set_read_timeout(Some(self.policy.request_timeout))?;
                    con.set_write_timeout(Some(self.policy.request_timeout))?;
                    con.set_nodelay(true)?;
                    if let Some(password) = &self.address.password {
                        let mut auth: Vec<&[u8]> = vec![b"AUTH"];
                        if let Some(user) = &self.address.username {
                            auth.push(user.as_bytes());
                        }
                        auth.push(password.as_bytes());
                        raw_command(&mut con, &auth)?;
                    }
                    raw_command(&mut con, &[b"SELECT", b"0"])?;
                    return Ok(con);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(RawError::Io(
            last.unwrap_or_else(|| std::io::Error::other("no address")),
        ))
    }

    /// `GETRANGE key a (a + dst.len() - 1)`, the answer read from the
    /// socket straight into `dst`: redis-rs would parse it into a `Vec`
    /// first, a second copy of every byte.
    fn getrange_into(&self, key: &[u8], a: u64, dst: &mut [u8], range: (u64, u64)) -> Result<()> {
        self.with_raw(
            || format!("GETRANGE {}", String::from_utf8_lossy(key)),
            range,
            |con| raw_getrange(con, key, a, dst),
        )
    }

    /// Runs `f` on a plain connection (pooled or new): connection failures
    /// are retried on a new connection with backoff, like [`Pool::with`];
    /// an answer the server gave is final.
    fn with_raw<T>(
        &self,
        what: impl Fn() -> String,
        range: (u64, u64),
        mut f: impl FnMut(&mut TcpStream) -> std::result::Result<T, RawError>,
    ) -> Result<T> {
        let started = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let pooled = self.raw.lock().expect("pool lock").pop();
            let result = match pooled {
                Some(con) => Ok(con),
                None => self.raw_connect(),
            }
            .and_then(|mut con| f(&mut con).map(|v| (v, con)));
            let message = match result {
                Ok((value, con)) => {
                    self.raw.lock().expect("pool lock").push(con);
                    return Ok(value);
                }
                Err(RawError::Io(e)) if self.policy.may_retry(attempts, started) => {
                    tracing::warn!(uri = %self.uri, attempt = attempts, "Redis: {e}; retrying");
                    std::thread::sleep(self.policy.backoff(attempts));
                    continue;
                }
                Err(RawError::Io(e)) => e.to_string(),
                Err(RawError::Answer(message)) => message,
            };
            return Err(IoError::Remote {
                uri: self.uri.clone(),
                start: range.0,
                end: range.1,
                message: format!("{}: {message}", what()),
                attempts,
                status: None,
            });
        }
    }

    fn connect(&self) -> std::result::Result<Connection, RedisError> {
        let con = self
            .client
            .get_connection_with_timeout(self.policy.connect_timeout)?;
        con.set_read_timeout(Some(self.policy.request_timeout))?;
        con.set_write_timeout(Some(self.policy.request_timeout))?;
        Ok(con)
    }

    /// Runs `f` on a pooled connection; connection failures are retried on
    /// a new connection with backoff, server errors are not.
    fn with<T>(
        &self,
        what: impl Fn() -> String,
        range: (u64, u64),
        mut f: impl FnMut(&mut Connection) -> std::result::Result<T, RedisError>,
    ) -> Result<T> {
        let started = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let pooled = self.idle.lock().expect("pool lock").pop();
            let result = match pooled {
                Some(con) => Ok(con),
                None => self.connect(),
            }
            .and_then(|mut con| f(&mut con).map(|v| (v, con)));
            match result {
                Ok((value, con)) => {
                    self.idle.lock().expect("pool lock").push(con);
                    return Ok(value);
                }
                Err(e) => {
                    let transient = e.is_io_error()
                        || e.is_connection_dropped()
                        || e.is_connection_refusal()
                        || e.is_timeout();
                    if transient && self.policy.may_retry(attempts, started) {
                        tracing::warn!(uri = %self.uri, attempt = attempts, "Redis: {e}; retrying");
                        std::thread::sleep(self.policy.backoff(attempts));
                        continue;
                    }
                    return Err(IoError::Remote {
                        uri: self.uri.clone(),
                        start: range.0,
                        end: range.1,
                        message: format!("{}: {e}", what()),
                        attempts,
                        status: None,
                    });
                }
            }
        }
    }

    /// Every key matching `{prefix}:*`: at most [`MAX_SCAN_KEYS`] keys and
    /// [`MAX_SCAN_BYTES`] bytes of names, [`MAX_SCAN_ROUNDS`] round trips
    /// and the retry policy's total time, so that a server answering an
    /// endless cursor or huge names cannot grow memory or keep us waiting
    /// for ever. Replies are read with the length-checked reader of
    /// `GETRANGE`, never a buffer sized by the server's word alone.
    fn scan(&self, prefix: &str) -> Result<Vec<Vec<u8>>> {
        let pattern = format!("{}:*", glob_escape(prefix));
        let started = Instant::now();
        self.with_raw(
            || format!("listing keys {pattern}"),
            (0, 0),
            |con| {
                let mut keys = Vec::new();
                let mut bytes = 0usize;
                let mut cursor = b"0".to_vec();
                for round in 0.. {
                    let over = if round >= MAX_SCAN_ROUNDS {
                        Some(format!("more than {MAX_SCAN_ROUNDS} SCAN round trips"))
                    } else if started.elapsed() > self.policy.deadline {
                        Some(format!("SCAN did not finish in {:?}", self.policy.deadline))
                    } else {
                        None
                    };
                    if let Some(what) = over {
                        return Err(RawError::Answer(format!(
                            "{what}; is this prefix really one file?"
                        )));
                    }
                    cursor = raw_scan(con, &cursor, pattern.as_bytes(), &mut keys, &mut bytes)?;
                    if cursor == b"0" {
                        return Ok(keys);
                    }
                }
                unreachable!("the loop returns")
            },
        )
    }
}

/// Longest key name a listing takes: a tensor name (16-bit length) with a
/// prefix and an offset.
const MAX_KEY_LEN: usize = 128 << 10;
/// Most bytes of key names one listing holds.
const MAX_SCAN_BYTES: usize = 64 << 20;

/// One `SCAN cursor MATCH pattern COUNT 1000` round trip: its keys are
/// appended to `keys` (`bytes` counts their names) and the next cursor
/// returned. Every length the server states is checked before anything
/// is allocated for it.
fn raw_scan(
    con: &mut TcpStream,
    cursor: &[u8],
    pattern: &[u8],
    keys: &mut Vec<Vec<u8>>,
    bytes: &mut usize,
) -> Result<Vec<u8>, RawError> {
    send_command(
        con,
        &[b"SCAN", cursor, b"MATCH", pattern, b"COUNT", b"1000"],
    )?;
    let answer = |line: &[u8]| String::from_utf8_lossy(line).trim_end().to_owned();
    let header = |con: &mut TcpStream, kind: u8, max: usize| -> Result<usize, RawError> {
        let line = read_answer_line(con)?;
        if line.first() == Some(&b'-') {
            return Err(RawError::Answer(answer(&line[1..])));
        }
        let n = line
            .strip_prefix(&[kind][..])
            .and_then(|rest| std::str::from_utf8(rest).ok())
            .and_then(|rest| rest.trim_end().parse::<usize>().ok())
            .ok_or_else(|| {
                RawError::Answer(format!("unexpected SCAN answer {:?}", answer(&line)))
            })?;
        if n > max {
            return Err(RawError::Answer(format!(
                "a SCAN answer of {n} elements or bytes (at most {max} taken)"
            )));
        }
        Ok(n)
    };
    // A bulk string of at most `max` bytes, `budget` left for the listing.
    let bulk = |con: &mut TcpStream, max: usize, budget: usize| -> Result<Vec<u8>, RawError> {
        let n = header(con, b'$', max)?;
        if n > budget {
            return Err(RawError::Answer(format!(
                "more than {MAX_SCAN_BYTES} bytes of key names; is this prefix really one file?"
            )));
        }
        let mut value = vec![0u8; n];
        con.read_exact(&mut value)?;
        let mut crlf = [0u8; 2];
        con.read_exact(&mut crlf)?;
        if &crlf != b"\r\n" {
            return Err(RawError::Answer("a bulk string not ended by CRLF".into()));
        }
        Ok(value)
    };
    if header(con, b'*', 2)? != 2 {
        return Err(RawError::Answer(
            "a SCAN answer that is not [cursor, keys]".into(),
        ));
    }
    let next = bulk(con, 32, usize::MAX)?;
    let count = header(con, b'*', 1 << 20)?;
    for _ in 0..count {
        if keys.len() >= MAX_SCAN_KEYS {
            return Err(RawError::Answer(format!(
                "more than {MAX_SCAN_KEYS} keys; is this prefix really one file?"
            )));
        }
        let key = bulk(con, MAX_KEY_LEN, MAX_SCAN_BYTES - *bytes)?;
        *bytes += key.len();
        keys.push(key);
    }
    Ok(next)
}

/// A key and the bytes of the file it holds.
#[derive(Debug, Clone)]
struct Piece {
    key: Vec<u8>,
    offset: u64,
    len: u64,
}

/// The offset a key stands for: the integer after its last `:`.
fn key_offset(key: &[u8]) -> Option<u64> {
    let pos = key.iter().rposition(|&b| b == b':')?;
    std::str::from_utf8(&key[pos + 1..]).ok()?.parse().ok()
}

/// A file stored in Redis, as `RedisStreamFile` reads it.
#[derive(Debug)]
pub struct RedisSource {
    pool: Pool,
    pieces: Vec<Piece>,
    len: u64,
}

impl RedisSource {
    /// Opens `redis://host[:port]/prefix`: lists the prefix's keys and
    /// their sizes.
    pub fn open(uri: &str, policy: &RetryPolicy) -> Result<Self> {
        let address = parse_redis_uri(uri)?;
        let prefix = address.prefix.clone();
        let pool = Pool::new(uri, &address, policy)?;
        let keys = pool.scan(&prefix)?;
        let keys: Vec<(Vec<u8>, u64)> = keys
            .into_iter()
            .filter_map(|k| match key_offset(&k) {
                Some(off) => Some((k, off)),
                None => {
                    tracing::debug!(key = %String::from_utf8_lossy(&k), "not part of the file: no offset");
                    None
                }
            })
            .collect();
        if keys.is_empty() {
            return Err(IoError::Protocol {
                uri: pool.uri.clone(),
                message: format!(
                    "no keys named {prefix}:*:<offset> on the server (nothing stored under this prefix)"
                ),
            });
        }
        let lens: Vec<u64> = pool.with(
            || "reading key sizes".into(),
            (0, 0),
            |con| {
                let mut pipe = redis::pipe();
                for (k, _) in &keys {
                    pipe.cmd("STRLEN").arg(k);
                }
                pipe.query(con)
            },
        )?;
        // Empty keys (data of empty tensors) hold no bytes.
        let mut pieces: Vec<Piece> = keys
            .into_iter()
            .zip(lens)
            .filter(|(_, len)| *len > 0)
            .map(|((key, offset), len)| Piece { key, offset, len })
            .collect();
        pieces.sort_by_key(|p| p.offset);
        // Offsets come from key names: one near 2^64 must not wrap.
        if let Some(p) = pieces
            .iter()
            .find(|p| p.offset.checked_add(p.len).is_none())
        {
            return Err(IoError::Protocol {
                uri: pool.uri.clone(),
                message: format!(
                    "key {} claims bytes past 2^64",
                    String::from_utf8_lossy(&p.key)
                ),
            });
        }
        for pair in pieces.windows(2) {
            if pair[0].offset + pair[0].len > pair[1].offset {
                return Err(IoError::Protocol {
                    uri: pool.uri.clone(),
                    message: format!(
                        "keys {} and {} overlap (two files under one prefix?)",
                        String::from_utf8_lossy(&pair[0].key),
                        String::from_utf8_lossy(&pair[1].key)
                    ),
                });
            }
        }
        let len = pieces.last().map_or(0, |p| p.offset + p.len);
        Ok(Self { pool, pieces, len })
    }

    /// Number of keys the file is stored in.
    pub fn keys(&self) -> usize {
        self.pieces.len()
    }
}

/// Sends `GETRANGE key a b` in RESP and reads the bulk-string answer into
/// `dst`, which must be exactly as long as the answer.
fn raw_getrange(con: &mut TcpStream, key: &[u8], a: u64, dst: &mut [u8]) -> Result<(), RawError> {
    let (a, b) = (a.to_string(), (a + dst.len() as u64 - 1).to_string());
    send_command(con, &[b"GETRANGE", key, a.as_bytes(), b.as_bytes()])?;
    // The header, `$<len>\r\n` or `-ERR ...\r\n`, byte by byte so that
    // nothing of the body is read into a buffer of ours.
    let line = read_answer_line(con)?;
    let line = String::from_utf8_lossy(&line[..line.len() - 1]);
    let line = line.trim_end_matches('\r');
    let len = match line.strip_prefix('$').map(str::parse::<usize>) {
        Some(Ok(len)) => len,
        _ if line.starts_with('-') => return Err(RawError::Answer(line[1..].to_owned())),
        _ => return Err(RawError::Answer(format!("unexpected answer {line:?}"))),
    };
    if len != dst.len() {
        return Err(RawError::Answer(format!(
            "the key changed while reading (got {len} bytes of {})",
            dst.len()
        )));
    }
    con.read_exact(dst)?;
    let mut crlf = [0u8; 2];
    con.read_exact(&mut crlf)?;
    if &crlf != b"\r\n" {
        return Err(RawError::Answer("a bulk string not ended by CRLF".into()));
    }
    Ok(())
}

/// One answer line (through its `\n`), byte by byte, at most 4 KiB.
fn read_answer_line(con: &mut TcpStream) -> Result<Vec<u8>, RawError> {
    let mut line = Vec::new();
    let mut byte = [0u8];
    while line.last() != Some(&b'\n') {
        con.read_exact(&mut byte)?;
        line.push(byte[0]);
        if line.len() > 4096 {
            return Err(RawError::Answer("an answer line over 4 KiB".into()));
        }
    }
    Ok(line)
}

/// Sends one command in RESP.
fn send_command(con: &mut TcpStream, args: &[&[u8]]) -> Result<(), RawError> {
    let mut command = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        command.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        command.extend_from_slice(arg);
        command.extend_from_slice(b"\r\n");
    }
    Ok(con.write_all(&command)?)
}

/// Sends one command and expects a simple-string answer (`+OK`): `AUTH`
/// and `SELECT` on a plain connection.
fn raw_command(con: &mut TcpStream, args: &[&[u8]]) -> Result<(), RawError> {
    send_command(con, args)?;
    let line = read_answer_line(con)?;
    let what = String::from_utf8_lossy(args[0]);
    match line.first() {
        Some(b'+') => Ok(()),
        // The server's words (never our arguments: AUTH carries the password).
        _ => Err(RawError::Answer(format!(
            "{what}: {}",
            String::from_utf8_lossy(&line).trim_end()
        ))),
    }
}

impl RangeSource for RedisSource {
    fn uri(&self) -> &str {
        &self.pool.uri
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(offset, buf.len())?;
        let mut at = offset;
        let end = offset + buf.len() as u64;
        let mut i = self.pieces.partition_point(|p| p.offset + p.len <= at);
        while at < end {
            let piece = self
                .pieces
                .get(i)
                .filter(|p| p.offset <= at)
                .ok_or_else(|| IoError::Protocol {
                    uri: self.pool.uri.clone(),
                    message: format!("byte {at} is in no key (a key is missing)"),
                })?;
            let stop = end.min(piece.offset + piece.len).min(at + MAX_GET);
            let dst = (at - offset) as usize..(stop - offset) as usize;
            self.pool
                .getrange_into(&piece.key, at - piece.offset, &mut buf[dst], (at, stop))?;
            at = stop;
            if at == piece.offset + piece.len {
                i += 1;
            }
        }
        Ok(())
    }

    fn hints(&self) -> ReadHints {
        ReadHints {
            request_size: MAX_GET as usize,
            concurrency: 8,
            block_size: MAX_GET as usize,
        }
    }
}

/// The keys of one segment, as Python's `to_redis` names them: one per
/// segment (one per MAX_VALUE bytes of it, ours), none for the terminator.
fn segment_keys(segment: &Segment) -> Vec<PendingKey> {
    let name = match &segment.kind {
        SegmentKind::Prologue => "header",
        SegmentKind::TensorHeader(name) | SegmentKind::TensorData(name) => name,
        // Python does not store the terminator either.
        SegmentKind::Terminator => return Vec::new(),
    };
    // No key for empty segments (data of empty tensors): it would share its
    // offset with the next header, and Python's reader, which sorts keys by
    // offset in SCAN order, then reads the empty key as the header one time
    // in two ("Unexpected empty header"; its own `to_redis` files have this
    // bug).
    let mut keys = Vec::new();
    let mut at = segment.offset;
    while at < segment.end() {
        let len = MAX_VALUE.min(segment.end() - at);
        keys.push(PendingKey {
            name: name.to_owned(),
            offset: at,
            len,
        });
        at += len;
    }
    keys
}

/// A key to be written: its final name, and the file bytes it holds.
#[derive(Debug)]
struct PendingKey {
    name: String,
    offset: u64,
    len: u64,
}

/// Writes a file into Redis under a prefix, replacing what was there at
/// commit. Needs the file's layout ([`Sink::reserve`]) to name the keys.
#[derive(Debug)]
pub struct RedisSink {
    pool: Pool,
    prefix: String,
    staging: String,
    /// The keys announced so far, in offset order.
    keys: RwLock<Vec<PendingKey>>,
    /// Partly written keys: buffer and bytes written.
    partial: Mutex<HashMap<usize, (Vec<u8>, u64)>>,
    committed: bool,
}

impl RedisSink {
    /// Prepares a write to `redis://host[:port]/prefix` (connects to check
    /// the server is there).
    pub fn create(uri: &str, policy: &RetryPolicy) -> Result<Self> {
        let address = parse_redis_uri(uri)?;
        let prefix = address.prefix.clone();
        let pool = Pool::new(uri, &address, policy)?;
        pool.with(
            || "PING".into(),
            (0, 0),
            |con| redis::cmd("PING").query::<String>(con),
        )?;
        let mut tag = [0u8; 8];
        getrandom::fill(&mut tag).map_err(|e| IoError::Protocol {
            uri: pool.uri.clone(),
            message: format!("no randomness for a staging prefix: {e}"),
        })?;
        let staging = format!("{prefix}.tmp-{:016x}", u64::from_le_bytes(tag));
        Ok(Self {
            pool,
            prefix,
            staging,
            keys: RwLock::new(Vec::new()),
            partial: Mutex::new(HashMap::new()),
            committed: false,
        })
    }

    /// The keys of the file stored under the prefix now, from its own
    /// index (`{prefix}:header:0`): what a commit replaces. Any other key
    /// under `{prefix}:*` is someone else's: the write is refused rather
    /// than deleting it (or leaving it to corrupt every read of the new
    /// file, since readers take every `{prefix}:*` key as part of it).
    fn old_file_keys<'a>(&self, new: impl Iterator<Item = &'a str>) -> Result<Vec<Vec<u8>>> {
        let existing = self.pool.scan(&self.prefix)?;
        if existing.is_empty() {
            return Ok(existing);
        }
        let header = format!("{}:header:0", self.prefix);
        let mut ours: std::collections::HashSet<Vec<u8>> =
            new.map(|k| k.as_bytes().to_vec()).collect();
        ours.insert(header.clone().into_bytes());
        let prologue: Option<Vec<u8>> = self.pool.with(
            || format!("reading {header}"),
            (0, 0),
            |con| {
                let len: u64 = redis::cmd("STRLEN").arg(&header).query(con)?;
                if len == 0 || len > MAX_PROLOGUE {
                    return Ok(None);
                }
                redis::cmd("GET").arg(&header).query(con)
            },
        )?;
        // Which listed keys the old file's index accounts for: decided key
        // by key from the keys that exist, never by enumerating what the
        // index claims (a planted index claiming 2^56 bytes would mean
        // 2^28 key names).
        let mut segments: std::collections::HashMap<Vec<u8>, Vec<(u64, u64)>> =
            std::collections::HashMap::new();
        if let Some(metadata) = prologue.and_then(|p| tensorizer_format::Metadata::parse(&p).ok()) {
            for entry in &metadata.entries {
                let name = String::from_utf8_lossy(entry.name.as_bytes()).into_owned();
                let list = segments.entry(name.into_bytes()).or_default();
                list.push((entry.header_offset, entry.data_offset - entry.header_offset));
                list.push((entry.data_offset, entry.data_length));
            }
        }
        let key_prefix = format!("{}:", self.prefix).into_bytes();
        let in_old_file = |key: &[u8]| -> bool {
            let Some(rest) = key.strip_prefix(&key_prefix[..]) else {
                return false;
            };
            let Some(pos) = rest.iter().rposition(|&b| b == b':') else {
                return false;
            };
            let Some(at) = key_offset(key) else {
                return false;
            };
            // One key per segment (Python's `to_redis`), or one per
            // MAX_VALUE bytes of it (ours).
            segments.get(&rest[..pos]).is_some_and(|list| {
                list.iter().any(|&(start, len)| {
                    at == start || (at > start && at - start < len && (at - start) % MAX_VALUE == 0)
                })
            })
        };
        ours.extend(existing.iter().filter(|k| in_old_file(k)).cloned());
        let foreign: Vec<&Vec<u8>> = existing.iter().filter(|k| !ours.contains(*k)).collect();
        if let Some(example) = foreign.first() {
            return Err(IoError::Protocol {
                uri: self.pool.uri.clone(),
                message: format!(
                    "{} key(s) under {}:* are not part of the tensorizer file stored there \
                     (e.g. {}); refusing to write beside them (readers would take them for \
                     file bytes) or to delete them: give the file a prefix of its own",
                    foreign.len(),
                    self.prefix,
                    String::from_utf8_lossy(example)
                ),
            });
        }
        Ok(existing)
    }

    fn staged(&self, key: &PendingKey) -> String {
        format!("{}:{}:{}", self.staging, key.name, key.offset)
    }

    fn set(&self, key: &PendingKey, data: &[u8]) -> Result<()> {
        let staged = self.staged(key);
        self.pool.with(
            || format!("SET {staged}"),
            (key.offset, key.offset + key.len),
            // Staged keys expire: a killed writer cannot clean up after
            // itself, and Redis then does. The commit makes them persist.
            |con| {
                redis::cmd("SET")
                    .arg(&staged)
                    .arg(data)
                    .arg("EX")
                    .arg(STAGING_TTL_SECONDS)
                    .query::<()>(con)
            },
        )
    }
}

impl Sink for RedisSink {
    fn uri(&self) -> &str {
        &self.pool.uri
    }

    fn reserve(&self, layout: &FileLayout) -> Result<()> {
        let mut keys = self.keys.write().expect("keys lock");
        if !keys.is_empty() {
            return Err(IoError::Protocol {
                uri: self.pool.uri.clone(),
                message: "the file layout was announced twice".into(),
            });
        }
        keys.extend(layout.segments.iter().flat_map(segment_keys));
        Ok(())
    }

    fn announce(&self, segments: &[Segment]) -> Result<()> {
        let mut keys = self.keys.write().expect("keys lock");
        let end = keys.last().map_or(0, |k| k.offset + k.len);
        if segments.first().is_some_and(|s| s.offset < end) {
            return Err(IoError::Protocol {
                uri: self.pool.uri.clone(),
                message: format!("segments announced out of order (at {end})"),
            });
        }
        keys.extend(segments.iter().flat_map(segment_keys));
        Ok(())
    }

    fn write_all_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        // Read-locked for the whole write: announcements come between writes.
        let keys = self.keys.read().expect("keys lock");
        if keys.is_empty() {
            return Err(IoError::Unsupported {
                uri: self.pool.uri.clone(),
                message: "a Redis sink names keys after tensors: announce the file's \
                          segments with Sink::reserve or Sink::announce first (tensorizer's serializers do)"
                    .into(),
            });
        }
        let mut at = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let i = keys.partition_point(|k| k.offset + k.len <= at);
            let Some(key) = keys.get(i).filter(|k| k.offset <= at) else {
                // Bytes outside every key: only the terminator, which is not stored.
                return Ok(());
            };
            let within = (at - key.offset) as usize;
            let n = rest.len().min(key.len as usize - within);
            if within == 0 && n as u64 == key.len {
                self.set(key, &rest[..n])?;
            } else {
                let full = {
                    let mut partial = self.partial.lock().expect("partial lock");
                    let (buf, filled) = partial
                        .entry(i)
                        .or_insert_with(|| (vec![0; key.len as usize], 0));
                    buf[within..within + n].copy_from_slice(&rest[..n]);
                    *filled += n as u64;
                    (*filled >= key.len).then(|| partial.remove(&i).expect("present").0)
                };
                if let Some(buf) = full {
                    self.set(key, &buf)?;
                }
            }
            at += n as u64;
            rest = &rest[n..];
        }
        Ok(())
    }

    fn commit(mut self: Box<Self>) -> Result<()> {
        let keys = std::mem::take(self.keys.get_mut().expect("keys lock"));
        if let Some((i, _)) = self.partial.lock().expect("partial lock").iter().next() {
            return Err(IoError::Protocol {
                uri: self.pool.uri.clone(),
                message: format!(
                    "bytes {}.. were never completely written; not committing",
                    keys[*i].offset
                ),
            });
        }
        let renames: Vec<(String, String)> = keys
            .iter()
            .map(|k| {
                (
                    self.staged(k),
                    format!("{}:{}:{}", self.prefix, k.name, k.offset),
                )
            })
            .collect();
        let old = self.old_file_keys(renames.iter().map(|(_, to)| to.as_str()))?;
        self.pool.with(
            || "swapping the new keys in (MULTI/EXEC)".into(),
            (0, 0),
            |con| {
                let mut pipe = redis::pipe();
                pipe.atomic();
                for key in &old {
                    pipe.cmd("DEL").arg(key).ignore();
                }
                for (from, to) in &renames {
                    pipe.cmd("RENAME").arg(from).arg(to).ignore();
                    pipe.cmd("PERSIST").arg(to).ignore();
                }
                pipe.query::<()>(con)
            },
        )?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for RedisSink {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        // Best effort: remove what was staged.
        if let Ok(staged) = self.pool.scan(&self.staging) {
            let _ = self.pool.with(
                || "deleting staged keys".into(),
                (0, 0),
                |con| {
                    let mut pipe = redis::pipe();
                    for key in &staged {
                        pipe.cmd("DEL").arg(key).ignore();
                    }
                    pipe.query::<()>(con)
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_uris() {
        let a = parse_redis_uri("redis://127.0.0.1:7000/models/llama").unwrap();
        assert_eq!(
            (a.host_port.as_str(), a.prefix.as_str()),
            ("127.0.0.1:7000", "models/llama")
        );
        assert_eq!(a.client_url(), "redis://127.0.0.1:7000/0");
        let a = parse_redis_uri("redis://cache/m").unwrap();
        assert_eq!(a.client_url(), "redis://cache:6379/0");
        let a = parse_redis_uri("redis://:p%40ss@cache/m").unwrap();
        assert_eq!((a.username, a.password.as_deref()), (None, Some("p@ss")));
        let a = parse_redis_uri("redis://alice:pw@cache:7000/m").unwrap();
        assert_eq!(a.client_url(), "redis://alice:pw@cache:7000/0");
        assert!(!format!("{a:?}").contains("pw"), "{a:?}");
        for bad in [
            "redis://host",
            "redis://host/",
            "redis:///p",
            "http://h/p",
            "redis://:pw@/p",
        ] {
            assert!(parse_redis_uri(bad).is_err(), "{bad}");
        }
        let err = parse_redis_uri("redis://:secret@host")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn offsets_after_the_last_colon() {
        assert_eq!(key_offset(b"p:header:0"), Some(0));
        assert_eq!(key_offset(b"p:a:b.c:262217"), Some(262217));
        assert_eq!(key_offset(b"p:nope"), None);
        assert_eq!(glob_escape("a*b[c]"), "a\\*b\\[c\\]");
    }
}
