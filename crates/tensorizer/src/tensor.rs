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

fn fill<T>(out: &mut [T], values: &[f64], convert: impl Fn(f64) -> T) {
    for (o, &v) in out.iter_mut().zip(values) {
        *o = convert(v);
    }
}

impl Tensor {
    pub(crate) fn from_parts(info: crate::destination::TensorInfo, data: AlignedBuffer) -> Self {
        Self {
            path: info.path,
            module_idx: info.module_idx,
            tensor_type: info.tensor_type,
            dtype: info.dtype,
            shape: info.shape,
            meta: info.meta,
            data,
        }
    }

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

    /// A copy converted to `dtype`, as the Python library's `dtype=` load
    /// option does: conversions between float16, bfloat16, float32 and
    /// float64 (rounded to nearest even); the same dtype is a plain copy;
    /// anything else is [`Error::Cast`].
    ///
    /// ```
    /// # use tensorizer::{Dtype, Serializer, TensorData, Deserializer};
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("m.tensors");
    /// # let mut s = Serializer::new();
    /// # s.write_state_dict([("w", TensorData::from_slice(&[2], &[1.5f32, -2.0])?)])?;
    /// # s.write_to_file(&path)?;
    /// let w = Deserializer::open(&path)?.read("w")?.cast(Dtype::BF16)?;
    /// assert_eq!(w.as_slice::<half::bf16>()?, &[half::bf16::from_f32(1.5), half::bf16::from_f32(-2.0)]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cast(&self, dtype: Dtype) -> Result<Tensor> {
        use half::{bf16, f16};
        let from = self.dtype();
        if from == dtype {
            return Ok(self.clone());
        }
        let floating = |d: Dtype| matches!(d, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64);
        if !floating(from) || !floating(dtype) {
            return Err(Error::Cast {
                tensor: self.name(),
                from,
                to: dtype,
            });
        }
        let values: Vec<f64> = match from {
            Dtype::F16 => self.as_slice::<f16>()?.iter().map(|v| v.to_f64()).collect(),
            Dtype::BF16 => self
                .as_slice::<bf16>()?
                .iter()
                .map(|v| v.to_f64())
                .collect(),
            Dtype::F32 => self
                .as_slice::<f32>()?
                .iter()
                .map(|&v| f64::from(v))
                .collect(),
            _ => self.as_slice::<f64>()?.to_vec(),
        };
        let bytes = values.len() * dtype.itemsize();
        let mut data = AlignedBuffer::zeroed(bytes).ok_or_else(|| Error::Allocation {
            path: "<cast>".into(),
            tensor: self.name(),
            bytes: bytes as u64,
        })?;
        // The buffer is 64-byte aligned and holds whole elements.
        match dtype {
            Dtype::F16 => fill(
                bytemuck::cast_slice_mut::<u8, f16>(&mut data),
                &values,
                f16::from_f64,
            ),
            Dtype::BF16 => fill(
                bytemuck::cast_slice_mut::<u8, bf16>(&mut data),
                &values,
                bf16::from_f64,
            ),
            Dtype::F32 => fill(
                bytemuck::cast_slice_mut::<u8, f32>(&mut data),
                &values,
                |v| v as f32,
            ),
            _ => fill(
                bytemuck::cast_slice_mut::<u8, f64>(&mut data),
                &values,
                |v| v,
            ),
        }
        Ok(Tensor {
            path: self.path.clone(),
            module_idx: self.module_idx,
            tensor_type: self.tensor_type,
            dtype: dtype.into(),
            shape: self.shape.clone(),
            meta: self.meta,
            data,
        })
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
