//! Writing a file so that readers see either the old file or the complete new
//! one: a temp file in the same directory, fsync, rename, fsync the directory.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Result, io_error};

/// A file being written next to its destination; dropped without
/// [`AtomicFile::commit`], it is deleted and the destination is untouched.
#[derive(Debug)]
pub(crate) struct AtomicFile {
    temp: tempfile::NamedTempFile,
    dest: PathBuf,
}

impl AtomicFile {
    pub(crate) fn create(dest: &Path) -> Result<Self> {
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
            .map_err(io_error(
                dest,
                format!("creating a temporary file in {}", dir.display()),
            ))?;
        Ok(Self {
            temp,
            dest: dest.to_path_buf(),
        })
    }

    pub(crate) fn file(&self) -> &File {
        self.temp.as_file()
    }

    pub(crate) fn path(&self) -> &Path {
        self.temp.path()
    }

    pub(crate) fn dest(&self) -> &Path {
        &self.dest
    }

    /// Flushes to disk and renames over the destination.
    pub(crate) fn commit(self) -> Result<()> {
        let dest = self.dest;
        self.temp
            .as_file()
            .sync_all()
            .map_err(io_error(&dest, "flushing to disk"))?;
        self.temp
            .persist(&dest)
            .map_err(|e| io_error(&dest, "renaming into place")(e.error))?;
        if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Make the rename itself durable.
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_error(dir, "flushing the directory"))?;
        }
        Ok(())
    }
}
