//! Hugging Face safetensors headers, parsed and checked without I/O.
//!
//! A safetensors file is an 8-byte little-endian length `n`, `n` bytes of
//! JSON, then the tensors' bytes back to back:
//!
//! ```text
//! {"__metadata__": {"format": "pt"},
//!  "w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}, ...}
//! ```
//!
//! The rules are those of the `safetensors` crate, plus two it leaves out:
//! duplicate names are refused (serde keeps the last one silently), and
//! every size is checked against the file's real length before anything is
//! allocated for it. The engine reads a safetensors file through the same
//! plan as a `.tensors` file: [`SafetensorsHeader::index_entries`] gives
//! index entries whose records have no header of their own.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::dtype::{Dtype, DtypeString};
use crate::error::{FormatError, Result};
use crate::index::{IndexEntry, Shape, TensorName, TensorType};
use crate::path::TensorPath;

/// Bytes of the length prefix.
pub const PREFIX_LEN: u64 = 8;

/// The largest JSON header accepted (the `safetensors` crate's limit).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// The key of the free-form string map.
pub const METADATA_KEY: &str = "__metadata__";

/// One tensor of a safetensors file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetensorsTensor {
    /// Its name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions.
    pub shape: Vec<u64>,
    /// Absolute offset of its first byte in the file.
    pub start: u64,
    /// Absolute offset past its last byte.
    pub end: u64,
}

/// A parsed and validated safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetensorsHeader {
    /// Bytes of JSON after the prefix.
    pub json_len: u64,
    /// The `__metadata__` map, if the file has one.
    pub metadata: Option<BTreeMap<String, String>>,
    /// The tensors in the order of their bytes.
    pub tensors: Vec<SafetensorsTensor>,
}

fn invalid(tensor: &str, reason: impl Into<String>) -> FormatError {
    FormatError::InvalidSafetensors {
        tensor: tensor.to_owned(),
        reason: reason.into(),
    }
}

/// The tensorizer dtype with the same bytes as a safetensors dtype name.
/// Sub-byte types (`F4`, `F6_E2M3`, `F6_E3M2`) count elements, not bytes,
/// and have none.
pub fn dtype_from_name(name: &str) -> Option<Dtype> {
    Some(match name {
        "BOOL" => Dtype::Bool,
        "U8" => Dtype::U8,
        "I8" => Dtype::I8,
        "I16" => Dtype::I16,
        "U16" => Dtype::U16,
        "I32" => Dtype::I32,
        "U32" => Dtype::U32,
        "I64" => Dtype::I64,
        "U64" => Dtype::U64,
        "F16" => Dtype::F16,
        "BF16" => Dtype::BF16,
        "F32" => Dtype::F32,
        "F64" => Dtype::F64,
        "C64" => Dtype::C64,
        "F8_E5M2" => Dtype::F8E5M2,
        "F8_E4M3" => Dtype::F8E4M3FN,
        "F8_E5M2FNUZ" => Dtype::F8E5M2FNUZ,
        "F8_E4M3FNUZ" => Dtype::F8E4M3FNUZ,
        "F8_E8M0" => Dtype::F8E8M0FNU,
        _ => return None,
    })
}

/// The safetensors dtype name of a tensorizer dtype, if it has one.
pub fn dtype_name(dtype: Dtype) -> Option<&'static str> {
    const NAMES: &[&str] = &[
        "BOOL",
        "U8",
        "I8",
        "I16",
        "U16",
        "I32",
        "U32",
        "I64",
        "U64",
        "F16",
        "BF16",
        "F32",
        "F64",
        "C64",
        "F8_E5M2",
        "F8_E4M3",
        "F8_E5M2FNUZ",
        "F8_E4M3FNUZ",
        "F8_E8M0",
    ];
    NAMES
        .iter()
        .copied()
        .find(|n| dtype_from_name(n) == Some(dtype))
}

/// A tensor's entry as written, before its rules are checked (unknown
/// fields are ignored, as by the `safetensors` crate).
#[derive(Deserialize)]
struct RawTensor {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

/// The top-level object: names in file order, duplicates refused.
struct RawHeader {
    metadata: Option<BTreeMap<String, String>>,
    tensors: Vec<(String, RawTensor)>,
}

impl<'de> Deserialize<'de> for RawHeader {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Top;
        impl<'de> Visitor<'de> for Top {
            type Value = RawHeader;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of tensors")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<RawHeader, A::Error> {
                let mut metadata = None;
                let mut tensors: Vec<(String, RawTensor)> = Vec::new();
                let mut seen = std::collections::HashSet::new();
                while let Some(name) = map.next_key::<String>()? {
                    if !seen.insert(name.clone()) {
                        return Err(de::Error::custom(format!(
                            "tensor {name:?}: the name appears twice"
                        )));
                    }
                    if name == METADATA_KEY {
                        let m: Option<BTreeMap<String, String>> =
                            map.next_value().map_err(|e| {
                                de::Error::custom(format!(
                                    "{METADATA_KEY} must map strings to strings: {e}"
                                ))
                            })?;
                        metadata = m;
                        continue;
                    }
                    let t: RawTensor = map.next_value().map_err(|e| {
                        de::Error::custom(format!(
                            "tensor {name:?}: expected {{\"dtype\", \"shape\", \"data_offsets\"}}: {e}"
                        ))
                    })?;
                    tensors.push((name, t));
                }
                Ok(RawHeader { metadata, tensors })
            }
        }
        d.deserialize_map(Top)
    }
}

impl SafetensorsHeader {
    /// Reads the JSON header's length from the first [`PREFIX_LEN`] bytes
    /// and checks it against the file's length and [`MAX_HEADER_LEN`].
    pub fn json_len(prefix: &[u8], file_len: u64) -> Result<u64> {
        let Some(bytes) = prefix.get(..PREFIX_LEN as usize) else {
            return Err(FormatError::Truncated {
                what: "safetensors length prefix",
                needed: PREFIX_LEN,
                available: prefix.len() as u64,
            });
        };
        let n = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
        if n > MAX_HEADER_LEN {
            return Err(invalid(
                "",
                format!(
                    "the JSON header claims {n} bytes, which exceeds limit of {MAX_HEADER_LEN} bytes"
                ),
            ));
        }
        let available = file_len.saturating_sub(PREFIX_LEN);
        if n > available {
            return Err(FormatError::Truncated {
                what: "safetensors JSON header",
                needed: PREFIX_LEN + n,
                available: file_len,
            });
        }
        if n < 2 {
            return Err(invalid(
                "",
                format!("a JSON header of {n} bytes cannot hold an object"),
            ));
        }
        Ok(n)
    }

    /// True when `first_bytes` (at least 9 of them) start like a safetensors
    /// file of `file_len` bytes: a plausible length and a JSON object.
    pub fn sniff(first_bytes: &[u8], file_len: u64) -> bool {
        Self::json_len(first_bytes, file_len).is_ok() && first_bytes.get(8) == Some(&b'{')
    }

    /// Parses and validates `json` (the [`SafetensorsHeader::json_len`]
    /// bytes after the prefix) of a file of `file_len` bytes.
    pub fn parse(json: &[u8], file_len: u64) -> Result<Self> {
        let json_len = json.len() as u64;
        let data_start = PREFIX_LEN + json_len;
        if data_start > file_len {
            return Err(FormatError::Truncated {
                what: "safetensors JSON header",
                needed: data_start,
                available: file_len,
            });
        }
        let text = std::str::from_utf8(json)
            .map_err(|e| invalid("", format!("the JSON header is not UTF-8: {e}")))?;
        if !text.starts_with('{') {
            return Err(invalid("", "the JSON header does not start with '{'"));
        }
        // Deep JSON is an error (serde_json's depth limit where a value is
        // read) or skipped without recursion (in ignored fields).
        let raw: RawHeader = serde_json::from_str(text)
            .map_err(|e| invalid("", format!("the header is not valid JSON: {e}")))?;
        let data_len = file_len - data_start;
        let mut tensors = Vec::with_capacity(raw.tensors.len());
        for (name, t) in raw.tensors {
            let dtype = dtype_from_name(&t.dtype).ok_or_else(|| match t.dtype.as_str() {
                "F4" | "F6_E2M3" | "F6_E3M2" => invalid(
                    &name,
                    format!(
                        "dtype {} packs sub-byte elements, which this reader does not load",
                        t.dtype
                    ),
                ),
                other => invalid(
                    &name,
                    format!("Unsupported dtype {other:?} (unknown to safetensors)"),
                ),
            })?;
            let (start, end) = t.data_offsets;
            if end < start {
                return Err(invalid(
                    &name,
                    format!("data_offsets [{start}, {end}] end before they start"),
                ));
            }
            if end > data_len {
                return Err(invalid(
                    &name,
                    format!(
                        "the file is truncated: data_offsets [{start}, {end}] run past the {data_len} bytes of data in it"
                    ),
                ));
            }
            let bytes = t
                .shape
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d))
                .and_then(|n| n.checked_mul(dtype.itemsize() as u64))
                .ok_or_else(|| {
                    invalid(
                        &name,
                        format!("shape {:?} overflows 64-bit byte counts", t.shape),
                    )
                })?;
            if bytes != end - start {
                return Err(invalid(
                    &name,
                    format!(
                        "Shape claims {bytes} bytes ({:?} x {}), but offsets reserve {} (data_offsets [{start}, {end}])",
                        t.shape,
                        t.dtype,
                        end - start
                    ),
                ));
            }
            tensors.push(SafetensorsTensor {
                name,
                dtype,
                shape: t.shape,
                start: data_start + start,
                end: data_start + end,
            });
        }
        // Zero-byte tensors sort before the tensor at their offset.
        tensors.sort_by_key(|t| (t.start, t.end));
        let mut expected = data_start;
        let mut before: Option<&SafetensorsTensor> = None;
        for t in &tensors {
            let at = |offset: u64| offset - data_start;
            let (tensor, rule) = match before {
                Some(prev) if t.start < expected => (&prev.name, "overlaps with next tensor"),
                Some(prev) if t.start > expected => {
                    (&prev.name, "leaves a hole before the next tensor")
                }
                None if t.start != expected => (
                    &t.name,
                    "leaves a hole: the first tensor does not start at 0",
                ),
                _ => {
                    expected = t.end;
                    before = Some(t);
                    continue;
                }
            };
            return Err(invalid(
                tensor,
                format!(
                    "{rule} {:?} (ends at {}, next starts at {})",
                    t.name,
                    at(expected),
                    at(t.start)
                ),
            ));
        }
        if expected != file_len {
            return Err(invalid(
                "",
                format!(
                    "the tensors end at byte {expected} but the file has {file_len}: {} extra bytes belong to no tensor",
                    file_len - expected
                ),
            ));
        }
        Ok(Self {
            json_len,
            metadata: raw.metadata,
            tensors,
        })
    }

    /// Offset of the first tensor byte.
    pub fn data_start(&self) -> u64 {
        PREFIX_LEN + self.json_len
    }

    /// The tensors as index entries of the engine's plan: state-dict
    /// entries in byte order whose records hold data only (the header
    /// offset equals the data offset).
    pub fn index_entries(&self) -> Vec<IndexEntry> {
        self.tensors
            .iter()
            .map(|t| {
                let shape = Shape(t.shape.clone());
                IndexEntry {
                    name: TensorName::from(TensorPath::from(t.name.as_str())),
                    tensor_type: TensorType::StateDict,
                    dtype: DtypeString::new(t.dtype),
                    wide_dims: shape.is_long(),
                    shape,
                    header_offset: t.start,
                    data_offset: t.start,
                    data_length: t.end - t.start,
                }
            })
            .collect()
    }
}

/// A whole file's bytes checked in one call (for tests and fuzzing).
pub fn parse_file(bytes: &[u8]) -> Result<SafetensorsHeader> {
    let n = SafetensorsHeader::json_len(bytes, bytes.len() as u64)?;
    SafetensorsHeader::parse(
        &bytes[PREFIX_LEN as usize..(PREFIX_LEN + n) as usize],
        bytes.len() as u64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(json: &str, data: usize) -> Vec<u8> {
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(json.as_bytes());
        out.resize(out.len() + data, 7);
        out
    }

    fn err(json: &str, data: usize) -> String {
        parse_file(&file(json, data)).unwrap_err().to_string()
    }

    #[test]
    fn parses_tensors_in_byte_order_with_metadata() {
        let json = r#"{"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},"__metadata__":{"format":"pt"},"a":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]},"e":{"dtype":"I64","shape":[0],"data_offsets":[16,16]}}"#;
        let h = parse_file(&file(json, 16)).unwrap();
        let names: Vec<_> = h.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "e"]);
        assert_eq!(h.metadata.as_ref().unwrap()["format"], "pt");
        assert_eq!(h.tensors[0].dtype, Dtype::BF16);
        let entries = h.index_entries();
        assert_eq!(entries[1].data_offset, 8 + json.len() as u64 + 8);
        assert_eq!(entries[1].header_size(), 0);
        assert_eq!(entries[2].data_length, 0);
    }

    #[test]
    fn each_rule_is_named() {
        let t = |name: &str, dtype: &str, shape: &str, offsets: &str| {
            format!(r#""{name}":{{"dtype":"{dtype}","shape":{shape},"data_offsets":{offsets}}}"#)
        };
        let one = |body: String| format!("{{{body}}}");
        assert!(err(&one(t("w", "F32", "[2]", "[0,8]")), 4).contains("truncated"));
        assert!(err(&one(t("w", "F32", "[3]", "[0,8]")), 8).contains("Shape claims 12 bytes"));
        assert!(err(&one(t("w", "Q7", "[2]", "[0,8]")), 8).contains("Unsupported dtype"));
        assert!(err(&one(t("w", "F4", "[2]", "[0,1]")), 1).contains("sub-byte"));
        assert!(err(&one(t("w", "F32", "[2]", "[8,0]")), 8).contains("end before"));
        let overlap = format!(
            "{},{}",
            t("a", "F32", "[2]", "[0,8]"),
            t("b", "F32", "[2]", "[4,12]")
        );
        assert!(err(&one(overlap), 12).contains("overlaps"));
        let hole = format!(
            "{},{}",
            t("a", "F32", "[1]", "[0,4]"),
            t("b", "F32", "[1]", "[8,12]")
        );
        assert!(err(&one(hole), 12).contains("hole"));
        assert!(err(&one(t("w", "F32", "[1]", "[0,4]")), 8).contains("belong to no tensor"));
        let dup = format!(
            "{},{}",
            t("a", "F32", "[1]", "[0,4]"),
            t("a", "F32", "[1]", "[4,8]")
        );
        assert!(err(&one(dup), 8).contains("appears twice"));
        let huge = t("w", "F32", "[4294967296,4294967296,4294967296]", "[0,8]");
        assert!(err(&one(huge), 8).contains("overflows"));
        assert!(err(r#"{"__metadata__":{"a":1}}"#, 0).contains("strings to strings"));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(err(&format!(r#"{{"w":{deep}}}"#), 0).contains("tensor \"w\""));
        assert!(err("[1, 2]", 0).contains("start with"));
    }

    #[test]
    fn hostile_lengths_are_refused_before_allocating() {
        let mut bytes = (1u64 << 63).to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        let e = parse_file(&bytes).unwrap_err().to_string();
        assert!(e.contains("exceeds limit"), "{e}");
        let mut bytes = 1000u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        assert!(matches!(
            parse_file(&bytes),
            Err(FormatError::Truncated { .. })
        ));
        assert!(matches!(
            parse_file(b"abc"),
            Err(FormatError::Truncated { .. })
        ));
    }
}
