//! What a model directory is trusted with: its own files. Every file of a
//! checkpoint (config, index, weights, tokenizer and other artifacts, a
//! LoRA adapter) is opened here:
//!
//! - a regular file in the directory, opened with `O_NOFOLLOW` (swapped
//!   for a link after the check, the open fails);
//! - a symbolic link only when it resolves inside the directory, or, for a
//!   Hugging Face cache snapshot (`models--ORG--NAME/snapshots/REV/`), into
//!   that repository's `blobs/`;
//! - anything else is refused, naming the path: a link out of the
//!   directory (`tokenizer.json -> ~/.aws/credentials` would otherwise be
//!   copied into the output, or uploaded), a device, a FIFO, procfs.
//!
//! The checkpoint reader ([`crate::Checkpoint`]) and `tensorizer-vllm`'s
//! serializer open model directories only through these functions.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

fn refused(path: &Path, why: impl Into<String>) -> Error {
    Error::Refused {
        path: path.to_path_buf(),
        reason: why.into(),
    }
}

/// The Hugging Face cache's `blobs/` of the repository whose snapshot
/// `dir` (canonical) is.
pub fn hf_blobs(dir: &Path) -> Option<PathBuf> {
    let snapshots = dir.parent()?;
    (snapshots.file_name()? == "snapshots").then(|| snapshots.parent().map(|r| r.join("blobs")))?
}

/// Opens `dir/name` for reading if it belongs to the model (see the module
/// docs); `what` says what it is for messages.
///
/// Where the kernel has `openat2(2)`, the file is opened beneath the model
/// directory (or, for a cache snapshot, beneath its repository) in one
/// call with `RESOLVE_BENEATH`: no check-then-open window in which a
/// concurrent writer of the directory could swap a link. Elsewhere (kernels
/// before 5.6, sandboxes that filter the call) links are resolved and
/// checked first, then the target is opened with `O_NOFOLLOW`.
pub fn open(dir: &Path, name: &str, what: &str) -> Result<File> {
    let path = dir.join(name);
    let io = |action: &str| crate::error::io_error(&path, format!("{action} {what}"));
    let file = match open_beneath(dir, name) {
        Beneath::Opened(file) => file,
        // Out of bounds: say where the link goes (resolved for the message
        // only; the open itself was refused by the kernel).
        Beneath::Escapes => {
            return Err(match checked_target(dir, name, what) {
                Err(e) => e,
                Ok(_) => refused(&path, format!("{what} leads out of the model directory")),
            });
        }
        Beneath::Failed(e) => return Err(io("opening")(e)),
        Beneath::Unavailable => {
            let target = checked_target(dir, name, what)?;
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(&target)
                .map_err(io("opening"))?
        }
    };
    let kind = file.metadata().map_err(io("inspecting"))?.file_type();
    if !kind.is_file() {
        return Err(refused(
            &path,
            format!("{what} is not a regular file (a device, FIFO, socket or directory)"),
        ));
    }
    Ok(file)
}

/// What `openat2` made of an open beneath the model directory.
enum Beneath {
    Opened(File),
    /// A link (or `..`) leads out of the allowed tree.
    Escapes,
    Failed(std::io::Error),
    /// No `openat2` here: check, then open.
    Unavailable,
}

/// `dir/name` opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`
/// from the model directory, or from the repository of a Hugging Face
/// snapshot (whose files link to `../../blobs/`).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn open_beneath(dir: &Path, name: &str) -> Beneath {
    use std::ffi::CString;
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let Ok(home) = std::fs::canonicalize(dir) else {
        return Beneath::Unavailable;
    };
    // The root the open may not leave, and the name below it.
    let (root, below) = match hf_blobs(&home).and_then(|blobs| {
        let repo = blobs.parent()?.to_path_buf();
        let below = home.strip_prefix(&repo).ok()?.join(name);
        Some((repo, below))
    }) {
        Some(found) => found,
        None => (home, PathBuf::from(name)),
    };
    let (Ok(root_c), Ok(below_c)) = (
        CString::new(root.as_os_str().as_bytes()),
        CString::new(below.as_os_str().as_bytes()),
    ) else {
        return Beneath::Failed(std::io::ErrorKind::InvalidInput.into());
    };
    // SAFETY: a valid NUL-terminated path; the descriptor is closed below.
    let root_fd = unsafe {
        libc::open(
            root_c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if root_fd < 0 {
        return Beneath::Failed(std::io::Error::last_os_error());
    }
    // SAFETY: an all-zero open_how is valid (no flags); fields set below.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid descriptor, path and struct for the call's duration.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root_fd,
            below_c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: `root_fd` is ours and not used after this.
    unsafe { libc::close(root_fd) };
    if fd >= 0 {
        // SAFETY: a new descriptor that nothing else owns.
        return Beneath::Opened(unsafe { File::from_raw_fd(fd as i32) });
    }
    match err.raw_os_error() {
        Some(libc::EXDEV | libc::ELOOP) => Beneath::Escapes,
        // No such call, or filtered by a sandbox.
        Some(libc::ENOSYS | libc::EPERM | libc::EINVAL) => Beneath::Unavailable,
        _ => Beneath::Failed(err),
    }
}

#[cfg(not(target_os = "linux"))]
fn open_beneath(_: &Path, _: &str) -> Beneath {
    Beneath::Unavailable
}

/// The file `dir/name` stands for, checked: itself, or the target of a
/// link that stays in the directory (or a snapshot's `blobs/`).
fn checked_target(dir: &Path, name: &str, what: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    let io = |action: &str| crate::error::io_error(&path, format!("{action} {what}"));
    let meta = std::fs::symlink_metadata(&path).map_err(io("reading"))?;
    if !meta.file_type().is_symlink() {
        return Ok(path.clone());
    }
    let target = std::fs::canonicalize(&path).map_err(io("resolving"))?;
    let home = std::fs::canonicalize(dir).map_err(io("resolving the directory of"))?;
    let inside =
        target.starts_with(&home) || hf_blobs(&home).is_some_and(|blobs| target.starts_with(blobs));
    if !inside {
        return Err(refused(
            &path,
            format!(
                "{what} is a link to {}, outside the model directory (only links within it, \
                 or a Hugging Face snapshot's into its blobs/, are followed)",
                target.display()
            ),
        ));
    }
    Ok(target)
}

/// The bytes of `dir/name` (see [`open`]), at most `max` of them.
pub fn read(dir: &Path, name: &str, what: &str, max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let path = dir.join(name);
    let mut data = Vec::new();
    open(dir, name, what)?
        .take(max + 1)
        .read_to_end(&mut data)
        .map_err(crate::error::io_error(&path, format!("reading {what}")))?;
    if data.len() as u64 > max {
        return Err(refused(&path, format!("{what} is over {max} bytes")));
    }
    Ok(data)
}

/// The names of the files of `dir` (regular files and links, which
/// [`open`] judges), sorted; any other entry but directories is refused.
pub fn list_files(dir: &Path) -> Result<Vec<String>> {
    let io = |action| crate::error::io_error(dir, action);
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io("listing the model directory"))? {
        let entry = entry.map_err(io("listing the model directory"))?;
        let kind = entry
            .file_type()
            .map_err(io("listing the model directory"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if kind.is_file() || kind.is_symlink() {
            names.push(name);
        } else if !kind.is_dir() {
            return Err(refused(
                &entry.path(),
                "not a regular file (a device, FIFO or socket) in the model directory",
            ));
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn links_out_of_the_directory_and_special_files_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let model = root.path().join("model");
        std::fs::create_dir(&model).unwrap();
        std::fs::write(root.path().join("credentials"), "aws_secret_access_key = S").unwrap();
        std::fs::write(model.join("config.json"), "{}").unwrap();
        std::fs::create_dir(model.join("sub")).unwrap();
        std::fs::write(model.join("sub/real.json"), "1").unwrap();
        symlink(
            root.path().join("credentials"),
            model.join("tokenizer.json"),
        )
        .unwrap();
        symlink("/proc/self/environ", model.join("special_tokens_map.json")).unwrap();
        symlink("sub/real.json", model.join("inside.json")).unwrap();
        assert_eq!(
            read(&model, "config.json", "the config", 100).unwrap(),
            b"{}"
        );
        assert_eq!(read(&model, "inside.json", "a file", 100).unwrap(), b"1");
        for (name, why) in [
            ("tokenizer.json", "outside the model directory"),
            ("special_tokens_map.json", "outside the model directory"),
        ] {
            let err = open(&model, name, "a model file").unwrap_err().to_string();
            assert!(err.contains(why) && err.contains(name), "{err}");
        }
        // A FIFO is listed as refused, and never opened (it would block).
        let fifo = model.join("pipe");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo on a path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = list_files(&model).unwrap_err().to_string();
        assert!(
            err.contains("pipe") && err.contains("not a regular file"),
            "{err}"
        );
        let err = open(&model, "pipe", "a model file")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a regular file"), "{err}");
        assert!(
            read(&model, "config.json", "the config", 1).is_err(),
            "size bound"
        );
    }

    /// On this kernel the open is one `openat2` beneath the directory: a
    /// link swapped in between a check and an open has no window. Where
    /// the call is missing the checked fallback runs (the test above).
    #[test]
    fn files_are_opened_beneath_the_directory_in_one_call() {
        let root = tempfile::tempdir().unwrap();
        let model = root.path().join("model");
        std::fs::create_dir(&model).unwrap();
        std::fs::write(model.join("config.json"), "{}").unwrap();
        std::fs::write(root.path().join("secret"), "S").unwrap();
        symlink("../secret", model.join("escape.json")).unwrap();
        match open_beneath(&model, "config.json") {
            Beneath::Opened(_) => {}
            Beneath::Unavailable => {
                eprintln!("openat2 is unavailable here: the checked fallback is used");
                return;
            }
            _ => panic!("a plain file must open"),
        }
        assert!(matches!(
            open_beneath(&model, "escape.json"),
            Beneath::Escapes
        ));
        assert!(matches!(
            open_beneath(&model, "../secret"),
            Beneath::Escapes
        ));
        let err = open(&model, "escape.json", "a model file")
            .unwrap_err()
            .to_string();
        assert!(err.contains("outside the model directory"), "{err}");
    }

    #[test]
    fn hugging_face_snapshot_links_into_blobs_are_followed() {
        let root = tempfile::tempdir().unwrap();
        let repo = root.path().join("models--acme--tiny");
        let snapshot = repo.join("snapshots").join("a".repeat(40));
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        std::fs::write(repo.join("blobs/0123abcd"), "{\"vocab\": 1}").unwrap();
        symlink("../../blobs/0123abcd", snapshot.join("tokenizer.json")).unwrap();
        assert_eq!(
            read(&snapshot, "tokenizer.json", "the tokenizer", 100).unwrap(),
            b"{\"vocab\": 1}"
        );
        // Another repository's blobs are not this model's.
        std::fs::create_dir_all(root.path().join("models--other--x/blobs")).unwrap();
        std::fs::write(root.path().join("models--other--x/blobs/ff"), "x").unwrap();
        symlink(
            "../../../models--other--x/blobs/ff",
            snapshot.join("other.json"),
        )
        .unwrap();
        assert!(open(&snapshot, "other.json", "a file").is_err());
    }
}
