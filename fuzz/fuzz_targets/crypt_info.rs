#![no_main]
//! `CryptInfo::parse` of a block body: re-encodes to exactly its input.
use libfuzzer_sys::fuzz_target;
use tensorizer_format::CryptInfo;

fuzz_target!(|data: &[u8]| {
    if let Ok(ci) = CryptInfo::parse(data, "fuzz") {
        let mut out = Vec::new();
        ci.encode(&mut out);
        assert_eq!(&out[8..], data);
    }
});
