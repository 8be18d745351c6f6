//! Element types and their on-disk dtype strings (FORMAT.md §3.4).
//!
//! A dtype string is a numpy array-interface type (`<f4`, `|b1`, ...), or for
//! types numpy lacks an "opaque" void type of the same size followed by `\0`
//! and the torch name (`<V2\0torch.bfloat16`). [`DtypeString`] keeps the exact
//! bytes it was parsed from, so re-encoding a parsed file is byte-identical
//! even where two spellings mean the same type (`<u2` and `<V2\0torch.uint16`).

use std::fmt;
use std::str::FromStr;

use crate::error::{FormatError, Result};

macro_rules! dtypes {
    ($( $(#[$doc:meta])* $variant:ident = ($torch:literal, $size:literal, $numpy:expr) ),+ $(,)?) => {
        /// The element type of a tensor.
        ///
        /// Named after torch dtypes; every type the Python library 2.12 writes
        /// (with torch 1.13 through 2.8) is here.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum Dtype {
            $( $(#[$doc])* $variant, )+
        }

        impl Dtype {
            /// Every known dtype, in declaration order.
            pub const ALL: &'static [Dtype] = &[$(Dtype::$variant),+];

            /// The torch name without the `torch.` prefix, e.g. `"bfloat16"`.
            pub const fn torch_name(self) -> &'static str {
                match self { $(Dtype::$variant => $torch,)+ }
            }

            /// Bytes per element as stored in the file.
            pub const fn itemsize(self) -> usize {
                match self { $(Dtype::$variant => $size,)+ }
            }

            /// The numpy type string, for dtypes numpy can represent.
            pub const fn numpy_str(self) -> Option<&'static str> {
                match self { $(Dtype::$variant => $numpy,)+ }
            }
        }
    };
}

dtypes! {
    /// `torch.bool`, one byte 0 or 1.
    Bool = ("bool", 1, Some("|b1")),
    /// `torch.uint8`.
    U8 = ("uint8", 1, Some("|u1")),
    /// `torch.int8`.
    I8 = ("int8", 1, Some("|i1")),
    /// `torch.int16`.
    I16 = ("int16", 2, Some("<i2")),
    /// `torch.int32`.
    I32 = ("int32", 4, Some("<i4")),
    /// `torch.int64`.
    I64 = ("int64", 8, Some("<i8")),
    /// `torch.uint16` (numpy form `<u2`; torch < 2.3 wrote it opaque).
    U16 = ("uint16", 2, Some("<u2")),
    /// `torch.uint32`.
    U32 = ("uint32", 4, Some("<u4")),
    /// `torch.uint64`.
    U64 = ("uint64", 8, Some("<u8")),
    /// `torch.float16` (IEEE half).
    F16 = ("float16", 2, Some("<f2")),
    /// `torch.float32`.
    F32 = ("float32", 4, Some("<f4")),
    /// `torch.float64`.
    F64 = ("float64", 8, Some("<f8")),
    /// `torch.complex64` (two f32).
    C64 = ("complex64", 8, Some("<c8")),
    /// `torch.complex128` (two f64).
    C128 = ("complex128", 16, Some("<c16")),
    /// `torch.bfloat16` (opaque).
    BF16 = ("bfloat16", 2, None),
    /// `torch.complex32` (two f16, opaque).
    C32 = ("complex32", 4, None),
    /// `torch.float8_e5m2`.
    F8E5M2 = ("float8_e5m2", 1, None),
    /// `torch.float8_e4m3fn`.
    F8E4M3FN = ("float8_e4m3fn", 1, None),
    /// `torch.float8_e5m2fnuz`.
    F8E5M2FNUZ = ("float8_e5m2fnuz", 1, None),
    /// `torch.float8_e4m3fnuz`.
    F8E4M3FNUZ = ("float8_e4m3fnuz", 1, None),
    /// `torch.float8_e8m0fnu`.
    F8E8M0FNU = ("float8_e8m0fnu", 1, None),
    /// `torch.float4_e2m1fn_x2` (two packed fp4 values per byte).
    F4E2M1FNX2 = ("float4_e2m1fn_x2", 1, None),
    /// `torch.bits8`.
    Bits8 = ("bits8", 1, None),
    /// `torch.bits1x8`.
    Bits1x8 = ("bits1x8", 1, None),
    /// `torch.bits2x4`.
    Bits2x4 = ("bits2x4", 1, None),
    /// `torch.bits4x2`.
    Bits4x2 = ("bits4x2", 1, None),
    /// `torch.bits16`.
    Bits16 = ("bits16", 2, None),
    /// `torch.uint1` placeholder (one byte per element in torch).
    UInt1 = ("uint1", 1, None),
    /// `torch.uint2`.
    UInt2 = ("uint2", 1, None),
    /// `torch.uint3`.
    UInt3 = ("uint3", 1, None),
    /// `torch.uint4`.
    UInt4 = ("uint4", 1, None),
    /// `torch.uint5`.
    UInt5 = ("uint5", 1, None),
    /// `torch.uint6`.
    UInt6 = ("uint6", 1, None),
    /// `torch.uint7`.
    UInt7 = ("uint7", 1, None),
    /// `torch.int1`.
    Int1 = ("int1", 1, None),
    /// `torch.int2`.
    Int2 = ("int2", 1, None),
    /// `torch.int3`.
    Int3 = ("int3", 1, None),
    /// `torch.int4`.
    Int4 = ("int4", 1, None),
    /// `torch.int5`.
    Int5 = ("int5", 1, None),
    /// `torch.int6`.
    Int6 = ("int6", 1, None),
    /// `torch.int7`.
    Int7 = ("int7", 1, None),
}

impl Dtype {
    /// Looks a dtype up by torch name, with or without the `torch.` prefix.
    pub fn from_torch_name(name: &str) -> Option<Dtype> {
        let name = name.strip_prefix("torch.").unwrap_or(name);
        Dtype::ALL.iter().copied().find(|d| d.torch_name() == name)
    }

    /// True when the Python writer must store this dtype in opaque form,
    /// which forces data-format version 2.
    pub const fn is_opaque(self) -> bool {
        self.numpy_str().is_none()
    }

    fn from_numpy_kind(kind: u8, size: usize) -> Option<Dtype> {
        Some(match (kind, size) {
            (b'b', 1) => Dtype::Bool,
            (b'u', 1) => Dtype::U8,
            (b'i', 1) => Dtype::I8,
            (b'i', 2) => Dtype::I16,
            (b'i', 4) => Dtype::I32,
            (b'i', 8) => Dtype::I64,
            (b'u', 2) => Dtype::U16,
            (b'u', 4) => Dtype::U32,
            (b'u', 8) => Dtype::U64,
            (b'f', 2) => Dtype::F16,
            (b'f', 4) => Dtype::F32,
            (b'f', 8) => Dtype::F64,
            (b'c', 8) => Dtype::C64,
            (b'c', 16) => Dtype::C128,
            _ => return None,
        })
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.torch_name())
    }
}

impl FromStr for Dtype {
    type Err = FormatError;

    /// Parses a torch name (`"bfloat16"`, `"torch.float32"`).
    fn from_str(s: &str) -> Result<Self> {
        Dtype::from_torch_name(s).ok_or_else(|| FormatError::InvalidDtype {
            dtype: s.to_owned(),
            reason: "unknown torch dtype name",
        })
    }
}

/// A dtype together with the exact string that spells it in a file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DtypeString {
    raw: String,
    dtype: Dtype,
}

/// The byte separating the numpy part from the torch name.
pub const OPAQUE_SEPARATOR: char = '\0';

impl DtypeString {
    /// The spelling the Python writer uses for `dtype` (numpy form where one
    /// exists, otherwise opaque).
    pub fn new(dtype: Dtype) -> Self {
        let raw = match dtype.numpy_str() {
            Some(s) => s.to_owned(),
            None => Self::opaque_spelling(dtype),
        };
        Self { raw, dtype }
    }

    /// The opaque spelling `<V{n}\0torch.{name}` (`|V1` for one-byte types),
    /// which older torch versions used even for `uint16`/`uint32`/`uint64`.
    pub fn opaque(dtype: Dtype) -> Self {
        Self {
            raw: Self::opaque_spelling(dtype),
            dtype,
        }
    }

    fn opaque_spelling(dtype: Dtype) -> String {
        let order = if dtype.itemsize() == 1 { '|' } else { '<' };
        format!(
            "{order}V{}{OPAQUE_SEPARATOR}torch.{}",
            dtype.itemsize(),
            dtype.torch_name()
        )
    }

    /// Parses dtype bytes as stored in an index entry or tensor header.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let lossy = || String::from_utf8_lossy(bytes).into_owned();
        let invalid = |reason| FormatError::InvalidDtype {
            dtype: lossy(),
            reason,
        };
        let raw = std::str::from_utf8(bytes).map_err(|_| invalid("not UTF-8"))?;
        let mut parts = raw.split(OPAQUE_SEPARATOR);
        let numpy = parts.next().unwrap_or_default();
        let torch = parts.next();
        if parts.next().is_some() {
            return Err(invalid("more than one \\0 separator"));
        }
        let np = numpy.as_bytes();
        if np.len() < 3 {
            return Err(invalid("numpy type string too short"));
        }
        match np[0] {
            b'<' | b'|' | b'=' => {}
            b'>' => return Err(invalid("big-endian data is not supported")),
            _ => return Err(invalid("unknown byte-order character")),
        }
        let kind = np[1];
        // Byte slicing: `numpy` may hold multi-byte characters past index 1.
        let size: usize = std::str::from_utf8(&np[2..])
            .ok()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or(invalid("item size is not a decimal number"))?;
        let dtype = if kind == b'V' {
            let torch = torch.ok_or(invalid("opaque (void) type without a torch dtype name"))?;
            let name = torch
                .strip_prefix("torch.")
                .ok_or(invalid("torch dtype name must start with \"torch.\""))?;
            let dtype = Dtype::from_torch_name(name).ok_or(invalid("unknown torch dtype"))?;
            if dtype.itemsize() != size {
                return Err(invalid(
                    "void size differs from the torch dtype's item size",
                ));
            }
            dtype
        } else {
            // Python ignores a torch name after a non-void numpy type.
            Dtype::from_numpy_kind(kind, size)
                .ok_or(invalid("no tensor dtype for this numpy type"))?
        };
        Ok(Self {
            raw: raw.to_owned(),
            dtype,
        })
    }

    /// The element type.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// True when stored in opaque (void + torch name) form.
    pub fn is_opaque(&self) -> bool {
        self.raw.as_bytes().get(1) == Some(&b'V')
    }

    /// The exact string (may contain `\0`).
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl From<Dtype> for DtypeString {
    fn from(dtype: Dtype) -> Self {
        DtypeString::new(dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_spellings_round_trip() {
        for &d in Dtype::ALL {
            let s = DtypeString::new(d);
            let parsed = DtypeString::parse(s.as_str().as_bytes()).unwrap();
            assert_eq!(parsed, s);
            assert_eq!(parsed.dtype(), d);
            assert_eq!(parsed.is_opaque(), d.is_opaque(), "{d}");
        }
        assert_eq!(
            DtypeString::new(Dtype::BF16).as_str(),
            "<V2\0torch.bfloat16"
        );
        assert_eq!(
            DtypeString::new(Dtype::F8E4M3FN).as_str(),
            "|V1\0torch.float8_e4m3fn"
        );
        assert_eq!(DtypeString::new(Dtype::C128).as_str(), "<c16");
        assert_eq!(
            DtypeString::opaque(Dtype::U16).as_str(),
            "<V2\0torch.uint16"
        );
    }

    #[test]
    fn rejects_bad_strings() {
        for bad in [
            &b""[..],
            b"<f",
            b">f4",
            b"<x4",
            b"<V2",
            b"<V2\0torch.nope",
            b"<V4\0torch.bfloat16",
            b"<V2\0bfloat16",
            b"<f4\0torch.a\0b",
            b"<f3",
            b"\xff\xfe",
            "<\u{e9}4".as_bytes(),
            b"<f+4",
        ] {
            assert!(DtypeString::parse(bad).is_err(), "{bad:?}");
        }
        // A torch name after a non-void type is ignored, as in Python.
        assert_eq!(
            DtypeString::parse(b"<f4\0torch.whatever").unwrap().dtype(),
            Dtype::F32
        );
    }
}
