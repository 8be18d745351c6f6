//! Writing `.tensors` files.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use tensorizer_format::{
    FilePlan, PlacedRecord, PlanOptions, RecordSpec, TERMINATOR, TensorPath, TensorType,
};

use crate::error::{BoxError, Error, Result, format_error, source_error};
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
    data: Vec<Data<'a>>,
    progress: Option<ProgressHook<'a>>,
    /// See [`Serializer::fill_budget`]; `None` is [`DEFAULT_FILL_BUDGET`].
    fill_budget: Option<u64>,
    #[cfg(feature = "encryption")]
    encryption: Option<crate::encryption::Encryption>,
}

/// Where a record's bytes come from.
pub(crate) enum Data<'a> {
    /// Borrowed from the caller for the whole write.
    Bytes(&'a [u8]),
    /// Produced when the writer reaches the tensor, into a buffer that is
    /// dropped once the tensor is written.
    Fill(Box<FillFn<'a>>),
    /// Handed over in pieces, in order, when the writer reaches the tensor
    /// (a device tensor copied back through a staging ring): no buffer of
    /// the tensor's size is ever held.
    Pieces(Box<PiecesFn<'a>>),
}

/// Produces a tensor's bytes in order, in pieces of its choice, by calling
/// the given consumer with each; exactly the tensor's data length in all.
/// A consumer's error is returned as it came, to stop the producer.
pub type PiecesFn<'a> = dyn Fn(&mut dyn FnMut(&[u8]) -> Result<(), BoxError>) -> Result<(), BoxError>
    + Send
    + Sync
    + 'a;

/// Fills a tensor's bytes (exactly its data length) when it is written.
pub type FillFn<'a> = dyn Fn(&mut [u8]) -> Result<(), BoxError> + Send + Sync + 'a;

impl std::fmt::Debug for Data<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Data::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Data::Fill(_) => f.write_str("Fill(..)"),
            Data::Pieces(_) => f.write_str("Pieces(..)"),
        }
    }
}

/// How far a write has come, as [`Serializer::on_progress`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteProgress {
    /// Bytes of the file written so far.
    pub bytes: u64,
    /// The file's size.
    pub total_bytes: u64,
}

pub(crate) struct ProgressHook<'a>(pub(crate) Box<dyn Fn(WriteProgress) + Send + Sync + 'a>);

impl std::fmt::Debug for ProgressHook<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressHook(..)")
    }
}

/// Plaintext bytes hashed per step before they are written: small enough to
/// still be in cache when the kernel copies them out, large enough for few
/// system calls. Encrypted tensors step by their cipher chunk (2 MiB).
const WRITE_BLOCK: usize = 1 << 20;

/// Enough zero bytes for one element of any dtype.
pub(crate) static ZEROS: [u8; 16] = [0; 16];

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
        self.data.push(Data::Bytes(tensor.bytes.unwrap_or(zeros)));
        self.records.push(spec);
        Ok(self)
    }

    /// Adds one tensor whose bytes `fill` produces when the writer reaches
    /// it, so a file larger than memory can be written: at most one such
    /// buffer per writer thread is alive at a time. `fill` gets a zeroed
    /// buffer of exactly the tensor's byte length; its error aborts the
    /// write (the destination keeps its previous content).
    ///
    /// ```
    /// use tensorizer::{Dtype, Serializer, TensorType};
    /// # let dir = tempfile::tempdir()?;
    /// let mut s = Serializer::new();
    /// s.write_tensor_with(0, "ramp", TensorType::Param, Dtype::U8, &[4], |buf| {
    ///     buf.copy_from_slice(&[0, 1, 2, 3]);
    ///     Ok(())
    /// })?;
    /// s.write_to_file(dir.path().join("ramp.tensors"))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_tensor_with(
        &mut self,
        module_idx: u16,
        name: impl Into<TensorPath>,
        tensor_type: TensorType,
        dtype: tensorizer_format::Dtype,
        shape: &[u64],
        fill: impl Fn(&mut [u8]) -> Result<(), BoxError> + Send + Sync + 'a,
    ) -> Result<&mut Self> {
        let spec = RecordSpec::new(module_idx, tensor_type, name.into(), dtype, shape.to_vec());
        self.data.push(Data::Fill(Box::new(fill)));
        self.records.push(spec);
        Ok(self)
    }

    /// Adds one tensor whose bytes `produce` hands over in pieces, in order,
    /// when the writer reaches it (see [`PiecesFn`]): a device tensor copied
    /// back through a staging ring, a converter's output. No buffer of the
    /// tensor's size is held.
    pub fn write_tensor_from(
        &mut self,
        module_idx: u16,
        name: impl Into<TensorPath>,
        tensor_type: TensorType,
        dtype: tensorizer_format::Dtype,
        shape: &[u64],
        produce: impl Fn(&mut dyn FnMut(&[u8]) -> Result<(), BoxError>) -> Result<(), BoxError>
        + Send
        + Sync
        + 'a,
    ) -> Result<&mut Self> {
        let spec = RecordSpec::new(module_idx, tensor_type, name.into(), dtype, shape.to_vec());
        self.data.push(Data::Pieces(Box::new(produce)));
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

    /// Calls `f` after each block written (from the writer threads), with
    /// the bytes written so far and the file's size: for progress bars.
    pub fn on_progress(&mut self, f: impl Fn(WriteProgress) + Send + Sync + 'a) -> &mut Self {
        self.progress = Some(ProgressHook(Box::new(f)));
        self
    }

    /// The most host memory the writer threads hold at once in the buffers
    /// of tensors added by [`Serializer::write_tensor_with`] (default
    /// [`DEFAULT_FILL_BUDGET`]): a thread waits for room before it fills
    /// the next one, and a tensor larger than the budget is filled alone.
    /// This is what bounds `convert` of a checkpoint larger than memory.
    pub fn fill_budget(&mut self, bytes: u64) -> &mut Self {
        self.fill_budget = Some(bytes);
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

    /// Record `i` of `plan` placed where the plan puts it.
    fn placed(plan: &FilePlan, i: usize) -> PlacedRecord {
        let entry = &plan.metadata.entries[i];
        PlacedRecord {
            index: i,
            header: plan.headers[i].clone(),
            header_offset: entry.header_offset,
            data_offset: entry.data_offset,
        }
    }

    fn sealing(&self) -> Sealing<'_> {
        #[cfg(feature = "encryption")]
        return self.encryption.as_ref();
        #[cfg(not(feature = "encryption"))]
        return None;
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
        let (written, total_bytes) = (AtomicU64::new(0), plan.file_len());
        let report = |n: usize| {
            if let Some(ProgressHook(f)) = &self.progress {
                let bytes = written.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
                f(WriteProgress { bytes, total_bytes });
            }
        };
        report(prologue.len());
        let jobs: Vec<(PlacedRecord, &Data<'_>)> = (0..plan.headers.len())
            .map(|i| (Self::placed(&plan, i), &self.data[i]))
            .collect();
        let budget = self.fill_budget.unwrap_or(DEFAULT_FILL_BUDGET);
        write_parallel(&jobs, sink.as_ref(), self.sealing(), &dest, budget, &report)?;
        sink.write_all_at(plan.terminator_offset(), &TERMINATOR)
            .map_err(source_error("writing the terminator"))?;
        report(TERMINATOR.len());
        let summary = summary(&plan, &dest);
        sink.commit()
            .map_err(source_error("committing the output"))?;
        Ok(summary)
    }

    /// Encodes the file into memory.
    pub fn to_bytes(mut self) -> Result<Vec<u8>> {
        let dest = Path::new("<memory>");
        let plan = self.plan(dest)?;
        let allocation_error = || Error::Allocation {
            path: dest.to_path_buf(),
            tensor: "<whole file>".into(),
            bytes: plan.file_len(),
        };
        let len = usize::try_from(plan.file_len()).map_err(|_| allocation_error())?;
        let mut out = Vec::new();
        out.try_reserve_exact(len).map_err(|_| allocation_error())?;
        out.resize(len, 0);
        let prologue = plan.metadata.encode().map_err(format_error(dest))?;
        out[..prologue.len()].copy_from_slice(&prologue);
        for i in 0..self.records.len() {
            let placed = Self::placed(&plan, i);
            write_record(
                &placed,
                &self.data[i],
                self.sealing(),
                dest,
                None,
                &mut |offset, bytes| {
                    let at = offset as usize;
                    out[at..at + bytes.len()].copy_from_slice(bytes);
                    Ok(())
                },
            )?;
        }
        out[len - TERMINATOR.len()..].copy_from_slice(&TERMINATOR);
        Ok(out)
    }
}

/// The key a writer encrypts with, if any.
#[cfg(feature = "encryption")]
pub(crate) type Sealing<'a> = Option<&'a crate::encryption::Encryption>;
/// The key a writer encrypts with, if any (none without the feature).
#[cfg(not(feature = "encryption"))]
pub(crate) type Sealing<'a> = Option<&'a std::convert::Infallible>;

/// Host memory the writer threads may hold at once in buffers of tensors
/// they fill themselves ([`Serializer::fill_budget`]).
pub const DEFAULT_FILL_BUDGET: u64 = 256 << 20;

/// Bytes shared by the writer threads: each takes a filled tensor's length
/// (at most the whole budget) before allocating it and gives it back once
/// the tensor is written.
pub(crate) struct ByteBudget {
    total: u64,
    free: Mutex<u64>,
    freed: Condvar,
}

impl ByteBudget {
    pub(crate) fn new(total: u64) -> Self {
        let total = total.max(1);
        Self {
            total,
            free: Mutex::new(total),
            freed: Condvar::new(),
        }
    }

    /// Waits until `bytes` (capped at the budget) are free, and takes them.
    /// Ends: every holder gives its bytes back when its tensor is written
    /// or has failed.
    fn take(&self, bytes: u64) -> BudgetShare<'_> {
        let bytes = bytes.min(self.total);
        let mut free = self.free.lock().expect("budget lock");
        while *free < bytes {
            free = self.freed.wait(free).expect("budget lock");
        }
        *free -= bytes;
        BudgetShare {
            budget: self,
            bytes,
        }
    }
}

struct BudgetShare<'b> {
    budget: &'b ByteBudget,
    bytes: u64,
}

impl Drop for BudgetShare<'_> {
    fn drop(&mut self) {
        *self.budget.free.lock().expect("budget lock") += self.bytes;
        self.budget.freed.notify_all();
    }
}

/// Writes records into `sink` at their places, several at once: SHA-256 of
/// one tensor is sequential, so tensors are the unit of parallelism, the
/// largest first so that none is left running alone at the end
/// (longest-processing-time-first). Buffers the writers fill themselves
/// share `fill_budget` bytes. The first error stops every worker.
pub(crate) fn write_parallel(
    jobs: &[(PlacedRecord, &Data<'_>)],
    sink: &dyn Sink,
    sealing: Sealing<'_>,
    dest: &Path,
    fill_budget: u64,
    report: &(dyn Fn(usize) + Sync),
) -> Result<()> {
    let budget = ByteBudget::new(fill_budget);
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(jobs[i].0.data_length()));
    let next = AtomicUsize::new(0);
    let first_error = Mutex::new(None);
    let worker = || {
        while let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
            let (placed, data) = &jobs[i];
            let mut write = |offset: u64, bytes: &[u8]| {
                sink.write_all_at(offset, bytes)
                    .map_err(source_error(format!(
                        "writing tensor {:?}",
                        placed.header.name.to_string()
                    )))?;
                report(bytes.len());
                Ok(())
            };
            if let Err(e) = write_record(placed, data, sealing, dest, Some(&budget), &mut write) {
                first_error.lock().expect("error lock").get_or_insert(e);
                // Stop every worker: the write is lost anyway.
                next.store(order.len(), Ordering::Relaxed);
            }
        }
    };
    let workers = rayon::current_num_threads().min(order.len());
    if workers <= 1 {
        worker();
    } else {
        rayon::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|_| worker());
            }
        });
    }
    match first_error.into_inner().expect("error lock") {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Hashes, encrypts if asked, and hands to `write` the data of one record
/// block by block at its place, then its header. One pass over the
/// tensor's memory: each block is still in cache when it is encrypted and
/// copied out, and no copy of the tensor is ever held.
pub(crate) fn write_record(
    placed: &PlacedRecord,
    data: &Data<'_>,
    sealing: Sealing<'_>,
    dest: &Path,
    budget: Option<&ByteBudget>,
    write: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let data_source = data;
    // Declared first, dropped last: the share is given back only once the
    // buffer is freed.
    let _share;
    let filled;
    let data: Option<&[u8]> = match data {
        Data::Bytes(bytes) => Some(bytes),
        Data::Pieces(_) => None,
        Data::Fill(fill) => {
            let tensor = || placed.header.name.to_string();
            _share = budget.map(|b| b.take(placed.data_length()));
            let len = usize::try_from(placed.data_length()).unwrap_or(usize::MAX);
            let mut buf = Vec::new();
            buf.try_reserve_exact(len).map_err(|_| Error::Allocation {
                path: dest.to_path_buf(),
                tensor: tensor(),
                bytes: placed.data_length(),
            })?;
            buf.resize(len, 0);
            fill(&mut buf).map_err(|source| Error::Fill {
                path: dest.to_path_buf(),
                tensor: tensor(),
                source,
            })?;
            filled = buf;
            Some(&filled)
        }
    };
    let mut hasher = placed.hasher().map_err(format_error(dest))?;
    #[cfg(feature = "encryption")]
    let mut sealer = match (sealing, &placed.header.crypt_info) {
        (Some(enc), Some(planned)) => enc.sealer(planned),
        _ => None,
    };
    #[cfg(not(feature = "encryption"))]
    let _ = sealing;
    #[cfg(feature = "encryption")]
    let block = sealer.as_ref().map_or(WRITE_BLOCK, |s| s.chunk_size());
    #[cfg(not(feature = "encryption"))]
    let block = WRITE_BLOCK;
    #[cfg(feature = "encryption")]
    let mut ciphertext = Vec::new();
    let mut offset = placed.data_offset;
    // One block: hashed (hashes cover the plaintext), sealed if asked, and
    // written at its place. Every block but a tensor's last is `block`
    // bytes long, as the cipher's chunking requires.
    let mut emit = |piece: &[u8]| -> Result<()> {
        hasher.update(piece);
        #[cfg(feature = "encryption")]
        let piece: &[u8] = match &mut sealer {
            Some(sealer) => {
                ciphertext.clear();
                ciphertext.extend_from_slice(piece);
                sealer.seal_next(&mut ciphertext);
                &ciphertext
            }
            None => piece,
        };
        write(offset, piece)?;
        offset += piece.len() as u64;
        Ok(())
    };
    match data {
        Some(data) => data.chunks(block).try_for_each(&mut emit)?,
        None => {
            let Data::Pieces(produce) = data_source else {
                unreachable!("only pieces come without bytes")
            };
            write_pieces(placed, produce, block, dest, &mut emit)?;
        }
    }
    #[cfg(feature = "encryption")]
    let crypt_info = sealer.map(crate::encryption::TensorSealer::finish);
    #[cfg(not(feature = "encryption"))]
    let crypt_info = None;
    let header = placed
        .finish_header(hasher, crypt_info)
        .map_err(format_error(dest))?;
    write(placed.header_offset, &header)
}

/// Runs a [`PiecesFn`] producer and regroups what it hands over into
/// blocks of `block` bytes for `emit`, checking that it gives exactly the
/// tensor's data length. A write error reaches the caller as it is; a
/// producer's own error becomes [`Error::Fill`].
fn write_pieces(
    placed: &PlacedRecord,
    produce: &PiecesFn<'_>,
    block: usize,
    dest: &Path,
    emit: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let expected = placed.data_length();
    let fill_error = |source: BoxError| Error::Fill {
        path: dest.to_path_buf(),
        tensor: placed.header.name.to_string(),
        source,
    };
    let mut carry: Vec<u8> = Vec::new();
    let mut given = 0u64;
    let mut write_error = None;
    let mut consume = |mut piece: &[u8]| -> Result<(), BoxError> {
        given += piece.len() as u64;
        if given > expected {
            return Err(format!("more than the tensor's {expected} bytes were given").into());
        }
        let mut step = || -> Result<()> {
            // Top up a partial block first, then whole blocks in place.
            if !carry.is_empty() {
                let n = (block - carry.len()).min(piece.len());
                carry.extend_from_slice(&piece[..n]);
                piece = &piece[n..];
                if carry.len() == block {
                    emit(&carry)?;
                    carry.clear();
                }
            }
            while piece.len() >= block {
                emit(&piece[..block])?;
                piece = &piece[block..];
            }
            if !piece.is_empty() {
                carry.reserve_exact(block);
                carry.extend_from_slice(piece);
            }
            Ok(())
        };
        step().map_err(|e| {
            let shown = e.to_string();
            write_error = Some(e);
            shown.into()
        })
    };
    let produced = produce(&mut consume);
    if let Some(e) = write_error {
        return Err(e);
    }
    produced.map_err(fill_error)?;
    if given != expected {
        return Err(fill_error(
            format!("{given} bytes were given for a tensor of {expected} bytes").into(),
        ));
    }
    if !carry.is_empty() {
        emit(&carry)?;
    }
    Ok(())
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
