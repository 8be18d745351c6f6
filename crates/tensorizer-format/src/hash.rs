//! Per-tensor hashes (FORMAT.md §3.2): CRC-32 as in zlib and SHA-256, both
//! over the header's hashable bytes followed by the plaintext data.

use sha2::{Digest, Sha256};

/// Hash type byte stored in a hash entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum HashKind {
    /// zlib CRC-32 (IEEE polynomial, not CRC-32C), stored little-endian.
    Crc32 = 0,
    /// SHA-256, raw 32-byte digest.
    Sha256 = 1,
}

impl HashKind {
    /// Bytes of the stored value.
    pub const fn value_len(self) -> usize {
        match self {
            Self::Crc32 => 4,
            Self::Sha256 => 32,
        }
    }

    /// The name used in messages (`"CRC32"`, `"SHA256"`, as Python prints them).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Crc32 => "CRC32",
            Self::Sha256 => "SHA256",
        }
    }
}

/// One hash entry of a per-tensor header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoredHash {
    /// A CRC-32 value.
    Crc32(u32),
    /// A SHA-256 digest.
    Sha256([u8; 32]),
}

impl StoredHash {
    /// Which hash this is.
    pub fn kind(&self) -> HashKind {
        match self {
            Self::Crc32(_) => HashKind::Crc32,
            Self::Sha256(_) => HashKind::Sha256,
        }
    }

    /// The value as lowercase hex (CRC-32 as its integer value, 8 digits).
    pub fn to_hex(&self) -> String {
        match self {
            Self::Crc32(v) => format!("{v:08x}"),
            Self::Sha256(d) => d.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    /// The zero placeholder of the same kind (what the writer hashes).
    pub fn placeholder(kind: HashKind) -> Self {
        match kind {
            HashKind::Crc32 => Self::Crc32(0),
            HashKind::Sha256 => Self::Sha256([0; 32]),
        }
    }
}

/// Streaming computation of a set of hashes: feed the header's hashable
/// bytes, then the plaintext data in any number of pieces.
#[derive(Debug, Clone, Default)]
pub struct TensorHasher {
    crc32: Option<crc32fast::Hasher>,
    sha256: Option<Sha256>,
}

impl TensorHasher {
    /// A hasher computing each kind in `kinds`.
    pub fn new(kinds: impl IntoIterator<Item = HashKind>) -> Self {
        let mut h = Self::default();
        for k in kinds {
            match k {
                HashKind::Crc32 => h.crc32 = Some(crc32fast::Hasher::new()),
                HashKind::Sha256 => h.sha256 = Some(Sha256::new()),
            }
        }
        h
    }

    /// Feeds bytes to every hash.
    pub fn update(&mut self, bytes: &[u8]) {
        // Both hashes walk each 64 KiB block while it is in L1/L2: one pass
        // over memory instead of two for large tensors.
        for block in bytes.chunks(64 << 10) {
            if let Some(c) = &mut self.crc32 {
                c.update(block);
            }
            if let Some(s) = &mut self.sha256 {
                s.update(block);
            }
        }
    }

    /// The computed values, CRC-32 first.
    pub fn finish(self) -> Vec<StoredHash> {
        let mut out = Vec::with_capacity(2);
        if let Some(c) = self.crc32 {
            out.push(StoredHash::Crc32(c.finalize()));
        }
        if let Some(s) = self.sha256 {
            out.push(StoredHash::Sha256(s.finalize().into()));
        }
        out
    }
}
