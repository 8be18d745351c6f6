//! Google Cloud Storage: where credentials and the endpoint come from
//! (`config`, always built, pure), and the client (`store`, feature `gcs`);
//! reads and writes are the shared [`crate::ObjectSource`] and
//! [`crate::ObjectSink`].

mod config;
#[cfg(feature = "gcs")]
mod resumable;
#[cfg(feature = "gcs")]
mod store;

pub use config::{GCS_ENDPOINT, GcsConfig, GcsCredentials, GcsOptions};
#[cfg(feature = "gcs")]
pub(crate) use resumable::JsonApi;
#[cfg(feature = "gcs")]
pub(crate) use store::object;
#[cfg(feature = "gcs")]
pub use store::parse_gcs_uri;
