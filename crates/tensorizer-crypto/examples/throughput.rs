//! Quick single-core throughput of each backend, and of Poly1305 alone:
//! `cargo run --release -p tensorizer-crypto --example throughput`.
//! (The comparison with libsodium is `cargo bench -p tensorizer-benches --bench crypto`.)

use std::time::Instant;

use tensorizer_crypto::{Backend, EncryptionKey, Nonce, authenticates, open, salsa20_xor, seal};

fn rate(bytes: usize, f: impl Fn()) -> f64 {
    f(); // warm: page faults, caches
    let t = Instant::now();
    for _ in 0..5 {
        f();
    }
    5.0 * bytes as f64 / (1u64 << 30) as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let key = EncryptionKey::from_bytes([7; 32]);
    let nonce = Nonce([1; 24]);
    let len = 2 << 20;
    let data = std::cell::RefCell::new(vec![0u8; len]);
    let mac = seal(Backend::detect(), &key, &nonce, &mut data.borrow_mut());
    assert!(authenticates(&key, &nonce, &data.borrow(), &mac));
    for kernel in tensorizer_crypto::PolyKernel::available() {
        let r = rate(len, || {
            std::hint::black_box(tensorizer_crypto::poly1305(
                kernel,
                key.as_bytes(),
                &data.borrow(),
            ));
        });
        println!("poly1305 {kernel:?}: {r:.2} GiB/s");
    }
    for backend in Backend::available() {
        let ks = rate(len, || {
            salsa20_xor(backend, key.as_bytes(), &[0; 8], 0, &mut data.borrow_mut())
        });
        let enc = rate(len, || {
            seal(backend, &key, &nonce, &mut data.borrow_mut());
        });
        let mac = seal(backend, &key, &nonce, &mut data.borrow_mut());
        let dec = rate(len, || {
            let mut d = data.borrow_mut();
            assert!(open(backend, &key, &nonce, &mut d, &mac));
            seal(backend, &key, &nonce, &mut d);
        }) * 2.0;
        println!(
            "{:<8} keystream {ks:5.2} GiB/s  seal {enc:5.2} GiB/s  open {dec:5.2} GiB/s",
            backend.name()
        );
    }
}
