//! Writing a `.tensors` file as its tensors are handed over.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tensorizer_format::{
    MAX_INDEX_LEN, PYTHON_INDEX_LEN, PlacedRecord, PlanOptions, RecordSpec, StreamPlan, TERMINATOR,
    TensorPath, TensorType,
};
use tensorizer_io::{LocalSink, Segment, SegmentKind, Sink, StorageOptions};

use crate::error::{BoxError, Error, Result, format_error, source_error};
use crate::serializer::{Data, ProgressHook, ZEROS, write_parallel};
use crate::tensor::TensorData;
use crate::{WriteProgress, WriteSummary};

/// A tensor described, not given: `(module index, name, type, dtype,
/// shape, meta)`, for [`StreamingSerializer::check_batch`].
pub type TensorSpec = (
    u16,
    TensorPath,
    TensorType,
    tensorizer_format::Dtype,
    Vec<u64>,
    bool,
);

/// Writes a `.tensors` file while its tensors are handed over, each call's
/// tensors reaching the sink before the call returns: host memory stays at
/// a few fixed buffers (the largest a 2 MiB cipher chunk per worker, or a
/// store's upload part), whatever the model's size, so a model can be
/// written from a GPU, a converter or a quantizer one tensor at a time.
///
/// The layout is the Python writer's (a 256 KiB index reserved up front,
/// records in call order after it, the version raised by what arrives), so
/// the same calls give the same bytes as the Python `TensorSerializer` and
/// as [`crate::Serializer`] for unencrypted files. The index is written
/// last, over the block reserved for it; a call whose entries would not fit
/// fails as Python's "Metadata overflow" does, leaving the writer usable
/// ([`StreamingSerializer::index_capacity`] reserves more). A call's
/// tensors are written in parallel; a tensor is read once, hashed and
/// (if asked) encrypted as its bytes go out.
///
/// The file appears under its name only at [`StreamingSerializer::finish`];
/// a failed or dropped writer leaves the destination's previous content.
///
/// ```
/// use tensorizer::{Dtype, StreamingSerializer, TensorData, TensorType};
/// # let dir = tempfile::tempdir()?;
/// let mut w = StreamingSerializer::create_file(dir.path().join("model.tensors"))?;
/// let mut layer = vec![0f32; 1024];
/// for i in 0..4 {
///     layer.fill(i as f32); // one buffer, reused: each call writes it out
///     let data = TensorData::from_slice(&[32, 32], &layer)?;
///     w.write_tensor(1, format!("layers.{i}.weight").as_str(), TensorType::Param, data)?;
/// }
/// let summary = w.finish()?;
/// assert_eq!((summary.tensors, summary.tensor_bytes), (4, 4 * 4096));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct StreamingSerializer {
    sink: Option<Box<dyn Sink>>,
    dest: PathBuf,
    plan: StreamPlan,
    /// Whether the prologue's segment has been announced to the sink.
    started: bool,
    /// The first error, which abandons the write.
    failure: Option<String>,
    written: AtomicU64,
    progress: Option<ProgressHook<'static>>,
    #[cfg(feature = "encryption")]
    encryption: Option<crate::encryption::Encryption>,
}

impl StreamingSerializer {
    /// A writer into `sink`, committed by [`StreamingSerializer::finish`].
    pub fn new(sink: Box<dyn Sink>) -> Self {
        Self {
            dest: PathBuf::from(sink.uri()),
            sink: Some(sink),
            plan: StreamPlan::new(PlanOptions::default()),
            started: false,
            failure: None,
            written: AtomicU64::new(0),
            progress: None,
            #[cfg(feature = "encryption")]
            encryption: None,
        }
    }

    /// A writer of a local file, replaced atomically at the end (temp file,
    /// fsync, rename).
    pub fn create_file(path: impl AsRef<Path>) -> Result<Self> {
        let sink = LocalSink::create(path.as_ref()).map_err(source_error("starting the write"))?;
        Ok(Self::new(Box::new(sink)))
    }

    /// A writer of any URI the project writes (a path, `file://`, `s3://`,
    /// `gs://`, `az://`, `redis://`), replaced atomically at the end;
    /// object stores receive a multipart upload as the bytes come.
    pub fn create_uri(uri: &str, options: &StorageOptions) -> Result<Self> {
        let sink =
            tensorizer_io::create_sink(uri, options).map_err(source_error("starting the write"))?;
        Ok(Self::new(sink))
    }

    /// Reserves `bytes` for the index instead of Python's 256 KiB, for
    /// files of more tensors than that holds (about 4 000 with short
    /// names). Such files are still read by Python, not byte-identical.
    pub fn index_capacity(&mut self, bytes: u64) -> Result<&mut Self> {
        self.before_first_tensor("the index capacity")?;
        let bytes = bytes.clamp(PYTHON_INDEX_LEN, MAX_INDEX_LEN);
        self.plan = StreamPlan::new(PlanOptions {
            min_index_len: bytes,
            ..self.plan_options()
        });
        Ok(self)
    }

    /// Encrypts every tensor's data (XSalsa20-Poly1305, 2 MiB chunks, as the
    /// Python writer does); headers, names, dtypes and shapes stay readable.
    #[cfg(feature = "encryption")]
    pub fn encryption(&mut self, encryption: crate::encryption::Encryption) -> Result<&mut Self> {
        self.before_first_tensor("encryption")?;
        self.encryption = Some(encryption);
        self.plan = StreamPlan::new(PlanOptions {
            encrypted: true,
            ..self.plan_options()
        });
        Ok(self)
    }

    /// Calls `f` after each block written (from the writer threads) with the
    /// bytes written so far and the size of the file as known so far.
    pub fn on_progress(&mut self, f: impl Fn(WriteProgress) + Send + Sync + 'static) -> &mut Self {
        self.progress = Some(ProgressHook(Box::new(f)));
        self
    }

    /// Writes one tensor (Python's `write_tensor`) before returning.
    pub fn write_tensor(
        &mut self,
        module_idx: u16,
        name: impl Into<TensorPath>,
        tensor_type: TensorType,
        tensor: TensorData<'_>,
    ) -> Result<&mut Self> {
        self.write_batch([(module_idx, name.into(), tensor_type, tensor)])
    }

    /// Writes one tensor whose bytes `fill` produces into a zeroed buffer of
    /// exactly its length, dropped once written.
    pub fn write_tensor_with(
        &mut self,
        module_idx: u16,
        name: impl Into<TensorPath>,
        tensor_type: TensorType,
        dtype: tensorizer_format::Dtype,
        shape: &[u64],
        fill: impl Fn(&mut [u8]) -> Result<(), BoxError> + Send + Sync,
    ) -> Result<&mut Self> {
        let spec = RecordSpec::new(module_idx, tensor_type, name.into(), dtype, shape.to_vec());
        let fill: Box<crate::FillFn<'_>> = Box::new(fill);
        self.write_records(vec![(spec, Data::Fill(fill))])
    }

    /// Writes one tensor whose bytes `produce` hands over in pieces, in
    /// order (see [`crate::PiecesFn`]): a device tensor copied back through
    /// a staging ring (`tensorizer::cuda::DeviceReader`, feature `cuda`),
    /// a converter's output. No buffer of the tensor's size is held; the
    /// pieces are hashed, encrypted if asked, and written as they come.
    pub fn write_tensor_from(
        &mut self,
        module_idx: u16,
        name: impl Into<TensorPath>,
        tensor_type: TensorType,
        dtype: tensorizer_format::Dtype,
        shape: &[u64],
        produce: impl Fn(&mut dyn FnMut(&[u8]) -> Result<(), BoxError>) -> Result<(), BoxError>
        + Send
        + Sync,
    ) -> Result<&mut Self> {
        let spec = RecordSpec::new(module_idx, tensor_type, name.into(), dtype, shape.to_vec());
        let produce: Box<crate::PiecesFn<'_>> = Box::new(produce);
        self.write_records(vec![(spec, Data::Pieces(produce))])
    }

    /// Writes state-dict entries (type STATE_DICT, module index 0) in order,
    /// several at once (Python's `write_state_dict`).
    pub fn write_state_dict<'t, N: Into<TensorPath>>(
        &mut self,
        tensors: impl IntoIterator<Item = (N, TensorData<'t>)>,
    ) -> Result<&mut Self> {
        self.write_batch(
            tensors
                .into_iter()
                .map(|(name, t)| (0, name.into(), TensorType::StateDict, t)),
        )
    }

    /// Writes loaded tensors back as they were read (module index, type,
    /// dtype spelling and meta-ness kept).
    pub fn write_tensors(&mut self, tensors: &[crate::Tensor]) -> Result<&mut Self> {
        self.write_batch(tensors.iter().map(|t| {
            (
                t.module_idx(),
                t.path().clone(),
                t.tensor_type(),
                t.as_data(),
            )
        }))
    }

    /// Writes tensors given as `(module index, name, type, data)`, in order,
    /// several at once (Python's `write_module` is one such batch). The
    /// batch is placed whole or not at all: a name or index problem in any
    /// of them refuses the call before a byte is written.
    pub fn write_batch<'t>(
        &mut self,
        tensors: impl IntoIterator<Item = (u16, TensorPath, TensorType, TensorData<'t>)>,
    ) -> Result<&mut Self> {
        let records = tensors
            .into_iter()
            .map(|(module_idx, name, tensor_type, t)| {
                let mut spec = RecordSpec::new(module_idx, tensor_type, name, t.dtype, t.shape);
                spec.meta = t.bytes.is_none();
                // A 0-d meta tensor stores one zero element, as Python writes it.
                let zeros = spec.data_length().unwrap_or(0).min(ZEROS.len() as u64) as usize;
                (spec, Data::Bytes(t.bytes.unwrap_or(&ZEROS[..zeros])))
            })
            .collect();
        self.write_records(records)
    }

    /// Checks, without writing anything, that tensors described as
    /// `(module index, name, type, dtype, shape, meta)` would be accepted
    /// after those written so far: a caller that must hand a batch over in
    /// parts (to bound the host copies it makes) keeps it all-or-none by
    /// checking the whole batch first.
    pub fn check_batch(
        &self,
        tensors: impl IntoIterator<
            Item = (
                u16,
                TensorPath,
                TensorType,
                tensorizer_format::Dtype,
                Vec<u64>,
                bool,
            ),
        >,
    ) -> Result<()> {
        self.check_usable()?;
        let mut plan = self.plan.clone();
        for (module_idx, name, tensor_type, dtype, shape, meta) in tensors {
            let mut spec = RecordSpec::new(module_idx, tensor_type, name, dtype, shape);
            spec.meta = meta;
            #[cfg(feature = "encryption")]
            if let Some(enc) = &self.encryption {
                let len = spec.data_length().map_err(format_error(&self.dest))?;
                spec.crypt_info = Some(enc.plan_size(len));
            }
            plan.push(spec).map_err(format_error(&self.dest))?;
        }
        Ok(())
    }

    /// Tensors written so far.
    pub fn len(&self) -> usize {
        self.plan.len()
    }

    /// True before the first tensor.
    pub fn is_empty(&self) -> bool {
        self.plan.is_empty()
    }

    /// Bytes of the file so far (records and the reserved index).
    pub fn bytes(&self) -> u64 {
        self.plan.terminator_offset()
    }

    /// Writes the terminator and the index, and commits: the file appears
    /// whole under its name.
    pub fn finish(mut self) -> Result<WriteSummary> {
        self.check_usable()?;
        if self.plan.is_empty() {
            return Err(Error::NothingToWrite {
                path: self.dest.clone(),
            });
        }
        let sink = self.sink.take().expect("a usable writer has its sink");
        let end = self.plan.terminator_offset();
        sink.announce(&[Segment {
            offset: end,
            len: TERMINATOR.len() as u64,
            kind: SegmentKind::Terminator,
        }])
        .map_err(source_error("announcing the terminator"))?;
        sink.write_all_at(end, &TERMINATOR)
            .map_err(source_error("writing the terminator"))?;
        let metadata = self.plan.metadata();
        let prologue = metadata.encode().map_err(format_error(&self.dest))?;
        sink.write_all_at(0, &prologue)
            .map_err(source_error("writing the index"))?;
        self.report(TERMINATOR.len() + prologue.len());
        sink.commit()
            .map_err(source_error("committing the output"))?;
        let header = &metadata.header;
        Ok(WriteSummary {
            path: self.dest.clone(),
            bytes: self.plan.file_len(),
            tensor_bytes: header.tensor_size,
            tensors: metadata.entries.len(),
            version: header.version.get(),
        })
    }

    fn plan_options(&self) -> PlanOptions {
        PlanOptions {
            encrypted: self.plan_is_encrypted(),
            min_index_len: self.plan.records_offset() - tensorizer_format::INDEX_OFFSET,
        }
    }

    fn plan_is_encrypted(&self) -> bool {
        #[cfg(feature = "encryption")]
        return self.encryption.is_some();
        #[cfg(not(feature = "encryption"))]
        return false;
    }

    fn before_first_tensor(&self, what: &'static str) -> Result<()> {
        if self.plan.is_empty() && !self.started {
            Ok(())
        } else {
            Err(Error::TooLate {
                path: self.dest.clone(),
                what,
            })
        }
    }

    fn check_usable(&self) -> Result<()> {
        match &self.failure {
            Some(cause) => Err(Error::WriteAbandoned {
                path: self.dest.clone(),
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    fn report(&self, n: usize) {
        if let Some(ProgressHook(f)) = &self.progress {
            let bytes = self.written.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
            f(WriteProgress {
                bytes,
                total_bytes: self.plan.file_len(),
            });
        }
    }

    /// Places the records (all or none), announces their segments, and
    /// writes them in parallel; any error past placement abandons the file.
    fn write_records(&mut self, records: Vec<(RecordSpec, Data<'_>)>) -> Result<&mut Self> {
        self.check_usable()?;
        // A batch rolls back as a whole; one record leaves no trace by itself.
        let before = (records.len() > 1).then(|| self.plan.clone());
        let mut jobs: Vec<(PlacedRecord, Data<'_>)> = Vec::with_capacity(records.len());
        for (mut spec, data) in records {
            match self.place(&mut spec) {
                Ok(placed) => jobs.push((placed, data)),
                Err(e) => {
                    if let Some(plan) = before {
                        self.plan = plan;
                    }
                    return Err(e);
                }
            }
        }
        if let Err(e) = self.write_placed(&jobs) {
            self.failure = Some(e.to_string());
            // Dropping the sink uncommitted aborts it now (an upload, staged keys).
            self.sink = None;
            return Err(e);
        }
        Ok(self)
    }

    fn place(&mut self, spec: &mut RecordSpec) -> Result<PlacedRecord> {
        #[cfg(feature = "encryption")]
        if let Some(enc) = &mut self.encryption {
            let planned = enc
                .plan(spec.data_length().map_err(format_error(&self.dest))?)
                .map_err(|e| Error::Encryption {
                    path: self.dest.clone(),
                    message: e.to_string(),
                })?;
            spec.crypt_info = Some(planned);
        }
        self.plan
            .push(spec.clone())
            .map_err(format_error(&self.dest))
    }

    fn write_placed(&mut self, jobs: &[(PlacedRecord, Data<'_>)]) -> Result<()> {
        if !self.started {
            let sink = self.sink.as_deref().expect("a usable writer has its sink");
            sink.announce(&[Segment {
                offset: 0,
                len: self.plan.records_offset(),
                kind: SegmentKind::Prologue,
            }])
            .map_err(source_error("announcing the index"))?;
            self.started = true;
        }
        let sink = self.sink.as_deref().expect("a usable writer has its sink");
        let mut segments = Vec::with_capacity(2 * jobs.len());
        for (placed, _) in jobs {
            let name = String::from_utf8_lossy(placed.header.name.as_bytes()).into_owned();
            segments.push(Segment {
                offset: placed.header_offset,
                len: placed.data_offset - placed.header_offset,
                kind: SegmentKind::TensorHeader(name.clone()),
            });
            segments.push(Segment {
                offset: placed.data_offset,
                len: placed.data_length(),
                kind: SegmentKind::TensorData(name),
            });
        }
        sink.announce(&segments)
            .map_err(source_error("announcing the tensors"))?;
        let jobs: Vec<(PlacedRecord, &Data<'_>)> =
            jobs.iter().map(|(p, d)| (p.clone(), d)).collect();
        #[cfg(feature = "encryption")]
        let sealing = self.encryption.as_ref();
        #[cfg(not(feature = "encryption"))]
        let sealing = None;
        write_parallel(
            &jobs,
            sink,
            sealing,
            &self.dest,
            crate::serializer::DEFAULT_FILL_BUDGET,
            &|n| self.report(n),
        )
    }
}
