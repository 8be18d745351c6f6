//! 24-byte XSalsa20 nonces and the chunk nonce schedule (FORMAT.md §5.1).

use crate::error::{CryptoError, Result};

/// A 24-byte nonce, read as a little-endian 192-bit integer.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Nonce(pub [u8; 24]);

impl Nonce {
    /// A random nonce (one per tensor, as the Python writer draws them).
    pub fn random() -> Result<Self> {
        let mut n = [0u8; 24];
        getrandom::fill(&mut n).map_err(|e| CryptoError::Rng(e.to_string()))?;
        Ok(Self(n))
    }

    /// `self + n` with carry across all 24 bytes, wrapping (libsodium
    /// `sodium_increment` applied `n` times): the nonce of chunk `n`.
    pub fn add(&self, n: u64) -> Nonce {
        let mut out = self.0;
        let mut carry = u128::from(n);
        for b in out.iter_mut() {
            if carry == 0 {
                break;
            }
            let sum = u128::from(*b) + (carry & 0xff);
            *b = sum as u8;
            carry = (carry >> 8) + (sum >> 8);
        }
        Nonce(out)
    }
}

impl std::fmt::Debug for Nonce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Nonce(")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))?;
        write!(f, ")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increments_little_endian_with_carry() {
        let mut n = [0u8; 24];
        n[..3].copy_from_slice(&[0xff, 0xff, 0xff]);
        let mut want = [0u8; 24];
        want[3] = 1;
        assert_eq!(Nonce(n).add(1).0, want);
        assert_eq!(Nonce([0xff; 24]).add(1).0, [0; 24]);
        assert_eq!(Nonce([0; 24]).add(0x0102).0[..3], [0x02, 0x01, 0]);
        let a = Nonce([0xfe; 24]);
        assert_eq!(a.add(1000).add(234), a.add(1234));
        assert_eq!(a.add(u64::MAX).add(1), a.add(u64::MAX - 1).add(2));
    }
}
