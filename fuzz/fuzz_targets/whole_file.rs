#![no_main]
//! A whole file in memory: parse, every record, every hash check.
use libfuzzer_sys::fuzz_target;
use tensorizer_format::TensorizerFile;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = TensorizerFile::parse(data) else { return };
    for record in file.records() {
        let Ok(record) = record else { return };
        let _ = record.header.verify(record.data, |_| true);
        let _ = record.entry.deserialized_length();
    }
});
