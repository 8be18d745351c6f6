#![no_main]
//! `TensorHeader::parse`: the first byte picks the dimension width and the
//! crypt-info presence; a parsed header re-encodes to exactly its input.
use libfuzzer_sys::fuzz_target;
use tensorizer_format::TensorHeader;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else { return };
    if let Ok(h) = TensorHeader::parse(bytes, mode & 1 != 0, mode & 2 != 0) {
        assert_eq!(h.encode().unwrap(), bytes);
        let _ = h.hashable_bytes().unwrap();
    }
});
