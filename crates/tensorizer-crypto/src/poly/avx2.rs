//! Poly1305 with AVX2, for CPUs without AVX-512 IFMA: four lanes of 26-bit
//! limbs (the radix of poly1305-donna's and OpenSSL's AVX2 code), each
//! 26 × 26-bit product formed by `vpmuludq`. Blocks are taken four at a
//! time; the lanes accumulate with multiplier r^4 and are combined with
//! r^4 ..= r^1 at the end, as in the IFMA kernel.
//!
//! The four blocks of a step land in the lanes in the order 0, 2, 1, 3
//! (what `vpunpck[lh]qdq` gives within 128-bit halves), so the last step
//! multiplies the lanes by r^4, r^2, r^3, r^1.

#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::{Limbs, Mul, mul};

const M26: u64 = (1 << 26) - 1;

/// Absorbs `data` (a multiple of 64 bytes) into `h`; `powers` are r^1 ..= r^4.
pub(super) fn update(h: Limbs, powers: &[Mul], data: &[u8]) -> Limbs {
    debug_assert_eq!(data.len() % 64, 0);
    debug_assert!(powers.len() >= 4);
    // SAFETY: only called when `avx2_available()` saw avx2.
    unsafe { update_avx2(h, powers, data) }
}

/// Radix 2^44 (44/44/42 bits, some excess allowed) to five 26-bit limbs
/// (the same value; excess carries into the limbs above).
fn to_radix26([h0, h1, h2]: Limbs) -> [u64; 5] {
    [
        h0 & M26,
        (h0 >> 26) + ((h1 & 0xff) << 18),
        (h1 >> 8) & M26,
        (h1 >> 34) + ((h2 & 0xffff) << 10),
        h2 >> 16,
    ]
}

/// Five 26-bit limbs (some excess allowed) to radix 2^44, partially reduced.
fn to_radix44([l0, l1, l2, l3, l4]: [u64; 5]) -> Limbs {
    let h = [
        l0 + ((l1 & ((1 << 18) - 1)) << 26),
        (l1 >> 18) + (l2 << 8) + ((l3 & ((1 << 10) - 1)) << 34),
        (l3 >> 10) + (l4 << 16),
    ];
    // Normalise with a multiply by one.
    mul(h, &Mul::new([1, 0, 0]))
}

/// The five limb vectors of a multiplier, and 5 × limbs 1..=4 (the
/// 2^130 = 5 reduction folded in).
#[derive(Clone, Copy)]
struct Lanes {
    r: [__m256i; 5],
    s: [__m256i; 4],
}

#[target_feature(enable = "avx2")]
fn lanes(per_lane: [[u64; 5]; 4]) -> Lanes {
    let limb = |k: usize| {
        _mm256_set_epi64x(
            per_lane[3][k] as i64,
            per_lane[2][k] as i64,
            per_lane[1][k] as i64,
            per_lane[0][k] as i64,
        )
    };
    let r = [limb(0), limb(1), limb(2), limb(3), limb(4)];
    let five = |v: __m256i| _mm256_add_epi64(v, _mm256_slli_epi64::<2>(v));
    Lanes {
        r,
        s: [five(r[1]), five(r[2]), five(r[3]), five(r[4])],
    }
}

/// `h * r` per lane, carried back to limbs of about 26 bits.
#[target_feature(enable = "avx2")]
fn mul_lanes(h: [__m256i; 5], m: &Lanes) -> [__m256i; 5] {
    let [h0, h1, h2, h3, h4] = h;
    let [r0, r1, r2, r3, r4] = m.r;
    let [s1, s2, s3, s4] = m.s;
    let p = |a, b| _mm256_mul_epu32(a, b);
    let add = |a, b| _mm256_add_epi64(a, b);
    let d0 = add(
        add(p(h0, r0), p(h1, s4)),
        add(add(p(h2, s3), p(h3, s2)), p(h4, s1)),
    );
    let d1 = add(
        add(p(h0, r1), p(h1, r0)),
        add(add(p(h2, s4), p(h3, s3)), p(h4, s2)),
    );
    let d2 = add(
        add(p(h0, r2), p(h1, r1)),
        add(add(p(h2, r0), p(h3, s4)), p(h4, s3)),
    );
    let d3 = add(
        add(p(h0, r3), p(h1, r2)),
        add(add(p(h2, r1), p(h3, r0)), p(h4, s4)),
    );
    let d4 = add(
        add(p(h0, r4), p(h1, r3)),
        add(add(p(h2, r2), p(h3, r1)), p(h4, r0)),
    );
    carry([d0, d1, d2, d3, d4])
}

/// One carry pass: every limb below 2^26 but limb 1 (at most a little over).
#[target_feature(enable = "avx2")]
fn carry(d: [__m256i; 5]) -> [__m256i; 5] {
    let mask = _mm256_set1_epi64x(M26 as i64);
    let [mut d0, mut d1, mut d2, mut d3, mut d4] = d;
    let mut c = _mm256_srli_epi64::<26>(d0);
    d0 = _mm256_and_si256(d0, mask);
    d1 = _mm256_add_epi64(d1, c);
    c = _mm256_srli_epi64::<26>(d1);
    d1 = _mm256_and_si256(d1, mask);
    d2 = _mm256_add_epi64(d2, c);
    c = _mm256_srli_epi64::<26>(d2);
    d2 = _mm256_and_si256(d2, mask);
    d3 = _mm256_add_epi64(d3, c);
    c = _mm256_srli_epi64::<26>(d3);
    d3 = _mm256_and_si256(d3, mask);
    d4 = _mm256_add_epi64(d4, c);
    c = _mm256_srli_epi64::<26>(d4);
    d4 = _mm256_and_si256(d4, mask);
    // 2^130 = 5 (mod p): the carry out of limb 4 comes back times five.
    d0 = _mm256_add_epi64(d0, _mm256_add_epi64(c, _mm256_slli_epi64::<2>(c)));
    c = _mm256_srli_epi64::<26>(d0);
    d0 = _mm256_and_si256(d0, mask);
    d1 = _mm256_add_epi64(d1, c);
    [d0, d1, d2, d3, d4]
}

#[target_feature(enable = "avx2")]
fn update_avx2(h: Limbs, powers: &[Mul], data: &[u8]) -> Limbs {
    let r26 = |m: &Mul| to_radix26(m.r);
    let r4 = r26(&powers[3]);
    let step_mul = lanes([r4; 4]);
    // Lanes hold blocks 0, 2, 1, 3 of a step: they owe r^4, r^2, r^3, r^1.
    let last_mul = lanes([r4, r26(&powers[1]), r26(&powers[2]), r26(&powers[0])]);
    let mask = _mm256_set1_epi64x(M26 as i64);
    let hibit = _mm256_set1_epi64x(1 << 24);
    let h26 = to_radix26(h);
    let mut acc = [
        _mm256_set_epi64x(0, 0, 0, h26[0] as i64),
        _mm256_set_epi64x(0, 0, 0, h26[1] as i64),
        _mm256_set_epi64x(0, 0, 0, h26[2] as i64),
        _mm256_set_epi64x(0, 0, 0, h26[3] as i64),
        _mm256_set_epi64x(0, 0, 0, h26[4] as i64),
    ];
    let steps = data.len() / 64;
    for (step, blocks) in data.chunks_exact(64).enumerate() {
        // SAFETY: `blocks` is 64 bytes; unaligned loads of 32 bytes each.
        let (a, b) = unsafe {
            (
                _mm256_loadu_si256(blocks.as_ptr().cast()),
                _mm256_loadu_si256(blocks.as_ptr().add(32).cast()),
            )
        };
        // Low and high 64-bit words of blocks 0, 2, 1, 3.
        let lo = _mm256_unpacklo_epi64(a, b);
        let hi = _mm256_unpackhi_epi64(a, b);
        let m = [
            _mm256_and_si256(lo, mask),
            _mm256_and_si256(_mm256_srli_epi64::<26>(lo), mask),
            _mm256_and_si256(
                _mm256_or_si256(_mm256_srli_epi64::<52>(lo), _mm256_slli_epi64::<12>(hi)),
                mask,
            ),
            _mm256_and_si256(_mm256_srli_epi64::<14>(hi), mask),
            _mm256_or_si256(_mm256_srli_epi64::<40>(hi), hibit),
        ];
        let sum = [0, 1, 2, 3, 4].map(|k| _mm256_add_epi64(acc[k], m[k]));
        acc = mul_lanes(
            sum,
            if step + 1 < steps {
                &step_mul
            } else {
                &last_mul
            },
        );
    }
    let total = acc.map(|v| {
        let mut lanes = [0u64; 4];
        // SAFETY: 32 bytes into a 32-byte array.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), v) };
        lanes.iter().sum::<u64>()
    });
    to_radix44(total)
}
