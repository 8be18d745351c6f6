//! `Source` and `Sink`: what a `stream_io.open_stream` stream reads from
//! and writes into. Reads fetch the ranges asked for (never the whole
//! object); writes go into the store's atomic sink as they come and become
//! visible at `commit`, or never (`abort`, or the stream dropped).

use std::sync::{Arc, RwLock};

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use tensorizer::io::RangeSource;

use crate::sources::SharedSink;
use crate::{Storage, io_err, options};

/// An object opened for reading by ranges.
#[pyclass(module = "tensorizer_rs._native", frozen)]
pub struct Source {
    inner: Box<dyn RangeSource>,
}

#[pymethods]
impl Source {
    #[new]
    #[pyo3(signature = (uri, *, storage=None))]
    fn new(py: Python<'_>, uri: String, storage: Option<&Bound<'_, Storage>>) -> PyResult<Self> {
        let options = options(storage);
        py.detach(|| tensorizer::io::open_source(&uri, &options))
            .map(|inner| Self { inner })
            .map_err(io_err)
    }

    /// The object's size in bytes.
    fn __len__(&self) -> usize {
        usize::try_from(self.inner.len()).unwrap_or(usize::MAX)
    }

    #[getter]
    fn size(&self) -> u64 {
        self.inner.len()
    }

    /// The request size the store reads best in (a distributed load
    /// aligns its ranks' shares to it).
    #[getter]
    fn request_size(&self) -> usize {
        self.inner.hints().request_size
    }

    /// Fills `buffer` (`t.__dlpack__()` of a contiguous 1-D uint8 CPU
    /// tensor) with the bytes from `offset`, in parallel ranged reads; the
    /// range must lie inside the object.
    fn read_into(&self, py: Python<'_>, offset: u64, buffer: &Bound<'_, PyAny>) -> PyResult<()> {
        read_into(py, self.inner.as_ref(), offset, buffer)
    }

    /// Up to `n` bytes from `offset` (fewer at the end of the object).
    fn read<'py>(&self, py: Python<'py>, offset: u64, n: u64) -> PyResult<Bound<'py, PyBytes>> {
        let n = n.min(self.inner.len().saturating_sub(offset));
        // The size is the server's claim: the buffer grows with the bytes
        // that arrive (`read_range`), never allocated for the claim.
        let buf = py
            .detach(|| self.inner.read_range(offset, n))
            .map_err(io_err)?;
        Ok(PyBytes::new(py, &buf))
    }
}

/// An object being written: bytes at offsets, then `commit` (atomic) or
/// `abort` (the destination keeps what it had).
#[pyclass(module = "tensorizer_rs._native", frozen)]
pub struct Sink {
    pub(crate) shared: SharedSink,
    pub(crate) uri: String,
}

#[pymethods]
impl Sink {
    #[new]
    #[pyo3(signature = (uri, *, storage=None))]
    fn new(py: Python<'_>, uri: String, storage: Option<&Bound<'_, Storage>>) -> PyResult<Self> {
        let options = options(storage);
        let sink = py
            .detach(|| tensorizer::io::create_sink(&uri, &options))
            .map_err(io_err)?;
        Ok(Self {
            shared: Arc::new(RwLock::new(Some(sink))),
            uri,
        })
    }

    /// Writes `data` at `offset`.
    fn write_at(&self, py: Python<'_>, offset: u64, data: &[u8]) -> PyResult<()> {
        py.detach(|| {
            let guard = self.shared.read().unwrap_or_else(|e| e.into_inner());
            match guard.as_ref() {
                Some(sink) => sink.write_all_at(offset, data).map_err(io_err),
                None => Err(PyOSError::new_err(format!("{}: already closed", self.uri))),
            }
        })
    }

    /// Makes everything written visible at the destination, atomically.
    fn commit(&self, py: Python<'_>) -> PyResult<()> {
        let sink = self
            .shared
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        match sink {
            Some(sink) => py.detach(|| sink.commit()).map_err(io_err),
            None => Ok(()),
        }
    }

    /// Drops what was written; the destination keeps what it had.
    fn abort(&self, py: Python<'_>) {
        let sink = self
            .shared
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        py.detach(move || drop(sink));
    }
}

/// [`Source::read_into`] for any source of the core.
pub(crate) fn read_into(
    py: Python<'_>,
    source: &dyn RangeSource,
    offset: u64,
    buffer: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let mut target = crate::dlpack::Imported::bytes(buffer)?;
    py.detach(|| tensorizer::io::read_exact_parallel(source, offset, target.as_mut_slice()))
        .map_err(io_err)
}
