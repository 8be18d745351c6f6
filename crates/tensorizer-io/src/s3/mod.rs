//! S3 and S3-compatible object stores: where credentials and endpoints come
//! from (`config`, always built, pure), and the client (`store`, feature
//! `s3`); reads and writes are the shared [`crate::ObjectSource`] and
//! [`crate::ObjectSink`].

mod config;
#[cfg(feature = "s3")]
mod store;

pub use config::{Addressing, Credentials, S3Config, S3Options};
#[cfg(feature = "s3")]
pub(crate) use store::object;
#[cfg(feature = "s3")]
pub use store::{parse_s3_uri, presigned_get_url};
