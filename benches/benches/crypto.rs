//! Encrypt and decrypt throughput of tensorizer-crypto per keystream backend
//! (each with its Poly1305 kernel: `avx2` is exactly what a CPU without
//! AVX-512 runs, `avx512` adds IFMA),
//! on one core and on all cores, beside libsodium (the library the Python
//! tensorizer calls) measured in the same run; plus Argon2id at libsodium's
//! presets. `cargo bench -p tensorizer-benches --bench crypto`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rayon::prelude::*;
use tensorizer_crypto::{
    Backend, EncryptionKey, KdfParams, KdfStrength, Nonce, PolyKernel, open, open_chunks, seal,
    seal_chunks,
};

const CHUNK: usize = 2 << 20;
const ONE_CORE: usize = 8 << 20;
const ALL_CORES: usize = 64 << 20;

fn sodium_seal(key: &[u8; 32], nonce: &Nonce, data: &mut [u8]) -> [u8; 16] {
    let mut mac = [0u8; 16];
    // SAFETY: libsodium allows c == m (in place); lengths and sizes are exact.
    let rc = unsafe {
        libsodium_sys::crypto_secretbox_detached(
            data.as_mut_ptr(),
            mac.as_mut_ptr(),
            data.as_ptr(),
            data.len() as u64,
            nonce.0.as_ptr(),
            key.as_ptr(),
        )
    };
    assert_eq!(rc, 0);
    mac
}

fn sodium_open(key: &[u8; 32], nonce: &Nonce, data: &mut [u8], mac: &[u8; 16]) {
    // SAFETY: as above; libsodium verifies the MAC before writing plaintext.
    let rc = unsafe {
        libsodium_sys::crypto_secretbox_open_detached(
            data.as_mut_ptr(),
            data.as_ptr(),
            mac.as_ptr(),
            data.len() as u64,
            nonce.0.as_ptr(),
            key.as_ptr(),
        )
    };
    assert_eq!(rc, 0);
}

fn secretbox(c: &mut Criterion) {
    // SAFETY: initialises libsodium; safe to call repeatedly.
    assert!(unsafe { libsodium_sys::sodium_init() } >= 0);
    let key = EncryptionKey::from_bytes([7; 32]);
    let nonce = Nonce([9; 24]);

    let mut g = c.benchmark_group("secretbox 2 MiB chunks, one core");
    g.throughput(Throughput::Bytes(ONE_CORE as u64));
    g.sample_size(10);
    let mut data = vec![0x42u8; ONE_CORE];
    for backend in Backend::available() {
        g.bench_function(format!("encrypt/{}", backend.name()), |b| {
            b.iter(|| {
                data.chunks_mut(CHUNK)
                    .map(|ch| seal(backend, &key, &nonce, ch))
                    .count()
            })
        });
        let macs: Vec<_> = data
            .chunks_mut(CHUNK)
            .map(|ch| seal(backend, &key, &nonce, ch))
            .collect();
        g.bench_function(format!("decrypt/{}", backend.name()), |b| {
            b.iter(|| {
                // Decrypting and re-encrypting alternately keeps the MACs valid.
                for (ch, mac) in data.chunks_mut(CHUNK).zip(&macs) {
                    assert!(open(backend, &key, &nonce, ch, mac));
                    black_box(seal(backend, &key, &nonce, ch));
                }
            })
        });
    }
    g.bench_function("encrypt/libsodium", |b| {
        b.iter(|| {
            data.chunks_mut(CHUNK)
                .map(|ch| sodium_seal(key.as_bytes(), &nonce, ch))
                .count()
        })
    });
    let macs: Vec<_> = data
        .chunks_mut(CHUNK)
        .map(|ch| sodium_seal(key.as_bytes(), &nonce, ch))
        .collect();
    g.bench_function("decrypt/libsodium", |b| {
        b.iter(|| {
            // As ours: open, then seal again to keep the MACs valid.
            for (ch, mac) in data.chunks_mut(CHUNK).zip(&macs) {
                sodium_open(key.as_bytes(), &nonce, ch, mac);
                black_box(sodium_seal(key.as_bytes(), &nonce, ch));
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("secretbox 2 MiB chunks, all cores");
    g.throughput(Throughput::Bytes(ALL_CORES as u64));
    g.sample_size(10);
    let mut data = vec![0x42u8; ALL_CORES];
    for backend in Backend::available() {
        g.bench_function(format!("encrypt/{}", backend.name()), |b| {
            b.iter(|| seal_chunks(backend, &key, &nonce, CHUNK, &mut data))
        });
        g.bench_function(format!("encrypt+decrypt/{}", backend.name()), |b| {
            b.iter(|| {
                let macs = seal_chunks(backend, &key, &nonce, CHUNK, &mut data);
                open_chunks(backend, &key, &nonce, CHUNK, &mut data, &macs).unwrap();
            })
        });
    }
    g.bench_function("encrypt/libsodium", |b| {
        b.iter(|| {
            data.par_chunks_mut(CHUNK)
                .enumerate()
                .map(|(i, ch)| sodium_seal(key.as_bytes(), &nonce.add(i as u64), ch))
                .count()
        })
    });
    g.bench_function("encrypt+decrypt/libsodium", |b| {
        b.iter(|| {
            data.par_chunks_mut(CHUNK).enumerate().for_each(|(i, ch)| {
                let n = nonce.add(i as u64);
                let mac = sodium_seal(key.as_bytes(), &n, ch);
                sodium_open(key.as_bytes(), &n, ch, &mac);
            })
        })
    });
    g.finish();
}

fn poly1305(c: &mut Criterion) {
    let data = vec![0x42u8; CHUNK];
    let key = [5u8; 32];
    let mut g = c.benchmark_group("poly1305 2 MiB, one core");
    g.throughput(Throughput::Bytes(CHUNK as u64));
    for kernel in PolyKernel::available() {
        g.bench_function(format!("{kernel:?}"), |b| {
            b.iter(|| tensorizer_crypto::poly1305(kernel, &key, black_box(&data)))
        });
    }
    g.finish();
}

fn keystream(c: &mut Criterion) {
    let mut data = vec![0x42u8; CHUNK];
    let key = [5u8; 32];
    let mut g = c.benchmark_group("salsa20 keystream 2 MiB, one core");
    g.throughput(Throughput::Bytes(CHUNK as u64));
    for backend in Backend::available() {
        g.bench_function(backend.name(), |b| {
            b.iter(|| {
                tensorizer_crypto::salsa20_xor(backend, &key, &[1; 8], 0, black_box(&mut data))
            })
        });
    }
    // SAFETY: initialises libsodium; safe to call repeatedly.
    assert!(unsafe { libsodium_sys::sodium_init() } >= 0);
    g.bench_function("libsodium", |b| {
        b.iter(|| {
            // SAFETY: in place (c == m) is allowed; sizes are exact.
            let rc = unsafe {
                libsodium_sys::crypto_stream_salsa20_xor(
                    data.as_mut_ptr(),
                    data.as_ptr(),
                    data.len() as u64,
                    [1u8; 8].as_ptr(),
                    key.as_ptr(),
                )
            };
            assert_eq!(rc, 0);
        })
    });
    g.finish();
}

fn argon2id(c: &mut Criterion) {
    let mut g = c.benchmark_group("argon2id (libsodium presets)");
    g.sample_size(10);
    for strength in [
        KdfStrength::Min,
        KdfStrength::Interactive,
        KdfStrength::Moderate,
        KdfStrength::Sensitive,
    ] {
        let params = KdfParams::new(strength).unwrap();
        g.bench_function(format!("{strength:?}"), |b| {
            b.iter(|| EncryptionKey::derive(b"passphrase", &params).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, poly1305, keystream, secretbox, argon2id);
criterion_main!(benches);
