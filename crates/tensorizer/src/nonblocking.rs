//! An async front for tokio programs (feature `tokio`). Loading is blocking
//! I/O and CPU work on purpose (positioned reads, hashing, decryption on
//! all cores); here every call runs it on tokio's blocking pool
//! (`spawn_blocking`), so runtime worker threads never block.
//!
//! ```
//! # use tensorizer::{Serializer, StorageOptions, TensorData};
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("m.tensors");
//! # let mut s = Serializer::new();
//! # s.write_state_dict([("w", TensorData::from_slice(&[2], &[1.0f32, 2.0])?)])?;
//! # s.write_to_file(&path)?;
//! # let uri = path.to_str().unwrap().to_owned();
//! use tensorizer::nonblocking::AsyncDeserializer;
//! # let rt = tokio::runtime::Builder::new_current_thread().build()?;
//! # rt.block_on(async {
//! let model = AsyncDeserializer::open(uri, StorageOptions::default()).await?;
//! let tensors = model.read_all().await?;
//! assert_eq!(tensors[0].as_slice::<f32>()?, &[1.0, 2.0]);
//! # Ok::<(), tensorizer::Error>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::Arc;

use tensorizer_format::{IndexEntry, TensorPath};
use tensorizer_io::StorageOptions;

use crate::error::{Error, Result};
use crate::{Deserializer, Tensor};

/// A [`Deserializer`] whose loads are `async`.
#[derive(Debug, Clone)]
pub struct AsyncDeserializer {
    inner: Arc<Deserializer>,
}

async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Io {
            path: what.into(),
            action: "running the load on tokio's blocking pool".into(),
            source: std::io::Error::other(e),
        })?
}

impl AsyncDeserializer {
    /// Opens a path or URI (as [`Deserializer::open_uri_with`]).
    pub async fn open(uri: impl Into<String>, storage: StorageOptions) -> Result<Self> {
        let uri = uri.into();
        let what = uri.clone();
        blocking(&what, move || Deserializer::open_uri_with(&uri, &storage))
            .await
            .map(Self::from_blocking)
    }

    /// Wraps a configured blocking deserializer (verification, decryption,
    /// readers, progress are set on it first).
    pub fn from_blocking(deserializer: Deserializer) -> Self {
        Self {
            inner: Arc::new(deserializer),
        }
    }

    /// The blocking deserializer (listing needs no I/O).
    pub fn blocking(&self) -> &Deserializer {
        &self.inner
    }

    /// Index entries in file order (no I/O).
    pub fn entries(&self) -> &[IndexEntry] {
        self.inner.entries()
    }

    /// Reads one tensor.
    pub async fn read(&self, name: impl Into<TensorPath>) -> Result<Tensor> {
        let (inner, name) = (self.inner.clone(), name.into());
        blocking(&name.to_string(), move || inner.read(name)).await
    }

    /// Reads every tensor, in parallel; file order.
    pub async fn read_all(&self) -> Result<Vec<Tensor>> {
        let inner = self.inner.clone();
        blocking("read_all", move || inner.read_all()).await
    }
}
