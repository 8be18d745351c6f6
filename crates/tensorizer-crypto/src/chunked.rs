//! Tensor data as a sequence of fixed-size secretboxes (FORMAT.md §5):
//! chunk `i` uses `nonce + i`; chunks are processed in parallel.

use rayon::prelude::*;

use crate::error::{CryptoError, Result};
use crate::key::EncryptionKey;
use crate::nonce::Nonce;
use crate::salsa::Backend;
use crate::secretbox::{self, Mac};

/// Encrypts `data` in place as chunks of `chunk_size` bytes (the last may be
/// shorter), in parallel; returns one MAC per chunk (none for empty data).
pub fn seal_chunks(
    backend: Backend,
    key: &EncryptionKey,
    nonce: &Nonce,
    chunk_size: usize,
    data: &mut [u8],
) -> Vec<Mac> {
    assert!(chunk_size > 0, "chunk size must be positive");
    data.par_chunks_mut(chunk_size)
        .enumerate()
        .map(|(i, chunk)| secretbox::seal(backend, key, &nonce.add(i as u64), chunk))
        .collect()
}

/// As the Python reader does, a single MAC means one box over the whole data
/// whatever `chunk_size` says. Every chunk is authenticated before its
/// plaintext is kept; on error, `data` holds no plaintext of a failed chunk,
/// and the error says which chunk failed and what that suggests (wrong key,
/// modified chunk, swapped chunks).
pub fn open_chunks(
    backend: Backend,
    key: &EncryptionKey,
    nonce: &Nonce,
    chunk_size: usize,
    data: &mut [u8],
    macs: &[Mac],
) -> Result<()> {
    read_and_open_chunks(backend, key, nonce, chunk_size, data, macs, |_, _| {
        Ok::<(), ()>(())
    })
    .map_err(|e| match e {
        ReadOrOpen::Open(e) => e,
        ReadOrOpen::Read(()) => unreachable!("the no-op reader never fails"),
    })
}

/// Why [`read_and_open_chunks`] failed.
#[derive(Debug)]
pub enum ReadOrOpen<E> {
    /// Filling a chunk failed.
    Read(E),
    /// A chunk did not authenticate (or the layout is wrong).
    Open(CryptoError),
}

/// [`open_chunks`] with the ciphertext arriving on the way: each parallel
/// task first calls `read(offset, chunk)` to fill its chunk, then decrypts
/// it while it is still in cache, so a load reads and decrypts in one pass
/// over memory instead of two.
pub fn read_and_open_chunks<E: Send>(
    backend: Backend,
    key: &EncryptionKey,
    nonce: &Nonce,
    chunk_size: usize,
    data: &mut [u8],
    macs: &[Mac],
    read: impl Fn(usize, &mut [u8]) -> std::result::Result<(), E> + Sync,
) -> std::result::Result<(), ReadOrOpen<E>> {
    if macs.len() == 1 {
        // One box over everything: fill it all (in pieces, at once), then open.
        let piece = chunk_size.clamp(1 << 20, 16 << 20);
        data.par_chunks_mut(piece)
            .enumerate()
            .try_for_each(|(i, c)| read(i * piece, c))
            .map_err(ReadOrOpen::Read)?;
        return if secretbox::open(backend, key, nonce, data, &macs[0]) {
            Ok(())
        } else {
            Err(ReadOrOpen::Open(CryptoError::WrongKey { chunks: 1 }))
        };
    }
    let expected = data.len().div_ceil(chunk_size.max(1));
    if chunk_size == 0 || macs.len() != expected {
        return Err(ReadOrOpen::Open(CryptoError::ChunkCount {
            len: data.len() as u64,
            chunk_size: chunk_size as u64,
            expected: expected as u64,
            found: macs.len() as u64,
        }));
    }
    let results: Vec<std::result::Result<bool, E>> = data
        .par_chunks_mut(chunk_size)
        .enumerate()
        .map(|(i, chunk)| {
            read(i * chunk_size, chunk)?;
            Ok(secretbox::open(
                backend,
                key,
                &nonce.add(i as u64),
                chunk,
                &macs[i],
            ))
        })
        .collect();
    let mut failed = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(true) => {}
            Ok(false) => failed.push(i),
            Err(e) => {
                data.fill(0);
                return Err(ReadOrOpen::Read(e));
            }
        }
    }
    if failed.is_empty() {
        return Ok(());
    }
    let chunks = macs.len() as u64;
    let err = diagnose(key, nonce, chunk_size, data, macs, &failed);
    // Authenticated chunks were decrypted; leave nothing of this tensor readable.
    data.fill(0);
    Err(ReadOrOpen::Open(match err {
        Diagnosis::WrongKey => CryptoError::WrongKey { chunks },
        Diagnosis::Swapped(a, b) => CryptoError::ChunksSwapped {
            first: a as u64,
            second: b as u64,
            chunks,
        },
        Diagnosis::Tampered(i) => CryptoError::ChunkTampered {
            chunk: i as u64,
            chunks,
        },
    }))
}

enum Diagnosis {
    WrongKey,
    Swapped(usize, usize),
    Tampered(usize),
}

/// Failed chunks still hold their ciphertext: tell a wrong key (nothing
/// authenticates) from swapped chunks (they authenticate at each other's
/// positions) from modified ones.
fn diagnose(
    key: &EncryptionKey,
    nonce: &Nonce,
    chunk_size: usize,
    data: &[u8],
    macs: &[Mac],
    failed: &[usize],
) -> Diagnosis {
    if failed.len() == macs.len() {
        return Diagnosis::WrongKey;
    }
    let chunk = |i: usize| &data[i * chunk_size..((i + 1) * chunk_size).min(data.len())];
    for (n, &a) in failed.iter().enumerate().take(64) {
        for &b in &failed[n + 1..failed.len().min(n + 64)] {
            if secretbox::authenticates(key, &nonce.add(b as u64), chunk(a), &macs[b])
                && secretbox::authenticates(key, &nonce.add(a as u64), chunk(b), &macs[a])
            {
                return Diagnosis::Swapped(a, b);
            }
        }
    }
    Diagnosis::Tampered(failed[0])
}
