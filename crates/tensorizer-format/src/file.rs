//! A whole file held in memory (or memory-mapped), parsed without copying
//! tensor data: the counterpart of `safetensors::SafeTensors::deserialize`.

use crate::error::{FormatError, Result};
use crate::index::{IndexEntry, Metadata};
use crate::tensor_header::TensorHeader;

/// A parsed view over the bytes of a complete `.tensors` file.
#[derive(Debug, Clone)]
pub struct TensorizerFile<'a> {
    metadata: Metadata,
    bytes: &'a [u8],
}

/// One tensor of a [`TensorizerFile`]: its index entry, its parsed header
/// and its stored data (ciphertext for encrypted tensors).
#[derive(Debug, Clone)]
pub struct Record<'a> {
    /// The index entry.
    pub entry: &'a IndexEntry,
    /// The per-tensor header, checked against the entry.
    pub header: TensorHeader,
    /// `data_length` bytes at `data_offset`.
    pub data: &'a [u8],
}

impl<'a> TensorizerFile<'a> {
    /// Parses header and index and checks that every record lies inside `bytes`.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let metadata = Metadata::parse(bytes)?;
        metadata.check_file_len(bytes.len() as u64)?;
        Ok(Self { metadata, bytes })
    }

    /// Header and index.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.metadata.entries.len()
    }

    /// True when the file lists no tensor.
    pub fn is_empty(&self) -> bool {
        self.metadata.entries.is_empty()
    }

    /// Parses record `i` (its header, checked against the index).
    pub fn record(&'a self, i: usize) -> Result<Record<'a>> {
        let entry = &self.metadata.entries[i];
        let header_bytes = &self.bytes[entry.header_offset as usize..entry.data_offset as usize];
        let header = parse_header_at(header_bytes, entry, self.metadata.header.has_crypt_info())?;
        Ok(Record {
            entry,
            header,
            data: &self.bytes[entry.data_offset as usize..entry.end_offset() as usize],
        })
    }

    /// Every record in file order.
    pub fn records(&'a self) -> impl Iterator<Item = Result<Record<'a>>> + 'a {
        (0..self.len()).map(move |i| self.record(i))
    }
}

/// Parses the header of `entry` from exactly the bytes between its header
/// and data offsets, and checks it against the entry. Errors carry the
/// header's absolute offset.
pub fn parse_header_at(
    bytes: &[u8],
    entry: &IndexEntry,
    has_crypt_info: bool,
) -> Result<TensorHeader> {
    let header =
        TensorHeader::parse(bytes, entry.wide_dims, has_crypt_info).map_err(|e| match e {
            FormatError::InvalidTensorHeader { reason, .. } => FormatError::InvalidTensorHeader {
                offset: entry.header_offset,
                reason: format!("tensor {:?}: {reason}", entry.name.to_string()),
            },
            other => other,
        })?;
    header.check_matches(entry)?;
    Ok(header)
}
