//! The one error type of this crate.

use thiserror::Error;

/// What was wrong with the bytes. Every variant names the field (and, where
/// known, the tensor) so that a message alone tells a user what is broken.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The first five bytes are not `|TZR|`.
    #[error(
        "not a tensorizer file: magic bytes are {found:02x?}, expected 7c 54 5a 52 7c (\"|TZR|\")"
    )]
    BadMagic {
        /// The bytes found at offset 0.
        found: Vec<u8>,
    },
    /// The input ended before a field could be read.
    #[error("truncated {what}: needs {needed} bytes, only {available} available")]
    Truncated {
        /// Which structure was being read.
        what: &'static str,
        /// Bytes needed to finish it, counted from its start.
        needed: u64,
        /// Bytes there were.
        available: u64,
    },
    /// A data-format version this crate does not know.
    #[error("unsupported data-format version {0} (supported: 1, 2, 3, 4, 5)")]
    UnsupportedVersion(u32),
    /// Feature-flag bits other than `encrypted` (1) and `versioned_headers` (2).
    #[error("unsupported feature flags 0x{0} (only bits 0 and 1 are defined)")]
    UnsupportedFlags(String),
    /// The `versioned_headers` flag in a file older than version 5.
    #[error("feature flag versioned_headers (2) is set in a version {0} file; it needs version 5")]
    VersionedHeadersBeforeV5(u32),
    /// More tensors claimed than the index could hold.
    #[error("header claims {count} tensors, but a {index_len}-byte index holds at most {max}")]
    TooManyTensors {
        /// The claimed `tensor_count`.
        count: u64,
        /// The `metadata_len` of the index block.
        index_len: u64,
        /// The most entries of minimal size that fit.
        max: u64,
    },
    /// An index larger than any real file's: refused before it is read.
    #[error(
        "the metadata index claims {index_len} bytes, more than the {max} a reader accepts (a 1-million-tensor model needs about 100 MB)"
    )]
    IndexTooLarge {
        /// The `metadata_len` field.
        index_len: u64,
        /// The limit.
        max: u64,
    },
    /// A tagged (v5) index entry with a tag other than 1 or 5.
    #[error("index entry {entry}: metadata version {tag} is not supported (expected 1 or 5)")]
    UnsupportedEntryVersion {
        /// Position of the entry in the index.
        entry: u64,
        /// The tag found.
        tag: u32,
    },
    /// A tensor-type byte other than 0, 1, 2.
    #[error("invalid tensor type {0} (expected 0 PARAM, 1 BUFFER or 2 STATE_DICT)")]
    InvalidTensorType(u8),
    /// A dtype string that cannot be understood.
    #[error("invalid dtype {dtype:?}: {reason}")]
    InvalidDtype {
        /// The string (lossy UTF-8).
        dtype: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A tensor name (path) that cannot be decoded.
    #[error("invalid tensor name {name:?}: {reason}")]
    InvalidName {
        /// The name bytes (lossy UTF-8).
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// A hash entry whose type or length is unknown.
    #[error("tensor {tensor:?}: invalid hash entry: {reason}")]
    InvalidHash {
        /// The tensor whose header holds it.
        tensor: String,
        /// What was wrong.
        reason: String,
    },
    /// A malformed crypt-info block.
    #[error("tensor {tensor:?}: invalid crypt info: {reason}")]
    InvalidCryptInfo {
        /// The tensor whose header holds it.
        tensor: String,
        /// What was wrong.
        reason: String,
    },
    /// A per-tensor header whose fields do not add up.
    #[error("tensor header at offset {offset}: {reason}")]
    InvalidTensorHeader {
        /// Absolute file offset of the header (0 when parsed from a detached slice).
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// The index and a per-tensor header disagree.
    #[error("tensor {tensor:?}: per-tensor header disagrees with the index on {field}")]
    IndexMismatch {
        /// The tensor name as listed in the index.
        tensor: String,
        /// The field that differs.
        field: &'static str,
    },
    /// An offset or length that points outside the file or overlaps another record.
    #[error("tensor {tensor:?}: {reason}")]
    InvalidOffset {
        /// The tensor name.
        tensor: String,
        /// What is out of place.
        reason: String,
    },
    /// Two entries with the same path, or a path that is also a prefix of another.
    #[error("conflicting tensor names: {0}")]
    ConflictingNames(String),
    /// A stored hash does not match the bytes.
    #[error("tensor {tensor:?} failed {kind} verification: stored {expected}, computed {actual}")]
    HashMismatch {
        /// The tensor name.
        tensor: String,
        /// `CRC32` or `SHA256`.
        kind: &'static str,
        /// The stored value (hex).
        expected: String,
        /// The computed value (hex).
        actual: String,
    },
    /// A value the writer cannot encode (too many dimensions, name too long, ...).
    #[error("cannot encode tensor {tensor:?}: {reason}")]
    Unencodable {
        /// The tensor name.
        tensor: String,
        /// What exceeds the format's limits.
        reason: String,
    },
    /// A safetensors header that breaks one of its rules.
    #[error("safetensors header: {}{reason}", if tensor.is_empty() { String::new() } else { format!("tensor {tensor:?}: ") })]
    InvalidSafetensors {
        /// The tensor concerned (empty for the header as a whole).
        tensor: String,
        /// The rule broken, with the values that break it.
        reason: String,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = FormatError> = std::result::Result<T, E>;
