//! Local files: positional reads from any number of threads, and a sink
//! that writes a temp file next to the destination and renames it into
//! place only once complete and flushed.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::FileLayout;
use crate::error::{IoError, Result};
use crate::{RangeSource, ReadHints, Sink};

/// A local file read with `pread`.
#[derive(Debug)]
pub struct LocalFile {
    uri: String,
    file: File,
    len: u64,
}

impl LocalFile {
    /// Opens `path` for reading.
    pub fn open(path: &Path) -> Result<Self> {
        let uri = path.display().to_string();
        let err = |action: &str| {
            let (uri, action) = (uri.clone(), action.to_owned());
            move |source| IoError::Local {
                uri,
                action,
                source,
            }
        };
        let file = File::open(path).map_err(err("opening"))?;
        let len = file.metadata().map_err(err("reading the file size"))?.len();
        Ok(Self { uri, file, len })
    }
}

impl RangeSource for LocalFile {
    fn uri(&self) -> &str {
        &self.uri
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(offset, buf.len())?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| IoError::Local {
                uri: self.uri.clone(),
                action: format!("reading bytes {offset}..{}", offset + buf.len() as u64),
                source,
            })
    }

    fn hints(&self) -> ReadHints {
        ReadHints {
            request_size: 16 << 20,
            concurrency: std::thread::available_parallelism()
                .map_or(4, |n| n.get())
                .clamp(2, 16),
            // Fits in a core's L2 cache: 16 MiB pieces read in 1 MiB reads,
            // each hashed at once, loaded 12.5 GiB/s against 11.6 for 16 MiB
            // reads hashed afterwards (A/B, 2 cores, warm cache; equal when
            // the VM's fresh memory is cheap, at ~14.4).
            block_size: 1 << 20,
        }
    }
}

/// Writes a file atomically: a temp file in the destination's directory,
/// then fsync, rename and directory fsync on [`Sink::commit`]. Dropped or
/// aborted, the temp file is removed and the destination is untouched.
#[derive(Debug)]
pub struct LocalSink {
    uri: String,
    dest: PathBuf,
    temp: tempfile::NamedTempFile,
}

impl LocalSink {
    /// Starts writing `dest`.
    pub fn create(dest: &Path) -> Result<Self> {
        let uri = dest.display().to_string();
        let dir = match dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .tempfile_in(&dir)
            .map_err(|source| IoError::Local {
                uri: uri.clone(),
                action: format!("creating a temporary file in {}", dir.display()),
                source,
            })?;
        Ok(Self {
            uri,
            dest: dest.to_path_buf(),
            temp,
        })
    }

    /// Where the bytes go before the rename.
    pub fn temp_path(&self) -> &Path {
        self.temp.path()
    }

    fn err(&self, action: &str) -> impl FnOnce(std::io::Error) -> IoError {
        let (uri, action) = (self.uri.clone(), action.to_owned());
        move |source| IoError::Local {
            uri,
            action,
            source,
        }
    }
}

impl Sink for LocalSink {
    fn uri(&self) -> &str {
        &self.uri
    }

    fn reserve(&self, layout: &FileLayout) -> Result<()> {
        self.temp
            .as_file()
            .set_len(layout.len)
            .map_err(self.err("sizing the file"))
    }

    fn write_all_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.temp
            .as_file()
            .write_all_at(data, offset)
            .map_err(self.err(&format!(
                "writing bytes {offset}..{}",
                offset + data.len() as u64
            )))
    }

    fn commit(self: Box<Self>) -> Result<()> {
        self.temp
            .as_file()
            .sync_all()
            .map_err(self.err("flushing to disk"))?;
        let Self { uri, dest, temp } = *self;
        temp.persist(&dest).map_err(|e| IoError::Local {
            uri: uri.clone(),
            action: "renaming into place".into(),
            source: e.error,
        })?;
        if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Make the rename itself durable.
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| IoError::Local {
                    uri,
                    action: "flushing the directory".into(),
                    source,
                })?;
        }
        Ok(())
    }
}
