//! Local files: positional reads checked against the size, atomic sinks.

use tensorizer_io::{
    FileLayout, IoError, LocalFile, LocalSink, RangeSource, Sink, StorageOptions, create_sink,
    open_source,
};

#[test]
fn reads_ranges_and_refuses_past_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.bin");
    std::fs::write(&path, (0..=255u8).collect::<Vec<_>>()).unwrap();
    let src = LocalFile::open(&path).unwrap();
    assert_eq!(src.len(), 256);
    assert_eq!(
        src.read_range(250, 6).unwrap(),
        vec![250, 251, 252, 253, 254, 255]
    );
    let err = src.read_range(250, 7).unwrap_err();
    assert!(matches!(err, IoError::OutOfRange { len: 256, .. }), "{err}");
    // A hostile length is refused before allocating.
    assert!(src.read_range(0, u64::MAX).is_err());
    let via_uri = open_source(
        &format!("file://{}", path.display()),
        &StorageOptions::default(),
    )
    .unwrap();
    assert_eq!(via_uri.read_range(0, 3).unwrap(), vec![0, 1, 2]);
    let err = open_source("gopher://x/y", &StorageOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown URI scheme \"gopher\""), "{err}");
}

#[test]
fn parallel_reads_fill_the_buffer_in_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.bin");
    // Over three 16 MiB request-size pieces, the last one partial.
    let data: Vec<u8> = (0..(40u32 << 20) + 12_345)
        .map(|i| (i % 251) as u8)
        .collect();
    std::fs::write(&path, &data).unwrap();
    let src = LocalFile::open(&path).unwrap();
    let mut buf = vec![0u8; data.len() - 7];
    tensorizer_io::read_exact_parallel(&src, 7, &mut buf).unwrap();
    assert!(buf == data[7..], "the bytes of the range, in place");
    let mut none = [];
    tensorizer_io::read_exact_parallel(&src, data.len() as u64, &mut none).unwrap();
    // Past the end: refused before any read, naming the range.
    let mut over = vec![0u8; 8];
    let err =
        tensorizer_io::read_exact_parallel(&src, data.len() as u64 - 4, &mut over).unwrap_err();
    assert!(matches!(err, IoError::OutOfRange { .. }), "{err}");
}

#[test]
fn sinks_commit_atomically_or_leave_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.bin");
    std::fs::write(&path, b"old").unwrap();
    let files = || std::fs::read_dir(dir.path()).unwrap().count();
    let sink = LocalSink::create(&path).unwrap();
    assert!(sink.is_unnamed(), "tmpfs and ext4 have O_TMPFILE");
    sink.reserve(&FileLayout::with_len(6)).unwrap();
    sink.write_all_at(3, b"def").unwrap();
    sink.write_all_at(0, b"abc").unwrap();
    assert_eq!(files(), 1, "the new bytes have no name before the commit");
    drop(sink); // abandoned: nothing changes, no temp file stays
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
    assert_eq!(files(), 1);

    let sink = create_sink(path.to_str().unwrap(), &StorageOptions::default()).unwrap();
    sink.write_all_at(4, b"!").unwrap();
    sink.write_all_at(0, b"new").unwrap();
    sink.commit().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"new\0!");
    assert_eq!(files(), 1, "a commit leaves nothing beside the file");
}

/// Replacing a file keeps its mode (a 0640 file stayed 0640 only by luck
/// before); a new file gets what open(2) would give; a name the file
/// system refuses fails before anything is written.
#[test]
fn modes_are_kept_and_long_names_fail_first() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let write = |p: &std::path::Path, data: &[u8]| {
        let sink = LocalSink::create(p).unwrap();
        sink.write_all_at(0, data).unwrap();
        Box::new(sink).commit().unwrap();
    };
    let kept = dir.path().join("kept");
    std::fs::write(&kept, b"old").unwrap();
    std::fs::set_permissions(&kept, std::fs::Permissions::from_mode(0o640)).unwrap();
    write(&kept, b"new");
    assert_eq!(mode(&kept), 0o640);
    assert_eq!(std::fs::read(&kept).unwrap(), b"new");

    let fresh = dir.path().join("fresh");
    write(&fresh, b"x");
    let reference = dir.path().join("reference");
    std::fs::write(&reference, b"x").unwrap();
    assert_eq!(mode(&fresh), mode(&reference), "as open(2) creates files");

    let long = dir.path().join("n".repeat(256));
    let err = LocalSink::create(&long).map(drop).unwrap_err().to_string();
    assert!(err.contains("naming the file"), "{err}");
    let just_fits = dir.path().join("n".repeat(255));
    write(&just_fits, b"fits");
    assert_eq!(std::fs::read(&just_fits).unwrap(), b"fits");
}

/// Of many writers racing to create one key file, exactly one wins, with
/// mode 0600; the rest fail naming it, and nothing is replaced.
#[test]
fn exclusive_creation_has_one_winner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("model.key");
    let uri = key.to_string_lossy().into_owned();
    let results: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16u8)
            .map(|i| {
                let uri = &uri;
                s.spawn(move || {
                    tensorizer_io::create_new(uri, &[i; 32], 0o600, &StorageOptions::default())
                        .is_ok()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.iter().filter(|&&ok| ok).count(), 1, "{results:?}");
    let winner = results.iter().position(|&ok| ok).unwrap() as u8;
    assert_eq!(std::fs::read(&key).unwrap(), [winner; 32]);
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let err = tensorizer_io::create_new(&uri, &[0; 32], 0o600, &StorageOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("already exists"), "{err}");
    // No temporary files left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}
