//! The GPU suite: every fixture and a multi-GiB model loaded onto the
//! device and read back byte-exact (plain, encrypted, SHA-256 verified),
//! the staging bound, out-of-memory, faults and device loss mid-load,
//! several devices, tensor-parallel shards, hostile layouts.
//!
//! It runs on the strict simulated CUDA driver (`tensorizer-cuda-sim`)
//! unless `TENSORIZER_GPU_DRIVER=real` asks for the machine's GPU (what
//! `cargo xtask gpu-test` sets where one is present). On the simulator each
//! test also checks the driver's bookkeeping: no violation (out-of-bounds
//! copy, staging buffer reused early, use after free, ...) and nothing left
//! allocated once the model is dropped. Tests that need the simulator's
//! fault injection say so on a real GPU and do not run there.
#![cfg(feature = "cuda")]

mod common;

use std::path::{Path, PathBuf};

use common::*;
use tensorizer::cuda::{CudaOptions, DeviceModel, load_shards};
use tensorizer::{
    Decryption, Deserializer, Dtype, Encryption, EncryptionKey, Serializer, TensorData, Verify,
};
use tensorizer_cuda_sim::{Session, Simulator};

/// The driver a test runs on.
enum Driver {
    Real,
    Simulated(Session<'static>),
}

impl Driver {
    fn sim(&self) -> Option<&Session<'static>> {
        match self {
            Driver::Simulated(s) => Some(s),
            Driver::Real => None,
        }
    }

    /// On the simulator: no violation, and every driver resource released.
    fn assert_clean(&self) {
        if let Some(sim) = self.sim() {
            sim.assert_clean();
        }
    }
}

fn driver() -> Driver {
    if std::env::var("TENSORIZER_GPU_DRIVER").as_deref() == Ok("real") {
        assert!(
            tensorizer::cuda::driver_available(),
            "TENSORIZER_GPU_DRIVER=real, but no CUDA driver could be loaded"
        );
        eprintln!("GPU suite: on the real CUDA driver");
        return Driver::Real;
    }
    let sim = Simulator::install().unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "GPU suite: on the simulated CUDA driver ({})",
        sim.path().display()
    );
    Driver::Simulated(sim.session())
}

/// The simulator's session, or `None` after saying the test did not run.
fn simulated(driver: &Driver, what: &str) -> bool {
    if driver.sim().is_none() {
        eprintln!("NOT RUN on the real driver: {what} needs the simulator's fault injection");
        return false;
    }
    true
}

fn open(path: &Path, verify: Verify) -> tensorizer::Result<Deserializer> {
    let d = Deserializer::open(path)?.verify(verify);
    match key_of(path) {
        Some(k) => d.decryption(k),
        None => Ok(d),
    }
}

/// Every tensor of `model` equals the host load, byte for byte.
fn assert_same(model: &DeviceModel, host: &[tensorizer::Tensor], what: &str) {
    assert_eq!(model.tensors().len(), host.len(), "{what}");
    for (d, h) in model.tensors().iter().zip(host) {
        assert_eq!(d.info.path, *h.path(), "{what}");
        let back = model.to_host(d).unwrap();
        assert!(
            back.as_bytes() == h.as_bytes(),
            "{what}: {} differs",
            h.name()
        );
    }
}

/// Host load and device load of one file agree (or both refuse it), under
/// two placements; returns the tensors checked.
fn check(driver: &Driver, path: &Path) -> usize {
    let host = open(path, Verify::All).and_then(|d| d.read_all());
    let mut checked = 0;
    for options in [
        CudaOptions::default(),
        CudaOptions {
            arena: false,
            staging_buffers: 2,
            // Tensors above 2 MiB go through in pieces.
            staging_size: Some(2 << 20),
            ..Default::default()
        },
    ] {
        let device = open(path, Verify::All).and_then(|d| d.to_cuda(0, &options));
        match (&host, device) {
            (Ok(host), Ok(model)) => {
                assert_same(&model, host, &path.display().to_string());
                checked += host.len();
            }
            (Err(_), Err(_)) => {}
            (Ok(_), Err(e)) => panic!("{}: the device load failed: {e}", path.display()),
            (Err(e), Ok(_)) => panic!(
                "{}: the host refused ({e}) but the device load passed",
                path.display()
            ),
        }
        driver.assert_clean();
    }
    checked
}

#[test]
fn every_fixture_round_trips_through_the_device() {
    let driver = driver();
    let mut tensors = 0;
    let mut files = 0;
    for set in ["tensorizer-2.12.1", "tensorizer-2.12.1-extended-dtypes"] {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(fixtures().join(set))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "tensors"))
            .collect();
        paths.sort();
        for path in paths {
            tensors += check(&driver, &path);
            files += 1;
        }
    }
    assert!(
        files > 40 && tensors > 1000,
        "{files} files, {tensors} tensors"
    );
}

/// `count` tensors of `size` bytes, each a different pattern.
fn pattern(i: usize, size: usize) -> Vec<u8> {
    (0..size)
        .map(|k| ((k as u32).wrapping_mul(2654435761) >> 13) as u8 ^ i as u8)
        .collect()
}

fn write_model(path: &Path, tensors: &[Vec<u8>], key: Option<&EncryptionKey>) {
    let mut s = Serializer::new();
    for (i, d) in tensors.iter().enumerate() {
        s.write_state_dict([(
            format!("layer.{i}.weight"),
            TensorData::new(Dtype::BF16, &[d.len() as u64 / 2], d).unwrap(),
        )])
        .unwrap();
    }
    if let Some(k) = key {
        s.encryption(Encryption::with_key(k.clone()));
    }
    s.write_to_file(path).unwrap();
}

fn gpu_tmp() -> tempfile::TempDir {
    match std::env::var_os("TENSORIZER_GPU_TMP") {
        Some(dir) => tempfile::tempdir_in(dir).unwrap(),
        None => tempfile::tempdir().unwrap(),
    }
}

#[test]
fn a_multi_gib_model_goes_through_the_staging_ring_within_its_bound() {
    let driver = driver();
    let dir = gpu_tmp();
    let key = EncryptionKey::from_bytes([3; 32]);
    // 2 GiB: 16 tensors of 128 MiB, each larger than a 64 MiB staging buffer.
    const TENSOR: usize = 128 << 20;
    let data: Vec<Vec<u8>> = (0..16).map(|i| pattern(i, TENSOR)).collect();
    let total = (data.len() * TENSOR) as u64;
    for encrypted in [false, true] {
        let path = dir.path().join(format!("model-{encrypted}.tensors"));
        write_model(&path, &data, encrypted.then_some(&key));
        if let Some(sim) = driver.sim() {
            sim.reset();
        }
        let mut d = Deserializer::open(&path).unwrap().verify(Verify::All);
        if encrypted {
            d = d.decryption(Decryption::Key(key.clone())).unwrap();
        }
        let options = CudaOptions::default();
        let model = d.to_cuda(0, &options).unwrap();
        for (t, want) in model.tensors().iter().zip(&data) {
            match driver.sim() {
                Some(sim) => {
                    let back = sim.read_device(model.device_ptr(t), t.len).unwrap();
                    assert!(back == *want, "{} differs", t.info.path);
                }
                None => assert!(model.to_host(t).unwrap().as_bytes() == &want[..]),
            }
        }
        if let Some(sim) = driver.sim() {
            let s = sim.stats();
            let ring = (options.staging_buffers * (64 << 20)) as u64;
            assert!(
                s.peak_pinned_bytes <= ring,
                "pinned memory peaked at {} bytes, above the {ring}-byte ring",
                s.peak_pinned_bytes
            );
            assert_eq!(s.h2d_bytes, total, "every byte copied once");
            assert!(s.peak_device_bytes >= total && s.peak_device_bytes < total + (1 << 20));
            eprintln!(
                "2 GiB {}: {} copies, pinned peak {} MiB, device peak {} MiB",
                if encrypted { "encrypted" } else { "plain" },
                s.h2d_copies,
                s.peak_pinned_bytes >> 20,
                s.peak_device_bytes >> 20
            );
        }
        drop(model);
        driver.assert_clean();
        std::fs::remove_file(&path).unwrap();
    }
}

fn small_model(dir: &Path, name: &str, count: usize, size: usize) -> (PathBuf, Vec<Vec<u8>>) {
    let path = dir.join(name);
    let data: Vec<Vec<u8>> = (0..count).map(|i| pattern(i, size)).collect();
    write_model(&path, &data, None);
    (path, data)
}

#[test]
fn staging_buffers_are_reused_only_after_their_copies_complete() {
    let driver = driver();
    if let Some(sim) = driver.sim() {
        // Slow copies: a buffer refilled before its copy ran would be seen.
        sim.set_copy_delay_us(3_000);
    }
    let dir = gpu_tmp();
    let (path, data) = small_model(dir.path(), "m.tensors", 12, 3 << 20);
    let options = CudaOptions {
        staging_buffers: 2,
        staging_size: Some(1 << 20),
        streams: 3,
        arena: true,
    };
    // With stream-ordered allocation (cuMemAllocAsync, as on recent
    // drivers) and without it (cuMemAlloc).
    for async_alloc in [true, false] {
        if let Some(sim) = driver.sim() {
            sim.set_async_alloc(async_alloc);
        }
        let model = Deserializer::open(&path)
            .unwrap()
            .num_readers(4)
            .to_cuda(0, &options)
            .unwrap();
        for (t, want) in model.tensors().iter().zip(&data) {
            assert!(model.to_host(t).unwrap().as_bytes() == &want[..]);
        }
        if let Some(sim) = driver.sim() {
            assert!(sim.stats().peak_pinned_bytes <= 2 << 20);
        }
        drop(model);
        driver.assert_clean();
    }
}

#[test]
fn out_of_memory_mid_load_names_the_tensor_and_frees_everything() {
    let driver = driver();
    if !simulated(&driver, "failing the 5th device allocation") {
        return;
    }
    let sim = driver.sim().unwrap();
    let dir = gpu_tmp();
    let (path, _) = small_model(dir.path(), "m.tensors", 8, 1 << 20);
    let per_tensor = CudaOptions {
        arena: false,
        ..Default::default()
    };
    sim.fail_device_alloc_at(5);
    let err = Deserializer::open(&path)
        .unwrap()
        .to_cuda(0, &per_tensor)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("layer.4.weight")
            && err.contains("out of memory")
            && err.contains("1048576 bytes requested"),
        "{err}"
    );
    driver.assert_clean();

    // Pinned memory refused for the third staging buffer.
    sim.fail_host_alloc_at(3);
    let err = Deserializer::open(&path)
        .unwrap()
        .to_cuda(0, &CudaOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("allocating pinned staging buffers"), "{err}");
    driver.assert_clean();

    // A device too small for the arena: the sizes are in the message.
    sim.set_devices(1, 6 << 20);
    let err = Deserializer::open(&path)
        .unwrap()
        .to_cuda(0, &CudaOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("out of memory allocating the arena of 8 tensors")
            && err.contains("bytes requested, 6291456 of 6291456 bytes free"),
        "{err}"
    );
    driver.assert_clean();
}

#[test]
fn out_of_memory_names_the_tensor_and_the_sizes() {
    let driver = driver();
    let gpu = tensorizer::cuda::Gpu::open(0, 1).unwrap();
    let (_, total) = gpu.memory().unwrap();
    let err = gpu
        .alloc(total as usize * 2, "tensor \"huge\"")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("huge") && err.contains("bytes requested"),
        "{err}"
    );
    drop(gpu);
    driver.assert_clean();
}

#[test]
fn a_failed_copy_or_a_lost_device_mid_load_leaves_nothing_behind() {
    let driver = driver();
    if !simulated(&driver, "a failing copy and a lost device") {
        return;
    }
    let sim = driver.sim().unwrap();
    let dir = gpu_tmp();
    let (path, _) = small_model(dir.path(), "m.tensors", 10, 3 << 20);
    let options = CudaOptions {
        staging_size: Some(1 << 20),
        ..Default::default()
    };
    sim.fail_copy_at(7);
    let err = Deserializer::open(&path)
        .unwrap()
        .to_cuda(0, &options)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("host-to-device copy") && err.contains("CUDA_ERROR_UNKNOWN"),
        "{err}"
    );
    driver.assert_clean();

    sim.lose_device_at_copy(0, 12);
    let err = Deserializer::open(&path)
        .unwrap()
        .to_cuda(0, &options)
        .unwrap_err()
        .to_string();
    assert!(err.contains("CUDA_ERROR_DEVICE_UNAVAILABLE"), "{err}");
    sim.assert_no_violations();
    let s = sim.stats();
    assert_eq!(
        (
            s.live_device_allocations,
            s.live_pinned_allocations,
            s.live_streams,
            s.retained_contexts
        ),
        (0, 0, 0, 0),
        "{s:#?}"
    );
}

#[test]
fn a_corrupt_file_fails_mid_load_and_leaves_nothing_behind() {
    let driver = driver();
    let dir = gpu_tmp();
    let (path, _) = small_model(dir.path(), "m.tensors", 6, 2 << 20);
    // Flip a byte in the last tensor's data: its CRC-32 fails after the
    // others were uploaded.
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 1000;
    bytes[at] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let err = Deserializer::open(&path)
        .unwrap()
        .to_cuda(0, &CudaOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("layer.5.weight"), "{err}");
    driver.assert_clean();
}

#[test]
fn a_device_map_splits_one_file_across_four_gpus() {
    let driver = driver();
    let gpus = match driver.sim() {
        Some(sim) => {
            sim.set_devices(4, 1 << 30);
            4
        }
        None => tensorizer::cuda::device_count().unwrap(),
    };
    let path = fixtures().join("tensorizer-2.12.1/many_tensors.tensors");
    let d = Deserializer::open(&path).unwrap();
    let host = d.read_all().unwrap();
    let index =
        |e: &tensorizer::IndexEntry| d.entries().iter().position(|x| std::ptr::eq(x, e)).unwrap();
    let models = d
        .to_cuda_map(|e| index(e) % gpus, &CudaOptions::default())
        .unwrap();
    assert_eq!(models.len(), gpus.min(host.len()));
    let mut seen = 0;
    for (ordinal, model) in &models {
        assert_eq!(model.gpu().ordinal(), *ordinal);
        for t in model.tensors() {
            let k = d.position(&t.info.path).unwrap();
            assert_eq!(host[k].path(), &t.info.path);
            assert_eq!(k % gpus, *ordinal);
            assert_eq!(model.to_host(t).unwrap().as_bytes(), host[k].as_bytes());
            if let Some(sim) = driver.sim()
                && t.len > 0
            {
                assert_eq!(sim.device_of(model.device_ptr(t)), Some(*ordinal as u32));
            }
            seen += 1;
        }
    }
    assert_eq!(seen, host.len());
    drop(models);
    driver.assert_clean();
}

#[test]
fn tensor_parallel_shards_load_onto_their_own_gpus() {
    let driver = driver();
    if let Some(sim) = driver.sim() {
        sim.set_devices(2, 1 << 30);
    } else if tensorizer::cuda::device_count().unwrap() < 2 {
        eprintln!("NOT RUN: one GPU; tensor-parallel shards need two");
        return;
    }
    let dir = gpu_tmp();
    let (rank0, data0) = small_model(dir.path(), "model-rank-000.tensors", 5, 1 << 20);
    let (rank1, data1) = small_model(dir.path(), "model-rank-001.tensors", 5, 3 << 19);
    let (d0, d1) = (
        Deserializer::open(&rank0).unwrap(),
        Deserializer::open(&rank1).unwrap(),
    );
    let models = load_shards(&[(&d0, 0), (&d1, 1)], &CudaOptions::default()).unwrap();
    for (rank, (model, data)) in models.iter().zip([&data0, &data1]).enumerate() {
        assert_eq!(model.gpu().ordinal(), rank);
        for (t, want) in model.tensors().iter().zip(data) {
            assert!(model.to_host(t).unwrap().as_bytes() == &want[..]);
            if let Some(sim) = driver.sim() {
                assert_eq!(sim.device_of(model.device_ptr(t)), Some(rank as u32));
            }
        }
    }
    drop(models);
    driver.assert_clean();
}

/// A meta tensor claiming 2^64 - 2^20 bytes, then a real 2 MiB tensor:
/// with wrapping arithmetic the second tensor's arena offset was 1 MiB
/// before the arena. The layout is refused before the GPU is touched.
#[test]
fn a_hostile_arena_layout_is_refused_before_any_upload() {
    let driver = driver();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hostile.tensors");
    let data = vec![7u8; 2 << 20];
    let mut s = Serializer::new();
    s.write_state_dict([
        (
            "huge",
            TensorData::meta(Dtype::U8, &[u64::MAX - (1 << 20) + 1]),
        ),
        (
            "real",
            TensorData::new(Dtype::U8, &[2 << 20], &data).unwrap(),
        ),
    ])
    .unwrap();
    s.write_to_file(&path).unwrap();
    let err = Deserializer::open(&path)
        .unwrap()
        .to_cuda(0, &CudaOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("device arena overflows at tensor 1"), "{err}");
    if let Some(sim) = driver.sim() {
        let s = sim.stats();
        assert_eq!(
            (s.peak_device_bytes, s.h2d_copies, s.peak_pinned_bytes),
            (0, 0, 0),
            "nothing was allocated or copied: {s:#?}"
        );
    }
    driver.assert_clean();
}

/// Meta tensors (no data stored) load as zeros, whatever their size: one
/// larger than a staging buffer included.
#[test]
fn meta_tensors_load_as_zeros_on_the_device() {
    let driver = driver();
    let dir = gpu_tmp();
    let path = dir.path().join("meta.tensors");
    let data = pattern(1, 3 << 20);
    let mut s = Serializer::new();
    s.write_state_dict([
        ("small_meta", TensorData::meta(Dtype::F32, &[1000])),
        // 96 MiB: more than one 64 MiB staging buffer.
        ("large_meta", TensorData::meta(Dtype::BF16, &[48 << 20])),
        (
            "real",
            TensorData::new(Dtype::U8, &[3 << 20], &data).unwrap(),
        ),
    ])
    .unwrap();
    s.write_to_file(&path).unwrap();
    let model = Deserializer::open(&path)
        .unwrap()
        .to_cuda(0, &CudaOptions::default())
        .unwrap();
    let sizes: Vec<usize> = model.tensors().iter().map(|t| t.len).collect();
    assert_eq!(sizes, [4000, 96 << 20, 3 << 20]);
    for t in &model.tensors()[..2] {
        let back = model.to_host(t).unwrap();
        assert!(back.as_bytes().iter().all(|&b| b == 0), "{}", t.info.path);
    }
    assert!(model.to_host(&model.tensors()[2]).unwrap().as_bytes() == &data[..]);
    drop(model);
    driver.assert_clean();
}

/// An ordinal past 32 bits is refused, not truncated onto device 0.
#[test]
fn a_huge_device_ordinal_is_refused() {
    let driver = driver();
    let err = Deserializer::open(fixtures().join("tensorizer-2.12.1/module.tensors"))
        .unwrap()
        .to_cuda(1 << 32, &CudaOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no CUDA device 4294967296"), "{err}");
    driver.assert_clean();
}

#[test]
fn a_safetensors_checkpoint_loads_onto_the_device() {
    use safetensors::tensor::{Dtype as St, TensorView};
    let driver = driver();
    let dir = tempfile::tempdir().unwrap();
    let mut want = std::collections::HashMap::new();
    for shard in 0..2u8 {
        let data: Vec<Vec<u8>> = (0..3)
            .map(|i| pattern(i + 10 * shard as usize, 4096 * (i + 1)))
            .collect();
        let views: Vec<(String, TensorView<'_>)> = data
            .iter()
            .enumerate()
            .map(|(i, d)| {
                (
                    format!("s{shard}.t{i}"),
                    TensorView::new(St::F32, vec![d.len() / 4], d).unwrap(),
                )
            })
            .collect();
        for (name, d) in views.iter().map(|(n, _)| n.clone()).zip(&data) {
            want.insert(name, d.clone());
        }
        let bytes = safetensors::tensor::serialize(views, None).unwrap();
        std::fs::write(dir.path().join(format!("model-{shard}.safetensors")), bytes).unwrap();
    }
    let checkpoint = tensorizer::Checkpoint::open(dir.path()).unwrap();
    let models = checkpoint.to_cuda(0, &CudaOptions::default()).unwrap();
    assert_eq!(models.len(), 2);
    let mut seen = 0;
    for model in &models {
        for t in model.tensors() {
            let back = model.to_host(t).unwrap();
            assert_eq!(back.as_bytes(), &want[&t.info.path.to_string()][..]);
            seen += 1;
        }
    }
    assert_eq!(seen, 6);
    drop(models);
    driver.assert_clean();
}

/// Writes every tensor of `model` from the device, through `reader`.
fn write_from_device(
    model: &DeviceModel,
    reader: &tensorizer::cuda::DeviceReader,
    path: &Path,
    key: Option<&EncryptionKey>,
) -> tensorizer::Result<()> {
    let mut w = tensorizer::StreamingSerializer::create_file(path)?;
    if let Some(k) = key {
        w.encryption(Encryption::with_key(k.clone()))?;
    }
    for t in model.tensors() {
        let copy_back = reader.tensor(model.device_ptr(t), t.len)?;
        w.write_tensor_from(
            0,
            t.info.path.clone(),
            tensorizer::TensorType::StateDict,
            Dtype::BF16,
            &[t.len as u64 / 2],
            copy_back,
        )?;
    }
    w.finish().map(drop)
}

#[test]
fn device_tensors_stream_to_a_file_through_the_staging_ring() {
    let driver = driver();
    let dir = gpu_tmp();
    // Tensors of 3 MiB through 1 MiB buffers: each in pieces, with copies
    // in flight while the last piece is hashed and written.
    let (path, data) = small_model(dir.path(), "m.tensors", 6, 3 << 20);
    let model = Deserializer::open(&path)
        .unwrap()
        .to_cuda(0, &CudaOptions::default())
        .unwrap();
    let reader = tensorizer::cuda::DeviceReader::new(0, 2, 1 << 20).unwrap();
    if let Some(sim) = driver.sim() {
        // The load's ring is gone: what is pinned now is the reader's.
        assert_eq!(sim.stats().pinned_bytes, 2 << 20);
    }

    // The same bytes as the host writer's, for the same calls.
    let out = dir.path().join("from-device.tensors");
    write_from_device(&model, &reader, &out, None).unwrap();
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&path).unwrap());
    let back = Deserializer::open(&out)
        .unwrap()
        .verify(Verify::All)
        .read_all()
        .unwrap();
    for (t, want) in back.iter().zip(&data) {
        assert!(t.as_bytes() == &want[..]);
    }

    // Encrypted: decrypts to the device's bytes.
    let key = EncryptionKey::from_bytes([9; 32]);
    let sealed = dir.path().join("sealed.tensors");
    write_from_device(&model, &reader, &sealed, Some(&key)).unwrap();
    let back = Deserializer::open(&sealed)
        .unwrap()
        .decryption(Decryption::Key(key))
        .unwrap()
        .verify(Verify::All)
        .read_all()
        .unwrap();
    for (t, want) in back.iter().zip(&data) {
        assert!(t.as_bytes() == &want[..]);
    }

    // A range the driver did not allocate is refused before any copy.
    let last = model.tensors().last().unwrap();
    let past = model.device_ptr(last) + (64 << 20);
    let err = reader.tensor(past, 16).err().unwrap().to_string();
    assert!(err.contains("not inside one live allocation"), "{err}");

    if let Some(sim) = driver.sim() {
        // A copy back failing mid-tensor: the previous file stays, no
        // debris, and nothing is left in flight.
        sim.fail_copy_at(5);
        let err = write_from_device(&model, &reader, &out, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("device-to-host copy") && err.contains("CUDA_ERROR_UNKNOWN"),
            "{err}"
        );
        assert!(std::fs::read(&out).unwrap() == std::fs::read(&path).unwrap());
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["from-device.tensors", "m.tensors", "sealed.tensors"]
        );
        sim.assert_no_violations();
    }
    drop(reader);
    drop(model);
    driver.assert_clean();
}
