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
