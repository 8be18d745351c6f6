//! Conversion between safetensors and tensorizer files.
//!
//! Tensors keep their dtype (bfloat16 and float8 included) and bytes.
//! safetensors → tensorizer writes a state dict in name order; tensorizer →
//! safetensors names structured paths by joining their components with `.`,
//! and loads meta tensors as zeros. safetensors' `__metadata__` has no place
//! in a tensorizer file and is dropped.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fs::File;
use std::path::Path;

use safetensors::tensor::{Dtype as StDtype, SafeTensors, View};
use tensorizer_format::{Dtype, PathComponent};

use crate::error::{Error, Result, io_error};
use crate::serializer::{Serializer, WriteSummary};
use crate::tensor::{Tensor, TensorData};
use crate::{Deserializer, Verify};
use tensorizer_io::{LocalSink, Sink};

/// The safetensors dtype with the same bytes, if there is one.
pub fn to_safetensors_dtype(dtype: Dtype) -> Option<StDtype> {
    Some(match dtype {
        Dtype::Bool => StDtype::BOOL,
        Dtype::U8 => StDtype::U8,
        Dtype::I8 => StDtype::I8,
        Dtype::I16 => StDtype::I16,
        Dtype::I32 => StDtype::I32,
        Dtype::I64 => StDtype::I64,
        Dtype::U16 => StDtype::U16,
        Dtype::U32 => StDtype::U32,
        Dtype::U64 => StDtype::U64,
        Dtype::F16 => StDtype::F16,
        Dtype::BF16 => StDtype::BF16,
        Dtype::F32 => StDtype::F32,
        Dtype::F64 => StDtype::F64,
        Dtype::C64 => StDtype::C64,
        Dtype::F8E5M2 => StDtype::F8_E5M2,
        Dtype::F8E4M3FN => StDtype::F8_E4M3,
        Dtype::F8E5M2FNUZ => StDtype::F8_E5M2FNUZ,
        Dtype::F8E4M3FNUZ => StDtype::F8_E4M3FNUZ,
        Dtype::F8E8M0FNU => StDtype::F8_E8M0,
        _ => return None,
    })
}

/// The tensorizer dtype with the same bytes, if there is one (safetensors'
/// sub-byte F4/F6 types count elements, not bytes, and have none).
pub fn from_safetensors_dtype(dtype: StDtype) -> Option<Dtype> {
    Dtype::ALL
        .iter()
        .copied()
        .find(|&d| to_safetensors_dtype(d) == Some(dtype))
}

/// Converts a safetensors file into a tensorizer file (tensors sorted by name).
pub fn safetensors_to_tensorizer(input: &Path, output: &Path) -> Result<WriteSummary> {
    let file = File::open(input).map_err(io_error(input, "opening"))?;
    // SAFETY: the map is read-only and lives only for this call; as with every
    // memory-mapped reader, the input must not be truncated while converting.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_error(input, "mapping"))?;
    let st = SafeTensors::deserialize(&map).map_err(|e| Error::Safetensors {
        path: input.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut tensors = st.tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut s = Serializer::new();
    for (name, view) in &tensors {
        let dtype = from_safetensors_dtype(view.dtype()).ok_or_else(|| Error::Safetensors {
            path: input.to_path_buf(),
            message: format!(
                "tensor {name:?}: dtype {:?} has no tensorizer equivalent",
                view.dtype()
            ),
        })?;
        let shape: Vec<u64> = view.shape().iter().map(|&d| d as u64).collect();
        let data = TensorData::new(dtype, &shape, view.data()).map_err(|_| Error::Safetensors {
            path: input.to_path_buf(),
            message: format!("tensor {name:?}: data length does not match its shape"),
        })?;
        s.write_tensor(
            0,
            name.as_str(),
            tensorizer_format::TensorType::StateDict,
            data,
        )?;
    }
    s.write_to_file(output)
}

/// What a conversion to safetensors wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetensorsSummary {
    /// Number of tensors.
    pub tensors: usize,
    /// Bytes of tensor data.
    pub tensor_bytes: u64,
}

#[derive(Clone)]
struct TensorView<'t> {
    dtype: StDtype,
    shape: Vec<usize>,
    tensor: &'t Tensor,
    /// Hide the bytes from safetensors (see [`tensorizer_to_safetensors`]).
    header_only: bool,
}

impl View for TensorView<'_> {
    fn dtype(&self) -> StDtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        if self.header_only {
            return Cow::Borrowed(&[]);
        }
        Cow::Borrowed(self.tensor.as_bytes())
    }
    fn data_len(&self) -> usize {
        self.tensor.as_bytes().len()
    }
}

/// The safetensors name of a tensor path: components joined with `.`.
pub fn safetensors_name(path: &tensorizer_format::TensorPath) -> String {
    let parts: Vec<String> = path
        .components()
        .iter()
        .map(|c| match c {
            PathComponent::Key(k) => k.clone(),
            PathComponent::Index(i) => i.to_string(),
        })
        .collect();
    parts.join(".")
}

/// Converts a tensorizer file (hashes verified) into a safetensors file.
pub fn tensorizer_to_safetensors(input: &Path, output: &Path) -> Result<SafetensorsSummary> {
    let tensors = Deserializer::open(input)?
        .verify(Verify::Crc32)
        .read_all()?;
    let mut names = HashSet::new();
    let mut views = Vec::with_capacity(tensors.len());
    for t in &tensors {
        let unsupported = |what: String| Error::Safetensors {
            path: output.to_path_buf(),
            message: format!("tensor {:?}: {what}", t.name()),
        };
        let dtype = to_safetensors_dtype(t.dtype()).ok_or_else(|| {
            unsupported(format!("dtype {} has no safetensors equivalent", t.dtype()))
        })?;
        let shape = t
            .shape()
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| unsupported("dimension too large".into()))?;
        let name = safetensors_name(t.path());
        if !names.insert(name.clone()) {
            return Err(unsupported(format!(
                "two tensors map to the safetensors name {name:?}"
            )));
        }
        views.push((
            name,
            TensorView {
                dtype,
                shape,
                tensor: t,
                header_only: true,
            },
        ));
    }
    let summary = SafetensorsSummary {
        tensors: views.len(),
        tensor_bytes: tensors.iter().map(|t| t.as_bytes().len() as u64).sum(),
    };
    // safetensors' own `serialize_to_file` writes a named temporary file
    // that a killed process leaves behind. Its `serialize` of views that
    // hide their bytes gives the header alone (length, JSON, padding); the
    // data follows in its order (dtype descending, then name), written
    // through our sink, which leaves nothing behind.
    let fail = |message: String| Error::Safetensors {
        path: output.to_path_buf(),
        message,
    };
    views.sort_by(|(a, va), (b, vb)| vb.dtype.cmp(&va.dtype).then(a.cmp(b)));
    let header =
        safetensors::tensor::serialize(views.iter().map(|(n, v)| (n.as_str(), v.clone())), None)
            .map_err(|e| fail(e.to_string()))?;
    let out =
        LocalSink::create(output).map_err(crate::error::source_error("starting the write"))?;
    let write = |offset: u64, bytes: &[u8]| {
        out.write_all_at(offset, bytes)
            .map_err(crate::error::source_error("writing the output"))
    };
    let data_len: u64 = views.iter().map(|(_, v)| v.data_len() as u64).sum();
    out.file()
        .set_len(header.len() as u64 + data_len)
        .map_err(|e| fail(format!("sizing the file: {e}")))?;
    write(0, &header)?;
    let mut offset = header.len() as u64;
    for (_, v) in &views {
        write(offset, v.tensor.as_bytes())?;
        offset += v.data_len() as u64;
    }
    Box::new(out)
        .commit()
        .map_err(crate::error::source_error("committing the output"))?;
    Ok(summary)
}

/// Converts a checkpoint (one safetensors file, or a sharded directory or
/// prefix, on any store: see [`crate::Checkpoint`]) into one tensorizer
/// file at any URI, tensors sorted by name. Nothing is held in memory but
/// the tensors being written (one buffer per writer thread): each
/// tensor's bytes are read through the engine when the writer reaches it.
pub fn checkpoint_to_tensorizer(
    input: &str,
    output: &str,
    options: &tensorizer_io::StorageOptions,
) -> Result<WriteSummary> {
    let checkpoint = crate::Checkpoint::open_uri_with(input, options)?;
    let mut tensors: Vec<(usize, &tensorizer_format::IndexEntry)> = checkpoint.entries().collect();
    tensors.sort_by_key(|a| a.1.name.to_string());
    let mut s = Serializer::new();
    for (k, entry) in tensors {
        let shard = &checkpoint.shards()[k];
        let name = entry.name.path().clone();
        let shape = entry.shape.dims().to_vec();
        s.write_tensor_with(
            0,
            name.clone(),
            tensorizer_format::TensorType::StateDict,
            entry.dtype.dtype(),
            &shape,
            move |buf: &mut [u8]| {
                shard.read_into([(name.clone(), buf)])?;
                Ok(())
            },
        )?;
    }
    s.write_to_uri_with(output, options)
}

/// Converts a tensorizer file at any URI (hashes verified) into a
/// safetensors file at any URI, holding one tensor in memory at a time:
/// the header is planned from the index, then each tensor is read,
/// checked and written at its offset.
pub fn tensorizer_to_safetensors_uri(
    input: &str,
    output: &str,
    options: &tensorizer_io::StorageOptions,
) -> Result<SafetensorsSummary> {
    let d = Deserializer::open_uri_with(input, options)?.verify(Verify::Crc32);
    let fail = |message: String| Error::Safetensors {
        path: output.into(),
        message,
    };
    struct Planned {
        name: String,
        dtype: StDtype,
        shape: Vec<usize>,
        index: usize,
        len: usize,
    }
    let mut names = HashSet::new();
    let mut planned = Vec::with_capacity(d.len());
    for (index, e) in d.entries().iter().enumerate() {
        let what = |why: String| fail(format!("tensor {:?}: {why}", e.name.to_string()));
        let dtype = to_safetensors_dtype(e.dtype.dtype()).ok_or_else(|| {
            what(format!(
                "dtype {} has no safetensors equivalent",
                e.dtype.dtype()
            ))
        })?;
        let shape = e
            .shape
            .dims()
            .iter()
            .map(|&x| usize::try_from(x))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| what("dimension too large".into()))?;
        let len = usize::try_from(e.deserialized_length().unwrap_or(u64::MAX))
            .map_err(|_| what("too large".into()))?;
        let name = safetensors_name(e.name.path());
        if !names.insert(name.clone()) {
            return Err(what(format!(
                "two tensors map to the safetensors name {name:?}"
            )));
        }
        planned.push(Planned {
            name,
            dtype,
            shape,
            index,
            len,
        });
    }
    // safetensors' order: dtype descending, then name.
    planned.sort_by(|a, b| b.dtype.cmp(&a.dtype).then(a.name.cmp(&b.name)));
    // The header alone, from views that describe the tensors and hold no
    // bytes.
    #[derive(Clone)]
    struct Described<'p>(&'p Planned);
    impl View for Described<'_> {
        fn dtype(&self) -> StDtype {
            self.0.dtype
        }
        fn shape(&self) -> &[usize] {
            &self.0.shape
        }
        fn data(&self) -> Cow<'_, [u8]> {
            Cow::Borrowed(&[])
        }
        fn data_len(&self) -> usize {
            self.0.len
        }
    }
    let header = safetensors::tensor::serialize(
        planned.iter().map(|p| (p.name.as_str(), Described(p))),
        None,
    )
    .map_err(|e| fail(e.to_string()))?;
    let sink = tensorizer_io::create_sink(output, options)
        .map_err(crate::error::source_error("starting the write"))?;
    let data_len: u64 = planned.iter().map(|p| p.len as u64).sum();
    sink.reserve(&tensorizer_io::FileLayout::with_len(
        header.len() as u64 + data_len,
    ))
    .map_err(crate::error::source_error("starting the write"))?;
    let write = |offset: u64, bytes: &[u8]| {
        sink.write_all_at(offset, bytes)
            .map_err(crate::error::source_error("writing the output"))
    };
    write(0, &header)?;
    let mut offset = header.len() as u64;
    for p in &planned {
        let tensor = d.read_at(p.index)?;
        write(offset, tensor.as_bytes())?;
        offset += p.len as u64;
    }
    sink.commit()
        .map_err(crate::error::source_error("committing the output"))?;
    Ok(SafetensorsSummary {
        tensors: planned.len(),
        tensor_bytes: data_len,
    })
}
