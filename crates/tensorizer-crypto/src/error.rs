//! The one error type of this crate. Chunk errors say which chunk; the caller
//! (who knows the tensor) adds its name.

use thiserror::Error;

/// What went wrong with a key or a chunk.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The operating system's random number generator failed.
    #[error("no randomness from the operating system: {0}")]
    Rng(String),
    /// A key of the wrong size.
    #[error("an XSalsa20 key has 32 bytes, got {0}")]
    KeyLength(usize),
    /// A key file that is neither 32 raw bytes nor 64 hex digits.
    #[error("key file must hold 32 raw bytes or 64 hex digits, got {0} bytes")]
    KeyFile(usize),
    /// Argon2id parameters out of range (or beyond what this reader allows).
    #[error("invalid key-derivation parameters: {0}")]
    InvalidKdf(String),
    /// An empty passphrase (libsodium refuses them too).
    #[error("the passphrase is empty")]
    EmptyPassphrase,
    /// Stored MACs do not fit the data length.
    #[error(
        "{len} bytes in chunks of {chunk_size} need {expected} MACs, but {found} are stored (truncated or extended data)"
    )]
    ChunkCount {
        /// Data length.
        len: u64,
        /// Chunk size.
        chunk_size: u64,
        /// MACs the length needs.
        expected: u64,
        /// MACs stored.
        found: u64,
    },
    /// Some chunks authenticate and this one does not: it, its MAC or its
    /// position was modified.
    #[error(
        "chunk {chunk} of {chunks} failed authentication (the other chunks pass): its data or MAC was modified"
    )]
    ChunkTampered {
        /// Index of the first failing chunk.
        chunk: u64,
        /// Number of chunks.
        chunks: u64,
    },
    /// Two chunks authenticate only at each other's positions.
    #[error(
        "chunks {first} and {second} of {chunks} are swapped (each authenticates only at the other's position)"
    )]
    ChunksSwapped {
        /// One of the two.
        first: u64,
        /// The other.
        second: u64,
        /// Number of chunks.
        chunks: u64,
    },
    /// Not one chunk authenticates.
    #[error(
        "none of the {chunks} chunks authenticates: wrong key or passphrase, or a modified nonce, key-derivation record or data"
    )]
    WrongKey {
        /// Number of chunks.
        chunks: u64,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = CryptoError> = std::result::Result<T, E>;
