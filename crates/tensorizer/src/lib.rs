#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

#[cfg(target_endian = "big")]
compile_error!("tensorizer files are little-endian; big-endian hosts are not supported");

mod atomic;
mod buffer;
mod deserializer;
mod element;
mod error;
pub mod safetensors;
mod serializer;
mod tensor;

pub use buffer::{ALIGNMENT, AlignedBuffer};
pub use deserializer::{Deserializer, Verify};
pub use element::Element;
pub use error::{Error, Result};
pub use serializer::{Serializer, WriteSummary};
pub use tensor::{Tensor, TensorData};
/// The format layer, for users who need the byte-level types.
pub use tensorizer_format as format;
pub use tensorizer_format::{
    Dtype, DtypeString, IndexEntry, PathComponent, TensorPath, TensorType,
};
