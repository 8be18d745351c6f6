//! Magic and the 60-byte file header (FORMAT.md §1).

use crate::cursor::Cursor;
use crate::error::{FormatError, Result};

/// `|TZR|`, the first five bytes of every file.
pub const MAGIC: [u8; 5] = *b"|TZR|";
/// Bytes of magic plus file header.
pub const FILE_HEADER_LEN: usize = 65;
/// Offset of the index block: file header plus the `u64 metadata_len`.
pub const INDEX_OFFSET: u64 = 73;

/// A data-format version this crate reads and writes (1 to 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FormatVersion(u32);

impl FormatVersion {
    /// Every dtype has a numpy equivalent, nothing else special.
    pub const NON_OPAQUE: Self = Self(1);
    /// At least one opaque dtype (bfloat16, float8, ...).
    pub const OPAQUE: Self = Self(2);
    /// Encrypted: every tensor header carries crypt info.
    pub const ENCRYPTION: Self = Self(3);
    /// At least one meta tensor; first version that stores feature flags.
    pub const META_TENSOR: Self = Self(4);
    /// At least one dimension >= 2^32; index entries carry version tags.
    pub const LONG_TENSOR: Self = Self(5);

    /// Checks `v` against the versions this crate supports.
    pub fn new(v: u32) -> Result<Self> {
        if (1..=5).contains(&v) {
            Ok(Self(v))
        } else {
            Err(FormatError::UnsupportedVersion(v))
        }
    }

    /// The number stored in the file.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// The defined feature-flag bits (stored as a 256-bit little-endian integer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FeatureFlags {
    /// Bit 0: tensor data is encrypted.
    pub encrypted: bool,
    /// Bit 1: index entries carry a `u32` version tag (v5 only).
    pub versioned_headers: bool,
}

impl FeatureFlags {
    /// The flags as an integer (0 to 3).
    pub fn bits(self) -> u8 {
        u8::from(self.encrypted) | (u8::from(self.versioned_headers) << 1)
    }
}

/// Magic plus the 60-byte file header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHeader {
    /// Data-format version.
    pub version: FormatVersion,
    /// Feature flags; stored only from version 4 on (zeros before).
    pub flags: FeatureFlags,
    /// Sum of every tensor's `data_length` (not the file size, despite the
    /// name the Python library gives it; no reader relies on it).
    pub tensor_size: u64,
    /// Number of tensors in the index.
    pub tensor_count: u64,
}

impl FileHeader {
    /// Parses the first 65 bytes of a file (extra bytes are ignored).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let magic = &bytes[..bytes.len().min(MAGIC.len())];
        if !MAGIC.starts_with(magic) {
            return Err(FormatError::BadMagic {
                found: magic.to_vec(),
            });
        }
        let mut c = Cursor::new(bytes, "file header");
        c.take(MAGIC.len())?;
        let raw_version = c.u32()?;
        let flag_bytes: [u8; 32] = c.array()?;
        let tensor_size = c.u64()?;
        let _reserved = c.u64()?;
        let tensor_count = c.u64()?;
        // The version is checked only once the header is complete, so a short
        // file reports truncation rather than a garbage version.
        let version = FormatVersion::new(raw_version)?;
        if flag_bytes[1..].iter().any(|&b| b != 0) || flag_bytes[0] > 3 {
            let hex: String = flag_bytes
                .iter()
                .rev()
                .map(|b| format!("{b:02x}"))
                .collect();
            let hex = hex.trim_start_matches('0');
            return Err(FormatError::UnsupportedFlags(hex.to_owned()));
        }
        let flags = FeatureFlags {
            encrypted: flag_bytes[0] & 1 != 0,
            versioned_headers: flag_bytes[0] & 2 != 0,
        };
        if flags.versioned_headers && version < FormatVersion::LONG_TENSOR {
            return Err(FormatError::VersionedHeadersBeforeV5(version.get()));
        }
        // Flags mean something only from version 4 on (Python ignores the
        // encrypted bit of older files); keep the value what encode writes.
        let flags = if version >= FormatVersion::META_TENSOR {
            flags
        } else {
            FeatureFlags::default()
        };
        Ok(Self {
            version,
            flags,
            tensor_size,
            tensor_count,
        })
    }

    /// True when every tensor header carries a crypt-info block: version 3,
    /// or version 4+ with the `encrypted` flag.
    pub fn has_crypt_info(&self) -> bool {
        self.version == FormatVersion::ENCRYPTION
            || (self.version >= FormatVersion::META_TENSOR && self.flags.encrypted)
    }

    /// Appends magic and header (65 bytes).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.version.get().to_le_bytes());
        let mut flags = [0u8; 32];
        if self.version >= FormatVersion::META_TENSOR {
            flags[0] = self.flags.bits();
        }
        out.extend_from_slice(&flags);
        out.extend_from_slice(&self.tensor_size.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&self.tensor_count.to_le_bytes());
    }
}
