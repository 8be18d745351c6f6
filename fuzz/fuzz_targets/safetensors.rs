#![no_main]
//! The safetensors header parser over any bytes: a value or an error, never
//! a panic or an allocation larger than the input. What it accepts, the
//! `safetensors` crate accepts too (ours is the stricter: duplicate names,
//! sub-byte dtypes), with the same tensors at the same offsets.
use libfuzzer_sys::fuzz_target;
use tensorizer_format::safetensors::{PREFIX_LEN, parse_file};

fuzz_target!(|data: &[u8]| {
    let Ok(header) = parse_file(data) else { return };
    let mut at = header.data_start();
    for t in &header.tensors {
        assert_eq!(t.start, at, "tensors are contiguous");
        at = t.end;
    }
    assert_eq!(at, data.len() as u64, "the tensors fill the file");
    let theirs = safetensors::SafeTensors::deserialize(data)
        .unwrap_or_else(|e| panic!("ours accepted what safetensors refuses: {e}"));
    assert_eq!(theirs.len(), header.tensors.len());
    for t in &header.tensors {
        let view = theirs.tensor(&t.name).expect("the same names");
        let shape: Vec<u64> = view.shape().iter().map(|&d| d as u64).collect();
        assert_eq!(shape, t.shape, "{}", t.name);
        let start = view.data().as_ptr() as usize - data.as_ptr() as usize;
        if !view.data().is_empty() {
            assert_eq!(start as u64, t.start, "{}", t.name);
        }
    }
    assert!(header.json_len + PREFIX_LEN <= data.len() as u64);
});
