//! Poly1305 with AVX-512 IFMA: eight lanes, lane `j` accumulating blocks
//! `j, j + 8, j + 16, ...` with multiplier r^8; the lanes are combined with
//! r^8 ..= r^1 at the end. Limbs are 44/44/42 bits, so every product fits the
//! 52-bit multiply-add instructions (`vpmadd52luq` / `vpmadd52huq`).

#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::{Limbs, M42, M44, Mul, mul};

/// Absorbs `data` (a multiple of 128 bytes) into `h`.
pub(super) fn update(h: Limbs, powers: &[Mul; 8], data: &[u8]) -> Limbs {
    debug_assert_eq!(data.len() % 128, 0);
    // SAFETY: only called when `ifma_available()` saw avx512f and avx512ifma.
    unsafe { update_ifma(h, powers, data) }
}

#[target_feature(enable = "avx512f,avx512ifma")]
fn splat(v: u64) -> __m512i {
    _mm512_set1_epi64(v as i64)
}

/// `a * b` limb products, accumulated into (lo, hi) sums per output limb.
#[target_feature(enable = "avx512f,avx512ifma")]
fn mul_lanes(h: [__m512i; 3], r: [__m512i; 3], s: [__m512i; 2]) -> [__m512i; 3] {
    let z = _mm512_setzero_si512();
    let [h0, h1, h2] = h;
    let [r0, r1, r2] = r;
    let [s1, s2] = s;
    // d0 = h0 r0 + h1 s2 + h2 s1; d1 = h0 r1 + h1 r0 + h2 s2; d2 = h0 r2 + h1 r1 + h2 r0
    let t0 = _mm512_madd52lo_epu64(
        _mm512_madd52lo_epu64(_mm512_madd52lo_epu64(z, h0, r0), h1, s2),
        h2,
        s1,
    );
    let u0 = _mm512_madd52hi_epu64(
        _mm512_madd52hi_epu64(_mm512_madd52hi_epu64(z, h0, r0), h1, s2),
        h2,
        s1,
    );
    let t1 = _mm512_madd52lo_epu64(
        _mm512_madd52lo_epu64(_mm512_madd52lo_epu64(z, h0, r1), h1, r0),
        h2,
        s2,
    );
    let u1 = _mm512_madd52hi_epu64(
        _mm512_madd52hi_epu64(_mm512_madd52hi_epu64(z, h0, r1), h1, r0),
        h2,
        s2,
    );
    let t2 = _mm512_madd52lo_epu64(
        _mm512_madd52lo_epu64(_mm512_madd52lo_epu64(z, h0, r2), h1, r1),
        h2,
        r0,
    );
    let u2 = _mm512_madd52hi_epu64(
        _mm512_madd52hi_epu64(_mm512_madd52hi_epu64(z, h0, r2), h1, r1),
        h2,
        r0,
    );
    // hi halves weigh 2^52 = 2^44 * 2^8 more: they move one limb up, shifted by 8;
    // the top one wraps to limb 0 times 2^8 * 20 (2^132 = 20 mod p).
    // u2 * 20 = (u2 << 4) + (u2 << 2); no AVX-512DQ needed.
    let u2x20 = _mm512_add_epi64(_mm512_slli_epi64::<4>(u2), _mm512_slli_epi64::<2>(u2));
    let c0 = _mm512_add_epi64(t0, _mm512_slli_epi64::<8>(u2x20));
    let c1 = _mm512_add_epi64(t1, _mm512_slli_epi64::<8>(u0));
    let c2 = _mm512_add_epi64(t2, _mm512_slli_epi64::<8>(u1));
    carry([c0, c1, c2])
}

#[target_feature(enable = "avx512f,avx512ifma")]
fn carry(c: [__m512i; 3]) -> [__m512i; 3] {
    let m44 = splat(M44);
    let m42 = splat(M42);
    let [c0, c1, c2] = c;
    let c1 = _mm512_add_epi64(c1, _mm512_srli_epi64::<44>(c0));
    let c0 = _mm512_and_si512(c0, m44);
    let c2 = _mm512_add_epi64(c2, _mm512_srli_epi64::<44>(c1));
    let c1 = _mm512_and_si512(c1, m44);
    let top = _mm512_srli_epi64::<42>(c2);
    let c2 = _mm512_and_si512(c2, m42);
    let c0 = _mm512_add_epi64(c0, _mm512_add_epi64(_mm512_slli_epi64::<2>(top), top));
    let c1 = _mm512_add_epi64(c1, _mm512_srli_epi64::<44>(c0));
    let c0 = _mm512_and_si512(c0, m44);
    [c0, c1, c2]
}

#[target_feature(enable = "avx512f,avx512ifma")]
unsafe fn update_ifma(h: Limbs, powers: &[Mul; 8], data: &[u8]) -> Limbs {
    let m44 = splat(M44);
    let hibit = splat(1 << 40);
    let r8 = &powers[7];
    let r = [splat(r8.r[0]), splat(r8.r[1]), splat(r8.r[2])];
    let s = [splat(r8.s[0]), splat(r8.s[1])];
    let even = _mm512_set_epi64(14, 12, 10, 8, 6, 4, 2, 0);
    let odd = _mm512_set_epi64(15, 13, 11, 9, 7, 5, 3, 1);
    // The running value enters lane 0 with the first block.
    let mut acc = [
        _mm512_set_epi64(0, 0, 0, 0, 0, 0, 0, h[0] as i64),
        _mm512_set_epi64(0, 0, 0, 0, 0, 0, 0, h[1] as i64),
        _mm512_set_epi64(0, 0, 0, 0, 0, 0, 0, h[2] as i64),
    ];
    let steps = data.len() / 128;
    for step in 0..steps {
        let p = data[step * 128..].as_ptr();
        // SAFETY: 128 bytes from `p` are in bounds; loadu needs no alignment.
        let (v0, v1) = unsafe {
            (
                _mm512_loadu_si512(p.cast()),
                _mm512_loadu_si512(p.add(64).cast()),
            )
        };
        let lo = _mm512_permutex2var_epi64(v0, even, v1);
        let hi = _mm512_permutex2var_epi64(v0, odd, v1);
        let m0 = _mm512_and_si512(lo, m44);
        let m1 = _mm512_and_si512(
            _mm512_or_si512(_mm512_srli_epi64::<44>(lo), _mm512_slli_epi64::<20>(hi)),
            m44,
        );
        let m2 = _mm512_or_si512(_mm512_srli_epi64::<24>(hi), hibit);
        let sum = [
            _mm512_add_epi64(acc[0], m0),
            _mm512_add_epi64(acc[1], m1),
            _mm512_add_epi64(acc[2], m2),
        ];
        if step + 1 < steps {
            acc = mul_lanes(sum, r, s);
        } else {
            // Last step: lane j still owes r^(8 - j).
            let lane_powers = |f: fn(&Mul) -> u64| {
                _mm512_set_epi64(
                    f(&powers[0]) as i64,
                    f(&powers[1]) as i64,
                    f(&powers[2]) as i64,
                    f(&powers[3]) as i64,
                    f(&powers[4]) as i64,
                    f(&powers[5]) as i64,
                    f(&powers[6]) as i64,
                    f(&powers[7]) as i64,
                )
            };
            let rr = [
                lane_powers(|m| m.r[0]),
                lane_powers(|m| m.r[1]),
                lane_powers(|m| m.r[2]),
            ];
            let ss = [lane_powers(|m| m.s[0]), lane_powers(|m| m.s[1])];
            acc = mul_lanes(sum, rr, ss);
        }
    }
    let total = [
        _mm512_reduce_add_epi64(acc[0]) as u64,
        _mm512_reduce_add_epi64(acc[1]) as u64,
        _mm512_reduce_add_epi64(acc[2]) as u64,
    ];
    // Normalise the lane sum with a multiply by one.
    mul(total, &Mul::new([1, 0, 0]))
}
