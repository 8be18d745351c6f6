//! `Reader`: an open `.tensors` file, read by the core in parallel.

use std::collections::{HashMap, HashSet};

use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use rayon::prelude::*;
use tensorizer::{
    Decryption, Deserializer, EncryptionKey, Error, Tensor, TensorPath, UnauthenticatedMeta, Verify,
};

use crate::sources::{FdSource, MemorySource};
use crate::{Storage, dlpack, options, path_to_py, py_err};

/// An open `.tensors` file.
#[pyclass(module = "tensorizer_rs._native", frozen)]
pub struct Reader {
    inner: Deserializer,
}

/// How to decrypt and what to check, as the Python layer passes them.
struct Opening {
    key: Option<Vec<u8>>,
    passphrase: Option<Vec<u8>>,
    num_readers: Option<usize>,
    verify_hash: bool,
    meta: UnauthenticatedMeta,
}

/// The meta tensors of an encrypted file the caller accepts.
fn meta_policy(allow_meta: Vec<String>, allow_all_meta: bool) -> UnauthenticatedMeta {
    UnauthenticatedMeta::from_names(allow_meta.iter().map(String::as_str), allow_all_meta)
}

impl Opening {
    fn apply(self, mut d: Deserializer) -> tensorizer::Result<Deserializer> {
        d = d.verify(if self.verify_hash {
            Verify::All
        } else {
            Verify::None
        });
        if let Some(n) = self.num_readers {
            d = d.num_readers(n.max(1));
        }
        d = d.unauthenticated_meta(self.meta);
        if let Some(k) = self.key {
            let k = EncryptionKey::from_slice(&k).map_err(|e| Error::Encryption {
                path: d.path().to_path_buf(),
                message: e.to_string(),
            })?;
            d = d.decryption(Decryption::Key(k))?;
        } else if let Some(p) = self.passphrase {
            d = d.decryption(Decryption::passphrase(p))?;
        }
        Ok(d)
    }
}

fn open(
    py: Python<'_>,
    source: impl FnOnce() -> tensorizer::Result<Deserializer> + Send,
    opening: Opening,
) -> PyResult<Reader> {
    py.detach(|| opening.apply(source()?))
        .map(|inner| Reader { inner })
        .map_err(py_err)
}

fn source_err(e: tensorizer::io::IoError) -> Error {
    Error::Source {
        action: "opening the file".into(),
        source: e,
    }
}

impl Reader {
    /// The names of entries `indices`, each at most once: a tensor asked
    /// for twice would come back as two objects over one buffer (on a
    /// device, two capsules of one address), each free to write the other.
    fn wanted(&self, indices: &[usize]) -> PyResult<HashSet<&TensorPath>> {
        let entries = self.inner.entries();
        let mut wanted = HashSet::with_capacity(indices.len());
        for &i in indices {
            let name = entries
                .get(i)
                .map(|e| e.name.path())
                .ok_or_else(|| PyKeyError::new_err(format!("no entry {i}")))?;
            if !wanted.insert(name) {
                return Err(PyValueError::new_err(format!(
                    "entry {i} ({name}) is asked for twice"
                )));
            }
        }
        Ok(wanted)
    }
}

#[pymethods]
impl Reader {
    /// Opens a path or URI.
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (uri, *, storage=None, key=None, passphrase=None, num_readers=None, verify_hash=false, allow_meta=Vec::new(), allow_all_meta=false))]
    fn new(
        py: Python<'_>,
        uri: String,
        storage: Option<&Bound<'_, Storage>>,
        key: Option<Vec<u8>>,
        passphrase: Option<Vec<u8>>,
        num_readers: Option<usize>,
        verify_hash: bool,
        allow_meta: Vec<String>,
        allow_all_meta: bool,
    ) -> PyResult<Self> {
        let options = options(storage);
        let opening = Opening {
            key,
            passphrase,
            num_readers,
            verify_hash,
            meta: meta_policy(allow_meta, allow_all_meta),
        };
        open(py, || Deserializer::open_uri_with(&uri, &options), opening)
    }

    /// Reads the open file descriptor `fd` from byte `base` on (a Python
    /// file object where it stands). The descriptor is reopened through
    /// `/proc/self/fd`, never by the file's name.
    #[staticmethod]
    #[pyo3(signature = (fd, base, name, *, key=None, passphrase=None, num_readers=None, verify_hash=false, allow_meta=Vec::new(), allow_all_meta=false))]
    #[allow(clippy::too_many_arguments)]
    fn from_fd(
        py: Python<'_>,
        fd: i32,
        base: u64,
        name: String,
        key: Option<Vec<u8>>,
        passphrase: Option<Vec<u8>>,
        num_readers: Option<usize>,
        verify_hash: bool,
        allow_meta: Vec<String>,
        allow_all_meta: bool,
    ) -> PyResult<Self> {
        let opening = Opening {
            key,
            passphrase,
            num_readers,
            verify_hash,
            meta: meta_policy(allow_meta, allow_all_meta),
        };
        let source = move || {
            let proc_path = format!("/proc/self/fd/{fd}");
            let file = std::fs::File::open(&proc_path).map_err(|e| Error::Io {
                path: name.clone().into(),
                action: format!("reopening file descriptor {fd}"),
                source: e,
            })?;
            let source = FdSource::new(file, base, name).map_err(source_err)?;
            Deserializer::from_source(Box::new(source))
        };
        open(py, source, opening)
    }

    /// Reads a file held in memory.
    #[staticmethod]
    #[pyo3(signature = (data, name, *, key=None, passphrase=None, num_readers=None, verify_hash=false, allow_meta=Vec::new(), allow_all_meta=false))]
    #[allow(clippy::too_many_arguments)]
    fn from_bytes(
        py: Python<'_>,
        data: Vec<u8>,
        name: String,
        key: Option<Vec<u8>>,
        passphrase: Option<Vec<u8>>,
        num_readers: Option<usize>,
        verify_hash: bool,
        allow_meta: Vec<String>,
        allow_all_meta: bool,
    ) -> PyResult<Self> {
        let opening = Opening {
            key,
            passphrase,
            num_readers,
            verify_hash,
            meta: meta_policy(allow_meta, allow_all_meta),
        };
        open(
            py,
            move || Deserializer::from_source(Box::new(MemorySource::new(data, name))),
            opening,
        )
    }

    /// `(version, feature flag bits, tensor_size, tensor_count, prologue
    /// length)` of the file header; the prologue (magic, header, index) is
    /// the bytes before the first tensor record.
    fn file_header(&self) -> (u32, u8, u64, u64, u64) {
        let m = self.inner.metadata();
        let h = &m.header;
        (
            h.version.get(),
            h.flags.bits(),
            h.tensor_size,
            h.tensor_count,
            m.records_offset(),
        )
    }

    /// For a safetensors file, `(offset of the first tensor byte,
    /// __metadata__ or None)`; None for a tensorizer file.
    #[allow(clippy::type_complexity)]
    fn safetensors(&self) -> Option<(u64, Option<std::collections::BTreeMap<String, String>>)> {
        match self.inner.format() {
            // The index of a safetensors file is its JSON header, after
            // the 8-byte length.
            tensorizer::FileFormat::Safetensors { metadata } => {
                Some((8 + self.inner.metadata().index_len, metadata.clone()))
            }
            tensorizer::FileFormat::Tensorizer => None,
        }
    }

    /// `(name, tensor_type, torch dtype name, shape, data_length,
    /// header_offset, data_offset, stored name)` per index entry, in file
    /// order.
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
                    e.header_offset,
                    e.data_offset,
                    String::from_utf8_lossy(e.name.as_bytes()).into_owned(),
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
                .into_par_iter()
                .map(|i| self.inner.read_header(i).map(|h| h.module_idx))
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(py_err)
    }

    /// Per entry in `indices`: `(module_idx, [(hash type, stored hash)],
    /// hashable header bytes)`. The hashes cover the hashable header bytes
    /// followed by the data (FORMAT.md §3.2).
    #[allow(clippy::type_complexity)]
    fn headers<'py>(
        &self,
        py: Python<'py>,
        indices: Vec<usize>,
    ) -> PyResult<Vec<(u16, Vec<(u8, Bound<'py, PyBytes>)>, Bound<'py, PyBytes>)>> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.inner.len()) {
            return Err(PyKeyError::new_err(format!("no entry {bad}")));
        }
        let headers = py
            .detach(|| {
                indices
                    .par_iter()
                    .map(|&i| {
                        let h = self.inner.read_header(i)?;
                        let hashable = h.hashable_bytes().map_err(|e| Error::Format {
                            path: self.inner.path().to_path_buf(),
                            source: e,
                        })?;
                        let hashes: Vec<(u8, Vec<u8>)> = h
                            .hashes
                            .iter()
                            .map(|s| match s {
                                tensorizer::format::StoredHash::Crc32(v) => {
                                    (0, v.to_le_bytes().to_vec())
                                }
                                tensorizer::format::StoredHash::Sha256(d) => (1, d.to_vec()),
                            })
                            .collect();
                        Ok((h.module_idx, hashes, hashable))
                    })
                    .collect::<tensorizer::Result<Vec<_>>>()
            })
            .map_err(py_err)?;
        Ok(headers
            .into_iter()
            .map(|(m, hashes, hashable)| {
                (
                    m,
                    hashes
                        .into_iter()
                        .map(|(t, h)| (t, PyBytes::new(py, &h)))
                        .collect(),
                    PyBytes::new(py, &hashable),
                )
            })
            .collect())
    }

    /// Fills `buffer` (a DLPack capsule of a 1-D uint8 CPU tensor) with
    /// the file's raw bytes from `offset` (a distributed load's share).
    fn read_into(&self, py: Python<'_>, offset: u64, buffer: &Bound<'_, PyAny>) -> PyResult<()> {
        crate::stream::read_into(py, self.inner.source(), offset, buffer)
    }

    /// The request size this file's store reads best in.
    #[getter]
    fn request_size(&self) -> usize {
        self.inner.source().hints().request_size
    }

    /// `len` raw bytes of the file from `offset` (for `to_redis`).
    fn read_bytes<'py>(
        &self,
        py: Python<'py>,
        offset: u64,
        len: u64,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let source = self.inner.source();
        let data = py
            .detach(|| source.read_range(offset, len))
            .map_err(crate::io_err)?;
        Ok(PyBytes::new(py, &data))
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
        let wanted = self.wanted(&indices)?;
        let tensors = py
            .detach(|| self.inner.read_filtered(|e| wanted.contains(e.name.path())))
            .map_err(py_err)?;
        let mut by_name: HashMap<TensorPath, Tensor> =
            tensors.into_iter().map(|t| (t.path().clone(), t)).collect();
        indices
            .iter()
            .map(|&i| {
                let name = entries[i].name.path();
                let t = by_name
                    .remove(name)
                    .ok_or_else(|| PyValueError::new_err(format!("tensor {name} read twice")))?;
                dlpack::capsule(py, t, raw)
            })
            .collect()
    }

    /// Loads the entries `indices` onto GPU `ordinal` through the core's
    /// CUDA engine (pinned staging ring, several streams, verification and
    /// decryption on the way); one `kDLCUDA` DLPack capsule each, all over
    /// one device arena that lives as long as any of them.
    #[cfg(feature = "cuda")]
    #[pyo3(signature = (indices, ordinal, raw=false))]
    fn read_cuda<'py>(
        &self,
        py: Python<'py>,
        indices: Vec<usize>,
        ordinal: usize,
        raw: bool,
    ) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let entries = self.inner.entries();
        let wanted = self.wanted(&indices)?;
        // Pinned staging sized to the request: a lazy load of one small
        // tensor pins one small buffer, not the full 4 × 64 MiB ring.
        let largest = indices
            .iter()
            .map(|&i| entries[i].deserialized_length().unwrap_or(u64::MAX))
            .max()
            .unwrap_or(0);
        let options = tensorizer::cuda::CudaOptions {
            staging_size: Some(
                usize::try_from(largest)
                    .unwrap_or(usize::MAX)
                    .clamp(1 << 20, 64 << 20),
            ),
            staging_buffers: indices.len().clamp(1, 4),
            ..Default::default()
        };
        let model = py
            .detach(|| {
                self.inner
                    .to_cuda_filtered(ordinal, &options, |e| wanted.contains(e.name.path()))
            })
            .map(std::sync::Arc::new)
            .map_err(py_err)?;
        indices
            .iter()
            .map(|&i| {
                let name = entries[i].name.path();
                let t = model
                    .get(name.clone())
                    .ok_or_else(|| PyValueError::new_err(format!("tensor {name} not loaded")))?;
                dlpack::device_capsule(py, &model, t, raw)
            })
            .collect()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }
}
