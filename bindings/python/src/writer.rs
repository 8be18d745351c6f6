//! `StreamWriter`: one `.tensors` file written as its tensors are handed
//! over (into a URI, an open file descriptor, or a stream's sink), each
//! batch reaching the sink before the call returns.

use std::sync::Arc;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use tensorizer::{
    Dtype, Encryption, EncryptionKey, Error, KdfParams, StreamingSerializer, TensorData,
    TensorPath, TensorType,
};

use crate::sources::{FdSink, SinkWindow};
use crate::{CryptographyError, Storage, dlpack, options, path_from_py, py_err};

/// A `.tensors` file being written: the Python library's layout (a 256 KiB
/// index reserved up front, records in call order), so the same calls give
/// its bytes. Host memory: the tensors of the batch being written, read in
/// place, plus a few fixed buffers.
#[pyclass(module = "tensorizer_rs._native")]
pub struct StreamWriter {
    /// `None` once closed (committed) or aborted.
    writer: Option<StreamingSerializer>,
    pool: Option<rayon::ThreadPool>,
    data_bytes: u64,
    /// Pinned staging per GPU for device tensors: made at the first one,
    /// freed with the writer.
    #[cfg(feature = "cuda")]
    device_readers: std::collections::HashMap<usize, tensorizer::cuda::DeviceReader>,
}

/// Pinned buffers per GPU for copying device tensors back, and their size:
/// 32 MiB of host memory per GPU written from, whatever the tensors.
#[cfg(feature = "cuda")]
const DEVICE_STAGING: (usize, usize) = (4, 8 << 20);

/// One tensor of a dry run: its data's description, `True` when meta.
type SpecOnly<'py> = (u16, Bound<'py, PyAny>, u8, String, Vec<u64>, bool);

/// One tensor of a batch as Python describes it.
type Spec<'py> = (
    u16,
    Bound<'py, PyAny>,
    u8,
    String,
    Vec<u64>,
    Option<Bound<'py, PyAny>>,
);

#[pymethods]
impl StreamWriter {
    /// Starts a file. The target is one of: `uri` (a path or URI, replaced
    /// atomically at `close`), `fd` (an open file descriptor, written from
    /// `base` on), `sink` (a stream's sink, written from `base` on; the
    /// stream commits). `key` or `kdf` encrypt the tensors' data; `threads`
    /// bounds the writer threads.
    #[new]
    #[pyo3(signature = (*, uri=None, storage=None, fd=None, sink=None, base=0, key=None, kdf=None, threads=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        uri: Option<String>,
        storage: Option<&Bound<'_, Storage>>,
        fd: Option<i32>,
        sink: Option<&Bound<'_, crate::stream::Sink>>,
        base: u64,
        key: Option<Vec<u8>>,
        kdf: Option<(u64, u64, Vec<u8>, Vec<u8>)>,
        threads: Option<usize>,
    ) -> PyResult<Self> {
        let mut writer = match (uri, fd, sink) {
            (Some(uri), None, None) => {
                StreamingSerializer::create_uri(&uri, &options(storage)).map_err(py_err)?
            }
            (None, Some(fd), None) => {
                // Written through the descriptor, never the file's name.
                let proc_path = format!("/proc/self/fd/{fd}");
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&proc_path)
                    .map_err(|e| {
                        pyo3::exceptions::PyOSError::new_err(format!(
                            "reopening file descriptor {fd} for writing: {e}"
                        ))
                    })?;
                StreamingSerializer::new(Box::new(FdSink::new(file, base, format!("<fd {fd}>"))))
            }
            (None, None, Some(sink)) => {
                let sink = sink.get();
                StreamingSerializer::new(Box::new(SinkWindow::new(
                    Arc::clone(&sink.shared),
                    base,
                    sink.uri.clone(),
                )))
            }
            _ => {
                return Err(PyValueError::new_err(
                    "StreamWriter: give exactly one of uri, fd and sink",
                ));
            }
        };
        let crypto =
            |e: tensorizer::encryption::CryptoError| CryptographyError::new_err(e.to_string());
        match (key, kdf) {
            // A passphrase key: the KDF parameters and salt go in the file.
            (_, Some((ops, mem, salt, passphrase))) => {
                let params = KdfParams::from_stored(ops, mem, &salt).map_err(crypto)?;
                let enc = Encryption::from_passphrase(&passphrase, params).map_err(crypto)?;
                writer.encryption(enc).map_err(py_err)?;
            }
            (Some(k), None) => {
                let key = EncryptionKey::from_slice(&k).map_err(crypto)?;
                writer
                    .encryption(Encryption::with_key(key))
                    .map_err(py_err)?;
            }
            (None, None) => {}
        }
        let pool = match threads {
            Some(n) => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n.max(1))
                    .thread_name(|i| format!("tensorizer-write-{i}"))
                    .build()
                    .map_err(|e| {
                        PyRuntimeError::new_err(format!("starting writer threads: {e}"))
                    })?,
            ),
            None => None,
        };
        Ok(Self {
            writer: Some(writer),
            pool,
            data_bytes: 0,
            #[cfg(feature = "cuda")]
            device_readers: Default::default(),
        })
    }

    /// Checks that a batch described as `(module_idx, name, tensor_type,
    /// dtype, shape, is_meta)` would be accepted, writing nothing: a caller
    /// handing a module over in parts checks the whole first.
    fn check_batch(&self, specs: Vec<SpecOnly<'_>>) -> PyResult<()> {
        let writer = self.writer()?;
        let specs = specs
            .into_iter()
            .map(|(idx, name, tensor_type, dtype, shape, meta)| {
                let (name, tensor_type, dtype) = describe(&name, tensor_type, &dtype)?;
                Ok((idx, name, tensor_type, dtype, shape, meta))
            })
            .collect::<PyResult<Vec<_>>>()?;
        writer.check_batch(specs).map_err(write_err)
    }

    /// Writes a batch of `(module_idx, name, tensor_type, dtype, shape,
    /// data)` before returning, all or none placed: `data` is a DLPack
    /// capsule of the bytes (a 1-D uint8 CPU tensor or array over the
    /// contiguous data, as `t.reshape(-1).view(torch.uint8).__dlpack__()`
    /// gives), or `None` for a meta tensor. No raw address crosses from
    /// Python.
    ///
    /// The bytes are read in place, not copied, and the GIL is held while
    /// they are written: a capsule keeps its storage object alive, not its
    /// bytes, so another Python thread's `resize_` or `set_` on the tensor
    /// could free them under the writer; holding the GIL keeps Python code
    /// from running until the file holds the tensor as it was at the call.
    fn add_batch(&mut self, batch: Vec<Spec<'_>>) -> PyResult<()> {
        self.writer()?;
        let mut described = Vec::with_capacity(batch.len());
        let mut imported = Vec::with_capacity(batch.len());
        for (idx, name, tensor_type, dtype, shape, data) in batch {
            let (name, tensor_type, dtype) = describe(&name, tensor_type, &dtype)?;
            let bytes = match data {
                Some(capsule) => {
                    let bytes = dlpack::Imported::bytes(&capsule)?;
                    let expected = shape
                        .iter()
                        .try_fold(dtype.itemsize() as u64, |n, &d| n.checked_mul(d));
                    if expected != Some(bytes.len() as u64) {
                        return Err(PyValueError::new_err(format!(
                            "{name}: {} bytes given for a {dtype} tensor of shape {shape:?}",
                            bytes.len()
                        )));
                    }
                    Some(bytes)
                }
                None => None,
            };
            described.push((idx, name, tensor_type, dtype, shape));
            imported.push(bytes);
        }
        let mut tensors = Vec::with_capacity(described.len());
        for ((idx, name, tensor_type, dtype, shape), bytes) in described.iter().zip(&imported) {
            let data = match bytes {
                None => TensorData::meta(*dtype, shape),
                Some(b) => TensorData::new(*dtype, shape, b.as_slice()).map_err(py_err)?,
            };
            tensors.push((*idx, name.clone(), *tensor_type, data));
        }
        let batch_bytes: u64 = imported.iter().flatten().map(|b| b.len() as u64).sum();
        let writer = self.writer.as_mut().expect("checked above");
        let write = move || writer.write_batch(tensors).map(|_| ());
        match &self.pool {
            Some(pool) => pool.install(write),
            None => write(),
        }
        .map_err(write_err)?;
        self.data_bytes += batch_bytes;
        // `imported` drops here: the producers' deleters run after the write.
        Ok(())
    }

    /// Writes one tensor from GPU memory before returning: `data` is the
    /// DLPack capsule of a contiguous CUDA tensor (the caller has finished
    /// the work that produces it: its stream is synchronized). The bytes
    /// are copied back through pinned staging buffers (`DEVICE_STAGING`),
    /// a buffer at a time with the next copies in flight while one is
    /// hashed and written: host memory stays at the ring's 32 MiB whatever
    /// the tensor's size. The device range is checked with the driver
    /// first. The GIL is held, as in `add_batch`.
    #[cfg(feature = "cuda")]
    #[allow(clippy::too_many_arguments)]
    fn add_device(
        &mut self,
        idx: u16,
        name: Bound<'_, PyAny>,
        tensor_type: u8,
        dtype: String,
        shape: Vec<u64>,
        data: Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.writer()?;
        let (name, tensor_type, dtype) = describe(&name, tensor_type, &dtype)?;
        let (imported, ordinal) = dlpack::Imported::device(&data)?;
        let expected = shape
            .iter()
            .try_fold(dtype.itemsize() as u64, |n, &d| n.checked_mul(d));
        if expected != Some(imported.len() as u64) {
            return Err(PyValueError::new_err(format!(
                "{name}: {} bytes given for a {dtype} tensor of shape {shape:?}",
                imported.len()
            )));
        }
        use std::collections::hash_map::Entry;
        let reader = match self.device_readers.entry(ordinal) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let (count, size) = DEVICE_STAGING;
                e.insert(tensorizer::cuda::DeviceReader::new(ordinal, count, size).map_err(py_err)?)
            }
        };
        let copy_back = reader
            .tensor(imported.device_ptr(), imported.len())
            .map_err(py_err)?;
        let writer = self.writer.as_mut().expect("checked above");
        writer
            .write_tensor_from(idx, name, tensor_type, dtype, &shape, copy_back)
            .map_err(write_err)?;
        self.data_bytes += imported.len() as u64;
        // `imported` drops here: the producer's deleter runs after the copy.
        drop(imported);
        Ok(())
    }

    /// Tensors written so far.
    fn __len__(&self) -> usize {
        self.writer.as_ref().map_or(0, StreamingSerializer::len)
    }

    /// Bytes of tensor data written so far.
    fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Writes the index and commits (a URI's file appears whole under its
    /// name); returns the file size.
    fn close(&mut self, py: Python<'_>) -> PyResult<u64> {
        let writer = self
            .writer
            .take()
            .ok_or_else(|| PyValueError::new_err("this writer is closed"))?;
        #[cfg(feature = "cuda")]
        self.device_readers.clear();
        py.detach(|| writer.finish())
            .map(|summary| summary.bytes)
            .map_err(write_err)
    }

    /// Abandons the file: a URI keeps its previous content, nothing is
    /// left behind.
    fn abort(&mut self) {
        self.writer = None;
        #[cfg(feature = "cuda")]
        self.device_readers.clear();
    }
}

impl StreamWriter {
    fn writer(&self) -> PyResult<&StreamingSerializer> {
        self.writer
            .as_ref()
            .ok_or_else(|| PyValueError::new_err("this writer is closed"))
    }
}

fn describe(
    name: &Bound<'_, PyAny>,
    tensor_type: u8,
    dtype: &str,
) -> PyResult<(TensorPath, TensorType, Dtype)> {
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
    Ok((name, tensor_type, dtype))
}

/// The library raises `RuntimeError("Metadata overflow")` when the reserved
/// index is full; the rest as everywhere else.
fn write_err(e: Error) -> PyErr {
    let message = e.to_string();
    if message.contains("Metadata overflow") {
        PyRuntimeError::new_err(message)
    } else {
        py_err(e)
    }
}
