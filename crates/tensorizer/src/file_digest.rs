//! A whole file's SHA-256, computed in file order while a parallel load
//! delivers its bytes in any order.
//!
//! Safetensors stores no hashes, but the Hugging Face cache names every
//! weight file after its SHA-256 (`blobs/<sha256>`), and a caller may know
//! the digest from elsewhere. [`InOrder`] wraps the load's destination:
//! each buffer is hashed when its bytes are the next ones of the file, so a
//! reader that finished early waits (holding its buffer) until the bytes
//! before it are hashed. Work is handed out in file order, so the reader of
//! the earliest unhashed bytes never waits on the hash; with a destination
//! whose buffers are few (a staging ring) the loader keeps fewer readers
//! than buffers, so that reader can always get one.

use std::sync::{Condvar, Mutex};

use sha2::{Digest, Sha256};
use tensorizer_format::IndexEntry;

use crate::destination::{Destination, TensorInfo};
use crate::error::{Error, Result};

/// The file's hash as far as it got.
struct State {
    /// Offset of the next byte to hash.
    next: u64,
    hasher: Sha256,
    /// The load failed: nothing more will be hashed.
    abandoned: bool,
}

/// A destination that hashes the file's bytes in order on their way to
/// `inner` (see the module docs).
pub(crate) struct InOrder<'a, D> {
    inner: &'a D,
    entries: &'a [IndexEntry],
    state: Mutex<State>,
    turn: Condvar,
}

impl<'a, D: Destination> InOrder<'a, D> {
    /// Starts the hash with the file's first bytes, `prologue` (everything
    /// before the first tensor's data).
    pub(crate) fn new(inner: &'a D, entries: &'a [IndexEntry], prologue: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(prologue);
        Self {
            inner,
            entries,
            state: Mutex::new(State {
                next: prologue.len() as u64,
                hasher,
                abandoned: false,
            }),
            turn: Condvar::new(),
        }
    }

    /// The digest, once every byte up to `file_len` was hashed; `None`
    /// when the load did not deliver them all.
    pub(crate) fn finish(self, file_len: u64) -> Option<[u8; 32]> {
        let state = self.state.into_inner().unwrap_or_else(|e| e.into_inner());
        (state.next == file_len && !state.abandoned).then(|| state.hasher.finalize().into())
    }

    /// Hashes `bytes`, which start at file offset `at`, when their turn
    /// comes.
    fn hash(&self, at: u64, bytes: &[u8], tensor: &IndexEntry) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while state.next != at && !state.abandoned {
            state = self.turn.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        if state.abandoned {
            return Err(Error::NotChecked {
                tensor: tensor.name.to_string(),
            });
        }
        state.hasher.update(bytes);
        state.next += bytes.len() as u64;
        drop(state);
        self.turn.notify_all();
        Ok(())
    }
}

impl<D: Destination> Destination for InOrder<'_, D> {
    type Buffer = D::Buffer;

    fn allocate(&self, index: usize, entry: &IndexEntry, len: usize) -> Result<Self::Buffer> {
        self.inner.allocate(index, entry, len)
    }

    fn complete(&self, index: usize, info: TensorInfo, buffer: Self::Buffer) -> Result<()> {
        let entry = &self.entries[index];
        self.hash(entry.data_offset, &buffer, entry)?;
        self.inner.complete(index, info, buffer)
    }

    fn max_buffer(&self) -> usize {
        self.inner.max_buffer()
    }

    fn buffers_limit(&self) -> Option<usize> {
        self.inner.buffers_limit()
    }

    fn complete_piece(&self, index: usize, offset: usize, buffer: Self::Buffer) -> Result<()> {
        let entry = &self.entries[index];
        self.hash(entry.data_offset + offset as u64, &buffer, entry)?;
        self.inner.complete_piece(index, offset, buffer)
    }

    fn complete_in_pieces(&self, index: usize, info: TensorInfo) -> Result<()> {
        self.inner.complete_in_pieces(index, info)
    }

    fn allocates_zeroed(&self) -> bool {
        self.inner.allocates_zeroed()
    }

    fn complete_meta(
        &self,
        index: usize,
        entry: &IndexEntry,
        info: TensorInfo,
        len: usize,
    ) -> Result<()> {
        // Meta tensors store no bytes: nothing of the file to hash.
        self.inner.complete_meta(index, entry, info, len)
    }

    fn abandon(&self) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .abandoned = true;
        self.turn.notify_all();
        self.inner.abandon();
    }
}

/// Parses 64 hex digits (a Hugging Face blob name, a `--sha256` argument).
pub fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}
