//! Loaded tensors and borrowed tensor data for writing.

use tensorizer_format::{Dtype, DtypeString, Shape, TensorPath, TensorType};

use crate::buffer::AlignedBuffer;
use crate::element::Element;
use crate::error::{Error, Result};

/// A tensor loaded into host memory: its description and its bytes in an
/// owned, 64-byte aligned buffer (little-endian, C order).
#[derive(Debug, Clone)]
pub struct Tensor {
    pub(crate) path: TensorPath,
    pub(crate) module_idx: u16,
    pub(crate) tensor_type: TensorType,
    pub(crate) dtype: DtypeString,
    pub(crate) shape: Shape,
    pub(crate) meta: bool,
    pub(crate) data: AlignedBuffer,
}

impl Tensor {
    /// The tensor's name.
    pub fn path(&self) -> &TensorPath {
        &self.path
    }

    /// The name as text (plain names as they are, structured ones as JSON).
    pub fn name(&self) -> String {
        self.path.to_string()
    }

    /// Module position (0 for state-dict entries).
    pub fn module_idx(&self) -> u16 {
        self.module_idx
    }

    /// PARAM, BUFFER or STATE_DICT.
    pub fn tensor_type(&self) -> TensorType {
        self.tensor_type
    }

    /// Element type.
    pub fn dtype(&self) -> Dtype {
        self.dtype.dtype()
    }

    /// Element type as spelled in the file.
    pub fn dtype_string(&self) -> &DtypeString {
        &self.dtype
    }

    /// Dimensions.
    pub fn shape(&self) -> &[u64] {
        self.shape.dims()
    }

    /// True for a meta tensor (stored without data; loaded as zeros).
    pub fn is_meta(&self) -> bool {
        self.meta
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.data
    }

    /// The elements as `&[T]`; an error unless `T` matches the dtype.
    ///
    /// ```
    /// # use tensorizer::{Dtype, Serializer, TensorData, Deserializer};
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("m.tensors");
    /// # let mut s = Serializer::new();
    /// # s.write_state_dict([("w", TensorData::from_slice(&[2, 2], &[1.0f32, 2.0, 3.0, 4.0])?)])?;
    /// # s.write_to_file(&path)?;
    /// let tensors = Deserializer::open(&path)?.read_all()?;
    /// let w: &[f32] = tensors[0].as_slice()?;
    /// assert_eq!(w, &[1.0, 2.0, 3.0, 4.0]);
    /// assert!(tensors[0].as_slice::<half::bf16>().is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn as_slice<T: Element>(&self) -> Result<&[T]> {
        if T::DTYPE != self.dtype() {
            return Err(Error::DtypeMismatch {
                tensor: self.name(),
                actual: self.dtype(),
                requested: T::DTYPE,
            });
        }
        // The buffer is 64-byte aligned and holds whole elements.
        Ok(bytemuck::cast_slice(&self.data))
    }

    /// Borrows this tensor as data to write (meta tensors stay meta).
    pub fn as_data(&self) -> TensorData<'_> {
        TensorData {
            dtype: self.dtype.clone(),
            shape: self.shape.clone(),
            bytes: (!self.meta).then_some(&self.data[..]),
        }
    }
}

/// Borrowed tensor bytes with their dtype and shape, ready to be written.
///
/// Like `safetensors`' `View`: the writer never copies data into an
/// intermediate buffer.
#[derive(Debug, Clone)]
pub struct TensorData<'a> {
    pub(crate) dtype: DtypeString,
    pub(crate) shape: Shape,
    /// `None` for a meta tensor.
    pub(crate) bytes: Option<&'a [u8]>,
}

impl<'a> TensorData<'a> {
    /// Raw little-endian bytes; their length must equal `numel * itemsize`.
    pub fn new(dtype: Dtype, shape: &[u64], bytes: &'a [u8]) -> Result<Self> {
        Self::with_spelling(DtypeString::new(dtype), shape, bytes)
    }

    /// Like [`TensorData::new`] with an explicit dtype spelling (e.g. the
    /// opaque `<V2\0torch.uint16` that torch < 2.3 wrote).
    pub fn with_spelling(dtype: DtypeString, shape: &[u64], bytes: &'a [u8]) -> Result<Self> {
        let shape = Shape::from(shape);
        if shape.byte_len(dtype.dtype().itemsize()) != Some(bytes.len() as u64) {
            return Err(Error::DataLength {
                len: bytes.len(),
                shape: shape.0,
                dtype: dtype.dtype(),
            });
        }
        Ok(Self {
            dtype,
            shape,
            bytes: Some(bytes),
        })
    }

    /// Typed elements.
    pub fn from_slice<T: Element>(shape: &[u64], elements: &'a [T]) -> Result<Self> {
        Self::new(T::DTYPE, shape, bytemuck::cast_slice(elements))
    }

    /// A meta tensor: dtype and shape only. Readers load it as zeros.
    pub fn meta(dtype: Dtype, shape: &[u64]) -> Self {
        Self {
            dtype: DtypeString::new(dtype),
            shape: Shape::from(shape),
            bytes: None,
        }
    }

    /// Element type.
    pub fn dtype(&self) -> Dtype {
        self.dtype.dtype()
    }

    /// Dimensions.
    pub fn shape(&self) -> &[u64] {
        self.shape.dims()
    }
}
