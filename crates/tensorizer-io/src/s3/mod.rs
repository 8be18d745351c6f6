//! S3 and S3-compatible object stores: where credentials and endpoints come
//! from (`config`, always built, pure), and the client (`client`, feature
//! `s3`).

#[cfg(feature = "s3")]
mod client;
mod config;

#[cfg(feature = "s3")]
pub use client::{S3Sink, S3Source, parse_s3_uri};
#[cfg(feature = "s3")]
pub(crate) use client::{copy, exists};
pub use config::{Addressing, Credentials, Environment, ProcessEnvironment, S3Config, S3Options};
