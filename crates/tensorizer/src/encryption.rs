//! Encryption options of the facade: what the `Serializer` encrypts with and
//! what the `Deserializer` decrypts with. The cryptography itself is
//! `tensorizer-crypto`'s.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

pub use tensorizer_crypto::{Backend, CryptoError, EncryptionKey, KdfParams, KdfStrength, Nonce};
use tensorizer_format::{CryptChunk, CryptInfo, DEFAULT_CHUNK_SIZE, KeyDerivation, MAC_LEN};
use zeroize::Zeroizing;

/// How a [`crate::Serializer`] encrypts: a key (random, raw or derived from a
/// passphrase), 2 MiB chunks as the Python writer uses, and a fresh random
/// nonce per tensor unless nonces are given.
#[derive(Debug)]
pub struct Encryption {
    key: EncryptionKey,
    kdf: Option<KdfParams>,
    nonces: Option<VecDeque<Nonce>>,
}

impl Encryption {
    /// Encrypts with `key`; nothing about the key is stored in the file.
    pub fn with_key(key: EncryptionKey) -> Self {
        Self {
            key,
            kdf: None,
            nonces: None,
        }
    }

    /// Derives the key from `passphrase` with Argon2id; the parameters and
    /// salt are stored in every encrypted tensor's header.
    pub fn from_passphrase(passphrase: &[u8], params: KdfParams) -> Result<Self, CryptoError> {
        Ok(Self {
            key: EncryptionKey::derive(passphrase, &params)?,
            kdf: Some(params),
            nonces: None,
        })
    }

    /// Uses these initial nonces, one per tensor with data in write order,
    /// instead of random ones: output becomes reproducible (tests, golden
    /// files). Never reuse nonces with the same key for different data.
    pub fn with_nonces(mut self, nonces: impl IntoIterator<Item = Nonce>) -> Self {
        self.nonces = Some(nonces.into_iter().collect());
        self
    }

    /// The key in use.
    pub fn key(&self) -> &EncryptionKey {
        &self.key
    }

    /// The planned crypt info of a tensor with `data_length` bytes: MACs zeroed.
    pub(crate) fn plan(&mut self, data_length: u64) -> Result<CryptInfo, CryptoError> {
        if data_length == 0 {
            // Nothing to encrypt: an empty crypt info, as for meta tensors.
            return Ok(CryptInfo::default());
        }
        let nonce = match &mut self.nonces {
            Some(list) => list
                .pop_front()
                .ok_or_else(|| CryptoError::Rng("ran out of the given nonces".into()))?,
            None => Nonce::random()?,
        };
        Ok(self.crypt_info(data_length, nonce))
    }

    /// What [`Encryption::plan`] would plan, with a placeholder nonce and
    /// no nonce used up: the header's size, for a dry run.
    pub(crate) fn plan_size(&self, data_length: u64) -> CryptInfo {
        if data_length == 0 {
            return CryptInfo::default();
        }
        self.crypt_info(data_length, Nonce([0; 24]))
    }

    fn crypt_info(&self, data_length: u64, nonce: Nonce) -> CryptInfo {
        let mut chunks = Vec::with_capacity(2);
        if let Some(k) = &self.kdf {
            chunks.push(CryptChunk::KeyDerivation(KeyDerivation {
                method: 1,
                opslimit: k.opslimit,
                memlimit: k.memlimit,
                alg: 2,
                salt: k.salt.to_vec(),
            }));
        }
        chunks.push(CryptChunk::XSalsa20Parallel {
            chunk_size: DEFAULT_CHUNK_SIZE,
            nonce: nonce.0,
            macs: vec![[0; MAC_LEN]; data_length.div_ceil(DEFAULT_CHUNK_SIZE) as usize],
        });
        CryptInfo { chunks }
    }

    /// Encrypts one tensor per its `planned` crypt info, chunk by chunk as
    /// the writer streams it; `None` when there is nothing to encrypt.
    pub(crate) fn sealer<'a>(&'a self, planned: &'a CryptInfo) -> Option<TensorSealer<'a>> {
        planned.chunks.iter().find_map(|chunk| match chunk {
            CryptChunk::XSalsa20Parallel {
                chunk_size, nonce, ..
            } => Some(TensorSealer {
                key: &self.key,
                backend: Backend::detect(),
                nonce: Nonce(*nonce),
                chunk_size: *chunk_size as usize,
                planned,
                macs: Vec::new(),
            }),
            _ => None,
        })
    }
}

/// Seals the chunks of one tensor in order (chunk `i` with `nonce + i`)
/// and collects their MACs for the tensor's header.
pub(crate) struct TensorSealer<'a> {
    key: &'a EncryptionKey,
    backend: Backend,
    nonce: Nonce,
    chunk_size: usize,
    planned: &'a CryptInfo,
    macs: Vec<tensorizer_crypto::Mac>,
}

impl TensorSealer<'_> {
    /// Plaintext bytes per chunk; every chunk but the last is this long.
    pub(crate) fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// Encrypts the next chunk in place.
    pub(crate) fn seal_next(&mut self, chunk: &mut [u8]) {
        let nonce = self.nonce.add(self.macs.len() as u64);
        self.macs.push(tensorizer_crypto::seal(
            self.backend,
            self.key,
            &nonce,
            chunk,
        ));
    }

    /// The crypt info with the MACs of every sealed chunk.
    pub(crate) fn finish(self) -> CryptInfo {
        let mut out = self.planned.clone();
        let stored = out.chunks.iter_mut().find_map(|chunk| match chunk {
            CryptChunk::XSalsa20Parallel { macs, .. } => Some(macs),
            _ => None,
        });
        if let Some(stored) = stored {
            *stored = self.macs;
        }
        out
    }
}

/// How a [`crate::Deserializer`] decrypts.
pub enum Decryption {
    /// The 32-byte key; works for every encrypted file.
    Key(EncryptionKey),
    /// A passphrase; the key is re-derived from each tensor's stored
    /// Argon2id parameters (cached per distinct parameter set).
    Passphrase(Zeroizing<Vec<u8>>),
}

impl Decryption {
    /// From a passphrase.
    pub fn passphrase(passphrase: impl Into<Vec<u8>>) -> Self {
        Decryption::Passphrase(Zeroizing::new(passphrase.into()))
    }
}

impl std::fmt::Debug for Decryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decryption::Key(_) => f.write_str("Decryption::Key(<redacted>)"),
            Decryption::Passphrase(_) => f.write_str("Decryption::Passphrase(<redacted>)"),
        }
    }
}

/// What decrypting one tensor found wrong, before the tensor name is added.
#[derive(Debug)]
pub(crate) enum DecryptFailure {
    /// The crypt info has no usable cipher chunk.
    Layout(String),
    /// A passphrase, but the tensor stores no key-derivation record.
    NoKdfRecord,
    /// The crypto layer refused.
    Crypto(CryptoError),
    /// Reading the ciphertext failed.
    Read(tensorizer_io::IoError),
}

/// Bounds on the key-derivation work a file may ask of a passphrase load:
/// the Argon2id parameters are read from the file, so an untrusted file
/// could otherwise ask for hours of work per tensor.
///
/// The default admits every preset the Python library writes (up to
/// `OpsLimit.SENSITIVE` = 4 and `MemLimit.SENSITIVE` = 1 GiB) and at most
/// 16 distinct parameter records per file (Python writes one); raise them
/// with [`crate::Deserializer::kdf_limits`] for files made otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfLimits {
    /// Largest Argon2 time cost accepted.
    pub max_opslimit: u64,
    /// Largest Argon2 memory accepted, in bytes.
    pub max_memlimit: u64,
    /// Most distinct parameter records (salts) one file may use.
    pub max_records: usize,
}

impl Default for KdfLimits {
    fn default() -> Self {
        Self {
            max_opslimit: 4,
            max_memlimit: 1 << 30,
            max_records: 16,
        }
    }
}

/// A [`Decryption`] plus the keys derived so far.
#[derive(Debug)]
pub(crate) struct Decryptor {
    source: Decryption,
    limits: KdfLimits,
    /// Held while deriving, so each record is derived once however many
    /// readers ask for it at the same time.
    derived: Mutex<HashMap<KdfParams, EncryptionKey>>,
}

impl Decryptor {
    pub(crate) fn new(source: Decryption, limits: KdfLimits) -> Self {
        Self {
            source,
            limits,
            derived: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn set_limits(&mut self, limits: KdfLimits) {
        self.limits = limits;
    }

    pub(crate) fn uses_passphrase(&self) -> bool {
        matches!(self.source, Decryption::Passphrase(_))
    }

    fn key_for(&self, info: &CryptInfo) -> Result<EncryptionKey, DecryptFailure> {
        match &self.source {
            Decryption::Key(k) => Ok(k.clone()),
            Decryption::Passphrase(pw) => {
                let kdf = info
                    .chunks
                    .iter()
                    .find_map(|c| match c {
                        CryptChunk::KeyDerivation(k) => Some(k),
                        _ => None,
                    })
                    .ok_or(DecryptFailure::NoKdfRecord)?;
                let limits = &self.limits;
                if kdf.opslimit > limits.max_opslimit || kdf.memlimit > limits.max_memlimit {
                    return Err(DecryptFailure::Crypto(CryptoError::InvalidKdf(format!(
                        "the file asks for Argon2id opslimit {} and memlimit {} bytes, over the \
                         limits of {} and {} bytes (the strongest presets the Python library \
                         writes); raise them with Deserializer::kdf_limits (CLI: \
                         --kdf-max-opslimit, --kdf-max-memlimit) if you trust this file",
                        kdf.opslimit, kdf.memlimit, limits.max_opslimit, limits.max_memlimit
                    ))));
                }
                let params = KdfParams::from_stored(kdf.opslimit, kdf.memlimit, &kdf.salt)
                    .map_err(DecryptFailure::Crypto)?;
                let mut cache = self.derived.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(k) = cache.get(&params) {
                    return Ok(k.clone());
                }
                if cache.len() >= limits.max_records {
                    return Err(DecryptFailure::Crypto(CryptoError::InvalidKdf(format!(
                        "the file uses more than {} distinct key-derivation records (each costs \
                         a full Argon2id derivation); raise Deserializer::kdf_limits if you \
                         trust this file",
                        limits.max_records
                    ))));
                }
                let key = EncryptionKey::derive(pw, &params).map_err(DecryptFailure::Crypto)?;
                cache.insert(params, key.clone());
                Ok(key)
            }
        }
    }

    /// The granularity at which a tensor encrypted per `info` can be
    /// decrypted piece by piece: its chunk size, or `None` when the whole
    /// tensor is one box (a single MAC).
    pub(crate) fn piece_unit(info: &CryptInfo) -> Option<usize> {
        info.chunks.iter().find_map(|c| match c {
            CryptChunk::XSalsa20Parallel {
                chunk_size, macs, ..
            } if macs.len() > 1 => usize::try_from(*chunk_size).ok().filter(|&c| c > 0),
            _ => None,
        })
    }

    /// Fills `data`, bytes `offset..offset + data.len()` of a tensor of
    /// `total` bytes, with `read(offset within data, piece)` and decrypts it
    /// in place per `info`, each chunk right after it arrives (see
    /// [`tensorizer_crypto::read_and_open_chunks`]). A piece that is not the
    /// whole tensor starts at a multiple of [`Decryptor::piece_unit`].
    pub(crate) fn read_and_open_at(
        &self,
        info: &CryptInfo,
        offset: usize,
        total: usize,
        data: &mut [u8],
        read: impl Fn(usize, &mut [u8]) -> Result<(), tensorizer_io::IoError> + Sync,
    ) -> Result<(), DecryptFailure> {
        let ciphers: Vec<&CryptChunk> = info
            .chunks
            .iter()
            .filter(|c| !matches!(c, CryptChunk::KeyDerivation(_)))
            .collect();
        let [cipher] = ciphers[..] else {
            return Err(DecryptFailure::Layout(format!(
                "expected exactly one cipher chunk in the crypt info, found {}",
                ciphers.len()
            )));
        };
        let key = self.key_for(info)?;
        let backend = Backend::detect();
        let whole = offset == 0 && data.len() == total;
        let (nonce, chunk_size, macs) = match cipher {
            CryptChunk::XSalsa20Parallel {
                chunk_size,
                nonce,
                macs,
            } => (
                nonce,
                usize::try_from(*chunk_size).unwrap_or(usize::MAX),
                macs.as_slice(),
            ),
            CryptChunk::XSalsa20Sequential { nonce, mac } => {
                (nonce, data.len().max(1), std::slice::from_ref(mac))
            }
            CryptChunk::KeyDerivation(_) => unreachable!("filtered above"),
        };
        let (nonce, macs) = if whole {
            (Nonce(*nonce), macs)
        } else {
            // A piece: its chunks, their MACs and their nonces only.
            let expected = total.div_ceil(chunk_size.max(1));
            if macs.len() < 2 || macs.len() != expected || !offset.is_multiple_of(chunk_size) {
                return Err(DecryptFailure::Layout(format!(
                    "bytes {offset}..{} cannot be decrypted alone ({} MACs for {total} bytes in {chunk_size}-byte chunks); raise the destination's buffer size to {total}",
                    offset + data.len(),
                    macs.len()
                )));
            }
            let first = offset / chunk_size;
            let count = data.len().div_ceil(chunk_size);
            (
                Nonce(*nonce).add(first as u64),
                &macs[first..(first + count).min(macs.len())],
            )
        };
        tensorizer_crypto::read_and_open_chunks(backend, &key, &nonce, chunk_size, data, macs, read)
            .map_err(|e| match e {
                tensorizer_crypto::ReadOrOpen::Read(e) => DecryptFailure::Read(e),
                tensorizer_crypto::ReadOrOpen::Open(e) => DecryptFailure::Crypto(e),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(salt: u8) -> CryptInfo {
        CryptInfo {
            chunks: vec![CryptChunk::KeyDerivation(KeyDerivation {
                method: 1,
                opslimit: 1,
                memlimit: 8192,
                alg: 2,
                salt: vec![salt; 16],
            })],
        }
    }

    #[test]
    fn distinct_derivation_records_are_bounded_and_each_derived_once() {
        let limits = KdfLimits {
            max_records: 3,
            ..Default::default()
        };
        let d = Decryptor::new(Decryption::passphrase("pw"), limits);
        // Many readers asking for the same record: one derivation.
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| d.key_for(&record(1)).unwrap());
            }
        });
        assert_eq!(d.derived.lock().unwrap().len(), 1);
        d.key_for(&record(2)).unwrap();
        d.key_for(&record(3)).unwrap();
        let Err(DecryptFailure::Crypto(e)) = d.key_for(&record(4)) else {
            panic!("a fourth record must be refused");
        };
        assert!(e.to_string().contains("more than 3 distinct"), "{e}");
        // Known records still work.
        assert!(d.key_for(&record(2)).is_ok());
    }
}
