#![no_main]
//! `TensorPath::decode`: whatever decodes survives encode -> decode.
use libfuzzer_sys::fuzz_target;
use tensorizer_format::TensorPath;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = TensorPath::decode(data) {
        let encoded = p.encode();
        if !encoded.is_empty() {
            assert_eq!(TensorPath::decode(&encoded).unwrap(), p);
        }
    }
});
