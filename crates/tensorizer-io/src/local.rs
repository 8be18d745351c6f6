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
        Self::from_file(file, path)
    }

    /// Reads an already open `file` (one opened under rules of the
    /// caller's, such as beneath a model directory), shown as `path`.
    pub fn from_file(file: File, path: &Path) -> Result<Self> {
        let uri = path.display().to_string();
        let len = file
            .metadata()
            .map_err(|source| IoError::Local {
                uri: uri.clone(),
                action: "reading the file size".into(),
                source,
            })?
            .len();
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
            // Four readers a core, not one: the scheduler shares a busy
            // CPU by runnable thread, so with a pod's neighbours keeping
            // the cores busy one reader a core got a third of the machine
            // (2 cores, 2 busy neighbours: 1.0 GiB/s with 2 readers, 1.9
            // with 8); a reader waiting in pread costs nothing when the
            // machine is quiet (3.4 with either).
            concurrency: std::thread::available_parallelism()
                .map_or(4, |n| n.get())
                .saturating_mul(4)
                .clamp(8, 32),
            // Fits in a core's L2 cache: 16 MiB pieces read in 1 MiB reads,
            // each hashed at once, loaded 12.5 GiB/s against 11.6 for 16 MiB
            // reads hashed afterwards (A/B, 2 cores, warm cache; equal when
            // the VM's fresh memory is cheap, at ~14.4).
            block_size: 1 << 20,
        }
    }
}

/// Writes a file atomically: the bytes go to an unnamed file in the
/// destination's directory (`O_TMPFILE`), which [`Sink::commit`] flushes,
/// links into the directory and renames over the destination, then flushes
/// the directory. Until the commit the new bytes have no name, so a failed,
/// dropped or killed (even `SIGKILL`ed) write leaves nothing behind and the
/// destination untouched.
///
/// Where the filesystem has no `O_TMPFILE` (some network and FUSE
/// filesystems), a hidden named temporary `.NAME.XXXXXX.tmp` is used
/// instead: removed on error and on drop, but left behind if the process is
/// killed.
#[derive(Debug)]
pub struct LocalSink {
    uri: String,
    dest: PathBuf,
    staging: Staging,
}

/// Where the bytes wait for the commit.
#[derive(Debug)]
enum Staging {
    /// An `O_TMPFILE` file: no name until linked in at commit.
    Unnamed(File),
    /// A named temporary file, removed when dropped.
    Named(tempfile::NamedTempFile),
}

impl Staging {
    fn file(&self) -> &File {
        match self {
            Staging::Unnamed(f) => f,
            Staging::Named(t) => t.as_file(),
        }
    }
}

impl LocalSink {
    /// Starts writing `dest`, which gets the mode of the file it replaces
    /// (else 0666 less the umask, as `open(2)` gives).
    pub fn create(dest: &Path) -> Result<Self> {
        Self::create_with_mode(dest, mode_for(dest))
    }

    /// Starts writing `dest` with permissions `mode` (0600 for a key).
    /// The staged file is created with `mode` and never holds a wider one,
    /// not even for a moment: on filesystems without `O_TMPFILE` it has a
    /// name others could open while it is written.
    pub fn create_with_mode(dest: &Path, mode: u32) -> Result<Self> {
        Self::stage(dest, mode, true)
    }

    fn stage(dest: &Path, mode: u32, try_unnamed: bool) -> Result<Self> {
        let uri = dest.display().to_string();
        // A name the filesystem will refuse fails now, not after the write.
        if dest
            .file_name()
            .is_some_and(|n| n.as_encoded_bytes().len() > NAME_MAX)
        {
            return Err(IoError::Local {
                uri,
                action: "naming the file".into(),
                source: std::io::Error::from_raw_os_error(libc::ENAMETOOLONG),
            });
        }
        let dir = parent_dir(dest);
        let unnamed = if try_unnamed {
            open_unnamed(&dir, mode)
        } else {
            Err(std::io::ErrorKind::Unsupported.into())
        };
        let staging = match unnamed {
            Ok(file) => Staging::Unnamed(file),
            Err(e) if unnamed_unsupported(&e) => {
                tracing::debug!(dir = %dir.display(), "no O_TMPFILE here ({e}); using a named temporary file");
                use std::os::unix::fs::PermissionsExt;
                Staging::Named(
                    tempfile::Builder::new()
                        .prefix(&temp_prefix(dest))
                        .suffix(".tmp")
                        // Created with the final mode (less the umask):
                        // the named file is never wider than the result.
                        .permissions(std::fs::Permissions::from_mode(mode))
                        .tempfile_in(&dir)
                        .map_err(|source| IoError::Local {
                            uri: uri.clone(),
                            action: format!("creating a temporary file in {}", dir.display()),
                            source,
                        })?,
                )
            }
            Err(source) => {
                return Err(IoError::Local {
                    uri,
                    action: format!("creating a temporary file in {} (O_TMPFILE)", dir.display()),
                    source,
                });
            }
        };
        {
            // Exactly `mode`, whatever the umask took away at creation.
            use std::os::unix::fs::PermissionsExt;
            staging
                .file()
                .set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(|source| IoError::Local {
                    uri: uri.clone(),
                    action: "setting the new file's mode".into(),
                    source,
                })?;
        }
        Ok(Self {
            uri,
            dest: dest.to_path_buf(),
            staging,
        })
    }

    /// The file the bytes are written to before the commit (unnamed, in
    /// the destination's directory, where the filesystem allows).
    pub fn file(&self) -> &File {
        self.staging.file()
    }

    /// True when the bytes wait in an unnamed (`O_TMPFILE`) file, so that
    /// a killed process leaves nothing behind.
    pub fn is_unnamed(&self) -> bool {
        matches!(self.staging, Staging::Unnamed(_))
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

fn parent_dir(dest: &Path) -> PathBuf {
    match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `.NAME.`: temporary names are hidden and say what they were for.
fn temp_prefix(dest: &Path) -> String {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Short enough that prefix + random suffix + ".tmp" fits NAME_MAX
    // whatever the destination's name.
    let mut cut = name.len().min(180);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(".{}.", &name[..cut])
}

/// Longest file name most filesystems take (NAME_MAX).
const NAME_MAX: usize = 255;

/// The mode a new file gets: an existing destination's (so replacing a
/// 0640 file keeps it 0640), else what `open(2)` gives, 0666 less the
/// umask. One rule for the unnamed and the named temporary file.
fn mode_for(dest: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(dest) {
        return meta.permissions().mode() & 0o7777;
    }
    0o666 & !umask()
}

/// The process's umask, read without changing it (`/proc/self/status`;
/// 022 where that is unavailable).
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// An unnamed regular file in `dir`, created with `mode` less the umask.
#[cfg(target_os = "linux")]
fn open_unnamed(dir: &Path, mode: u32) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(mode)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
}

#[cfg(not(target_os = "linux"))]
fn open_unnamed(_: &Path, _: u32) -> std::io::Result<File> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// The errors with which a kernel or filesystem refuses `O_TMPFILE`
/// (open(2): EOPNOTSUPP, EISDIR on kernels without it, EINVAL).
fn unnamed_unsupported(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::Unsupported
        || matches!(
            e.raw_os_error(),
            Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL | libc::ENOSYS)
        )
}

/// Gives the unnamed file `file` the name `at` (which must not exist):
/// through `/proc/self/fd` (no privilege needed), else `AT_EMPTY_PATH`
/// (needs `CAP_DAC_READ_SEARCH`).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn link_unnamed(file: &File, at: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let fd = file.as_raw_fd();
    let to = CString::new(at.as_os_str().as_bytes())?;
    let proc_path = CString::new(format!("/proc/self/fd/{fd}"))?;
    // SAFETY: both paths are valid NUL-terminated strings for the call.
    let linked = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            proc_path.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if linked == 0 {
        return Ok(());
    }
    let first = std::io::Error::last_os_error();
    if first.raw_os_error() == Some(libc::EEXIST) {
        return Err(first);
    }
    // SAFETY: `fd` is open for the call; the empty path is NUL-terminated.
    let linked = unsafe {
        libc::linkat(
            fd,
            c"".as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    if linked == 0 { Ok(()) } else { Err(first) }
}

#[cfg(not(target_os = "linux"))]
fn link_unnamed(_: &File, _: &Path) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// Links `file` under a fresh hidden name beside `dest` and renames it over
/// `dest`: `linkat` cannot replace a file, `rename` can, atomically. Only a
/// crash between the two calls (microseconds) can leave the hidden name.
fn link_into_place(file: &File, dest: &Path) -> std::io::Result<()> {
    let dir = parent_dir(dest);
    let prefix = temp_prefix(dest);
    for attempt in 0u32.. {
        let mut random = [0u8; 6];
        getrandom::fill(&mut random).map_err(std::io::Error::other)?;
        let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let temp = dir.join(format!("{prefix}{suffix}.tmp"));
        match link_unnamed(file, &temp) {
            Ok(()) => {
                return std::fs::rename(&temp, dest).inspect_err(|_| {
                    let _ = std::fs::remove_file(&temp);
                });
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && attempt < 16 => continue,
            Err(e) => return Err(e),
        }
    }
    unreachable!("the loop returns")
}

impl LocalSink {
    /// Commits under the name only if nothing has it yet: the bytes are
    /// flushed, then linked in with `linkat` (or `link` for a named
    /// temporary file), which fails with `EEXIST` instead of replacing, so
    /// of two writers racing for one name exactly one wins. For files that
    /// must never be replaced, like keys.
    pub fn commit_new(self) -> Result<()> {
        self.file()
            .sync_all()
            .map_err(self.err("flushing to disk"))?;
        let Self { uri, dest, staging } = self;
        let linked = match staging {
            Staging::Unnamed(file) => link_unnamed(&file, &dest),
            Staging::Named(temp) => temp.persist_noclobber(&dest).map(drop).map_err(|e| e.error),
        };
        linked.map_err(|source| IoError::Local {
            uri: uri.clone(),
            action: if source.kind() == std::io::ErrorKind::AlreadyExists {
                "creating (it already exists and is never replaced)".into()
            } else {
                "linking into place".into()
            },
            source,
        })?;
        sync_dir(uri, &dest)
    }
}

/// Makes a new name in `dest`'s directory durable.
fn sync_dir(uri: String, dest: &Path) -> Result<()> {
    File::open(parent_dir(dest))
        .and_then(|d| d.sync_all())
        .map_err(|source| IoError::Local {
            uri,
            action: "flushing the directory".into(),
            source,
        })
}

impl Sink for LocalSink {
    fn uri(&self) -> &str {
        &self.uri
    }

    fn reserve(&self, layout: &FileLayout) -> Result<()> {
        self.file()
            .set_len(layout.len)
            .map_err(self.err("sizing the file"))
    }

    fn write_all_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.file()
            .write_all_at(data, offset)
            .map_err(self.err(&format!(
                "writing bytes {offset}..{}",
                offset + data.len() as u64
            )))
    }

    fn commit(self: Box<Self>) -> Result<()> {
        self.file()
            .sync_all()
            .map_err(self.err("flushing to disk"))?;
        let Self { uri, dest, staging } = *self;
        let renamed = match staging {
            Staging::Unnamed(file) => link_into_place(&file, &dest),
            Staging::Named(temp) => temp.persist(&dest).map(drop).map_err(|e| e.error),
        };
        renamed.map_err(|source| IoError::Local {
            uri: uri.clone(),
            action: "renaming into place".into(),
            source,
        })?;
        // Make the rename itself durable.
        sync_dir(uri, &dest)
    }
}

/// Makes `to` a hard link to `from` (a copy where the two lie on different
/// file systems), replacing `to` atomically: the link is made under a
/// temporary name beside it, then renamed over.
pub(crate) fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    let uri = to.display().to_string();
    let local = |action: String| {
        let uri = uri.clone();
        move |source| IoError::Local {
            uri,
            action,
            source,
        }
    };
    let dir = parent_dir(to);
    let staged = tempfile::Builder::new()
        .prefix(&temp_prefix(to))
        .suffix(".tmp")
        .make_in(&dir, |p| match std::fs::hard_link(from, p) {
            Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
                std::fs::copy(from, p).map(|_| ())
            }
            other => other,
        })
        .map_err(local(format!(
            "linking or copying {} to a temporary name in {}",
            from.display(),
            dir.display()
        )))?;
    staged
        .persist(to)
        .map_err(|e| local(format!("renaming {} into place", e.file.path().display()))(e.error))?;
    Ok(())
}

/// The regular files under `dir` (below it too with `recursive`), named
/// relative to it, with their sizes; links and special files are left out.
pub(crate) fn list(dir: &Path, recursive: bool) -> Result<Vec<(String, u64)>> {
    let err = |dir: &Path| {
        let uri = dir.display().to_string();
        move |source| IoError::Local {
            uri,
            action: "listing the directory".into(),
            source,
        }
    };
    let mut out = Vec::new();
    let mut pending = vec![(dir.to_path_buf(), String::new())];
    while let Some((at, prefix)) = pending.pop() {
        for entry in std::fs::read_dir(&at).map_err(err(&at))? {
            let entry = entry.map_err(err(&at))?;
            let kind = entry.file_type().map_err(err(&at))?;
            let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
            if kind.is_file() {
                out.push((name, entry.metadata().map_err(err(&at))?.len()));
            } else if kind.is_dir() && recursive {
                pending.push((entry.path(), format!("{name}/")));
            }
            if out.len() > crate::MAX_LISTED {
                return Err(IoError::Protocol {
                    uri: dir.display().to_string(),
                    message: format!("holds more than {} files", crate::MAX_LISTED),
                });
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_named_fallback_also_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("m.tensors");
        let sink = LocalSink {
            uri: dest.display().to_string(),
            dest: dest.clone(),
            staging: Staging::Named(
                tempfile::Builder::new()
                    .prefix(&temp_prefix(&dest))
                    .tempfile_in(dir.path())
                    .unwrap(),
            ),
        };
        sink.write_all_at(0, b"x").unwrap();
        drop(sink);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// The fallback used where `O_TMPFILE` is unavailable (NFS, FUSE): the
    /// staged file has a name, so its mode at every step must be the final
    /// one or narrower. Seen here right after creation, after the write,
    /// and on the committed file; for a key (0600) and a model (0644).
    #[test]
    fn a_named_staged_file_is_never_wider_than_its_final_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let staged_modes = || -> Vec<u32> {
            std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
                .map(|e| e.metadata().unwrap().permissions().mode() & 0o7777)
                .collect()
        };
        for (name, mode) in [("new.key", 0o600), ("m.tensors", 0o644)] {
            let dest = dir.path().join(name);
            let sink = LocalSink::stage(&dest, mode, false).unwrap();
            assert!(!sink.is_unnamed());
            let seen = staged_modes();
            assert_eq!(seen.len(), 1, "one named staging file");
            assert!(
                seen[0] & !mode == 0,
                "created with {:o} for {mode:o}",
                seen[0]
            );
            assert_eq!(seen[0], mode, "exactly the final mode once created");
            sink.write_all_at(0, b"secret").unwrap();
            assert_eq!(staged_modes(), [mode]);
            sink.commit_new().unwrap();
            let meta = std::fs::metadata(&dest).unwrap();
            assert_eq!(meta.permissions().mode() & 0o7777, mode);
            assert!(staged_modes().is_empty(), "no debris");
        }
        // A key replacing a world-readable file is still 0600 throughout.
        let dest = dir.path().join("m.tensors");
        let sink = LocalSink::stage(&dest, 0o600, false).unwrap();
        assert_eq!(staged_modes(), [0o600]);
        Box::new(sink).commit().unwrap();
        assert_eq!(
            std::fs::metadata(&dest).unwrap().permissions().mode() & 0o7777,
            0o600
        );
    }
}
