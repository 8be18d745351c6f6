//! Device upload for tensorizer: a CUDA context per GPU, a fixed ring of
//! pinned host staging buffers, asynchronous host-to-device copies spread
//! over several streams, and device arenas (one allocation per model).
//!
//! The CUDA driver (`libcuda.so`) is loaded at run time, so this crate
//! builds everywhere and reports [`CudaError::NoDriver`] where there is no
//! GPU, instead of failing to link or panicking.
//!
//! The flow, driven by the facade's loader (`tensorizer` feature `cuda`):
//! a reader takes a [`Staging`] buffer from the [`StagingRing`] (waiting
//! while all are in flight), fills it (read, decrypt and hash in place:
//! the buffers are ordinary pinned memory, not write-combined, because the
//! CPU reads them), then [`Gpu::upload`] enqueues the copy into the arena
//! on the next stream and records an event; the buffer goes back to the
//! ring at once and its next user waits for that event, so host memory is
//! `count × size` whatever the model size, and reading never waits for a
//! copy unless every buffer is in flight.
//!
//! Writers run the ring the other way: [`Gpu::download`] copies a device
//! tensor back a buffer at a time, several in flight, and hands each piece
//! to the hashing and writing code while the next ones are copied.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use cudarc::driver::{CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtrMut, DriverError};
use thiserror::Error;

/// Device allocations are aligned to this (what cuMemAlloc guarantees; enough for any dtype and vector loads).
pub const DEVICE_ALIGNMENT: usize = 256;

/// Why a CUDA operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CudaError {
    /// No CUDA driver library on this machine.
    #[error(
        "no CUDA driver: libcuda.so could not be loaded (no NVIDIA GPU or driver on this machine)"
    )]
    NoDriver,
    /// The driver refused an operation.
    #[error("CUDA {action}: {source}")]
    Driver {
        /// What was being done.
        action: String,
        /// The driver's error.
        #[source]
        source: DriverError,
    },
    /// Not enough device memory.
    #[error(
        "GPU {device}: out of memory allocating {what}: {bytes} bytes requested, {free} of {total} bytes free"
    )]
    OutOfMemory {
        /// Device ordinal.
        device: usize,
        /// What the memory was for.
        what: String,
        /// Bytes asked for.
        bytes: u64,
        /// Free device memory.
        free: u64,
        /// Total device memory.
        total: u64,
    },
    /// A device ordinal past what the driver can name (cudarc would
    /// truncate it to a 32-bit ordinal, and another device would answer).
    #[error("no CUDA device {ordinal}")]
    NoSuchDevice {
        /// The ordinal asked for.
        ordinal: usize,
    },
    /// A tensor larger than a staging buffer.
    #[error("{bytes} bytes do not fit a {staging}-byte staging buffer (raise the staging size)")]
    TooLarge {
        /// Bytes needed.
        bytes: u64,
        /// Staging buffer size.
        staging: u64,
    },
    /// The tensors do not fit one device arena: their sizes, aligned and
    /// added up, pass the address space.
    #[error(
        "the device arena overflows at tensor {index} ({size} bytes): the sizes add up past {max} bytes"
    )]
    LayoutOverflow {
        /// Position of the tensor that overflowed.
        index: usize,
        /// Its size.
        size: u64,
        /// The largest arena this machine can address.
        max: u64,
    },
    /// A device range handed in (a tensor to copy back) that is not inside
    /// one live allocation.
    #[error(
        "{len} bytes at device address {ptr:#x} are not inside one live allocation of GPU {device}"
    )]
    NotDeviceMemory {
        /// Device ordinal.
        device: usize,
        /// Start of the range.
        ptr: u64,
        /// Its length.
        len: u64,
    },
    /// A copy that would land outside its device buffer.
    #[error("a copy of {len} bytes at offset {offset} lies outside a {buffer}-byte device buffer")]
    OutOfBounds {
        /// Byte offset in the buffer.
        offset: u64,
        /// Bytes to copy.
        len: u64,
        /// The buffer's size.
        buffer: u64,
    },
}

/// `Ok` when `offset .. offset + len` lies inside a buffer of `buffer`
/// bytes (computed without wrapping).
fn check_bounds(offset: usize, len: usize, buffer: usize) -> Result<(), CudaError> {
    match offset.checked_add(len) {
        Some(end) if end <= buffer => Ok(()),
        _ => Err(CudaError::OutOfBounds {
            offset: offset as u64,
            len: len as u64,
            buffer: buffer as u64,
        }),
    }
}

fn driver(action: &str) -> impl FnOnce(DriverError) -> CudaError + '_ {
    move |source| CudaError::Driver {
        action: action.to_owned(),
        source,
    }
}

/// True when the CUDA driver library can be loaded (checked before any
/// call that would panic without it).
pub fn driver_available() -> bool {
    // SAFETY: only tries to dlopen the library; no CUDA call is made.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Number of CUDA devices, or [`CudaError::NoDriver`].
pub fn device_count() -> Result<usize, CudaError> {
    if !driver_available() {
        return Err(CudaError::NoDriver);
    }
    CudaContext::device_count()
        .map(|n| n.max(0) as usize)
        .map_err(driver("counting devices"))
}

/// One GPU: its primary context and a few copy streams.
#[derive(Debug)]
pub struct Gpu {
    ordinal: usize,
    ctx: Arc<CudaContext>,
    streams: Vec<Arc<CudaStream>>,
    next: AtomicUsize,
}

impl Gpu {
    /// Opens device `ordinal` with `streams` copy streams (at least one).
    pub fn open(ordinal: usize, streams: usize) -> Result<Arc<Self>, CudaError> {
        if !driver_available() {
            return Err(CudaError::NoDriver);
        }
        if i32::try_from(ordinal).is_err() {
            return Err(CudaError::NoSuchDevice { ordinal });
        }
        let ctx = CudaContext::new(ordinal).map_err(driver("opening the device"))?;
        // Ordering between streams is ours to manage (events per staging
        // buffer, one synchronize at the end), not cudarc's per-slice tracking.
        // SAFETY: every cross-stream dependency is explicit below.
        unsafe { ctx.disable_event_tracking() };
        let streams = (0..streams.max(1))
            .map(|_| ctx.new_stream())
            .collect::<Result<Vec<_>, _>>()
            .map_err(driver("creating copy streams"))?;
        Ok(Arc::new(Self {
            ordinal,
            ctx,
            streams,
            next: AtomicUsize::new(0),
        }))
    }

    /// Device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The device's name.
    pub fn name(&self) -> Result<String, CudaError> {
        self.ctx.name().map_err(driver("reading the device name"))
    }

    /// (free, total) device memory in bytes.
    pub fn memory(&self) -> Result<(u64, u64), CudaError> {
        self.ctx
            .mem_get_info()
            .map(|(f, t)| (f as u64, t as u64))
            .map_err(driver("reading free memory"))
    }

    /// Allocates `bytes` of device memory for `what` (uninitialised).
    pub fn alloc(self: &Arc<Self>, bytes: usize, what: &str) -> Result<DeviceBuffer, CudaError> {
        let stream = &self.streams[0];
        // SAFETY: u8 has no invalid bit patterns; every byte handed out is
        // written by an upload before it is read back.
        match unsafe { stream.alloc::<u8>(bytes.max(1)) } {
            Ok(slice) => {
                // The allocation may be stream-ordered (cuMemAllocAsync on
                // stream 0) and copies run on every stream: wait for it.
                stream
                    .synchronize()
                    .map_err(driver("allocating device memory"))?;
                Ok(DeviceBuffer {
                    gpu: self.clone(),
                    slice,
                    len: bytes,
                })
            }
            Err(e) if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
                let (free, total) = self.memory().unwrap_or((0, 0));
                Err(CudaError::OutOfMemory {
                    device: self.ordinal,
                    what: what.to_owned(),
                    bytes: bytes as u64,
                    free,
                    total,
                })
            }
            Err(e) => Err(driver("allocating device memory")(e)),
        }
    }

    /// Enqueues the copy of `staging` to `dst` at byte `offset` on the next
    /// stream and returns the buffer to its ring; the buffer's next user
    /// waits for this copy.
    pub fn upload(
        &self,
        staging: Staging,
        dst: &mut DeviceBuffer,
        offset: usize,
    ) -> Result<(), CudaError> {
        let len = staging.len;
        check_bounds(offset, len, dst.len)?;
        let stream = &self.streams[self.next.fetch_add(1, Ordering::Relaxed) % self.streams.len()];
        self.ctx
            .bind_to_thread()
            .map_err(driver("binding the context"))?;
        let (base, _sync) = dst.slice.device_ptr_mut(stream);
        let slot = staging
            .slot
            .as_ref()
            .expect("a staging buffer owns its slot until dropped");
        // SAFETY: the source is pinned memory owned by the slot, which is not
        // handed out again before `slot.done` (recorded next) has completed;
        // the destination range lies inside the allocation (checked above).
        unsafe {
            cudarc::driver::result::memcpy_htod_async(
                base + offset as u64,
                std::slice::from_raw_parts(slot.ptr, len),
                stream.cu_stream(),
            )
        }
        .map_err(driver("enqueueing a host-to-device copy"))?;
        slot.done
            .record(stream)
            .map_err(driver("recording a copy event"))?;
        Ok(())
    }

    /// Enqueues zeroing `len` bytes of `dst` at `offset` on the next stream
    /// (a meta tensor: nothing to read or copy; device memory starts
    /// uninitialised).
    pub fn zero(&self, dst: &mut DeviceBuffer, offset: usize, len: usize) -> Result<(), CudaError> {
        check_bounds(offset, len, dst.len)?;
        if len == 0 {
            return Ok(());
        }
        let stream = &self.streams[self.next.fetch_add(1, Ordering::Relaxed) % self.streams.len()];
        self.ctx
            .bind_to_thread()
            .map_err(driver("binding the context"))?;
        let (base, _sync) = dst.slice.device_ptr_mut(stream);
        // SAFETY: the range lies inside the allocation (checked above); any
        // byte pattern is a valid u8.
        unsafe {
            cudarc::driver::result::memset_d8_async(
                base + offset as u64,
                0,
                len,
                stream.cu_stream(),
            )
        }
        .map_err(driver("enqueueing a memset"))
    }

    /// `Ok` when `ptr .. ptr + len` lies inside one live allocation, as
    /// the driver sees it: a range handed in by a caller (a framework's
    /// tensor) is checked before the device is read there.
    pub fn check_device_range(&self, ptr: u64, len: usize) -> Result<(), CudaError> {
        self.ctx
            .bind_to_thread()
            .map_err(driver("binding the context"))?;
        let (mut base, mut size) = (0u64, 0usize);
        // SAFETY: two out-pointers to locals; the driver only answers a question.
        let found =
            unsafe { cudarc::driver::sys::cuMemGetAddressRange_v2(&mut base, &mut size, ptr) };
        let inside = found == cudarc::driver::sys::CUresult::CUDA_SUCCESS
            && (len as u64)
                .checked_add(ptr)
                .is_some_and(|end| end <= base.saturating_add(size as u64));
        if inside {
            Ok(())
        } else {
            Err(CudaError::NotDeviceMemory {
                device: self.ordinal,
                ptr,
                len: len as u64,
            })
        }
    }

    /// Copies `len` bytes at device address `src` back to the host through
    /// `ring`, one buffer at a time with several copies in flight (on the
    /// copy streams in turn), and hands each piece, in order, to `each`
    /// while the next ones are copied: host memory is the ring's, whatever
    /// the tensor's size. The range is checked first
    /// ([`Gpu::check_device_range`]). On an error nothing is left in
    /// flight: pending copies are waited for before the buffers go back.
    pub fn download<E: From<CudaError>>(
        &self,
        ring: &StagingRing,
        src: u64,
        len: usize,
        mut each: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if len == 0 {
            return Ok(());
        }
        self.check_device_range(src, len)?;
        let piece = ring.buffer_size().max(1);
        let mut in_flight = std::collections::VecDeque::new();
        let mut next = 0usize;
        let result = (|| -> Result<(), E> {
            while next < len || !in_flight.is_empty() {
                while next < len {
                    let n = piece.min(len - next);
                    // Wait for a buffer only with none of ours in flight:
                    // writers sharing a ring never wait on each other
                    // while holding buffers.
                    let staging = if in_flight.is_empty() {
                        ring.take(n)?
                    } else {
                        match ring.try_take(n)? {
                            Some(s) => s,
                            None => break,
                        }
                    };
                    in_flight.push_back(self.enqueue_download(src + next as u64, staging)?);
                    next += n;
                }
                let staging: Staging = in_flight.pop_front().expect("one is in flight");
                staging
                    .slot
                    .as_ref()
                    .expect("owned until dropped")
                    .done
                    .synchronize()
                    .map_err(driver("waiting for a device-to-host copy"))?;
                each(&staging)?;
            }
            Ok(())
        })();
        for staging in in_flight {
            let slot = staging.slot.as_ref().expect("owned until dropped");
            let _ = slot.done.synchronize();
        }
        result
    }

    /// Enqueues the copy of `staging.len()` bytes at `src` into `staging`
    /// on the next stream and records the buffer's event.
    fn enqueue_download(&self, src: u64, staging: Staging) -> Result<Staging, CudaError> {
        let stream = &self.streams[self.next.fetch_add(1, Ordering::Relaxed) % self.streams.len()];
        self.ctx
            .bind_to_thread()
            .map_err(driver("binding the context"))?;
        let slot = staging.slot.as_ref().expect("owned until dropped");
        // SAFETY: the destination is pinned memory owned by the slot, not
        // read before `slot.done` (recorded next) has completed; the source
        // range lies inside a live allocation (checked by `download`).
        unsafe {
            cudarc::driver::result::memcpy_dtoh_async(
                std::slice::from_raw_parts_mut(slot.ptr, staging.len),
                src,
                stream.cu_stream(),
            )
        }
        .map_err(driver("enqueueing a device-to-host copy"))?;
        slot.done
            .record(stream)
            .map_err(driver("recording a copy event"))?;
        Ok(staging)
    }

    /// Waits for every enqueued copy.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        for s in &self.streams {
            s.synchronize().map_err(driver("waiting for copies"))?;
        }
        Ok(())
    }
}

/// Device memory: one model's arena, or one tensor. Dropping it frees the
/// memory in stream order on stream 0: synchronize (see
/// [`Gpu::synchronize`]) before dropping a buffer that other streams may
/// still be copying into.
#[derive(Debug)]
pub struct DeviceBuffer {
    gpu: Arc<Gpu>,
    slice: CudaSlice<u8>,
    len: usize,
}

impl DeviceBuffer {
    /// Bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device pointer of byte `offset` (for kernels and other libraries).
    pub fn device_ptr(&mut self, offset: usize) -> u64 {
        let (base, _sync) = self.slice.device_ptr_mut(&self.gpu.streams[0]);
        base + offset as u64
    }

    /// Copies `len` bytes at `offset` back to host memory (waits for
    /// pending uploads first).
    pub fn copy_to_host(&mut self, offset: usize, out: &mut [u8]) -> Result<(), CudaError> {
        check_bounds(offset, out.len(), self.len)?;
        self.gpu.synchronize()?;
        if out.is_empty() {
            return Ok(());
        }
        let stream = &self.gpu.streams[0];
        let (base, _sync) = self.slice.device_ptr_mut(stream);
        // SAFETY: the range is inside the allocation; the stream is
        // synchronized before `out` is released.
        unsafe {
            cudarc::driver::result::memcpy_dtoh_async(out, base + offset as u64, stream.cu_stream())
        }
        .map_err(driver("copying back to the host"))?;
        stream
            .synchronize()
            .map_err(driver("waiting for the copy back"))
    }

    /// The GPU it lives on.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }
}

/// A pinned host buffer and the event of its last copy.
#[derive(Debug)]
struct Slot {
    _memory: cudarc::driver::PinnedHostSlice<u8>,
    ptr: *mut u8,
    done: CudaEvent,
}

// SAFETY: the pointer is into `_memory`, owned by the slot; a slot is used
// by one thread at a time (taken from and returned to the ring).
unsafe impl Send for Slot {}
// SAFETY: as above; shared references only record and wait on events.
unsafe impl Sync for Slot {}

#[derive(Debug)]
struct RingInner {
    free: Mutex<Vec<Slot>>,
    returned: Condvar,
    size: usize,
    count: usize,
}

/// A fixed set of pinned host buffers that readers fill and copies drain.
#[derive(Debug, Clone)]
pub struct StagingRing {
    inner: Arc<RingInner>,
}

impl StagingRing {
    /// `count` buffers of `size` bytes, pinned for `gpu` (ordinary pinned
    /// memory: write-combined memory would make in-place decryption and
    /// hashing slow).
    pub fn new(gpu: &Arc<Gpu>, count: usize, size: usize) -> Result<Self, CudaError> {
        let mut free = Vec::with_capacity(count);
        for _ in 0..count.max(1) {
            // SAFETY: a plain page-locked allocation; flags 0 = not write-combined.
            let mut memory = unsafe { gpu.ctx.alloc_pinned_with_flags::<u8>(size.max(1), 0) }
                .map_err(driver("allocating pinned staging memory"))?;
            let ptr = memory
                .as_mut_ptr()
                .map_err(driver("mapping pinned memory"))?;
            let done = gpu
                .ctx
                .new_event(None)
                .map_err(driver("creating a copy event"))?;
            free.push(Slot {
                _memory: memory,
                ptr,
                done,
            });
        }
        Ok(Self {
            inner: Arc::new(RingInner {
                free: Mutex::new(free),
                returned: Condvar::new(),
                size,
                count: count.max(1),
            }),
        })
    }

    /// Bytes per buffer.
    pub fn buffer_size(&self) -> usize {
        self.inner.size
    }

    /// Number of buffers.
    pub fn buffer_count(&self) -> usize {
        self.inner.count
    }

    /// A buffer for `len` bytes if one is free now (its last copy waited
    /// for), `None` if all are on loan.
    pub fn try_take(&self, len: usize) -> Result<Option<Staging>, CudaError> {
        self.check_fits(len)?;
        let slot = self
            .inner
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        slot.map(|slot| self.lend(slot, len)).transpose()
    }

    fn check_fits(&self, len: usize) -> Result<(), CudaError> {
        if len > self.inner.size {
            return Err(CudaError::TooLarge {
                bytes: len as u64,
                staging: self.inner.size as u64,
            });
        }
        Ok(())
    }

    /// `slot` on loan for `len` bytes, once its last copy is done.
    fn lend(&self, slot: Slot, len: usize) -> Result<Staging, CudaError> {
        let staging = Staging {
            slot: Some(slot),
            len,
            ring: self.inner.clone(),
        };
        let slot = staging.slot.as_ref().expect("just set");
        slot.done
            .synchronize()
            .map_err(driver("waiting for a staging buffer's copy"))?;
        Ok(staging)
    }

    /// A buffer for `len` bytes, once one is free and its last copy is done.
    pub fn take(&self, len: usize) -> Result<Staging, CudaError> {
        self.check_fits(len)?;
        let slot = {
            let mut free = self.inner.free.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(slot) = free.pop() {
                    break slot;
                }
                free = self
                    .inner
                    .returned
                    .wait(free)
                    .unwrap_or_else(|e| e.into_inner());
            }
        };
        self.lend(slot, len)
    }
}

/// A staging buffer on loan: `len` bytes of pinned memory; back to its ring when dropped.
#[derive(Debug)]
pub struct Staging {
    slot: Option<Slot>,
    len: usize,
    ring: Arc<RingInner>,
}

impl std::ops::Deref for Staging {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let slot = self.slot.as_ref().expect("owned until dropped");
        // SAFETY: `len <= slot.size` (checked in `take`), the memory is
        // pinned and owned by the slot, and no copy from it is pending
        // (its event was waited for in `take`).
        unsafe { std::slice::from_raw_parts(slot.ptr, self.len) }
    }
}

impl std::ops::DerefMut for Staging {
    fn deref_mut(&mut self) -> &mut [u8] {
        let slot = self.slot.as_ref().expect("owned until dropped");
        // SAFETY: as in `deref`; `&mut self` gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(slot.ptr, self.len) }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            let mut free = self.ring.free.lock().unwrap_or_else(|e| e.into_inner());
            free.push(slot);
            self.ring.returned.notify_one();
        }
    }
}

/// Byte offsets of tensors of `sizes` in one arena, each aligned to
/// [`DEVICE_ALIGNMENT`]; returns (offsets, arena size).
pub fn arena_layout(sizes: &[usize]) -> Result<(Vec<usize>, usize), CudaError> {
    let mut offsets = Vec::with_capacity(sizes.len());
    let mut end = 0usize;
    for (index, &size) in sizes.iter().enumerate() {
        // A hostile file's sizes must not wrap around to small offsets:
        // every step is checked.
        let next = end
            .checked_next_multiple_of(DEVICE_ALIGNMENT)
            .and_then(|at| at.checked_add(size).map(|end| (at, end)));
        let Some((at, next_end)) = next else {
            return Err(CudaError::LayoutOverflow {
                index,
                size: size as u64,
                max: usize::MAX as u64,
            });
        };
        offsets.push(at);
        end = next_end;
    }
    Ok((offsets, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arena_offsets_are_aligned_and_disjoint() {
        let (offsets, total) = arena_layout(&[10, 0, 256, 1, 1000]).unwrap();
        assert_eq!(offsets, [0, 256, 256, 512, 768]);
        assert_eq!(total, 1768);
        assert!(offsets.iter().all(|o| o % DEVICE_ALIGNMENT == 0));
    }

    #[test]
    fn hostile_sizes_overflow_the_layout_instead_of_wrapping() {
        // A meta tensor claiming 2^64 - 2^20 bytes, then a 2 MiB tensor:
        // unchecked, the second offset wrapped to 1 MiB before the arena.
        let err = arena_layout(&[usize::MAX - (1 << 20) + 1, 2 << 20]).unwrap_err();
        assert!(
            matches!(err, CudaError::LayoutOverflow { index: 1, .. }),
            "{err}"
        );
        assert!(arena_layout(&[usize::MAX]).is_ok());
        assert!(arena_layout(&[usize::MAX, 0]).is_err());
    }

    #[test]
    fn an_ordinal_past_32_bits_is_refused_not_truncated() {
        if !driver_available() {
            return; // refused as NoDriver first; the simulator suite covers the driver path
        }
        assert!(matches!(
            Gpu::open(1 << 32, 1),
            Err(CudaError::NoSuchDevice { .. })
        ));
    }

    #[test]
    fn bounds_are_checked_without_wrapping() {
        assert!(check_bounds(0, 10, 10).is_ok());
        assert!(check_bounds(1, 10, 10).is_err());
        assert!(check_bounds(usize::MAX - 5, 10, 100).is_err());
        let err = check_bounds(usize::MAX, 1, 100).unwrap_err();
        assert!(
            err.to_string().contains("outside a 100-byte device buffer"),
            "{err}"
        );
    }

    #[test]
    fn without_a_driver_every_entry_point_says_so() {
        if driver_available() {
            eprintln!("a CUDA driver is present: the no-driver path was not exercised here");
            return;
        }
        assert!(matches!(device_count(), Err(CudaError::NoDriver)));
        let err = Gpu::open(0, 2).unwrap_err();
        assert!(err.to_string().contains("no CUDA driver"), "{err}");
    }
}
