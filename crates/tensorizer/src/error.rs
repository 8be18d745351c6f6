//! The facade's error type: every variant names the file and, where there is
//! one, the tensor.

use std::path::PathBuf;

use tensorizer_format::{Dtype, FormatError};
use thiserror::Error;

/// Anything that can go wrong loading or saving tensors.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The operating system refused a read or write.
    #[error("{}: {action}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done ("reading tensor \"x\"", "renaming into place", ...).
        action: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The source or sink failed (local file, HTTP, ...); the inner error
    /// names the URI, the byte range and the cause.
    #[error("{action}: {source}")]
    Source {
        /// What was being done ("reading tensor \"x\"", ...).
        action: String,
        /// The I/O layer's error.
        #[source]
        source: tensorizer_io::IoError,
    },
    /// The bytes are not a valid tensorizer file (or a hash does not match).
    #[error("{}: {source}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What the format layer found.
        #[source]
        source: FormatError,
    },
    /// A file with no tensors (the Python library refuses these too).
    #[error("{}: the tensor index is empty (the file holds no tensors)", path.display())]
    EmptyIndex {
        /// The file.
        path: PathBuf,
    },
    /// No tensor has this name.
    #[error("{}: no tensor named {name:?}", path.display())]
    NotFound {
        /// The file.
        path: PathBuf,
        /// The name asked for.
        name: String,
    },
    /// The tensor's data is encrypted and no key was given.
    #[error("{}: tensor {tensor:?} is encrypted, but no decryption key was given", path.display())]
    Encrypted {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
    },
    /// A tensor's data could not be decrypted (wrong key, modified data, ...).
    #[error("{}: tensor {tensor:?}: decryption failed: {reason}", path.display())]
    Decryption {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// What the crypto layer found, naming the chunk.
        reason: String,
    },
    /// A key was given for a file that is not encrypted.
    #[error("{}: decryption was requested, but the file is not encrypted (data version {version})", path.display())]
    NotEncrypted {
        /// The file.
        path: PathBuf,
        /// Its data-format version.
        version: u32,
    },
    /// Encryption could not be set up (no randomness, too few given nonces, bad parameters).
    #[error("{}: cannot encrypt: {message}", path.display())]
    Encryption {
        /// The destination.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// candle refused a tensor, or has no dtype for it.
    #[cfg(feature = "candle")]
    #[error("{path}: tensor {tensor:?}: {message}")]
    Candle {
        /// The file or URI.
        path: String,
        /// The tensor.
        tensor: String,
        /// What candle said, or which dtype it lacks.
        message: String,
    },
    /// A tensor too large for this machine's memory (or a hostile header).
    #[error("{}: cannot allocate {bytes} bytes for tensor {tensor:?}", path.display())]
    Allocation {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Bytes asked for.
        bytes: u64,
    },
    /// A typed view of the wrong element type.
    #[error("tensor {tensor:?} holds {actual}, not {requested}")]
    DtypeMismatch {
        /// The tensor.
        tensor: String,
        /// Its dtype.
        actual: Dtype,
        /// The dtype of the view asked for.
        requested: Dtype,
    },
    /// A GPU operation failed (feature `cuda`).
    #[cfg(feature = "cuda")]
    #[error("{what}: {source}")]
    Cuda {
        /// The tensor or step.
        what: String,
        /// The CUDA layer's error.
        #[source]
        source: tensorizer_cuda::CudaError,
    },
    /// A caller's buffer of the wrong size for its tensor.
    #[error("tensor {tensor:?} needs a buffer of {needed} bytes, got {given}")]
    BufferSize {
        /// The tensor.
        tensor: String,
        /// Bytes in the buffer given.
        given: u64,
        /// Bytes the tensor has.
        needed: u64,
    },
    /// A destination that limits its buffers but takes no pieces.
    #[error(
        "tensor #{index} is larger than the destination's {limit}-byte buffers, and the destination takes no pieces (it must implement Destination::complete_piece)"
    )]
    PiecesUnsupported {
        /// The tensor's position in the file.
        index: usize,
        /// The destination's `max_buffer`.
        limit: u64,
    },
    /// A tensor whose file stores nothing that could verify it.
    #[error("tensor {tensor:?}: {reason}")]
    Unverifiable {
        /// The tensor.
        tensor: String,
        /// What is missing.
        reason: String,
    },
    /// A tensor a check did not reach: the load stopped before it.
    #[error("tensor {tensor:?} was not checked: the load stopped before it")]
    NotChecked {
        /// The tensor.
        tensor: String,
    },
    /// A cast between dtypes that have no value conversion.
    #[error(
        "tensor {tensor:?}: cannot cast {from} to {to} (casts exist between float16, bfloat16, float32 and float64)"
    )]
    Cast {
        /// The tensor.
        tensor: String,
        /// Its dtype.
        from: Dtype,
        /// The dtype asked for.
        to: Dtype,
    },
    /// Data whose length does not match its dtype and shape.
    #[error("{len} bytes do not hold shape {shape:?} of {dtype}")]
    DataLength {
        /// Bytes given.
        len: usize,
        /// Shape given.
        shape: Vec<u64>,
        /// Dtype given.
        dtype: Dtype,
    },
    /// Nothing to write.
    #[error("{}: refusing to write a file with no tensors (no reader can load it)", path.display())]
    NothingToWrite {
        /// The destination.
        path: PathBuf,
    },
    /// A safetensors file could not be read or written.
    #[error("{}: safetensors: {message}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A checkpoint (a directory, an object prefix, an index) whose files
    /// do not make one model.
    #[error("{uri}: {message}")]
    Checkpoint {
        /// The checkpoint, as shown (secrets redacted).
        uri: String,
        /// What is wrong, naming the shard and tensor.
        message: String,
    },
    /// A file of a model directory that is not the model's to give: a link
    /// out of it, a device, a FIFO, a file over its size bound.
    #[error("{}: refused: {reason}", path.display())]
    Refused {
        /// The path asked for.
        path: PathBuf,
        /// Why it is refused.
        reason: String,
    },
    /// A file whose SHA-256 is not the one expected (a Hugging Face cache
    /// blob's name, or a digest the caller gave).
    #[error("{}: the file's SHA-256 is {actual}, expected {expected}: the file is damaged or not the one named", path.display())]
    FileDigest {
        /// The file.
        path: PathBuf,
        /// The digest expected (hex).
        expected: String,
        /// The digest of the bytes read (hex).
        actual: String,
    },
    /// The function producing a tensor's bytes for the writer failed
    /// ([`crate::Serializer::write_tensor_with`]).
    #[error("{}: producing tensor {tensor:?}: {source}", path.display())]
    Fill {
        /// The destination.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// What the producer reported.
        #[source]
        source: BoxError,
    },
    /// A streaming write that failed earlier: the file is abandoned (the
    /// destination keeps its previous content) and takes no more tensors.
    #[error("{}: the write was abandoned after an earlier error ({cause}); start a new one", path.display())]
    WriteAbandoned {
        /// The destination.
        path: PathBuf,
        /// The first error, as text.
        cause: String,
    },
    /// A setting that must be chosen before the first tensor is written.
    #[error("{}: {what} must be set before the first tensor is written", path.display())]
    TooLate {
        /// The destination.
        path: PathBuf,
        /// The setting.
        what: &'static str,
    },
}

/// Any error a caller's callback returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_error(
    path: &std::path::Path,
    action: impl Into<String>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    let action = action.into();
    move |source| Error::Io {
        path,
        action,
        source,
    }
}

pub(crate) fn source_error(
    action: impl Into<String>,
) -> impl FnOnce(tensorizer_io::IoError) -> Error {
    let action = action.into();
    move |source| Error::Source { action, source }
}

pub(crate) fn format_error(path: &std::path::Path) -> impl FnOnce(FormatError) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Format { path, source }
}
