//! The one error type of this crate: every error names the URI, and for
//! reads the byte range and how many attempts were made.

use thiserror::Error;

/// Why a read or write failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum IoError {
    /// The local operating system refused.
    #[error("{uri}: {action}: {source}")]
    Local {
        /// The file.
        uri: String,
        /// What was being done.
        action: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A remote read failed for good (after retries where retrying made sense).
    #[error("{uri}: bytes {start}..{end}: {message} (gave up after {attempts} attempt{})", if *attempts == 1 { "" } else { "s" })]
    Remote {
        /// The URI.
        uri: String,
        /// First byte of the range.
        start: u64,
        /// End of the range (exclusive).
        end: u64,
        /// What went wrong last.
        message: String,
        /// Attempts made.
        attempts: u32,
        /// HTTP status of the last response, if there was one.
        status: Option<u16>,
    },
    /// A server answered something that cannot be right (bad Content-Range, ...).
    #[error("{uri}: {message}")]
    Protocol {
        /// The URI.
        uri: String,
        /// What was wrong.
        message: String,
    },
    /// A read past the end of the source.
    #[error("{uri}: bytes {start}..{end} lie beyond the end ({len} bytes)")]
    OutOfRange {
        /// The URI.
        uri: String,
        /// First byte asked for.
        start: u64,
        /// End asked for (exclusive).
        end: u64,
        /// Size of the source.
        len: u64,
    },
    /// The URI's scheme needs a cargo feature this build lacks, or is unknown.
    #[error("{uri}: {message}")]
    Unsupported {
        /// The URI.
        uri: String,
        /// Which feature to enable, or which schemes exist.
        message: String,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = IoError> = std::result::Result<T, E>;
