#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

#[cfg(target_endian = "big")]
compile_error!("tensorizer files are little-endian; big-endian hosts are not supported");

mod buffer;
#[cfg(feature = "candle")]
pub mod candle;
pub mod checkpoint;
mod copy;
#[cfg(feature = "cuda")]
pub mod cuda;
mod deserializer;
pub mod destination;
pub mod distributed;
mod element;
#[cfg(feature = "encryption")]
pub mod encryption;
mod error;
mod file_digest;
pub mod model_dir;
#[cfg(feature = "tokio")]
pub mod nonblocking;
#[cfg(feature = "encryption")]
mod rewrite;
pub mod safetensors;
mod serializer;
mod streaming_serializer;
mod tensor;

pub use buffer::{ALIGNMENT, AlignedBuffer};
pub use checkpoint::{Checkpoint, ShardRef};
pub use copy::{copy, copy_with_progress};
pub use deserializer::{
    Deserializer, FileFormat, Progress, ProgressFn, StoredChecks, TensorCheck, UnauthenticatedMeta,
    Verify,
};
pub use destination::{Destination, TensorInfo};
pub use element::Element;
#[cfg(feature = "encryption")]
pub use encryption::{
    Decryption, Encryption, EncryptionKey, KdfLimits, KdfParams, KdfStrength, Nonce,
};
pub use error::{BoxError, Error, Result};
pub use file_digest::parse_sha256;
#[cfg(feature = "encryption")]
pub use rewrite::{rewrite, rewrite_uri, rewrite_with_progress};
pub use serializer::{
    DEFAULT_FILL_BUDGET, FillFn, PiecesFn, Serializer, WriteProgress, WriteSummary,
};
pub use streaming_serializer::{StreamingSerializer, TensorSpec};
pub use tensor::{Tensor, TensorData};
/// The format layer, for users who need the byte-level types.
pub use tensorizer_format as format;
pub use tensorizer_format::{
    Dtype, DtypeString, IndexEntry, PathComponent, TensorPath, TensorType,
};
/// The I/O layer: sources, sinks, retry policy.
pub use tensorizer_io as io;
pub use tensorizer_io::{AzureOptions, GcsOptions, RetryPolicy, S3Options, StorageOptions};
