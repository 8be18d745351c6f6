//! S3 and S3-compatible object stores through `object_store` (Apache Arrow),
//! driven from synchronous code on a private tokio runtime.
//!
//! Reads are ranged GETs, a large read split into parallel requests.
//! Writes are multipart uploads whose parts are uploaded as soon as they are
//! filled, in parallel, whatever order the bytes arrive in; `commit`
//! completes the upload (the object appears at once, whole) and dropping an
//! uncommitted sink aborts it, so the previous object stays.
//! `object_store` retries 5xx, 429 and connection errors with backoff, and
//! resumes broken bodies; its limits come from our [`RetryPolicy`].

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ClientOptions, ObjectStoreExt, PutPayload, RetryConfig};

use super::{Addressing, Credentials, S3Config, S3Options};
use crate::error::{IoError, Result};
use crate::{FileLayout, RangeSource, ReadHints, RetryPolicy, Sink};

/// Smallest part S3 accepts (except the last).
const MIN_PART: u64 = 5 << 20;
/// Default part size: large enough for throughput, small enough to keep
/// a few in memory per writer thread.
const DEFAULT_PART: u64 = 16 << 20;
/// S3's limit on parts per upload.
const MAX_PARTS: u64 = 10_000;
/// Bytes per GET when a large read is split.
const REQUEST_SIZE: usize = 16 << 20;
/// GETs in flight for one large read.
const CONCURRENCY: usize = 8;

/// The runtime every S3 request runs on; a few workers suffice because
/// they only drive sockets, the bytes are copied by the calling thread.
fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<std::io::Result<tokio::runtime::Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .thread_name("tensorizer-s3")
                .enable_all()
                .build()
        })
        .as_ref()
        .map_err(|e| IoError::Unsupported {
            uri: "s3://".into(),
            message: format!("cannot start the S3 runtime: {e}"),
        })
}

/// Runs `fut` on the S3 runtime; the receiver yields its output. Waiting
/// on a std channel rather than `Runtime::block_on` works from any thread,
/// including one that belongs to the caller's own tokio runtime (where
/// `block_on` would panic); there it blocks that thread, so async callers
/// should still go through `spawn_blocking`.
fn spawn<T: Send + 'static>(
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<std::sync::mpsc::Receiver<T>> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime()?.spawn(async move {
        let _ = tx.send(fut.await);
    });
    Ok(rx)
}

/// Waits for a request started with [`spawn`].
fn wait<T>(rx: std::sync::mpsc::Receiver<T>, uri: &str) -> Result<T> {
    rx.recv().map_err(|_| IoError::Protocol {
        uri: uri.to_owned(),
        message: "the S3 runtime dropped a request (a task panicked)".into(),
    })
}

/// Runs `fut` on the S3 runtime and waits for it.
fn block<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static, uri: &str) -> Result<T> {
    wait(spawn(fut)?, uri)
}

/// `s3://bucket/key` → (bucket, key).
pub fn parse_s3_uri(uri: &str) -> Result<(String, String)> {
    let bad = |why: &str| IoError::Unsupported {
        uri: uri.to_owned(),
        message: format!("not an S3 URI ({why}); expected s3://bucket/key"),
    };
    let rest = uri
        .split_once("://")
        .filter(|(s, _)| s.eq_ignore_ascii_case("s3"))
        .ok_or_else(|| bad("scheme is not s3"))?
        .1;
    let (bucket, key) = rest.split_once('/').ok_or_else(|| bad("no key"))?;
    if bucket.is_empty() {
        return Err(bad("empty bucket name"));
    }
    if key.is_empty() || key.ends_with('/') {
        return Err(bad("the key names a folder, not an object"));
    }
    Ok((bucket.to_owned(), key.to_owned()))
}

/// One bucket of one service, and a key in it.
#[derive(Debug, Clone)]
struct Object {
    uri: String,
    store: Arc<AmazonS3>,
    path: ObjectPath,
    config: S3Config,
}

impl Object {
    fn new(uri: &str, options: &S3Options, policy: &RetryPolicy) -> Result<Self> {
        let (bucket, key) = parse_s3_uri(uri)?;
        let config = S3Config::resolve(options).map_err(|e| match e {
            IoError::Unsupported { message, .. } => IoError::Unsupported {
                uri: uri.to_owned(),
                message,
            },
            other => other,
        })?;
        let store = build_store(&bucket, &config, policy).map_err(|e| IoError::Unsupported {
            uri: uri.to_owned(),
            message: format!("cannot configure the S3 client: {e}"),
        })?;
        tracing::debug!(uri, endpoint = ?config.bucket_endpoint(&bucket), credentials = %config.credentials_from, "S3 object");
        Ok(Self {
            uri: uri.to_owned(),
            store: Arc::new(store),
            path: ObjectPath::from(key),
            config,
        })
    }

    /// An `IoError` for a failed request on `range`, with a hint for the
    /// failures a user can fix.
    fn error(&self, range: Range<u64>, e: &object_store::Error, policy_attempts: u32) -> IoError {
        use object_store::Error as E;
        let (hint, status) = match e {
            E::NotFound { .. } => (" (no such object or bucket)".to_owned(), Some(404)),
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => (
                format!(
                    " (access denied: check credentials; used: {})",
                    self.config.credentials_from
                ),
                Some(403),
            ),
            _ => (String::new(), None),
        };
        IoError::Remote {
            uri: self.uri.clone(),
            start: range.start,
            end: range.end,
            message: format!("{e}{hint}"),
            attempts: policy_attempts,
            status,
        }
    }
}

fn build_store(
    bucket: &str,
    config: &S3Config,
    policy: &RetryPolicy,
) -> object_store::Result<AmazonS3> {
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: policy.base_delay,
            max_backoff: policy.max_delay,
            base: 2.0,
        },
        max_retries: policy.max_attempts.saturating_sub(1) as usize,
        retry_timeout: policy.deadline,
    };
    let client = ClientOptions::new()
        .with_allow_http(true)
        .with_connect_timeout(policy.connect_timeout)
        .with_timeout(policy.request_timeout);
    let mut builder = match config.credentials {
        // The AWS chain (web identity, container credentials) from the environment.
        Credentials::Ambient => AmazonS3Builder::from_env(),
        _ => AmazonS3Builder::new(),
    }
    .with_bucket_name(bucket)
    .with_region(&config.region)
    .with_retry(retry)
    .with_client_options(client)
    .with_virtual_hosted_style_request(config.addressing == Addressing::VirtualHosted);
    if let Some(endpoint) = config.bucket_endpoint(bucket) {
        builder = builder.with_endpoint(endpoint);
    }
    builder = match &config.credentials {
        Credentials::Anonymous => builder.with_skip_signature(true),
        Credentials::Keys {
            access_key_id,
            secret_access_key,
            session_token,
        } => {
            let b = builder
                .with_access_key_id(access_key_id)
                .with_secret_access_key(secret_access_key);
            match session_token {
                Some(t) => b.with_token(t),
                None => b,
            }
        }
        Credentials::Ambient => builder,
    };
    builder.build()
}

/// Whether `s3://bucket/key` exists (one HEAD request; 404 is `false`).
pub(crate) fn exists(uri: &str, options: &S3Options, policy: &RetryPolicy) -> Result<bool> {
    let object = Object::new(uri, options, policy)?;
    let (store, path) = (object.store.clone(), object.path.clone());
    match block(async move { store.head(&path).await }, uri)? {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(object.error(0..0, &e, policy.max_attempts)),
    }
}

/// Server-side copy of one S3 object onto another in the same service
/// (`CopyObject`): the bytes never pass through this process.
pub(crate) fn copy(from: &str, to: &str, options: &S3Options, policy: &RetryPolicy) -> Result<()> {
    let source = Object::new(from, options, policy)?;
    let dest = Object::new(to, options, policy)?;
    let (from_bucket, _) = parse_s3_uri(from)?;
    let (to_bucket, _) = parse_s3_uri(to)?;
    if from_bucket != to_bucket {
        return Err(IoError::Unsupported {
            uri: to.to_owned(),
            message: format!("server-side copies stay in one bucket; {from} is in {from_bucket}"),
        });
    }
    let (store, from_path, to_path) = (dest.store.clone(), source.path.clone(), dest.path.clone());
    block(async move { store.copy(&from_path, &to_path).await }, to)?
        .map_err(|e| dest.error(0..0, &e, policy.max_attempts))
}

/// An object in S3 or an S3-compatible store, read with ranged GETs.
#[derive(Debug)]
pub struct S3Source {
    object: Object,
    len: u64,
    policy: RetryPolicy,
}

impl S3Source {
    /// Opens `s3://bucket/key`: resolves credentials and endpoint, and asks
    /// the object's size (one HEAD request).
    pub fn open(uri: &str, options: &S3Options, policy: &RetryPolicy) -> Result<Self> {
        let object = Object::new(uri, options, policy)?;
        let (store, path) = (object.store.clone(), object.path.clone());
        let meta = block(async move { store.head(&path).await }, uri)?
            .map_err(|e| object.error(0..0, &e, policy.max_attempts))?;
        Ok(Self {
            object,
            len: meta.size,
            policy: policy.clone(),
        })
    }

    /// The resolved configuration (endpoint, region, where the credentials came from).
    pub fn config(&self) -> &S3Config {
        &self.object.config
    }
}

impl RangeSource for S3Source {
    fn uri(&self) -> &str {
        &self.object.uri
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(offset, buf.len())?;
        let pieces: Vec<(u64, &mut [u8])> = buf
            .chunks_mut(REQUEST_SIZE)
            .scan(offset, |at, chunk| {
                let start = *at;
                *at += chunk.len() as u64;
                Some((start, chunk))
            })
            .collect();
        let mut pieces = pieces.into_iter().peekable();
        while pieces.peek().is_some() {
            let window: Vec<_> = pieces.by_ref().take(CONCURRENCY).collect();
            let requests: Vec<_> = window
                .iter()
                .map(|(start, chunk)| {
                    let (store, path) = (self.object.store.clone(), self.object.path.clone());
                    let range = *start..*start + chunk.len() as u64;
                    spawn(async move { store.get_range(&path, range).await })
                })
                .collect::<Result<_>>()?;
            for (request, (start, chunk)) in requests.into_iter().zip(window) {
                let range = start..start + chunk.len() as u64;
                let bytes = wait(request, &self.object.uri)?.map_err(|e| {
                    self.object
                        .error(range.clone(), &e, self.policy.max_attempts)
                })?;
                if bytes.len() != chunk.len() {
                    return Err(IoError::Protocol {
                        uri: self.object.uri.clone(),
                        message: format!(
                            "bytes {}..{}: the server sent {} bytes for a {}-byte range",
                            range.start,
                            range.end,
                            bytes.len(),
                            chunk.len()
                        ),
                    });
                }
                chunk.copy_from_slice(&bytes);
            }
        }
        Ok(())
    }

    fn hints(&self) -> ReadHints {
        ReadHints {
            request_size: REQUEST_SIZE,
            concurrency: 16,
            block_size: REQUEST_SIZE,
        }
    }
}

/// A new S3 object, written as a multipart upload.
#[derive(Debug)]
pub struct S3Sink {
    object: Object,
    part_size: OnceLock<u64>,
    upload: Mutex<Option<String>>,
    state: Mutex<Parts>,
    policy: RetryPolicy,
}

#[derive(Debug, Default)]
struct Parts {
    /// Parts still being filled: buffer and bytes written so far.
    filling: BTreeMap<usize, (Vec<u8>, u64)>,
    /// Uploaded parts.
    done: BTreeMap<usize, PartId>,
    /// Size announced by `reserve`.
    len: Option<u64>,
    /// One past the highest byte written.
    end: u64,
}

impl S3Sink {
    /// Prepares an upload to `s3://bucket/key`; nothing is sent until the
    /// first part is full.
    pub fn create(uri: &str, options: &S3Options, policy: &RetryPolicy) -> Result<Self> {
        let object = Object::new(uri, options, policy)?;
        runtime()?;
        let part_size = OnceLock::new();
        if let Some(size) = options.part_size {
            let _ = part_size.set(size.max(MIN_PART));
        }
        Ok(Self {
            object,
            part_size,
            upload: Mutex::new(None),
            state: Mutex::new(Parts::default()),
            policy: policy.clone(),
        })
    }

    fn part_size(&self) -> u64 {
        *self.part_size.get_or_init(|| DEFAULT_PART)
    }

    /// Length of part `i`, knowing the total size if announced.
    fn part_len(&self, i: usize, total: Option<u64>) -> u64 {
        let size = self.part_size();
        let start = i as u64 * size;
        match total {
            Some(total) => size.min(total.saturating_sub(start)),
            None => size,
        }
    }

    fn upload_id(&self) -> Result<String> {
        let mut upload = self.upload.lock().expect("upload lock");
        if let Some(id) = upload.as_ref() {
            return Ok(id.clone());
        }
        let (store, path) = (self.object.store.clone(), self.object.path.clone());
        let id = block(
            async move { store.create_multipart(&path).await },
            &self.object.uri,
        )?
        .map_err(|e| self.object.error(0..0, &e, self.policy.max_attempts))?;
        *upload = Some(id.clone());
        Ok(id)
    }

    /// Uploads full parts in parallel.
    fn upload_parts(&self, parts: Vec<(usize, Vec<u8>)>) -> Result<()> {
        if parts.is_empty() {
            return Ok(());
        }
        let id = self.upload_id()?;
        let size = self.part_size();
        let requests: Vec<_> = parts
            .into_iter()
            .map(|(i, data)| {
                let (store, path, id) = (
                    self.object.store.clone(),
                    self.object.path.clone(),
                    id.clone(),
                );
                let range = i as u64 * size..i as u64 * size + data.len() as u64;
                let task =
                    spawn(
                        async move { store.put_part(&path, &id, i, PutPayload::from(data)).await },
                    );
                task.map(|task| (i, range, task))
            })
            .collect::<Result<_>>()?;
        for (i, range, task) in requests {
            let part = wait(task, &self.object.uri)?
                .map_err(|e| self.object.error(range, &e, self.policy.max_attempts))?;
            self.state.lock().expect("parts lock").done.insert(i, part);
        }
        Ok(())
    }
}

impl Sink for S3Sink {
    fn uri(&self) -> &str {
        &self.object.uri
    }

    fn reserve(&self, layout: &FileLayout) -> Result<()> {
        let wanted = layout.len.div_ceil(MAX_PARTS).div_ceil(1 << 20) << 20;
        let size = *self.part_size.get_or_init(|| DEFAULT_PART.max(wanted));
        if size.saturating_mul(MAX_PARTS) < layout.len {
            return Err(IoError::Unsupported {
                uri: self.object.uri.clone(),
                message: format!(
                    "{} bytes need more than {MAX_PARTS} parts of {size} bytes",
                    layout.len
                ),
            });
        }
        self.state.lock().expect("parts lock").len = Some(layout.len);
        Ok(())
    }

    fn write_all_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        let size = self.part_size();
        let mut full = Vec::new();
        {
            let mut state = self.state.lock().expect("parts lock");
            let end = offset + data.len() as u64;
            if let Some(len) = state.len.filter(|&len| end > len) {
                return Err(IoError::OutOfRange {
                    uri: self.object.uri.clone(),
                    start: offset,
                    end,
                    len,
                });
            }
            state.end = state.end.max(end);
            let total = state.len;
            let mut at = offset;
            let mut rest = data;
            while !rest.is_empty() {
                let i = (at / size) as usize;
                let within = (at % size) as usize;
                let part_len = self.part_len(i, total);
                let n = rest.len().min(part_len as usize - within);
                if state.done.contains_key(&i) {
                    return Err(IoError::Protocol {
                        uri: self.object.uri.clone(),
                        message: format!("bytes at {at} written twice (part {i} already uploaded)"),
                    });
                }
                let (buf, filled) = state
                    .filling
                    .entry(i)
                    .or_insert_with(|| (vec![0; part_len as usize], 0));
                buf[within..within + n].copy_from_slice(&rest[..n]);
                *filled += n as u64;
                if *filled >= part_len {
                    let (buf, _) = state.filling.remove(&i).expect("part present");
                    full.push((i, buf));
                }
                at += n as u64;
                rest = &rest[n..];
            }
        }
        // Uploads happen outside the lock so other writers keep filling parts.
        self.upload_parts(full)
    }

    fn commit(self: Box<Self>) -> Result<()> {
        let size = self.part_size();
        let (rest, end) = {
            let mut state = self.state.lock().expect("parts lock");
            let end = state.len.unwrap_or(state.end);
            let parts = end.div_ceil(size) as usize;
            for i in 0..parts {
                let want = size.min(end - i as u64 * size);
                let have = match (state.done.contains_key(&i), state.filling.get(&i)) {
                    (true, _) => want,
                    (false, Some((_, filled))) => *filled,
                    (false, None) => 0,
                };
                if have != want {
                    return Err(IoError::Protocol {
                        uri: self.object.uri.clone(),
                        message: format!(
                            "bytes {}..{} were never written; not committing",
                            i as u64 * size,
                            i as u64 * size + want
                        ),
                    });
                }
            }
            let rest: Vec<_> = std::mem::take(&mut state.filling)
                .into_iter()
                .map(|(i, (mut buf, _))| {
                    buf.truncate(size.min(end - i as u64 * size) as usize);
                    (i, buf)
                })
                .collect();
            (rest, end)
        };
        let started = self.upload.lock().expect("upload lock").is_some();
        let (store, path) = (self.object.store.clone(), self.object.path.clone());
        if !started && rest.len() <= 1 {
            // Small object: one PUT, atomic by itself.
            let data = rest.into_iter().next().map(|(_, b)| b).unwrap_or_default();
            block(
                async move { store.put(&path, PutPayload::from(data)).await },
                &self.object.uri,
            )?
            .map_err(|e| self.object.error(0..end, &e, self.policy.max_attempts))?;
            return Ok(());
        }
        self.upload_parts(rest)?;
        let id = self.upload_id()?;
        let parts: Vec<PartId> = std::mem::take(&mut self.state.lock().expect("parts lock").done)
            .into_values()
            .collect();
        let upload = id.clone();
        block(
            async move { store.complete_multipart(&path, &upload, parts).await },
            &self.object.uri,
        )?
        .map_err(|e| self.object.error(0..end, &e, self.policy.max_attempts))?;
        // Completed: nothing to abort on drop.
        self.upload.lock().expect("upload lock").take();
        Ok(())
    }
}

impl Drop for S3Sink {
    fn drop(&mut self) {
        let Some(id) = self.upload.get_mut().ok().and_then(Option::take) else {
            return;
        };
        let (store, path) = (self.object.store.clone(), self.object.path.clone());
        match block(
            async move { store.abort_multipart(&path, &id).await },
            &self.object.uri,
        ) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(uri = %self.object.uri, "aborting the multipart upload failed: {e}")
            }
            Err(e) => tracing::warn!(uri = %self.object.uri, "multipart upload left open: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_uris() {
        assert_eq!(
            parse_s3_uri("s3://bucket/vllm/m/v1/model.tensors").unwrap(),
            ("bucket".into(), "vllm/m/v1/model.tensors".into())
        );
        assert_eq!(parse_s3_uri("S3://b/k").unwrap(), ("b".into(), "k".into()));
        for bad in [
            "s3://bucket",
            "s3://bucket/",
            "s3:///key",
            "s3://b/dir/",
            "http://b/k",
        ] {
            assert!(parse_s3_uri(bad).is_err(), "{bad}");
        }
    }
}
