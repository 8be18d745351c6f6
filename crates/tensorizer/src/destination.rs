//! Where the loader puts tensor data: host memory ([`Tensor`]s), buffers
//! the caller owns, or, in `tensorizer-cuda`, pinned staging memory on its
//! way to a GPU.
//!
//! The loader asks the destination for a buffer per tensor, fills it (read,
//! decrypted, hashes checked) and hands it back with [`Destination::complete`].
//! A destination that recycles buffers bounds the memory of a load: its
//! `allocate` may block until an earlier buffer has been completed and
//! released.

use std::collections::HashMap;
use std::ops::DerefMut;
use std::sync::Mutex;

use tensorizer_format::{Dtype, DtypeString, IndexEntry, Shape, TensorPath, TensorType};

use crate::buffer::AlignedBuffer;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Everything about a loaded tensor but its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Name.
    pub path: TensorPath,
    /// Module index (Python `write_module`).
    pub module_idx: u16,
    /// Parameter, buffer or state-dict entry.
    pub tensor_type: TensorType,
    /// Dtype with its stored spelling.
    pub dtype: DtypeString,
    /// Shape.
    pub shape: Shape,
    /// A meta tensor (no data stored; the buffer was zero-filled).
    pub meta: bool,
}

/// A sink for loaded tensors; see the module docs.
pub trait Destination: Sync {
    /// The memory one tensor's bytes are written to.
    type Buffer: DerefMut<Target = [u8]> + Send;

    /// A buffer of exactly `len` bytes for tensor `index` (file order)
    /// described by `entry`. May block to bound memory in flight.
    fn allocate(&self, index: usize, entry: &IndexEntry, len: usize) -> Result<Self::Buffer>;

    /// Tensor `index` is in `buffer`, decrypted and verified.
    fn complete(&self, index: usize, info: TensorInfo, buffer: Self::Buffer) -> Result<()>;

    /// The largest buffer `allocate` may be asked for (default: no limit).
    /// A larger tensor arrives in pieces of at most this size, each handed
    /// over with [`Destination::complete_piece`] as soon as it is read and
    /// decrypted, so a fixed ring of small staging buffers can carry tensors
    /// of any size.
    fn max_buffer(&self) -> usize {
        usize::MAX
    }

    /// How many buffers may be out at once, when `allocate` blocks beyond
    /// that (a staging ring): a load that makes readers wait for one
    /// another (hashing a whole file in order) keeps fewer readers than
    /// this. Default: no limit.
    fn buffers_limit(&self) -> Option<usize> {
        None
    }

    /// The load failed: wake anything waiting for a buffer that will now
    /// never be completed. Default: nothing to wake.
    fn abandon(&self) {}

    /// Bytes `offset..offset + buffer.len()` of tensor `index`, one piece
    /// of a tensor larger than [`Destination::max_buffer`]. The tensor's
    /// hashes cover all its pieces: they are checked after the last one,
    /// and only then is [`Destination::complete_in_pieces`] called; if they
    /// fail, the load fails and the pieces already delivered must not be
    /// used.
    fn complete_piece(&self, index: usize, offset: usize, buffer: Self::Buffer) -> Result<()> {
        let _ = (offset, buffer);
        Err(Error::PiecesUnsupported {
            index,
            limit: self.max_buffer() as u64,
        })
    }

    /// Every piece of tensor `index` was delivered and its hashes match.
    fn complete_in_pieces(&self, index: usize, info: TensorInfo) -> Result<()> {
        let _ = (index, info);
        Ok(())
    }

    /// Whether [`Destination::allocate`] hands out zeroed memory.
    fn allocates_zeroed(&self) -> bool {
        false
    }

    /// Tensor `index` is a meta tensor (nothing stored: `len` zero bytes),
    /// its header verified. The default fills a buffer with zeros (unless
    /// it comes zeroed: fresh pages are never touched) and completes it;
    /// a destination that needs no bytes overrides it.
    fn complete_meta(
        &self,
        index: usize,
        entry: &IndexEntry,
        info: TensorInfo,
        len: usize,
    ) -> Result<()> {
        let mut data = self.allocate(index, entry, len)?;
        if !self.allocates_zeroed() {
            data.fill(0);
        }
        self.complete(index, info, data)
    }
}

/// Fresh 64-byte aligned host buffers, kept as [`Tensor`]s.
#[derive(Debug, Default)]
pub(crate) struct HostMemory {
    pub(crate) cast: Option<Dtype>,
    loaded: Mutex<HashMap<usize, Tensor>>,
}

impl HostMemory {
    pub(crate) fn new(cast: Option<Dtype>) -> Self {
        Self {
            cast,
            loaded: Mutex::default(),
        }
    }

    /// The loaded tensors, in the order of `indices`.
    pub(crate) fn take(self, indices: &[usize]) -> Vec<Tensor> {
        let mut loaded = self.loaded.into_inner().unwrap_or_else(|e| e.into_inner());
        indices.iter().filter_map(|i| loaded.remove(i)).collect()
    }
}

impl Destination for HostMemory {
    type Buffer = AlignedBuffer;

    fn allocate(&self, _: usize, entry: &IndexEntry, len: usize) -> Result<AlignedBuffer> {
        AlignedBuffer::zeroed(len).ok_or_else(|| Error::Allocation {
            path: "<host memory>".into(),
            tensor: entry.name.to_string(),
            bytes: len as u64,
        })
    }

    fn allocates_zeroed(&self) -> bool {
        true
    }

    fn complete(&self, index: usize, info: TensorInfo, data: AlignedBuffer) -> Result<()> {
        let tensor = Tensor::from_parts(info, data);
        let tensor = match self.cast {
            Some(to)
                if to != tensor.dtype()
                    && matches!(
                        tensor.dtype(),
                        Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64
                    ) =>
            {
                tensor.cast(to)?
            }
            _ => tensor,
        };
        self.loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(index, tensor);
        Ok(())
    }
}

/// The caller's own buffers, one per tensor, each exactly the tensor's size
/// (see [`crate::Deserializer::read_into`]).
#[derive(Debug)]
pub(crate) struct CallerBuffers<'a> {
    buffers: Mutex<HashMap<usize, &'a mut [u8]>>,
    infos: Mutex<Vec<(usize, TensorInfo)>>,
}

impl<'a> CallerBuffers<'a> {
    pub(crate) fn new(buffers: HashMap<usize, &'a mut [u8]>) -> Self {
        Self {
            buffers: Mutex::new(buffers),
            infos: Mutex::default(),
        }
    }

    /// What was loaded, in file order.
    pub(crate) fn into_infos(self) -> Vec<TensorInfo> {
        let mut infos = self.infos.into_inner().unwrap_or_else(|e| e.into_inner());
        infos.sort_by_key(|(i, _)| *i);
        infos.into_iter().map(|(_, info)| info).collect()
    }
}

impl<'a> Destination for CallerBuffers<'a> {
    type Buffer = &'a mut [u8];

    fn allocate(&self, index: usize, entry: &IndexEntry, len: usize) -> Result<&'a mut [u8]> {
        let buffer = self
            .buffers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&index)
            .ok_or_else(|| Error::NotFound {
                path: "<caller buffers>".into(),
                name: entry.name.to_string(),
            })?;
        if buffer.len() != len {
            return Err(Error::BufferSize {
                tensor: entry.name.to_string(),
                given: buffer.len() as u64,
                needed: len as u64,
            });
        }
        Ok(buffer)
    }

    fn complete(&self, index: usize, info: TensorInfo, _: &'a mut [u8]) -> Result<()> {
        self.infos
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((index, info));
        Ok(())
    }
}

/// Host buffers handed to a callback as soon as each tensor is loaded.
pub(crate) struct Callback<F> {
    pub(crate) consume: Mutex<F>,
    pub(crate) cast: Option<Dtype>,
}

impl<F: FnMut(Tensor) -> Result<()> + Send> Destination for Callback<F> {
    type Buffer = AlignedBuffer;

    fn allocate(&self, index: usize, entry: &IndexEntry, len: usize) -> Result<AlignedBuffer> {
        HostMemory::new(None).allocate(index, entry, len)
    }

    fn complete(&self, index: usize, info: TensorInfo, data: AlignedBuffer) -> Result<()> {
        let host = HostMemory::new(self.cast);
        host.complete(index, info, data)?;
        let tensor = host.take(&[index]).pop().expect("completed above");
        (self.consume.lock().unwrap_or_else(|e| e.into_inner()))(tensor)
    }
}

/// Pieces of at most this size carry a checked tensor (bounds the memory of
/// `Deserializer::check` whatever the tensor sizes).
const CHECK_PIECE: usize = 64 << 20;

/// The largest meta tensor whose (all-zero) bytes a checker hashes.
const META_SHA256_LIMIT: usize = 64 << 20;

/// A tensor that passed its checks, and the SHA-256 of its bytes when
/// asked for.
pub(crate) type Checked = (TensorInfo, Option<[u8; 32]>);

/// Takes tensors only to check them: buffers are reused once the loader
/// has verified what they held (fresh memory costs page faults, on some VMs
/// as much as hashing); optionally hashes each tensor's bytes alone.
pub(crate) struct Checker {
    data_sha256: bool,
    /// Buffers of [`CHECK_PIECE`] bytes free for the next tensor or piece;
    /// at most one per reader is ever in use.
    free: Mutex<Vec<AlignedBuffer>>,
    /// Tensors (by index) in progress: the hash of their pieces so far.
    partial: Mutex<HashMap<usize, tensorizer_format::TensorHasher>>,
    /// Tensors checked, with their data's SHA-256 when asked for.
    checked: Mutex<HashMap<usize, Checked>>,
}

/// The first `len` bytes of a reused buffer.
pub(crate) struct Reused {
    buffer: AlignedBuffer,
    len: usize,
}

impl std::ops::Deref for Reused {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buffer[..self.len]
    }
}

impl std::ops::DerefMut for Reused {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buffer[..self.len]
    }
}

impl Checker {
    pub(crate) fn new(data_sha256: bool) -> Self {
        Self {
            data_sha256,
            free: Mutex::default(),
            partial: Mutex::default(),
            checked: Mutex::default(),
        }
    }

    pub(crate) fn into_checked(self) -> HashMap<usize, Checked> {
        self.checked.into_inner().unwrap_or_else(|e| e.into_inner())
    }

    fn give_back(&self, used: Reused) {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(used.buffer);
    }

    fn digest(hasher: tensorizer_format::TensorHasher) -> Option<[u8; 32]> {
        hasher.finish().into_iter().find_map(|h| match h {
            tensorizer_format::StoredHash::Sha256(d) => Some(d),
            _ => None,
        })
    }

    fn hasher() -> tensorizer_format::TensorHasher {
        tensorizer_format::TensorHasher::new([tensorizer_format::HashKind::Sha256])
    }
}

impl Destination for Checker {
    type Buffer = Reused;

    fn allocate(&self, index: usize, entry: &IndexEntry, len: usize) -> Result<Reused> {
        let reused = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let buffer = match reused {
            Some(buffer) => buffer,
            None => HostMemory::new(None).allocate(index, entry, CHECK_PIECE.max(len))?,
        };
        Ok(Reused { buffer, len })
    }

    fn complete(&self, index: usize, info: TensorInfo, data: Reused) -> Result<()> {
        let digest = self.data_sha256.then(|| {
            let mut h = Self::hasher();
            h.update(&data);
            Self::digest(h)
        });
        self.give_back(data);
        self.checked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(index, (info, digest.flatten()));
        Ok(())
    }

    fn max_buffer(&self) -> usize {
        CHECK_PIECE
    }

    /// A meta tensor is checked by its header alone: no buffer (a 4 KB
    /// file of meta tensors claimed 2 GiB here), its SHA-256 computed over
    /// zeros streamed from one small block, up to [`META_SHA256_LIMIT`]
    /// bytes (a hostile size must not cost hours of hashing; beyond it
    /// the digest is not given).
    fn complete_meta(
        &self,
        index: usize,
        _: &IndexEntry,
        info: TensorInfo,
        len: usize,
    ) -> Result<()> {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let digest = (self.data_sha256 && len <= META_SHA256_LIMIT).then(|| {
            let mut h = Self::hasher();
            let mut left = len;
            while left > 0 {
                let n = left.min(ZEROS.len());
                h.update(&ZEROS[..n]);
                left -= n;
            }
            Self::digest(h)
        });
        self.checked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(index, (info, digest.flatten()));
        Ok(())
    }

    fn complete_piece(&self, index: usize, _: usize, data: Reused) -> Result<()> {
        // A tensor's pieces arrive in order, from one thread.
        if self.data_sha256 {
            let mut partial = self.partial.lock().unwrap_or_else(|e| e.into_inner());
            let mut hasher = partial.remove(&index).unwrap_or_else(Self::hasher);
            drop(partial);
            hasher.update(&data);
            self.partial
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(index, hasher);
        }
        self.give_back(data);
        Ok(())
    }

    fn complete_in_pieces(&self, index: usize, info: TensorInfo) -> Result<()> {
        let hasher = self
            .partial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&index);
        self.checked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(index, (info, hasher.and_then(Self::digest)));
        Ok(())
    }
}
