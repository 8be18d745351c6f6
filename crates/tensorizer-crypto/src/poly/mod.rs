//! Poly1305 (RFC 8439 / NaCl). Three kernels, picked at run time:
//! - AVX-512 IFMA: ours, radix 2^44, eight blocks per step with 52-bit
//!   multiply-add instructions (about 11 GiB/s per core here);
//! - RustCrypto `poly1305` (AVX2 or soft) where IFMA is missing (about 4 GiB/s);
//! - our portable radix-2^44 code, which also finishes the IFMA kernel's
//!   leftover blocks.

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
    /// Our AVX-512 IFMA kernel.
    Ifma,
}

impl PolyKernel {
    /// IFMA where the CPU has it, else RustCrypto.
    pub fn detect() -> PolyKernel {
        if ifma_available() {
            PolyKernel::Ifma
        } else {
            PolyKernel::RustCrypto
        }
    }

    /// Every kernel this CPU can run.
    pub fn available() -> Vec<PolyKernel> {
        let mut v = vec![PolyKernel::Portable, PolyKernel::RustCrypto];
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
    pub(crate) fn new(key: &[u8; 32]) -> Self {
        Self::with_kernel(key, PolyKernel::detect())
    }

    pub(crate) fn with_kernel(key: &[u8; 32], kernel: PolyKernel) -> Self {
        use poly1305::universal_hash::KeyInit;
        match kernel {
            PolyKernel::RustCrypto => Poly1305::RustCrypto(poly1305::Poly1305::new(&(*key).into())),
            PolyKernel::Portable => Poly1305::Ours(Radix44::new(key, false)),
            PolyKernel::Ifma => Poly1305::Ours(Radix44::new(key, ifma_available())),
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

/// Our implementation, radix 2^44.
#[derive(Clone)]
pub(crate) struct Radix44 {
    h: Limbs,
    r: Mul,
    pad: u128,
    simd: bool,
    /// r^1 ..= r^8, computed on first use of the SIMD kernel.
    powers: Option<[Mul; 8]>,
}

impl Radix44 {
    fn new(key: &[u8; 32], simd: bool) -> Self {
        let mut rb = [0u8; 16];
        rb.copy_from_slice(&key[..16]);
        let r = u128::from_le_bytes(rb) & 0x0fff_fffc_0fff_fffc_0fff_fffc_0fff_ffff;
        let limbs = [(r as u64) & M44, ((r >> 44) as u64) & M44, (r >> 88) as u64];
        Self {
            h: [0; 3],
            r: Mul::new(limbs),
            pad: u128::from_le_bytes(key[16..].try_into().expect("16")),
            simd: simd && ifma_available(),
            powers: None,
        }
    }

    fn update(&mut self, data: &[u8]) {
        debug_assert_eq!(data.len() % 16, 0);
        let mut rest = data;
        if self.simd && data.len() >= 256 {
            let powers = *self.powers.get_or_insert_with(|| {
                let mut p = [self.r; 8];
                for i in 1..8 {
                    p[i] = Mul::new(mul(p[i - 1].r, &self.r));
                }
                p
            });
            let n = data.len() / 128 * 128;
            self.h = ifma::update(self.h, &powers, &data[..n]);
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
