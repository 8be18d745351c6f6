//! Reading `.tensors` files from local storage.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use tensorizer_format::safetensors::SafetensorsHeader;
use tensorizer_format::{
    Dtype, HashKind, IndexEntry, Metadata, TensorHeader, TensorPath, parse_header_at,
};

use crate::destination::{CallerBuffers, Destination, HostMemory, TensorInfo};
use crate::error::{Error, Result, format_error, source_error};
use crate::tensor::Tensor;
use tensorizer_io::{LocalFile, RangeSource, StorageOptions};

/// What a tensor's record stores that a reader can check it against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoredChecks {
    /// A CRC-32 is stored.
    pub crc32: bool,
    /// A SHA-256 is stored.
    pub sha256: bool,
    /// The data is encrypted, so each chunk's MAC authenticates it.
    pub macs: bool,
    /// The record holds data (meta and empty tensors hold none).
    pub has_data: bool,
}

impl StoredChecks {
    /// Checks' names, for reports: `["crc32", "sha256", "mac"]`.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.crc32, "crc32"),
            (self.sha256, "sha256"),
            (self.macs, "mac"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }
}

/// The result of checking one tensor (see [`Deserializer::check`]).
#[derive(Debug)]
pub struct TensorCheck {
    /// Position in the file.
    pub index: usize,
    /// The tensor's name.
    pub name: TensorPath,
    /// Bytes of tensor data.
    pub bytes: u64,
    /// What its header says (module index, type, dtype, shape), when it
    /// loaded.
    pub info: Option<TensorInfo>,
    /// SHA-256 of the tensor's bytes, when asked for and the tensor loaded.
    pub data_sha256: Option<[u8; 32]>,
    /// `Ok` when the tensor was read (and decrypted) and every checked hash
    /// matched; otherwise what went wrong, naming the tensor.
    pub outcome: Result<()>,
    /// What its record stores to check it against (set by
    /// [`Deserializer::check_strict`]).
    pub stored: Option<StoredChecks>,
}

/// Which stored hashes to check when loading.
///
/// CRC-32 is the default: it runs at several GB/s per core (about 8 GiB/s
/// here with `crc32fast`), so it costs little next to the read, and it catches
/// torn or corrupted data. SHA-256 (about 1 GiB/s per core) is for when the
/// file itself may have been tampered with; encrypted tensors carry only
/// SHA-256 and are authenticated by their MACs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verify {
    /// Check nothing.
    None,
    /// Check CRC-32 where stored (default).
    #[default]
    Crc32,
    /// Check every stored hash: CRC-32 and SHA-256.
    All,
}

impl Verify {
    fn checks(self, kind: HashKind) -> bool {
        match self {
            Verify::None => false,
            Verify::Crc32 => kind == HashKind::Crc32,
            Verify::All => true,
        }
    }
}

/// Which meta tensors an encrypted file may hold (see
/// [`Deserializer::unauthenticated_meta`]).
///
/// Encryption authenticates data, not the index: whoever can edit a file
/// without its key can rewrite any record as a meta tensor (no data, loads
/// as zeros), and nothing cryptographic tells that record from a genuine
/// one. So in an encrypted file a meta tensor is refused by loads and checks
/// unless the caller names it, or allows them all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum UnauthenticatedMeta {
    /// Refuse every meta tensor of an encrypted file (default).
    #[default]
    Refuse,
    /// Allow these meta tensors (vLLM's `.vllm_tensorized_marker`, say,
    /// whose value nobody reads); refuse the others.
    Allow(Vec<TensorPath>),
    /// Allow every meta tensor: zeros are what the file says, trusted.
    AllowAll,
}

impl UnauthenticatedMeta {
    /// The policy of a command line or keyword arguments: every meta tensor
    /// with `all`, else those `names` (none: refuse).
    pub fn from_names<N: Into<TensorPath>>(names: impl IntoIterator<Item = N>, all: bool) -> Self {
        let names: Vec<TensorPath> = names.into_iter().map(Into::into).collect();
        match (all, names.is_empty()) {
            (true, _) => Self::AllowAll,
            (false, true) => Self::Refuse,
            (false, false) => Self::Allow(names),
        }
    }

    /// True when `name` may be a meta tensor of an encrypted file.
    pub fn allows(&self, name: &TensorPath) -> bool {
        match self {
            Self::Refuse => false,
            Self::Allow(names) => names.contains(name),
            Self::AllowAll => true,
        }
    }
}

/// Headers larger than this (plus 16 bytes of MACs per 1 KiB chunk of data,
/// the densest crypt info the format allows) are refused before allocating.
const MAX_PLAIN_HEADER: u64 = 1 << 20;

/// Records (header + data) at most this large are read together with their
/// neighbours; larger ones get requests of their own, straight into their
/// buffers.
const SMALL_RECORD: u64 = 1 << 20;

/// One unit of reading.
enum Work {
    /// Adjacent small records, one request.
    Run(Vec<usize>),
    /// One large record.
    One(usize),
}

/// Opens a `.tensors` file and loads tensors from it.
///
/// Opening reads only the file header and the index, so listing is cheap;
/// tensors are read on request, in parallel.
///
/// ```
/// # use tensorizer::{Dtype, Serializer, TensorData, Deserializer, Verify};
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("model.tensors");
/// # let mut s = Serializer::new();
/// # s.write_state_dict([("w", TensorData::from_slice(&[2], &[1.0f32, 2.0])?), ("b", TensorData::from_slice(&[1], &[0.5f32])?)])?;
/// # s.write_to_file(&path)?;
/// let model = Deserializer::open(&path)?.verify(Verify::All);
/// for entry in model.entries() {
///     println!("{} {} {}", entry.name, entry.dtype.dtype(), entry.shape);
/// }
/// let w = model.read("w")?;
/// assert_eq!(w.as_slice::<f32>()?, &[1.0, 2.0]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Deserializer {
    path: PathBuf,
    source: Box<dyn RangeSource>,
    format: FileFormat,
    metadata: Metadata,
    by_path: HashMap<TensorPath, usize>,
    verify: Verify,
    #[cfg(feature = "encryption")]
    decryptor: Option<crate::encryption::Decryptor>,
    #[cfg(feature = "encryption")]
    kdf_limits: crate::encryption::KdfLimits,
    num_readers: Option<usize>,
    progress: Option<Callback>,
    cast: Option<Dtype>,
    unauthenticated_meta: UnauthenticatedMeta,
    /// Tensors whose bytes were checked against a stored hash or MAC.
    verified: std::sync::atomic::AtomicUsize,
    pieces: std::sync::OnceLock<rayon::ThreadPool>,
    /// The SHA-256 the whole file must have (see [`Deserializer::expect_sha256`]).
    expected_sha256: Option<[u8; 32]>,
}

/// What kind of file a [`Deserializer`] reads. Both load through the same
/// plan, reads, checks and destinations; they differ in where a tensor's
/// description lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileFormat {
    /// A tensorizer `.tensors` file: an index up front, a header (hashes,
    /// crypt info) before each tensor's data.
    Tensorizer,
    /// A Hugging Face safetensors file: one JSON header up front, the
    /// tensors' bytes back to back, no hashes.
    Safetensors {
        /// Its `__metadata__` map, if any.
        metadata: Option<std::collections::BTreeMap<String, String>>,
    },
}

/// The progress callback, printable in `Debug` output.
#[derive(Clone)]
struct Callback(ProgressFn);

impl std::fmt::Debug for Callback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<progress callback>")
    }
}

/// A progress callback (see [`Deserializer::on_progress`]).
pub type ProgressFn = std::sync::Arc<dyn Fn(&Progress<'_>) + Send + Sync>;

/// How far a multi-tensor load is, passed to the progress callback after
/// every tensor.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// Tensor data bytes loaded so far.
    pub bytes: u64,
    /// Tensor data bytes to load in all.
    pub total_bytes: u64,
    /// Tensors loaded so far.
    pub tensors: usize,
    /// Tensors to load in all.
    pub total_tensors: usize,
    /// The tensor just finished.
    pub name: &'a str,
}

/// Shared counters of one load.
struct Tracker<'a> {
    callback: Option<&'a ProgressFn>,
    bytes: std::sync::atomic::AtomicU64,
    tensors: std::sync::atomic::AtomicUsize,
    total_bytes: u64,
    total_tensors: usize,
}

impl Tracker<'_> {
    /// Counts the index entry `entry` as loaded.
    fn done(&self, entry: &IndexEntry) {
        use std::sync::atomic::Ordering::Relaxed;
        let len = entry.deserialized_length().unwrap_or(0);
        let bytes = self.bytes.fetch_add(len, Relaxed) + len;
        let tensors = self.tensors.fetch_add(1, Relaxed) + 1;
        if let Some(f) = self.callback {
            f(&Progress {
                bytes,
                total_bytes: self.total_bytes,
                tensors,
                total_tensors: self.total_tensors,
                name: &entry.name.to_string(),
            });
        }
    }
}

impl Deserializer {
    /// Opens a local file and parses its header and index.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let source = LocalFile::open(path.as_ref()).map_err(source_error("opening"))?;
        Self::from_source(Box::new(source))
    }

    /// Opens a URI: a plain path, `file://`, `http(s)://` (feature `http`),
    /// `s3://bucket/key` (feature `s3`) or `redis://host[:port]/prefix`
    /// (feature `redis`), with default retries and S3 credentials looked up
    /// from the environment and `~/.s3cfg`.
    pub fn open_uri(uri: &str) -> Result<Self> {
        Self::open_uri_with(uri, &StorageOptions::default())
    }

    /// Like [`Deserializer::open_uri`] with explicit retries, timeouts and S3 settings.
    pub fn open_uri_with(uri: &str, options: &StorageOptions) -> Result<Self> {
        let source = tensorizer_io::open_source(uri, options).map_err(source_error("opening"))?;
        Self::from_source(source)
    }

    /// Reads from any [`RangeSource`]: parses the header and index with one
    /// small read plus one read of the index.
    ///
    /// Safetensors files are recognised by their first bytes (a length and
    /// a JSON object) and read through the same engine: see [`FileFormat`].
    pub fn from_source(source: Box<dyn RangeSource>) -> Result<Self> {
        let path = PathBuf::from(source.uri());
        let file_len = source.len();
        let first = source
            .read_range(0, tensorizer_format::INDEX_OFFSET.min(file_len))
            .map_err(source_error("reading the file header"))?;
        // Not a tensorizer file, and a JSON object after the length (or the
        // name says so): a safetensors file, whose errors then say what is
        // wrong with it as one.
        let safetensors = first.get(8) == Some(&b'{')
            || source.uri().to_ascii_lowercase().ends_with(".safetensors");
        if !first.starts_with(&tensorizer_format::MAGIC) && safetensors {
            return Self::open_safetensors(source, path, &first);
        }
        let prologue_len = Metadata::prologue_len(&first).map_err(format_error(&path))?;
        if prologue_len > file_len {
            return Err(Error::Format {
                path,
                source: tensorizer_format::FormatError::Truncated {
                    what: "metadata index",
                    needed: prologue_len,
                    available: file_len,
                },
            });
        }
        // Bounded by the source's size, checked just above.
        let prologue = source
            .read_range(0, prologue_len)
            .map_err(source_error("reading the index"))?;
        let metadata = Metadata::parse(&prologue).map_err(format_error(&path))?;
        metadata
            .check_file_len(file_len)
            .map_err(format_error(&path))?;
        if metadata.entries.is_empty() {
            return Err(Error::EmptyIndex { path });
        }
        Ok(Self::with_index(
            source,
            path,
            FileFormat::Tensorizer,
            metadata,
        ))
    }

    /// A safetensors file whose first bytes are `first`: its JSON header is
    /// read with one request (bounded by the file's size and 100 MB) and
    /// becomes an index whose records have no header of their own.
    fn open_safetensors(source: Box<dyn RangeSource>, path: PathBuf, first: &[u8]) -> Result<Self> {
        use tensorizer_format::safetensors::PREFIX_LEN;
        let file_len = source.len();
        let json_len = SafetensorsHeader::json_len(first, file_len).map_err(format_error(&path))?;
        let json = source
            .read_range(PREFIX_LEN, json_len)
            .map_err(source_error("reading the safetensors header"))?;
        let header = SafetensorsHeader::parse(&json, file_len).map_err(format_error(&path))?;
        let entries = header.index_entries();
        let metadata = Metadata {
            header: tensorizer_format::FileHeader {
                version: tensorizer_format::FormatVersion::NON_OPAQUE,
                flags: tensorizer_format::FeatureFlags::default(),
                tensor_size: entries.iter().map(|e| e.data_length).sum(),
                tensor_count: entries.len() as u64,
            },
            index_len: json_len,
            entries,
        };
        let format = FileFormat::Safetensors {
            metadata: header.metadata,
        };
        Ok(Self::with_index(source, path, format, metadata))
    }

    fn with_index(
        source: Box<dyn RangeSource>,
        path: PathBuf,
        format: FileFormat,
        metadata: Metadata,
    ) -> Self {
        let by_path = metadata
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.path().clone(), i))
            .collect();
        Self {
            path,
            source,
            format,
            metadata,
            by_path,
            verify: Verify::default(),
            #[cfg(feature = "encryption")]
            decryptor: None,
            #[cfg(feature = "encryption")]
            kdf_limits: crate::encryption::KdfLimits::default(),
            num_readers: None,
            progress: None,
            cast: None,
            unauthenticated_meta: UnauthenticatedMeta::default(),
            verified: 0.into(),
            pieces: std::sync::OnceLock::new(),
            expected_sha256: None,
        }
    }

    /// Decrypts with `decryption` (a key, or a passphrase whose key is
    /// derived from each tensor's stored parameters). An error if the file is
    /// not encrypted, as in the Python library.
    #[cfg(feature = "encryption")]
    pub fn decryption(mut self, decryption: crate::encryption::Decryption) -> Result<Self> {
        let header = &self.metadata.header;
        if !header.has_crypt_info() {
            return Err(Error::NotEncrypted {
                path: self.path,
                version: header.version.get(),
            });
        }
        self.decryptor = Some(crate::encryption::Decryptor::new(
            decryption,
            self.kdf_limits,
        ));
        Ok(self)
    }

    /// Bounds on the key derivation a passphrase load may do for this file
    /// (default [`crate::encryption::KdfLimits::default`]: the presets the
    /// Python library writes).
    #[cfg(feature = "encryption")]
    pub fn kdf_limits(mut self, limits: crate::encryption::KdfLimits) -> Self {
        self.kdf_limits = limits;
        if let Some(d) = &mut self.decryptor {
            d.set_limits(limits);
        }
        self
    }

    /// Which meta tensors of an encrypted file to load as zeros (default:
    /// none, each is an [`Error::Unverifiable`] naming it). Files without
    /// encryption are not concerned: nothing in them is authenticated.
    ///
    /// ```
    /// # use tensorizer::{Deserializer, UnauthenticatedMeta};
    /// # fn open(d: Deserializer) -> Deserializer {
    /// // vLLM's marker parameter is a meta tensor whose value is never read.
    /// d.unauthenticated_meta(UnauthenticatedMeta::Allow(vec![".vllm_tensorized_marker".into()]))
    /// # }
    /// ```
    pub fn unauthenticated_meta(mut self, policy: UnauthenticatedMeta) -> Self {
        self.unauthenticated_meta = policy;
        self
    }

    /// The SHA-256 the whole file must have: loads and checks that read
    /// every tensor hash the file in order as its bytes arrive and fail
    /// on a mismatch (at their end: a streaming consumer has seen the
    /// tensors by then, and must drop them). For safetensors files, which
    /// store no hashes; a load of some tensors only cannot check it, and
    /// says so in a warning.
    pub fn expect_sha256(mut self, digest: [u8; 32]) -> Self {
        self.expected_sha256 = Some(digest);
        self
    }

    /// The SHA-256 set by [`Deserializer::expect_sha256`].
    pub fn expected_sha256(&self) -> Option<[u8; 32]> {
        self.expected_sha256
    }

    /// Sets which hashes to check (default [`Verify::Crc32`]).
    pub fn verify(mut self, verify: Verify) -> Self {
        self.verify = verify;
        self
    }

    /// How many tensors are read at once by [`Deserializer::read_all`],
    /// [`Deserializer::read_filtered`] and [`Deserializer::stream`].
    /// Default: the source's preferred concurrency (8 for HTTP, 16 for S3),
    /// at least the number of cores.
    pub fn num_readers(mut self, n: usize) -> Self {
        self.num_readers = Some(n.max(1));
        self
    }

    /// Calls `f` after every tensor of a multi-tensor load (the CLI draws
    /// its progress bars with it).
    pub fn on_progress(mut self, f: impl Fn(&Progress<'_>) + Send + Sync + 'static) -> Self {
        self.progress = Some(Callback(std::sync::Arc::new(f)));
        self
    }

    /// Converts every floating-point tensor (float16, bfloat16, float32,
    /// float64) to `dtype` as it is loaded, like the Python library's
    /// `dtype=` option; other tensors load unchanged. Costs one extra pass
    /// over the converted tensors.
    pub fn dtype(mut self, dtype: Dtype) -> Self {
        self.cast = Some(dtype);
        self
    }

    fn readers(&self) -> usize {
        self.num_readers.unwrap_or_else(|| self.default_readers())
    }

    /// Readers when none were set: the source's preferred concurrency, at
    /// least the number of cores.
    pub(crate) fn default_readers(&self) -> usize {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        self.source.hints().concurrency.max(cores)
    }

    /// The pool that reads (and decrypts) the pieces of one tensor.
    fn piece_pool(&self) -> Result<&rayon::ThreadPool> {
        if let Some(pool) = self.pieces.get() {
            return Ok(pool);
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.readers())
            .thread_name(|i| format!("tensorizer-piece-{i}"))
            .build()
            .map_err(|e| Error::Io {
                path: self.path.clone(),
                action: "starting reader threads".into(),
                source: std::io::Error::other(e),
            })?;
        Ok(self.pieces.get_or_init(|| pool))
    }

    fn tracker(&self, selected: &[usize]) -> Tracker<'_> {
        Tracker {
            callback: self.progress.as_ref().map(|c| &c.0),
            bytes: 0.into(),
            tensors: 0.into(),
            total_bytes: selected
                .iter()
                .map(|&i| self.metadata.entries[i].deserialized_length().unwrap_or(0))
                .sum(),
            total_tensors: selected.len(),
        }
    }

    /// How many tensors loaded so far were checked against something the
    /// file stores (a CRC-32 or SHA-256 that [`Deserializer::verify`] asks
    /// for, or the MACs of their cipher chunks): 0 after a load means
    /// nothing was verified, whatever was asked.
    pub fn verified_tensors(&self) -> usize {
        self.verified.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether this is a tensorizer or a safetensors file.
    pub fn format(&self) -> &FileFormat {
        &self.format
    }

    fn is_safetensors(&self) -> bool {
        matches!(self.format, FileFormat::Safetensors { .. })
    }

    /// The file's path or URI.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the bytes come from.
    pub fn source(&self) -> &dyn RangeSource {
        self.source.as_ref()
    }

    /// File header and index.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Index entries in file order (no I/O).
    pub fn entries(&self) -> &[IndexEntry] {
        &self.metadata.entries
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.metadata.entries.len()
    }

    /// True for a safetensors file without tensors (tensorizer files
    /// without tensors are refused by [`Deserializer::open`]).
    pub fn is_empty(&self) -> bool {
        self.metadata.entries.is_empty()
    }

    /// Position of the tensor named `name`.
    pub fn position(&self, name: &TensorPath) -> Option<usize> {
        self.by_path.get(name).copied()
    }

    /// Reads and checks the per-tensor header of tensor `i` (not its data).
    pub fn read_header(&self, i: usize) -> Result<TensorHeader> {
        let entry = &self.metadata.entries[i];
        if self.is_safetensors() {
            return Ok(headerless(entry));
        }
        self.check_header_size(entry)?;
        let bytes = self
            .source
            .read_range(entry.header_offset, entry.header_size())
            .map_err(source_error(format!(
                "reading the header of tensor {:?}",
                entry.name.to_string()
            )))?;
        parse_header_at(&bytes, entry, self.metadata.header.has_crypt_info())
            .map_err(format_error(&self.path))
    }

    /// Headers are small; a huge one is a hostile index, refused before
    /// anything is allocated for it.
    fn check_header_size(&self, entry: &IndexEntry) -> Result<()> {
        let max = if self.metadata.header.has_crypt_info() {
            // Crypt info grows with the data: at most 16 bytes of MAC per
            // 1 KiB chunk.
            MAX_PLAIN_HEADER + entry.data_length / 64
        } else {
            // What an unencrypted header holds: the entry's name, dtype and
            // dimensions, a hash section (16-bit length) and fixed fields.
            let dims = entry.shape.dims().len() as u64 * if entry.wide_dims { 8 } else { 4 };
            let fixed = 8 + 2 + 1 + 2 + 1 + 1 + 8;
            fixed
                + entry.name.as_bytes().len() as u64
                + entry.dtype.as_str().len() as u64
                + dims
                + 2
                + u64::from(u16::MAX)
        };
        if entry.header_size() > max {
            return Err(Error::Format {
                path: self.path.clone(),
                source: tensorizer_format::FormatError::InvalidOffset {
                    tensor: entry.name.to_string(),
                    reason: format!(
                        "header of {} bytes exceeds the {max}-byte limit",
                        entry.header_size()
                    ),
                },
            });
        }
        Ok(())
    }

    /// Reads tensor `name`.
    pub fn read(&self, name: impl Into<TensorPath>) -> Result<Tensor> {
        let name = name.into();
        let i = self.position(&name).ok_or_else(|| Error::NotFound {
            path: self.path.clone(),
            name: name.to_string(),
        })?;
        self.read_at(i)
    }

    /// Reads tensor number `i` (file order).
    pub fn read_at(&self, i: usize) -> Result<Tensor> {
        let host = HostMemory::new(self.cast);
        self.load_one(&host, i)?;
        Ok(host.take(&[i]).pop().expect("loaded above"))
    }

    /// Loads tensor `i` alone: its header, then its data into `dest`.
    fn load_one<D: Destination>(&self, dest: &D, i: usize) -> Result<()> {
        let header = self.read_header(i)?;
        let data_offset = self.metadata.entries[i].data_offset;
        self.load(dest, i, header, |offset: usize, piece: &mut [u8]| {
            self.source
                .read_exact_at(data_offset + offset as u64, piece)
        })
    }

    /// Loads tensor `i` whose header is known: `read(offset, piece)` fills
    /// pieces of its stored data (from the source, or from a run of records
    /// read at once).
    fn load<D: Destination>(
        &self,
        dest: &D,
        i: usize,
        header: TensorHeader,
        read: impl Fn(usize, &mut [u8]) -> tensorizer_io::Result<()> + Sync,
    ) -> Result<()> {
        let entry = &self.metadata.entries[i];
        let encrypted = header.crypt_info.as_ref().is_some_and(|c| c.is_encrypted());
        if encrypted && !self.can_decrypt() {
            return Err(Error::Encrypted {
                path: self.path.clone(),
                tensor: entry.name.to_string(),
            });
        }
        let meta = entry.is_meta();
        if meta
            && self.metadata.header.has_crypt_info()
            && !self.unauthenticated_meta.allows(entry.name.path())
        {
            return Err(Error::Unverifiable {
                tensor: entry.name.to_string(),
                reason: "is a meta tensor (no data, loads as zeros) in an encrypted file: \
                         nothing authenticates it, anyone can make any tensor one without the \
                         key; allow it by name with `unauthenticated_meta` (CLI: --allow-meta NAME, \
                         Python: allow_unauthenticated_meta=[...])"
                    .into(),
            });
        }
        let len = entry.deserialized_length().unwrap_or(u64::MAX);
        let len = usize::try_from(len).map_err(|_| Error::Allocation {
            path: self.path.clone(),
            tensor: entry.name.to_string(),
            bytes: len,
        })?;
        if !encrypted && header.crypt_info.is_some() && entry.data_length > 0 && self.can_decrypt()
        {
            // Python refuses plaintext data inside a file read with a key.
            return Err(Error::Decryption {
                path: self.path.clone(),
                tensor: entry.name.to_string(),
                reason: "the tensor holds data but no cipher chunk (stored unencrypted in an encrypted file)".into(),
            });
        }
        let cipher = header.crypt_info.as_ref().filter(|_| encrypted && !meta);
        let info = |header: TensorHeader| TensorInfo {
            path: entry.name.path().clone(),
            module_idx: header.module_idx,
            tensor_type: header.tensor_type,
            dtype: header.dtype,
            shape: header.shape,
            meta,
        };
        let step = dest.max_buffer().max(1);
        if len > step && !meta {
            // Too large for one of the destination's buffers: pieces, each
            // handed over as soon as it is read; the hashes cover them all.
            let step = match cipher {
                #[cfg(feature = "encryption")]
                Some(c) => match crate::encryption::Decryptor::piece_unit(c) {
                    // Pieces hold whole cipher chunks (each has its own MAC).
                    Some(unit) if unit <= step => step / unit * unit,
                    _ => {
                        return Err(Error::Decryption {
                            path: self.path.clone(),
                            tensor: entry.name.to_string(),
                            reason: format!(
                                "its cipher chunks do not fit the destination's {step}-byte buffers; raise their size to {len} bytes"
                            ),
                        });
                    }
                },
                _ => step,
            };
            let mut verifier = header
                .verifier(|k| self.verify.checks(k))
                .map_err(format_error(&self.path))?;
            for offset in (0..len).step_by(step) {
                let mut piece = dest.allocate(i, entry, step.min(len - offset))?;
                self.fill_hashed(
                    entry,
                    cipher,
                    (offset, len),
                    &mut piece,
                    &read,
                    &mut verifier,
                )?;
                dest.complete_piece(i, offset, piece)?;
            }
            header
                .check_hashes(verifier)
                .map_err(format_error(&self.path))?;
            self.count_verified(&header, cipher.is_some());
            return dest.complete_in_pieces(i, info(header));
        }
        if meta {
            // Meta tensors read as zeros: the destination makes them (or,
            // checking only, needs no bytes at all).
            header
                .verify(&[], |k| self.verify.checks(k))
                .map_err(format_error(&self.path))?;
            self.count_verified(&header, false);
            return dest.complete_meta(i, entry, info(header), len);
        }
        let mut data = dest.allocate(i, entry, len)?;
        // With CRC-32 alone to check, each piece is hashed right after its
        // read, while still in cache, and the CRCs are combined: no second
        // pass over the tensor's memory.
        let crc_pieces = self.verify == Verify::Crc32 && cipher.is_none();
        let verified = if crc_pieces {
            let crcs = self.read_plain(entry, &mut data, &read, true)?;
            header.check_crc32_pieces(&crcs)
        } else if header.hashes.iter().any(|h| self.verify.checks(h.kind())) {
            // SHA-256 is sequential within a tensor: this thread hashes
            // each block as it lands while later blocks are still read.
            let mut verifier = header
                .verifier(|k| self.verify.checks(k))
                .map_err(format_error(&self.path))?;
            self.fill_hashed(entry, cipher, (0, len), &mut data, &read, &mut verifier)?;
            header.check_hashes(verifier)
        } else {
            self.fill(entry, cipher, (0, len), &mut data, &read)?;
            Ok(())
        };
        verified.map_err(format_error(&self.path))?;
        self.count_verified(&header, cipher.is_some());
        dest.complete(i, info(header), data)
    }

    /// Counts a tensor checked against a stored hash this load checks, or
    /// against the MACs of its chunks (`decrypted`).
    fn count_verified(&self, header: &TensorHeader, decrypted: bool) {
        if decrypted || header.hashes.iter().any(|h| self.verify.checks(h.kind())) {
            self.verified
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Reads plaintext bytes of tensor `entry` into `data` (`read` is
    /// relative to `data`) in request-size pieces at once: one HTTP/S3
    /// stream would be far below the link's speed. With `crc`, each piece is
    /// read block by block where the source reads small blocks as cheaply
    /// (local files) and each block hashed while still in cache; returns
    /// each piece's CRC-32 (0 without `crc`) and length, in order.
    fn read_plain(
        &self,
        entry: &IndexEntry,
        data: &mut [u8],
        read: &(impl Fn(usize, &mut [u8]) -> tensorizer_io::Result<()> + Sync),
        crc: bool,
    ) -> Result<Vec<(u32, u64)>> {
        let hints = self.source.hints();
        let piece = hints.request_size.max(1 << 20);
        let block = if crc {
            hints.block_size.clamp(64 << 10, piece)
        } else {
            piece
        };
        let read_piece = |k: usize, chunk: &mut [u8]| {
            let mut hasher = crc32fast::Hasher::new();
            for (j, bytes) in chunk.chunks_mut(block).enumerate() {
                read(k * piece + j * block, bytes)?;
                if crc {
                    hasher.update(bytes);
                }
            }
            Ok((hasher.finalize(), chunk.len() as u64))
        };
        let read = if data.len() <= piece {
            // One piece: read it here.
            read_piece(0, data).map(|one| vec![one])
        } else {
            // The pieces of one tensor run on their own pool: a reader
            // thread waiting for them then cannot steal another tensor's
            // work and block in `allocate` while holding a buffer (a
            // deadlock with recycling destinations).
            self.piece_pool()?.install(|| {
                data.par_chunks_mut(piece)
                    .enumerate()
                    .map(|(k, chunk)| read_piece(k, chunk))
                    .collect::<tensorizer_io::Result<Vec<_>>>()
            })
        };
        read.map_err(source_error(format!(
            "reading the data of tensor {:?}",
            entry.name.to_string()
        )))
    }

    /// [`Deserializer::fill`], feeding `hasher` with the bytes in order as
    /// they land: blocks are read (and decrypted) on the piece pool, a
    /// bounded window ahead, while the calling thread hashes the earliest
    /// block that is ready. SHA-256 of one tensor cannot be split across
    /// cores, but it then runs at hashing speed with the reads off its
    /// path, while the other readers hash other tensors.
    fn fill_hashed(
        &self,
        entry: &IndexEntry,
        cipher: Option<&tensorizer_format::CryptInfo>,
        (offset, total): (usize, usize),
        data: &mut [u8],
        read: &(impl Fn(usize, &mut [u8]) -> tensorizer_io::Result<()> + Sync),
        hasher: &mut tensorizer_format::TensorHasher,
    ) -> Result<()> {
        let hints = self.source.hints();
        let block = hints
            .block_size
            .clamp(64 << 10, hints.request_size.max(1 << 20));
        // Blocks of whole cipher chunks (each carries its own MAC); a tensor
        // sealed as one box has no smaller unit.
        let block = match cipher {
            None => Some(block),
            #[cfg(feature = "encryption")]
            Some(info) => crate::encryption::Decryptor::piece_unit(info)
                .map(|unit| unit * (block / unit).max(1)),
            #[cfg(not(feature = "encryption"))]
            Some(_) => None,
        };
        let block = match block {
            Some(block) if data.len() > block => block,
            // One block (or one box): read it, then hash it.
            _ => {
                self.fill(entry, cipher, (offset, total), data, read)?;
                hasher.update(data);
                return Ok(());
            }
        };
        // Enough blocks in flight to keep the pool busy, few enough that
        // one huge tensor does not queue the whole pool behind it.
        let ahead = ((64usize << 20) / block).max(4);
        let pool = self.piece_pool()?;
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (tx, rx) =
            std::sync::mpsc::channel::<(usize, std::result::Result<&mut [u8], Option<Error>>)>();
        let mut failure = None;
        pool.in_place_scope(|scope| {
            let mut blocks = data.chunks_mut(block).enumerate();
            let mut spawn_next = || {
                let Some((k, chunk)) = blocks.next() else {
                    return false;
                };
                let (tx, stop) = (tx.clone(), &stop);
                scope.spawn(move |_| {
                    let filled = if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        Err(None)
                    } else {
                        self.fill(entry, cipher, (offset + k * block, total), chunk, read)
                            .map_err(Some)
                    };
                    let _ = tx.send((k, filled.map(|()| chunk)));
                });
                true
            };
            let mut in_flight = 0;
            while in_flight < ahead && spawn_next() {
                in_flight += 1;
            }
            let mut ready = std::collections::BTreeMap::new();
            let mut next = 0;
            while in_flight > 0 {
                let Ok((k, filled)) = rx.recv() else { break };
                in_flight -= 1;
                match filled {
                    Ok(chunk) => {
                        ready.insert(k, chunk);
                    }
                    Err(e) => {
                        stop.store(true, std::sync::atomic::Ordering::Relaxed);
                        if let Some(e) = e {
                            failure.get_or_insert(e);
                        }
                    }
                }
                if failure.is_some() {
                    continue;
                }
                while let Some(chunk) = ready.remove(&next) {
                    hasher.update(chunk);
                    next += 1;
                    if spawn_next() {
                        in_flight += 1;
                    }
                }
            }
        });
        drop((tx, rx)); // they borrow `data`
        match failure {
            None => Ok(()),
            // A block of one chunk cannot tell a wrong key (no chunk
            // authenticates) from one damaged chunk: the whole range,
            // decrypted at once, names which it is.
            Some(e @ Error::Decryption { .. }) => {
                self.fill(entry, cipher, (offset, total), data, read)?;
                Err(e)
            }
            Some(e) => Err(e),
        }
    }

    /// Fills `data` with bytes `offset..offset + data.len()` of tensor
    /// `entry` (`total` bytes), decrypting them if `cipher` is given.
    fn fill(
        &self,
        entry: &IndexEntry,
        cipher: Option<&tensorizer_format::CryptInfo>,
        (offset, total): (usize, usize),
        data: &mut [u8],
        read: &(impl Fn(usize, &mut [u8]) -> tensorizer_io::Result<()> + Sync),
    ) -> Result<()> {
        let read = |at: usize, piece: &mut [u8]| read(offset + at, piece);
        if let Some(info) = cipher {
            // Each cipher chunk is decrypted as soon as it is read, on the
            // tensor's own pool (see `read_plain`).
            return self
                .piece_pool()?
                .install(|| self.decrypt(entry, info, (offset, total), data, read));
        }
        self.read_plain(entry, data, &read, false).map(drop)
    }

    fn can_decrypt(&self) -> bool {
        #[cfg(feature = "encryption")]
        return self.decryptor.is_some();
        #[cfg(not(feature = "encryption"))]
        return false;
    }

    /// Reads and decrypts bytes `offset..offset + data.len()` of tensor
    /// `entry` (`total` bytes long).
    #[cfg(feature = "encryption")]
    fn decrypt(
        &self,
        entry: &IndexEntry,
        info: &tensorizer_format::CryptInfo,
        (offset, total): (usize, usize),
        data: &mut [u8],
        read: impl Fn(usize, &mut [u8]) -> tensorizer_io::Result<()> + Sync,
    ) -> Result<()> {
        use crate::encryption::DecryptFailure;
        let decryptor = self.decryptor.as_ref().expect("checked by can_decrypt");
        decryptor.read_and_open_at(info, offset, total, data, read).map_err(|failure| {
            let reason = match failure {
                DecryptFailure::Read(source) => {
                    return Error::Source {
                        action: format!("reading the data of tensor {:?}", entry.name.to_string()),
                        source,
                    };
                }
                DecryptFailure::Layout(why) => why,
                DecryptFailure::NoKdfRecord => {
                    "a passphrase was given, but the tensor stores no key-derivation record (it was encrypted with a raw key)".into()
                }
                DecryptFailure::Crypto(e @ tensorizer_crypto::CryptoError::WrongKey { .. }) if decryptor.uses_passphrase() => {
                    format!("{e} (check the passphrase)")
                }
                DecryptFailure::Crypto(e) => e.to_string(),
            };
            Error::Decryption {
                path: self.path.clone(),
                tensor: entry.name.to_string(),
                reason,
            }
        })
    }

    #[cfg(not(feature = "encryption"))]
    fn decrypt(
        &self,
        entry: &IndexEntry,
        _: &tensorizer_format::CryptInfo,
        _: (usize, usize),
        _: &mut [u8],
        _: impl Fn(usize, &mut [u8]) -> tensorizer_io::Result<()> + Sync,
    ) -> Result<()> {
        Err(Error::Encrypted {
            path: self.path.clone(),
            tensor: entry.name.to_string(),
        })
    }

    /// Reads, in parallel, every tensor whose index entry passes `filter`;
    /// results come in file order.
    pub fn read_filtered(
        &self,
        filter: impl Fn(&IndexEntry) -> bool + Sync,
    ) -> Result<Vec<Tensor>> {
        self.read_filtered_with(filter, None)
    }

    /// [`Deserializer::read_filtered`] with `readers` threads (default:
    /// [`Deserializer::num_readers`]'s).
    pub(crate) fn read_filtered_with(
        &self,
        filter: impl Fn(&IndexEntry) -> bool + Sync,
        readers: Option<usize>,
    ) -> Result<Vec<Tensor>> {
        let selected: Vec<usize> = (0..self.len())
            .filter(|&i| filter(&self.metadata.entries[i]))
            .collect();
        let tracker = self.tracker(&selected);
        self.read_indices(
            &selected,
            &tracker,
            self.num_readers
                .or(readers)
                .unwrap_or_else(|| self.readers()),
        )
    }

    /// Reads `indices` (file order) on `pool` into host memory.
    fn read_indices(
        &self,
        indices: &[usize],
        tracker: &Tracker<'_>,
        readers: usize,
    ) -> Result<Vec<Tensor>> {
        let host = HostMemory::new(self.cast);
        self.load_indices(&host, indices, tracker, readers)?;
        Ok(host.take(indices))
    }

    /// Loads `indices` on `pool` into `dest`: neighbouring small records
    /// in one request each, large ones on their own.
    fn load_indices<D: Destination>(
        &self,
        dest: &D,
        indices: &[usize],
        tracker: &Tracker<'_>,
        readers: usize,
    ) -> Result<()> {
        self.load_indices_with(dest, indices, tracker, readers, None)
    }

    /// [`Deserializer::load_indices`]; with `keep_going`, a tensor that
    /// fails is handed to it and the load goes on with the others. With an
    /// expected SHA-256 ([`Deserializer::expect_sha256`]) and every tensor
    /// selected, the file is hashed in order on the way and a mismatch
    /// fails the load.
    fn load_indices_with<D: Destination>(
        &self,
        dest: &D,
        indices: &[usize],
        tracker: &Tracker<'_>,
        readers: usize,
        keep_going: Option<&(dyn Fn(usize, Error) + Sync)>,
    ) -> Result<()> {
        let Some(expected) = self.expected_sha256 else {
            return self.run_plan(dest, indices, tracker, readers, keep_going, false);
        };
        if indices.len() < self.len() {
            tracing::warn!(
                file = %self.path.display(),
                "the file's SHA-256 is not checked: this load reads {} of its {} tensors",
                indices.len(),
                self.len()
            );
            return self.run_plan(dest, indices, tracker, readers, keep_going, false);
        }
        let data_start = self
            .metadata
            .entries
            .first()
            .map_or(self.source.len(), |e| e.header_offset);
        let prologue = self
            .source
            .read_range(0, data_start)
            .map_err(source_error("reading the file's header to hash it"))?;
        let hashing = crate::file_digest::InOrder::new(dest, &self.metadata.entries, &prologue);
        // Readers wait for one another's bytes to be hashed: fewer readers
        // than the destination has buffers, so the earliest always gets one.
        let readers = match dest.buffers_limit() {
            Some(limit) => readers.min(limit.saturating_sub(1)).max(1),
            None => readers,
        };
        self.run_plan(&hashing, indices, tracker, readers, keep_going, true)?;
        match hashing.finish(self.source.len()) {
            Some(actual) if actual == expected => Ok(()),
            Some(actual) => Err(Error::FileDigest {
                path: self.path.clone(),
                expected: tensorizer_format::StoredHash::Sha256(expected).to_hex(),
                actual: tensorizer_format::StoredHash::Sha256(actual).to_hex(),
            }),
            // Only a load that kept going past failures gets here: each
            // failed tensor was reported.
            None => Ok(()),
        }
    }

    /// Runs the reads of `indices` into `dest` on `readers` threads, the
    /// largest first, or in file order with `file_order`.
    fn run_plan<D: Destination>(
        &self,
        dest: &D,
        indices: &[usize],
        tracker: &Tracker<'_>,
        readers: usize,
        keep_going: Option<&(dyn Fn(usize, Error) + Sync)>,
        file_order: bool,
    ) -> Result<()> {
        let mut plan = self.plan_reads(indices);
        // Largest first: a huge tensor (an embedding) is read and hashed
        // alongside the rest, not last and alone.
        let entries = &self.metadata.entries;
        let bytes = |i: usize| entries[i].end_offset() - entries[i].header_offset;
        if !file_order {
            plan.sort_by_key(|w| {
                std::cmp::Reverse(match w {
                    Work::Run(run) => run.iter().map(|&i| bytes(i)).sum(),
                    Work::One(i) => bytes(*i),
                })
            });
        }
        let keep_going_and_wake = keep_going.map(|report| {
            move |i: usize, e: Error| {
                dest.abandon();
                report(i, e)
            }
        });
        let keep_going = keep_going_and_wake
            .as_ref()
            .map(|f| f as &(dyn Fn(usize, Error) + Sync));
        let work = std::sync::Mutex::new(plan.into_iter());
        let failure: std::sync::Mutex<Option<Error>> = std::sync::Mutex::new(None);
        // Plain threads pulling from a queue, not a rayon pool: a reader
        // may block in `Destination::allocate` (a recycling staging ring),
        // and a rayon worker waiting for a tensor's pieces would steal
        // another tensor's work and block there while holding a buffer.
        let reader = || {
            loop {
                if failure.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                    return;
                }
                let Some(w) = work.lock().unwrap_or_else(|e| e.into_inner()).next() else {
                    return;
                };
                let result = match (w, keep_going) {
                    (Work::Run(run), None) => self.load_run(dest, &run).map(|()| run),
                    (Work::One(i), None) => self.load_one(dest, i).map(|()| vec![i]),
                    (w, Some(report)) => {
                        let tensors = match w {
                            Work::Run(run) => run,
                            Work::One(i) => vec![i],
                        };
                        self.load_each(dest, &tensors, report);
                        Ok(tensors)
                    }
                };
                match result {
                    Ok(loaded) => loaded
                        .iter()
                        .for_each(|&i| tracker.done(&self.metadata.entries[i])),
                    Err(e) => {
                        failure
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                        dest.abandon();
                        return;
                    }
                }
            }
        };
        let threads = readers.min(indices.len()).max(1);
        if threads == 1 {
            reader(); // no thread to start for one reader
        } else {
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(reader);
                }
            });
        }
        match failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Groups `indices` into requests: runs of adjacent records of at most
    /// [`SMALL_RECORD`] bytes each, up to the source's request size (one
    /// request instead of two per tensor matters over HTTP and S3, where
    /// each costs a round trip), and large records alone.
    fn plan_reads(&self, indices: &[usize]) -> Vec<Work> {
        let entries = &self.metadata.entries;
        let request = self.source.hints().request_size as u64;
        let mut work = Vec::new();
        let mut run: Vec<usize> = Vec::new();
        let mut run_len = 0u64;
        for &i in indices {
            let e = &entries[i];
            let size = e.end_offset() - e.header_offset;
            let small = size <= SMALL_RECORD && self.check_header_size(e).is_ok();
            let joins = run
                .last()
                .is_some_and(|&j| entries[j].end_offset() == e.header_offset)
                && run_len + size <= request;
            let extends_run = small && joins;
            if !run.is_empty() && !extends_run {
                work.push(Work::Run(std::mem::take(&mut run)));
                run_len = 0;
            }
            if small {
                run.push(i);
                run_len += size;
            } else {
                work.push(Work::One(i));
            }
        }
        if !run.is_empty() {
            work.push(Work::Run(run));
        }
        work
    }

    /// Loads `tensors` (one record, or a run of adjacent small ones read
    /// with one request), handing each tensor's failure to `report`
    /// instead of stopping; a run that cannot be read at once is read
    /// tensor by tensor, so each gets its own error.
    fn load_each<D: Destination>(
        &self,
        dest: &D,
        tensors: &[usize],
        report: &(dyn Fn(usize, Error) + Sync),
    ) {
        if let [i] = tensors {
            return self.load_one(dest, *i).unwrap_or_else(|e| report(*i, e));
        }
        let entries = &self.metadata.entries;
        let (first, last) = (&entries[tensors[0]], &entries[tensors[tensors.len() - 1]]);
        let start = first.header_offset;
        let Ok(bytes) = self.source.read_range(start, last.end_offset() - start) else {
            for &i in tensors {
                self.load_one(dest, i).unwrap_or_else(|e| report(i, e));
            }
            return;
        };
        for &i in tensors {
            self.load_from_run(dest, i, start, &bytes)
                .unwrap_or_else(|e| report(i, e));
        }
    }

    /// Reads a run of adjacent small records with one request; each tensor
    /// is copied from it into its own buffer.
    fn load_run<D: Destination>(&self, dest: &D, run: &[usize]) -> Result<()> {
        let entries = &self.metadata.entries;
        let (first, last) = (&entries[run[0]], &entries[run[run.len() - 1]]);
        let start = first.header_offset;
        let bytes = self
            .source
            .read_range(start, last.end_offset() - start)
            .map_err(source_error(format!(
                "reading tensors {:?} to {:?}",
                first.name.to_string(),
                last.name.to_string()
            )))?;
        run.iter()
            .try_for_each(|&i| self.load_from_run(dest, i, start, &bytes))
    }

    /// Loads tensor `i` from `bytes`, a run of records read from `start`.
    fn load_from_run<D: Destination>(
        &self,
        dest: &D,
        i: usize,
        start: u64,
        bytes: &[u8],
    ) -> Result<()> {
        let e = &self.metadata.entries[i];
        let at = |offset: u64| (offset - start) as usize;
        let header = if self.is_safetensors() {
            headerless(e)
        } else {
            parse_header_at(
                &bytes[at(e.header_offset)..at(e.data_offset)],
                e,
                self.metadata.header.has_crypt_info(),
            )
            .map_err(format_error(&self.path))?
        };
        let data = &bytes[at(e.data_offset)..at(e.end_offset())];
        self.load(dest, i, header, |offset, piece| {
            let src = data.get(offset..offset + piece.len()).ok_or_else(|| {
                tensorizer_io::IoError::OutOfRange {
                    uri: self.source.uri().to_owned(),
                    start: e.data_offset + offset as u64,
                    end: e.data_offset + (offset + piece.len()) as u64,
                    len: e.end_offset(),
                }
            })?;
            piece.copy_from_slice(src);
            Ok(())
        })
    }

    /// Checks every tensor that passes `filter` against its stored hashes
    /// (those chosen with [`Deserializer::verify`]; every MAC of an
    /// encrypted file read with a key) without keeping its data, and goes
    /// on past failures: one [`TensorCheck`] per tensor, in file order.
    /// Reads run in parallel as in [`Deserializer::read_all`], each tensor
    /// hashed while later reads are in flight; memory holds at most one
    /// 64 MiB piece per reader whatever the tensor sizes.
    ///
    /// With `data_sha256`, each check also carries the SHA-256 of the
    /// tensor's bytes alone (the Python oracle's `sha256` field; the stored
    /// SHA-256 also covers the tensor's header).
    ///
    /// ```
    /// # use tensorizer::{Deserializer, Serializer, TensorData, Verify};
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("m.tensors");
    /// # let mut s = Serializer::new();
    /// # s.write_state_dict([("w", TensorData::from_slice(&[2], &[1.0f32, 2.0])?)])?;
    /// # s.write_to_file(&path)?;
    /// let checks = Deserializer::open(&path)?.verify(Verify::All).check(|_| true, false);
    /// let failed: Vec<_> = checks.iter().filter(|c| c.outcome.is_err()).collect();
    /// assert!(failed.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn check(
        &self,
        filter: impl Fn(&IndexEntry) -> bool + Sync,
        data_sha256: bool,
    ) -> Vec<TensorCheck> {
        let selected: Vec<usize> = (0..self.len())
            .filter(|&i| filter(&self.metadata.entries[i]))
            .collect();
        let tracker = self.tracker(&selected);
        let dest = crate::destination::Checker::new(data_sha256);
        let failures = std::sync::Mutex::new(HashMap::new());
        let report = |i: usize, e: Error| {
            failures
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(i, e);
        };
        let run = self.load_indices_with(&dest, &selected, &tracker, self.readers(), Some(&report));
        let mut failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
        let mut checked = dest.into_checked();
        // Only a failure of the load itself (no reader thread) leaves
        // tensors unchecked.
        let mut stopped = run.err();
        let mut checks: Vec<TensorCheck> = selected
            .into_iter()
            .map(|i| {
                let entry = &self.metadata.entries[i];
                let (outcome, info, data_sha256) = match (failures.remove(&i), checked.remove(&i)) {
                    (Some(e), _) => (Err(e), None, None),
                    (None, Some((info, digest))) => (Ok(()), Some(info), digest),
                    (None, None) => (
                        Err(stopped.take().unwrap_or_else(|| Error::NotChecked {
                            tensor: entry.name.to_string(),
                        })),
                        None,
                        None,
                    ),
                };
                TensorCheck {
                    index: i,
                    name: entry.name.path().clone(),
                    bytes: entry.deserialized_length().unwrap_or(0),
                    info,
                    data_sha256,
                    outcome,
                    stored: None,
                }
            })
            .collect();
        // Every tensor checked, and the load still failed: the file as a
        // whole (its SHA-256). The first tensor carries it.
        if let (Some(e), Some(first)) = (stopped, checks.iter_mut().find(|c| c.outcome.is_ok())) {
            first.outcome = Err(e);
        }
        checks
    }

    /// What tensor `i`'s record stores to verify it against (one small
    /// read of its header).
    pub fn stored_checks(&self, i: usize) -> Result<StoredChecks> {
        let h = self.read_header(i)?;
        Ok(StoredChecks {
            crc32: h.stored_hash(HashKind::Crc32).is_some(),
            sha256: h.stored_hash(HashKind::Sha256).is_some(),
            // A MAC is a check only over data that was decrypted.
            macs: self.metadata.entries[i].data_length > 0
                && h.crypt_info.as_ref().is_some_and(|c| c.is_encrypted()),
            has_data: self.metadata.entries[i].data_length > 0,
        })
    }

    /// [`Deserializer::check`] (set [`Verify::All`] first), then refuses
    /// what the file does not let a reader verify, so that "OK" means
    /// checked: a tensor with data but no stored hash; in an encrypted
    /// file, a tensor with data but no MAC (left or made unencrypted), and
    /// a file in which no tensor carries a MAC at all (the key was never
    /// tested, nothing is authenticated). Meta tensors hold no data and
    /// load as zeros: each check says so through [`TensorCheck::stored`].
    pub fn check_strict(
        &self,
        filter: impl Fn(&IndexEntry) -> bool + Sync,
        data_sha256: bool,
    ) -> Vec<TensorCheck> {
        let mut checks = self.check(filter, data_sha256);
        let encrypted = self.metadata.header.has_crypt_info();
        for c in &mut checks {
            match self.stored_checks(c.index) {
                Ok(stored) => {
                    c.stored = Some(stored);
                    let reason = if !stored.has_data {
                        None
                    } else if encrypted && !stored.macs {
                        Some(
                            "carries data without a MAC in an encrypted file: it is not authenticated (decrypted or replaced without the key)",
                        )
                    } else if !encrypted && !stored.crc32 && !stored.sha256 {
                        Some("has no stored hash: nothing verifies its data")
                    } else {
                        None
                    };
                    if let (Some(reason), Ok(())) = (reason, &c.outcome) {
                        c.outcome = Err(Error::Unverifiable {
                            tensor: c.name.to_string(),
                            reason: reason.into(),
                        });
                    }
                }
                Err(e) => {
                    if c.outcome.is_ok() {
                        c.outcome = Err(e);
                    }
                }
            }
        }
        if encrypted
            && !checks.is_empty()
            && checks.iter().all(|c| c.stored.is_some_and(|s| !s.macs))
            && let Some(first) = checks.iter_mut().find(|c| c.outcome.is_ok())
        {
            first.outcome = Err(Error::Unverifiable {
                tensor: first.name.to_string(),
                reason: "no tensor of this encrypted file carries a MAC: the key was never \
                         tested and nothing is authenticated"
                    .into(),
            });
        }
        checks
    }

    /// Reads every tensor, in parallel; results come in file order.
    pub fn read_all(&self) -> Result<Vec<Tensor>> {
        self.read_filtered(|_| true)
    }

    /// Hands every tensor to `consume` as soon as it is loaded (completion
    /// order, not file order; calls never overlap), so a consumer can start
    /// on early tensors while later ones are still being read. Stops at the
    /// first error.
    pub fn for_each_unordered(
        &self,
        consume: impl FnMut(Tensor) -> Result<()> + Send,
    ) -> Result<()> {
        let dest = crate::destination::Callback {
            consume: std::sync::Mutex::new(consume),
            cast: self.cast,
        };
        self.load_into(&dest, |_| true)
    }

    /// Loads every tensor whose entry passes `filter` into `dest` (host
    /// memory, caller buffers, GPU staging: see [`Destination`]), in
    /// parallel, with the same request plan, verification, decryption and
    /// progress as [`Deserializer::read_all`].
    pub fn load_into<D: Destination>(
        &self,
        dest: &D,
        filter: impl Fn(&IndexEntry) -> bool + Sync,
    ) -> Result<()> {
        let selected: Vec<usize> = (0..self.len())
            .filter(|&i| filter(&self.metadata.entries[i]))
            .collect();
        let tracker = self.tracker(&selected);
        self.load_indices(dest, &selected, &tracker, self.readers())
    }

    /// Reads the named tensors straight into the caller's buffers (each
    /// exactly the tensor's size, e.g. slices of one arena) and returns
    /// what was loaded, in file order. No other memory is allocated for
    /// tensor data.
    ///
    /// ```
    /// # use tensorizer::{Deserializer, Serializer, TensorData};
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("m.tensors");
    /// # let mut s = Serializer::new();
    /// # s.write_state_dict([("a", TensorData::from_slice(&[2], &[1.0f32, 2.0])?), ("b", TensorData::from_slice(&[1], &[3u8])?)])?;
    /// # s.write_to_file(&path)?;
    /// let mut arena = vec![0u8; 9];
    /// let (a, b) = arena.split_at_mut(8);
    /// let infos = Deserializer::open(&path)?.read_into([("a", a), ("b", b)])?;
    /// assert_eq!(infos.len(), 2);
    /// assert_eq!(&arena[..], &[0, 0, 128, 63, 0, 0, 0, 64, 3]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_into<'a, N: Into<TensorPath>>(
        &self,
        buffers: impl IntoIterator<Item = (N, &'a mut [u8])>,
    ) -> Result<Vec<TensorInfo>> {
        let mut by_index = HashMap::new();
        for (name, buffer) in buffers {
            let name = name.into();
            let i = self.position(&name).ok_or_else(|| Error::NotFound {
                path: self.path.clone(),
                name: name.to_string(),
            })?;
            by_index.insert(i, buffer);
        }
        let mut selected: Vec<usize> = by_index.keys().copied().collect();
        selected.sort_unstable();
        let dest = CallerBuffers::new(by_index);
        let tracker = self.tracker(&selected);
        self.load_indices(&dest, &selected, &tracker, self.readers())?;
        Ok(dest.into_infos())
    }

    /// Hands every tensor, in file order, to `consume`, holding at most
    /// `budget` bytes of tensor data in memory (or one tensor, if larger):
    /// the next half of the budget is read and verified while `consume`
    /// works on the current one. Stops at the first error, from the file
    /// or from `consume`.
    ///
    /// ```
    /// # use tensorizer::{Deserializer, Serializer, TensorData};
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("m.tensors");
    /// # let mut s = Serializer::new();
    /// # s.write_state_dict([("w", TensorData::from_slice(&[2], &[1.0f32, 2.0])?)])?;
    /// # s.write_to_file(&path)?;
    /// let mut total = 0;
    /// Deserializer::open(&path)?.stream(64 << 20, |tensor| {
    ///     total += tensor.as_bytes().len(); // e.g. copy to the GPU, then drop
    ///     Ok(())
    /// })?;
    /// assert_eq!(total, 8);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stream(&self, budget: u64, mut consume: impl FnMut(Tensor) -> Result<()>) -> Result<()> {
        let half = (budget / 2).max(1);
        let mut windows: Vec<Vec<usize>> = vec![Vec::new()];
        let mut held = 0u64;
        for (i, e) in self.metadata.entries.iter().enumerate() {
            let len = e.deserialized_length().unwrap_or(u64::MAX);
            let current = windows.last_mut().expect("never empty");
            if !current.is_empty() && held.saturating_add(len) > half {
                windows.push(Vec::new());
                held = 0;
            }
            windows.last_mut().expect("never empty").push(i);
            held = held.saturating_add(len);
        }
        let all: Vec<usize> = (0..self.len()).collect();
        let tracker = self.tracker(&all);
        let readers = self.readers();
        // One window in flight while the caller consumes the previous one.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<Tensor>>>(0);
        std::thread::scope(|s| {
            let tracker = &tracker;
            s.spawn(move || {
                for window in windows {
                    let read = self.read_indices(&window, tracker, readers);
                    let failed = read.is_err();
                    if tx.send(read).is_err() || failed {
                        return;
                    }
                }
            });
            for window in rx {
                for tensor in window? {
                    consume(tensor)?;
                }
            }
            Ok(())
        })
    }
}

/// The header a record without one (a safetensors tensor) would have: what
/// its index entry says, and no hashes.
fn headerless(entry: &IndexEntry) -> TensorHeader {
    TensorHeader {
        module_idx: 0,
        tensor_type: entry.tensor_type,
        name: entry.name.clone(),
        dtype: entry.dtype.clone(),
        shape: entry.shape.clone(),
        wide_dims: entry.wide_dims,
        hashes: Vec::new(),
        crypt_info: None,
        unparsed: Vec::new(),
        data_length: entry.data_length,
    }
}
