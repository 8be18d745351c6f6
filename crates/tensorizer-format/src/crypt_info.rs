//! The crypt-info block of encrypted files (FORMAT.md §5.3). This module only
//! parses and encodes it; decrypting is `tensorizer-crypto`'s job.

use crate::cursor::Cursor;
use crate::error::{FormatError, Result};

/// Size of an XSalsa20 nonce.
pub const NONCE_LEN: usize = 24;
/// Size of a Poly1305 MAC.
pub const MAC_LEN: usize = 16;
/// Chunk size the Python writer uses (2 MiB).
pub const DEFAULT_CHUNK_SIZE: u64 = 2 * 1024 * 1024;

/// Argon2id parameters of a passphrase-derived key (`crypto_pwhash`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyDerivation {
    /// Derivation method; 1 = libsodium pwhash, the only one defined.
    pub method: u16,
    /// Argon2 time cost.
    pub opslimit: u64,
    /// Argon2 memory in bytes.
    pub memlimit: u64,
    /// libsodium algorithm id; 2 = Argon2id v1.3, the only one accepted.
    pub alg: i32,
    /// Salt (16 bytes from Python).
    pub salt: Vec<u8>,
}

/// One chunk of a crypt-info block.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CryptChunk {
    /// Type 1: how the key was derived from a passphrase.
    KeyDerivation(KeyDerivation),
    /// Type 2: data split into `chunk_size` pieces, one secretbox each, nonce
    /// `nonce + i` for piece `i` (the only type the Python writer emits).
    XSalsa20Parallel {
        /// Plaintext bytes per piece (the last may be shorter).
        chunk_size: u64,
        /// Nonce of piece 0.
        nonce: [u8; NONCE_LEN],
        /// One MAC per piece.
        macs: Vec<[u8; MAC_LEN]>,
    },
    /// Type 3: the whole data as one secretbox (read-only in Python).
    XSalsa20Sequential {
        /// The nonce.
        nonce: [u8; NONCE_LEN],
        /// The MAC.
        mac: [u8; MAC_LEN],
    },
}

/// A per-tensor crypt-info block. No chunks means "this tensor is not
/// encrypted" (meta and zero-byte tensors inside encrypted files).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct CryptInfo {
    /// Chunks in stored order (key derivation first, as Python writes them).
    pub chunks: Vec<CryptChunk>,
}

impl CryptInfo {
    /// Parses the block body (the `L` bytes after the `u64 L` prefix).
    pub fn parse(body: &[u8], tensor: &str) -> Result<Self> {
        let bad = |reason: String| FormatError::InvalidCryptInfo {
            tensor: tensor.to_owned(),
            reason,
        };
        let mut c = Cursor::new(body, "crypt info");
        let count = c.u16()?;
        // Each chunk takes at least 10 bytes, so `count` is bounded by the input.
        let mut chunks = Vec::with_capacity(usize::from(count).min(body.len() / 10));
        for i in 0..count {
            let len = c.u64()?;
            let len = usize::try_from(len)
                .ok()
                .filter(|&l| l <= c.remaining())
                .ok_or_else(|| {
                    bad(format!(
                        "chunk {i} claims {len} bytes, only {} remain",
                        c.remaining()
                    ))
                })?;
            let mut cc = Cursor::new(c.take(len)?, "crypt info chunk");
            let chunk_type = cc.u16()?;
            let chunk = match chunk_type {
                1 => {
                    let method = cc.u16()?;
                    if method != 1 {
                        return Err(bad(format!("unknown key derivation method {method}")));
                    }
                    let opslimit = cc.u64()?;
                    let memlimit = cc.u64()?;
                    let alg = cc.i32()?;
                    if alg != 2 {
                        return Err(bad(format!(
                            "unsupported pwhash algorithm {alg} (only 2 = Argon2id13)"
                        )));
                    }
                    let salt_len = cc.u16()?;
                    let salt = cc.take(usize::from(salt_len))?.to_vec();
                    CryptChunk::KeyDerivation(KeyDerivation {
                        method,
                        opslimit,
                        memlimit,
                        alg,
                        salt,
                    })
                }
                2 => {
                    let chunk_size = cc.u64()?;
                    if chunk_size < 1024 || chunk_size % 64 != 0 {
                        return Err(bad(format!(
                            "chunk size {chunk_size} must be a multiple of 64 and at least 1024"
                        )));
                    }
                    let nonce = cc.array()?;
                    let num_macs = cc.u64()?;
                    if num_macs.checked_mul(MAC_LEN as u64) != Some(cc.remaining() as u64) {
                        return Err(bad(format!(
                            "{num_macs} MACs do not fill the {}-byte remainder of the chunk",
                            cc.remaining()
                        )));
                    }
                    let mut macs = Vec::with_capacity(cc.remaining() / MAC_LEN);
                    for _ in 0..num_macs {
                        macs.push(cc.array()?);
                    }
                    CryptChunk::XSalsa20Parallel {
                        chunk_size,
                        nonce,
                        macs,
                    }
                }
                3 => CryptChunk::XSalsa20Sequential {
                    nonce: cc.array()?,
                    mac: cc.array()?,
                },
                other => return Err(bad(format!("unknown chunk type {other}"))),
            };
            if cc.remaining() != 0 {
                return Err(bad(format!(
                    "chunk {i} has {} unexpected trailing bytes",
                    cc.remaining()
                )));
            }
            chunks.push(chunk);
        }
        if c.remaining() != 0 {
            return Err(bad(format!(
                "{} unexpected bytes after the last chunk",
                c.remaining()
            )));
        }
        Ok(Self { chunks })
    }

    /// Appends the block including its `u64 L` prefix.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&(self.chunks.len() as u16).to_le_bytes());
        for chunk in &self.chunks {
            let len_at = out.len();
            out.extend_from_slice(&0u64.to_le_bytes());
            match chunk {
                CryptChunk::KeyDerivation(k) => {
                    out.extend_from_slice(&1u16.to_le_bytes());
                    out.extend_from_slice(&k.method.to_le_bytes());
                    out.extend_from_slice(&k.opslimit.to_le_bytes());
                    out.extend_from_slice(&k.memlimit.to_le_bytes());
                    out.extend_from_slice(&k.alg.to_le_bytes());
                    out.extend_from_slice(&(k.salt.len() as u16).to_le_bytes());
                    out.extend_from_slice(&k.salt);
                }
                CryptChunk::XSalsa20Parallel {
                    chunk_size,
                    nonce,
                    macs,
                } => {
                    out.extend_from_slice(&2u16.to_le_bytes());
                    out.extend_from_slice(&chunk_size.to_le_bytes());
                    out.extend_from_slice(nonce);
                    out.extend_from_slice(&(macs.len() as u64).to_le_bytes());
                    macs.iter().for_each(|m| out.extend_from_slice(m));
                }
                CryptChunk::XSalsa20Sequential { nonce, mac } => {
                    out.extend_from_slice(&3u16.to_le_bytes());
                    out.extend_from_slice(nonce);
                    out.extend_from_slice(mac);
                }
            }
            let chunk_len = (out.len() - len_at - 8) as u64;
            out[len_at..len_at + 8].copy_from_slice(&chunk_len.to_le_bytes());
        }
        let body_len = (out.len() - start - 8) as u64;
        out[start..start + 8].copy_from_slice(&body_len.to_le_bytes());
    }

    /// Bytes [`CryptInfo::encode`] appends.
    pub fn encoded_len(&self) -> usize {
        let mut v = Vec::new();
        self.encode(&mut v);
        v.len()
    }

    /// True when the tensor's data is encrypted (a cipher chunk is present).
    pub fn is_encrypted(&self) -> bool {
        self.chunks
            .iter()
            .any(|c| !matches!(c, CryptChunk::KeyDerivation(_)))
    }
}
