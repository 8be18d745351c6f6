#![no_main]
//! `FileHeader::parse`: any bytes; a parsed header re-encodes to its input.
use libfuzzer_sys::fuzz_target;
use tensorizer_format::{FILE_HEADER_LEN, FileHeader, FormatVersion};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = FileHeader::parse(data) {
        let mut out = Vec::new();
        h.encode(&mut out);
        assert_eq!(out.len(), FILE_HEADER_LEN);
        // Flags are stored from v4 on and the reserved field is always zero.
        if h.version >= FormatVersion::META_TENSOR && data[49..57] == [0; 8] {
            assert_eq!(&out[..], &data[..FILE_HEADER_LEN]);
        }
        assert_eq!(FileHeader::parse(&out).unwrap(), h);
    }
});
