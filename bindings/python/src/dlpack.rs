//! DLPack 0.8 `DLManagedTensor` capsules over our tensors.

use std::ffi::{CStr, c_void};

use pyo3::prelude::*;
use tensorizer::{Dtype, Tensor};

#[repr(C)]
struct DLDevice {
    device_type: i32,
    device_id: i32,
}
#[repr(C)]
struct DLDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}
#[repr(C)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *mut i64,
    strides: *mut i64,
    byte_offset: u64,
}
#[repr(C)]
struct DLManagedTensor {
    dl_tensor: DLTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

/// What a capsule owns: the memory's owner (a host tensor, or the device
/// model whose arena holds the tensor) and the shape array DLPack points to.
struct Owner {
    _memory: Box<dyn Send>,
    _shape: Vec<i64>,
}

/// DLPack's `kDLCPU`.
const DL_CPU: i32 = 1;
/// DLPack's `kDLCUDA`.
const DL_CUDA: i32 = 2;

const NAME: &CStr = c"dltensor";
const USED: &CStr = c"used_dltensor";

/// DLPack's type code and bits for `dtype`, if it has one.
fn dl_type(dtype: Dtype) -> Option<(u8, u8)> {
    Some(match dtype {
        Dtype::U8 => (1, 8),
        Dtype::I8 => (0, 8),
        Dtype::I16 => (0, 16),
        Dtype::I32 => (0, 32),
        Dtype::I64 => (0, 64),
        Dtype::U16 => (1, 16),
        Dtype::U32 => (1, 32),
        Dtype::U64 => (1, 64),
        Dtype::F16 => (2, 16),
        Dtype::BF16 => (4, 16),
        Dtype::F32 => (2, 32),
        Dtype::F64 => (2, 64),
        Dtype::C64 => (5, 64),
        Dtype::C128 => (5, 128),
        _ => return None,
    })
}

unsafe extern "C" fn delete(managed: *mut DLManagedTensor) {
    // SAFETY: `managed` and its context were made by `capsule` below,
    // and DLPack calls the deleter exactly once.
    unsafe {
        let managed = Box::from_raw(managed);
        drop(Box::from_raw(managed.manager_ctx as *mut Owner));
    }
}

unsafe extern "C" fn capsule_destructor(capsule: *mut pyo3::ffi::PyObject) {
    // SAFETY: a capsule still named "dltensor" was never consumed, so
    // its tensor is still ours to free.
    unsafe {
        if pyo3::ffi::PyCapsule_IsValid(capsule, NAME.as_ptr()) == 1 {
            let managed =
                pyo3::ffi::PyCapsule_GetPointer(capsule, NAME.as_ptr()) as *mut DLManagedTensor;
            if let Some(d) = (*managed).deleter {
                d(managed);
            }
        }
    }
}

/// A capsule over a host tensor.
pub fn capsule(py: Python<'_>, tensor: Tensor, raw: bool) -> PyResult<Bound<'_, PyAny>> {
    let data = tensor.as_bytes().as_ptr() as *mut c_void;
    let (dtype, shape, len) = (
        tensor.dtype(),
        tensor.shape().to_vec(),
        tensor.as_bytes().len(),
    );
    let name = tensor.name().to_string();
    let device = DLDevice {
        device_type: DL_CPU,
        device_id: 0,
    };
    make(
        py,
        Box::new(tensor),
        data,
        device,
        (dtype, &shape, len, &name),
        raw,
    )
}

/// A capsule over `tensor` in `model`'s device memory (`kDLCUDA`): the
/// capsule keeps the model's arena alive; the arena is freed with the last
/// tensor that uses it.
#[cfg(feature = "cuda")]
pub fn device_capsule<'py>(
    py: Python<'py>,
    model: &std::sync::Arc<tensorizer::cuda::DeviceModel>,
    tensor: &tensorizer::cuda::DeviceTensor,
    raw: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let data = model.device_ptr(tensor) as *mut c_void;
    let device = DLDevice {
        device_type: DL_CUDA,
        device_id: model.gpu().ordinal() as i32,
    };
    let dtype = tensor.info.dtype.dtype();
    let name = tensor.info.path.to_string();
    let shape = tensor.info.shape.0.clone();
    make(
        py,
        Box::new(model.clone()),
        data,
        device,
        (dtype, &shape, tensor.len, &name),
        raw,
    )
}

/// The capsule of `len` bytes at `data`, typed `dtype` of `shape` (or raw
/// bytes), owned by `memory`.
fn make<'py>(
    py: Python<'py>,
    memory: Box<dyn Send>,
    data: *mut c_void,
    device: DLDevice,
    (dtype, dims, len, name): (Dtype, &[u64], usize, &str),
    raw: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let typed = if raw { None } else { dl_type(dtype) };
    // DLPack sizes are signed: a dimension past i64::MAX is refused, not
    // wrapped to a negative size.
    let too_long = || {
        pyo3::exceptions::PyValueError::new_err(format!(
            "tensor {name:?}: a dimension does not fit DLPack's int64 sizes"
        ))
    };
    let (code, bits, shape) = match typed {
        Some((code, bits)) => (
            code,
            bits,
            dims.iter()
                .map(|&d| i64::try_from(d).map_err(|_| too_long()))
                .collect::<PyResult<Vec<_>>>()?,
        ),
        None => (1, 8, vec![i64::try_from(len).map_err(|_| too_long())?]),
    };
    let mut owner = Box::new(Owner {
        _memory: memory,
        _shape: shape,
    });
    let shape_ptr = owner._shape.as_mut_ptr();
    let ndim = owner._shape.len() as i32;
    let managed = Box::new(DLManagedTensor {
        dl_tensor: DLTensor {
            data,
            device,
            ndim,
            dtype: DLDataType {
                code,
                bits,
                lanes: 1,
            },
            shape: shape_ptr,
            strides: std::ptr::null_mut(),
            byte_offset: 0,
        },
        manager_ctx: Box::into_raw(owner) as *mut c_void,
        deleter: Some(delete),
    });
    let raw = Box::into_raw(managed);
    // SAFETY: a capsule over our heap object; freed by the consumer
    // through `deleter`, or by `capsule_destructor` if never consumed.
    unsafe {
        let obj =
            pyo3::ffi::PyCapsule_New(raw as *mut c_void, NAME.as_ptr(), Some(capsule_destructor));
        if obj.is_null() {
            delete(raw);
            return Err(PyErr::fetch(py));
        }
        Ok(Bound::from_owned_ptr(py, obj))
    }
}

/// Bytes handed to us as a DLPack capsule (`__dlpack__()` of a 1-D uint8
/// CPU tensor or array): the capsule is consumed, as the protocol says, so
/// the producer's memory stays alive until this is dropped, which calls the
/// producer's deleter.
pub struct Imported {
    managed: *mut DLManagedTensor,
    data: *const u8,
    len: usize,
}

// SAFETY: the bytes are only read; the deleters of torch and numpy may run
// on any thread (numpy's takes the GIL itself).
unsafe impl Send for Imported {}
unsafe impl Sync for Imported {}

impl Imported {
    /// Takes a `dltensor` capsule of a 1-D uint8 CPU tensor.
    pub fn bytes(capsule: &Bound<'_, PyAny>) -> PyResult<Self> {
        use pyo3::exceptions::{PyTypeError, PyValueError};
        let ptr = capsule.as_ptr();
        // SAFETY: plain capsule API calls on a live object; the name check
        // makes sure the pointer is a DLManagedTensor.
        let managed = unsafe {
            if pyo3::ffi::PyCapsule_IsValid(ptr, NAME.as_ptr()) != 1 {
                return Err(PyTypeError::new_err(
                    "expected an unconsumed DLPack capsule (\"dltensor\")",
                ));
            }
            pyo3::ffi::PyCapsule_GetPointer(ptr, NAME.as_ptr()) as *mut DLManagedTensor
        };
        if managed.is_null() {
            return Err(PyErr::fetch(capsule.py()));
        }
        // SAFETY: a valid "dltensor" capsule points to a DLManagedTensor
        // whose DLTensor describes live memory.
        let t = unsafe { &(*managed).dl_tensor };
        let cpu = matches!(t.device.device_type, DL_CPU | 3);
        let uint8 = t.dtype.code == 1 && t.dtype.bits == 8 && t.dtype.lanes == 1;
        // SAFETY: `shape` (and `strides` when set) have `ndim` elements.
        let (len, contiguous) = unsafe {
            if t.ndim != 1 {
                (None, false)
            } else {
                let len = usize::try_from(*t.shape).ok();
                let contiguous = t.strides.is_null() || *t.strides == 1 || *t.shape <= 1;
                (len, contiguous)
            }
        };
        let (Some(len), true, true, true) = (len, cpu, uint8, contiguous) else {
            return Err(PyValueError::new_err(
                "tensor data must come as a contiguous 1-D uint8 CPU tensor \
                 (t.reshape(-1).view(torch.uint8))",
            ));
        };
        // Consumed: from here on the deleter is ours to call.
        // SAFETY: renaming a capsule we validated above.
        unsafe {
            pyo3::ffi::PyCapsule_SetName(ptr, USED.as_ptr());
        }
        let data = if len == 0 {
            std::ptr::NonNull::<u8>::dangling().as_ptr() as *const u8
        } else {
            // SAFETY: DLPack's data pointer plus byte_offset is the first
            // element.
            unsafe { (t.data as *const u8).add(t.byte_offset as usize) }
        };
        Ok(Self { managed, data, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Takes a `dltensor` capsule of a contiguous CUDA tensor (any dtype
    /// and shape): returns it with its device ordinal. The device address
    /// is the producer's; the writer checks it with the driver before any
    /// copy ([`tensorizer::cuda::DeviceReader::tensor`]).
    #[cfg(feature = "cuda")]
    pub fn device(capsule: &Bound<'_, PyAny>) -> PyResult<(Self, usize)> {
        use pyo3::exceptions::{PyTypeError, PyValueError};
        let ptr = capsule.as_ptr();
        // SAFETY: as in `bytes`.
        let managed = unsafe {
            if pyo3::ffi::PyCapsule_IsValid(ptr, NAME.as_ptr()) != 1 {
                return Err(PyTypeError::new_err(
                    "expected an unconsumed DLPack capsule (\"dltensor\")",
                ));
            }
            pyo3::ffi::PyCapsule_GetPointer(ptr, NAME.as_ptr()) as *mut DLManagedTensor
        };
        if managed.is_null() {
            return Err(PyErr::fetch(capsule.py()));
        }
        // SAFETY: a valid "dltensor" capsule describes live memory.
        let t = unsafe { &(*managed).dl_tensor };
        let ordinal = usize::try_from(t.device.device_id).ok();
        let (Some(ordinal), DL_CUDA) = (ordinal, t.device.device_type) else {
            return Err(PyValueError::new_err(format!(
                "expected a CUDA tensor's capsule (kDLCUDA), got device type {} ordinal {}",
                t.device.device_type, t.device.device_id
            )));
        };
        let item = (t.dtype.bits as u64 * t.dtype.lanes as u64).div_ceil(8);
        let ndim = usize::try_from(t.ndim).unwrap_or(usize::MAX);
        if ndim > 64 {
            return Err(PyValueError::new_err(format!("{ndim} dimensions")));
        }
        // SAFETY: `shape` (and `strides` when set) have `ndim` elements.
        let (shape, strides) = unsafe {
            let shape: &[i64] = if ndim == 0 {
                &[]
            } else {
                std::slice::from_raw_parts(t.shape, ndim)
            };
            let strides: Option<&[i64]> = (!t.strides.is_null() && ndim > 0)
                .then(|| std::slice::from_raw_parts(t.strides, ndim));
            (shape, strides)
        };
        let mut len = Some(item);
        let mut expected_stride = 1i64;
        let mut contiguous = true;
        for k in (0..ndim).rev() {
            let d = shape[k];
            len = len
                .zip(u64::try_from(d).ok())
                .and_then(|(n, d)| n.checked_mul(d));
            if let Some(st) = strides
                && d > 1
                && st[k] != expected_stride
            {
                contiguous = false;
            }
            expected_stride = expected_stride.saturating_mul(d.max(1));
        }
        let (Some(len), true) = (len.and_then(|n| usize::try_from(n).ok()), contiguous) else {
            return Err(PyValueError::new_err(
                "a device tensor must be contiguous, with a size that fits memory",
            ));
        };
        // SAFETY: renaming a capsule we validated above.
        unsafe {
            pyo3::ffi::PyCapsule_SetName(ptr, USED.as_ptr());
        }
        let data = (t.data as *const u8).wrapping_add(t.byte_offset as usize);
        Ok((Self { managed, data, len }, ordinal))
    }

    /// The device address of a capsule taken by [`Imported::device`].
    #[cfg(feature = "cuda")]
    pub fn device_ptr(&self) -> u64 {
        self.data as u64
    }

    /// The bytes, to fill: DLPack hands the consumer the producer's own
    /// memory (torch shares a tensor's storage), so what is written here
    /// is what the tensor holds.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as `as_slice`; `&mut self` makes this the only view we
        // hand out, and the producer (a tensor the caller allocated to be
        // filled) is not read by us meanwhile.
        unsafe { std::slice::from_raw_parts_mut(self.data as *mut u8, self.len) }
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` bytes at `data`, kept alive by the unconsumed
        // producer until `drop`.
        unsafe { std::slice::from_raw_parts(self.data, self.len) }
    }
}

impl Drop for Imported {
    fn drop(&mut self) {
        // SAFETY: we consumed the capsule, so its deleter is called once,
        // here.
        unsafe {
            if let Some(d) = (*self.managed).deleter {
                d(self.managed);
            }
        }
    }
}
