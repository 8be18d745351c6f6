//! Ranged reads from an object store, landing in the caller's buffer.

use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};

use super::{Object, Service};
use crate::error::{IoError, Result};
use crate::runtime::{block, runtime};
use crate::{RangeSource, ReadHints, RetryPolicy, read_range_growing};

/// Bytes per GET: per-request cost (a round trip, signing, a new TCP
/// window) stays small next to 16 MiB, and a larger request would only
/// delay the first byte of the pipeline.
const REQUEST_SIZE: usize = 16 << 20;
/// GETs in flight across the readers of one load.
const CONCURRENCY: usize = 16;

/// An object in S3, GCS or Azure Blob, read with ranged GETs.
#[derive(Debug)]
pub struct ObjectSource {
    object: Object,
    len: u64,
    policy: RetryPolicy,
}

impl ObjectSource {
    /// Opens an object of the store `object` names, asking its size (one
    /// HEAD request).
    pub(crate) fn open(object: Object, policy: &RetryPolicy) -> Result<Self> {
        let (store, path) = (object.store.clone(), object.path.clone());
        let meta = block(async move { store.head(&path).await }, &object.uri)?
            .map_err(|e| object.error(0..0, &e, policy))?;
        Ok(Self {
            object,
            len: meta.size,
            policy: policy.clone(),
        })
    }

    /// Opens `s3://bucket/key`.
    #[cfg(feature = "s3")]
    pub fn s3(uri: &str, options: &crate::S3Options, policy: &RetryPolicy) -> Result<Self> {
        Self::open(
            crate::s3::object(uri, options, policy, &Default::default())?,
            policy,
        )
    }

    /// Opens `gs://bucket/key`.
    #[cfg(feature = "gcs")]
    pub fn gcs(uri: &str, options: &crate::GcsOptions, policy: &RetryPolicy) -> Result<Self> {
        Self::open(
            crate::gcs::object(uri, options, policy, &Default::default())?,
            policy,
        )
    }

    /// Opens `az://container/key` (and the other Azure forms).
    #[cfg(feature = "azure")]
    pub fn azure(uri: &str, options: &crate::AzureOptions, policy: &RetryPolicy) -> Result<Self> {
        Self::open(
            crate::azure::object(uri, options, policy, &Default::default())?,
            policy,
        )
    }

    /// The service, endpoint and credential source in use.
    pub fn service(&self) -> &Service {
        &self.object.service
    }

    /// Starts a GET of `range` whose body chunks arrive on the returned
    /// channel as the network delivers them: the caller copies each chunk
    /// into place, so no whole-range buffer is ever assembled.
    fn start_get(
        &self,
        range: std::ops::Range<u64>,
    ) -> Result<tokio::sync::mpsc::Receiver<object_store::Result<bytes::Bytes>>> {
        use futures_util::StreamExt;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let (store, path) = (self.object.store.clone(), self.object.path.clone());
        runtime()?.spawn(async move {
            let options = GetOptions {
                range: Some(GetRange::Bounded(range)),
                ..Default::default()
            };
            let mut body = match store.get_opts(&path, options).await {
                Ok(result) => result.into_stream(),
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            while let Some(chunk) = body.next().await {
                let failed = chunk.is_err();
                if tx.send(chunk).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(rx)
    }

    /// Hands the body of a GET started by [`Self::start_get`] for `len`
    /// bytes at `start` to `put` chunk by chunk (with each chunk's offset in
    /// the range), refusing a body longer or shorter than the range.
    fn receive(
        &self,
        start: u64,
        len: usize,
        mut body: tokio::sync::mpsc::Receiver<object_store::Result<bytes::Bytes>>,
        mut put: impl FnMut(usize, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let range = start..start + len as u64;
        let mut filled = 0;
        while let Some(chunk) = crate::runtime::wait_on(body.recv()) {
            let chunk = chunk.map_err(|e| self.object.error(range.clone(), &e, &self.policy))?;
            if filled + chunk.len() > len {
                return Err(self.short_or_long(range, filled + chunk.len()));
            }
            put(filled, &chunk)?;
            filled += chunk.len();
        }
        if filled != len {
            return Err(self.short_or_long(range, filled));
        }
        Ok(())
    }

    fn short_or_long(&self, range: std::ops::Range<u64>, got: usize) -> IoError {
        IoError::Protocol {
            uri: self.object.uri.clone(),
            message: format!(
                "bytes {}..{}: the server sent {}{} bytes for a {}-byte range",
                range.start,
                range.end,
                if got as u64 > range.end - range.start {
                    "at least "
                } else {
                    ""
                },
                got,
                range.end - range.start
            ),
        }
    }
}

impl RangeSource for ObjectSource {
    fn uri(&self) -> &str {
        &self.object.uri
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(offset, buf.len())?;
        // A large read is split into requests in flight together; their
        // bodies wait in the socket buffers while earlier ones are copied.
        let mut pieces = buf
            .chunks_mut(REQUEST_SIZE)
            .scan(offset, |at, chunk| {
                let start = *at;
                *at += chunk.len() as u64;
                Some((start, chunk))
            })
            .peekable();
        while pieces.peek().is_some() {
            let window: Vec<_> = pieces.by_ref().take(CONCURRENCY).collect();
            let bodies = window
                .iter()
                .map(|(start, chunk)| self.start_get(*start..*start + chunk.len() as u64))
                .collect::<Result<Vec<_>>>()?;
            for (body, (start, chunk)) in bodies.into_iter().zip(window) {
                self.receive(start, chunk.len(), body, |at, bytes| {
                    chunk[at..at + bytes.len()].copy_from_slice(bytes);
                    Ok(())
                })?;
            }
        }
        Ok(())
    }

    /// One request, its buffer growing as the body arrives: the size asked
    /// for may come from a hostile index, and costs nothing until sent.
    fn read_range(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let n = self.check_range(offset, usize::try_from(len).unwrap_or(usize::MAX))?;
        if n > REQUEST_SIZE {
            return read_range_growing(self, offset, n);
        }
        let mut buf = Vec::new();
        let body = self.start_get(offset..offset + n as u64)?;
        self.receive(offset, n, body, |_, bytes| {
            crate::append_arrived(&mut buf, bytes, self.uri())
        })?;
        Ok(buf)
    }

    fn hints(&self) -> ReadHints {
        ReadHints {
            request_size: REQUEST_SIZE,
            concurrency: CONCURRENCY,
            block_size: REQUEST_SIZE,
        }
    }
}
