//! The simulated driver's state: devices, allocations, pinned memory,
//! streams and events, the fault plan and the violations found.
//!
//! One process-wide [`Driver`] behind a mutex. Stream queues have their own
//! locks and worker threads; a caller never waits on a stream while holding
//! the driver lock, and a worker takes the driver lock only to execute one
//! operation, so the two cannot deadlock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use crate::result::*;

/// Device allocations start at `DEVICE_BASE + ordinal * DEVICE_SPAN`:
/// device pointers are never host addresses, and the device of a pointer
/// is visible in it.
const DEVICE_BASE: u64 = 0x7000_0000_0000;
const DEVICE_SPAN: u64 = 1 << 40;
/// Gap left after every allocation: an overrun lands in unmapped space and
/// fails, instead of silently hitting the next allocation. Addresses are
/// never reused, so a use after free always fails too.
const GUARD: u64 = 64 << 10;
/// Alignment of device allocations (what cuMemAlloc guarantees).
pub(crate) const DEVICE_ALIGN: u64 = 256;
/// The byte fresh device and pinned memory holds until written.
pub(crate) const POISON: u8 = 0xA5;
/// Alignment of pinned host allocations (a page).
const HOST_ALIGN: usize = 4096;

/// What the simulated machine looks like and which faults it injects.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub names: Vec<String>,
    pub memory: u64,
    pub copy_delay: Duration,
    pub async_alloc: bool,
    pub fail_device_alloc_at: u64,
    pub fail_host_alloc_at: u64,
    pub fail_copy_at: u64,
    /// (device, copy number): the device is lost at that host-to-device copy.
    pub lose_device_at_copy: Option<(usize, u64)>,
}

impl Config {
    fn from_env() -> Self {
        let num = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let devices = num("TSIM_DEVICES", 1) as usize;
        Self {
            names: (0..devices).map(default_name).collect(),
            memory: num("TSIM_DEVICE_MEMORY", 8 << 30),
            copy_delay: Duration::from_micros(num("TSIM_COPY_DELAY_US", 50)),
            async_alloc: num("TSIM_ASYNC_ALLOC", 1) != 0,
            fail_device_alloc_at: 0,
            fail_host_alloc_at: 0,
            fail_copy_at: 0,
            lose_device_at_copy: None,
        }
    }
}

pub(crate) fn default_name(ordinal: usize) -> String {
    format!("Simulated CUDA device {ordinal} (tensorizer-cuda-sim)")
}

/// Bookkeeping a test reads back (`tsim_stats`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// Device allocations not yet freed (a pending `cuMemFreeAsync` counts as live).
    pub live_device_allocations: u64,
    /// Their bytes.
    pub live_device_bytes: u64,
    /// The most device bytes live at once since the last reset.
    pub peak_device_bytes: u64,
    /// Pinned host allocations not yet freed.
    pub live_pinned_allocations: u64,
    /// Their bytes.
    pub pinned_bytes: u64,
    /// The most pinned bytes held at once since the last reset.
    pub peak_pinned_bytes: u64,
    /// Host-to-device copies executed since the last reset.
    pub h2d_copies: u64,
    /// Their bytes.
    pub h2d_bytes: u64,
    /// Streams not yet destroyed.
    pub live_streams: u64,
    /// Events not yet destroyed.
    pub live_events: u64,
    /// Primary contexts retained and not released.
    pub retained_contexts: u64,
    /// Violations recorded since the last reset.
    pub violations: u64,
    /// Bit `k` set: device `k` received an allocation since the last reset.
    pub devices_used: u64,
}

/// One device allocation: real host memory, poisoned until written.
#[derive(Debug)]
pub(crate) struct DeviceAlloc {
    pub device: usize,
    pub data: Vec<u8>,
    /// False until a stream-ordered allocation's stream reaches it.
    pub ready: Arc<AtomicBool>,
    /// A `cuMemFreeAsync` has been enqueued for it.
    pub freeing: bool,
}

impl Driver {
    /// Devices the machine has now (`cuDeviceGetCount`).
    pub fn device_count(&self) -> usize {
        self.config.names.len()
    }
}

#[derive(Debug)]
pub(crate) struct DeviceState {
    pub used: u64,
    pub next: u64,
    pub lost: bool,
    /// The first asynchronous error, returned by every later synchronization.
    pub sticky: Option<CUresult>,
    pub primary_refs: u64,
    pub default_stream: Option<Arc<Stream>>,
    /// Every stream made on the device, destroyed ones included while
    /// their queued work drains (their threads hold them).
    pub all_streams: Vec<std::sync::Weak<Stream>>,
}

impl DeviceState {
    /// The streams that may still have work queued.
    pub fn streams(&self) -> Vec<Arc<Stream>> {
        self.all_streams
            .iter()
            .filter_map(|w| w.upgrade())
            .collect()
    }
}

/// Where the bytes of a host-to-device copy come from.
#[derive(Debug)]
pub(crate) enum Source {
    /// Pinned memory, read when the copy executes (as a DMA engine does);
    /// the checksum taken at enqueue detects a buffer rewritten meanwhile.
    Pinned { ptr: usize, crc: u32 },
    /// Pageable memory: the driver stages it before the call returns.
    Staged(Vec<u8>),
}

#[derive(Debug)]
pub(crate) enum Op {
    HtoD {
        call: &'static str,
        dst: u64,
        src: Source,
        len: usize,
    },
    DtoH {
        call: &'static str,
        dst: usize,
        src: u64,
        len: usize,
    },
    DtoD {
        call: &'static str,
        dst: u64,
        src: u64,
        len: usize,
    },
    Memset {
        call: &'static str,
        dst: u64,
        value: u8,
        len: usize,
    },
    /// A stream-ordered allocation becomes usable.
    AllocReady(Arc<AtomicBool>),
    /// A stream-ordered free takes effect.
    Free(u64),
    /// Wait until `stream` has completed operation `seq`.
    Wait(Arc<Stream>, u64),
    /// An event's point in the stream (nothing to do).
    Marker,
}

#[derive(Debug, Default)]
pub(crate) struct Queue {
    pub ops: VecDeque<(u64, Op)>,
    pub enqueued: u64,
    pub completed: u64,
    pub destroyed: bool,
}

/// A stream: a FIFO of operations executed by its own thread.
#[derive(Debug)]
pub(crate) struct Stream {
    pub device: usize,
    pub queue: Mutex<Queue>,
    pub changed: Condvar,
}

impl Stream {
    pub fn new(device: usize) -> Arc<Self> {
        let stream = Arc::new(Self {
            device,
            queue: Mutex::default(),
            changed: Condvar::new(),
        });
        let worker = stream.clone();
        std::thread::Builder::new()
            .name(format!("cuda-sim stream (device {device})"))
            .spawn(move || worker.run())
            .expect("spawning a simulated stream's thread");
        stream
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `op`; returns its sequence number.
    pub fn enqueue(&self, op: Op) -> u64 {
        let mut q = self.lock();
        q.enqueued += 1;
        let seq = q.enqueued;
        q.ops.push_back((seq, op));
        self.changed.notify_all();
        seq
    }

    /// The sequence number of the last operation enqueued.
    pub fn tail(&self) -> u64 {
        self.lock().enqueued
    }

    pub fn is_done(&self, seq: u64) -> bool {
        self.lock().completed >= seq
    }

    /// Blocks until operation `seq` has completed.
    pub fn wait_for(&self, seq: u64) {
        let mut q = self.lock();
        while q.completed < seq {
            q = self.changed.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub fn destroy(&self) {
        self.lock().destroyed = true;
        self.changed.notify_all();
    }

    fn run(self: Arc<Self>) {
        loop {
            let (seq, op) = {
                let mut q = self.lock();
                loop {
                    if let Some(front) = q.ops.pop_front() {
                        break front;
                    }
                    if q.destroyed {
                        return;
                    }
                    q = self.changed.wait(q).unwrap_or_else(|e| e.into_inner());
                }
            };
            execute(self.device, op);
            let mut q = self.lock();
            q.completed = seq;
            self.changed.notify_all();
        }
    }
}

/// An event: the point of a stream it was last recorded at, if any.
#[derive(Debug, Default)]
pub(crate) struct Event {
    pub recorded: Mutex<Option<(Arc<Stream>, u64)>>,
}

impl Event {
    pub fn point(&self) -> Option<(Arc<Stream>, u64)> {
        self.recorded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The whole simulated machine.
#[derive(Debug)]
pub(crate) struct Driver {
    pub config: Config,
    pub initialized: bool,
    pub devices: Vec<DeviceState>,
    /// Live device allocations by start address.
    pub allocs: BTreeMap<u64, DeviceAlloc>,
    /// Live pinned host allocations: start -> length.
    pub pinned: BTreeMap<usize, usize>,
    pub streams: HashMap<usize, Arc<Stream>>,
    pub events: HashMap<usize, Arc<Event>>,
    pub next_handle: usize,
    pub device_alloc_calls: u64,
    pub host_alloc_calls: u64,
    pub copy_calls: u64,
    pub stats: Stats,
    pub violations: Vec<String>,
}

impl Driver {
    fn new() -> Self {
        let mut d = Self {
            config: Config::from_env(),
            initialized: false,
            devices: Vec::new(),
            allocs: BTreeMap::new(),
            pinned: BTreeMap::new(),
            streams: HashMap::new(),
            events: HashMap::new(),
            next_handle: 0x1000,
            device_alloc_calls: 0,
            host_alloc_calls: 0,
            copy_calls: 0,
            stats: Stats::default(),
            violations: Vec::new(),
        };
        d.resize_devices();
        if std::env::var_os("TSIM_REPORT").is_some() {
            // SAFETY: registers a plain function to run at exit.
            unsafe { libc::atexit(report_at_exit) };
        }
        d
    }

    /// Grows the device table to the configured count; it never shrinks,
    /// so address cursors survive a reset (addresses are never reused).
    pub fn resize_devices(&mut self) {
        let n = self.config.names.len();
        while self.devices.len() < n {
            let k = self.devices.len() as u64;
            self.devices.push(DeviceState {
                used: 0,
                next: DEVICE_BASE + k * DEVICE_SPAN + GUARD,
                lost: false,
                sticky: None,
                primary_refs: 0,
                default_stream: None,
                all_streams: Vec::new(),
            });
        }
    }

    /// Forgets faults, counters and violations; live objects stay.
    pub fn reset(&mut self) {
        self.config = Config::from_env();
        self.device_alloc_calls = 0;
        self.host_alloc_calls = 0;
        self.copy_calls = 0;
        self.violations.clear();
        for d in &mut self.devices {
            d.lost = false;
            d.sticky = None;
        }
        self.resize_devices();
        self.refresh_stats();
        self.stats.peak_device_bytes = self.stats.live_device_bytes;
        self.stats.peak_pinned_bytes = self.stats.pinned_bytes;
        self.stats.h2d_copies = 0;
        self.stats.h2d_bytes = 0;
        self.stats.devices_used = 0;
    }

    pub fn refresh_stats(&mut self) {
        let s = &mut self.stats;
        s.live_device_allocations = self.allocs.len() as u64;
        s.live_device_bytes = self.allocs.values().map(|a| a.data.len() as u64).sum();
        s.peak_device_bytes = s.peak_device_bytes.max(s.live_device_bytes);
        s.live_pinned_allocations = self.pinned.len() as u64;
        s.pinned_bytes = self.pinned.values().map(|&n| n as u64).sum();
        s.peak_pinned_bytes = s.peak_pinned_bytes.max(s.pinned_bytes);
        s.live_streams = self.streams.len() as u64;
        s.live_events = self.events.len() as u64;
        s.retained_contexts = self.devices.iter().map(|d| d.primary_refs).sum();
        s.violations = self.violations.len() as u64;
    }

    /// Records a bug the real driver would have turned into corruption, a
    /// crash or an error, and says so at once on stderr.
    pub fn violation(&mut self, message: String) {
        eprintln!("cuda-sim VIOLATION: {message}");
        self.violations.push(message);
        self.stats.violations = self.violations.len() as u64;
    }

    pub fn handle(&mut self) -> usize {
        self.next_handle += 0x10;
        self.next_handle
    }

    /// A new device allocation of `len` bytes on `device`.
    pub fn allocate(&mut self, call: &str, device: usize, len: usize, ready: bool) -> Result<u64> {
        self.device_alloc_calls += 1;
        if self.config.fail_device_alloc_at == self.device_alloc_calls {
            return Err(CUDA_ERROR_OUT_OF_MEMORY);
        }
        let state = &mut self.devices[device];
        if state.lost {
            return Err(CUDA_ERROR_DEVICE_UNAVAILABLE);
        }
        let size = len.max(1) as u64;
        if state.used.saturating_add(size) > self.config.memory {
            return Err(CUDA_ERROR_OUT_OF_MEMORY);
        }
        let mut data = Vec::new();
        if data.try_reserve_exact(len).is_err() {
            return Err(CUDA_ERROR_OUT_OF_MEMORY);
        }
        // Device memory starts uninitialised: poison it, so a program that
        // reads what it never wrote (a meta tensor never zeroed, say) sees
        // garbage, as on a GPU.
        data.resize(len, POISON);
        let at = state.next;
        state.next = (at + size + GUARD).next_multiple_of(DEVICE_ALIGN);
        state.used += size;
        let _ = call;
        self.stats.devices_used |= 1 << device.min(63);
        self.allocs.insert(
            at,
            DeviceAlloc {
                device,
                data,
                ready: Arc::new(AtomicBool::new(ready)),
                freeing: false,
            },
        );
        self.refresh_stats();
        Ok(at)
    }

    /// Removes the allocation at `at` (a free taking effect).
    pub fn release(&mut self, at: u64) {
        if let Some(a) = self.allocs.remove(&at) {
            self.devices[a.device].used -= a.data.len().max(1) as u64;
        }
        self.refresh_stats();
    }

    /// The allocation holding `ptr .. ptr + len`, or a violation naming `call`.
    pub fn find(&mut self, call: &str, what: &str, ptr: u64, len: usize) -> Result<u64> {
        let found = self
            .allocs
            .range(..=ptr)
            .next_back()
            .map(|(&at, a)| (at, a.data.len() as u64));
        match found {
            Some((at, size))
                if ptr
                    .checked_add(len as u64)
                    .is_some_and(|end| end <= at + size) =>
            {
                Ok(at)
            }
            Some((at, size)) if ptr < at + size.max(1) => {
                self.violation(format!(
                    "{call}: {what} {ptr:#x} + {len} bytes runs past the end of the {size}-byte allocation at {at:#x} (out of bounds by {} bytes)",
                    (ptr + len as u64).saturating_sub(at + size)
                ));
                Err(CUDA_ERROR_INVALID_VALUE)
            }
            _ => {
                self.violation(format!(
                    "{call}: {what} {ptr:#x} ({len} bytes) is not inside any live device allocation (never allocated, freed, or out of bounds)"
                ));
                Err(CUDA_ERROR_INVALID_VALUE)
            }
        }
    }

    /// The pinned allocation holding `ptr .. ptr + len`, if any.
    pub fn pinned_range(&self, ptr: usize, len: usize) -> Option<usize> {
        let (&at, &size) = self.pinned.range(..=ptr).next_back()?;
        (ptr.checked_add(len)? <= at + size).then_some(at)
    }

    pub fn allocate_pinned(&mut self, len: usize) -> Result<usize> {
        self.host_alloc_calls += 1;
        if self.config.fail_host_alloc_at == self.host_alloc_calls {
            return Err(CUDA_ERROR_OUT_OF_MEMORY);
        }
        let layout = std::alloc::Layout::from_size_align(len.max(1), HOST_ALIGN)
            .map_err(|_| CUDA_ERROR_OUT_OF_MEMORY)?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        if ptr.is_null() {
            return Err(CUDA_ERROR_OUT_OF_MEMORY);
        }
        // Uninitialised, like the driver's: poisoned.
        // SAFETY: `ptr` was just allocated for `len.max(1)` bytes.
        unsafe { std::ptr::write_bytes(ptr, POISON, len.max(1)) };
        self.pinned.insert(ptr as usize, len.max(1));
        self.refresh_stats();
        Ok(ptr as usize)
    }

    pub fn free_pinned(&mut self, call: &str, ptr: usize) -> Result<()> {
        let Some(len) = self.pinned.remove(&ptr) else {
            self.violation(format!(
                "{call}: {ptr:#x} is not a live pinned allocation (double free, or memory not from cuMemHostAlloc)"
            ));
            return Err(CUDA_ERROR_INVALID_VALUE);
        };
        // Copies still reading it would read freed memory: the real driver
        // synchronizes here, the simulator says it.
        let pending: Vec<Arc<Stream>> = self.streams.values().cloned().collect();
        for s in pending {
            let q = s.lock();
            if q.ops.iter().any(|(_, op)| matches!(op, Op::HtoD { src: Source::Pinned { ptr: p, .. }, .. } if (ptr..ptr + len).contains(p)))
            {
                drop(q);
                self.violation(format!(
                    "{call}: pinned buffer {ptr:#x} ({len} bytes) freed while a copy from it is still queued"
                ));
                break;
            }
        }
        let layout =
            std::alloc::Layout::from_size_align(len, HOST_ALIGN).expect("checked at allocation");
        // SAFETY: allocated in `allocate_pinned` with this layout, removed
        // from the table above so it is freed once.
        unsafe { std::alloc::dealloc(ptr as *mut u8, layout) };
        self.refresh_stats();
        Ok(())
    }

    pub fn stream(
        &mut self,
        call: &str,
        handle: usize,
        device: Option<usize>,
    ) -> Result<Arc<Stream>> {
        if handle == 0 {
            let Some(device) = device else {
                return Err(CUDA_ERROR_INVALID_CONTEXT);
            };
            let state = &mut self.devices[device];
            if let Some(s) = &state.default_stream {
                return Ok(s.clone());
            }
            let s = Stream::new(device);
            state.all_streams.push(Arc::downgrade(&s));
            state.default_stream = Some(s.clone());
            return Ok(s);
        }
        match self.streams.get(&handle) {
            Some(s) => Ok(s.clone()),
            None => {
                self.violation(format!(
                    "{call}: stream {handle:#x} is not a live stream (destroyed, or never created)"
                ));
                Err(CUDA_ERROR_INVALID_HANDLE)
            }
        }
    }

    pub fn event(&mut self, call: &str, handle: usize) -> Result<Arc<Event>> {
        match self.events.get(&handle) {
            Some(e) => Ok(e.clone()),
            None => {
                self.violation(format!(
                    "{call}: event {handle:#x} is not a live event (destroyed, or never created)"
                ));
                Err(CUDA_ERROR_INVALID_HANDLE)
            }
        }
    }
}

static DRIVER: OnceLock<Mutex<Driver>> = OnceLock::new();

/// With `TSIM_REPORT=FILE`, the bookkeeping is written to FILE when the
/// process exits (`name value` lines, then `violation: ...` lines): how a
/// test checks a program it runs in a subprocess.
extern "C" fn report_at_exit() {
    let Some(path) = std::env::var_os("TSIM_REPORT") else {
        return;
    };
    let mut d = driver();
    d.refresh_stats();
    let s = d.stats;
    let mut text = format!(
        "live_device_allocations {}\nlive_device_bytes {}\npeak_device_bytes {}\nlive_pinned_allocations {}\npinned_bytes {}\npeak_pinned_bytes {}\nh2d_copies {}\nh2d_bytes {}\nlive_streams {}\nlive_events {}\nretained_contexts {}\nviolations {}\ndevices_used {}\n",
        s.live_device_allocations,
        s.live_device_bytes,
        s.peak_device_bytes,
        s.live_pinned_allocations,
        s.pinned_bytes,
        s.peak_pinned_bytes,
        s.h2d_copies,
        s.h2d_bytes,
        s.live_streams,
        s.live_events,
        s.retained_contexts,
        s.violations,
        s.devices_used
    );
    for v in &d.violations {
        text.push_str(&format!("violation: {v}\n"));
    }
    let _ = std::fs::write(path, text);
}

/// The process-wide simulated driver.
pub(crate) fn driver() -> MutexGuard<'static, Driver> {
    DRIVER
        .get_or_init(|| Mutex::new(Driver::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

fn crc(ptr: usize, len: usize) -> u32 {
    // SAFETY: the caller checked `ptr .. ptr + len` lies in a live pinned allocation.
    crc32fast::hash(unsafe { std::slice::from_raw_parts(ptr as *const u8, len) })
}

/// The checksum of a pinned source range, taken when its copy is enqueued.
pub(crate) fn source_crc(ptr: usize, len: usize) -> u32 {
    crc(ptr, len)
}

/// Runs one queued operation on `device` (on its stream's thread).
fn execute(device: usize, op: Op) {
    let moves_bytes = matches!(
        op,
        Op::HtoD { .. } | Op::DtoH { .. } | Op::DtoD { .. } | Op::Memset { .. }
    );
    let delay = driver().config.copy_delay;
    if moves_bytes && !delay.is_zero() {
        std::thread::sleep(delay);
    }
    let mut d = driver();
    if d.devices[device].lost && moves_bytes {
        // A lost device runs nothing; its next synchronization says so.
        d.devices[device]
            .sticky
            .get_or_insert(CUDA_ERROR_DEVICE_UNAVAILABLE);
        return;
    }
    match op {
        Op::HtoD {
            call,
            dst,
            src,
            len,
        } => {
            let Some(at) = usable(&mut d, device, call, "destination", dst, len) else {
                return;
            };
            let offset = (dst - at) as usize;
            match src {
                Source::Staged(bytes) => {
                    let a = d.allocs.get_mut(&at).expect("found above");
                    a.data[offset..offset + len].copy_from_slice(&bytes);
                }
                Source::Pinned {
                    ptr,
                    crc: at_enqueue,
                } => {
                    if d.pinned_range(ptr, len).is_none() {
                        d.violation(format!(
                            "{call}: pinned source {ptr:#x} ({len} bytes) was freed before the copy executed"
                        ));
                        d.devices[device]
                            .sticky
                            .get_or_insert(CUDA_ERROR_ILLEGAL_ADDRESS);
                        return;
                    }
                    let now = crc(ptr, len);
                    if now != at_enqueue {
                        d.violation(format!(
                            "{call}: the pinned source {ptr:#x} ({len} bytes) changed between the call and the copy's execution: a staging buffer was reused before its copy completed (wrong bytes reach the device)"
                        ));
                    }
                    // SAFETY: the range lies inside a live pinned allocation (checked above).
                    let bytes = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
                    let a = d.allocs.get_mut(&at).expect("found above");
                    a.data[offset..offset + len].copy_from_slice(bytes);
                }
            }
            d.stats.h2d_copies += 1;
            d.stats.h2d_bytes += len as u64;
        }
        Op::DtoH {
            call,
            dst,
            src,
            len,
        } => {
            let Some(at) = usable(&mut d, device, call, "source", src, len) else {
                return;
            };
            let offset = (src - at) as usize;
            let a = &d.allocs[&at];
            // SAFETY: the caller's destination was given for `len` bytes;
            // for pinned destinations it was checked at enqueue, pageable
            // ones are written while the caller waits.
            unsafe {
                std::ptr::copy_nonoverlapping(a.data[offset..].as_ptr(), dst as *mut u8, len)
            };
        }
        Op::DtoD {
            call,
            dst,
            src,
            len,
        } => {
            let (Some(s), Some(t)) = (
                usable(&mut d, device, call, "source", src, len),
                usable(&mut d, device, call, "destination", dst, len),
            ) else {
                return;
            };
            let bytes = d.allocs[&s].data[(src - s) as usize..][..len].to_vec();
            d.allocs.get_mut(&t).expect("found above").data[(dst - t) as usize..][..len]
                .copy_from_slice(&bytes);
        }
        Op::Memset {
            call,
            dst,
            value,
            len,
        } => {
            let Some(at) = usable(&mut d, device, call, "destination", dst, len) else {
                return;
            };
            d.allocs.get_mut(&at).expect("found above").data[(dst - at) as usize..][..len]
                .fill(value);
        }
        Op::AllocReady(flag) => flag.store(true, Ordering::Release),
        Op::Free(at) => d.release(at),
        Op::Wait(stream, seq) => {
            drop(d);
            stream.wait_for(seq);
        }
        Op::Marker => {}
    }
}

/// At execution: the live, ready allocation holding `ptr .. ptr + len`;
/// otherwise a violation, and `device` gets the sticky illegal-address
/// error a GPU would raise.
fn usable(
    d: &mut Driver,
    device: usize,
    call: &str,
    what: &str,
    ptr: u64,
    len: usize,
) -> Option<u64> {
    let found = d.find(&format!("{call} (executing)"), what, ptr, len).ok();
    let ready = found.filter(|at| d.allocs[at].ready.load(Ordering::Acquire));
    if found.is_some() && ready.is_none() {
        d.violation(format!(
            "{call}: {what} {ptr:#x} used on another stream before its stream-ordered allocation (cuMemAllocAsync) completed"
        ));
    }
    if ready.is_none() {
        d.devices[device]
            .sticky
            .get_or_insert(CUDA_ERROR_ILLEGAL_ADDRESS);
    }
    ready
}
