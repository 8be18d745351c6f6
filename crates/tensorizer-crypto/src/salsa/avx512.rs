//! Salsa20 with AVX-512F: sixteen blocks per step and single-instruction
//! rotates; the halves are transposed with the AVX2 code.

#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::{BLOCK_LEN, avx2};

/// Blocks per step.
const LANES: usize = 16;

macro_rules! quarter {
    ($x:ident, $a:literal, $b:literal, $c:literal, $d:literal) => {
        $x[$b] = _mm512_xor_si512(
            $x[$b],
            _mm512_rol_epi32::<7>(_mm512_add_epi32($x[$a], $x[$d])),
        );
        $x[$c] = _mm512_xor_si512(
            $x[$c],
            _mm512_rol_epi32::<9>(_mm512_add_epi32($x[$b], $x[$a])),
        );
        $x[$d] = _mm512_xor_si512(
            $x[$d],
            _mm512_rol_epi32::<13>(_mm512_add_epi32($x[$c], $x[$b])),
        );
        $x[$a] = _mm512_xor_si512(
            $x[$a],
            _mm512_rol_epi32::<18>(_mm512_add_epi32($x[$d], $x[$c])),
        );
    };
}

pub(super) fn xor_keystream(state: &[u32; 16], mut counter: u64, data: &mut [u8]) {
    let mut chunks = data.chunks_exact_mut(LANES * BLOCK_LEN);
    for chunk in &mut chunks {
        // SAFETY: the Avx512 backend is only chosen after detecting avx512f and
        // avx2, and `chunk` is exactly LANES * BLOCK_LEN bytes.
        unsafe { xor_16_blocks(state, counter, chunk) };
        counter = counter.wrapping_add(LANES as u64);
    }
    // Fewer than sixteen blocks left: eight at a time, then one at a time.
    avx2::xor_keystream(state, counter, chunks.into_remainder());
}

/// # Safety
/// The CPU supports AVX-512F and AVX2, and `out.len() == 16 * BLOCK_LEN`.
#[target_feature(enable = "avx512f,avx2")]
unsafe fn xor_16_blocks(state: &[u32; 16], counter: u64, out: &mut [u8]) {
    let mut lo = [0u32; LANES];
    let mut hi = [0u32; LANES];
    for lane in 0..LANES {
        let c = counter.wrapping_add(lane as u64);
        lo[lane] = c as u32;
        hi[lane] = (c >> 32) as u32;
    }
    let mut s = [_mm512_setzero_si512(); 16];
    for (i, w) in s.iter_mut().enumerate() {
        *w = _mm512_set1_epi32(state[i] as i32);
    }
    // SAFETY: `lo`/`hi` are 64-byte arrays; loadu needs no alignment.
    unsafe {
        s[8] = _mm512_loadu_si512(lo.as_ptr().cast());
        s[9] = _mm512_loadu_si512(hi.as_ptr().cast());
    }
    let mut x = s;
    for _ in 0..10 {
        quarter!(x, 0, 4, 8, 12);
        quarter!(x, 5, 9, 13, 1);
        quarter!(x, 10, 14, 2, 6);
        quarter!(x, 15, 3, 7, 11);
        quarter!(x, 0, 1, 2, 3);
        quarter!(x, 5, 6, 7, 4);
        quarter!(x, 10, 11, 8, 9);
        quarter!(x, 15, 12, 13, 14);
    }
    let mut low = [_mm256_setzero_si256(); 16];
    let mut high = [_mm256_setzero_si256(); 16];
    for i in 0..16 {
        let w = _mm512_add_epi32(x[i], s[i]);
        low[i] = _mm512_castsi512_si256(w);
        high[i] = _mm512_extracti64x4_epi64::<1>(w);
    }
    let (first, second) = out.split_at_mut(8 * BLOCK_LEN);
    // SAFETY: each half holds eight blocks; AVX2 is enabled here.
    unsafe {
        avx2::xor_lanes(&low, first);
        avx2::xor_lanes(&high, second);
    }
}
