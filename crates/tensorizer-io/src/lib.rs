#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod error;
#[cfg(feature = "http")]
mod http;
mod local;
mod retry;

use std::path::Path;

pub use error::{IoError, Result};
#[cfg(feature = "http")]
pub use http::HttpSource;
pub use local::{LocalFile, LocalSink};
pub use retry::RetryPolicy;

/// The request size and concurrency a source performs best with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadHints {
    /// Bytes per request.
    pub request_size: usize,
    /// Requests in flight.
    pub concurrency: usize,
}

impl Default for ReadHints {
    fn default() -> Self {
        Self {
            request_size: 8 << 20,
            concurrency: 8,
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

/// Where a new file's bytes go: written at any offset from many threads,
/// then [`Sink::commit`]ted atomically, or dropped to leave the destination
/// as it was.
pub trait Sink: Send + Sync + std::fmt::Debug {
    /// The URI or path, for messages.
    fn uri(&self) -> &str;

    /// The final size, when known up front (lets a file be preallocated).
    fn reserve(&self, _len: u64) -> Result<()> {
        Ok(())
    }

    /// Writes `data` at `offset`.
    fn write_all_at(&self, offset: u64, data: &[u8]) -> Result<()>;

    /// Makes the written bytes the destination's content, all at once.
    fn commit(self: Box<Self>) -> Result<()>;
}

/// Opens a source by URI: `http://` and `https://` (feature `http`),
/// `file://` paths, and plain paths.
pub fn open_source(uri: &str, policy: &RetryPolicy) -> Result<Box<dyn RangeSource>> {
    let _ = policy;
    match scheme(uri).as_deref() {
        Some("file") => Ok(Box::new(LocalFile::open(Path::new(&uri[7..]))?)),
        Some("http" | "https") => {
            #[cfg(feature = "http")]
            return Ok(Box::new(HttpSource::open(uri, policy.clone())?));
            #[cfg(not(feature = "http"))]
            return Err(IoError::Unsupported {
                uri: uri.to_owned(),
                message: "reading http(s):// URIs needs the cargo feature `http`".into(),
            });
        }
        Some(other) if other.len() > 1 => Err(IoError::Unsupported {
            uri: uri.to_owned(),
            message: format!(
                "unknown URI scheme {other:?} (supported: file, http, https, or a plain path)"
            ),
        }),
        _ => Ok(Box::new(LocalFile::open(Path::new(uri))?)),
    }
}

/// Opens a sink by URI: `file://` paths and plain paths.
pub fn create_sink(uri: &str) -> Result<Box<dyn Sink>> {
    match scheme(uri).as_deref() {
        Some("file") => Ok(Box::new(LocalSink::create(Path::new(&uri[7..]))?)),
        Some(other) if other.len() > 1 => Err(IoError::Unsupported {
            uri: uri.to_owned(),
            message: format!(
                "cannot write to {other}:// URIs yet (supported: file, or a plain path)"
            ),
        }),
        _ => Ok(Box::new(LocalSink::create(Path::new(uri))?)),
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
