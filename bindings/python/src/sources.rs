//! Sources and sinks the Python layer hands the core besides URIs: an open
//! file descriptor (a Python file object, read or written where it stands),
//! bytes in memory, and a window of a shared sink (a `stream_io` stream that
//! a serializer writes into).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, RwLock};

use tensorizer::io::{IoError, RangeSource, ReadHints, Sink};

fn local_error(uri: &str, action: &str, source: std::io::Error) -> IoError {
    IoError::Local {
        uri: uri.to_owned(),
        action: action.to_owned(),
        source,
    }
}

/// The bytes of an open file from `base` on: what a Python file object
/// positioned at `base` would read. Reads go to the descriptor itself, never
/// to the file's name, so a renamed, replaced or unnamed file is still the
/// one read.
#[derive(Debug)]
pub struct FdSource {
    file: File,
    base: u64,
    len: u64,
    uri: String,
}

impl FdSource {
    pub fn new(file: File, base: u64, uri: String) -> tensorizer::io::Result<Self> {
        let size = file
            .metadata()
            .map_err(|e| local_error(&uri, "reading the file's size", e))?
            .len();
        Ok(Self {
            file,
            base,
            len: size.saturating_sub(base),
            uri,
        })
    }
}

impl RangeSource for FdSource {
    fn uri(&self) -> &str {
        &self.uri
    }
    fn len(&self) -> u64 {
        self.len
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> tensorizer::io::Result<()> {
        self.check_range(offset, buf.len())?;
        self.file
            .read_exact_at(buf, self.base + offset)
            .map_err(|e| local_error(&self.uri, "reading", e))
    }
    fn hints(&self) -> ReadHints {
        ReadHints {
            request_size: 16 << 20,
            concurrency: 8,
            block_size: 1 << 20,
        }
    }
}

/// A file held in memory (a `BytesIO`'s contents).
#[derive(Debug)]
pub struct MemorySource {
    data: Vec<u8>,
    uri: String,
}

impl MemorySource {
    pub fn new(data: Vec<u8>, uri: String) -> Self {
        Self { data, uri }
    }
}

impl RangeSource for MemorySource {
    fn uri(&self) -> &str {
        &self.uri
    }
    fn len(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> tensorizer::io::Result<()> {
        let n = self.check_range(offset, buf.len())?;
        let at = offset as usize;
        buf.copy_from_slice(&self.data[at..at + n]);
        Ok(())
    }
}

/// Writes into an open file at `base + offset`: a Python file object
/// written where it stands. Committing leaves the bytes where they are
/// (the caller's file object owns the file).
#[derive(Debug)]
pub struct FdSink {
    file: File,
    base: u64,
    uri: String,
}

impl FdSink {
    pub fn new(file: File, base: u64, uri: String) -> Self {
        Self { file, base, uri }
    }
}

impl Sink for FdSink {
    fn uri(&self) -> &str {
        &self.uri
    }
    fn write_all_at(&self, offset: u64, data: &[u8]) -> tensorizer::io::Result<()> {
        let at = self
            .base
            .checked_add(offset)
            .ok_or_else(|| IoError::OutOfRange {
                uri: self.uri.clone(),
                start: offset,
                end: u64::MAX,
                len: u64::MAX,
            })?;
        self.file
            .write_all_at(data, at)
            .map_err(|e| local_error(&self.uri, "writing", e))
    }
    fn commit(self: Box<Self>) -> tensorizer::io::Result<()> {
        Ok(())
    }
}

/// A sink a Python stream owns: written by the stream and by serializers
/// handed the stream, committed (or dropped, leaving the destination as it
/// was) when the stream closes.
pub type SharedSink = Arc<RwLock<Option<Box<dyn Sink>>>>;

/// The part of a shared sink from `base` on, for one serializer's write.
/// Its `commit` commits nothing: the stream's close does.
#[derive(Debug)]
pub struct SinkWindow {
    inner: SharedSink,
    base: u64,
    uri: String,
}

impl SinkWindow {
    pub fn new(inner: SharedSink, base: u64, uri: String) -> Self {
        Self { inner, base, uri }
    }
}

impl Sink for SinkWindow {
    fn uri(&self) -> &str {
        &self.uri
    }
    fn write_all_at(&self, offset: u64, data: &[u8]) -> tensorizer::io::Result<()> {
        let guard = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let sink = guard.as_ref().ok_or_else(|| IoError::Protocol {
            uri: self.uri.clone(),
            message: "the stream was closed before the serializer finished".into(),
        })?;
        sink.write_all_at(self.base + offset, data)
    }
    fn commit(self: Box<Self>) -> tensorizer::io::Result<()> {
        Ok(())
    }
}
