//! `Writer`: tensors collected for one `.tensors` file, written by `write`
//! into a URI, an open file descriptor, or a stream's sink.

use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use tensorizer::{
    Dtype, Encryption, EncryptionKey, KdfParams, Serializer, TensorData, TensorPath, TensorType,
};

use crate::sources::{FdSink, SinkWindow};
use crate::{CryptographyError, Storage, dlpack, options, path_from_py, py_err};

/// Tensors collected for one `.tensors` file.
#[pyclass(module = "tensorizer_rs._native")]
#[derive(Default)]
pub struct Writer {
    records: Vec<Record>,
}

struct Record {
    module_idx: u16,
    name: TensorPath,
    tensor_type: TensorType,
    dtype: Dtype,
    shape: Vec<u64>,
    /// A copy of the tensor's bytes taken at `add`, or `None` for a meta
    /// tensor. Not the producer's memory: a capsule keeps its storage
    /// object alive, not its bytes, and `resize_` or `set_` on the tensor
    /// would free them under us before `write`.
    data: Option<Vec<u8>>,
}

/// Where `Writer::write` puts the file.
enum Target {
    Uri(String, Box<tensorizer::StorageOptions>),
    Sink(Box<dyn tensorizer::io::Sink>),
}

#[pymethods]
impl Writer {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    /// Adds a tensor: `data` is a DLPack capsule of its bytes (a 1-D uint8
    /// CPU tensor or array over the contiguous data, as
    /// `t.reshape(-1).view(torch.uint8).__dlpack__()` gives), or `None` for
    /// a meta tensor. No raw address crosses from Python.
    #[pyo3(signature = (module_idx, name, tensor_type, dtype, shape, data))]
    fn add(
        &mut self,
        module_idx: u16,
        name: &Bound<'_, PyAny>,
        tensor_type: u8,
        dtype: &str,
        shape: Vec<u64>,
        data: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let name = path_from_py(name)?;
        let dtype = Dtype::from_torch_name(dtype)
            .ok_or_else(|| PyValueError::new_err(format!("{name}: unsupported dtype {dtype}")))?;
        let tensor_type = match tensor_type {
            0 => TensorType::Param,
            1 => TensorType::Buffer,
            2 => TensorType::StateDict,
            t => {
                return Err(PyValueError::new_err(format!(
                    "{name}: invalid tensor type {t}"
                )));
            }
        };
        let data = match data {
            Some(capsule) => {
                let imported = dlpack::Imported::bytes(capsule)?;
                let mut bytes = Vec::new();
                bytes.try_reserve_exact(imported.len()).map_err(|_| {
                    pyo3::exceptions::PyMemoryError::new_err(format!(
                        "{name}: cannot copy {} bytes",
                        imported.len()
                    ))
                })?;
                bytes.extend_from_slice(imported.as_slice());
                // The capsule (and the producer's memory) is released here.
                Some(bytes)
            }
            None => None,
        };
        if let Some(d) = &data {
            let expected = shape
                .iter()
                .try_fold(dtype.itemsize() as u64, |n, &d| n.checked_mul(d));
            if expected != Some(d.len() as u64) {
                return Err(PyValueError::new_err(format!(
                    "{name}: {} bytes given for a {dtype} tensor of shape {shape:?}",
                    d.len()
                )));
            }
        }
        self.records.push(Record {
            module_idx,
            name,
            tensor_type,
            dtype,
            shape,
            data,
        });
        Ok(())
    }

    /// Bytes of tensor data added so far.
    fn data_bytes(&self) -> u64 {
        self.records
            .iter()
            .map(|r| r.data.as_ref().map_or(0, |d| d.len() as u64))
            .sum()
    }

    /// Writes everything added, atomically where the target allows; returns
    /// the file size. The target is one of: `uri` (a path or URI, replaced
    /// atomically), `fd` (an open file descriptor, written from `base` on),
    /// `sink` (a stream's sink, written from `base` on; the stream commits).
    #[pyo3(signature = (*, uri=None, storage=None, fd=None, sink=None, base=0, key=None, kdf=None, threads=None))]
    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        py: Python<'_>,
        uri: Option<String>,
        storage: Option<&Bound<'_, Storage>>,
        fd: Option<i32>,
        sink: Option<&Bound<'_, crate::stream::Sink>>,
        base: u64,
        key: Option<Vec<u8>>,
        kdf: Option<(u64, u64, Vec<u8>, Vec<u8>)>,
        threads: Option<usize>,
    ) -> PyResult<u64> {
        let target = match (uri, fd, sink) {
            (Some(uri), None, None) => Target::Uri(uri, Box::new(options(storage))),
            (None, Some(fd), None) => {
                let proc_path = format!("/proc/self/fd/{fd}");
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&proc_path)
                    .map_err(|e| {
                        pyo3::exceptions::PyOSError::new_err(format!(
                            "reopening file descriptor {fd} for writing: {e}"
                        ))
                    })?;
                Target::Sink(Box::new(FdSink::new(file, base, format!("<fd {fd}>"))))
            }
            (None, None, Some(sink)) => {
                let sink = sink.get();
                Target::Sink(Box::new(SinkWindow::new(
                    Arc::clone(&sink.shared),
                    base,
                    sink.uri.clone(),
                )))
            }
            _ => {
                return Err(PyValueError::new_err(
                    "write: give exactly one of uri, fd and sink",
                ));
            }
        };
        let mut s = Serializer::new();
        for r in &self.records {
            let data = match &r.data {
                None => TensorData::meta(r.dtype, &r.shape),
                Some(bytes) => TensorData::new(r.dtype, &r.shape, bytes).map_err(py_err)?,
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
        let write = move || match target {
            Target::Uri(uri, options) => s.write_to_uri_with(&uri, &options).map(|w| w.bytes),
            Target::Sink(sink) => s.write_to_sink(sink).map(|w| w.bytes),
        };
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
