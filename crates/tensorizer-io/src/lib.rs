#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
// One exception, in `local.rs`: `linkat(2)`, which std does not wrap, to
// give an unnamed file its name at commit.
#![deny(unsafe_code)]

mod error;
#[cfg(feature = "http")]
mod http;
mod layout;
mod local;
#[cfg(feature = "redis")]
pub mod redis;
mod retry;
pub mod s3;

use std::path::Path;

pub use error::{IoError, Result};
#[cfg(feature = "http")]
pub use http::HttpSource;
pub use layout::{FileLayout, Segment, SegmentKind};
pub use local::{LocalFile, LocalSink};
#[cfg(feature = "redis")]
pub use redis::{RedisSink, RedisSource};
pub use retry::RetryPolicy;
pub use s3::{Addressing, S3Config, S3Options};
#[cfg(feature = "s3")]
pub use s3::{S3Sink, S3Source};

/// How to reach remote storage: retries and timeouts for every remote
/// source, and S3 credentials and endpoint.
#[derive(Debug, Clone, Default)]
pub struct StorageOptions {
    /// Retries and timeouts.
    pub retry: RetryPolicy,
    /// S3 credentials, endpoint and addressing (looked up when unset).
    pub s3: S3Options,
}

/// The request size and concurrency a source performs best with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadHints {
    /// Bytes per request.
    pub request_size: usize,
    /// Requests in flight.
    pub concurrency: usize,
    /// The smallest read that costs no more per byte than `request_size`:
    /// a request may be split into reads of this size to hash each block
    /// while it is still in cache. Small for local files (a read is a system
    /// call); `request_size` for network sources (a read is a request).
    pub block_size: usize,
}

impl Default for ReadHints {
    fn default() -> Self {
        Self {
            request_size: 8 << 20,
            concurrency: 8,
            block_size: 8 << 20,
        }
    }
}

/// Something whose bytes can be read at any offset, from many threads at
/// once: a local file, an HTTP object, an S3 object, a Redis-stored file.
///
/// The size is known once the source is open, so every read can be checked
/// against it before a buffer is allocated.
pub trait RangeSource: Send + Sync + std::fmt::Debug {
    /// The URI or path, for messages.
    fn uri(&self) -> &str;

    /// Total size in bytes.
    fn len(&self) -> u64;

    /// True for an empty source.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` with the bytes `offset .. offset + buf.len()`.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// The request size and concurrency this source likes.
    fn hints(&self) -> ReadHints {
        ReadHints::default()
    }

    /// Reads `len` bytes at `offset` into a new buffer, refusing ranges past
    /// the end before allocating.
    fn read_range(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let n = self.check_range(offset, usize::try_from(len).unwrap_or(usize::MAX))?;
        let mut buf = vec![0u8; n];
        self.read_exact_at(offset, &mut buf)?;
        Ok(buf)
    }

    /// An error unless `offset .. offset + len` lies inside the source.
    fn check_range(&self, offset: u64, len: usize) -> Result<usize> {
        let end = offset.checked_add(len as u64);
        match end {
            Some(end) if end <= self.len() => Ok(len),
            _ => Err(IoError::OutOfRange {
                uri: self.uri().to_owned(),
                start: offset,
                end: end.unwrap_or(u64::MAX),
                len: self.len(),
            }),
        }
    }
}

/// A shared source is a source: the caller can keep a handle (to count its
/// requests, say) while a reader owns another.
impl<S: RangeSource + ?Sized> RangeSource for std::sync::Arc<S> {
    fn uri(&self) -> &str {
        (**self).uri()
    }
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        (**self).read_exact_at(offset, buf)
    }
    fn hints(&self) -> ReadHints {
        (**self).hints()
    }
    fn read_range(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        (**self).read_range(offset, len)
    }
    fn check_range(&self, offset: u64, len: usize) -> Result<usize> {
        (**self).check_range(offset, len)
    }
}

/// Where a new file's bytes go: written at any offset from many threads,
/// then [`Sink::commit`]ted atomically, or dropped to leave the destination
/// as it was.
pub trait Sink: Send + Sync + std::fmt::Debug {
    /// The URI or path, for messages.
    fn uri(&self) -> &str;

    /// Announces the file before the first write: its size (lets a file
    /// be preallocated, sizes multipart parts) and its segments (name
    /// Redis keys).
    fn reserve(&self, _layout: &FileLayout) -> Result<()> {
        Ok(())
    }

    /// Writes `data` at `offset`.
    fn write_all_at(&self, offset: u64, data: &[u8]) -> Result<()>;

    /// Makes the written bytes the destination's content, all at once.
    fn commit(self: Box<Self>) -> Result<()>;
}

/// Opens a source by URI: plain paths and `file://`, `http(s)://` (feature
/// `http`), `s3://bucket/key` (feature `s3`), `redis://host[:port]/prefix`
/// (feature `redis`).
pub fn open_source(uri: &str, options: &StorageOptions) -> Result<Box<dyn RangeSource>> {
    let _ = options;
    match scheme(uri).as_deref() {
        Some("file") => Ok(Box::new(LocalFile::open(Path::new(&uri[7..]))?)),
        Some("http" | "https") => {
            #[cfg(feature = "http")]
            return Ok(Box::new(HttpSource::open(uri, options.retry.clone())?));
            #[cfg(not(feature = "http"))]
            return Err(feature_off(uri, "http"));
        }
        Some("s3") => {
            #[cfg(feature = "s3")]
            return Ok(Box::new(S3Source::open(uri, &options.s3, &options.retry)?));
            #[cfg(not(feature = "s3"))]
            return Err(feature_off(uri, "s3"));
        }
        Some("redis") => {
            #[cfg(feature = "redis")]
            return Ok(Box::new(RedisSource::open(uri, &options.retry)?));
            #[cfg(not(feature = "redis"))]
            return Err(feature_off(uri, "redis"));
        }
        Some(other) if other.len() > 1 => Err(unknown_scheme(uri, other)),
        _ => Ok(Box::new(LocalFile::open(Path::new(uri))?)),
    }
}

/// Opens a sink by URI: plain paths and `file://`, `s3://bucket/key`
/// (feature `s3`), `redis://host[:port]/prefix` (feature `redis`).
/// HTTP is read-only.
pub fn create_sink(uri: &str, options: &StorageOptions) -> Result<Box<dyn Sink>> {
    let _ = options;
    match scheme(uri).as_deref() {
        Some("file") => Ok(Box::new(LocalSink::create(Path::new(&uri[7..]))?)),
        Some("http" | "https") => Err(IoError::Unsupported {
            uri: uri.to_owned(),
            message: "HTTP(S) URIs are read-only; write to a file, s3:// or redis://".into(),
        }),
        Some("s3") => {
            #[cfg(feature = "s3")]
            return Ok(Box::new(S3Sink::create(uri, &options.s3, &options.retry)?));
            #[cfg(not(feature = "s3"))]
            return Err(feature_off(uri, "s3"));
        }
        Some("redis") => {
            #[cfg(feature = "redis")]
            return Ok(Box::new(RedisSink::create(uri, &options.retry)?));
            #[cfg(not(feature = "redis"))]
            return Err(feature_off(uri, "redis"));
        }
        Some(other) if other.len() > 1 => Err(unknown_scheme(uri, other)),
        _ => Ok(Box::new(LocalSink::create(Path::new(uri))?)),
    }
}

/// Whether an object exists at `uri`: a local path, or an S3 object (one
/// HEAD request). Other schemes answer an error saying they cannot tell.
pub fn exists(uri: &str, options: &StorageOptions) -> Result<bool> {
    let _ = options;
    match scheme(uri).as_deref() {
        Some("file") => Ok(Path::new(&uri[7..]).exists()),
        Some("s3") => {
            #[cfg(feature = "s3")]
            return s3::exists(uri, &options.s3, &options.retry);
            #[cfg(not(feature = "s3"))]
            return Err(feature_off(uri, "s3"));
        }
        Some(other) if other.len() > 1 => Err(IoError::Unsupported {
            uri: uri.to_owned(),
            message: format!(
                "cannot tell whether a {other}:// object exists (only files and s3://)"
            ),
        }),
        _ => Ok(Path::new(uri).exists()),
    }
}

/// Copies the object `from` to `to` without moving its bytes through this
/// process where the store allows: a hard link between local paths (a
/// plain copy across file systems), a server-side copy within S3. The
/// destination appears whole or not at all; an existing one is replaced.
pub fn copy_object(from: &str, to: &str, options: &StorageOptions) -> Result<()> {
    let _ = options;
    let local = |uri: &str| match scheme(uri).as_deref() {
        Some("file") => Some(Path::new(&uri[7..]).to_path_buf()),
        None => Some(Path::new(uri).to_path_buf()),
        Some(_) => None,
    };
    match (local(from), local(to)) {
        (Some(from), Some(to)) => local::link_or_copy(&from, &to),
        #[cfg(feature = "s3")]
        _ if scheme(from).as_deref() == Some("s3") && scheme(to).as_deref() == Some("s3") => {
            s3::copy(from, to, &options.s3, &options.retry)
        }
        _ => Err(IoError::Unsupported {
            uri: to.to_owned(),
            message: format!(
                "no direct copy from {from}: both ends must be local paths, or both s3://"
            ),
        }),
    }
}

#[allow(dead_code, reason = "unused when every backend feature is on")]
fn feature_off(uri: &str, feature: &str) -> IoError {
    IoError::Unsupported {
        uri: uri.to_owned(),
        message: format!(
            "{feature}:// URIs need the cargo feature `{feature}` of tensorizer (or tensorizer-io)"
        ),
    }
}

fn unknown_scheme(uri: &str, scheme: &str) -> IoError {
    IoError::Unsupported {
        uri: uri.to_owned(),
        message: format!(
            "unknown URI scheme {scheme:?} (supported: file, http, https, s3, redis, or a plain path)"
        ),
    }
}

/// The scheme before `://`, lowercased (schemes are case-insensitive), if any.
fn scheme(uri: &str) -> Option<String> {
    let (s, _) = uri.split_once("://")?;
    (!s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)))
    .then(|| s.to_ascii_lowercase())
}
