//! Salsa20 in plain Rust, one block at a time.

use super::BLOCK_LEN;

#[inline(always)]
fn quarter(x: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize) {
    x[b] ^= x[a].wrapping_add(x[d]).rotate_left(7);
    x[c] ^= x[b].wrapping_add(x[a]).rotate_left(9);
    x[d] ^= x[c].wrapping_add(x[b]).rotate_left(13);
    x[a] ^= x[d].wrapping_add(x[c]).rotate_left(18);
}

/// The 20 rounds (10 double rounds), without the final addition.
pub(super) fn rounds(x: &mut [u32; 16]) {
    for _ in 0..10 {
        quarter(x, 0, 4, 8, 12);
        quarter(x, 5, 9, 13, 1);
        quarter(x, 10, 14, 2, 6);
        quarter(x, 15, 3, 7, 11);
        quarter(x, 0, 1, 2, 3);
        quarter(x, 5, 6, 7, 4);
        quarter(x, 10, 11, 8, 9);
        quarter(x, 15, 12, 13, 14);
    }
}

pub(super) fn block(state: &[u32; 16], counter: u64) -> [u8; BLOCK_LEN] {
    let mut input = *state;
    input[8] = counter as u32;
    input[9] = (counter >> 32) as u32;
    let mut x = input;
    rounds(&mut x);
    let mut out = [0u8; BLOCK_LEN];
    for (i, chunk) in out.chunks_exact_mut(4).enumerate() {
        chunk.copy_from_slice(&x[i].wrapping_add(input[i]).to_le_bytes());
    }
    out
}

pub(super) fn xor_keystream(state: &[u32; 16], mut counter: u64, data: &mut [u8]) {
    for chunk in data.chunks_mut(BLOCK_LEN) {
        let ks = block(state, counter);
        chunk.iter_mut().zip(ks.iter()).for_each(|(d, k)| *d ^= k);
        counter = counter.wrapping_add(1);
    }
}
