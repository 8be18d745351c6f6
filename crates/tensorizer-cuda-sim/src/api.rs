//! The CUDA driver API functions, as `libcuda.so` exports them (the `_v2`
//! names included), over the simulated machine of [`crate::state`].
//!
//! Every call checks what the real driver checks (initialized, a current
//! context, live handles, pointers inside live allocations) and returns the
//! driver's error code; what the real driver would not catch but would turn
//! into corruption (a staging buffer rewritten before its copy ran, a use of
//! a stream-ordered allocation before it exists) is recorded as a violation.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_uint, c_void};
use std::sync::Arc;

use crate::result::*;
use crate::state::{Driver, Event, Op, Source, Stream, driver, source_crc};

type CUdevice = c_int;
type CUdeviceptr = u64;
type CUcontext = *mut c_void;
type CUstream = *mut c_void;
type CUevent = *mut c_void;

const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: c_uint = 75;
const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: c_uint = 76;
const CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: c_uint = 41;
const CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED: c_uint = 115;
const CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: c_uint = 16;

/// Context handles: the primary context of device `k` is `CTX_BASE + k * 16`.
const CTX_BASE: usize = 0x5000_0000;

thread_local! {
    /// This thread's context stack; the last entry is current.
    static CONTEXTS: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

fn ctx_handle(device: usize) -> CUcontext {
    (CTX_BASE + device * 16) as CUcontext
}

fn ctx_device(d: &Driver, ctx: CUcontext) -> Option<usize> {
    let raw = ctx as usize;
    let k = raw.checked_sub(CTX_BASE)? / 16;
    (raw.is_multiple_of(16) && k < d.device_count()).then_some(k)
}

/// Runs a driver call: panics inside the simulator become
/// `CUDA_ERROR_UNKNOWN` instead of unwinding into C.
fn call(f: impl FnOnce() -> Result<()>) -> CUresult {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(())) => CUDA_SUCCESS,
        Ok(Err(code)) => code,
        Err(_) => CUDA_ERROR_UNKNOWN,
    }
}

/// Writes a result through an out-pointer the caller passed.
fn put<T>(out: *mut T, value: T) -> Result<()> {
    if out.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: the driver API's contract: a non-null out-pointer is valid for a write.
    unsafe { out.write(value) };
    Ok(())
}

fn initialized(d: &Driver) -> Result<()> {
    if d.initialized {
        Ok(())
    } else {
        Err(CUDA_ERROR_NOT_INITIALIZED)
    }
}

fn device(d: &Driver, dev: CUdevice) -> Result<usize> {
    initialized(d)?;
    usize::try_from(dev)
        .ok()
        .filter(|&k| k < d.device_count())
        .ok_or(CUDA_ERROR_INVALID_DEVICE)
}

/// The device of this thread's current context; the real driver fails
/// such calls with `CUDA_ERROR_INVALID_CONTEXT`, the simulator also
/// records it (a thread that forgot to bind its context).
fn current(d: &mut Driver, call: &str) -> Result<usize> {
    initialized(d)?;
    match CONTEXTS.with(|c| c.borrow().last().copied()) {
        Some(k) if d.devices[k].primary_refs > 0 => Ok(k),
        Some(k) => {
            d.violation(format!(
                "{call}: the current context (device {k}) was released"
            ));
            Err(CUDA_ERROR_INVALID_CONTEXT)
        }
        None => {
            d.violation(format!("{call}: no current context on this thread"));
            Err(CUDA_ERROR_INVALID_CONTEXT)
        }
    }
}

/// The device of this thread's current context, if any (for calls that
/// need one only to resolve the default stream).
fn bound() -> Option<usize> {
    CONTEXTS.with(|c| c.borrow().last().copied())
}

fn alive(d: &Driver, device: usize) -> Result<()> {
    if d.devices[device].lost {
        Err(CUDA_ERROR_DEVICE_UNAVAILABLE)
    } else {
        Ok(())
    }
}

/// Waits for `stream` up to its current tail, then reports the device's
/// asynchronous error, if any.
fn wait_stream(stream: &Arc<Stream>) -> Result<()> {
    stream.wait_for(stream.tail());
    sticky(stream.device)
}

fn sticky(device: usize) -> Result<()> {
    let d = driver();
    match d.devices[device].sticky {
        Some(code) => Err(code),
        None if d.devices[device].lost => Err(CUDA_ERROR_DEVICE_UNAVAILABLE),
        None => Ok(()),
    }
}

// ---- initialization, devices -------------------------------------------

#[unsafe(no_mangle)]
extern "C" fn cuInit(flags: c_uint) -> CUresult {
    call(|| {
        if flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        driver().initialized = true;
        Ok(())
    })
}

#[unsafe(no_mangle)]
extern "C" fn cuDriverGetVersion(version: *mut c_int) -> CUresult {
    call(|| put(version, 12080))
}

#[unsafe(no_mangle)]
extern "C" fn cuDeviceGetCount(count: *mut c_int) -> CUresult {
    call(|| {
        let d = driver();
        initialized(&d)?;
        put(count, d.device_count() as c_int)
    })
}

#[unsafe(no_mangle)]
extern "C" fn cuDeviceGet(out: *mut CUdevice, ordinal: c_int) -> CUresult {
    call(|| {
        let d = driver();
        let k = device(&d, ordinal)?;
        put(out, k as CUdevice)
    })
}

#[unsafe(no_mangle)]
extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: CUdevice) -> CUresult {
    call(|| {
        let d = driver();
        let k = device(&d, dev)?;
        let len = usize::try_from(len).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
        if name.is_null() || len == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let text = d.config.names[k].as_bytes();
        let n = text.len().min(len - 1);
        // SAFETY: the caller's buffer holds `len` bytes; `n + 1 <= len`.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), name.cast::<u8>(), n);
            *name.add(n) = 0;
        }
        Ok(())
    })
}

#[unsafe(no_mangle)]
extern "C" fn cuDeviceGetAttribute(out: *mut c_int, attribute: c_uint, dev: CUdevice) -> CUresult {
    call(|| {
        let d = driver();
        device(&d, dev)?;
        let value = match attribute {
            CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR => 9,
            CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR => 0,
            CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING => 1,
            CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED => c_int::from(d.config.async_alloc),
            CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT => 132,
            _ => 0,
        };
        put(out, value)
    })
}

#[unsafe(no_mangle)]
extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresult {
    call(|| {
        let d = driver();
        device(&d, dev)?;
        put(bytes, d.config.memory as usize)
    })
}

#[unsafe(no_mangle)]
extern "C" fn cuDeviceGetUuid(uuid: *mut [u8; 16], dev: CUdevice) -> CUresult {
    call(|| {
        let d = driver();
        let k = device(&d, dev)?;
        let mut id = *b"tensorizer-sim-0";
        id[15] = b'0' + (k % 10) as u8;
        put(uuid, id)
    })
}

#[unsafe(no_mangle)]
extern "C" fn cuDeviceGetUuid_v2(uuid: *mut [u8; 16], dev: CUdevice) -> CUresult {
    cuDeviceGetUuid(uuid, dev)
}

// ---- contexts --------------------------------------------------------------

#[unsafe(no_mangle)]
extern "C" fn cuDevicePrimaryCtxRetain(ctx: *mut CUcontext, dev: CUdevice) -> CUresult {
    call(|| {
        let mut d = driver();
        let k = device(&d, dev)?;
        put(ctx, ctx_handle(k))?;
        d.devices[k].primary_refs += 1;
        d.refresh_stats();
        Ok(())
    })
}

#[unsafe(no_mangle)]
extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult {
    call(|| {
        let mut d = driver();
        let k = device(&d, dev)?;
        if d.devices[k].primary_refs == 0 {
            d.violation(format!(
                "cuDevicePrimaryCtxRelease_v2: device {k}'s primary context released more often than retained"
            ));
            return Err(CUDA_ERROR_INVALID_CONTEXT);
        }
        d.devices[k].primary_refs -= 1;
        if d.devices[k].primary_refs == 0 {
            // Destroying a context first completes its queued work, the
            // stream-ordered frees of the program's last buffers included.
            let streams = d.devices[k].streams();
            drop(d);
            for s in &streams {
                s.wait_for(s.tail());
            }
            d = driver();
            // The real driver destroys the context and everything in it:
            // what is still allocated then was leaked by the program.
            let leaked: Vec<(u64, usize)> = d
                .allocs
                .iter()
                .filter(|(_, a)| a.device == k)
                .map(|(&at, a)| (at, a.data.len()))
                .collect();
            if !leaked.is_empty() {
                let bytes: usize = leaked.iter().map(|(_, n)| n).sum();
                d.violation(format!(
                    "cuDevicePrimaryCtxRelease_v2: device {k}'s context destroyed with {} allocation(s) of {bytes} bytes still live (leaked)",
                    leaked.len()
                ));
                for (at, _) in leaked {
                    d.release(at);
                }
            }
        }
        d.refresh_stats();
        Ok(())
    })
}

#[unsafe(no_mangle)]
extern "C" fn cuCtxGetCurrent(ctx: *mut CUcontext) -> CUresult {
    call(|| {
        initialized(&driver())?;
        let current = CONTEXTS.with(|c| c.borrow().last().copied());
        put(ctx, current.map_or(std::ptr::null_mut(), ctx_handle))
    })
}

#[unsafe(no_mangle)]
extern "C" fn cuCtxSetCurrent(ctx: CUcontext) -> CUresult {
    call(|| {
        let d = driver();
        initialized(&d)?;
        let k = if ctx.is_null() {
            None
        } else {
            Some(ctx_device(&d, ctx).ok_or(CUDA_ERROR_INVALID_CONTEXT)?)
        };
        CONTEXTS.with(|c| {
            let mut c = c.borrow_mut();
            c.pop();
            c.extend(k);
        });
        Ok(())
    })
}

#[unsafe(no_mangle)]
extern "C" fn cuCtxPushCurrent_v2(ctx: CUcontext) -> CUresult {
    call(|| {
        let d = driver();
        let k = ctx_device(&d, ctx).ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
        CONTEXTS.with(|c| c.borrow_mut().push(k));
        Ok(())
    })
}

#[unsafe(no_mangle)]
extern "C" fn cuCtxPopCurrent_v2(ctx: *mut CUcontext) -> CUresult {
    call(|| {
        let k = CONTEXTS
            .with(|c| c.borrow_mut().pop())
            .ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
        if !ctx.is_null() {
            put(ctx, ctx_handle(k))?;
        }
        Ok(())
    })
}

#[unsafe(no_mangle)]
extern "C" fn cuCtxGetDevice(dev: *mut CUdevice) -> CUresult {
    call(|| {
        let k = current(&mut driver(), "cuCtxGetDevice")?;
        put(dev, k as CUdevice)
    })
}

#[unsafe(no_mangle)]
extern "C" fn cuCtxSynchronize() -> CUresult {
    call(|| {
        let streams: Vec<Arc<Stream>> = {
            let mut d = driver();
            let k = current(&mut d, "cuCtxSynchronize")?;
            d.streams
                .values()
                .chain(d.devices[k].default_stream.iter())
                .filter(|s| s.device == k)
                .cloned()
                .collect()
        };
        streams.iter().try_for_each(wait_stream)
    })
}

// ---- memory ----------------------------------------------------------------

#[unsafe(no_mangle)]
extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    call(|| {
        let mut d = driver();
        let k = current(&mut d, "cuMemGetInfo_v2")?;
        let total_bytes = d.config.memory;
        put(free, total_bytes.saturating_sub(d.devices[k].used) as usize)?;
        put(total, total_bytes as usize)
    })
}

/// The live allocation holding `ptr` (its base and size); an address in
/// none is `CUDA_ERROR_NOT_FOUND`, a question, not a violation.
#[unsafe(no_mangle)]
extern "C" fn cuMemGetAddressRange_v2(
    base: *mut CUdeviceptr,
    size: *mut usize,
    ptr: CUdeviceptr,
) -> CUresult {
    call(|| {
        let mut d = driver();
        current(&mut d, "cuMemGetAddressRange_v2")?;
        let found = d
            .allocs
            .range(..=ptr)
            .next_back()
            .map(|(&at, a)| (at, a.data.len()))
            .filter(|&(at, len)| ptr < at + len as u64);
        let Some((at, len)) = found else {
            return Err(CUDA_ERROR_NOT_FOUND);
        };
        if !base.is_null() {
            put(base, at)?;
        }
        if !size.is_null() {
            put(size, len)?;
        }
        Ok(())
    })
}

#[unsafe(no_mangle)]
extern "C" fn cuMemAlloc_v2(out: *mut CUdeviceptr, bytes: usize) -> CUresult {
    call(|| {
        let mut d = driver();
        let k = current(&mut d, "cuMemAlloc_v2")?;
        if bytes == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let at = d.allocate("cuMemAlloc_v2", k, bytes, true)?;
        put(out, at)
    })
}

#[unsafe(no_mangle)]
extern "C" fn cuMemAllocAsync(out: *mut CUdeviceptr, bytes: usize, stream: CUstream) -> CUresult {
    call(|| {
        let mut d = driver();
        let k = current(&mut d, "cuMemAllocAsync")?;
        if !d.config.async_alloc {
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        let s = d.stream("cuMemAllocAsync", stream as usize, Some(k))?;
        let at = d.allocate("cuMemAllocAsync", k, bytes, false)?;
        let ready = d.allocs[&at].ready.clone();
        s.enqueue(Op::AllocReady(ready));
        put(out, at)
    })
}

fn free_check(d: &mut Driver, call: &str, ptr: CUdeviceptr) -> Result<()> {
    match d.allocs.get(&ptr) {
        Some(a) if a.freeing => {
            d.violation(format!(
                "{call}: {ptr:#x} freed twice (a stream-ordered free is already queued)"
            ));
            Err(CUDA_ERROR_INVALID_VALUE)
        }
        Some(_) => Ok(()),
        None => {
            d.violation(format!(
                "{call}: {ptr:#x} is not the start of a live device allocation (double free, or a pointer never allocated)"
            ));
            Err(CUDA_ERROR_INVALID_VALUE)
        }
    }
}

#[unsafe(no_mangle)]
extern "C" fn cuMemFree_v2(ptr: CUdeviceptr) -> CUresult {
    call(|| {
        let mut d = driver();
        initialized(&d)?;
        free_check(&mut d, "cuMemFree_v2", ptr)?;
        // cuMemFree synchronizes with the device: work still queued on the
        // allocation completes first.
        let device = d.allocs[&ptr].device;
        let streams: Vec<Arc<Stream>> = d
            .streams
            .values()
            .chain(d.devices[device].default_stream.iter())
            .cloned()
            .collect();
        drop(d);
        for s in &streams {
            s.wait_for(s.tail());
        }
        driver().release(ptr);
        Ok(())
    })
}

#[unsafe(no_mangle)]
extern "C" fn cuMemFreeAsync(ptr: CUdeviceptr, stream: CUstream) -> CUresult {
    call(|| {
        let mut d = driver();
        initialized(&d)?;
        free_check(&mut d, "cuMemFreeAsync", ptr)?;
        let device = d.allocs[&ptr].device;
        let s = d.stream("cuMemFreeAsync", stream as usize, Some(device))?;
        d.allocs.get_mut(&ptr).expect("checked").freeing = true;
        s.enqueue(Op::Free(ptr));
        Ok(())
    })
}

#[unsafe(no_mangle)]
extern "C" fn cuMemHostAlloc(out: *mut *mut c_void, bytes: usize, _flags: c_uint) -> CUresult {
    call(|| {
        let mut d = driver();
        current(&mut d, "cuMemHostAlloc")?;
        let ptr = d.allocate_pinned(bytes)?;
        put(out, ptr as *mut c_void)
    })
}

#[unsafe(no_mangle)]
extern "C" fn cuMemAllocHost_v2(out: *mut *mut c_void, bytes: usize) -> CUresult {
    cuMemHostAlloc(out, bytes, 0)
}

#[unsafe(no_mangle)]
extern "C" fn cuMemFreeHost(ptr: *mut c_void) -> CUresult {
    call(|| {
        let mut d = driver();
        initialized(&d)?;
        d.free_pinned("cuMemFreeHost", ptr as usize)
    })
}

// ---- copies ------------------------------------------------------------------

/// Counts a copy call (either direction) for fault injection: fails the
/// one `tsim_fail_copy_at` names, loses the device at the one
/// `tsim_lose_device_at_copy` names.
fn count_copy(d: &mut Driver) -> Result<()> {
    d.copy_calls += 1;
    if d.config.fail_copy_at == d.copy_calls {
        return Err(CUDA_ERROR_UNKNOWN);
    }
    if let Some((lost, n)) = d.config.lose_device_at_copy
        && n == d.copy_calls
    {
        d.devices[lost].lost = true;
    }
    Ok(())
}

/// Enqueues a host-to-device copy on `stream`; returns the stream and the
/// copy's sequence number.
fn htod(
    call: &'static str,
    dst: CUdeviceptr,
    src: *const c_void,
    len: usize,
    stream: CUstream,
) -> Result<(Arc<Stream>, u64)> {
    let mut d = driver();
    let k = current(&mut d, call)?;
    if src.is_null() && len > 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let at = d.find(call, "destination", dst, len)?;
    let device = d.allocs[&at].device;
    count_copy(&mut d)?;
    alive(&d, device)?;
    alive(&d, k)?;
    let s = d.stream(call, stream as usize, Some(k))?;
    let source = if len == 0 {
        Source::Staged(Vec::new())
    } else if d.pinned_range(src as usize, len).is_some() {
        Source::Pinned {
            ptr: src as usize,
            crc: source_crc(src as usize, len),
        }
    } else {
        // SAFETY: the caller passes `len` readable bytes at `src`.
        Source::Staged(unsafe { std::slice::from_raw_parts(src.cast::<u8>(), len) }.to_vec())
    };
    drop(d);
    let seq = s.enqueue(Op::HtoD {
        call,
        dst,
        src: source,
        len,
    });
    Ok((s, seq))
}

#[unsafe(no_mangle)]
extern "C" fn cuMemcpyHtoDAsync_v2(
    dst: CUdeviceptr,
    src: *const c_void,
    len: usize,
    stream: CUstream,
) -> CUresult {
    call(|| htod("cuMemcpyHtoDAsync_v2", dst, src, len, stream).map(drop))
}

#[unsafe(no_mangle)]
extern "C" fn cuMemcpyHtoD_v2(dst: CUdeviceptr, src: *const c_void, len: usize) -> CUresult {
    call(|| {
        let (s, seq) = htod("cuMemcpyHtoD_v2", dst, src, len, std::ptr::null_mut())?;
        s.wait_for(seq);
        sticky(s.device)
    })
}

/// Enqueues a device-to-host copy; pageable destinations are written
/// before the call returns, as the real driver does.
fn dtoh(
    call: &'static str,
    dst: *mut c_void,
    src: CUdeviceptr,
    len: usize,
    stream: CUstream,
    wait: bool,
) -> Result<()> {
    let (s, pinned) = {
        let mut d = driver();
        let k = current(&mut d, call)?;
        if dst.is_null() && len > 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let at = d.find(call, "source", src, len)?;
        let device = d.allocs[&at].device;
        // Copies back count with uploads for fault injection.
        count_copy(&mut d)?;
        alive(&d, device)?;
        let pinned = d.pinned_range(dst as usize, len).is_some();
        (d.stream(call, stream as usize, Some(k))?, pinned)
    };
    let seq = s.enqueue(Op::DtoH {
        call,
        dst: dst as usize,
        src,
        len,
    });
    if wait || !pinned {
        s.wait_for(seq);
        return sticky(s.device);
    }
    Ok(())
}

#[unsafe(no_mangle)]
extern "C" fn cuMemcpyDtoHAsync_v2(
    dst: *mut c_void,
    src: CUdeviceptr,
    len: usize,
    stream: CUstream,
) -> CUresult {
    call(|| dtoh("cuMemcpyDtoHAsync_v2", dst, src, len, stream, false))
}

#[unsafe(no_mangle)]
extern "C" fn cuMemcpyDtoH_v2(dst: *mut c_void, src: CUdeviceptr, len: usize) -> CUresult {
    call(|| dtoh("cuMemcpyDtoH_v2", dst, src, len, std::ptr::null_mut(), true))
}

fn dtod(
    call: &'static str,
    dst: CUdeviceptr,
    src: CUdeviceptr,
    len: usize,
    stream: CUstream,
) -> Result<(Arc<Stream>, u64)> {
    let mut d = driver();
    let k = current(&mut d, call)?;
    d.find(call, "source", src, len)?;
    d.find(call, "destination", dst, len)?;
    alive(&d, k)?;
    let s = d.stream(call, stream as usize, Some(k))?;
    drop(d);
    let seq = s.enqueue(Op::DtoD {
        call,
        dst,
        src,
        len,
    });
    Ok((s, seq))
}

#[unsafe(no_mangle)]
extern "C" fn cuMemcpyDtoDAsync_v2(
    dst: CUdeviceptr,
    src: CUdeviceptr,
    len: usize,
    stream: CUstream,
) -> CUresult {
    call(|| dtod("cuMemcpyDtoDAsync_v2", dst, src, len, stream).map(drop))
}

#[unsafe(no_mangle)]
extern "C" fn cuMemcpyDtoD_v2(dst: CUdeviceptr, src: CUdeviceptr, len: usize) -> CUresult {
    call(|| {
        let (s, seq) = dtod("cuMemcpyDtoD_v2", dst, src, len, std::ptr::null_mut())?;
        s.wait_for(seq);
        sticky(s.device)
    })
}

fn memset(
    call: &'static str,
    dst: CUdeviceptr,
    value: u8,
    len: usize,
    stream: CUstream,
) -> Result<(Arc<Stream>, u64)> {
    let mut d = driver();
    let k = current(&mut d, call)?;
    d.find(call, "destination", dst, len)?;
    alive(&d, k)?;
    let s = d.stream(call, stream as usize, Some(k))?;
    drop(d);
    let seq = s.enqueue(Op::Memset {
        call,
        dst,
        value,
        len,
    });
    Ok((s, seq))
}

#[unsafe(no_mangle)]
extern "C" fn cuMemsetD8Async(
    dst: CUdeviceptr,
    value: u8,
    len: usize,
    stream: CUstream,
) -> CUresult {
    call(|| memset("cuMemsetD8Async", dst, value, len, stream).map(drop))
}

#[unsafe(no_mangle)]
extern "C" fn cuMemsetD8_v2(dst: CUdeviceptr, value: u8, len: usize) -> CUresult {
    call(|| {
        let (s, seq) = memset("cuMemsetD8_v2", dst, value, len, std::ptr::null_mut())?;
        s.wait_for(seq);
        sticky(s.device)
    })
}

// ---- streams -----------------------------------------------------------------

#[unsafe(no_mangle)]
extern "C" fn cuStreamCreate(out: *mut CUstream, _flags: c_uint) -> CUresult {
    call(|| {
        let mut d = driver();
        let k = current(&mut d, "cuStreamCreate")?;
        let handle = d.handle();
        put(out, handle as CUstream)?;
        let s = Stream::new(k);
        d.devices[k].all_streams.retain(|w| w.strong_count() > 0);
        d.devices[k].all_streams.push(Arc::downgrade(&s));
        d.streams.insert(handle, s);
        d.refresh_stats();
        Ok(())
    })
}

#[unsafe(no_mangle)]
extern "C" fn cuStreamCreateWithPriority(
    out: *mut CUstream,
    flags: c_uint,
    _priority: c_int,
) -> CUresult {
    cuStreamCreate(out, flags)
}

#[unsafe(no_mangle)]
extern "C" fn cuStreamDestroy_v2(stream: CUstream) -> CUresult {
    call(|| {
        let mut d = driver();
        initialized(&d)?;
        let s = d.stream("cuStreamDestroy_v2", stream as usize, None)?;
        // Queued work still runs (the driver releases the stream when it
        // is done); the handle is dead at once.
        d.streams.remove(&(stream as usize));
        d.refresh_stats();
        drop(d);
        s.destroy();
        Ok(())
    })
}

#[unsafe(no_mangle)]
extern "C" fn cuStreamSynchronize(stream: CUstream) -> CUresult {
    call(|| {
        let s = {
            let mut d = driver();
            let k = bound();
            d.stream("cuStreamSynchronize", stream as usize, k)?
        };
        wait_stream(&s)
    })
}

#[unsafe(no_mangle)]
extern "C" fn cuStreamQuery(stream: CUstream) -> CUresult {
    call(|| {
        let s = {
            let mut d = driver();
            let k = bound();
            d.stream("cuStreamQuery", stream as usize, k)?
        };
        if s.is_done(s.tail()) {
            sticky(s.device)
        } else {
            Err(CUDA_ERROR_NOT_READY)
        }
    })
}

#[unsafe(no_mangle)]
extern "C" fn cuStreamWaitEvent(stream: CUstream, event: CUevent, _flags: c_uint) -> CUresult {
    call(|| {
        let (s, e) = {
            let mut d = driver();
            let k = bound();
            (
                d.stream("cuStreamWaitEvent", stream as usize, k)?,
                d.event("cuStreamWaitEvent", event as usize)?,
            )
        };
        // The wait is on the event's point at the time of this call.
        if let Some((other, seq)) = e.point() {
            s.enqueue(Op::Wait(other, seq));
        }
        Ok(())
    })
}

// ---- events ------------------------------------------------------------------

#[unsafe(no_mangle)]
extern "C" fn cuEventCreate(out: *mut CUevent, _flags: c_uint) -> CUresult {
    call(|| {
        let mut d = driver();
        current(&mut d, "cuEventCreate")?;
        let handle = d.handle();
        put(out, handle as CUevent)?;
        d.events.insert(handle, Arc::new(Event::default()));
        d.refresh_stats();
        Ok(())
    })
}

#[unsafe(no_mangle)]
extern "C" fn cuEventDestroy_v2(event: CUevent) -> CUresult {
    call(|| {
        let mut d = driver();
        initialized(&d)?;
        d.event("cuEventDestroy_v2", event as usize)?;
        d.events.remove(&(event as usize));
        d.refresh_stats();
        Ok(())
    })
}

#[unsafe(no_mangle)]
extern "C" fn cuEventRecord(event: CUevent, stream: CUstream) -> CUresult {
    call(|| {
        let (e, s) = {
            let mut d = driver();
            let k = bound();
            (
                d.event("cuEventRecord", event as usize)?,
                d.stream("cuEventRecord", stream as usize, k)?,
            )
        };
        let seq = s.enqueue(Op::Marker);
        *e.recorded.lock().unwrap_or_else(|p| p.into_inner()) = Some((s, seq));
        Ok(())
    })
}

#[unsafe(no_mangle)]
extern "C" fn cuEventSynchronize(event: CUevent) -> CUresult {
    call(|| {
        let e = driver().event("cuEventSynchronize", event as usize)?;
        match e.point() {
            Some((s, seq)) => {
                s.wait_for(seq);
                sticky(s.device)
            }
            None => Ok(()),
        }
    })
}

#[unsafe(no_mangle)]
extern "C" fn cuEventQuery(event: CUevent) -> CUresult {
    call(|| {
        let e = driver().event("cuEventQuery", event as usize)?;
        match e.point() {
            Some((s, seq)) if !s.is_done(seq) => Err(CUDA_ERROR_NOT_READY),
            Some((s, _)) => sticky(s.device),
            None => Ok(()),
        }
    })
}

#[unsafe(no_mangle)]
extern "C" fn cuEventElapsedTime(ms: *mut f32, start: CUevent, end: CUevent) -> CUresult {
    call(|| {
        let mut d = driver();
        d.event("cuEventElapsedTime", start as usize)?;
        d.event("cuEventElapsedTime", end as usize)?;
        put(ms, 0.0)
    })
}

// ---- errors ------------------------------------------------------------------

fn error_text(code: CUresult, out: *mut *const c_char, name: bool) -> CUresult {
    match ERRORS.iter().find(|(c, ..)| *c == code) {
        Some((_, n, s)) => call(|| put(out, if name { n } else { s }.as_ptr().cast())),
        None => CUDA_ERROR_INVALID_VALUE,
    }
}

#[unsafe(no_mangle)]
extern "C" fn cuGetErrorName(code: CUresult, out: *mut *const c_char) -> CUresult {
    error_text(code, out, true)
}

#[unsafe(no_mangle)]
extern "C" fn cuGetErrorString(code: CUresult, out: *mut *const c_char) -> CUresult {
    error_text(code, out, false)
}
