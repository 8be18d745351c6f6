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
use crate::path::PathSet;
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

impl RecordSpec {
    /// Bytes of this record's index entry (`tagged`: with the u32 version
    /// tag every entry carries once a file holds a long tensor).
    pub fn entry_len(&self, tagged: bool) -> usize {
        self.index_entry(0, 0, 0).encoded_len(tagged)
    }

    fn index_entry(&self, header_offset: u64, data_offset: u64, data_length: u64) -> IndexEntry {
        IndexEntry {
            name: self.name.clone(),
            tensor_type: self.tensor_type,
            dtype: self.dtype.clone(),
            shape: self.shape.clone(),
            wide_dims: self.shape.is_long(),
            header_offset,
            data_offset,
            data_length,
        }
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
    /// Plans a file holding `records` in order: a [`StreamPlan`] whose index
    /// block is sized to fit them all (at least `options.min_index_len`).
    pub fn new(records: Vec<RecordSpec>, options: PlanOptions) -> Result<Self> {
        let tagged = records.iter().any(|r| r.shape.is_long());
        let needed: u64 = records.iter().map(|r| r.entry_len(tagged) as u64).sum();
        let mut stream = StreamPlan::new(PlanOptions {
            min_index_len: needed.max(options.min_index_len),
            ..options
        });
        let mut headers = Vec::with_capacity(records.len());
        for r in records {
            headers.push(stream.push(r)?.header);
        }
        Ok(Self {
            metadata: stream.metadata(),
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
        finish_header(&self.headers[i], hasher, crypt_info)
    }
}

/// A file laid out one record at a time, as the Python writer lays it out
/// while tensors are handed to it: a fixed index block reserved up front,
/// each record placed after the previous one, the version raised by what
/// arrives (FORMAT.md §1.2, §6). A streaming writer writes each record as
/// soon as it is placed and the prologue ([`StreamPlan::metadata`]) last.
/// For the same records the result is [`FilePlan`]'s, byte for byte, as long
/// as the entries fit the block; when they do not, [`StreamPlan::push`]
/// fails as Python fails ("Metadata overflow"), since the records already
/// written sit where a larger block would have to go.
#[derive(Debug, Clone)]
pub struct StreamPlan {
    encrypted: bool,
    index_len: u64,
    version: FormatVersion,
    long_seen: bool,
    names: PathSet,
    entries: Vec<IndexEntry>,
    /// Σ untagged entry lengths.
    entries_len: u64,
    tensor_size: u64,
    /// Where the next record's header goes.
    end: u64,
}

/// Where one record of a [`StreamPlan`] goes, and its header to fill in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedRecord {
    /// Position of the record in the file.
    pub index: usize,
    /// The header with placeholder (zero) hashes and MACs.
    pub header: TensorHeader,
    /// Offset of the header.
    pub header_offset: u64,
    /// Offset of the data (`header_offset` + the header's length).
    pub data_offset: u64,
}

impl PlacedRecord {
    /// A hasher already fed with the header's hashable bytes: feed it the
    /// plaintext while writing it, then pass it to [`PlacedRecord::finish_header`].
    pub fn hasher(&self) -> Result<TensorHasher> {
        self.header.verifier(|_| true)
    }

    /// The header with the hashes of a [`PlacedRecord::hasher`] fed the whole
    /// plaintext, and the final crypt info (MACs) if encrypted. The hashes do
    /// not cover the crypt info, so it may change; its length may not.
    pub fn finish_header(
        &self,
        hasher: TensorHasher,
        crypt_info: Option<CryptInfo>,
    ) -> Result<Vec<u8>> {
        finish_header(&self.header, hasher, crypt_info)
    }

    /// Bytes of data.
    pub fn data_length(&self) -> u64 {
        self.header.data_length
    }
}

impl StreamPlan {
    /// An empty file whose index block holds `options.min_index_len` bytes of
    /// entries ([`PYTHON_INDEX_LEN`] for byte identity with Python).
    pub fn new(options: PlanOptions) -> Self {
        Self {
            encrypted: options.encrypted,
            index_len: options.min_index_len,
            version: if options.encrypted {
                FormatVersion::ENCRYPTION
            } else {
                FormatVersion::NON_OPAQUE
            },
            long_seen: false,
            names: PathSet::new(),
            entries: Vec::new(),
            entries_len: 0,
            tensor_size: 0,
            end: INDEX_OFFSET + options.min_index_len,
        }
    }

    /// Places the next record after the last one. On error nothing changes:
    /// the plan stays as it was, and a writer may go on or give up.
    pub fn push(&mut self, r: RecordSpec) -> Result<PlacedRecord> {
        if r.name.as_bytes().is_empty() {
            // Python writes it, then cannot read the file back.
            return Err(FormatError::Unencodable {
                tensor: String::new(),
                reason: "empty tensor name".into(),
            });
        }
        if r.crypt_info.is_some() != self.encrypted {
            return Err(FormatError::Unencodable {
                tensor: r.name.to_string(),
                reason:
                    "crypt info must be given for every tensor of an encrypted file, and only then"
                        .into(),
            });
        }
        let wide_dims = r.shape.is_long();
        let long_seen = self.long_seen || wide_dims;
        let entries_len = self.entries_len + r.entry_len(false) as u64;
        let count = self.entries.len() as u64 + 1;
        let index_bytes = entries_len + if long_seen { 4 * count } else { 0 };
        if index_bytes > self.index_len {
            return Err(FormatError::Unencodable {
                tensor: r.name.to_string(),
                reason: format!(
                    "Metadata overflow: {count} index entries take {index_bytes} bytes, more \
                     than the {} reserved for the index",
                    self.index_len
                ),
            });
        }
        let data_length = r.data_length()?;
        let encrypted_data = r.crypt_info.as_ref().is_some_and(CryptInfo::is_encrypted);
        let kinds: &[HashKind] = if encrypted_data {
            &[HashKind::Sha256]
        } else {
            &[HashKind::Crc32, HashKind::Sha256]
        };
        let header = TensorHeader {
            module_idx: r.module_idx,
            tensor_type: r.tensor_type,
            name: r.name.clone(),
            dtype: r.dtype.clone(),
            shape: r.shape.clone(),
            wide_dims,
            hashes: kinds.iter().map(|&k| StoredHash::placeholder(k)).collect(),
            crypt_info: r.crypt_info.clone(),
            unparsed: Vec::new(),
            data_length,
        };
        let header_offset = self.end;
        let data_offset = header_offset + header.encoded_len() as u64;
        let end = data_offset
            .checked_add(data_length)
            .ok_or_else(|| FormatError::Unencodable {
                tensor: r.name.to_string(),
                reason: "file would exceed 2^64 bytes".into(),
            })?;
        // Last, so that a refused record leaves no trace.
        self.names.insert(r.name.path())?;
        if r.meta {
            self.version = self.version.max(FormatVersion::META_TENSOR);
        } else {
            // Python counts no bytes for meta tensors, even the 0-d one's.
            self.tensor_size += data_length;
        }
        if r.dtype.is_opaque() {
            self.version = self.version.max(FormatVersion::OPAQUE);
        }
        if wide_dims {
            self.version = self.version.max(FormatVersion::LONG_TENSOR);
        }
        self.long_seen = long_seen;
        self.entries_len = entries_len;
        self.end = end;
        let index = self.entries.len();
        self.entries
            .push(r.index_entry(header_offset, data_offset, data_length));
        Ok(PlacedRecord {
            index,
            header,
            header_offset,
            data_offset,
        })
    }

    /// The file header and index as of now: written last, over the block
    /// reserved at the start.
    pub fn metadata(&self) -> Metadata {
        // Flags reach the disk from version 4 on; a v3 file is encrypted by its version alone.
        let flags = if self.version >= FormatVersion::META_TENSOR {
            FeatureFlags {
                encrypted: self.encrypted,
                versioned_headers: self.long_seen,
            }
        } else {
            FeatureFlags::default()
        };
        Metadata {
            header: FileHeader {
                version: self.version,
                flags,
                tensor_size: self.tensor_size,
                tensor_count: self.entries.len() as u64,
            },
            index_len: self.index_len,
            entries: self.entries.clone(),
        }
    }

    /// Offset of the terminator: where the next record would go.
    pub fn terminator_offset(&self) -> u64 {
        self.end
    }

    /// File size once finished, terminator included.
    pub fn file_len(&self) -> u64 {
        self.end + TERMINATOR.len() as u64
    }

    /// Offset of the first record (the end of the reserved index block).
    pub fn records_offset(&self) -> u64 {
        INDEX_OFFSET + self.index_len
    }

    /// Records placed so far.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True before the first record.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn finish_header(
    header: &TensorHeader,
    hasher: TensorHasher,
    crypt_info: Option<CryptInfo>,
) -> Result<Vec<u8>> {
    let mut header = header.clone();
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
