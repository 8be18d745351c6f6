//! `tensorizer_rs._native`: the Rust core as a small Python extension.
//! The Python API (`TensorDeserializer`, `TensorSerializer`, ...) is written
//! in Python over it (`python/tensorizer_rs/`); this layer only opens,
//! reads and writes, and hands tensors over as DLPack capsules, so torch and
//! numpy take our aligned buffers without a copy and free them through the
//! capsule's deleter when the last tensor viewing them is gone.

use std::ffi::{CStr, c_void};

use pyo3::exceptions::{PyKeyError, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString, PyTuple};
use tensorizer::{
    Decryption, Deserializer, Dtype, Encryption, EncryptionKey, Error, KdfParams, PathComponent,
    S3Options, Serializer, StorageOptions, Tensor, TensorData, TensorPath, TensorType, Verify,
};

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

fn storage(
    s3_access_key_id: Option<String>,
    s3_secret_access_key: Option<String>,
    s3_endpoint: Option<String>,
) -> StorageOptions {
    StorageOptions {
        s3: S3Options {
            access_key_id: s3_access_key_id,
            secret_access_key: s3_secret_access_key,
            endpoint: s3_endpoint,
            ..Default::default()
        },
        ..Default::default()
    }
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

/// An open `.tensors` file.
#[pyclass(module = "tensorizer_rs._native")]
struct Reader {
    inner: Deserializer,
}

#[pymethods]
impl Reader {
    #[new]
    #[pyo3(signature = (uri, *, s3_access_key_id=None, s3_secret_access_key=None, s3_endpoint=None, key=None, passphrase=None, num_readers=None, verify_hash=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        uri: String,
        s3_access_key_id: Option<String>,
        s3_secret_access_key: Option<String>,
        s3_endpoint: Option<String>,
        key: Option<Vec<u8>>,
        passphrase: Option<Vec<u8>>,
        num_readers: Option<usize>,
        verify_hash: bool,
    ) -> PyResult<Self> {
        let options = storage(s3_access_key_id, s3_secret_access_key, s3_endpoint);
        py.detach(|| {
            let mut d = Deserializer::open_uri_with(&uri, &options)?;
            d = d.verify(if verify_hash {
                Verify::All
            } else {
                Verify::None
            });
            if let Some(n) = num_readers {
                d = d.num_readers(n);
            }
            if let Some(k) = key {
                let k = EncryptionKey::from_slice(&k).map_err(|e| Error::Encryption {
                    path: uri.clone().into(),
                    message: e.to_string(),
                })?;
                d = d.decryption(Decryption::Key(k))?;
            } else if let Some(p) = passphrase {
                d = d.decryption(Decryption::passphrase(p))?;
            }
            Ok(Self { inner: d })
        })
        .map_err(py_err)
    }

    /// `(name, module_idx, tensor_type, torch dtype name, shape, data_length)`
    /// per index entry, in file order.
    fn entries<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let rows = self
            .inner
            .entries()
            .iter()
            .map(|e| {
                let name = path_to_py(py, e.name.path())?;
                (
                    name,
                    e.tensor_type as u8,
                    e.dtype.dtype().torch_name(),
                    e.shape.dims().to_vec(),
                    e.data_length,
                )
                    .into_pyobject(py)
                    .map(|t| t.into_any())
            })
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, rows)
    }

    /// Module index of each entry (from the tensor headers; no data read).
    fn module_indices(&self, py: Python<'_>) -> PyResult<Vec<u16>> {
        py.detach(|| {
            (0..self.inner.len())
                .map(|i| self.inner.read_header(i).map(|h| h.module_idx))
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(py_err)
    }

    /// Reads the entries `indices` in parallel; one DLPack capsule each
    /// (raw bytes, 1-D uint8, for dtypes DLPack cannot name, or for all
    /// when `raw`).
    #[pyo3(signature = (indices, raw=false))]
    fn read<'py>(
        &self,
        py: Python<'py>,
        indices: Vec<usize>,
        raw: bool,
    ) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let entries = self.inner.entries();
        let wanted = indices
            .iter()
            .map(|&i| {
                entries
                    .get(i)
                    .map(|e| e.name.path())
                    .ok_or_else(|| PyKeyError::new_err(format!("no entry {i}")))
            })
            .collect::<PyResult<std::collections::HashSet<&TensorPath>>>()?;
        let tensors = py
            .detach(|| self.inner.read_filtered(|e| wanted.contains(e.name.path())))
            .map_err(py_err)?;
        let mut by_name: std::collections::HashMap<TensorPath, Tensor> =
            tensors.into_iter().map(|t| (t.path().clone(), t)).collect();
        indices
            .iter()
            .map(|&i| {
                let name = entries[i].name.path();
                let t = by_name
                    .remove(name)
                    .ok_or_else(|| PyKeyError::new_err(name.to_string()))?;
                dlpack::capsule(py, t, raw)
            })
            .collect()
    }

    /// Closes nothing yet (the source closes when the reader is dropped).
    fn __len__(&self) -> usize {
        self.inner.len()
    }
}

/// Tensors collected for one `.tensors` file, written by `write`.
#[pyclass(module = "tensorizer_rs._native")]
#[derive(Default)]
struct Writer {
    records: Vec<Record>,
}

struct Record {
    module_idx: u16,
    name: TensorPath,
    tensor_type: TensorType,
    dtype: Dtype,
    shape: Vec<u64>,
    ptr: usize,
    len: usize,
    meta: bool,
}

#[pymethods]
impl Writer {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    /// Adds a tensor by address: `ptr` and `nbytes` of a contiguous CPU
    /// tensor the caller keeps alive until `write` returns (`ptr` 0: a meta
    /// tensor).
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        module_idx: u16,
        name: &Bound<'_, PyAny>,
        tensor_type: u8,
        dtype: &str,
        shape: Vec<u64>,
        ptr: usize,
        nbytes: usize,
        meta: bool,
    ) -> PyResult<()> {
        let dtype = Dtype::from_torch_name(dtype)
            .ok_or_else(|| PyValueError::new_err(format!("unsupported dtype {dtype}")))?;
        let tensor_type = match tensor_type {
            0 => TensorType::Param,
            1 => TensorType::Buffer,
            2 => TensorType::StateDict,
            t => return Err(PyValueError::new_err(format!("invalid tensor type {t}"))),
        };
        self.records.push(Record {
            module_idx,
            name: path_from_py(name)?,
            tensor_type,
            dtype,
            shape,
            ptr,
            len: nbytes,
            meta,
        });
        Ok(())
    }

    /// Writes everything added, atomically; returns the file size.
    #[pyo3(signature = (uri, *, s3_access_key_id=None, s3_secret_access_key=None, s3_endpoint=None, key=None, kdf=None, threads=None))]
    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        py: Python<'_>,
        uri: String,
        s3_access_key_id: Option<String>,
        s3_secret_access_key: Option<String>,
        s3_endpoint: Option<String>,
        key: Option<Vec<u8>>,
        kdf: Option<(u64, u64, Vec<u8>, Vec<u8>)>,
        threads: Option<usize>,
    ) -> PyResult<u64> {
        let options = storage(s3_access_key_id, s3_secret_access_key, s3_endpoint);
        let mut s = Serializer::new();
        for r in &self.records {
            let data = if r.meta {
                TensorData::meta(r.dtype, &r.shape)
            } else {
                // SAFETY: the Python layer keeps every tensor (contiguous,
                // on the CPU) alive and unchanged until this call returns.
                let bytes = unsafe { std::slice::from_raw_parts(r.ptr as *const u8, r.len) };
                TensorData::new(r.dtype, &r.shape, bytes).map_err(py_err)?
            };
            s.write_tensor(r.module_idx, r.name.clone(), r.tensor_type, data)
                .map_err(py_err)?;
        }
        let crypto =
            |e: tensorizer::encryption::CryptoError| CryptographyError::new_err(e.to_string());
        match (key, kdf) {
            // A passphrase key: the KDF parameters and salt go in the file.
            (_, Some((ops, mem, salt, passphrase))) => {
                let params = KdfParams::from_stored(ops, mem, &salt).map_err(crypto)?;
                s.encryption(Encryption::from_passphrase(&passphrase, params).map_err(crypto)?);
            }
            (Some(k), None) => {
                s.encryption(Encryption::with_key(
                    EncryptionKey::from_slice(&k).map_err(crypto)?,
                ));
            }
            (None, None) => {}
        }
        let write = move || s.write_to_uri_with(&uri, &options).map(|w| w.bytes);
        py.detach(|| match threads {
            Some(n) => rayon_install(n, write),
            None => write(),
        })
        .map_err(py_err)
    }
}

fn rayon_install<T: Send>(n: usize, f: impl FnOnce() -> T + Send) -> T {
    match rayon::ThreadPoolBuilder::new()
        .num_threads(n.max(1))
        .build()
    {
        Ok(pool) => pool.install(f),
        Err(_) => f(),
    }
}

/// The whole object at `uri` (for `stream_io` reads).
#[pyfunction]
#[pyo3(signature = (uri, *, s3_access_key_id=None, s3_secret_access_key=None, s3_endpoint=None))]
fn read_object(
    py: Python<'_>,
    uri: String,
    s3_access_key_id: Option<String>,
    s3_secret_access_key: Option<String>,
    s3_endpoint: Option<String>,
) -> PyResult<Vec<u8>> {
    let options = storage(s3_access_key_id, s3_secret_access_key, s3_endpoint);
    py.detach(|| {
        let source = tensorizer::io::open_source(&uri, &options)?;
        source.read_range(0, source.len())
    })
    .map_err(|e| PyOSError::new_err(e.to_string()))
}

/// Writes `data` as the whole object at `uri`, atomically.
#[pyfunction]
#[pyo3(signature = (uri, data, *, s3_access_key_id=None, s3_secret_access_key=None, s3_endpoint=None))]
fn write_object(
    py: Python<'_>,
    uri: String,
    data: Vec<u8>,
    s3_access_key_id: Option<String>,
    s3_secret_access_key: Option<String>,
    s3_endpoint: Option<String>,
) -> PyResult<()> {
    let options = storage(s3_access_key_id, s3_secret_access_key, s3_endpoint);
    py.detach(|| {
        let sink = tensorizer::io::create_sink(&uri, &options)?;
        sink.write_all_at(0, &data)?;
        sink.commit()
    })
    .map_err(|e| PyOSError::new_err(e.to_string()))
}

/// A new random 32-byte key.
#[pyfunction]
fn random_key() -> PyResult<Vec<u8>> {
    EncryptionKey::random()
        .map(|k| k.as_bytes().to_vec())
        .map_err(|e| CryptographyError::new_err(e.to_string()))
}

/// Argon2id (libsodium `crypto_pwhash`) key from a passphrase.
#[pyfunction]
fn derive_key(
    passphrase: Vec<u8>,
    opslimit: u64,
    memlimit: u64,
    salt: Vec<u8>,
) -> PyResult<Vec<u8>> {
    let params = KdfParams::from_stored(opslimit, memlimit, &salt)
        .map_err(|e| CryptographyError::new_err(e.to_string()))?;
    EncryptionKey::derive(&passphrase, &params)
        .map(|k| k.as_bytes().to_vec())
        .map_err(|e| CryptographyError::new_err(e.to_string()))
}

mod dlpack {
    //! DLPack 0.8 `DLManagedTensor` capsules over our tensors.
    use super::*;

    #[repr(C)]
    struct DLDevice {
        device_type: i32,
        device_id: i32,
    }
    #[repr(C)]
    struct DLDataType {
        code: u8,
        bits: u8,
        lanes: u16,
    }
    #[repr(C)]
    struct DLTensor {
        data: *mut c_void,
        device: DLDevice,
        ndim: i32,
        dtype: DLDataType,
        shape: *mut i64,
        strides: *mut i64,
        byte_offset: u64,
    }
    #[repr(C)]
    struct DLManagedTensor {
        dl_tensor: DLTensor,
        manager_ctx: *mut c_void,
        deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
    }

    /// What a capsule owns: the tensor and the shape array DLPack points to.
    struct Owner {
        _tensor: Tensor,
        _shape: Vec<i64>,
    }

    const NAME: &CStr = c"dltensor";
    const USED: &CStr = c"used_dltensor";

    /// DLPack's type code and bits for `dtype`, if it has one.
    fn dl_type(dtype: Dtype) -> Option<(u8, u8)> {
        Some(match dtype {
            Dtype::U8 => (1, 8),
            Dtype::I8 => (0, 8),
            Dtype::I16 => (0, 16),
            Dtype::I32 => (0, 32),
            Dtype::I64 => (0, 64),
            Dtype::U16 => (1, 16),
            Dtype::U32 => (1, 32),
            Dtype::U64 => (1, 64),
            Dtype::F16 => (2, 16),
            Dtype::BF16 => (4, 16),
            Dtype::F32 => (2, 32),
            Dtype::F64 => (2, 64),
            Dtype::C64 => (5, 64),
            Dtype::C128 => (5, 128),
            _ => return None,
        })
    }

    unsafe extern "C" fn delete(managed: *mut DLManagedTensor) {
        // SAFETY: `managed` and its context were made by `capsule` below,
        // and DLPack calls the deleter exactly once.
        unsafe {
            let managed = Box::from_raw(managed);
            drop(Box::from_raw(managed.manager_ctx as *mut Owner));
        }
    }

    unsafe extern "C" fn capsule_destructor(capsule: *mut pyo3::ffi::PyObject) {
        // SAFETY: a capsule still named "dltensor" was never consumed, so
        // its tensor is still ours to free.
        unsafe {
            if pyo3::ffi::PyCapsule_IsValid(capsule, NAME.as_ptr()) == 1 {
                let managed =
                    pyo3::ffi::PyCapsule_GetPointer(capsule, NAME.as_ptr()) as *mut DLManagedTensor;
                if let Some(d) = (*managed).deleter {
                    d(managed);
                }
            }
        }
        let _ = USED;
    }

    pub(super) fn capsule(py: Python<'_>, tensor: Tensor, raw: bool) -> PyResult<Bound<'_, PyAny>> {
        let typed = if raw { None } else { dl_type(tensor.dtype()) };
        let (code, bits, shape) = match typed {
            Some((code, bits)) => (
                code,
                bits,
                tensor.shape().iter().map(|&d| d as i64).collect::<Vec<_>>(),
            ),
            None => (1, 8, vec![tensor.as_bytes().len() as i64]),
        };
        let data = tensor.as_bytes().as_ptr() as *mut c_void;
        let mut owner = Box::new(Owner {
            _tensor: tensor,
            _shape: shape,
        });
        let shape_ptr = owner._shape.as_mut_ptr();
        let ndim = owner._shape.len() as i32;
        let managed = Box::new(DLManagedTensor {
            dl_tensor: DLTensor {
                data,
                device: DLDevice {
                    device_type: 1,
                    device_id: 0,
                },
                ndim,
                dtype: DLDataType {
                    code,
                    bits,
                    lanes: 1,
                },
                shape: shape_ptr,
                strides: std::ptr::null_mut(),
                byte_offset: 0,
            },
            manager_ctx: Box::into_raw(owner) as *mut c_void,
            deleter: Some(delete),
        });
        let raw = Box::into_raw(managed);
        // SAFETY: a capsule over our heap object; freed by the consumer
        // through `deleter`, or by `capsule_destructor` if never consumed.
        unsafe {
            let obj = pyo3::ffi::PyCapsule_New(
                raw as *mut c_void,
                NAME.as_ptr(),
                Some(capsule_destructor),
            );
            if obj.is_null() {
                delete(raw);
                return Err(PyErr::fetch(py));
            }
            Ok(Bound::from_owned_ptr(py, obj))
        }
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Reader>()?;
    m.add_class::<Writer>()?;
    m.add_function(wrap_pyfunction!(random_key, m)?)?;
    m.add_function(wrap_pyfunction!(read_object, m)?)?;
    m.add_function(wrap_pyfunction!(write_object, m)?)?;
    m.add_function(wrap_pyfunction!(derive_key, m)?)?;
    m.add("CryptographyError", m.py().get_type::<CryptographyError>())?;
    m.add("HashMismatchError", m.py().get_type::<HashMismatchError>())?;
    Ok(())
}
