//! On a GPU: every fixture and a multi-GiB model loaded onto the device,
//! copied back and compared by SHA-256 with the host load, encrypted
//! included; arena and per-tensor placement; out-of-memory names sizes.
//! Without a CUDA driver these tests say so and do not run (the loader's
//! scheduling is tested on host destinations in `pipeline.rs`).
//! Run them on a GPU machine with `cargo xtask gpu-test`.
#![cfg(feature = "cuda")]

mod common;

use std::path::PathBuf;

use common::*;
use tensorizer::cuda::{CudaOptions, driver_available};
use tensorizer::{Decryption, Deserializer, Dtype, EncryptionKey, Serializer, TensorData};

fn gpu_present() -> bool {
    let ok = driver_available() && tensorizer::cuda::device_count().is_ok_and(|n| n > 0);
    if !ok {
        eprintln!(
            "GPU TESTS DID NOT RUN: no CUDA driver or device on this machine (run `cargo xtask gpu-test` on a GPU machine)"
        );
    }
    ok
}

/// Host load and device round trip of one file agree tensor by tensor.
fn check(path: &std::path::Path, options: &CudaOptions) -> usize {
    let open = || {
        let d = Deserializer::open(path)?;
        match key_of(path) {
            Some(k) => d.decryption(k),
            None => Ok(d),
        }
    };
    let Ok(host) = open().and_then(|d| d.read_all()) else {
        return 0; // a broken fixture: the host refuses it too
    };
    let model = open().unwrap().to_cuda(0, options).unwrap();
    assert_eq!(model.tensors().len(), host.len());
    for (d, h) in model.tensors().iter().zip(&host) {
        let back = model.to_host(d).unwrap();
        assert_eq!(d.info.path, *h.path());
        assert_eq!(
            sha256_hex(back.as_bytes()),
            sha256_hex(h.as_bytes()),
            "{} {}",
            path.display(),
            h.name()
        );
    }
    host.len()
}

#[test]
fn every_fixture_round_trips_through_the_gpu() {
    if !gpu_present() {
        return;
    }
    let mut tensors = 0;
    for set in ["tensorizer-2.12.1", "tensorizer-2.12.1-extended-dtypes"] {
        for entry in std::fs::read_dir(fixtures().join(set)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "tensors") {
                tensors += check(&path, &CudaOptions::default());
                tensors += check(
                    &path,
                    &CudaOptions {
                        arena: false,
                        staging_buffers: 2,
                        // Tensors above 2 MiB go through in pieces.
                        staging_size: Some(2 << 20),
                        ..Default::default()
                    },
                );
            }
        }
    }
    assert!(tensors > 1000, "{tensors}");
}

#[test]
fn a_multi_gib_model_plain_and_encrypted() {
    if !gpu_present() {
        return;
    }
    let dir = PathBuf::from(
        std::env::var_os("TENSORIZER_GPU_TMP").unwrap_or_else(|| std::env::temp_dir().into()),
    );
    let path = dir.join("tensorizer-gpu-test.tensors");
    let enc = dir.join("tensorizer-gpu-test-enc.tensors");
    let key = EncryptionKey::from_bytes([3; 32]);
    // 2.5 GiB: 20 tensors of 128 MiB in bf16.
    let data: Vec<Vec<u8>> = (0..20u8)
        .map(|i| {
            (0..128usize << 20)
                .map(|k| (k as u8).wrapping_mul(i + 1))
                .collect()
        })
        .collect();
    for (out, encrypted) in [(&path, false), (&enc, true)] {
        let mut s = Serializer::new();
        for (i, d) in data.iter().enumerate() {
            s.write_state_dict([(
                format!("layer.{i}"),
                TensorData::new(Dtype::BF16, &[64 << 20], d).unwrap(),
            )])
            .unwrap();
        }
        if encrypted {
            s.encryption(tensorizer::Encryption::with_key(key.clone()));
        }
        s.write_to_file(out).unwrap();
    }
    for (file, dec) in [(&path, None), (&enc, Some(Decryption::Key(key.clone())))] {
        let mut d = Deserializer::open(file).unwrap();
        if let Some(dec) = dec {
            d = d.decryption(dec).unwrap();
        }
        let model = d.to_cuda(0, &CudaOptions::default()).unwrap();
        for (t, want) in model.tensors().iter().zip(&data) {
            assert_eq!(
                sha256_hex(model.to_host(t).unwrap().as_bytes()),
                sha256_hex(want)
            );
        }
    }
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&enc);
}

#[test]
fn out_of_memory_names_the_tensor_and_the_sizes() {
    if !gpu_present() {
        return;
    }
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
}

#[test]
fn without_a_gpu_the_error_is_clear() {
    if driver_available() {
        eprintln!("a CUDA driver is present: the no-driver error path did not run here");
        return;
    }
    let path = fixtures().join("tensorizer-2.12.1/module.tensors");
    let err = Deserializer::open(path)
        .unwrap()
        .to_cuda(0, &CudaOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("no CUDA driver"), "{err}");
}

#[test]
fn a_device_map_splits_one_file_across_gpus() {
    if !gpu_present() {
        return;
    }
    let gpus = tensorizer::cuda::device_count().unwrap();
    let path = fixtures().join("tensorizer-2.12.1/many_tensors.tensors");
    let d = Deserializer::open(&path).unwrap();
    let host = d.read_all().unwrap();
    let models = d
        .to_cuda_map(
            |e| (e.name.to_string().len()) % gpus,
            &CudaOptions::default(),
        )
        .unwrap();
    let mut seen = 0;
    for (ordinal, model) in &models {
        assert_eq!(model.gpu().ordinal(), *ordinal);
        for t in model.tensors() {
            let h = host.iter().find(|h| *h.path() == t.info.path).unwrap();
            assert_eq!(model.to_host(t).unwrap().as_bytes(), h.as_bytes());
            seen += 1;
        }
    }
    assert_eq!(seen, host.len());
}

/// A meta tensor claiming 2^64 - 2^20 bytes, then a real 2 MiB tensor:
/// with wrapping arithmetic the second tensor's arena offset was 1 MiB
/// before the arena. The layout is refused before the GPU is opened, so
/// this runs (and must pass) with or without a GPU.
#[test]
fn a_hostile_arena_layout_is_refused_before_any_upload() {
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
}
