//! One `crypto_secretbox_detached` box, in place: XSalsa20 keystream XOR and
//! Poly1305 over the ciphertext, fused into one walk over the data.
//!
//! The walk goes in pieces small enough to stay in L1 cache: each piece is
//! MACed and XORed while it is hot, so authenticating costs no second pass
//! over memory. On a MAC mismatch the XOR is undone before returning, so the
//! caller's buffer never holds plaintext that failed authentication.

use subtle::ConstantTimeEq;

use crate::key::EncryptionKey;
use crate::nonce::Nonce;
use crate::poly::{Poly1305, PolyKernel};
use crate::salsa::{self, BLOCK_LEN, Backend};

/// A Poly1305 tag.
pub type Mac = [u8; 16];

/// Bytes processed per step of the fused walk (a multiple of the block size).
const PIECE: usize = 16 * 1024;

/// The Salsa20 input for one box: HSalsa20 subkey and the nonce's last 8 bytes.
fn box_state(key: &EncryptionKey, nonce: &Nonce) -> [u32; 16] {
    let (head, tail) = nonce.0.split_at(16);
    let subkey = salsa::hsalsa20(key.as_bytes(), head.try_into().expect("16 bytes"));
    salsa::initial_state(&subkey, tail.try_into().expect("8 bytes"))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum MacWhen {
    /// MAC the ciphertext, then XOR (decryption).
    BeforeXor,
    /// XOR, then MAC the ciphertext (encryption).
    AfterXor,
    /// XOR only.
    Never,
}

/// XORs `data` with the box's message keystream (which starts 32 bytes into
/// block 0) and computes Poly1305 over the ciphertext as `when` says.
fn walk(backend: Backend, state: &[u32; 16], data: &mut [u8], when: MacWhen) -> Mac {
    let block0 = salsa::block(state, 0);
    let mut mac = Poly1305::with_kernel(
        block0[..32].try_into().expect("32 bytes"),
        PolyKernel::for_backend(backend),
    );
    let (head, rest) = data.split_at_mut(data.len().min(32));
    let head_is_last = rest.is_empty();

    // Every piece but the last is a whole number of 16-byte blocks.
    let feed = |mac: &mut Poly1305, piece: &[u8]| mac.update(piece);
    if head_is_last {
        // Fewer than 33 bytes: the whole message is this head.
        let xor_head = |head: &mut [u8]| {
            head.iter_mut()
                .zip(&block0[32..])
                .for_each(|(d, k)| *d ^= k)
        };
        let tag = match when {
            MacWhen::BeforeXor => {
                let tag = mac.finish(head);
                xor_head(head);
                tag
            }
            MacWhen::AfterXor => {
                xor_head(head);
                mac.finish(head)
            }
            MacWhen::Never => {
                xor_head(head);
                [0; 16]
            }
        };
        return tag;
    }
    if when == MacWhen::BeforeXor {
        feed(&mut mac, head);
    }
    head.iter_mut()
        .zip(&block0[32..])
        .for_each(|(d, k)| *d ^= k);
    if when == MacWhen::AfterXor {
        feed(&mut mac, head);
    }
    let pieces = rest.len().div_ceil(PIECE);
    for (i, piece) in rest.chunks_mut(PIECE).enumerate() {
        let last = i + 1 == pieces;
        if when == MacWhen::BeforeXor && !last {
            feed(&mut mac, piece);
        }
        let counter = 1 + (i * PIECE / BLOCK_LEN) as u64;
        if last {
            return match when {
                MacWhen::BeforeXor => {
                    let tag = mac.finish(piece);
                    salsa::xor_keystream(backend, state, counter, piece);
                    tag
                }
                MacWhen::AfterXor => {
                    salsa::xor_keystream(backend, state, counter, piece);
                    mac.finish(piece)
                }
                MacWhen::Never => {
                    salsa::xor_keystream(backend, state, counter, piece);
                    [0; 16]
                }
            };
        }
        salsa::xor_keystream(backend, state, counter, piece);
        if when == MacWhen::AfterXor {
            feed(&mut mac, piece);
        }
    }
    unreachable!("the last piece returns")
}

/// Encrypts `data` in place; returns the detached MAC
/// (`crypto_secretbox_detached`).
pub fn seal(backend: Backend, key: &EncryptionKey, nonce: &Nonce, data: &mut [u8]) -> Mac {
    walk(backend, &box_state(key, nonce), data, MacWhen::AfterXor)
}

/// Decrypts `data` in place if `mac` authenticates it
/// (`crypto_secretbox_open_detached`), in one fused pass. On failure `data`
/// holds the ciphertext again and `false` is returned.
#[must_use]
pub fn open(
    backend: Backend,
    key: &EncryptionKey,
    nonce: &Nonce,
    data: &mut [u8],
    mac: &Mac,
) -> bool {
    let state = box_state(key, nonce);
    let tag = walk(backend, &state, data, MacWhen::BeforeXor);
    if bool::from(tag.ct_eq(mac)) {
        return true;
    }
    walk(backend, &state, data, MacWhen::Never); // undo: XOR is its own inverse
    false
}

/// Like [`open`], but checks the MAC in a first pass and decrypts in a
/// second, so no byte is ever XORed before authentication.
#[must_use]
pub fn open_verify_first(
    backend: Backend,
    key: &EncryptionKey,
    nonce: &Nonce,
    data: &mut [u8],
    mac: &Mac,
) -> bool {
    if !authenticates(key, nonce, data, mac) {
        return false;
    }
    walk(backend, &box_state(key, nonce), data, MacWhen::Never);
    true
}

/// True when `mac` authenticates `ciphertext` under `key` and `nonce`
/// (nothing is decrypted).
pub fn authenticates(key: &EncryptionKey, nonce: &Nonce, ciphertext: &[u8], mac: &Mac) -> bool {
    let block0 = salsa::block(&box_state(key, nonce), 0);
    let tag = Poly1305::with_kernel(
        block0[..32].try_into().expect("32 bytes"),
        PolyKernel::detect(),
    )
    .finish(ciphertext);
    bool::from(tag.ct_eq(mac))
}
