//! Rust element types that tensor bytes can be viewed as.

use tensorizer_format::Dtype;

/// A plain-old-data element type with a matching tensor [`Dtype`].
///
/// Implemented for the integer and float types; `bool` and types with no
/// Rust equivalent (complex, float8, ...) are read as bytes.
pub trait Element: bytemuck::Pod {
    /// The dtype whose stored bytes are exactly this type's little-endian bytes.
    const DTYPE: Dtype;
}

macro_rules! elements {
    ($($t:ty => $d:ident),+ $(,)?) => {
        $(impl Element for $t { const DTYPE: Dtype = Dtype::$d; })+
    };
}

elements! {
    u8 => U8, i8 => I8, i16 => I16, i32 => I32, i64 => I64,
    u16 => U16, u32 => U32, u64 => U64,
    f32 => F32, f64 => F64,
    half::f16 => F16, half::bf16 => BF16,
}
