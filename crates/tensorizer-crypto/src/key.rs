//! Keys: random, raw, or derived from a passphrase with Argon2id exactly as
//! libsodium's `crypto_pwhash` (ALG_ARGON2ID13) does.

use zeroize::Zeroize;

use crate::error::{CryptoError, Result};

/// A 32-byte XSalsa20 key. Zeroed when dropped; `Debug` never shows it.
#[derive(Clone)]
pub struct EncryptionKey {
    bytes: [u8; 32],
}

impl EncryptionKey {
    /// Key size in bytes.
    pub const LEN: usize = 32;

    /// 32 bytes from the operating system's random number generator.
    pub fn random() -> Result<Self> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| CryptoError::Rng(e.to_string()))?;
        Ok(Self { bytes })
    }

    /// A key from its raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self { bytes }
    }

    /// A key from a slice, which must be 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| CryptoError::KeyLength(bytes.len()))?;
        Ok(Self { bytes })
    }

    /// A key from the contents of a key file: 32 raw bytes (the vLLM key-file
    /// format), or 64 hex digits with an optional trailing newline.
    pub fn from_key_file(contents: &[u8]) -> Result<Self> {
        if contents.len() == 32 {
            return Self::from_slice(contents);
        }
        let text = contents.trim_ascii();
        if text.len() == 64 && text.iter().all(u8::is_ascii_hexdigit) {
            let mut bytes = [0u8; 32];
            for (b, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
                let hex =
                    std::str::from_utf8(pair).map_err(|_| CryptoError::KeyFile(contents.len()))?;
                *b = u8::from_str_radix(hex, 16)
                    .map_err(|_| CryptoError::KeyFile(contents.len()))?;
            }
            return Ok(Self { bytes });
        }
        Err(CryptoError::KeyFile(contents.len()))
    }

    /// Derives a key from a passphrase: Argon2id v1.3, parallelism 1, the
    /// given time and memory costs and salt, 32 bytes out (libsodium
    /// `crypto_pwhash` with `crypto_pwhash_ALG_ARGON2ID13`).
    pub fn derive(passphrase: &[u8], params: &KdfParams) -> Result<Self> {
        if passphrase.is_empty() {
            return Err(CryptoError::EmptyPassphrase);
        }
        params.check()?;
        let argon_params = argon2::Params::new(
            (params.memlimit / 1024) as u32,
            params.opslimit as u32,
            1,
            Some(32),
        )
        .map_err(|e| CryptoError::InvalidKdf(e.to_string()))?;
        let argon = argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon_params,
        );
        let mut bytes = [0u8; 32];
        argon
            .hash_password_into(passphrase, &params.salt, &mut bytes)
            .map_err(|e| CryptoError::InvalidKdf(e.to_string()))?;
        Ok(Self { bytes })
    }

    /// The raw key. Handle with care.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }
}

impl Drop for EncryptionKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EncryptionKey(<redacted>)")
    }
}

/// libsodium's cost presets for `crypto_pwhash` (Argon2id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KdfStrength {
    /// opslimit 1, memlimit 8 KiB: tests only.
    Min,
    /// opslimit 2, memlimit 64 MiB.
    Interactive,
    /// opslimit 3, memlimit 256 MiB: the Python library's default.
    Moderate,
    /// opslimit 4, memlimit 1 GiB.
    Sensitive,
}

impl KdfStrength {
    /// `(opslimit, memlimit in bytes)`.
    pub const fn limits(self) -> (u64, u64) {
        match self {
            KdfStrength::Min => (1, 8192),
            KdfStrength::Interactive => (2, 64 << 20),
            KdfStrength::Moderate => (3, 256 << 20),
            KdfStrength::Sensitive => (4, 1 << 30),
        }
    }
}

/// Memory above which a stored key-derivation record is refused: a modified
/// record must not make a reader allocate terabytes.
pub const MAX_MEMLIMIT: u64 = 16 << 30;
/// Time cost above which a stored record is refused (a modified record must
/// not make a reader spin for hours).
pub const MAX_OPSLIMIT: u64 = 1024;

/// Argon2id parameters and salt, as stored in each encrypted tensor header.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KdfParams {
    /// Time cost (passes).
    pub opslimit: u64,
    /// Memory in bytes (Argon2 gets `memlimit / 1024` KiB).
    pub memlimit: u64,
    /// 16-byte salt.
    pub salt: [u8; 16],
}

impl KdfParams {
    /// A preset with a random salt.
    pub fn new(strength: KdfStrength) -> Result<Self> {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| CryptoError::Rng(e.to_string()))?;
        let (opslimit, memlimit) = strength.limits();
        Ok(Self {
            opslimit,
            memlimit,
            salt,
        })
    }

    /// Explicit values (checked against libsodium's ranges).
    pub fn with_salt(opslimit: u64, memlimit: u64, salt: [u8; 16]) -> Result<Self> {
        let p = Self {
            opslimit,
            memlimit,
            salt,
        };
        p.check()?;
        Ok(p)
    }

    /// Parameters read from a file, where the salt length is stored too.
    pub fn from_stored(opslimit: u64, memlimit: u64, salt: &[u8]) -> Result<Self> {
        let salt: [u8; 16] = salt.try_into().map_err(|_| {
            CryptoError::InvalidKdf(format!("salt has {} bytes, libsodium uses 16", salt.len()))
        })?;
        Self::with_salt(opslimit, memlimit, salt)
    }

    fn check(&self) -> Result<()> {
        if !(1..=MAX_OPSLIMIT).contains(&self.opslimit) {
            return Err(CryptoError::InvalidKdf(format!(
                "opslimit {} outside 1..={MAX_OPSLIMIT}",
                self.opslimit
            )));
        }
        if !(8192..=MAX_MEMLIMIT).contains(&self.memlimit) {
            return Err(CryptoError::InvalidKdf(format!(
                "memlimit {} bytes outside 8192..={MAX_MEMLIMIT}",
                self.memlimit
            )));
        }
        Ok(())
    }
}
