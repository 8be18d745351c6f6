//! `tensorizer_rs._native`: the Rust core as a small Python extension.
//! The Python API (`TensorDeserializer`, `TensorSerializer`, `stream_io`,
//! ...) is written in Python over it (`python/tensorizer_rs/`); this layer
//! only opens, reads and writes, and hands tensors over as DLPack capsules,
//! so torch and numpy take our aligned buffers without a copy and free them
//! through the capsule's deleter when the last tensor viewing them is gone.
//!
//! - `reader.rs`: `Reader`, an open `.tensors` file;
//! - `writer.rs`: `StreamWriter`, a file written as its tensors come;
//! - `stream.rs`: `Source` and `Sink`, what `stream_io.open_stream` reads
//!   from and writes into;
//! - `sources.rs`: file descriptors, memory and sink windows as sources and
//!   sinks of the core;
//! - `dlpack.rs`: the capsules.

use pyo3::exceptions::{PyKeyError, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};
use tensorizer::{
    EncryptionKey, Error, KdfParams, PathComponent, S3Options, StorageOptions, TensorPath,
};

mod dlpack;
mod reader;
mod sources;
mod stream;
mod writer;

pyo3::create_exception!(_native, CryptographyError, pyo3::exceptions::PyException);
pyo3::create_exception!(_native, HashMismatchError, pyo3::exceptions::PyException);

/// Our errors as the Python library's exception classes where it has one.
fn py_err(e: Error) -> PyErr {
    let message = e.to_string();
    match e {
        Error::Decryption { .. }
        | Error::Encrypted { .. }
        | Error::NotEncrypted { .. }
        | Error::Encryption { .. } => CryptographyError::new_err(message),
        Error::Format {
            source: tensorizer::format::FormatError::HashMismatch { .. },
            ..
        } => HashMismatchError::new_err(message),
        Error::NotFound { .. } => PyKeyError::new_err(message),
        Error::Io { .. } | Error::Source { .. } => PyOSError::new_err(message),
        _ => PyValueError::new_err(message),
    }
}

fn io_err(e: tensorizer::io::IoError) -> PyErr {
    PyOSError::new_err(e.to_string())
}

/// Where and how to reach storage, from the keyword arguments every
/// function here takes (`open_stream`'s, by name).
#[derive(Default)]
#[pyclass(module = "tensorizer_rs._native", frozen)]
struct Storage {
    options: StorageOptions,
}

#[pymethods]
impl Storage {
    #[new]
    /// `ca_file`, `ca_dir`: CA certificates trusted besides the system's;
    /// `accept_invalid_certs`: no verification (`CAInfo(allow_untrusted=True)`).
    /// `s3_addressing`: "path", "virtual" or None (path-style for custom
    /// endpoints, virtual-hosted for AWS).
    #[pyo3(signature = (*, s3_access_key_id=None, s3_secret_access_key=None, s3_endpoint=None, s3_region_name=None, s3_config_path=None, force_http=None, ca_file=None, ca_dir=None, accept_invalid_certs=false, s3_session_token=None, s3_addressing=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        s3_access_key_id: Option<String>,
        s3_secret_access_key: Option<String>,
        s3_endpoint: Option<String>,
        s3_region_name: Option<String>,
        s3_config_path: Option<std::path::PathBuf>,
        force_http: Option<bool>,
        ca_file: Option<std::path::PathBuf>,
        ca_dir: Option<std::path::PathBuf>,
        accept_invalid_certs: bool,
        s3_session_token: Option<String>,
        s3_addressing: Option<String>,
    ) -> PyResult<Self> {
        let addressing = match s3_addressing.as_deref() {
            None => tensorizer::io::Addressing::Auto,
            Some("path") => tensorizer::io::Addressing::Path,
            Some("virtual") => tensorizer::io::Addressing::VirtualHosted,
            Some(other) => {
                return Err(PyValueError::new_err(format!(
                    "s3_addressing must be \"path\" or \"virtual\", not {other:?}"
                )));
            }
        };
        Ok(Self {
            options: StorageOptions {
                s3: S3Options {
                    access_key_id: s3_access_key_id,
                    secret_access_key: s3_secret_access_key,
                    endpoint: s3_endpoint,
                    region: s3_region_name,
                    config_path: s3_config_path,
                    force_http,
                    session_token: s3_session_token,
                    addressing,
                    ..Default::default()
                },
                trust: tensorizer::io::TrustOptions {
                    ca_file,
                    ca_dir,
                    accept_invalid_certs,
                },
                ..Default::default()
            },
        })
    }

    /// Secrets never appear here.
    fn __repr__(&self) -> String {
        let s3 = &self.options.s3;
        format!(
            "Storage(s3_endpoint={:?}, s3_region_name={:?}, s3_access_key_id={}, s3_secret_access_key={})",
            s3.endpoint,
            s3.region,
            if s3.access_key_id.is_some() {
                "<set>"
            } else {
                "None"
            },
            if s3.secret_access_key.is_some() {
                "<redacted>"
            } else {
                "None"
            },
        )
    }
}

/// The core's plan of a distributed load (`tensorizer::distributed`):
/// `extents` are `(file, offset, len, whole)`; per rank, the
/// `(extent, start, len)` spans it reads.
#[pyfunction]
fn partition(
    extents: Vec<(usize, u64, u64, bool)>,
    world_size: usize,
    request_size: u64,
) -> Vec<Vec<(usize, u64, u64)>> {
    let extents: Vec<tensorizer::distributed::Extent> = extents
        .into_iter()
        .map(
            |(file, offset, len, whole)| tensorizer::distributed::Extent {
                file,
                offset,
                len,
                whole,
            },
        )
        .collect();
    tensorizer::distributed::partition(&extents, world_size, request_size)
        .into_iter()
        .map(|spans| spans.iter().map(|s| (s.extent, s.start, s.len)).collect())
        .collect()
}

fn options(storage: Option<&Bound<'_, Storage>>) -> StorageOptions {
    storage.map(|s| s.get().options.clone()).unwrap_or_default()
}

fn path_to_py<'py>(py: Python<'py>, path: &TensorPath) -> PyResult<Bound<'py, PyAny>> {
    if let Some(s) = path.as_plain() {
        return Ok(PyString::new(py, s).into_any());
    }
    let parts: Vec<Bound<'py, PyAny>> = path
        .components()
        .iter()
        .map(|c| match c {
            PathComponent::Key(k) => Ok(PyString::new(py, k).into_any()),
            PathComponent::Index(i) => Ok(i.into_pyobject(py)?.into_any()),
        })
        .collect::<PyResult<_>>()?;
    Ok(PyTuple::new(py, parts)?.into_any())
}

fn path_from_py(name: &Bound<'_, PyAny>) -> PyResult<TensorPath> {
    if let Ok(s) = name.extract::<String>() {
        return Ok(TensorPath::from(s));
    }
    let mut parts = Vec::new();
    for item in name.try_iter()? {
        let item = item?;
        parts.push(match item.extract::<String>() {
            Ok(s) => PathComponent::Key(s),
            Err(_) => PathComponent::Index(item.extract::<u64>()?),
        });
    }
    TensorPath::new(parts).ok_or_else(|| PyValueError::new_err("an empty tensor name"))
}

/// A new random 32-byte key.
/// CUDA devices the core's engine can load onto: 0 without a driver (or
/// in a wheel built without the `cuda` feature); never raises.
#[pyfunction]
fn cuda_devices(py: Python<'_>) -> usize {
    #[cfg(feature = "cuda")]
    {
        py.detach(|| tensorizer::cuda::device_count().unwrap_or(0))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = py;
        0
    }
}

/// A presigned GET URL of an `s3://` object, valid `expires_s` seconds
/// (unsigned with `anonymous`), made by the core's signer.
#[pyfunction]
#[pyo3(signature = (uri, *, storage=None, expires_s=3600, anonymous=false))]
fn s3_presigned_url(
    py: Python<'_>,
    uri: String,
    storage: Option<&Bound<'_, Storage>>,
    expires_s: u64,
    anonymous: bool,
) -> PyResult<String> {
    let mut options = options(storage);
    if anonymous {
        // Empty keys: unsigned requests.
        options.s3.access_key_id = Some(String::new());
        options.s3.secret_access_key = Some(String::new());
    }
    py.detach(|| {
        tensorizer::io::s3::presigned_get_url(
            &uri,
            &options.s3,
            &options.retry,
            &options.trust,
            std::time::Duration::from_secs(expires_s),
        )
    })
    .map_err(io_err)
}

/// `(name, size)` of the objects under `uri` (a directory or object
/// prefix), names relative to it, sorted; every level below with
/// `recursive`.
#[pyfunction]
#[pyo3(signature = (uri, *, storage=None, recursive=false))]
fn list_objects(
    py: Python<'_>,
    uri: String,
    storage: Option<&Bound<'_, Storage>>,
    recursive: bool,
) -> PyResult<Vec<(String, u64)>> {
    let options = options(storage);
    py.detach(|| tensorizer::io::list(&uri, recursive, &options))
        .map_err(io_err)
}

/// Copies the object `uri` into the local file `path` (whole or not at
/// all); returns its size.
#[pyfunction]
#[pyo3(signature = (uri, path, *, storage=None))]
fn download(
    py: Python<'_>,
    uri: String,
    path: std::path::PathBuf,
    storage: Option<&Bound<'_, Storage>>,
) -> PyResult<u64> {
    let options = options(storage);
    py.detach(|| tensorizer::io::download(&uri, &path, &options))
        .map_err(io_err)
}

#[pyfunction]
fn random_key() -> PyResult<Vec<u8>> {
    EncryptionKey::random()
        .map(|k| k.as_bytes().to_vec())
        .map_err(|e| CryptographyError::new_err(e.to_string()))
}

/// Argon2id (libsodium `crypto_pwhash`) key from a passphrase.
#[pyfunction]
fn derive_key(
    py: Python<'_>,
    passphrase: Vec<u8>,
    opslimit: u64,
    memlimit: u64,
    salt: Vec<u8>,
) -> PyResult<Vec<u8>> {
    let params = KdfParams::from_stored(opslimit, memlimit, &salt)
        .map_err(|e| CryptographyError::new_err(e.to_string()))?;
    py.detach(|| EncryptionKey::derive(&passphrase, &params))
        .map(|k| k.as_bytes().to_vec())
        .map_err(|e| CryptographyError::new_err(e.to_string()))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Storage>()?;
    m.add_class::<reader::Reader>()?;
    m.add_class::<writer::StreamWriter>()?;
    m.add_class::<stream::Source>()?;
    m.add_class::<stream::Sink>()?;
    m.add_function(wrap_pyfunction!(partition, m)?)?;
    m.add_function(wrap_pyfunction!(random_key, m)?)?;
    m.add_function(wrap_pyfunction!(list_objects, m)?)?;
    m.add_function(wrap_pyfunction!(download, m)?)?;
    m.add_function(wrap_pyfunction!(s3_presigned_url, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_devices, m)?)?;
    m.add_function(wrap_pyfunction!(derive_key, m)?)?;
    m.add("CryptographyError", m.py().get_type::<CryptographyError>())?;
    m.add("HashMismatchError", m.py().get_type::<HashMismatchError>())?;
    Ok(())
}
