#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
// One exception, in `local.rs`: `linkat(2)`, which std does not wrap, to
// give an unnamed file its name at commit.
#![deny(unsafe_code)]

pub mod azure;
#[cfg(feature = "object-store")]
mod cloud;
mod env;
mod error;
pub mod gcs;
#[cfg(feature = "http")]
mod http;
mod layout;
mod local;
#[cfg(any(feature = "http", feature = "object-store"))]
mod net;
#[cfg(feature = "redis")]
pub mod redis;
mod retry;
#[cfg(any(feature = "http", feature = "object-store"))]
mod runtime;
pub mod s3;
mod trust;
mod uri;

use std::path::Path;

pub use azure::AzureOptions;
#[cfg(feature = "object-store")]
pub use cloud::{ObjectSink, ObjectSource, Service};
pub use env::{Environment, ProcessEnvironment};
pub use error::{IoError, Result};
pub use gcs::GcsOptions;
#[cfg(feature = "http")]
pub use http::HttpSource;
pub use layout::{FileLayout, Segment, SegmentKind};
pub use local::{LocalFile, LocalSink};
#[cfg(feature = "redis")]
pub use redis::{RedisSink, RedisSource};
pub use retry::RetryPolicy;
pub use s3::{Addressing, S3Config, S3Options};
pub use trust::TrustOptions;
pub use uri::{ShownUri, escape_controls, redact as redact_uri};

/// The first piece [`RangeSource::read_range`] reads; each next one is as
/// large as what arrived so far.
const GROWTH_START: usize = 64 << 10;

/// How to reach remote storage: retries and timeouts for every remote
/// source, and each object store's credentials and endpoint (looked up in
/// the environment when unset).
#[derive(Debug, Clone, Default)]
pub struct StorageOptions {
    /// Retries and timeouts.
    pub retry: RetryPolicy,
    /// S3 credentials, endpoint and addressing.
    pub s3: S3Options,
    /// Google Cloud Storage credentials and endpoint.
    pub gcs: GcsOptions,
    /// Azure Blob Storage account, credentials and endpoint.
    pub azure: AzureOptions,
    /// CA certificates trusted beyond the system's, for every client.
    pub trust: TrustOptions,
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
    ///
    /// The buffer follows the bytes that arrived, not the size asked for:
    /// a source's size is a peer's claim (a server's `Content-Range`), so
    /// the range is read in pieces that double from 64 KiB, and a peer that
    /// claims gigabytes and sends kilobytes costs kilobytes.
    fn read_range(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let n = self.check_range(offset, usize::try_from(len).unwrap_or(usize::MAX))?;
        read_range_growing(self, offset, n)
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

/// [`RangeSource::read_range`]'s rule for any source: pieces that double
/// from 64 KiB, each allocated only when the one before it arrived whole.
pub(crate) fn read_range_growing<S: RangeSource + ?Sized>(
    source: &S,
    offset: u64,
    n: usize,
) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    while buf.len() < n {
        let done = buf.len();
        let step = done.max(GROWTH_START).min(n - done);
        // An allocation the machine cannot make is an error, not an abort.
        buf.try_reserve_exact(step)
            .map_err(|_| IoError::OutOfMemory {
                uri: source.uri().to_owned(),
                bytes: (done + step) as u64,
            })?;
        buf.resize(done + step, 0);
        source.read_exact_at(offset + done as u64, &mut buf[done..])?;
    }
    Ok(buf)
}

/// Appends a chunk that arrived to `buf` (growing it as `Vec` does: at most
/// twice what arrived), an error rather than an abort if memory runs out.
#[allow(dead_code)] // only network sources stream into a growing buffer
pub(crate) fn append_arrived(buf: &mut Vec<u8>, bytes: &[u8], uri: &str) -> Result<()> {
    buf.try_reserve(bytes.len())
        .map_err(|_| IoError::OutOfMemory {
            uri: uri.to_owned(),
            bytes: (buf.len() + bytes.len()) as u64,
        })?;
    buf.extend_from_slice(bytes);
    Ok(())
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

    /// Announces the next segments of a file whose layout is learnt while
    /// it is written (a streaming writer, which calls this instead of
    /// [`Sink::reserve`]): they follow the segments announced before, and
    /// come before any write into them. Sinks that need no layout accept
    /// them silently.
    fn announce(&self, _segments: &[Segment]) -> Result<()> {
        Ok(())
    }

    /// Writes `data` at `offset`.
    fn write_all_at(&self, offset: u64, data: &[u8]) -> Result<()>;

    /// Makes the written bytes the destination's content, all at once.
    fn commit(self: Box<Self>) -> Result<()>;
}

/// Opens a source by URI: plain paths and `file://`, `http(s)://` (feature
/// `http`), `s3://bucket/key` (feature `s3`), `gs://bucket/key` (feature
/// `gcs`), `az://container/key` and the other Azure forms (feature
/// `azure`), `redis://host[:port]/prefix` (feature `redis`).
pub fn open_source(uri: &str, options: &StorageOptions) -> Result<Box<dyn RangeSource>> {
    let _ = options;
    match Backend::of(uri)? {
        Backend::Local(path) => Ok(Box::new(LocalFile::open(path)?)),
        #[cfg(feature = "object-store")]
        Backend::Object => Ok(Box::new(ObjectSource::open(
            cloud::object(uri, options)?,
            &options.retry,
        )?)),
        Backend::Http => {
            #[cfg(feature = "http")]
            return Ok(Box::new(HttpSource::open_with(
                uri,
                options.retry.clone(),
                &options.trust,
            )?));
            #[cfg(not(feature = "http"))]
            return Err(feature_off(uri, "http"));
        }
        Backend::Redis => {
            #[cfg(feature = "redis")]
            return Ok(Box::new(RedisSource::open(uri, &options.retry)?));
            #[cfg(not(feature = "redis"))]
            return Err(feature_off(uri, "redis"));
        }
    }
}

/// Opens a sink by URI: plain paths and `file://`, `s3://bucket/key`
/// (feature `s3`), `gs://bucket/key` (feature `gcs`), `az://container/key`
/// (feature `azure`), `redis://host[:port]/prefix` (feature `redis`).
/// HTTP is read-only.
pub fn create_sink(uri: &str, options: &StorageOptions) -> Result<Box<dyn Sink>> {
    let _ = options;
    match Backend::of(uri)? {
        Backend::Local(path) => Ok(Box::new(LocalSink::create(path)?)),
        #[cfg(feature = "object-store")]
        Backend::Object => {
            let object = cloud::object(uri, options)?;
            Ok(Box::new(ObjectSink::create(object, &options.retry)?))
        }
        Backend::Http => Err(IoError::Unsupported {
            uri: uri.to_owned(),
            message: "HTTP(S) URIs are read-only; write to a file, s3://, gs://, az:// or redis://"
                .into(),
        }),
        Backend::Redis => {
            #[cfg(feature = "redis")]
            return Ok(Box::new(RedisSink::create(uri, &options.retry)?));
            #[cfg(not(feature = "redis"))]
            return Err(feature_off(uri, "redis"));
        }
    }
}

/// Writes `data` as a new object at `uri`, failing if one exists: a local
/// file is linked into place with `linkat`, which fails with `EEXIST` (so
/// of two racing writers exactly one wins, and nothing is ever replaced),
/// with permissions `mode` from before it has a name; S3, GCS and Azure
/// objects are a create-only put (`If-None-Match: *`). For key files.
pub fn create_new(uri: &str, data: &[u8], mode: u32, options: &StorageOptions) -> Result<()> {
    let _ = options;
    match Backend::of(uri)? {
        Backend::Local(path) => {
            let sink = LocalSink::create_with_mode(path, mode)?;
            sink.write_all_at(0, data)?;
            sink.commit_new()
        }
        #[cfg(feature = "object-store")]
        Backend::Object => cloud::create_new(uri, data, options),
        Backend::Http | Backend::Redis => Err(IoError::Unsupported {
            uri: uri.to_owned(),
            message: "only files and S3, GCS or Azure objects can be created exclusively".into(),
        }),
    }
}

/// Whether an object exists at `uri`: a local path, or an object in S3,
/// GCS or Azure (one HEAD request). Other schemes answer an error saying
/// they cannot tell.
pub fn exists(uri: &str, options: &StorageOptions) -> Result<bool> {
    let _ = options;
    match Backend::of(uri)? {
        Backend::Local(path) => Ok(path.exists()),
        #[cfg(feature = "object-store")]
        Backend::Object => cloud::exists(uri, options),
        Backend::Http | Backend::Redis => Err(IoError::Unsupported {
            uri: uri.to_owned(),
            message: "cannot tell whether an HTTP or Redis object exists \
                      (only files and object stores)"
                .into(),
        }),
    }
}

/// The names (relative to `prefix`, sorted) and sizes of the objects
/// under `prefix`, a "directory" of an object store (`s3://b/m/`) or a
/// local directory (regular files only; links are the caller's to judge):
/// those directly under it, or with `recursive` every one below it (names
/// then hold `/`). HTTP has no listing: read an index file there instead.
/// At most 100,000 objects are listed (a model directory holds tens).
pub fn list(prefix: &str, recursive: bool, options: &StorageOptions) -> Result<Vec<(String, u64)>> {
    let _ = options;
    match Backend::of(prefix)? {
        Backend::Local(path) => local::list(path, recursive),
        #[cfg(feature = "object-store")]
        Backend::Object => cloud::list(prefix, recursive, options),
        Backend::Http | Backend::Redis => Err(IoError::Unsupported {
            uri: prefix.to_owned(),
            message: "HTTP and Redis have no listing: name the files, or an index file".into(),
        }),
    }
}

/// Most objects a listing returns.
pub(crate) const MAX_LISTED: usize = 100_000;

/// Copies the object at `uri` into the local file `dest` (created whole
/// or not at all, as every local write), reading several ranges at once;
/// returns its size.
pub fn download(uri: &str, dest: &Path, options: &StorageOptions) -> Result<u64> {
    let source = open_source(uri, options)?;
    let sink = LocalSink::create(dest)?;
    let len = source.len();
    sink.reserve(&FileLayout::with_len(len))?;
    let hints = source.hints();
    let piece = hints.request_size.max(1 << 20) as u64;
    let next = std::sync::atomic::AtomicU64::new(0);
    let failure = std::sync::Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..hints.concurrency.clamp(1, 16) {
            s.spawn(|| {
                loop {
                    let at = next.fetch_add(piece, std::sync::atomic::Ordering::Relaxed);
                    if at >= len || failure.lock().is_ok_and(|f| f.is_some()) {
                        return;
                    }
                    let got = source
                        .read_range(at, piece.min(len - at))
                        .and_then(|bytes| sink.write_all_at(at, &bytes));
                    if let Err(e) = got {
                        failure
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    Box::new(sink).commit()?;
    Ok(len)
}

/// Fills `buf` with the bytes `offset .. offset + buf.len()` of `source`,
/// in pieces of the source's request size read by as many threads as it
/// likes at once (what one rank of a distributed load does with its
/// share). The range is checked against the source's size first; the
/// first failure stops every reader and is returned.
pub fn read_exact_parallel(source: &dyn RangeSource, offset: u64, buf: &mut [u8]) -> Result<()> {
    source.check_range(offset, buf.len())?;
    let hints = source.hints();
    let piece = hints.request_size.max(1 << 20);
    let pieces: Vec<(u64, &mut [u8])> = buf
        .chunks_mut(piece)
        .enumerate()
        .map(|(i, chunk)| (offset + (i * piece) as u64, chunk))
        .collect();
    let threads = hints.concurrency.clamp(1, 32).min(pieces.len());
    if threads <= 1 {
        return pieces
            .into_iter()
            .try_for_each(|(at, chunk)| source.read_exact_at(at, chunk));
    }
    let queue = std::sync::Mutex::new(pieces.into_iter());
    let failure = std::sync::Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    if failure.lock().is_ok_and(|f| f.is_some()) {
                        return;
                    }
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                    let Some((at, chunk)) = next else { return };
                    if let Err(e) = source.read_exact_at(at, chunk) {
                        failure
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    match failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Copies the object `from` to `to` without moving its bytes through this
/// process where the store allows: a hard link between local paths (a
/// plain copy across file systems), a server-side copy within one bucket
/// of S3, GCS or Azure. The destination appears whole or not at all; an
/// existing one is replaced. Other pairs answer [`IoError::Unsupported`]:
/// stream those through a source and a sink (`tensorizer::copy_file`).
pub fn copy_object(from: &str, to: &str, options: &StorageOptions) -> Result<()> {
    let _ = options;
    match (Backend::of(from)?, Backend::of(to)?) {
        (Backend::Local(from), Backend::Local(to)) => local::link_or_copy(from, to),
        #[cfg(feature = "object-store")]
        (Backend::Object, Backend::Object) => match cloud::copy(from, to, options)? {
            Some(()) => Ok(()),
            None => Err(no_direct_copy(from, to)),
        },
        _ => Err(no_direct_copy(from, to)),
    }
}

fn no_direct_copy(from: &str, to: &str) -> IoError {
    IoError::Unsupported {
        uri: to.to_owned(),
        message: format!(
            "no direct copy from {from}: both ends must be local paths, \
             or in one bucket of one object store"
        ),
    }
}

/// Which kind of storage a URI names.
enum Backend<'a> {
    Local(&'a Path),
    Http,
    Redis,
    /// S3, GCS or Azure Blob.
    #[cfg(feature = "object-store")]
    Object,
}

impl<'a> Backend<'a> {
    fn of(uri: &'a str) -> Result<Self> {
        let Some(scheme) = scheme(uri) else {
            return Ok(Self::Local(Path::new(uri)));
        };
        if azure::is_azure_uri(uri) {
            return object_backend(uri, "azure");
        }
        Ok(match scheme.as_str() {
            "file" => Self::Local(Path::new(&uri[7..])),
            "http" | "https" => Self::Http,
            "redis" => Self::Redis,
            "s3" => return object_backend(uri, "s3"),
            "gs" | "gcs" => return object_backend(uri, "gcs"),
            // A drive letter, `C://`, is a path.
            s if s.len() == 1 => Self::Local(Path::new(uri)),
            other => return Err(unknown_scheme(uri, other)),
        })
    }
}

/// The object-store backend when this build has `feature`, else an error
/// naming the feature.
fn object_backend<'a>(uri: &str, feature: &str) -> Result<Backend<'a>> {
    let enabled = match feature {
        "s3" => cfg!(feature = "s3"),
        "gcs" => cfg!(feature = "gcs"),
        _ => cfg!(feature = "azure"),
    };
    #[cfg(feature = "object-store")]
    if enabled {
        return Ok(Backend::Object);
    }
    let _ = enabled;
    Err(feature_off(uri, feature))
}

#[allow(dead_code, reason = "unused when every backend feature is on")]
fn feature_off(uri: &str, feature: &str) -> IoError {
    IoError::Unsupported {
        uri: uri.to_owned(),
        message: format!(
            "this URI needs the cargo feature `{feature}` of tensorizer (or tensorizer-io)"
        ),
    }
}

fn unknown_scheme(uri: &str, scheme: &str) -> IoError {
    IoError::Unsupported {
        uri: uri.to_owned(),
        message: format!(
            "unknown URI scheme {scheme:?} (supported: file, http, https, s3, gs, az, abfs, abfss, redis, or a plain path)"
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
