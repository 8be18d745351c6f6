//! Multipart uploads to an object store, committed atomically.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use object_store::multipart::PartId;
use object_store::{ObjectStoreExt, PutPayload};

use super::{Object, Service, Upload};
use crate::error::{IoError, Result};
use crate::runtime::{block, runtime, spawn, wait};
use crate::{FileLayout, RetryPolicy, Sink};

/// A new object in S3, GCS or Azure Blob, written as a multipart upload
/// (Azure: blocks, then a block list; GCS: a resumable upload). Parts are
/// uploaded as soon as they are filled, in parallel, whatever order the
/// bytes arrive in (GCS: in order, as each next part is filled); `commit`
/// completes the upload, so the object appears at once and whole, and
/// dropping an uncommitted sink aborts it, so the previous object stays.
/// An object that fits in one part is a single PUT.
#[derive(Debug)]
pub struct ObjectSink {
    object: Object,
    part_size: OnceLock<u64>,
    /// The multipart upload id, or the resumable session URI.
    upload: Mutex<Option<String>>,
    state: Mutex<Parts>,
    /// Full parts waiting for their turn, for stores that take parts in order.
    in_order: Mutex<InOrder>,
    policy: RetryPolicy,
}

#[derive(Debug, Default)]
#[cfg_attr(not(feature = "gcs"), allow(dead_code))]
struct InOrder {
    /// The next part to send.
    next: usize,
    waiting: BTreeMap<usize, Waiting>,
    /// Bytes of waiting parts held in memory.
    in_memory: u64,
    /// Where parts wait beyond [`WAITING_IN_MEMORY`]: an unnamed temporary
    /// file (gone with the sink). A streaming writer fills the first part
    /// last, so on an in-order store every later part waits for it.
    spill: Option<std::fs::File>,
    spill_end: u64,
}

/// Parts an in-order store keeps waiting in memory before the rest wait
/// on local disk.
#[cfg(feature = "gcs")]
const WAITING_IN_MEMORY: u64 = 4;

#[derive(Debug)]
#[cfg_attr(not(feature = "gcs"), allow(dead_code))]
enum Waiting {
    Memory(Vec<u8>),
    Spilled { at: u64, len: usize },
}

#[cfg(feature = "gcs")]
impl InOrder {
    /// Queues part `i`, in memory while under the bound, else on disk.
    fn push(&mut self, i: usize, data: Vec<u8>, part_size: u64, uri: &str) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let len = data.len() as u64;
        if self.in_memory + len <= WAITING_IN_MEMORY * part_size {
            self.in_memory += len;
            self.waiting.insert(i, Waiting::Memory(data));
            return Ok(());
        }
        let local = |action: &str| {
            let (uri, action) = (uri.to_owned(), action.to_owned());
            move |source| IoError::Local {
                uri,
                action,
                source,
            }
        };
        if self.spill.is_none() {
            self.spill = Some(tempfile::tempfile().map_err(local(
                "creating a temporary file for parts waiting their turn",
            ))?);
        }
        let file = self.spill.as_ref().expect("spill file");
        file.write_all_at(&data, self.spill_end)
            .map_err(local("keeping a waiting part on local disk"))?;
        self.waiting.insert(
            i,
            Waiting::Spilled {
                at: self.spill_end,
                len: data.len(),
            },
        );
        self.spill_end += len;
        Ok(())
    }

    /// Takes part `i` if it is waiting.
    fn take(&mut self, i: usize, uri: &str) -> Result<Option<Vec<u8>>> {
        use std::os::unix::fs::FileExt;
        match self.waiting.remove(&i) {
            None => Ok(None),
            Some(Waiting::Memory(data)) => {
                self.in_memory -= data.len() as u64;
                Ok(Some(data))
            }
            Some(Waiting::Spilled { at, len }) => {
                let mut data = vec![0; len];
                let file = self.spill.as_ref().expect("spill file");
                file.read_exact_at(&mut data, at)
                    .map_err(|source| IoError::Local {
                        uri: uri.to_owned(),
                        action: "reading back a waiting part".into(),
                        source,
                    })?;
                Ok(Some(data))
            }
        }
    }
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

impl ObjectSink {
    /// Prepares an upload to `object`, with parts of the size the caller
    /// asked for (default: the store's); nothing is sent until the first
    /// part is full.
    pub(crate) fn create(object: Object, policy: &RetryPolicy) -> Result<Self> {
        runtime()?;
        let rules = object.service.parts;
        let part_size = OnceLock::new();
        if let Some(n) = object.part_size {
            let _ = part_size.set(n.max(rules.min).next_multiple_of(rules.quantum));
        }
        Ok(Self {
            object,
            part_size,
            upload: Mutex::new(None),
            state: Mutex::new(Parts::default()),
            in_order: Mutex::new(InOrder::default()),
            policy: policy.clone(),
        })
    }

    /// Opens an upload to `s3://bucket/key`.
    #[cfg(feature = "s3")]
    pub fn s3(uri: &str, options: &crate::S3Options, policy: &RetryPolicy) -> Result<Self> {
        Self::create(
            crate::s3::object(uri, options, policy, &Default::default())?,
            policy,
        )
    }

    /// Opens an upload to `gs://bucket/key`.
    #[cfg(feature = "gcs")]
    pub fn gcs(uri: &str, options: &crate::GcsOptions, policy: &RetryPolicy) -> Result<Self> {
        Self::create(
            crate::gcs::object(uri, options, policy, &Default::default())?,
            policy,
        )
    }

    /// Opens an upload to `az://container/key` (and the other Azure forms).
    #[cfg(feature = "azure")]
    pub fn azure(uri: &str, options: &crate::AzureOptions, policy: &RetryPolicy) -> Result<Self> {
        Self::create(
            crate::azure::object(uri, options, policy, &Default::default())?,
            policy,
        )
    }

    /// The service, endpoint and credential source in use.
    pub fn service(&self) -> &Service {
        &self.object.service
    }

    fn part_size(&self) -> u64 {
        *self
            .part_size
            .get_or_init(|| self.object.service.parts.default)
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
        let id = match &self.object.upload {
            Upload::Multipart => block(
                async move { store.create_multipart(&path).await },
                &self.object.uri,
            )?
            .map_err(|e| self.object.error(0..0, &e, &self.policy))?,
            #[cfg(feature = "gcs")]
            Upload::GcsResumable(api) => {
                let api = api.clone();
                block(
                    async move { api.start(path.as_ref()).await },
                    &self.object.uri,
                )?
                .map_err(|f| self.object.failure(0..0, f, &self.policy))?
            }
        };
        *upload = Some(id.clone());
        Ok(id)
    }

    /// Uploads full parts: in parallel, or in order where the store wants.
    fn upload_parts(&self, parts: Vec<(usize, Vec<u8>)>) -> Result<()> {
        if parts.is_empty() {
            return Ok(());
        }
        #[cfg(feature = "gcs")]
        if let Upload::GcsResumable(api) = &self.object.upload {
            return self.send_in_order(api, parts, None);
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
                .map_err(|e| self.object.error(range, &e, &self.policy))?;
            self.state.lock().expect("parts lock").done.insert(i, part);
        }
        Ok(())
    }
}

#[cfg(feature = "gcs")]
impl ObjectSink {
    /// Queues `parts`, then sends every part whose turn has come. Before
    /// `commit` (`end` is `None`) the last part of an announced size waits,
    /// because the chunk that completes the object must say its size.
    fn send_in_order(
        &self,
        api: &std::sync::Arc<crate::gcs::JsonApi>,
        parts: Vec<(usize, Vec<u8>)>,
        end: Option<u64>,
    ) -> Result<()> {
        let session = self.upload_id()?;
        let size = self.part_size();
        let total = end.or(self.state.lock().expect("parts lock").len);
        let last = total.map(|t| (t.div_ceil(size) as usize).saturating_sub(1));
        // Held while sending: writers whose parts come later wait here,
        // which bounds the parts in memory.
        let mut queue = self.in_order.lock().expect("in-order lock");
        for (i, data) in parts {
            queue.push(i, data, size, &self.object.uri)?;
        }
        let mut completed = false;
        loop {
            let i = queue.next;
            let final_chunk = end.is_some() && Some(i) == last;
            if end.is_none() && Some(i) == last {
                break;
            }
            let Some(data) = queue.take(i, &self.object.uri)? else {
                break;
            };
            let offset = i as u64 * size;
            let range = offset..offset + data.len() as u64;
            let (api, session) = (api.clone(), session.clone());
            let total = if final_chunk { total } else { None };
            let data = bytes::Bytes::from(data);
            block(
                async move { api.put_chunk(&session, offset, data, total).await },
                &self.object.uri,
            )?
            .map_err(|f| self.object.failure(range, f, &self.policy))?;
            queue.next += 1;
            completed = final_chunk;
            let id = PartId {
                content_id: String::new(),
            };
            self.state.lock().expect("parts lock").done.insert(i, id);
        }
        if let (Some(end), false) = (end, completed) {
            if !queue.waiting.is_empty() || (queue.next as u64 * size) < end {
                return Err(IoError::Protocol {
                    uri: self.object.uri.clone(),
                    message: format!("part {} was never written; not committing", queue.next),
                });
            }
            // Everything went as middle chunks (or there was nothing): an
            // empty chunk states the size and completes the object.
            let api = api.clone();
            block(
                async move {
                    api.put_chunk(&session, end, bytes::Bytes::new(), Some(end))
                        .await
                },
                &self.object.uri,
            )?
            .map_err(|f| self.object.failure(end..end, f, &self.policy))?;
        }
        Ok(())
    }
}

impl Sink for ObjectSink {
    fn uri(&self) -> &str {
        &self.object.uri
    }

    fn reserve(&self, layout: &FileLayout) -> Result<()> {
        let rules = self.object.service.parts;
        let wanted = layout.len.div_ceil(rules.max_parts).div_ceil(1 << 20) << 20;
        let size = *self.part_size.get_or_init(|| rules.default.max(wanted));
        if size.saturating_mul(rules.max_parts) < layout.len {
            return Err(IoError::Unsupported {
                uri: self.object.uri.clone(),
                message: format!(
                    "{} bytes need more than {} parts of {size} bytes",
                    layout.len, rules.max_parts
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
                // A whole object that fits in one part waits for `commit`,
                // which sends it as a single PUT.
                let whole = i == 0 && total.is_some_and(|t| t <= part_len);
                if *filled >= part_len && !whole {
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
        // Full parts queued for an in-order store count as written.
        let queued: Vec<usize> = {
            let queue = self.in_order.lock().expect("in-order lock");
            queue.waiting.keys().copied().collect()
        };
        let (rest, end) = {
            let mut state = self.state.lock().expect("parts lock");
            let end = state.len.unwrap_or(state.end);
            let parts = end.div_ceil(size) as usize;
            for i in 0..parts {
                let want = size.min(end - i as u64 * size);
                let have = match (state.done.contains_key(&i), state.filling.get(&i)) {
                    (true, _) => want,
                    _ if queued.contains(&i) => want,
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
        #[cfg(feature = "gcs")]
        if let Upload::GcsResumable(api) = &self.object.upload {
            self.send_in_order(api, rest, Some(end))?;
            // Completed: nothing to cancel on drop.
            self.upload.lock().expect("upload lock").take();
            return Ok(());
        }
        let started = self.upload.lock().expect("upload lock").is_some();
        let (store, path) = (self.object.store.clone(), self.object.path.clone());
        if !started && rest.len() <= 1 {
            // Small object: one PUT, atomic by itself.
            let data = rest.into_iter().next().map(|(_, b)| b).unwrap_or_default();
            block(
                async move { store.put(&path, PutPayload::from(data)).await },
                &self.object.uri,
            )?
            .map_err(|e| self.object.error(0..end, &e, &self.policy))?;
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
        .map_err(|e| self.object.error(0..end, &e, &self.policy))?;
        // Completed: nothing to abort on drop.
        self.upload.lock().expect("upload lock").take();
        Ok(())
    }
}

impl Drop for ObjectSink {
    fn drop(&mut self) {
        let Some(id) = self.upload.get_mut().ok().and_then(Option::take) else {
            return;
        };
        let (store, path) = (self.object.store.clone(), self.object.path.clone());
        let aborted = match &self.object.upload {
            Upload::Multipart => block(
                async move {
                    store
                        .abort_multipart(&path, &id)
                        .await
                        .map_err(|e| e.to_string())
                },
                &self.object.uri,
            ),
            #[cfg(feature = "gcs")]
            Upload::GcsResumable(api) => {
                let api = api.clone();
                block(
                    async move { api.cancel(&id).await.map_err(|(m, _)| m) },
                    &self.object.uri,
                )
            }
        };
        match aborted {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(uri = %self.object.uri, "aborting the upload failed: {e}")
            }
            Err(e) => tracing::warn!(uri = %self.object.uri, "upload left open: {e}"),
        }
    }
}
