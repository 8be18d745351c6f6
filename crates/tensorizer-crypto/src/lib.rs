#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
// `unsafe` lives only in the SIMD keystream kernels (`salsa::avx2`, `salsa::avx512`).
#![deny(unsafe_code)]

mod chunked;
mod error;
mod key;
mod nonce;
mod poly;
mod salsa;
mod secretbox;

pub use chunked::{ReadOrOpen, open_chunks, read_and_open_chunks, seal_chunks};
pub use error::{CryptoError, Result};
pub use key::{EncryptionKey, KdfParams, KdfStrength, MAX_MEMLIMIT, MAX_OPSLIMIT};
pub use nonce::Nonce;
pub use poly::PolyKernel;
pub use salsa::Backend;
pub use secretbox::{Mac, authenticates, open, open_verify_first, seal};

/// The HSalsa20 core (exposed for known-answer tests against libsodium's
/// `crypto_core_hsalsa20`).
pub fn hsalsa20(key: &[u8; 32], input: &[u8; 16]) -> [u8; 32] {
    let words = salsa::hsalsa20(key, input);
    let mut out = [0u8; 32];
    for (o, w) in out.chunks_exact_mut(4).zip(words) {
        o.copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// Poly1305 one-time authenticator of `data` under a 32-byte key with a
/// chosen kernel (for tests and benchmarks; secretboxes use
/// [`PolyKernel::detect`]).
pub fn poly1305(kernel: PolyKernel, key: &[u8; 32], data: &[u8]) -> [u8; 16] {
    poly::Poly1305::with_kernel(key, kernel).finish(data)
}

/// XORs `data` with the raw Salsa20 keystream of `key` (32 bytes) and an
/// 8-byte nonce, from block `counter` on (for tests and benchmarks of the
/// backends; tensor data goes through [`seal`] and [`open`]).
pub fn salsa20_xor(
    backend: Backend,
    key: &[u8; 32],
    nonce: &[u8; 8],
    counter: u64,
    data: &mut [u8],
) {
    let state = salsa::initial_state(&salsa::words::<8>(key), nonce);
    salsa::xor_keystream(backend, &state, counter, data);
}
