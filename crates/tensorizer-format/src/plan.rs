//! Planning a file before writing it (FORMAT.md §1.2, §6).
//!
//! The plan is a pure function of the tensor list: version, flags, index and
//! the offset of every header and data block. A writer can therefore write
//! each tensor's bytes in parallel, at positions known up front, and the
//! result is byte-identical to the Python writer's for the same tensors.

use crate::crypt_info::CryptInfo;
use crate::dtype::DtypeString;
use crate::error::{FormatError, Result};
use crate::file_header::{FeatureFlags, FileHeader, FormatVersion, INDEX_OFFSET};
use crate::hash::{HashKind, StoredHash, TensorHasher};
use crate::index::{IndexEntry, Metadata, Shape, TensorName, TensorType};
use crate::path::check_paths_distinct;
use crate::tensor_header::TensorHeader;

/// Index block the Python writer reserves (256 KiB). Plans use at least this
/// much, so files are byte-identical to Python's; more only when the entries
/// need it (Python would fail with "Metadata overflow").
pub const PYTHON_INDEX_LEN: u64 = 256 * 1024;

/// The zero `u64` after the last record.
pub const TERMINATOR: [u8; 8] = [0; 8];

/// What the writer knows of one tensor before its bytes are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSpec {
    /// Module position (0 for state dicts).
    pub module_idx: u16,
    /// PARAM, BUFFER or STATE_DICT.
    pub tensor_type: TensorType,
    /// Name.
    pub name: TensorName,
    /// Dtype spelling.
    pub dtype: DtypeString,
    /// Dimensions.
    pub shape: Shape,
    /// `true` for a meta tensor: dtype and shape only, no data.
    pub meta: bool,
    /// For encrypted files: this tensor's crypt info with zeroed MACs (empty
    /// for tensors without data). Must be `Some` exactly when the plan is
    /// encrypted.
    pub crypt_info: Option<CryptInfo>,
}

impl RecordSpec {
    /// A plain (unencrypted) record.
    pub fn new(
        module_idx: u16,
        tensor_type: TensorType,
        name: impl Into<TensorName>,
        dtype: impl Into<DtypeString>,
        shape: impl Into<Shape>,
    ) -> Self {
        Self {
            module_idx,
            tensor_type,
            name: name.into(),
            dtype: dtype.into(),
            shape: shape.into(),
            meta: false,
            crypt_info: None,
        }
    }

    /// Bytes of data this record stores: none for a meta tensor, except a
    /// 0-d one, which stores one zero element as the Python writer lays it
    /// out (FORMAT.md §11 c) — the Python reader cannot load the
    /// `data_length 0` encoding of a 0-d meta tensor, so this keeps our files
    /// readable there. Its bytes must be written as zeros.
    pub fn data_length(&self) -> Result<u64> {
        if self.meta && !self.shape.dims().is_empty() {
            return Ok(0);
        }
        self.shape
            .byte_len(self.dtype.dtype().itemsize())
            .ok_or_else(|| FormatError::Unencodable {
                tensor: self.name.to_string(),
                reason: format!("shape {} overflows 64-bit byte counts", self.shape),
            })
    }
}

/// Options of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanOptions {
    /// Every header carries crypt info (data version >= 3).
    pub encrypted: bool,
    /// Smallest index block to reserve; [`PYTHON_INDEX_LEN`] for byte identity.
    pub min_index_len: u64,
}

impl Default for PlanOptions {
    fn default() -> Self {
        Self {
            encrypted: false,
            min_index_len: PYTHON_INDEX_LEN,
        }
    }
}

/// Where everything of a file goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePlan {
    /// Header and index, complete.
    pub metadata: Metadata,
    /// One header per record with placeholder (zero) hashes and MACs; the
    /// writer fills them in with the same lengths.
    pub headers: Vec<TensorHeader>,
}

impl FilePlan {
    /// Plans a file holding `records` in order.
    pub fn new(records: Vec<RecordSpec>, options: PlanOptions) -> Result<Self> {
        check_paths_distinct(records.iter().map(|r| r.name.path()))?;
        let mut version = if options.encrypted {
            FormatVersion::ENCRYPTION
        } else {
            FormatVersion::NON_OPAQUE
        };
        let mut long_seen = false;
        let metas: Vec<bool> = records.iter().map(|r| r.meta).collect();
        let mut entries = Vec::with_capacity(records.len());
        let mut headers = Vec::with_capacity(records.len());
        for r in records {
            if r.name.as_bytes().is_empty() {
                // Python writes it, then cannot read the file back.
                return Err(FormatError::Unencodable {
                    tensor: String::new(),
                    reason: "empty tensor name".into(),
                });
            }
            if r.crypt_info.is_some() != options.encrypted {
                return Err(FormatError::Unencodable {
                    tensor: r.name.to_string(),
                    reason: "crypt info must be given for every tensor of an encrypted file, and only then".into(),
                });
            }
            if r.meta {
                version = version.max(FormatVersion::META_TENSOR);
            }
            if r.dtype.is_opaque() {
                version = version.max(FormatVersion::OPAQUE);
            }
            let wide_dims = r.shape.is_long();
            if wide_dims {
                version = version.max(FormatVersion::LONG_TENSOR);
                long_seen = true;
            }
            let data_length = r.data_length()?;
            let encrypted_data = r.crypt_info.as_ref().is_some_and(CryptInfo::is_encrypted);
            let kinds: &[HashKind] = if encrypted_data {
                &[HashKind::Sha256]
            } else {
                &[HashKind::Crc32, HashKind::Sha256]
            };
            headers.push(TensorHeader {
                module_idx: r.module_idx,
                tensor_type: r.tensor_type,
                name: r.name.clone(),
                dtype: r.dtype.clone(),
                shape: r.shape.clone(),
                wide_dims,
                hashes: kinds.iter().map(|&k| StoredHash::placeholder(k)).collect(),
                crypt_info: r.crypt_info,
                unparsed: Vec::new(),
                data_length,
            });
            entries.push(IndexEntry {
                name: r.name,
                tensor_type: r.tensor_type,
                dtype: r.dtype,
                shape: r.shape,
                wide_dims,
                header_offset: 0,
                data_offset: 0,
                data_length,
            });
        }
        // Flags reach the disk from version 4 on; a v3 file is encrypted by its version alone.
        let flags = if version >= FormatVersion::META_TENSOR {
            FeatureFlags {
                encrypted: options.encrypted,
                versioned_headers: long_seen,
            }
        } else {
            FeatureFlags::default()
        };
        let entries_len: u64 = entries
            .iter()
            .map(|e| e.encoded_len(long_seen) as u64)
            .sum();
        let index_len = entries_len.max(options.min_index_len);
        let mut offset = INDEX_OFFSET + index_len;
        let mut tensor_size = 0u64;
        for ((e, h), meta) in entries.iter_mut().zip(&headers).zip(metas) {
            e.header_offset = offset;
            e.data_offset = offset + h.encoded_len() as u64;
            offset = e.data_offset.checked_add(e.data_length).ok_or_else(|| {
                FormatError::Unencodable {
                    tensor: e.name.to_string(),
                    reason: "file would exceed 2^64 bytes".into(),
                }
            })?;
            // Python counts no bytes for meta tensors, even the 0-d one's.
            if !meta {
                tensor_size += e.data_length;
            }
        }
        let header = FileHeader {
            version,
            flags,
            tensor_size,
            tensor_count: entries.len() as u64,
        };
        Ok(Self {
            metadata: Metadata {
                header,
                index_len,
                entries,
            },
            headers,
        })
    }

    /// Total file size, terminator included.
    pub fn file_len(&self) -> u64 {
        self.metadata
            .entries
            .last()
            .map_or(self.metadata.records_offset(), IndexEntry::end_offset)
            + TERMINATOR.len() as u64
    }

    /// Offset of the terminator.
    pub fn terminator_offset(&self) -> u64 {
        self.file_len() - TERMINATOR.len() as u64
    }

    /// Encodes header `i` with its hashes computed over `plaintext` (the
    /// planned length is unchanged). Takes `&self` so tensors can be sealed in
    /// parallel.
    pub fn seal_header(&self, i: usize, plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut hasher = self.hasher(i)?;
        hasher.update(plaintext);
        self.finish_header(i, hasher, None)
    }

    /// A hasher for record `i` already fed with its header's hashable bytes:
    /// feed it the plaintext piece by piece while writing it, then pass it
    /// to [`FilePlan::finish_header`]. This is how a writer hashes, encrypts
    /// and writes a tensor in one pass over memory.
    pub fn hasher(&self, i: usize) -> Result<TensorHasher> {
        self.headers[i].verifier(|_| true)
    }

    /// Encodes header `i` with the hashes of a [`FilePlan::hasher`] fed the
    /// whole plaintext, and the final crypt info (MACs) if encrypted. The
    /// hashes do not cover the crypt info, so it may change; its length may
    /// not.
    pub fn finish_header(
        &self,
        i: usize,
        hasher: TensorHasher,
        crypt_info: Option<CryptInfo>,
    ) -> Result<Vec<u8>> {
        let mut header = self.headers[i].clone();
        header.hashes = hasher.finish();
        if let Some(ci) = crypt_info {
            if header.crypt_info.as_ref().map(CryptInfo::encoded_len) != Some(ci.encoded_len()) {
                return Err(FormatError::Unencodable {
                    tensor: header.name.to_string(),
                    reason: "final crypt info differs in size from the planned one".into(),
                });
            }
            header.crypt_info = Some(ci);
        }
        header.encode()
    }
}
