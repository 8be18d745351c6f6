//! Poly1305 (RFC 8439 / NaCl). Kernels, picked at run time:
//! - AVX-512 IFMA: ours, radix 2^44, eight blocks per step with 52-bit
//!   multiply-add instructions (about 11 GiB/s per core here);
//! - AVX2: ours, radix 2^26, four blocks per step with `vpmuludq`, where
//!   IFMA is missing (most cloud hosts before Ice Lake / Zen 4);
//! - RustCrypto `poly1305` (its own AVX2 or soft backend), for comparison;
//! - our portable radix-2^44 code, which also finishes the SIMD kernels'
//!   leftover blocks.

mod avx2;
mod ifma;

use std::sync::OnceLock;

const M44: u64 = (1 << 44) - 1;
const M42: u64 = (1 << 42) - 1;

/// A 130-bit value in limbs of 44, 44 and 42 bits (limbs may carry a little excess).
pub(crate) type Limbs = [u64; 3];

/// Multiplier limbs with the 2^132 = 20 (mod 2^130 - 5) reduction folded in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mul {
    r: Limbs,
    /// 20 * r1, 20 * r2.
    s: [u64; 2],
}

impl Mul {
    fn new(r: Limbs) -> Self {
        Self {
            r,
            s: [r[1] * 20, r[2] * 20],
        }
    }
}

/// `h * r mod 2^130 - 5`, partially reduced.
pub(crate) fn mul(h: Limbs, m: &Mul) -> Limbs {
    let [h0, h1, h2] = h.map(u128::from);
    let [r0, r1, r2] = m.r.map(u128::from);
    let [s1, s2] = m.s.map(u128::from);
    let d0 = h0 * r0 + h1 * s2 + h2 * s1;
    let d1 = h0 * r1 + h1 * r0 + h2 * s2;
    let d2 = h0 * r2 + h1 * r1 + h2 * r0;
    let mut c = d0 >> 44;
    let l0 = (d0 as u64) & M44;
    let d1 = d1 + c;
    c = d1 >> 44;
    let l1 = (d1 as u64) & M44;
    let d2 = d2 + c;
    c = d2 >> 42;
    let l2 = (d2 as u64) & M42;
    let l0 = l0 + (c as u64) * 5;
    let l1 = l1 + (l0 >> 44);
    [l0 & M44, l1, l2]
}

fn add(a: Limbs, b: Limbs) -> Limbs {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}

/// A 16-byte block as limbs, plus `hibit` at 2^128 (1 for full blocks).
fn block_limbs(b: &[u8; 16], hibit: u64) -> Limbs {
    let lo = u64::from_le_bytes(b[..8].try_into().expect("8"));
    let hi = u64::from_le_bytes(b[8..].try_into().expect("8"));
    [
        lo & M44,
        ((lo >> 44) | (hi << 20)) & M44,
        (hi >> 24) | (hibit << 40),
    ]
}

fn avx2_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx2")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

fn ifma_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512ifma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// Which Poly1305 implementation to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolyKernel {
    /// Our radix-2^44 code in plain Rust.
    Portable,
    /// The RustCrypto `poly1305` crate (its own AVX2 or soft backend).
    RustCrypto,
    /// Our AVX2 kernel.
    Avx2,
    /// Our AVX-512 IFMA kernel.
    Ifma,
}

impl PolyKernel {
    /// The fastest kernel of this CPU allowed by `TENSORIZER_SIMD` (see
    /// [`crate::Backend::detect`]): IFMA, else AVX2, else portable.
    pub fn detect() -> PolyKernel {
        PolyKernel::for_backend(crate::Backend::detect())
    }

    /// The kernel that goes with a keystream backend in a secretbox: the
    /// AVX-512 backend with IFMA where the CPU has it, the AVX2 backend
    /// with AVX2, the portable one with portable code. A CPU without
    /// AVX-512 thus runs exactly the `Avx2` pair.
    pub fn for_backend(backend: crate::Backend) -> PolyKernel {
        match backend {
            crate::Backend::Avx512 if ifma_available() => PolyKernel::Ifma,
            crate::Backend::Avx512 | crate::Backend::Avx2 if avx2_available() => PolyKernel::Avx2,
            _ => PolyKernel::Portable,
        }
    }

    /// Every kernel this CPU can run.
    pub fn available() -> Vec<PolyKernel> {
        let mut v = vec![PolyKernel::Portable, PolyKernel::RustCrypto];
        if avx2_available() {
            v.push(PolyKernel::Avx2);
        }
        if ifma_available() {
            v.push(PolyKernel::Ifma);
        }
        v
    }
}

/// Incremental Poly1305 over whole 16-byte blocks, finished with an optional
/// partial block.
#[derive(Clone)]
pub(crate) enum Poly1305 {
    Ours(Radix44),
    RustCrypto(poly1305::Poly1305),
}

impl Poly1305 {
    pub(crate) fn with_kernel(key: &[u8; 32], kernel: PolyKernel) -> Self {
        use poly1305::universal_hash::KeyInit;
        match kernel {
            PolyKernel::RustCrypto => Poly1305::RustCrypto(poly1305::Poly1305::new(&(*key).into())),
            PolyKernel::Portable => Poly1305::Ours(Radix44::new(key, Simd::None)),
            PolyKernel::Avx2 if avx2_available() => Poly1305::Ours(Radix44::new(key, Simd::Avx2)),
            PolyKernel::Ifma if ifma_available() => Poly1305::Ours(Radix44::new(key, Simd::Ifma)),
            PolyKernel::Avx2 | PolyKernel::Ifma => Poly1305::Ours(Radix44::new(key, Simd::None)),
        }
    }

    /// Absorbs whole blocks; `data.len()` must be a multiple of 16.
    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Poly1305::Ours(p) => p.update(data),
            Poly1305::RustCrypto(p) => {
                use poly1305::universal_hash::UniversalHash;
                p.update(poly1305::Block::slice_as_chunks(data).0);
            }
        }
    }

    /// Absorbs the rest (whole blocks and a final partial one) and returns the tag.
    pub(crate) fn finish(self, tail: &[u8]) -> [u8; 16] {
        match self {
            Poly1305::Ours(p) => p.finish(tail),
            Poly1305::RustCrypto(p) => p.compute_unpadded(tail).into(),
        }
    }
}

/// Which SIMD kernel takes the bulk of the blocks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Simd {
    None,
    Avx2,
    Ifma,
}

/// Our implementation, radix 2^44.
#[derive(Clone)]
pub(crate) struct Radix44 {
    h: Limbs,
    r: Mul,
    pad: u128,
    simd: Simd,
    /// r^1 ..= r^8, computed on first use of a SIMD kernel.
    powers: Option<[Mul; 8]>,
}

impl Radix44 {
    fn new(key: &[u8; 32], simd: Simd) -> Self {
        let mut rb = [0u8; 16];
        rb.copy_from_slice(&key[..16]);
        let r = u128::from_le_bytes(rb) & 0x0fff_fffc_0fff_fffc_0fff_fffc_0fff_ffff;
        let limbs = [(r as u64) & M44, ((r >> 44) as u64) & M44, (r >> 88) as u64];
        Self {
            h: [0; 3],
            r: Mul::new(limbs),
            pad: u128::from_le_bytes(key[16..].try_into().expect("16")),
            simd,
            powers: None,
        }
    }

    fn update(&mut self, data: &[u8]) {
        debug_assert_eq!(data.len() % 16, 0);
        let mut rest = data;
        // Eight (IFMA) or four (AVX2) blocks per step; two steps at least
        // pay for the lane set-up.
        let step = match self.simd {
            Simd::None => 0,
            Simd::Avx2 => 64,
            Simd::Ifma => 128,
        };
        if step > 0 && data.len() >= 2 * step {
            let r = self.r;
            let powers = self.powers.get_or_insert_with(|| {
                let mut p = [r; 8];
                for i in 1..8 {
                    p[i] = Mul::new(mul(p[i - 1].r, &r));
                }
                p
            });
            let n = data.len() / step * step;
            self.h = match self.simd {
                Simd::Ifma => ifma::update(self.h, powers, &data[..n]),
                _ => avx2::update(self.h, powers, &data[..n]),
            };
            rest = &data[n..];
        }
        for b in rest.chunks_exact(16) {
            self.h = mul(
                add(self.h, block_limbs(b.try_into().expect("16"), 1)),
                &self.r,
            );
        }
    }

    fn finish(mut self, tail: &[u8]) -> [u8; 16] {
        let (full, partial) = tail.split_at(tail.len() / 16 * 16);
        self.update(full);
        if !partial.is_empty() {
            let mut b = [0u8; 16];
            b[..partial.len()].copy_from_slice(partial);
            b[partial.len()] = 1;
            self.h = mul(add(self.h, block_limbs(&b, 0)), &self.r);
        }
        // Full reduction mod 2^130 - 5.
        let [mut h0, mut h1, mut h2] = self.h;
        let mut c;
        for _ in 0..2 {
            c = h0 >> 44;
            h0 &= M44;
            h1 += c;
            c = h1 >> 44;
            h1 &= M44;
            h2 += c;
            c = h2 >> 42;
            h2 &= M42;
            h0 += c * 5;
        }
        // h - p = h + 5 - 2^130: use it if it does not underflow.
        let g0 = h0 + 5;
        let g1 = h1 + (g0 >> 44);
        let g2 = h2 + (g1 >> 44);
        let use_g = (g2 >> 42) != 0;
        let (f0, f1, f2) = if use_g {
            (g0 & M44, g1 & M44, g2 & M42)
        } else {
            (h0, h1, h2)
        };
        let h = u128::from(f0) | (u128::from(f1) << 44) | (u128::from(f2) << 88);
        h.wrapping_add(self.pad).to_le_bytes()
    }
}
