//! Salsa20 with AVX2: word `i` of eight consecutive blocks in one 256-bit
//! register, 20 rounds on all eight at once, then an 8x8 transpose back to
//! block order.

#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::{BLOCK_LEN, portable};

/// Blocks per step.
const LANES: usize = 8;

macro_rules! rotl {
    ($v:expr, $n:literal) => {
        _mm256_or_si256(
            _mm256_slli_epi32::<$n>($v),
            _mm256_srli_epi32::<{ 32 - $n }>($v),
        )
    };
}

/// Two quarter-rounds, step by step: two independent dependency chains
/// side by side, as libsodium's amd64-xmm6 code schedules them (one chain
/// at a time leaves the vector ports idle waiting on latency).
macro_rules! quarter2 {
    ($x:ident, ($a:literal, $b:literal, $c:literal, $d:literal), ($e:literal, $f:literal, $g:literal, $h:literal)) => {
        let t = _mm256_add_epi32($x[$a], $x[$d]);
        let u = _mm256_add_epi32($x[$e], $x[$h]);
        $x[$b] = _mm256_xor_si256($x[$b], rotl!(t, 7));
        $x[$f] = _mm256_xor_si256($x[$f], rotl!(u, 7));
        let t = _mm256_add_epi32($x[$b], $x[$a]);
        let u = _mm256_add_epi32($x[$f], $x[$e]);
        $x[$c] = _mm256_xor_si256($x[$c], rotl!(t, 9));
        $x[$g] = _mm256_xor_si256($x[$g], rotl!(u, 9));
        let t = _mm256_add_epi32($x[$c], $x[$b]);
        let u = _mm256_add_epi32($x[$g], $x[$f]);
        $x[$d] = _mm256_xor_si256($x[$d], rotl!(t, 13));
        $x[$h] = _mm256_xor_si256($x[$h], rotl!(u, 13));
        let t = _mm256_add_epi32($x[$d], $x[$c]);
        let u = _mm256_add_epi32($x[$h], $x[$g]);
        $x[$a] = _mm256_xor_si256($x[$a], rotl!(t, 18));
        $x[$e] = _mm256_xor_si256($x[$e], rotl!(u, 18));
    };
}

pub(super) fn xor_keystream(state: &[u32; 16], mut counter: u64, data: &mut [u8]) {
    let mut chunks = data.chunks_exact_mut(LANES * BLOCK_LEN);
    for chunk in &mut chunks {
        // SAFETY: the Avx2 backend is only chosen after `is_x86_feature_detected!("avx2")`,
        // and `chunk` is exactly LANES * BLOCK_LEN bytes.
        unsafe { xor_8_blocks(state, counter, chunk) };
        counter = counter.wrapping_add(LANES as u64);
    }
    portable::xor_keystream(state, counter, chunks.into_remainder());
}

/// Word `i` of the inputs of blocks `counter .. counter + 8`.
#[target_feature(enable = "avx2")]
fn input_words(state: &[u32; 16], counter: u64) -> [__m256i; 16] {
    let mut lo = [0u32; LANES];
    let mut hi = [0u32; LANES];
    for lane in 0..LANES {
        let c = counter.wrapping_add(lane as u64);
        lo[lane] = c as u32;
        hi[lane] = (c >> 32) as u32;
    }
    let mut s = [_mm256_setzero_si256(); 16];
    for (i, w) in s.iter_mut().enumerate() {
        *w = _mm256_set1_epi32(state[i] as i32);
    }
    // SAFETY: `lo` and `hi` are 32-byte arrays; loadu has no alignment requirement.
    unsafe {
        s[8] = _mm256_loadu_si256(lo.as_ptr().cast());
        s[9] = _mm256_loadu_si256(hi.as_ptr().cast());
    }
    s
}

/// 20 rounds on eight blocks at once, plus the feed-forward addition.
#[target_feature(enable = "avx2")]
fn keystream_words(s: &[__m256i; 16]) -> [__m256i; 16] {
    let mut x = *s;
    for _ in 0..10 {
        quarter2!(x, (0, 4, 8, 12), (5, 9, 13, 1));
        quarter2!(x, (10, 14, 2, 6), (15, 3, 7, 11));
        quarter2!(x, (0, 1, 2, 3), (5, 6, 7, 4));
        quarter2!(x, (10, 11, 8, 9), (15, 12, 13, 14));
    }
    for i in 0..16 {
        x[i] = _mm256_add_epi32(x[i], s[i]);
    }
    x
}

/// Transposes 8 registers of 8 words: in, register `w` holds word `w` of
/// lanes 0..8; out, register `j` holds words 0..8 of lane `j`.
#[target_feature(enable = "avx2")]
pub(super) fn transpose8(r: &[__m256i]) -> [__m256i; 8] {
    let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
    let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
    let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
    let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
    let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
    let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
    let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
    let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
    let u0 = _mm256_unpacklo_epi64(t0, t2);
    let u1 = _mm256_unpackhi_epi64(t0, t2);
    let u2 = _mm256_unpacklo_epi64(t1, t3);
    let u3 = _mm256_unpackhi_epi64(t1, t3);
    let u4 = _mm256_unpacklo_epi64(t4, t6);
    let u5 = _mm256_unpackhi_epi64(t4, t6);
    let u6 = _mm256_unpacklo_epi64(t5, t7);
    let u7 = _mm256_unpackhi_epi64(t5, t7);
    [
        _mm256_permute2x128_si256::<0x20>(u0, u4),
        _mm256_permute2x128_si256::<0x20>(u1, u5),
        _mm256_permute2x128_si256::<0x20>(u2, u6),
        _mm256_permute2x128_si256::<0x20>(u3, u7),
        _mm256_permute2x128_si256::<0x31>(u0, u4),
        _mm256_permute2x128_si256::<0x31>(u1, u5),
        _mm256_permute2x128_si256::<0x31>(u2, u6),
        _mm256_permute2x128_si256::<0x31>(u3, u7),
    ]
}

/// XORs eight blocks (lane `j` = block `j`) into `out`, which holds at least
/// eight blocks.
///
/// # Safety
/// `out.len() >= 8 * BLOCK_LEN`.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn xor_lanes(words: &[__m256i; 16], out: &mut [u8]) {
    debug_assert!(out.len() >= LANES * BLOCK_LEN);
    let first = transpose8(&words[..8]);
    let second = transpose8(&words[8..]);
    let p = out.as_mut_ptr();
    for j in 0..LANES {
        // SAFETY: block j spans bytes [64j, 64j + 64) of `out`, in bounds by
        // the caller's contract; loadu/storeu need no alignment.
        unsafe {
            let a = p.add(j * BLOCK_LEN).cast::<__m256i>();
            let b = p.add(j * BLOCK_LEN + 32).cast::<__m256i>();
            _mm256_storeu_si256(a, _mm256_xor_si256(_mm256_loadu_si256(a), first[j]));
            _mm256_storeu_si256(b, _mm256_xor_si256(_mm256_loadu_si256(b), second[j]));
        }
    }
}

/// # Safety
/// The CPU supports AVX2 and `out.len() == 8 * BLOCK_LEN`.
#[target_feature(enable = "avx2")]
unsafe fn xor_8_blocks(state: &[u32; 16], counter: u64, out: &mut [u8]) {
    let x = keystream_words(&input_words(state, counter));
    // SAFETY: `out` holds eight blocks.
    unsafe { xor_lanes(&x, out) }
}
