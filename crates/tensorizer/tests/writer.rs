//! Writer behaviour beyond what Python can check: a superset of its cases,
//! refusals with clear errors, and atomic replacement.

use tensorizer::{
    Deserializer, Dtype, Error, PathComponent, Serializer, TensorData, TensorPath, TensorType,
    Verify,
};

#[test]
fn more_than_32_dimensions_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deep.tensors");
    let shape: Vec<u64> = (0..40).map(|i| if i % 13 == 0 { 2 } else { 1 }).collect();
    let data: Vec<f32> = (0..16).map(|i| i as f32).collect();
    let mut s = Serializer::new();
    s.write_state_dict([("deep", TensorData::from_slice(&shape, &data).unwrap())])
        .unwrap();
    s.write_to_file(&path).unwrap();
    let t = Deserializer::open(&path)
        .unwrap()
        .verify(Verify::All)
        .read("deep")
        .unwrap();
    assert_eq!(t.shape(), &shape[..]);
    assert_eq!(t.as_slice::<f32>().unwrap(), &data[..]);
}

#[test]
fn opaque_meta_and_empty_tensors_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.tensors");
    let mut s = Serializer::new();
    s.write_state_dict([
        ("meta_bf16", TensorData::meta(Dtype::BF16, &[3, 4])),
        (
            "empty_fp8",
            TensorData::new(Dtype::F8E4M3FN, &[0, 5], &[]).unwrap(),
        ),
        ("scalar_meta", TensorData::meta(Dtype::C128, &[])),
    ])
    .unwrap();
    let summary = s.write_to_file(&path).unwrap();
    assert_eq!(summary.version, 4);
    let d = Deserializer::open(&path).unwrap().verify(Verify::All);
    let all = d.read_all().unwrap();
    assert!(all[0].is_meta() && all[0].as_bytes() == [0u8; 24]);
    assert_eq!(all[1].as_bytes().len(), 0);
    // A 0-d meta tensor is stored as one zero element (Python's layout).
    assert_eq!(all[2].as_bytes(), [0u8; 16]);
    assert_eq!(d.metadata().header.tensor_size, 0);
}

#[test]
fn refuses_what_no_reader_could_load() {
    let one = [1.0f32];
    let t = || TensorData::from_slice(&[1], &one).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.tensors");

    let err = Serializer::new().write_to_file(&path).unwrap_err();
    assert!(matches!(err, Error::NothingToWrite { .. }), "{err}");

    let mut s = Serializer::new();
    s.write_state_dict([("", t())]).unwrap();
    assert!(
        s.write_to_file(&path)
            .unwrap_err()
            .to_string()
            .contains("empty tensor name")
    );

    let mut s = Serializer::new();
    s.write_state_dict([("a", t()), ("a", t())]).unwrap();
    assert!(
        s.write_to_file(&path)
            .unwrap_err()
            .to_string()
            .contains("the same name appears twice")
    );

    let nested = TensorPath::new(vec![
        PathComponent::Key("a".into()),
        PathComponent::Index(0),
    ])
    .unwrap();
    let mut s = Serializer::new();
    s.write_state_dict([(TensorPath::from("a"), t()), (nested, t())])
        .unwrap();
    assert!(
        s.write_to_file(&path)
            .unwrap_err()
            .to_string()
            .contains("prefix")
    );
    assert!(!path.exists(), "nothing may be left behind");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no temp files left behind"
    );

    let bad = TensorData::new(Dtype::F32, &[3], &[0u8; 8]).unwrap_err();
    assert!(
        bad.to_string()
            .contains("8 bytes do not hold shape [3] of float32"),
        "{bad}"
    );
}

#[test]
fn failed_write_leaves_the_previous_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.tensors");
    let one = [1.0f32];
    let mut s = Serializer::new();
    s.write_tensor(
        0,
        "w",
        TensorType::Param,
        TensorData::from_slice(&[1], &one).unwrap(),
    )
    .unwrap();
    s.write_to_file(&path).unwrap();
    let before = std::fs::read(&path).unwrap();

    // The destination's directory vanishes: the temp file cannot be created.
    let gone = dir.path().join("gone/model.tensors");
    let mut s = Serializer::new();
    s.write_tensor(
        0,
        "w",
        TensorType::Param,
        TensorData::from_slice(&[1], &one).unwrap(),
    )
    .unwrap();
    let err = s.write_to_file(&gone).unwrap_err();
    assert!(
        err.to_string().contains("creating a temporary file"),
        "{err}"
    );

    // The rename fails (a directory is in the way): the directory stays, and
    // the neighbour file is untouched.
    let blocked = dir.path().join("blocked");
    std::fs::create_dir(&blocked).unwrap();
    std::fs::write(blocked.join("keep"), b"x").unwrap();
    let mut s = Serializer::new();
    s.write_tensor(
        0,
        "w",
        TensorType::Param,
        TensorData::from_slice(&[1], &one).unwrap(),
    )
    .unwrap();
    let err = s.write_to_file(&blocked).unwrap_err();
    assert!(err.to_string().contains("renaming into place"), "{err}");
    assert!(blocked.join("keep").exists());
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn hostile_meta_size_is_an_error_not_an_abort() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.tensors");
    let mut s = Serializer::new();
    s.write_state_dict([("huge", TensorData::meta(Dtype::F64, &[1 << 40, 1 << 30]))])
        .unwrap();
    s.write_to_file(&path).unwrap();
    let err = Deserializer::open(&path).unwrap().read("huge").unwrap_err();
    assert!(matches!(err, Error::Allocation { .. }), "{err}");
    assert!(err.to_string().contains("huge"));
}

#[test]
fn typed_views_and_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.tensors");
    let bf: Vec<half::bf16> = [1.5f32, -2.0]
        .iter()
        .map(|&x| half::bf16::from_f32(x))
        .collect();
    let mut s = Serializer::new();
    s.write_state_dict([("bf", TensorData::from_slice(&[2], &bf).unwrap())])
        .unwrap();
    s.write_to_file(&path).unwrap();
    let d = Deserializer::open(&path).unwrap();
    let t = d.read("bf").unwrap();
    assert_eq!(t.as_slice::<half::bf16>().unwrap(), &bf[..]);
    assert!(
        t.as_slice::<f32>()
            .unwrap_err()
            .to_string()
            .contains("holds bfloat16, not float32")
    );
    assert_eq!(t.as_bytes().as_ptr() as usize % tensorizer::ALIGNMENT, 0);
    assert!(matches!(d.read("nope"), Err(Error::NotFound { .. })));
    let filtered = d.read_filtered(|e| e.dtype.dtype() == Dtype::F32).unwrap();
    assert!(filtered.is_empty());
}

#[test]
fn progress_reaches_the_file_size() {
    use std::sync::Mutex;
    let dir = tempfile::tempdir().unwrap();
    let big = vec![3u8; 5 << 20];
    let seen = Mutex::new(Vec::new());
    let mut s = Serializer::new();
    s.write_state_dict([
        ("a", TensorData::new(Dtype::U8, &[5 << 20], &big).unwrap()),
        ("b", TensorData::from_slice(&[2], &[1.0f32, 2.0]).unwrap()),
    ])
    .unwrap();
    s.on_progress(|p| seen.lock().unwrap().push(p));
    let summary = s.write_to_file(dir.path().join("m.tensors")).unwrap();
    let seen = seen.into_inner().unwrap();
    assert!(seen.len() > 2, "{} reports", seen.len());
    assert!(seen.iter().all(|p| p.total_bytes == summary.bytes));
    assert_eq!(seen.iter().map(|p| p.bytes).max(), Some(summary.bytes));
}
