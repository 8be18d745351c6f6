//! A strict simulated CUDA driver, so that the GPU path runs in every test
//! run on machines without a GPU.
//!
//! The crate builds twice:
//! - as a **cdylib** (`libtensorizer_cuda_sim.so`, SONAME `libcuda.so`)
//!   that exports the CUDA driver API functions `cudarc` loads at run time
//!   ([`api`](self) lists them: `cuInit`, `cuMemAlloc_v2`, `cuMemAllocAsync`,
//!   `cuMemcpyHtoDAsync_v2`, streams, events, ...), backed by host memory;
//! - as an **rlib** with [`Simulator`], which loads that cdylib into a test
//!   process before the first CUDA call (so `cudarc`'s `dlopen("libcuda.so")`
//!   finds it), configures it and reads its bookkeeping back.
//!
//! It is strict so that it finds the bugs a real GPU would:
//! - every copy, memset and free is checked against the live allocations
//!   (addresses are never reused and allocations are separated by guard
//!   gaps), so an out-of-bounds copy, a double free or a use after free
//!   fails the call and is recorded as a violation naming the call;
//! - streams run their queues on threads of their own, after a delay, and
//!   read a pinned source when the copy executes: a staging buffer reused
//!   before its copy completed puts wrong bytes on the device, and the
//!   checksum taken at the call names the race;
//! - pinned bytes, device memory per device (`cuMemGetInfo` honest) and
//!   live objects are counted; faults are injected on request (an
//!   allocation failing at the Nth call, a failing copy, a device lost
//!   mid-load).
//!
//! It is test-only: no shipped crate depends on it (see ARCHITECTURE.md).

#![allow(non_snake_case)]

mod api;
mod control;
mod result;
mod state;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

pub use result::CUresult;
pub use state::Stats;

/// File name of the simulated driver library cargo builds.
pub const LIBRARY_FILE: &str = "libtensorizer_cuda_sim.so";

/// Environment variable naming the simulated driver library, when it is not
/// next to the test executable.
pub const LIBRARY_ENV: &str = "TENSORIZER_CUDA_SIM";

/// The simulated driver, loaded into this process.
#[derive(Debug)]
pub struct Simulator {
    lib: libloading::os::unix::Library,
    path: PathBuf,
    /// Tests of one process take turns: the driver is process-wide.
    turn: Mutex<()>,
}

static INSTALLED: OnceLock<Result<Simulator, String>> = OnceLock::new();

impl Simulator {
    /// Loads the simulated driver (once per process). Call it before any
    /// CUDA call: `cudarc` then binds `libcuda.so` to it.
    pub fn install() -> Result<&'static Simulator, String> {
        INSTALLED
            .get_or_init(|| {
                let path = library_path()?;
                // SAFETY: loading our own cdylib; its initialisers only set
                // up Rust statics.
                let lib = unsafe {
                    libloading::os::unix::Library::open(
                        Some(&path),
                        libc_flags::RTLD_NOW | libc_flags::RTLD_GLOBAL,
                    )
                }
                .map_err(|e| format!("loading the simulated CUDA driver {}: {e}", path.display()))?;
                // The name cudarc asks for must now resolve to us, not to a
                // real driver loaded earlier.
                // SAFETY: RTLD_NOLOAD only looks up an already loaded library.
                let bound = unsafe {
                    libloading::os::unix::Library::open(
                        Some("libcuda.so"),
                        libc_flags::RTLD_NOW | libc_flags::RTLD_NOLOAD,
                    )
                };
                // SAFETY: looking up a symbol, not calling it.
                let ours = bound
                    .as_ref()
                    .is_ok_and(|l| unsafe { l.get::<unsafe extern "C" fn()>(b"tsim_reset") }.is_ok());
                if !ours {
                    return Err(
                        "libcuda.so in this process is not the simulated driver (a real driver was loaded first)".into(),
                    );
                }
                Ok(Simulator {
                    lib,
                    path,
                    turn: Mutex::new(()),
                })
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Where the library was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for this process's other tests to finish with the driver, then
    /// resets it (faults, counters, violations; 1 device of 8 GiB unless
    /// `TSIM_DEVICES`/`TSIM_DEVICE_MEMORY` say otherwise).
    pub fn session(&self) -> Session<'_> {
        let turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        let session = Session {
            sim: self,
            _turn: turn,
        };
        // SAFETY: calls into the simulator's own entry points (see control.rs).
        unsafe { session.f::<unsafe extern "C" fn()>(b"tsim_reset")() };
        session
    }
}

/// A test's exclusive use of the simulated driver.
#[derive(Debug)]
pub struct Session<'a> {
    sim: &'a Simulator,
    _turn: MutexGuard<'a, ()>,
}

impl Session<'_> {
    /// # Safety
    /// `T` is the exported function's exact signature.
    unsafe fn f<T: Copy>(&self, name: &[u8]) -> T {
        // SAFETY: the caller names the signature; the symbols are ours.
        *unsafe { self.sim.lib.get::<T>(name) }.unwrap_or_else(|e| {
            panic!(
                "simulated driver lacks {}: {e}",
                String::from_utf8_lossy(name)
            )
        })
    }

    /// Back to the environment's configuration, with counters, peaks,
    /// faults and violations cleared (what [`Simulator::session`] does).
    pub fn reset(&self) -> &Self {
        // SAFETY: signature as exported.
        unsafe { self.f::<unsafe extern "C" fn()>(b"tsim_reset")() };
        self
    }

    /// `count` devices with `memory` bytes each.
    pub fn set_devices(&self, count: u32, memory: u64) -> &Self {
        // SAFETY: signature as exported.
        unsafe { self.f::<unsafe extern "C" fn(u32, u64)>(b"tsim_set_devices")(count, memory) };
        self
    }

    /// Delay before each queued copy executes.
    pub fn set_copy_delay_us(&self, micros: u64) -> &Self {
        // SAFETY: signature as exported.
        unsafe { self.f::<unsafe extern "C" fn(u64)>(b"tsim_set_copy_delay_us")(micros) };
        self
    }

    /// Whether devices offer stream-ordered allocation.
    pub fn set_async_alloc(&self, enabled: bool) -> &Self {
        // SAFETY: signature as exported.
        unsafe { self.f::<unsafe extern "C" fn(bool)>(b"tsim_set_async_alloc")(enabled) };
        self
    }

    /// The `n`th device allocation from now fails with out-of-memory.
    pub fn fail_device_alloc_at(&self, n: u64) -> &Self {
        // SAFETY: signature as exported.
        unsafe { self.f::<unsafe extern "C" fn(u64)>(b"tsim_fail_device_alloc_at")(n) };
        self
    }

    /// The `n`th pinned host allocation from now fails.
    pub fn fail_host_alloc_at(&self, n: u64) -> &Self {
        // SAFETY: signature as exported.
        unsafe { self.f::<unsafe extern "C" fn(u64)>(b"tsim_fail_host_alloc_at")(n) };
        self
    }

    /// The `n`th copy call from now (either direction) fails.
    pub fn fail_copy_at(&self, n: u64) -> &Self {
        // SAFETY: signature as exported.
        unsafe { self.f::<unsafe extern "C" fn(u64)>(b"tsim_fail_copy_at")(n) };
        self
    }

    /// Device `ordinal` is lost at the `n`th copy call from now (either direction).
    pub fn lose_device_at_copy(&self, ordinal: u32, n: u64) -> &Self {
        // SAFETY: signature as exported.
        unsafe {
            self.f::<unsafe extern "C" fn(u32, u64)>(b"tsim_lose_device_at_copy")(ordinal, n)
        };
        self
    }

    /// The bookkeeping now.
    pub fn stats(&self) -> Stats {
        let mut s = Stats::default();
        // SAFETY: signature as exported; `s` is a valid destination.
        unsafe { self.f::<unsafe extern "C" fn(*mut Stats)>(b"tsim_stats")(&mut s) };
        s
    }

    /// Every violation recorded since the session began.
    pub fn violations(&self) -> Vec<String> {
        type Get = unsafe extern "C" fn(u64, *mut u8, usize) -> i64;
        // SAFETY: signature as exported.
        let get = unsafe { self.f::<Get>(b"tsim_violation") };
        let mut out = Vec::new();
        for i in 0.. {
            // SAFETY: a null buffer with capacity 0 asks for the length only.
            let n = unsafe { get(i, std::ptr::null_mut(), 0) };
            let Ok(n) = usize::try_from(n) else { break };
            let mut buf = vec![0u8; n];
            // SAFETY: `buf` holds `n` bytes.
            unsafe { get(i, buf.as_mut_ptr(), n) };
            out.push(String::from_utf8_lossy(&buf).into_owned());
        }
        out
    }

    /// Panics listing the violations, if any.
    pub fn assert_no_violations(&self) {
        let v = self.violations();
        assert!(
            v.is_empty(),
            "the simulated CUDA driver recorded {} violation(s):\n  {}",
            v.len(),
            v.join("\n  ")
        );
    }

    /// Panics unless every device allocation, pinned buffer, stream, event
    /// and context has been released and no violation was recorded.
    pub fn assert_clean(&self) {
        self.assert_no_violations();
        let s = self.stats();
        assert!(
            s.live_device_allocations == 0
                && s.live_pinned_allocations == 0
                && s.live_streams == 0
                && s.live_events == 0
                && s.retained_contexts == 0,
            "the simulated CUDA driver still holds resources: {s:#?}"
        );
    }

    /// `len` bytes of device memory at `ptr`, once queued work has run.
    pub fn read_device(&self, ptr: u64, len: usize) -> Result<Vec<u8>, CUresult> {
        let mut out = vec![0u8; len];
        // SAFETY: signature as exported; `out` holds `len` bytes.
        let code = unsafe {
            self.f::<unsafe extern "C" fn(u64, *mut u8, usize) -> CUresult>(b"tsim_read_device")(
                ptr,
                out.as_mut_ptr(),
                len,
            )
        };
        if code == 0 { Ok(out) } else { Err(code) }
    }

    /// The device of the live allocation holding `ptr`.
    pub fn device_of(&self, ptr: u64) -> Option<u32> {
        // SAFETY: signature as exported.
        let k = unsafe { self.f::<unsafe extern "C" fn(u64) -> i32>(b"tsim_device_of")(ptr) };
        u32::try_from(k).ok()
    }
}

/// The cdylib: `$TENSORIZER_CUDA_SIM`, or next to the running test
/// executable (`target/<profile>/deps/` or `target/<profile>/`).
pub fn library_path() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(LIBRARY_ENV) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut dir = exe.parent();
    for _ in 0..3 {
        let Some(d) = dir else { break };
        for candidate in [d.join(LIBRARY_FILE), d.join("deps").join(LIBRARY_FILE)] {
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
        dir = d.parent();
    }
    Err(format!(
        "the simulated CUDA driver ({LIBRARY_FILE}) was not found next to {}: build it with `cargo build -p tensorizer-cuda-sim` or set {LIBRARY_ENV}",
        exe.display()
    ))
}

/// `dlopen` flags (glibc's values).
mod libc_flags {
    pub const RTLD_NOW: i32 = 0x2;
    pub const RTLD_GLOBAL: i32 = 0x100;
    pub const RTLD_NOLOAD: i32 = 0x4;
}
