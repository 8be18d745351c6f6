//! The per-tensor header in front of each tensor's data (FORMAT.md §3).

use std::ops::Range;

use crate::crypt_info::CryptInfo;
use crate::cursor::Cursor;
use crate::dtype::DtypeString;
use crate::error::{FormatError, Result};
use crate::hash::{HashKind, StoredHash, TensorHasher};
use crate::index::{IndexEntry, Shape, TensorName, TensorType};

/// The smallest possible header: sizes, module index, type, an empty name,
/// an empty dtype, rank 0, an empty hash section and the data length.
pub const MIN_HEADER_LEN: u64 = 26;

/// A parsed per-tensor header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorHeader {
    /// Position of the owning module in `named_modules()` (0 for state dicts).
    pub module_idx: u16,
    /// PARAM, BUFFER or STATE_DICT.
    pub tensor_type: TensorType,
    /// Name as stored.
    pub name: TensorName,
    /// Dtype as stored.
    pub dtype: DtypeString,
    /// Dimensions.
    pub shape: Shape,
    /// Dimensions stored as u64 (long tensor in a v5 file; the index tag says so).
    pub wide_dims: bool,
    /// Hash entries in stored order.
    pub hashes: Vec<StoredHash>,
    /// The crypt-info block; present in every header of an encrypted file.
    pub crypt_info: Option<CryptInfo>,
    /// Bytes between the last known field and `data_length`. The Python writer
    /// never emits any and the Python reader skips them; kept for exact
    /// re-encoding.
    pub unparsed: Vec<u8>,
    /// Bytes of data following the header.
    pub data_length: u64,
}

impl TensorHeader {
    /// Parses a whole header (starting with its `u64 header_size`).
    ///
    /// `wide_dims` comes from the index entry (tag 5); `has_crypt_info` from
    /// the file header.
    pub fn parse(bytes: &[u8], wide_dims: bool, has_crypt_info: bool) -> Result<Self> {
        let mut c = Cursor::new(bytes, "tensor header");
        let header_size = c.u64()?;
        if header_size == 0 {
            return Err(FormatError::InvalidTensorHeader {
                offset: 0,
                reason: "header size 0 (end-of-tensors marker where a tensor was expected)".into(),
            });
        }
        if header_size != bytes.len() as u64 || header_size < MIN_HEADER_LEN {
            return Err(FormatError::InvalidTensorHeader {
                offset: 0,
                reason: format!(
                    "header size field says {header_size} bytes, header has {}",
                    bytes.len()
                ),
            });
        }
        // data_length lives in the last 8 bytes whatever precedes it.
        let (body, tail) = bytes.split_at(bytes.len() - 8);
        let data_length = i64::from_le_bytes(tail.try_into().expect("8 bytes"));
        let data_length =
            u64::try_from(data_length).map_err(|_| FormatError::InvalidTensorHeader {
                offset: 0,
                reason: format!("negative data length {data_length}"),
            })?;
        let mut c = Cursor::new(body, "tensor header");
        c.take(8)?;
        let module_idx = c.u16()?;
        let tensor_type = TensorType::from_u8(c.u8()?)?;
        let name_len = c.u16()?;
        let name = TensorName::parse(c.take(usize::from(name_len))?)?;
        let dtype_len = c.u8()?;
        let dtype = DtypeString::parse(c.take(usize::from(dtype_len))?)?;
        let rank = c.u8()?;
        let shape = Shape::parse(&mut c, rank, wide_dims)?;
        let hashes = parse_hashes(&mut c, &name)?;
        let crypt_info = if has_crypt_info {
            let len = c.u64()?;
            let len = usize::try_from(len)
                .ok()
                .filter(|&l| l <= c.remaining())
                .ok_or_else(|| FormatError::InvalidCryptInfo {
                    tensor: name.to_string(),
                    reason: format!(
                        "block claims {len} bytes, header has {} left",
                        c.remaining()
                    ),
                })?;
            Some(CryptInfo::parse(c.take(len)?, &name.to_string())?)
        } else {
            None
        };
        let unparsed = c.take(c.remaining())?.to_vec();
        Ok(Self {
            module_idx,
            tensor_type,
            name,
            dtype,
            shape,
            wide_dims,
            hashes,
            crypt_info,
            unparsed,
            data_length,
        })
    }

    /// Encodes the header; the stored `header_size` is computed.
    pub fn encode(&self) -> Result<Vec<u8>> {
        Ok(self.encode_with_layout()?.0)
    }

    fn encode_with_layout(&self) -> Result<(Vec<u8>, Layout)> {
        let unencodable = |reason: &str| FormatError::Unencodable {
            tensor: self.name.to_string(),
            reason: reason.to_owned(),
        };
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&self.module_idx.to_le_bytes());
        out.push(self.tensor_type as u8);
        let name_len = u16::try_from(self.name.as_bytes().len())
            .map_err(|_| unencodable("name longer than 65535 bytes"))?;
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(self.name.as_bytes());
        let dtype_len = u8::try_from(self.dtype.as_str().len())
            .map_err(|_| unencodable("dtype string longer than 255 bytes"))?;
        out.push(dtype_len);
        out.extend_from_slice(self.dtype.as_str().as_bytes());
        self.shape.encode(&mut out, self.wide_dims, &self.name)?;
        let section_len: usize = 1 + self
            .hashes
            .iter()
            .map(|h| 2 + h.kind().value_len())
            .sum::<usize>();
        let section_len = u16::try_from(section_len).map_err(|_| unencodable("too many hashes"))?;
        out.extend_from_slice(&section_len.to_le_bytes());
        out.push(u8::try_from(self.hashes.len()).map_err(|_| unencodable("too many hashes"))?);
        let mut hash_values = Vec::with_capacity(self.hashes.len());
        for h in &self.hashes {
            out.push(h.kind() as u8);
            out.push(h.kind().value_len() as u8);
            let at = out.len();
            match h {
                StoredHash::Crc32(v) => out.extend_from_slice(&v.to_le_bytes()),
                StoredHash::Sha256(d) => out.extend_from_slice(d),
            }
            hash_values.push(at..out.len());
        }
        let crypt = self.crypt_info.as_ref().map(|ci| {
            let at = out.len();
            ci.encode(&mut out);
            at..out.len()
        });
        out.extend_from_slice(&self.unparsed);
        out.extend_from_slice(&self.data_length.to_le_bytes());
        let size = out.len() as u64;
        out[..8].copy_from_slice(&size.to_le_bytes());
        Ok((out, Layout { hash_values, crypt }))
    }

    /// Bytes [`TensorHeader::encode`] produces.
    pub fn encoded_len(&self) -> usize {
        8 + 2
            + 1
            + 2
            + self.name.as_bytes().len()
            + 1
            + self.dtype.as_str().len()
            + self.shape.encoded_len(self.wide_dims)
            + 3
            + self
                .hashes
                .iter()
                .map(|h| 2 + h.kind().value_len())
                .sum::<usize>()
            + self.crypt_info.as_ref().map_or(0, CryptInfo::encoded_len)
            + self.unparsed.len()
            + 8
    }

    /// The header bytes that the hashes cover: the encoded header with every
    /// hash value zeroed and the crypt-info block (including its length
    /// prefix) cut out (FORMAT.md §3.2).
    pub fn hashable_bytes(&self) -> Result<Vec<u8>> {
        let (mut bytes, layout) = self.encode_with_layout()?;
        for r in layout.hash_values {
            bytes[r].fill(0);
        }
        if let Some(crypt) = layout.crypt {
            // Python hashes header[..crypt_start] + the data_length only: the
            // crypt block and anything after it are excluded.
            let tail = bytes.len() - 8;
            bytes.drain(crypt.start..tail);
        }
        Ok(bytes)
    }

    /// Recomputes the stored hashes accepted by `check` over this header and
    /// `data` and compares; the first difference is an error.
    pub fn verify(&self, data: &[u8], check: impl Fn(HashKind) -> bool) -> Result<()> {
        if !self.hashes.iter().any(|h| check(h.kind())) {
            return Ok(());
        }
        let mut h = self.verifier(check)?;
        h.update(data);
        self.check_hashes(h)
    }

    /// [`TensorHeader::verify`] for data that arrives in pieces: a hasher of
    /// the stored kinds accepted by `check`, fed with this header's hashable
    /// bytes. Feed it the data, then pass it to [`TensorHeader::check_hashes`].
    pub fn verifier(&self, check: impl Fn(HashKind) -> bool) -> Result<TensorHasher> {
        let mut h = TensorHasher::new(
            self.hashes
                .iter()
                .map(StoredHash::kind)
                .filter(|&k| check(k)),
        );
        h.update(&self.hashable_bytes()?);
        Ok(h)
    }

    /// Compares what a [`TensorHeader::verifier`] computed with the stored
    /// hashes; the first difference is an error.
    pub fn check_hashes(&self, verifier: TensorHasher) -> Result<()> {
        self.compare_hashes(&verifier.finish())
    }

    /// The first stored hash that differs from the computed one of its kind
    /// is an error; kinds not computed are not checked.
    fn compare_hashes(&self, computed: &[StoredHash]) -> Result<()> {
        for expected in &self.hashes {
            let actual = computed.iter().find(|c| c.kind() == expected.kind());
            if let Some(actual) = actual.filter(|a| *a != expected) {
                return Err(FormatError::HashMismatch {
                    tensor: self.name.to_string(),
                    kind: expected.kind().name(),
                    expected: expected.to_hex(),
                    actual: actual.to_hex(),
                });
            }
        }
        Ok(())
    }

    /// Checks the stored CRC-32 (if any) against data whose consecutive
    /// pieces had CRC-32s `pieces` (`(crc, length)` each, in order), as a
    /// loader computes them while each piece is still in cache after its
    /// read. CRC-32s combine; SHA-256 needs [`TensorHeader::verify`].
    pub fn check_crc32_pieces(&self, pieces: &[(u32, u64)]) -> Result<()> {
        if self.stored_hash(HashKind::Crc32).is_none() {
            return Ok(());
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&self.hashable_bytes()?);
        for &(piece, len) in pieces {
            crc.combine(&crc32fast::Hasher::new_with_initial_len(piece, len));
        }
        self.compare_hashes(&[StoredHash::Crc32(crc.finalize())])
    }

    /// The stored hash of `kind`, if any.
    pub fn stored_hash(&self, kind: HashKind) -> Option<StoredHash> {
        self.hashes.iter().copied().find(|h| h.kind() == kind)
    }

    /// Checks that this header describes the same tensor as its index entry.
    pub fn check_matches(&self, entry: &IndexEntry) -> Result<()> {
        let field = if self.name != entry.name {
            Some("name")
        } else if self.tensor_type != entry.tensor_type {
            Some("tensor type")
        } else if self.dtype != entry.dtype {
            Some("dtype")
        } else if self.shape != entry.shape {
            Some("shape")
        } else if self.data_length != entry.data_length {
            Some("data length")
        } else if self.encoded_len() as u64 != entry.header_size() {
            Some("header size")
        } else {
            None
        };
        if self.data_length == 0
            && let Some(info) = self.crypt_info.as_ref().filter(|c| c.is_encrypted())
        {
            // The writer seals no chunk for a record without data: these
            // MACs belong to data that was cut away.
            return Err(FormatError::InvalidCryptInfo {
                tensor: entry.name.to_string(),
                reason: format!(
                    "{} cipher chunk(s) for a record that stores no data",
                    info.chunks.len()
                ),
            });
        }
        match field {
            Some(field) => Err(FormatError::IndexMismatch {
                tensor: entry.name.to_string(),
                field,
            }),
            None => Ok(()),
        }
    }
}

struct Layout {
    hash_values: Vec<Range<usize>>,
    crypt: Option<Range<usize>>,
}

fn parse_hashes(c: &mut Cursor<'_>, name: &TensorName) -> Result<Vec<StoredHash>> {
    let bad = |reason: String| FormatError::InvalidHash {
        tensor: name.to_string(),
        reason,
    };
    let section_len = c.u16()?;
    let mut s = Cursor::new(c.take(usize::from(section_len))?, "hash section");
    let count = s.u8()?;
    let mut hashes = Vec::with_capacity(usize::from(count).min(s.remaining() / 6));
    for _ in 0..count {
        let kind = s.u8()?;
        let len = s.u8()?;
        let h = match (kind, len) {
            (0, 4) => StoredHash::Crc32(s.u32()?),
            (1, 32) => StoredHash::Sha256(s.array()?),
            (0 | 1, len) => return Err(bad(format!("hash type {kind} with length {len}"))),
            (kind, _) => return Err(bad(format!("unknown hash type {kind}"))),
        };
        hashes.push(h);
    }
    if s.remaining() != 0 {
        return Err(bad(format!(
            "{} unexpected bytes at the end of the hash section",
            s.remaining()
        )));
    }
    Ok(hashes)
}
