//! The Salsa20 keystream: a portable implementation and SIMD kernels that
//! compute 8 (AVX2) or 16 (AVX-512) blocks at once, picked at run time.
//!
//! This module is the only place with `unsafe` in the crate: the SIMD
//! kernels use `core::arch` intrinsics behind runtime feature detection.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod portable;

use std::sync::OnceLock;

/// Bytes per Salsa20 block.
pub const BLOCK_LEN: usize = 64;

/// "expand 32-byte k".
const SIGMA: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

/// Which implementation computes the keystream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Plain Rust, one block at a time; runs anywhere.
    Portable,
    /// AVX2: eight blocks per step.
    Avx2,
    /// AVX-512F: sixteen blocks per step.
    Avx512,
}

impl Backend {
    /// The fastest backend this CPU supports (detected once), at most the
    /// one named by the environment variable `TENSORIZER_SIMD` (`portable`,
    /// `avx2` or `avx512`): `TENSORIZER_SIMD=avx2` runs the code a CPU
    /// without AVX-512 runs, keystream and MAC, to measure or test it.
    pub fn detect() -> Backend {
        static BEST: OnceLock<Backend> = OnceLock::new();
        *BEST.get_or_init(|| {
            let cap = std::env::var("TENSORIZER_SIMD").ok();
            let allowed = |b: &Backend| match cap.as_deref() {
                Some("portable") => *b == Backend::Portable,
                Some("avx2") => *b != Backend::Avx512,
                _ => true,
            };
            Backend::available()
                .into_iter()
                .rfind(allowed)
                .unwrap_or(Backend::Portable)
        })
    }

    /// Every backend this CPU can run, slowest first.
    pub fn available() -> Vec<Backend> {
        let mut out = vec![Backend::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                out.push(Backend::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx2")
            {
                out.push(Backend::Avx512);
            }
        }
        out
    }

    /// This backend if the CPU runs it, else the fastest one below it that
    /// it does: a safe caller may name any backend, and the SIMD kernels
    /// must never run on a CPU without their instructions.
    pub fn usable(self) -> Backend {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2");
            let avx512 = avx2 && std::arch::is_x86_feature_detected!("avx512f");
            match self {
                Backend::Avx512 if avx512 => Backend::Avx512,
                Backend::Avx512 | Backend::Avx2 if avx2 => Backend::Avx2,
                _ => Backend::Portable,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Backend::Portable
    }

    /// Short name for reports and benchmarks.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Portable => "portable",
            Backend::Avx2 => "avx2",
            Backend::Avx512 => "avx512",
        }
    }
}

/// The 16-word Salsa20 input for a 32-byte key and 8-byte nonce, counter 0.
pub(crate) fn initial_state(key: &[u32; 8], nonce: &[u8; 8]) -> [u32; 16] {
    [
        SIGMA[0],
        key[0],
        key[1],
        key[2],
        key[3],
        SIGMA[1],
        u32::from_le_bytes([nonce[0], nonce[1], nonce[2], nonce[3]]),
        u32::from_le_bytes([nonce[4], nonce[5], nonce[6], nonce[7]]),
        0,
        0,
        SIGMA[2],
        key[4],
        key[5],
        key[6],
        key[7],
        SIGMA[3],
    ]
}

/// HSalsa20: derives the XSalsa20 subkey from a key and the first 16 nonce bytes.
pub(crate) fn hsalsa20(key: &[u8; 32], nonce16: &[u8; 16]) -> [u32; 8] {
    let k = words::<8>(key);
    let n = words::<4>(nonce16);
    let mut x = [
        SIGMA[0], k[0], k[1], k[2], k[3], SIGMA[1], n[0], n[1], n[2], n[3], SIGMA[2], k[4], k[5],
        k[6], k[7], SIGMA[3],
    ];
    portable::rounds(&mut x);
    [x[0], x[5], x[10], x[15], x[6], x[7], x[8], x[9]]
}

/// The 64-byte keystream block `counter` (needed whole for the Poly1305 key).
pub(crate) fn block(state: &[u32; 16], counter: u64) -> [u8; BLOCK_LEN] {
    portable::block(state, counter)
}

/// XORs `data` with the keystream starting at block `counter`.
pub(crate) fn xor_keystream(backend: Backend, state: &[u32; 16], counter: u64, data: &mut [u8]) {
    match backend.usable() {
        Backend::Portable => portable::xor_keystream(state, counter, data),
        #[cfg(target_arch = "x86_64")]
        Backend::Avx2 => avx2::xor_keystream(state, counter, data),
        #[cfg(target_arch = "x86_64")]
        Backend::Avx512 => avx512::xor_keystream(state, counter, data),
        #[cfg(not(target_arch = "x86_64"))]
        _ => portable::xor_keystream(state, counter, data),
    }
}

pub(crate) fn words<const N: usize>(bytes: &[u8]) -> [u32; N] {
    let mut out = [0u32; N];
    for (w, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    out
}
