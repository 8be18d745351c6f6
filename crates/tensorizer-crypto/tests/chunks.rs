//! Chunked boxes: round trips, and each kind of damage gives its own error
//! naming the chunk, with no plaintext left behind.

use tensorizer_crypto::{Backend, CryptoError, EncryptionKey, Nonce, open_chunks, seal_chunks};

const CHUNK: usize = 4096;

fn sealed(len: usize) -> (EncryptionKey, Nonce, Vec<u8>, Vec<u8>, Vec<[u8; 16]>) {
    let key = EncryptionKey::from_bytes([42; 32]);
    let mut n = [0xffu8; 24];
    n[23] = 0x10; // nonce + i carries through the low bytes
    let nonce = Nonce(n);
    let plain: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
    let mut data = plain.clone();
    let macs = seal_chunks(Backend::detect(), &key, &nonce, CHUNK, &mut data);
    assert_eq!(macs.len(), len.div_ceil(CHUNK));
    (key, nonce, plain, data, macs)
}

fn no_plaintext(data: &[u8], plain: &[u8]) {
    assert!(data.iter().all(|&b| b == 0), "buffer must be wiped");
    assert_ne!(data, plain);
}

#[test]
fn round_trips_every_backend() {
    for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 17] {
        let (key, nonce, plain, data, macs) = sealed(len);
        for backend in Backend::available() {
            let mut d = data.clone();
            open_chunks(backend, &key, &nonce, CHUNK, &mut d, &macs).unwrap();
            assert_eq!(d, plain);
        }
    }
}

#[test]
fn wrong_key_is_named() {
    let (_, nonce, plain, mut data, macs) = sealed(3 * CHUNK);
    let wrong = EncryptionKey::from_bytes([43; 32]);
    let err = open_chunks(Backend::detect(), &wrong, &nonce, CHUNK, &mut data, &macs).unwrap_err();
    assert_eq!(err, CryptoError::WrongKey { chunks: 3 });
    assert!(err.to_string().contains("wrong key or passphrase"));
    no_plaintext(&data, &plain);
}

#[test]
fn modified_chunk_or_mac_is_named() {
    let (key, nonce, plain, data, macs) = sealed(4 * CHUNK);
    let mut flipped = data.clone();
    flipped[2 * CHUNK + 100] ^= 1;
    let err = open_chunks(Backend::detect(), &key, &nonce, CHUNK, &mut flipped, &macs).unwrap_err();
    assert_eq!(
        err,
        CryptoError::ChunkTampered {
            chunk: 2,
            chunks: 4
        }
    );
    no_plaintext(&flipped, &plain);

    let mut bad_macs = macs.clone();
    bad_macs[3][5] ^= 0x80;
    let mut d = data.clone();
    let err = open_chunks(Backend::detect(), &key, &nonce, CHUNK, &mut d, &bad_macs).unwrap_err();
    assert_eq!(
        err,
        CryptoError::ChunkTampered {
            chunk: 3,
            chunks: 4
        }
    );
    no_plaintext(&d, &plain);

    // A modified nonce: no chunk authenticates.
    let mut d = data.clone();
    let err = open_chunks(
        Backend::detect(),
        &key,
        &nonce.add(1 << 40),
        CHUNK,
        &mut d,
        &macs,
    )
    .unwrap_err();
    assert!(matches!(err, CryptoError::WrongKey { .. }));
}

#[test]
fn swapped_chunks_are_named() {
    let (key, nonce, plain, data, macs) = sealed(4 * CHUNK);
    let mut swapped = data.clone();
    let (a, b) = swapped.split_at_mut(2 * CHUNK);
    a[CHUNK..].swap_with_slice(&mut b[CHUNK..2 * CHUNK]);
    let mut macs2 = macs.clone();
    macs2.swap(1, 3);
    let err = open_chunks(Backend::detect(), &key, &nonce, CHUNK, &mut swapped, &macs).unwrap_err();
    assert_eq!(
        err,
        CryptoError::ChunksSwapped {
            first: 1,
            second: 3,
            chunks: 4
        }
    );
    no_plaintext(&swapped, &plain);
    // Swapping data and MACs together still fails: positions are bound by the nonce.
    let mut both = data.clone();
    let (a, b) = both.split_at_mut(2 * CHUNK);
    a[CHUNK..].swap_with_slice(&mut b[CHUNK..2 * CHUNK]);
    assert!(open_chunks(Backend::detect(), &key, &nonce, CHUNK, &mut both, &macs2).is_err());
}

#[test]
fn truncated_chunk_is_named() {
    let (key, nonce, _, data, macs) = sealed(3 * CHUNK + 500);
    // The last chunk lost 100 bytes: its MAC fails.
    let mut short = data[..data.len() - 100].to_vec();
    let err = open_chunks(Backend::detect(), &key, &nonce, CHUNK, &mut short, &macs).unwrap_err();
    assert_eq!(
        err,
        CryptoError::ChunkTampered {
            chunk: 3,
            chunks: 4
        }
    );
    // A whole chunk lost: the MAC count no longer fits.
    let mut shorter = data[..3 * CHUNK - 1].to_vec();
    let err = open_chunks(Backend::detect(), &key, &nonce, CHUNK, &mut shorter, &macs).unwrap_err();
    assert!(
        matches!(
            err,
            CryptoError::ChunkCount {
                expected: 3,
                found: 4,
                ..
            }
        ),
        "{err}"
    );
}
