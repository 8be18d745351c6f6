#![no_main]
//! `DtypeString::parse`: keeps its exact bytes.
use libfuzzer_sys::fuzz_target;
use tensorizer_format::DtypeString;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = DtypeString::parse(data) {
        assert_eq!(d.as_str().as_bytes(), data);
        assert!(d.dtype().itemsize() >= 1);
    }
});
