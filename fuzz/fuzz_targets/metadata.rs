#![no_main]
//! `Metadata::parse` (header + index): never panics, bounded allocation, and
//! what it parses encodes and parses back to the same value.
use libfuzzer_sys::fuzz_target;
use tensorizer_format::Metadata;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Metadata::parse(data) {
        let encoded = m.encode().expect("a parsed index re-encodes");
        assert_eq!(Metadata::parse(&encoded).unwrap(), m);
    }
});
