#![no_main]
//! The load path, not only the parsers: a `Deserializer` over an in-memory
//! file reads every tensor. The first byte picks the mode: bit 0 decrypts
//! with the spec fixtures' key (bytes 00..1f), bit 1 checks SHA-256 too,
//! bit 2 goes through `check` (every tensor, past failures) instead of
//! `read_all`. Whatever the bytes, the result is a value or an error.
//!
//! Meta tensors load as zeros of the size their header declares, as in
//! the Python library; tensors declaring more than 1 MiB are filtered out
//! so that a hostile shape cannot make the fuzzer run out of memory.
use libfuzzer_sys::fuzz_target;
use tensorizer::io::{RangeSource, Result};
use tensorizer::{Decryption, Deserializer, EncryptionKey, Verify};

#[derive(Debug)]
struct Memory(Vec<u8>);

impl RangeSource for Memory {
    fn uri(&self) -> &str {
        "memory"
    }
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(offset, buf.len())?;
        let at = offset as usize;
        buf.copy_from_slice(&self.0[at..at + buf.len()]);
        Ok(())
    }
}

const LIMIT: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, file)) = data.split_first() else {
        return;
    };
    let Ok(d) = Deserializer::from_source(Box::new(Memory(file.to_vec()))) else {
        return;
    };
    let d = d.num_readers(1).verify(if mode & 2 != 0 {
        Verify::All
    } else {
        Verify::Crc32
    });
    let d = if mode & 1 != 0 {
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        match d.decryption(Decryption::Key(EncryptionKey::from_bytes(key))) {
            Ok(d) => d,
            Err(_) => return,
        }
    } else {
        d
    };
    let small = |e: &tensorizer::format::IndexEntry| {
        e.deserialized_length().is_some_and(|n| n <= LIMIT)
    };
    if mode & 4 != 0 {
        for check in d.check(small, true) {
            if check.outcome.is_ok() {
                assert!(check.data_sha256.is_some());
            }
        }
    } else if let Ok(tensors) = d.read_filtered(small) {
        for t in tensors {
            let _ = t.as_bytes().len();
        }
    }
});
