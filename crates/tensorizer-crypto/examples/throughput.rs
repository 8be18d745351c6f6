//! Quick single-core throughput of each backend: `cargo run --release -p tensorizer-crypto --example throughput`.
//! (The full comparison with libsodium is `cargo bench -p tensorizer-benches`.)

use std::time::Instant;

use tensorizer_crypto::{Backend, EncryptionKey, Nonce, open, salsa20_xor, seal};

fn main() {
    let key = EncryptionKey::from_bytes([7; 32]);
    let nonce = Nonce([1; 24]);
    let mut data = vec![0u8; 64 << 20];
    for backend in Backend::available() {
        let mib = data.len() as f64 / (1 << 20) as f64;
        let t = Instant::now();
        salsa20_xor(backend, key.as_bytes(), &[0; 8], 0, &mut data);
        let ks = mib / t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mac = seal(backend, &key, &nonce, &mut data);
        let enc = mib / t.elapsed().as_secs_f64();
        let t = Instant::now();
        assert!(open(backend, &key, &nonce, &mut data, &mac));
        let dec = mib / t.elapsed().as_secs_f64();
        println!(
            "{:<8} keystream {ks:7.0} MiB/s  seal {enc:7.0} MiB/s  open {dec:7.0} MiB/s",
            backend.name()
        );
    }
}
