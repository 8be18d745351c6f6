//! Loading straight into GPU memory (feature `cuda`): the loader's reads
//! land in pinned staging buffers of `tensorizer-cuda`'s ring (decrypted
//! and hashed there, in place), and each completed tensor is copied to the
//! device asynchronously while the next ones are read.
//!
//! ```no_run
//! use tensorizer::Deserializer;
//! use tensorizer::cuda::CudaOptions;
//! let model = Deserializer::open("model.tensors")?.to_cuda(0, &CudaOptions::default())?;
//! for t in model.tensors() {
//!     println!("{} at {:#x} ({} bytes)", t.info.path, model.device_ptr(t), t.len);
//! }
//! # Ok::<(), tensorizer::Error>(())
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use tensorizer_cuda::{CudaError, DeviceBuffer, Gpu, device_count, driver_available};
use tensorizer_cuda::{Staging, StagingRing, arena_layout};
use tensorizer_format::{IndexEntry, TensorPath};

use crate::buffer::AlignedBuffer;
use crate::destination::{Destination, TensorInfo};
use crate::error::{Error, Result};
use crate::{Deserializer, Tensor};

/// Bytes per pinned staging buffer unless set: large enough for copies
/// near the link's peak, small enough that 4 of them stay modest.
const DEFAULT_STAGING_SIZE: usize = 64 << 20;

/// How a model is placed on a GPU.
#[derive(Debug, Clone)]
pub struct CudaOptions {
    /// Pinned staging buffers (host memory = buffers × size).
    pub staging_buffers: usize,
    /// Bytes per staging buffer (default 64 MiB); larger tensors are
    /// copied through the ring in pieces of this size.
    pub staging_size: Option<usize>,
    /// Copy streams.
    pub streams: usize,
    /// One device allocation for the whole model (default) or one per
    /// tensor (an out-of-memory error then names the tensor).
    pub arena: bool,
}

impl Default for CudaOptions {
    fn default() -> Self {
        Self {
            staging_buffers: 4,
            staging_size: None,
            streams: 4,
            arena: true,
        }
    }
}

/// A tensor in device memory.
#[derive(Debug, Clone)]
pub struct DeviceTensor {
    /// Name, dtype, shape, ...
    pub info: TensorInfo,
    /// Which of the model's device buffers holds it.
    buffer: usize,
    /// Byte offset in that buffer.
    pub offset: usize,
    /// Bytes.
    pub len: usize,
}

/// A model loaded onto one GPU.
#[derive(Debug)]
pub struct DeviceModel {
    buffers: Vec<Mutex<DeviceBuffer>>,
    tensors: Vec<DeviceTensor>,
    by_path: HashMap<TensorPath, usize>,
    gpu: Arc<Gpu>,
}

impl DeviceModel {
    /// The tensors, in file order.
    pub fn tensors(&self) -> &[DeviceTensor] {
        &self.tensors
    }

    /// The tensor called `name`.
    pub fn get(&self, name: impl Into<TensorPath>) -> Option<&DeviceTensor> {
        self.by_path.get(&name.into()).map(|&i| &self.tensors[i])
    }

    /// The GPU.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// The device pointer of `tensor`'s first byte.
    pub fn device_ptr(&self, tensor: &DeviceTensor) -> u64 {
        self.buffers[tensor.buffer]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .device_ptr(tensor.offset)
    }

    /// Copies `tensor` back into host memory.
    pub fn to_host(&self, tensor: &DeviceTensor) -> Result<Tensor> {
        let mut data = AlignedBuffer::zeroed(tensor.len).ok_or_else(|| Error::Allocation {
            path: "<device copy>".into(),
            tensor: tensor.info.path.to_string(),
            bytes: tensor.len as u64,
        })?;
        self.buffers[tensor.buffer]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .copy_to_host(tensor.offset, &mut data)
            .map_err(cuda_error(&tensor.info.path.to_string()))?;
        Ok(Tensor::from_parts(tensor.info.clone(), data))
    }
}

fn cuda_error(what: &str) -> impl FnOnce(CudaError) -> Error + '_ {
    move |source| Error::Cuda {
        what: what.to_owned(),
        source,
    }
}

/// The loader's destination: staging buffers out, copies in.
struct GpuDestination<'a> {
    gpu: &'a Arc<Gpu>,
    ring: StagingRing,
    buffers: &'a [Mutex<DeviceBuffer>],
    place: &'a HashMap<usize, (usize, usize)>,
    infos: Mutex<Vec<(usize, TensorInfo)>>,
}

impl Destination for GpuDestination<'_> {
    type Buffer = Staging;

    fn allocate(&self, _: usize, entry: &IndexEntry, len: usize) -> Result<Staging> {
        self.ring
            .take(len)
            .map_err(cuda_error(&entry.name.to_string()))
    }

    fn complete(&self, index: usize, info: TensorInfo, buffer: Staging) -> Result<()> {
        self.upload(index, 0, buffer, || info.path.to_string())?;
        self.complete_in_pieces(index, info)
    }

    fn max_buffer(&self) -> usize {
        self.ring.buffer_size()
    }

    fn buffers_limit(&self) -> Option<usize> {
        Some(self.ring.buffer_count())
    }

    fn complete_piece(&self, index: usize, offset: usize, buffer: Staging) -> Result<()> {
        self.upload(index, offset, buffer, || format!("tensor #{index}"))
    }

    /// A meta tensor is zeroed in place on the device: no staging buffer
    /// (one larger than a staging buffer would not fit) and no copy.
    fn complete_meta(
        &self,
        index: usize,
        entry: &IndexEntry,
        info: TensorInfo,
        len: usize,
    ) -> Result<()> {
        self.at(index, |gpu, dst, start| gpu.zero(dst, start, len))
            .map_err(cuda_error(&entry.name.to_string()))?;
        self.complete_in_pieces(index, info)
    }

    fn complete_in_pieces(&self, index: usize, info: TensorInfo) -> Result<()> {
        self.infos
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((index, info));
        Ok(())
    }
}

impl GpuDestination<'_> {
    /// Enqueues the copy of `buffer` to bytes `offset..` of tensor `index`.
    fn upload(
        &self,
        index: usize,
        offset: usize,
        buffer: Staging,
        name: impl FnOnce() -> String,
    ) -> Result<()> {
        self.at(index, |gpu, dst, start| {
            gpu.upload(buffer, dst, start + offset)
        })
        .map_err(cuda_error(&name()))
    }

    /// Runs `f` on tensor `index`'s device buffer and its offset there.
    fn at(
        &self,
        index: usize,
        f: impl FnOnce(&Gpu, &mut DeviceBuffer, usize) -> std::result::Result<(), CudaError>,
    ) -> std::result::Result<(), CudaError> {
        let (which, start) = self.place[&index];
        let mut dst = self.buffers[which]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        f(self.gpu, &mut dst, start)
    }
}

impl Deserializer {
    /// Loads every tensor onto GPU `ordinal`: read, decrypted and verified
    /// in pinned staging buffers, copied asynchronously, one device
    /// allocation for the model (see [`CudaOptions`]). Returns once every
    /// copy has completed.
    pub fn to_cuda(&self, ordinal: usize, options: &CudaOptions) -> Result<DeviceModel> {
        self.to_cuda_filtered(ordinal, options, |_| true)
    }

    /// Places each tensor on the GPU `device_map` names for it (e.g. layers
    /// split across GPUs by name); the GPUs load concurrently. Returns one
    /// model per GPU used, by ordinal.
    pub fn to_cuda_map(
        &self,
        device_map: impl Fn(&IndexEntry) -> usize + Sync,
        options: &CudaOptions,
    ) -> Result<std::collections::BTreeMap<usize, DeviceModel>> {
        let mut ordinals: Vec<usize> = self.entries().iter().map(&device_map).collect();
        ordinals.sort_unstable();
        ordinals.dedup();
        std::thread::scope(|s| {
            let handles: Vec<_> = ordinals
                .iter()
                .map(|&ordinal| {
                    let device_map = &device_map;
                    s.spawn(move || {
                        self.to_cuda_filtered(ordinal, options, |e| device_map(e) == ordinal)
                            .map(|m| (ordinal, m))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        })
    }

    /// [`Deserializer::to_cuda`] for the tensors whose entry passes `filter`.
    pub fn to_cuda_filtered(
        &self,
        ordinal: usize,
        options: &CudaOptions,
        filter: impl Fn(&IndexEntry) -> bool + Sync,
    ) -> Result<DeviceModel> {
        let all = self.entries();
        let selected: Vec<usize> = (0..all.len()).filter(|&i| filter(&all[i])).collect();
        let entries: Vec<&IndexEntry> = selected.iter().map(|&i| &all[i]).collect();
        // Sizes and the arena's layout are checked before the GPU is
        // touched: a hostile header fails here, not in a copy.
        let sizes: Vec<usize> = entries
            .iter()
            .map(|e| {
                e.deserialized_length()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| Error::Allocation {
                        path: self.path().to_path_buf(),
                        tensor: e.name.to_string(),
                        bytes: e.deserialized_length().unwrap_or(u64::MAX),
                    })
            })
            .collect::<Result<_>>()?;
        let layout = if options.arena {
            Some(arena_layout(&sizes).map_err(cuda_error(&self.path().display().to_string()))?)
        } else {
            None
        };
        let gpu = Gpu::open(ordinal, options.streams).map_err(cuda_error("opening the GPU"))?;
        // Tensors larger than a staging buffer go through it in pieces.
        let staging = options.staging_size.unwrap_or(DEFAULT_STAGING_SIZE);
        let mut buffers = Vec::new();
        let mut place = HashMap::new();
        if let Some((offsets, total)) = layout {
            let arena = gpu
                .alloc(total, &format!("the arena of {} tensors", entries.len()))
                .map_err(cuda_error(&self.path().display().to_string()))?;
            buffers.push(Mutex::new(arena));
            place.extend(
                offsets
                    .into_iter()
                    .enumerate()
                    .map(|(k, o)| (selected[k], (0, o))),
            );
        } else {
            for (k, (e, &size)) in entries.iter().zip(&sizes).enumerate() {
                let name = e.name.to_string();
                let buffer = gpu
                    .alloc(size, &format!("tensor {name:?}"))
                    .map_err(cuda_error(&name))?;
                buffers.push(Mutex::new(buffer));
                place.insert(selected[k], (k, 0));
            }
        }
        let ring = StagingRing::new(&gpu, options.staging_buffers, staging)
            .map_err(cuda_error("allocating pinned staging buffers"))?;
        let dest = GpuDestination {
            gpu: &gpu,
            ring,
            buffers: &buffers,
            place: &place,
            infos: Mutex::default(),
        };
        let loaded = self.load_into(&dest, &filter);
        // Wait for every enqueued copy even after an error: the device
        // buffers are freed on stream 0 when dropped.
        let copied = gpu
            .synchronize()
            .map_err(cuda_error("finishing the copies"));
        loaded?;
        copied?;
        let mut infos = dest.infos.into_inner().unwrap_or_else(|e| e.into_inner());
        infos.sort_by_key(|(i, _)| *i);
        let tensors: Vec<DeviceTensor> = infos
            .into_iter()
            .map(|(i, info)| DeviceTensor {
                info,
                buffer: place[&i].0,
                offset: place[&i].1,
                len: usize::try_from(all[i].deserialized_length().unwrap_or(0)).unwrap_or(0),
            })
            .collect();
        let by_path = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.info.path.clone(), i))
            .collect();
        Ok(DeviceModel {
            buffers,
            tensors,
            by_path,
            gpu,
        })
    }
}

/// Loads tensor-parallel shards concurrently, each onto its own GPU:
/// `shards[k] = (deserializer, ordinal)`, e.g. `model-rank-000.tensors` on
/// GPU 0, `model-rank-001.tensors` on GPU 1.
pub fn load_shards(
    shards: &[(&Deserializer, usize)],
    options: &CudaOptions,
) -> Result<Vec<DeviceModel>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = shards
            .iter()
            .map(|&(d, ordinal)| s.spawn(move || d.to_cuda(ordinal, options)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

impl crate::Checkpoint {
    /// Loads every shard onto GPU `ordinal`, all shards' reads in flight
    /// together (each through its own staging ring); one device model per
    /// shard, in shard order. A cache blob's SHA-256 is checked on the
    /// way, as in host loads.
    pub fn to_cuda(&self, ordinal: usize, options: &CudaOptions) -> Result<Vec<DeviceModel>> {
        let shards: Vec<(&Deserializer, usize)> =
            self.shards().iter().map(|d| (d, ordinal)).collect();
        load_shards(&shards, options)
    }
}

/// Reads device tensors back for a writer: a GPU's copy streams and a ring
/// of pinned buffers, shared by the writer's threads. Each tensor is copied
/// a buffer at a time with several copies in flight, and its pieces are
/// hashed and written while the next ones are copied: host memory is
/// `buffers × buffer_size`, whatever the tensor's size.
///
/// ```no_run
/// use tensorizer::cuda::DeviceReader;
/// use tensorizer::{Dtype, StreamingSerializer, TensorType};
/// # let (ptr, len) = (0u64, 0usize);
/// let reader = DeviceReader::new(0, 4, 8 << 20)?;
/// let mut w = StreamingSerializer::create_file("model.tensors")?;
/// // `ptr .. ptr + len`: a tensor in device memory (checked with the driver).
/// let copy_back = reader.tensor(ptr, len)?;
/// w.write_tensor_from(0, "lm_head.weight", TensorType::Param, Dtype::BF16, &[len as u64 / 2], copy_back)?;
/// w.finish()?;
/// # Ok::<(), tensorizer::Error>(())
/// ```
#[derive(Debug)]
pub struct DeviceReader {
    gpu: Arc<Gpu>,
    ring: StagingRing,
}

impl DeviceReader {
    /// Opens GPU `ordinal` with `buffers` pinned buffers of `buffer_size`
    /// bytes (two copy streams).
    pub fn new(ordinal: usize, buffers: usize, buffer_size: usize) -> Result<Self> {
        let gpu =
            Gpu::open(ordinal, 2).map_err(cuda_error("opening the GPU to read tensors back"))?;
        let ring = StagingRing::new(&gpu, buffers.max(2), buffer_size)
            .map_err(cuda_error("allocating the staging buffers"))?;
        Ok(Self { gpu, ring })
    }

    /// The GPU read from.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// A producer of the `len` bytes at device address `ptr`, for
    /// [`crate::StreamingSerializer::write_tensor_from`] or
    /// [`crate::Serializer::write_tensor_from`]. The range must lie inside
    /// one live device allocation: it is checked now with the driver, so a
    /// caller's pointer is never read outside what the driver allocated.
    pub fn tensor(&self, ptr: u64, len: usize) -> Result<Box<crate::PiecesFn<'_>>> {
        if len > 0 {
            self.gpu
                .check_device_range(ptr, len)
                .map_err(cuda_error("a tensor to write"))?;
        }
        Ok(Box::new(move |each| {
            self.gpu.download(&self.ring, ptr, len, |piece| each(piece))
        }))
    }
}
