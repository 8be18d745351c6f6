//! The SIMD keystreams equal the portable one, and secretbox equals the
//! RustCrypto `xsalsa20poly1305` crate, for random keys, nonces, counters and
//! lengths (including counter carries across 2^32 blocks).

use proptest::prelude::*;
use tensorizer_crypto::PolyKernel;
use tensorizer_crypto::{
    Backend, EncryptionKey, Nonce, authenticates, open, open_verify_first, salsa20_xor, seal,
};
use xsalsa20poly1305::aead::{AeadInPlace, KeyInit};

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn simd_keystreams_equal_portable(
        key in any::<[u8; 32]>(),
        nonce in any::<[u8; 8]>(),
        counter in prop_oneof![any::<u64>(), (u64::from(u32::MAX) - 40)..(u64::from(u32::MAX) + 40), Just(u64::MAX - 3)],
        len in 0usize..5000,
    ) {
        let mut expected = vec![0u8; len];
        salsa20_xor(Backend::Portable, &key, &nonce, counter, &mut expected);
        for backend in Backend::available() {
            let mut got = vec![0u8; len];
            salsa20_xor(backend, &key, &nonce, counter, &mut got);
            prop_assert!(got == expected, "{} differs at counter {counter}, len {len}", backend.name());
        }
    }

    #[test]
    fn secretbox_equals_rustcrypto(key in any::<[u8; 32]>(), nonce in any::<[u8; 24]>(), data in prop_oneof![proptest::collection::vec(any::<u8>(), 0..70), proptest::collection::vec(any::<u8>(), 0..40_000)]) {
        let reference = xsalsa20poly1305::XSalsa20Poly1305::new(&key.into());
        let mut expected = data.clone();
        let tag = reference.encrypt_in_place_detached(&nonce.into(), b"", &mut expected).unwrap();
        let k = EncryptionKey::from_bytes(key);
        for backend in Backend::available() {
            let mut buf = data.clone();
            let mac = seal(backend, &k, &Nonce(nonce), &mut buf);
            prop_assert_eq!(&buf, &expected);
            prop_assert_eq!(&mac[..], &tag[..]);
            prop_assert!(authenticates(&k, &Nonce(nonce), &buf, &mac));
            let mut fused = buf.clone();
            prop_assert!(open(backend, &k, &Nonce(nonce), &mut fused, &mac));
            prop_assert_eq!(&fused, &data);
            prop_assert!(open_verify_first(backend, &k, &Nonce(nonce), &mut buf, &mac));
            prop_assert_eq!(&buf, &data);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Our Poly1305 (portable and AVX-512 IFMA) equals the RustCrypto crate.
    #[test]
    fn poly1305_equals_rustcrypto(key in any::<[u8; 32]>(), data in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::collection::vec(any::<u8>(), 0..5000),
        proptest::collection::vec(Just(0xffu8), 0..3000),
    ]) {
        use poly1305::universal_hash::KeyInit;
        let expected = poly1305::Poly1305::new(&key.into()).compute_unpadded(&data);
        for kernel in PolyKernel::available() {
            prop_assert_eq!(&tensorizer_crypto::poly1305(kernel, &key, &data)[..], &expected[..], "{:?}", kernel);
        }
    }
}

#[test]
fn poly1305_extreme_limbs() {
    use poly1305::universal_hash::KeyInit;
    // All-ones keys and data push every limb to its bound.
    for key in [[0xffu8; 32], [0u8; 32], std::array::from_fn(|i| i as u8)] {
        for len in [0, 16, 128, 129, 256, 1024 + 15, 65536] {
            let data = vec![0xffu8; len];
            let expected = poly1305::Poly1305::new(&key.into()).compute_unpadded(&data);
            for kernel in PolyKernel::available() {
                assert_eq!(
                    &tensorizer_crypto::poly1305(kernel, &key, &data)[..],
                    &expected[..],
                    "len {len} {kernel:?}"
                );
            }
        }
    }
}

#[test]
fn failed_open_leaves_ciphertext_not_plaintext() {
    let key = EncryptionKey::from_bytes([9; 32]);
    let nonce = Nonce([3; 24]);
    let plain: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    let mut data = plain.clone();
    let mut mac = seal(Backend::detect(), &key, &nonce, &mut data);
    let ciphertext = data.clone();
    mac[0] ^= 1;
    for backend in Backend::available() {
        assert!(!open(backend, &key, &nonce, &mut data, &mac));
        assert_eq!(data, ciphertext, "{}", backend.name());
        assert!(!open_verify_first(backend, &key, &nonce, &mut data, &mac));
        assert_eq!(data, ciphertext);
    }
}

/// Safe code may name any backend: one the CPU lacks falls back to the
/// fastest it has (never runs AVX-512 instructions on a CPU without them),
/// and the keystream is the same.
#[test]
fn every_backend_named_runs_on_this_cpu() {
    let available = Backend::available();
    let mut expected = vec![0u8; 1000];
    salsa20_xor(Backend::Portable, &[7; 32], &[1; 8], 3, &mut expected);
    for named in [Backend::Portable, Backend::Avx2, Backend::Avx512] {
        let runs = named.usable();
        assert!(
            available.contains(&runs),
            "{} -> {}",
            named.name(),
            runs.name()
        );
        assert!(
            runs as u8 <= named as u8,
            "never a faster, unsupported kernel"
        );
        let mut got = vec![0u8; 1000];
        salsa20_xor(named, &[7; 32], &[1; 8], 3, &mut got);
        assert_eq!(got, expected, "{}", named.name());
    }
}
