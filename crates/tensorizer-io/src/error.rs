//! The one error type of this crate: every error names the URI (userinfo
//! and query redacted, whatever a caller put in the field), and for reads
//! the byte range and how many attempts were made.

use thiserror::Error;

/// Why a read or write failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum IoError {
    /// The local operating system refused.
    #[error("{}: {action}: {source}", crate::uri::redact(uri))]
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
    #[error("{}: bytes {start}..{end}: {} (gave up after {attempts} attempt{})", crate::uri::redact(uri), crate::uri::redact_text(message), if *attempts == 1 { "" } else { "s" })]
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
    #[error("{}: {}", crate::uri::redact(uri), crate::uri::redact_text(message))]
    Protocol {
        /// The URI.
        uri: String,
        /// What was wrong.
        message: String,
    },
    /// A read past the end of the source.
    #[error(
        "{}: bytes {start}..{end} lie beyond the end ({len} bytes)",
        crate::uri::redact(uri)
    )]
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
    /// A buffer the source's sizes call for could not be allocated.
    #[error(
        "{}: cannot allocate {bytes} bytes for a read (the size the source states)",
        crate::uri::redact(uri)
    )]
    OutOfMemory {
        /// The URI.
        uri: String,
        /// Bytes asked for.
        bytes: u64,
    },
    /// The URI's scheme needs a cargo feature this build lacks, or is unknown.
    #[error("{}: {}", crate::uri::redact(uri), crate::uri::redact_text(message))]
    Unsupported {
        /// The URI.
        uri: String,
        /// Which feature to enable, or which schemes exist.
        message: String,
    },
}

impl IoError {
    /// True when the object or file does not exist (HTTP 404, `ENOENT`).
    pub fn is_not_found(&self) -> bool {
        match self {
            IoError::Local { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            IoError::Remote { status, .. } => *status == Some(404),
            _ => false,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = IoError> = std::result::Result<T, E>;
