//! The simulator itself, trusted only because each strictness rule is shown
//! to catch the bug it exists for: driven through `cudarc`'s own bindings,
//! as the engine drives it.

use cudarc::driver::result::{self as cu, DriverError};
use cudarc::driver::sys::{CUevent_flags, CUresult, CUstream};
use tensorizer_cuda_sim::{Session, Simulator};

fn session() -> Session<'static> {
    Simulator::install()
        .unwrap_or_else(|e| panic!("{e}"))
        .session()
}

/// Initializes, retains device `k`'s primary context and binds it.
fn bind(k: i32) {
    cu::init().unwrap();
    let dev = cu::device::get(k).unwrap();
    // SAFETY: the simulated driver; the context is released in `unbind`.
    unsafe { cu::ctx::set_current(cu::primary_ctx::retain(dev).unwrap()) }.unwrap();
}

fn unbind(k: i32) {
    // SAFETY: releases what `bind` retained.
    unsafe { cu::primary_ctx::release(cu::device::get(k).unwrap()) }.unwrap();
}

fn stream() -> CUstream {
    cu::stream::create(cu::stream::StreamKind::NonBlocking).unwrap()
}

fn code(e: DriverError) -> CUresult {
    e.0
}

#[test]
fn an_out_of_bounds_copy_fails_and_names_the_call() {
    let sim = session();
    bind(0);
    let s = stream();
    // SAFETY: every pointer below comes from the simulated driver.
    unsafe {
        let dst = cu::malloc_sync(1000).unwrap();
        let src = vec![1u8; 1001];
        let err = cu::memcpy_htod_async(dst, &src, s).unwrap_err();
        assert_eq!(code(err), CUresult::CUDA_ERROR_INVALID_VALUE);
        // One byte before the allocation: inside the guard gap.
        let err = cu::memcpy_htod_async(dst - 1, &src[..10], s).unwrap_err();
        assert_eq!(code(err), CUresult::CUDA_ERROR_INVALID_VALUE);
        // In bounds is fine and lands.
        cu::memcpy_htod_async(dst + 990, &src[..10], s).unwrap();
        cu::stream::synchronize(s).unwrap();
        assert_eq!(sim.read_device(dst + 990, 10).unwrap(), vec![1u8; 10]);
        cu::free_sync(dst).unwrap();
        cu::stream::destroy(s).unwrap();
    }
    unbind(0);
    let v = sim.violations();
    assert_eq!(v.len(), 2, "{v:#?}");
    assert!(
        v[0].starts_with("cuMemcpyHtoDAsync_v2: destination")
            && v[0].contains("runs past the end of the 1000-byte allocation")
            && v[0].contains("out of bounds by 1 bytes"),
        "{}",
        v[0]
    );
    assert!(
        v[1].contains("not inside any live device allocation"),
        "{}",
        v[1]
    );
}

#[test]
fn a_staging_buffer_reused_before_its_copy_completed_is_caught() {
    let sim = session();
    sim.set_copy_delay_us(200_000);
    bind(0);
    let s = stream();
    // SAFETY: simulated driver pointers; the pinned buffer is ours.
    unsafe {
        let dst = cu::malloc_sync(4096).unwrap();
        let pinned = cu::malloc_host(4096, 0).unwrap().cast::<u8>();
        let staging = std::slice::from_raw_parts_mut(pinned, 4096);
        staging.fill(1);
        cu::memcpy_htod_async(dst, staging, s).unwrap();
        // The bug: refilling the buffer without waiting for the copy.
        staging.fill(2);
        cu::stream::synchronize(s).unwrap();
        // Like a DMA engine, the copy read the buffer when it ran.
        assert_eq!(sim.read_device(dst, 4096).unwrap(), vec![2u8; 4096]);
        cu::free_host(pinned.cast()).unwrap();
        cu::free_sync(dst).unwrap();
        cu::stream::destroy(s).unwrap();
    }
    unbind(0);
    let v = sim.violations();
    assert_eq!(v.len(), 1, "{v:#?}");
    assert!(
        v[0].contains("reused before its copy completed"),
        "{}",
        v[0]
    );
}

#[test]
fn waiting_for_the_copy_event_makes_reuse_safe() {
    let sim = session();
    sim.set_copy_delay_us(100_000);
    bind(0);
    let s = stream();
    // SAFETY: as above, with the event waited for before the refill.
    unsafe {
        let dst = cu::malloc_sync(8192).unwrap();
        let pinned = cu::malloc_host(4096, 0).unwrap().cast::<u8>();
        let staging = std::slice::from_raw_parts_mut(pinned, 4096);
        let done = cu::event::create(CUevent_flags::CU_EVENT_DISABLE_TIMING).unwrap();
        staging.fill(1);
        cu::memcpy_htod_async(dst, staging, s).unwrap();
        cu::event::record(done, s).unwrap();
        assert_eq!(
            cu::event::query(done).unwrap_err().0,
            CUresult::CUDA_ERROR_NOT_READY
        );
        cu::event::synchronize(done).unwrap();
        staging.fill(2);
        cu::memcpy_htod_async(dst + 4096, staging, s).unwrap();
        cu::stream::synchronize(s).unwrap();
        let back = sim.read_device(dst, 8192).unwrap();
        assert!(back[..4096].iter().all(|&b| b == 1) && back[4096..].iter().all(|&b| b == 2));
        cu::event::destroy(done).unwrap();
        cu::free_host(pinned.cast()).unwrap();
        cu::free_sync(dst).unwrap();
        cu::stream::destroy(s).unwrap();
    }
    unbind(0);
    sim.assert_clean();
}

#[test]
fn a_leak_is_seen_in_the_bookkeeping_and_at_context_release() {
    let sim = session();
    bind(0);
    // SAFETY: simulated driver; the allocation is leaked on purpose.
    let ptr = unsafe { cu::malloc_sync(1 << 20) }.unwrap();
    let s = sim.stats();
    assert_eq!(
        (s.live_device_allocations, s.live_device_bytes),
        (1, 1 << 20)
    );
    let (free, total) = cu::mem_get_info().unwrap();
    assert_eq!(
        total - free,
        1 << 20,
        "cuMemGetInfo counts what is allocated"
    );
    unbind(0);
    let v = sim.violations();
    assert_eq!(v.len(), 1, "{v:#?}");
    assert!(
        v[0].contains("destroyed with 1 allocation(s) of 1048576 bytes still live (leaked)"),
        "{}",
        v[0]
    );
    assert!(sim.device_of(ptr).is_none(), "the context took it with it");
}

#[test]
fn double_free_and_use_after_free_fail() {
    let sim = session();
    bind(0);
    let s = stream();
    // SAFETY: simulated driver; the misuse is the point.
    unsafe {
        let ptr = cu::malloc_sync(256).unwrap();
        cu::free_sync(ptr).unwrap();
        assert_eq!(
            code(cu::free_sync(ptr).unwrap_err()),
            CUresult::CUDA_ERROR_INVALID_VALUE
        );
        let err = cu::memcpy_htod_async(ptr, &[0u8; 16], s).unwrap_err();
        assert_eq!(code(err), CUresult::CUDA_ERROR_INVALID_VALUE);
        // A stream-ordered free queued twice (the first may already have
        // run: either way the second is a double free).
        let p2 = cu::malloc_async(s, 256).unwrap();
        cu::free_async(p2, s).unwrap();
        assert!(cu::free_async(p2, s).is_err());
        let pinned = cu::malloc_host(64, 0).unwrap();
        cu::free_host(pinned).unwrap();
        assert!(cu::free_host(pinned).is_err());
        cu::stream::synchronize(s).unwrap();
        cu::stream::destroy(s).unwrap();
        assert_eq!(
            code(cu::stream::synchronize(s).unwrap_err()),
            CUresult::CUDA_ERROR_INVALID_HANDLE
        );
    }
    unbind(0);
    let v = sim.violations();
    assert_eq!(v.len(), 5, "{v:#?}");
    assert!(v[0].starts_with("cuMemFree_v2:") && v[0].contains("double free"));
    assert!(v[1].starts_with("cuMemcpyHtoDAsync_v2:"));
    assert!(
        v[2].starts_with("cuMemFreeAsync:")
            && (v[2].contains("freed twice") || v[2].contains("double free")),
        "{}",
        v[2]
    );
    assert!(v[3].starts_with("cuMemFreeHost:"));
    assert!(v[4].starts_with("cuStreamSynchronize:") && v[4].contains("not a live stream"));
    assert_eq!(sim.stats().live_device_allocations, 0);
}

#[test]
fn a_stream_ordered_allocation_used_early_on_another_stream_is_caught() {
    let sim = session();
    sim.set_copy_delay_us(50_000);
    bind(0);
    let (a, b) = (stream(), stream());
    // SAFETY: simulated driver pointers.
    unsafe {
        // Stream a is busy, so the allocation queued behind it is not
        // ready when stream b copies into it.
        let busy = cu::malloc_sync(16).unwrap();
        for _ in 0..4 {
            cu::memset_d8_async(busy, 1, 16, a).unwrap();
        }
        let ptr = cu::malloc_async(a, 4096).unwrap();
        cu::memcpy_htod_async(ptr, &[7u8; 64], b).unwrap();
        assert_eq!(
            code(cu::stream::synchronize(b).unwrap_err()),
            CUresult::CUDA_ERROR_ILLEGAL_ADDRESS
        );
        cu::stream::synchronize(a).unwrap_err();
        cu::free_sync(ptr).unwrap();
        cu::free_sync(busy).unwrap();
        cu::stream::destroy(a).unwrap();
        cu::stream::destroy(b).unwrap();
    }
    unbind(0);
    let v = sim.violations();
    assert_eq!(v.len(), 1, "{v:#?}");
    assert!(
        v[0].contains("before its stream-ordered allocation"),
        "{}",
        v[0]
    );
}

#[test]
fn a_stream_waits_for_an_event_recorded_on_another() {
    let sim = session();
    sim.set_copy_delay_us(10_000);
    bind(0);
    let (a, b) = (stream(), stream());
    // SAFETY: simulated driver pointers.
    unsafe {
        let ptr = cu::malloc_sync(64).unwrap();
        let out = cu::malloc_host(64, 0).unwrap().cast::<u8>();
        cu::memset_d8_async(ptr, 9, 64, a).unwrap();
        let e = cu::event::create(CUevent_flags::CU_EVENT_DEFAULT).unwrap();
        cu::event::record(e, a).unwrap();
        cu::stream::wait_event(
            b,
            e,
            cudarc::driver::sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
        )
        .unwrap();
        cu::memcpy_dtoh_async(std::slice::from_raw_parts_mut(out, 64), ptr, b).unwrap();
        cu::stream::synchronize(b).unwrap();
        assert!(std::slice::from_raw_parts(out, 64).iter().all(|&x| x == 9));
        cu::event::destroy(e).unwrap();
        cu::free_host(out.cast()).unwrap();
        cu::free_sync(ptr).unwrap();
        cu::stream::destroy(a).unwrap();
        cu::stream::destroy(b).unwrap();
    }
    unbind(0);
    sim.assert_clean();
}

#[test]
fn calls_without_a_current_context_fail() {
    let sim = session();
    cu::init().unwrap();
    std::thread::spawn(|| {
        // SAFETY: no context on this fresh thread: the call must fail.
        let err = unsafe { cu::malloc_sync(16) }.unwrap_err();
        assert_eq!(err.0, CUresult::CUDA_ERROR_INVALID_CONTEXT);
    })
    .join()
    .unwrap();
    let v = sim.violations();
    assert!(
        v.len() == 1 && v[0].contains("no current context"),
        "{v:#?}"
    );
}

#[test]
fn memory_limits_device_count_and_names_are_configurable() {
    let sim = session();
    sim.set_devices(4, 1 << 20);
    cu::init().unwrap();
    assert_eq!(cu::device::get_count().unwrap(), 4);
    let name = cu::device::get_name(cu::device::get(3).unwrap()).unwrap();
    assert!(name.contains("Simulated CUDA device 3"), "{name}");
    assert!(cu::device::get(4).is_err());
    bind(3);
    // SAFETY: simulated driver pointers.
    unsafe {
        let a = cu::malloc_sync(600 << 10).unwrap();
        assert_eq!(
            code(cu::malloc_sync(600 << 10).unwrap_err()),
            CUresult::CUDA_ERROR_OUT_OF_MEMORY
        );
        assert_eq!(sim.device_of(a), Some(3));
        assert_eq!(
            cu::mem_get_info().unwrap(),
            ((1 << 20) - (600 << 10), 1 << 20)
        );
        cu::free_sync(a).unwrap();
    }
    unbind(3);
    sim.assert_clean();
}

#[test]
fn faults_are_injected_where_asked() {
    let sim = session();
    bind(0);
    let s = stream();
    // SAFETY: simulated driver pointers.
    unsafe {
        sim.fail_device_alloc_at(2);
        let a = cu::malloc_sync(64).unwrap();
        assert_eq!(
            code(cu::malloc_sync(64).unwrap_err()),
            CUresult::CUDA_ERROR_OUT_OF_MEMORY
        );
        sim.fail_host_alloc_at(1);
        assert!(cu::malloc_host(64, 0).is_err());
        sim.fail_copy_at(2);
        cu::memcpy_htod_async(a, &[1u8; 8], s).unwrap();
        assert_eq!(
            code(cu::memcpy_htod_async(a, &[1u8; 8], s).unwrap_err()),
            CUresult::CUDA_ERROR_UNKNOWN
        );
        sim.lose_device_at_copy(0, 2);
        cu::memcpy_htod_async(a, &[1u8; 8], s).unwrap();
        let lost = cu::memcpy_htod_async(a, &[1u8; 8], s).unwrap_err();
        assert_eq!(code(lost), CUresult::CUDA_ERROR_DEVICE_UNAVAILABLE);
        assert_eq!(
            code(cu::stream::synchronize(s).unwrap_err()),
            CUresult::CUDA_ERROR_DEVICE_UNAVAILABLE
        );
        // Cleanup still works on a lost device.
        cu::free_sync(a).unwrap();
        cu::stream::destroy(s).unwrap();
    }
    unbind(0);
    sim.assert_clean();
}

#[test]
fn fresh_device_and_pinned_memory_is_poisoned_not_zeroed() {
    let sim = session();
    bind(0);
    // SAFETY: simulated driver pointers.
    unsafe {
        let ptr = cu::malloc_sync(4096).unwrap();
        // A program that reads what it never wrote sees garbage, as on a GPU.
        assert_eq!(sim.read_device(ptr, 4096).unwrap(), vec![0xA5; 4096]);
        let host = cu::malloc_host(64, 0).unwrap().cast::<u8>();
        assert!(
            std::slice::from_raw_parts(host, 64)
                .iter()
                .all(|&b| b == 0xA5)
        );
        cu::memset_d8_sync(ptr, 0, 4096).unwrap();
        assert_eq!(sim.read_device(ptr, 4096).unwrap(), vec![0; 4096]);
        cu::free_host(host.cast()).unwrap();
        cu::free_sync(ptr).unwrap();
    }
    unbind(0);
    sim.assert_clean();
}
