//! Writing `.tensors` files.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use tensorizer_format::{FilePlan, PlanOptions, RecordSpec, TERMINATOR, TensorPath, TensorType};

use crate::error::{Error, Result, format_error, source_error};
use crate::tensor::TensorData;
use tensorizer_io::{FileLayout, LocalSink, Segment, SegmentKind, Sink, StorageOptions};

/// Collects tensors, then writes them as one `.tensors` file.
///
/// The output is byte-identical to the Python `TensorSerializer`'s for the
/// same tensors in the same order (`write_state_dict` and `write_tensor` /
/// `write_module`). Tensors are hashed and written in parallel at offsets
/// planned up front; the file appears under its name only once complete and
/// flushed, so a failed write leaves any previous file untouched.
///
/// ```
/// use tensorizer::{Dtype, Serializer, TensorData, TensorType};
/// # let dir = tempfile::tempdir()?;
/// let weights = vec![0.5f32; 6];
/// let mut s = Serializer::new();
/// s.write_tensor(1, "encoder.weight", TensorType::Param, TensorData::from_slice(&[2, 3], &weights)?)?;
/// s.write_tensor(1, "encoder.stats", TensorType::Buffer, TensorData::meta(Dtype::BF16, &[4]))?;
/// let summary = s.write_to_file(dir.path().join("model.tensors"))?;
/// assert_eq!(summary.tensors, 2);
/// assert_eq!(summary.version, 4); // meta tensor
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
pub struct Serializer<'a> {
    records: Vec<RecordSpec>,
    data: Vec<Option<&'a [u8]>>,
    #[cfg(feature = "encryption")]
    encryption: Option<crate::encryption::Encryption>,
}

/// Enough zero bytes for one element of any dtype.
static ZEROS: [u8; 16] = [0; 16];

/// What a write produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteSummary {
    /// The destination.
    pub path: PathBuf,
    /// File size in bytes.
    pub bytes: u64,
    /// Tensor bytes (the header's `tensor_size`).
    pub tensor_bytes: u64,
    /// Number of tensors.
    pub tensors: usize,
    /// Data-format version written.
    pub version: u32,
}

impl<'a> Serializer<'a> {
    /// An empty serializer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one tensor with an explicit module index and type (Python's
    /// `write_tensor`; `write_module` is a sequence of these with names
    /// `"{module}.{attr}"`, root-level ones starting with `.`).
    pub fn write_tensor(
        &mut self,
        module_idx: u16,
        name: impl Into<TensorPath>,
        tensor_type: TensorType,
        tensor: TensorData<'a>,
    ) -> Result<&mut Self> {
        let mut spec = RecordSpec::new(
            module_idx,
            tensor_type,
            name.into(),
            tensor.dtype,
            tensor.shape,
        );
        spec.meta = tensor.bytes.is_none();
        // A 0-d meta tensor stores one zero element, as Python writes it.
        let zeros = &ZEROS[..spec.data_length().unwrap_or(0).min(ZEROS.len() as u64) as usize];
        self.data.push(tensor.bytes.or(Some(zeros)));
        self.records.push(spec);
        Ok(self)
    }

    /// Adds loaded tensors back as they were read: module index, type,
    /// dtype spelling and meta-ness kept, so an unencrypted result is the
    /// bytes the Python writer would produce for them.
    pub fn write_tensors(&mut self, tensors: &'a [crate::Tensor]) -> Result<&mut Self> {
        for t in tensors {
            self.write_tensor(
                t.module_idx(),
                t.path().clone(),
                t.tensor_type(),
                t.as_data(),
            )?;
        }
        Ok(self)
    }

    /// Adds state-dict entries (type STATE_DICT, module index 0), in order.
    pub fn write_state_dict<N: Into<TensorPath>>(
        &mut self,
        tensors: impl IntoIterator<Item = (N, TensorData<'a>)>,
    ) -> Result<&mut Self> {
        for (name, t) in tensors {
            self.write_tensor(0, name, TensorType::StateDict, t)?;
        }
        Ok(self)
    }

    /// Encrypts every tensor's data (XSalsa20-Poly1305, 2 MiB chunks, as the
    /// Python writer does); headers, names, dtypes and shapes stay readable.
    #[cfg(feature = "encryption")]
    pub fn encryption(&mut self, encryption: crate::encryption::Encryption) -> &mut Self {
        self.encryption = Some(encryption);
        self
    }

    /// Number of tensors added so far.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    #[cfg_attr(not(feature = "encryption"), allow(unused_mut))]
    fn plan(&mut self, dest: &Path) -> Result<FilePlan> {
        if self.records.is_empty() {
            return Err(Error::NothingToWrite {
                path: dest.to_path_buf(),
            });
        }
        let mut records = self.records.clone();
        let mut options = PlanOptions::default();
        #[cfg(feature = "encryption")]
        if let Some(enc) = &mut self.encryption {
            options.encrypted = true;
            for r in &mut records {
                let planned = enc
                    .plan(r.data_length().map_err(format_error(dest))?)
                    .map_err(|e| Error::Encryption {
                        path: dest.to_path_buf(),
                        message: e.to_string(),
                    })?;
                r.crypt_info = Some(planned);
            }
        }
        FilePlan::new(records, options).map_err(format_error(dest))
    }

    /// The encoded header and the stored bytes (ciphertext when encrypting)
    /// of record `i`.
    fn record(&self, plan: &FilePlan, i: usize, dest: &Path) -> Result<(Vec<u8>, Cow<'a, [u8]>)> {
        let data: &'a [u8] = self.data[i].unwrap_or_default();
        #[cfg(feature = "encryption")]
        if let (Some(enc), Some(planned)) = (&self.encryption, plan.headers[i].crypt_info.as_ref())
            && planned.is_encrypted()
        {
            let mut ciphertext = data.to_vec();
            let sealed = enc.seal(planned, &mut ciphertext);
            // Hashes cover the plaintext, which `data` still is.
            let header = plan
                .seal_header_with(i, data, Some(sealed))
                .map_err(format_error(dest))?;
            return Ok((header, Cow::Owned(ciphertext)));
        }
        Ok((
            plan.seal_header(i, data).map_err(format_error(dest))?,
            Cow::Borrowed(data),
        ))
    }

    /// Writes a local file atomically (temp file, fsync, rename).
    pub fn write_to_file(self, path: impl AsRef<Path>) -> Result<WriteSummary> {
        let sink = LocalSink::create(path.as_ref()).map_err(source_error("starting the write"))?;
        self.write_to_sink(Box::new(sink))
    }

    /// Writes to a URI, atomically: a plain path or `file://`, `s3://bucket/key`
    /// (feature `s3`), `redis://host[:port]/prefix` (feature `redis`), with
    /// credentials looked up as in [`StorageOptions`]' defaults.
    pub fn write_to_uri(self, uri: &str) -> Result<WriteSummary> {
        self.write_to_uri_with(uri, &StorageOptions::default())
    }

    /// Like [`Serializer::write_to_uri`] with explicit retries, timeouts and S3 settings.
    pub fn write_to_uri_with(self, uri: &str, options: &StorageOptions) -> Result<WriteSummary> {
        let sink =
            tensorizer_io::create_sink(uri, options).map_err(source_error("starting the write"))?;
        self.write_to_sink(sink)
    }

    /// Writes into any [`Sink`]: every tensor at its planned offset, in
    /// parallel, then commits. On error the sink is dropped uncommitted, so
    /// the destination keeps its previous content.
    pub fn write_to_sink(mut self, sink: Box<dyn Sink>) -> Result<WriteSummary> {
        let dest = PathBuf::from(sink.uri());
        let plan = self.plan(&dest)?;
        sink.reserve(&layout(&plan.metadata))
            .map_err(source_error("announcing the file layout"))?;
        let prologue = plan.metadata.encode().map_err(format_error(&dest))?;
        sink.write_all_at(0, &prologue)
            .map_err(source_error("writing the index"))?;
        (0..self.records.len()).into_par_iter().try_for_each(|i| {
            let entry = &plan.metadata.entries[i];
            let (header, data) = self.record(&plan, i, &dest)?;
            let what = || format!("writing tensor {:?}", entry.name.to_string());
            sink.write_all_at(entry.header_offset, &header)
                .map_err(source_error(what()))?;
            sink.write_all_at(entry.data_offset, &data)
                .map_err(source_error(what()))
        })?;
        sink.write_all_at(plan.terminator_offset(), &TERMINATOR)
            .map_err(source_error("writing the terminator"))?;
        let summary = summary(&plan, &dest);
        sink.commit()
            .map_err(source_error("committing the output"))?;
        Ok(summary)
    }

    /// Encodes the file into memory.
    pub fn to_bytes(mut self) -> Result<Vec<u8>> {
        let dest = Path::new("<memory>");
        let plan = self.plan(dest)?;
        let mut out = plan.metadata.encode().map_err(format_error(dest))?;
        out.reserve(
            usize::try_from(plan.file_len())
                .unwrap_or(0)
                .saturating_sub(out.len()),
        );
        for i in 0..self.records.len() {
            let (header, data) = self.record(&plan, i, dest)?;
            out.extend(header);
            out.extend_from_slice(&data);
        }
        out.extend_from_slice(&TERMINATOR);
        Ok(out)
    }
}

/// The segments of a file with this index, for sinks that store them
/// separately (Redis names keys after tensors).
pub(crate) fn layout(metadata: &tensorizer_format::Metadata) -> FileLayout {
    let mut segments = vec![Segment {
        offset: 0,
        len: metadata.records_offset(),
        kind: SegmentKind::Prologue,
    }];
    for entry in &metadata.entries {
        let name = String::from_utf8_lossy(entry.name.as_bytes()).into_owned();
        segments.push(Segment {
            offset: entry.header_offset,
            len: entry.data_offset - entry.header_offset,
            kind: SegmentKind::TensorHeader(name.clone()),
        });
        segments.push(Segment {
            offset: entry.data_offset,
            len: entry.data_length,
            kind: SegmentKind::TensorData(name),
        });
    }
    let end = metadata
        .entries
        .iter()
        .map(|e| e.end_offset())
        .max()
        .unwrap_or(metadata.records_offset());
    segments.push(Segment {
        offset: end,
        len: TERMINATOR.len() as u64,
        kind: SegmentKind::Terminator,
    });
    FileLayout {
        len: end + TERMINATOR.len() as u64,
        segments,
    }
}

fn summary(plan: &FilePlan, path: &Path) -> WriteSummary {
    let header = &plan.metadata.header;
    WriteSummary {
        path: path.to_path_buf(),
        bytes: plan.file_len(),
        tensor_bytes: header.tensor_size,
        tensors: plan.metadata.entries.len(),
        version: header.version.get(),
    }
}
