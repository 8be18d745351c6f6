#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod crypt_info;
mod cursor;
mod dtype;
mod error;
mod file;
mod file_header;
mod hash;
mod index;
mod path;
mod plan;
pub mod safetensors;
mod tensor_header;

pub use crypt_info::{
    CryptChunk, CryptInfo, DEFAULT_CHUNK_SIZE, KeyDerivation, MAC_LEN, NONCE_LEN,
};
pub use dtype::{Dtype, DtypeString, OPAQUE_SEPARATOR};
pub use error::{FormatError, Result};
pub use file::{Record, TensorizerFile, parse_header_at};
pub use file_header::{
    FILE_HEADER_LEN, FeatureFlags, FileHeader, FormatVersion, INDEX_OFFSET, MAGIC,
};
pub use hash::{HashKind, StoredHash, TensorHasher};
pub use index::{IndexEntry, MAX_INDEX_LEN, Metadata, Shape, TensorName, TensorType};
pub use path::{PathComponent, PathSet, STRUCTURED_NAME_MARKER, TensorPath, check_paths_distinct};
pub use plan::{
    FilePlan, PYTHON_INDEX_LEN, PlacedRecord, PlanOptions, RecordSpec, StreamPlan, TERMINATOR,
};
pub use tensor_header::{MIN_HEADER_LEN, TensorHeader};
