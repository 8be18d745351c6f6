//! Azure Blob Storage: the URI forms (`uri`) and where credentials,
//! account and endpoint come from (`config`), both always built and pure,
//! and the client (`store`, feature `azure`); reads and writes are the
//! shared [`crate::ObjectSource`] and [`crate::ObjectSink`].

mod config;
#[cfg(feature = "azure")]
mod store;
mod uri;

pub use config::{AZURITE_ACCOUNT, AZURITE_KEY, AzureConfig, AzureCredentials, AzureOptions};
#[cfg(feature = "azure")]
pub(crate) use store::object;
pub use uri::{AzureUri, is_azure_uri, parse_azure_uri};
