//! The candle bridge: tensors of a [`Deserializer`] as `candle_core`
//! tensors, and a `candle_nn::VarBuilder` that reads a model's weights from
//! any tensorizer file or URI — local, HTTP, S3, GCS, Azure, Redis —
//! verified and decrypted on the way, with no local copy.
//!
//! ```no_run
//! use candle_core::{DType, Device};
//! use tensorizer::Deserializer;
//!
//! let weights = Deserializer::open_uri("s3://models/minilm/model.tensors")?;
//! let vb = tensorizer::candle::var_builder(weights, DType::F32, &Device::Cpu)?;
//! // let model = candle_transformers::models::bert::BertModel::load(vb, &config)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Copies: on the CPU, each tensor is read into a `Vec` of its element
//! type, which becomes the candle tensor's storage as is (candle's CPU
//! storage is a `Vec<T>`, so this is the only way to share memory with it).
//! `float8_e4m3fn` tensors are copied once (candle's `F8E4M3` has no
//! plain-bytes view here). On another device, candle's `to_device` makes
//! one host-to-device copy: building a candle CUDA tensor from our own
//! device memory needs candle's `cuda` feature, which needs the CUDA
//! toolkit at build time. A requested dtype other than the stored one is
//! one conversion by candle.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor};
use half::{bf16, f16};
use tensorizer_format::{Dtype, IndexEntry};

use crate::destination::{Destination, TensorInfo};
use crate::error::{Error, Result};
use crate::{Deserializer, TensorPath};

/// The candle dtype a stored dtype loads as, if candle has one.
pub fn candle_dtype(dtype: Dtype) -> Option<DType> {
    Some(match dtype {
        Dtype::U8 => DType::U8,
        Dtype::U32 => DType::U32,
        Dtype::I16 => DType::I16,
        Dtype::I32 => DType::I32,
        Dtype::I64 => DType::I64,
        Dtype::BF16 => DType::BF16,
        Dtype::F16 => DType::F16,
        Dtype::F32 => DType::F32,
        Dtype::F64 => DType::F64,
        Dtype::F8E4M3FN => DType::F8E4M3,
        _ => return None,
    })
}

/// Loads every tensor of `weights` in parallel (the loader's request plan,
/// verification and decryption) onto `device`, keyed by name.
///
/// ```
/// # use tensorizer::{Deserializer, Serializer, TensorData};
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("m.tensors");
/// # let mut s = Serializer::new();
/// # s.write_state_dict([("w", TensorData::from_slice(&[2, 2], &[1.0f32, 2.0, 3.0, 4.0])?)])?;
/// # s.write_to_file(&path)?;
/// let tensors = tensorizer::candle::load(&Deserializer::open(&path)?, &candle_core::Device::Cpu)?;
/// assert_eq!(tensors["w"].to_vec2::<f32>()?, [[1.0, 2.0], [3.0, 4.0]]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn load(weights: &Deserializer, device: &Device) -> Result<HashMap<String, Tensor>> {
    let dest = CandleHost::new(weights);
    weights.load_into(&dest, |_| true)?;
    dest.into_tensors(device)
}

/// A `VarBuilder` whose tensors are read from `weights` on first use, one
/// at a time, converted to `dtype` and put on `device`.
pub fn var_builder(
    weights: Deserializer,
    dtype: DType,
    device: &Device,
) -> Result<candle_nn::VarBuilder<'static>> {
    let backend = TensorizerBackend {
        weights,
        loaded: Mutex::default(),
    };
    Ok(candle_nn::VarBuilder::from_backend(
        Box::new(backend),
        dtype,
        device.clone(),
    ))
}

/// Like [`var_builder`], but every tensor is loaded up front, in parallel:
/// faster for a whole model, at the cost of holding all of it at once.
pub fn var_builder_prefetched(
    weights: Deserializer,
    dtype: DType,
    device: &Device,
) -> Result<candle_nn::VarBuilder<'static>> {
    let tensors = load(&weights, &Device::Cpu)?;
    let backend = TensorizerBackend {
        weights,
        loaded: Mutex::new(tensors),
    };
    Ok(candle_nn::VarBuilder::from_backend(
        Box::new(backend),
        dtype,
        device.clone(),
    ))
}

/// Host memory typed as each tensor's candle element type.
enum Typed {
    U8(Vec<u8>),
    U32(Vec<u32>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    /// Bytes candle copies (`F8E4M3`).
    Raw(Vec<u8>, DType),
}

/// A tensor's buffer: the loader writes its bytes, candle keeps its `Vec`.
struct TypedBuffer(Typed);

macro_rules! typed_bytes {
    ($self:expr, $method:ident) => {
        match $self {
            Typed::U8(v) | Typed::Raw(v, _) => bytemuck::$method(v),
            Typed::U32(v) => bytemuck::$method(v),
            Typed::I16(v) => bytemuck::$method(v),
            Typed::I32(v) => bytemuck::$method(v),
            Typed::I64(v) => bytemuck::$method(v),
            Typed::BF16(v) => bytemuck::$method(v),
            Typed::F16(v) => bytemuck::$method(v),
            Typed::F32(v) => bytemuck::$method(v),
            Typed::F64(v) => bytemuck::$method(v),
        }
    };
}

impl Deref for TypedBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        typed_bytes!(&self.0, cast_slice)
    }
}

impl DerefMut for TypedBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        typed_bytes!(&mut self.0, cast_slice_mut)
    }
}

impl TypedBuffer {
    /// Zeroed memory (`calloc`: pages arrive on first write) for `len`
    /// bytes of `dtype`; `None` when the allocation fails.
    fn zeroed(dtype: DType, len: usize) -> Option<Self> {
        fn z<T: bytemuck::Zeroable>(n: usize) -> Option<Vec<T>> {
            bytemuck::allocation::try_zeroed_vec(n).ok()
        }
        let n = len / dtype.size_in_bytes();
        Some(TypedBuffer(match dtype {
            DType::U8 => Typed::U8(z(n)?),
            DType::U32 => Typed::U32(z(n)?),
            DType::I16 => Typed::I16(z(n)?),
            DType::I32 => Typed::I32(z(n)?),
            DType::I64 => Typed::I64(z(n)?),
            DType::BF16 => Typed::BF16(z(n)?),
            DType::F16 => Typed::F16(z(n)?),
            DType::F32 => Typed::F32(z(n)?),
            DType::F64 => Typed::F64(z(n)?),
            other => Typed::Raw(z(len)?, other),
        }))
    }

    /// The candle tensor owning this memory (`Raw`: a copy of it).
    fn into_tensor(self, shape: Shape) -> candle_core::Result<Tensor> {
        let cpu = &Device::Cpu;
        match self.0 {
            Typed::U8(v) => Tensor::from_vec(v, shape, cpu),
            Typed::U32(v) => Tensor::from_vec(v, shape, cpu),
            Typed::I16(v) => Tensor::from_vec(v, shape, cpu),
            Typed::I32(v) => Tensor::from_vec(v, shape, cpu),
            Typed::I64(v) => Tensor::from_vec(v, shape, cpu),
            Typed::BF16(v) => Tensor::from_vec(v, shape, cpu),
            Typed::F16(v) => Tensor::from_vec(v, shape, cpu),
            Typed::F32(v) => Tensor::from_vec(v, shape, cpu),
            Typed::F64(v) => Tensor::from_vec(v, shape, cpu),
            Typed::Raw(v, dtype) => Tensor::from_raw_buffer(&v, dtype, shape.dims(), cpu),
        }
    }
}

/// Loads tensors into [`TypedBuffer`]s and keeps them as candle tensors.
struct CandleHost {
    path: String,
    loaded: Mutex<HashMap<String, Tensor>>,
}

impl CandleHost {
    fn new(weights: &Deserializer) -> Self {
        Self {
            path: weights.path().display().to_string(),
            loaded: Mutex::default(),
        }
    }

    fn into_tensors(self, device: &Device) -> Result<HashMap<String, Tensor>> {
        let tensors = self.loaded.into_inner().unwrap_or_else(|e| e.into_inner());
        if device.is_cpu() {
            return Ok(tensors);
        }
        tensors
            .into_iter()
            .map(|(name, t)| {
                let t = t
                    .to_device(device)
                    .map_err(|e| candle_error(&self.path, &name, e))?;
                Ok((name, t))
            })
            .collect()
    }
}

fn candle_error(path: &str, tensor: &str, e: candle_core::Error) -> Error {
    Error::Candle {
        path: path.into(),
        tensor: tensor.to_owned(),
        message: e.to_string(),
    }
}

impl Destination for CandleHost {
    type Buffer = TypedBuffer;

    fn allocate(&self, _: usize, entry: &IndexEntry, len: usize) -> Result<TypedBuffer> {
        let dtype = entry.dtype.dtype();
        let candle = candle_dtype(dtype).ok_or_else(|| Error::Candle {
            path: self.path.clone(),
            tensor: entry.name.to_string(),
            message: format!(
                "candle has no dtype for {} (it has uint8, uint32, int16, int32, int64, \
                 bfloat16, float16, float32, float64, float8_e4m3fn)",
                dtype.torch_name()
            ),
        })?;
        TypedBuffer::zeroed(candle, len).ok_or_else(|| Error::Allocation {
            path: self.path.clone().into(),
            tensor: entry.name.to_string(),
            bytes: len as u64,
        })
    }

    fn complete(&self, _: usize, info: TensorInfo, buffer: TypedBuffer) -> Result<()> {
        let name = info.path.to_string();
        let dims: Vec<usize> = info.shape.0.iter().map(|&d| d as usize).collect();
        let tensor = buffer
            .into_tensor(Shape::from(dims))
            .map_err(|e| candle_error(&self.path, &name, e))?;
        self.loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, tensor);
        Ok(())
    }
}

/// The `VarBuilder` backend: reads a tensor the first time it is asked for.
struct TensorizerBackend {
    weights: Deserializer,
    /// Prefetched tensors, or ones read by an earlier `get`, on the CPU.
    loaded: Mutex<HashMap<String, Tensor>>,
}

impl TensorizerBackend {
    fn fetch(&self, name: &str) -> candle_core::Result<Tensor> {
        if let Some(t) = self
            .loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Ok(t.clone());
        }
        let path = TensorPath::from(name);
        if self.weights.position(&path).is_none() {
            return Err(candle_core::Error::CannotFindTensor {
                path: name.to_owned(),
            });
        }
        let dest = CandleHost::new(&self.weights);
        self.weights
            .load_into(&dest, |e| e.name.path() == &path)
            .map_err(candle_core::Error::wrap)?;
        let mut one = dest
            .into_tensors(&Device::Cpu)
            .map_err(candle_core::Error::wrap)?;
        let tensor = one
            .remove(name)
            .ok_or_else(|| candle_core::Error::CannotFindTensor {
                path: name.to_owned(),
            })?;
        Ok(tensor)
    }
}

impl TensorizerBackend {
    /// `tensor` as `dtype` on `device`. Floats convert among themselves
    /// (a model stored in f16 runs in f32, say); an integer tensor where a
    /// float is asked for, or the reverse, is the wrong tensor.
    fn convert(
        &self,
        name: &str,
        tensor: Tensor,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        if tensor.dtype().is_float() != dtype.is_float() {
            return Err(candle_core::Error::Msg(format!(
                "{}: tensor {name} is {:?}, the model asks for {dtype:?}",
                self.weights.path().display(),
                tensor.dtype()
            )));
        }
        tensor.to_dtype(dtype)?.to_device(device)
    }
}

impl candle_nn::var_builder::SimpleBackend for TensorizerBackend {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.fetch(name)?;
        if tensor.shape() != &shape {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("{}: tensor {name}", self.weights.path().display()),
                expected: shape,
                got: tensor.shape().clone(),
            }
            .bt());
        }
        self.convert(name, tensor, dtype, device)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.fetch(name)?;
        self.convert(name, tensor, dtype, device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.weights.position(&TensorPath::from(name)).is_some()
    }
}
