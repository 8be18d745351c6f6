//! The metadata index: one entry per tensor, right after the file header
//! (FORMAT.md §2). Listing, filtering and planning reads need nothing else.

use crate::cursor::Cursor;
use crate::dtype::DtypeString;
use crate::error::{FormatError, Result};
use crate::file_header::{FileHeader, FormatVersion, INDEX_OFFSET};
use crate::path::{TensorPath, check_paths_distinct};

/// The largest metadata index (`metadata_len`) a reader accepts: the
/// prologue is read whole before anything else, so its size, which the
/// file (or a server lying about the file) states, must be bounded.
pub const MAX_INDEX_LEN: u64 = 256 << 20;

/// How the Python library classifies a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TensorType {
    /// A module parameter (`write_module`).
    Param = 0,
    /// A module buffer (`write_module`).
    Buffer = 1,
    /// An entry of a state dict (`write_state_dict`).
    StateDict = 2,
}

impl TensorType {
    /// Decodes the stored byte.
    pub fn from_u8(b: u8) -> Result<Self> {
        match b {
            0 => Ok(Self::Param),
            1 => Ok(Self::Buffer),
            2 => Ok(Self::StateDict),
            other => Err(FormatError::InvalidTensorType(other)),
        }
    }

    /// The Python enum name (`"PARAM"`, `"BUFFER"`, `"STATE_DICT"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Param => "PARAM",
            Self::Buffer => "BUFFER",
            Self::StateDict => "STATE_DICT",
        }
    }
}

/// A tensor's name as stored, with its decoded path.
///
/// Keeps the exact bytes so a parsed file re-encodes byte for byte even when
/// the JSON of a structured name is not in canonical form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorName {
    raw: Vec<u8>,
    path: TensorPath,
}

impl TensorName {
    /// Decodes stored bytes.
    pub fn parse(raw: &[u8]) -> Result<Self> {
        Ok(Self {
            path: TensorPath::decode(raw)?,
            raw: raw.to_vec(),
        })
    }

    /// The stored bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// The decoded path.
    pub fn path(&self) -> &TensorPath {
        &self.path
    }
}

impl From<TensorPath> for TensorName {
    fn from(path: TensorPath) -> Self {
        Self {
            raw: path.encode(),
            path,
        }
    }
}

impl std::fmt::Display for TensorName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.path.fmt(f)
    }
}

/// Dimensions, outermost first.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(pub Vec<u64>);

impl Shape {
    /// True when a dimension needs 64 bits (>= 2^32): such a tensor is
    /// "long" and forces data-format version 5.
    pub fn is_long(&self) -> bool {
        self.0.iter().any(|&d| d > u64::from(u32::MAX))
    }

    /// Number of elements (1 for rank 0), `None` on overflow.
    pub fn numel(&self) -> Option<u64> {
        self.0.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
    }

    /// Bytes of `numel` elements of `itemsize` bytes, `None` on overflow.
    pub fn byte_len(&self, itemsize: usize) -> Option<u64> {
        self.numel()?.checked_mul(itemsize as u64)
    }

    /// The dimensions.
    pub fn dims(&self) -> &[u64] {
        &self.0
    }

    pub(crate) fn parse(c: &mut Cursor<'_>, rank: u8, wide: bool) -> Result<Self> {
        let mut dims = Vec::with_capacity(usize::from(rank));
        for _ in 0..rank {
            dims.push(if wide { c.u64()? } else { u64::from(c.u32()?) });
        }
        Ok(Self(dims))
    }

    /// Appends `u8 rank` and the dimensions (u64 if `wide`, else u32).
    pub(crate) fn encode(&self, out: &mut Vec<u8>, wide: bool, tensor: &TensorName) -> Result<()> {
        let rank = u8::try_from(self.0.len()).map_err(|_| FormatError::Unencodable {
            tensor: tensor.to_string(),
            reason: format!("rank {} exceeds 255", self.0.len()),
        })?;
        out.push(rank);
        for &d in &self.0 {
            if wide {
                out.extend_from_slice(&d.to_le_bytes());
            } else {
                let d = u32::try_from(d).map_err(|_| FormatError::Unencodable {
                    tensor: tensor.to_string(),
                    reason: "dimension >= 2^32 needs a version 5 file".into(),
                })?;
                out.extend_from_slice(&d.to_le_bytes());
            }
        }
        Ok(())
    }

    /// Bytes taken by rank and dimensions.
    pub(crate) fn encoded_len(&self, wide: bool) -> usize {
        1 + self.0.len() * if wide { 8 } else { 4 }
    }
}

impl From<Vec<u64>> for Shape {
    fn from(v: Vec<u64>) -> Self {
        Self(v)
    }
}

impl From<&[u64]> for Shape {
    fn from(v: &[u64]) -> Self {
        Self(v.to_vec())
    }
}

impl<const N: usize> From<[u64; N]> for Shape {
    fn from(v: [u64; N]) -> Self {
        Self(v.to_vec())
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Smallest entry: empty name and dtype, rank 0 (29 bytes, 33 with a tag).
const MIN_ENTRY_LEN: u64 = 29;

/// One metadata-index entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// Name as stored.
    pub name: TensorName,
    /// PARAM, BUFFER or STATE_DICT.
    pub tensor_type: TensorType,
    /// Dtype as stored.
    pub dtype: DtypeString,
    /// Dimensions.
    pub shape: Shape,
    /// Dimensions are stored as u64 (entry tag 5, v5 files). The per-tensor
    /// header uses the same width.
    pub wide_dims: bool,
    /// Absolute offset of the per-tensor header.
    pub header_offset: u64,
    /// Absolute offset of the data (`header_offset + header_size`).
    pub data_offset: u64,
    /// Bytes of data stored (0 for meta and zero-element tensors).
    pub data_length: u64,
}

impl IndexEntry {
    /// True for a meta tensor: no data stored although the shape has elements
    /// (it loads as zeros).
    pub fn is_meta(&self) -> bool {
        self.data_length == 0 && self.shape.numel().is_none_or(|n| n > 0)
    }

    /// Bytes a reader materialises: `data_length`, or for meta tensors the
    /// full size of the zero-filled tensor (`None` if that overflows).
    pub fn deserialized_length(&self) -> Option<u64> {
        if self.data_length > 0 {
            Some(self.data_length)
        } else {
            self.shape.byte_len(self.dtype.dtype().itemsize())
        }
    }

    /// Size of the per-tensor header, from the two offsets.
    pub fn header_size(&self) -> u64 {
        self.data_offset - self.header_offset
    }

    /// End of this record (exclusive).
    pub fn end_offset(&self) -> u64 {
        self.data_offset + self.data_length
    }

    fn parse(c: &mut Cursor<'_>, entry: u64, versioned: bool) -> Result<Self> {
        let wide_dims = if versioned {
            match c.u32()? {
                1 => false,
                5 => true,
                tag => return Err(FormatError::UnsupportedEntryVersion { entry, tag }),
            }
        } else {
            false
        };
        let name_len = c.u16()?;
        let name = TensorName::parse(c.take(usize::from(name_len))?)?;
        let tensor_type = TensorType::from_u8(c.u8()?)?;
        let dtype_len = c.u8()?;
        let dtype = DtypeString::parse(c.take(usize::from(dtype_len))?)?;
        let rank = c.u8()?;
        let shape = Shape::parse(c, rank, wide_dims)?;
        let header_offset = c.u64()?;
        let data_offset = c.u64()?;
        let data_length = c.u64()?;
        let e = Self {
            name,
            tensor_type,
            dtype,
            shape,
            wide_dims,
            header_offset,
            data_offset,
            data_length,
        };
        e.check_consistent()?;
        Ok(e)
    }

    fn check_consistent(&self) -> Result<()> {
        let bad = |reason: String| FormatError::InvalidOffset {
            tensor: self.name.to_string(),
            reason,
        };
        if self.data_offset
            < self
                .header_offset
                .saturating_add(crate::tensor_header::MIN_HEADER_LEN)
        {
            return Err(bad(format!(
                "data offset {} leaves no room for a header at {}",
                self.data_offset, self.header_offset
            )));
        }
        if self.data_offset.checked_add(self.data_length).is_none() {
            return Err(bad("data offset + length overflows".into()));
        }
        // Python asserts that stored data has exactly numel * itemsize bytes;
        // 0 is legal for meta and zero-element tensors.
        if self.data_length != 0
            && self.shape.byte_len(self.dtype.dtype().itemsize()) != Some(self.data_length)
        {
            return Err(bad(format!(
                "data length {} does not match shape {} of {}",
                self.data_length,
                self.shape,
                self.dtype.dtype()
            )));
        }
        Ok(())
    }

    /// Encoded size of this entry.
    pub fn encoded_len(&self, versioned: bool) -> usize {
        let tag = if versioned { 4 } else { 0 };
        tag + 2
            + self.name.as_bytes().len()
            + 1
            + 1
            + self.dtype.as_str().len()
            + self.shape.encoded_len(self.wide_dims)
            + 24
    }

    /// Appends the entry; `versioned` = the file has flag bit 1.
    pub fn encode(&self, out: &mut Vec<u8>, versioned: bool) -> Result<()> {
        let unencodable = |reason: &str| FormatError::Unencodable {
            tensor: self.name.to_string(),
            reason: reason.to_owned(),
        };
        if versioned {
            out.extend_from_slice(&(if self.wide_dims { 5u32 } else { 1u32 }).to_le_bytes());
        } else if self.wide_dims {
            return Err(unencodable("u64 dimensions need a versioned (v5) index"));
        }
        let name_len = u16::try_from(self.name.as_bytes().len())
            .map_err(|_| unencodable("name longer than 65535 bytes"))?;
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(self.name.as_bytes());
        out.push(self.tensor_type as u8);
        let dtype_len = u8::try_from(self.dtype.as_str().len())
            .map_err(|_| unencodable("dtype string longer than 255 bytes"))?;
        out.push(dtype_len);
        out.extend_from_slice(self.dtype.as_str().as_bytes());
        self.shape.encode(out, self.wide_dims, &self.name)?;
        out.extend_from_slice(&self.header_offset.to_le_bytes());
        out.extend_from_slice(&self.data_offset.to_le_bytes());
        out.extend_from_slice(&self.data_length.to_le_bytes());
        Ok(())
    }
}

/// File header plus the parsed index: everything needed to list a file and
/// plan reads of its tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// The file header.
    pub header: FileHeader,
    /// The `metadata_len` field: size of the index block (262 144 from Python).
    pub index_len: u64,
    /// Entries, in file order.
    pub entries: Vec<IndexEntry>,
}

impl Metadata {
    /// Bytes a reader must fetch from offset 0 to parse the metadata, read
    /// from the first 73 bytes (file header and `metadata_len`).
    pub fn prologue_len(first_bytes: &[u8]) -> Result<u64> {
        FileHeader::parse(first_bytes)?;
        let mut c = Cursor::new(first_bytes, "index length");
        c.take(crate::file_header::FILE_HEADER_LEN)?;
        let index_len = c.u64()?;
        if index_len > MAX_INDEX_LEN {
            return Err(FormatError::IndexTooLarge {
                index_len,
                max: MAX_INDEX_LEN,
            });
        }
        INDEX_OFFSET
            .checked_add(index_len)
            .ok_or(FormatError::Truncated {
                what: "metadata index",
                needed: u64::MAX,
                available: first_bytes.len() as u64,
            })
    }

    /// Parses header and index from the start of a file; `prologue` must hold
    /// at least [`Metadata::prologue_len`] bytes (more is fine).
    ///
    /// Checks every entry (names, dtypes, offsets, lengths) and that no two
    /// names conflict; allocation is bounded by the bytes given.
    pub fn parse(prologue: &[u8]) -> Result<Self> {
        let header = FileHeader::parse(prologue)?;
        let end = Self::prologue_len(prologue)?;
        let index = prologue
            .get(INDEX_OFFSET as usize..)
            .and_then(|rest| rest.get(..usize::try_from(end - INDEX_OFFSET).ok()?))
            .ok_or(FormatError::Truncated {
                what: "metadata index",
                needed: end,
                available: prologue.len() as u64,
            })?;
        let index_len = index.len() as u64;
        let versioned = header.flags.versioned_headers;
        let min_entry = MIN_ENTRY_LEN + if versioned { 4 } else { 0 };
        let max = index_len / min_entry;
        if header.tensor_count > max {
            return Err(FormatError::TooManyTensors {
                count: header.tensor_count,
                index_len,
                max,
            });
        }
        let mut c = Cursor::new(index, "metadata index");
        // Bounded by the check above: at most index_len / 29 entries.
        let mut entries = Vec::with_capacity(header.tensor_count as usize);
        for i in 0..header.tensor_count {
            let entry = IndexEntry::parse(&mut c, i, versioned)?;
            if entry.header_offset < end {
                return Err(FormatError::InvalidOffset {
                    tensor: entry.name.to_string(),
                    reason: format!(
                        "header offset {} lies inside the index (which ends at {end})",
                        entry.header_offset
                    ),
                });
            }
            if entry.is_meta() && header.version < FormatVersion::META_TENSOR {
                // Meta tensors came with data version 4; an older file
                // claiming one has had a record's data cut away.
                return Err(FormatError::InvalidOffset {
                    tensor: entry.name.to_string(),
                    reason: format!(
                        "stores no data for {} elements, a meta tensor, which data version {} \
                         does not have (they came with version 4)",
                        entry
                            .shape
                            .numel()
                            .map_or("too many".into(), |n| n.to_string()),
                        header.version.get()
                    ),
                });
            }
            entries.push(entry);
        }
        check_paths_distinct(entries.iter().map(|e| e.name.path()))?;
        Ok(Self {
            header,
            index_len,
            entries,
        })
    }

    /// Offset of the first tensor record.
    pub fn records_offset(&self) -> u64 {
        INDEX_OFFSET + self.index_len
    }

    /// Checks that every record lies inside a file of `file_len` bytes.
    pub fn check_file_len(&self, file_len: u64) -> Result<()> {
        for e in &self.entries {
            if e.end_offset() > file_len {
                return Err(FormatError::InvalidOffset {
                    tensor: e.name.to_string(),
                    reason: format!(
                        "record ends at byte {} but the file has only {file_len} bytes (truncated?)",
                        e.end_offset()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Encodes magic, header, `metadata_len` and the index block, zero-padded
    /// to `index_len` bytes.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(INDEX_OFFSET as usize + self.index_len as usize);
        self.header.encode(&mut out);
        out.extend_from_slice(&self.index_len.to_le_bytes());
        for e in &self.entries {
            e.encode(&mut out, self.header.flags.versioned_headers)?;
        }
        let want = INDEX_OFFSET as usize + self.index_len as usize;
        if out.len() > want {
            return Err(FormatError::Unencodable {
                tensor: String::new(),
                reason: format!(
                    "index entries need {} bytes, index block has {}",
                    out.len() - INDEX_OFFSET as usize,
                    self.index_len
                ),
            });
        }
        out.resize(want, 0);
        Ok(out)
    }
}
