//! The simulator's own C entry points (`tsim_*`): configuration, fault
//! injection and bookkeeping, for tests in Rust ([`crate::Simulator`]) and
//! Python (ctypes). Not part of the CUDA API.

use std::ffi::{CStr, c_char};
use std::time::Duration;

use crate::result::*;
use crate::state::{Stats, default_name, driver};

/// Clears faults, counters, peaks and violations and re-reads the
/// environment's configuration; live allocations, streams and contexts stay.
#[unsafe(no_mangle)]
pub extern "C" fn tsim_reset() {
    driver().reset();
}

/// `count` devices of `memory` bytes each, named by default.
#[unsafe(no_mangle)]
pub extern "C" fn tsim_set_devices(count: u32, memory: u64) {
    let mut d = driver();
    d.config.names = (0..count as usize).map(default_name).collect();
    d.config.memory = memory;
    d.resize_devices();
}

/// Renames device `ordinal` (a NUL-terminated UTF-8 name).
///
/// # Safety
/// `name` is a valid NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tsim_set_device_name(ordinal: u32, name: *const c_char) -> CUresult {
    if name.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    // SAFETY: the caller's contract.
    let name = unsafe { CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned();
    let mut d = driver();
    match d.config.names.get_mut(ordinal as usize) {
        Some(n) => {
            *n = name;
            CUDA_SUCCESS
        }
        None => CUDA_ERROR_INVALID_DEVICE,
    }
}

/// How long each copy or memset waits on its stream before it executes.
#[unsafe(no_mangle)]
pub extern "C" fn tsim_set_copy_delay_us(micros: u64) {
    driver().config.copy_delay = Duration::from_micros(micros);
}

/// Whether devices report stream-ordered allocation (`cuMemAllocAsync`).
#[unsafe(no_mangle)]
pub extern "C" fn tsim_set_async_alloc(enabled: bool) {
    driver().config.async_alloc = enabled;
}

/// The `n`th device allocation from now fails with out-of-memory (0: never).
#[unsafe(no_mangle)]
pub extern "C" fn tsim_fail_device_alloc_at(n: u64) {
    let mut d = driver();
    d.config.fail_device_alloc_at = if n == 0 { 0 } else { d.device_alloc_calls + n };
}

/// The `n`th pinned host allocation from now fails (0: never).
#[unsafe(no_mangle)]
pub extern "C" fn tsim_fail_host_alloc_at(n: u64) {
    let mut d = driver();
    d.config.fail_host_alloc_at = if n == 0 { 0 } else { d.host_alloc_calls + n };
}

/// The `n`th host-to-device copy call from now fails (0: never).
#[unsafe(no_mangle)]
pub extern "C" fn tsim_fail_copy_at(n: u64) {
    let mut d = driver();
    d.config.fail_copy_at = if n == 0 { 0 } else { d.copy_calls + n };
}

/// Device `ordinal` is lost at the `n`th host-to-device copy call from now:
/// that copy and every later call on it fail, queued work is dropped, and
/// synchronization reports `CUDA_ERROR_DEVICE_UNAVAILABLE`; frees still work.
#[unsafe(no_mangle)]
pub extern "C" fn tsim_lose_device_at_copy(ordinal: u32, n: u64) {
    let mut d = driver();
    d.config.lose_device_at_copy = Some((ordinal as usize, d.copy_calls + n));
}

/// Copies the bookkeeping into `out`.
///
/// # Safety
/// `out` is valid for a write of [`Stats`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tsim_stats(out: *mut Stats) {
    let mut d = driver();
    d.refresh_stats();
    if !out.is_null() {
        // SAFETY: the caller's contract.
        unsafe { out.write(d.stats) };
    }
}

/// Writes violation `index` (UTF-8, truncated to `cap` bytes) into `buf`;
/// returns its full length, or -1 past the last one.
///
/// # Safety
/// `buf` is valid for `cap` bytes of writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tsim_violation(index: u64, buf: *mut u8, cap: usize) -> i64 {
    let d = driver();
    let Some(text) = d.violations.get(index as usize) else {
        return -1;
    };
    let n = text.len().min(cap);
    if !buf.is_null() {
        // SAFETY: the caller's contract; `n <= cap`.
        unsafe { std::ptr::copy_nonoverlapping(text.as_ptr(), buf, n) };
    }
    text.len() as i64
}

/// Reads `len` bytes of device memory at `ptr` into `out`, once the work
/// queued before this call has run; checked like a copy (no context needed).
///
/// # Safety
/// `out` is valid for `len` bytes of writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tsim_read_device(ptr: u64, out: *mut u8, len: usize) -> CUresult {
    let streams: Vec<_> = {
        let d = driver();
        d.streams
            .values()
            .cloned()
            .chain(d.devices.iter().filter_map(|s| s.default_stream.clone()))
            .collect()
    };
    for s in &streams {
        s.wait_for(s.tail());
    }
    let mut d = driver();
    let Ok(at) = d.find("tsim_read_device", "source", ptr, len) else {
        return CUDA_ERROR_INVALID_VALUE;
    };
    let offset = (ptr - at) as usize;
    if len > 0 && !out.is_null() {
        // SAFETY: the source range is inside the allocation (checked); the
        // destination is the caller's contract.
        unsafe { std::ptr::copy_nonoverlapping(d.allocs[&at].data[offset..].as_ptr(), out, len) };
    }
    CUDA_SUCCESS
}

/// The device of the live allocation holding `ptr`, or -1.
#[unsafe(no_mangle)]
pub extern "C" fn tsim_device_of(ptr: u64) -> i32 {
    let d = driver();
    d.allocs
        .range(..=ptr)
        .next_back()
        .filter(|(at, a)| ptr < **at + a.data.len().max(1) as u64)
        .map_or(-1, |(_, a)| a.device as i32)
}
