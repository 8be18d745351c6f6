//! A Hugging Face checkpoint: `config.json`, one or more `*.safetensors`
//! files (sharded ones listed in `model.safetensors.index.json`) and the
//! files that go with them (tokenizer, generation config), in a local
//! directory or under a prefix of any store (`s3://`, `gs://`, `az://`,
//! `http(s)://`). Local weights are memory-mapped and remote ones read by
//! range, tensor by tensor or slice by slice as the writer asks for them:
//! a rank's file is written without loading the model, and nothing of a
//! remote checkpoint is copied to local disk.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use tensorizer::Dtype;
use tensorizer::format::safetensors::{PREFIX_LEN, SafetensorsHeader};
use tensorizer::io::{IoError, RangeSource, ShownUri};
use tensorizer::{ShardRef, StorageOptions};

use crate::config::ModelConfig;
use crate::error::{Result, VllmError, io_error};

/// What `serialize_extra_artifacts` leaves out when it copies a model's files
/// (vLLM `model_executor/model_loader/tensorizer.py`).
pub const ARTIFACT_IGNORE: [&str; 6] = [
    ".pt",
    ".safetensors",
    ".bin",
    ".cache",
    ".gitattributes",
    ".md",
];

/// The files beside the weights looked for where a store has no listing
/// (HTTP): what Hugging Face repositories hold.
const KNOWN_ARTIFACTS: [&str; 9] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
];

/// One tensor stored in a safetensors file.
#[derive(Debug, Clone)]
pub struct StoredTensor {
    /// Which weight file holds it (position in the checkpoint's sorted file list).
    pub file: usize,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<u64>,
    /// Byte range of its data in the file.
    pub range: Range<usize>,
}

/// Where a checkpoint is.
#[derive(Debug)]
enum Location {
    /// A local directory.
    Dir(PathBuf),
    /// A prefix of a store (no trailing `/`), with the options to read it.
    Remote {
        prefix: String,
        storage: Box<StorageOptions>,
    },
}

/// Where a weight file's bytes are.
#[derive(Debug)]
enum Weights {
    /// Mapped from local disk.
    Mapped(Mmap),
    /// Read by range from a store, as they are needed.
    Remote(Box<dyn RangeSource>),
}

/// An open checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    location: Location,
    /// The parsed `config.json`.
    pub config: ModelConfig,
    files: Vec<Weights>,
    tensors: BTreeMap<String, StoredTensor>,
}

impl Checkpoint {
    /// Opens `model`: a directory, a Hugging Face id (`ORG/NAME`) found
    /// offline in the cache (`HF_HUB_CACHE`, `HF_HOME/hub`,
    /// `~/.cache/huggingface/hub`) at the revision `refs/main` names, or
    /// a store's prefix (`s3://bucket/llama/`).
    pub fn resolve(model: &str) -> Result<Self> {
        Self::resolve_with(model, &StorageOptions::default())
    }

    /// [`Checkpoint::resolve`], with credentials for a remote checkpoint.
    pub fn resolve_with(model: &str, storage: &StorageOptions) -> Result<Self> {
        if is_remote(model) {
            return Self::open_remote(model, storage);
        }
        let dir = resolve_model_dir(model, &|k| std::env::var_os(k))?;
        Self::open(&dir)
    }

    /// Opens a checkpoint directory.
    pub fn open(dir: &Path) -> Result<Self> {
        let bad = |message: String| VllmError::Checkpoint {
            location: dir.display().to_string(),
            message,
        };
        let text = tensorizer::model_dir::read(dir, "config.json", "the model's config", MAX_JSON)?;
        let config = ModelConfig::parse(&String::from_utf8_lossy(&text))?;
        let indexed = indexed_tensors(dir)?;
        let names = weight_files(dir, indexed.as_deref())?;
        if names.is_empty() {
            let pickles: Vec<String> = tensorizer::model_dir::list_files(dir)?
                .into_iter()
                .filter(|n| n.ends_with(".bin") || n.ends_with(".pt") || n.ends_with(".pth"))
                .collect();
            return Err(bad(if pickles.is_empty() {
                "no *.safetensors weights here".into()
            } else {
                format!(
                    "only pickle weights here ({}): unpickling can run arbitrary code, so they are never loaded; \
                     convert them once with transformers: \
                     `AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(OUT, safe_serialization=True)`",
                    pickles.join(", ")
                )
            }));
        }
        let mut weights = Vec::new();
        for name in &names {
            let path = dir.join(name);
            let file = tensorizer::model_dir::open(dir, name, "a weight file")?;
            // SAFETY: read-only map of a file we do not write; like every
            // mmap reader, the checkpoint must not be truncated meanwhile.
            let map = unsafe { Mmap::map(&file) }.map_err(io_error(&path, "mapping"))?;
            weights.push(Weights::Mapped(map));
        }
        let location = Location::Dir(dir.to_path_buf());
        Self::assemble(location, config, names, weights, indexed)
    }

    /// Opens the checkpoint under a store's prefix (or its index file's
    /// URI): its index (or listing) through [`tensorizer::checkpoint::resolve`],
    /// whose rules keep shard names inside the prefix, then each shard's
    /// header, read by range.
    pub fn open_remote(uri: &str, storage: &StorageOptions) -> Result<Self> {
        let found = tensorizer::checkpoint::resolve(uri, storage)?;
        let prefix = if uri.ends_with(".json") {
            uri.rsplit_once('/').map_or(uri, |(b, _)| b)
        } else {
            uri.trim_end_matches('/')
        }
        .to_owned();
        let location = Location::Remote {
            prefix: prefix.clone(),
            storage: Box::new(storage.clone()),
        };
        let shown = ShownUri::new(&prefix).to_string();
        let text = read_object(&format!("{prefix}/config.json"), storage, MAX_JSON)?;
        let config = ModelConfig::parse(&String::from_utf8_lossy(&text))?;
        let shards: Vec<ShardRef> = found
            .shards
            .into_iter()
            .filter(|s| s.name.ends_with(".safetensors"))
            .collect();
        if shards.is_empty() {
            return Err(VllmError::Checkpoint {
                location: shown,
                message: "no *.safetensors weights here".into(),
            });
        }
        let mut names = Vec::new();
        let mut weights = Vec::new();
        for shard in shards {
            weights.push(Weights::Remote(tensorizer::io::open_source(
                &shard.uri, storage,
            )?));
            names.push(shard.name);
        }
        let indexed = found
            .weight_map
            .map(|map| map.into_iter().collect::<Vec<_>>());
        Self::assemble(location, config, names, weights, indexed)
    }

    /// Parses every weight file's header (ours: what the `safetensors`
    /// crate accepts, no more) and checks the index against them.
    fn assemble(
        location: Location,
        config: ModelConfig,
        names: Vec<String>,
        weights: Vec<Weights>,
        indexed: Option<Vec<(String, String)>>,
    ) -> Result<Self> {
        let shown = location.to_string();
        let bad = |message: String| VllmError::Checkpoint {
            location: shown.clone(),
            message,
        };
        let mut tensors = BTreeMap::new();
        for (file, (name, w)) in names.iter().zip(&weights).enumerate() {
            let shown_name = tensorizer::io::escape_controls(name);
            let header = w
                .header()
                .map_err(|e| bad(format!("{shown_name}: not a valid safetensors file: {e}")))?;
            for t in header.tensors {
                let range = usize::try_from(t.start)
                    .ok()
                    .zip(usize::try_from(t.end).ok());
                let Some((start, end)) = range else {
                    return Err(bad(format!(
                        "{shown_name}: larger than this machine's address space"
                    )));
                };
                let stored = StoredTensor {
                    file,
                    dtype: t.dtype,
                    shape: t.shape,
                    range: start..end,
                };
                if tensors.insert(t.name.clone(), stored).is_some() {
                    return Err(bad(format!(
                        "tensor {:?} is stored in two weight files",
                        t.name
                    )));
                }
            }
        }
        if let Some(indexed) = indexed {
            for (tensor, file) in indexed {
                match tensors.get(&tensor) {
                    Some(t) if names[t.file] == file => {}
                    _ => {
                        return Err(bad(format!(
                            "tensor {tensor:?}, which model.safetensors.index.json puts in {}, is not there",
                            tensorizer::io::escape_controls(&file)
                        )));
                    }
                }
            }
        }
        Ok(Self {
            location,
            config,
            files: weights,
            tensors,
        })
    }

    /// The local directory, if the checkpoint is one.
    pub fn dir(&self) -> Option<&Path> {
        match &self.location {
            Location::Dir(dir) => Some(dir),
            Location::Remote { .. } => None,
        }
    }

    /// Where the checkpoint is, as shown in messages (a URI's secrets
    /// redacted).
    pub fn location(&self) -> String {
        self.location.to_string()
    }

    /// The name the checkpoint's folder has: the directory's (resolved),
    /// or the prefix's last component.
    pub fn folder_name(&self) -> Option<String> {
        match &self.location {
            Location::Dir(dir) => dir
                .canonicalize()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())),
            Location::Remote { prefix, .. } => prefix
                .rsplit('/')
                .next()
                .filter(|n| !n.is_empty() && !n.contains(':'))
                .map(str::to_owned),
        }
    }

    /// Every stored tensor, by name.
    pub fn tensors(&self) -> &BTreeMap<String, StoredTensor> {
        &self.tensors
    }

    /// A stored tensor.
    pub fn get(&self, name: &str) -> Option<&StoredTensor> {
        self.tensors.get(name)
    }

    /// The bytes of a stored tensor where they are mapped, without a copy
    /// (`None` for a remote checkpoint: use [`Checkpoint::read_into`]).
    pub fn mapped(&self, tensor: &StoredTensor) -> Option<&[u8]> {
        match &self.files[tensor.file] {
            Weights::Mapped(map) => Some(&map[tensor.range.clone()]),
            Weights::Remote(_) => None,
        }
    }

    /// The bytes `within` (relative to the tensor's first byte) of a
    /// stored tensor: borrowed from the map, or read from the store.
    pub fn span(&self, tensor: &StoredTensor, within: Range<usize>) -> Result<Cow<'_, [u8]>> {
        let at = tensor.range.start + within.start;
        let end = tensor.range.start + within.end;
        assert!(end <= tensor.range.end, "a span inside the tensor");
        Ok(match &self.files[tensor.file] {
            Weights::Mapped(map) => Cow::Borrowed(&map[at..end]),
            Weights::Remote(src) => Cow::Owned(src.read_range(at as u64, (end - at) as u64)?),
        })
    }

    /// The bytes of a stored tensor.
    pub fn bytes(&self, tensor: &StoredTensor) -> Result<Cow<'_, [u8]>> {
        self.span(tensor, 0..tensor.range.len())
    }

    /// Fills `out` (the tensor's size) with a stored tensor's bytes, read
    /// straight into it from the store when remote.
    pub fn read_into(&self, tensor: &StoredTensor, out: &mut [u8]) -> Result<()> {
        match &self.files[tensor.file] {
            Weights::Mapped(map) => out.copy_from_slice(&map[tensor.range.clone()]),
            Weights::Remote(src) => src.read_exact_at(tensor.range.start as u64, out)?,
        }
        Ok(())
    }

    /// Copies rows `rows` (first dimension) of `name`, and of each row only
    /// the elements `cols` of the second dimension if given, into `out` as
    /// `dtype`; returns the bytes written. Only those rows are read.
    pub fn copy_slice(
        &self,
        name: &str,
        rows: Range<u64>,
        cols: Option<Range<u64>>,
        dtype: Dtype,
        out: &mut [u8],
    ) -> Result<usize> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| VllmError::Checkpoint {
                location: self.location(),
                message: format!("no tensor {name:?}"),
            })?;
        let item = t.dtype.itemsize();
        let row_elems: u64 = t.shape.iter().skip(1).product();
        let row_bytes = row_elems as usize * item;
        let (c0, c1) = match &cols {
            Some(c) => (c.start, c.end),
            None => (0, row_elems),
        };
        let out_item = dtype.itemsize();
        let per_row = (c1 - c0) as usize;
        let first = rows.start as usize;
        let bytes = self.span(t, first * row_bytes..rows.end as usize * row_bytes)?;
        let mut written = 0;
        for r in rows {
            let at = (r as usize - first) * row_bytes + c0 as usize * item;
            let src = &bytes[at..at + per_row * item];
            let dst = &mut out[written..written + per_row * out_item];
            cast_into(src, t.dtype, dst, dtype).map_err(|(from, to)| VllmError::Invalid {
                what: format!("tensor {name:?}"),
                message: format!("cannot cast {from} to {to} (only floating tensors are cast)"),
            })?;
            written += per_row * out_item;
        }
        Ok(written)
    }

    /// The names of the files beside the weights that
    /// `serialize_extra_artifacts` copies: every top-level file not
    /// matching its ignore patterns. Locally each must be the model's own
    /// (no link out of the directory, no device or FIFO); a listing's
    /// names must be plain file names.
    pub fn artifacts(&self) -> Result<Vec<String>> {
        let keep = |n: &String| !ARTIFACT_IGNORE.iter().any(|suffix| n.ends_with(suffix));
        match &self.location {
            Location::Dir(dir) => {
                let names: Vec<String> = tensorizer::model_dir::list_files(dir)?
                    .into_iter()
                    .filter(keep)
                    .collect();
                for name in &names {
                    tensorizer::model_dir::open(dir, name, "a model file")?;
                }
                Ok(names)
            }
            Location::Remote { prefix, storage } => {
                let listed = match tensorizer::io::list(prefix, false, storage) {
                    Ok(listed) => listed.into_iter().map(|(n, _)| n).collect(),
                    Err(IoError::Unsupported { .. }) => {
                        let mut found = Vec::new();
                        for name in KNOWN_ARTIFACTS {
                            if tensorizer::io::exists(&format!("{prefix}/{name}"), storage)? {
                                found.push(name.to_owned());
                            }
                        }
                        found
                    }
                    Err(e) => return Err(e.into()),
                };
                let plain = |n: &String| {
                    !n.is_empty()
                        && n != "."
                        && n != ".."
                        && !n.contains(['/', '\\'])
                        && !n.chars().any(char::is_control)
                };
                Ok(listed.into_iter().filter(keep).filter(plain).collect())
            }
        }
    }

    /// The bytes of the artifact `name` (one of [`Checkpoint::artifacts`]),
    /// at most `max` of them.
    pub fn read_artifact(&self, name: &str, max: u64) -> Result<Vec<u8>> {
        match &self.location {
            Location::Dir(dir) => Ok(tensorizer::model_dir::read(dir, name, "a model file", max)?),
            Location::Remote { prefix, storage } => {
                read_object(&format!("{prefix}/{name}"), storage, max)
            }
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Dir(dir) => write!(f, "{}", dir.display()),
            Location::Remote { prefix, .. } => write!(f, "{}", ShownUri::new(prefix)),
        }
    }
}

impl Weights {
    /// The file's header: two small reads where the file is remote.
    fn header(&self) -> std::result::Result<SafetensorsHeader, Box<dyn std::error::Error>> {
        match self {
            Weights::Mapped(map) => Ok(tensorizer::format::safetensors::parse_file(map)?),
            Weights::Remote(src) => {
                let len = src.len();
                let prefix = src.read_range(0, PREFIX_LEN.min(len))?;
                let json_len = SafetensorsHeader::json_len(&prefix, len)?;
                let json = src.read_range(PREFIX_LEN, json_len)?;
                Ok(SafetensorsHeader::parse(&json, len)?)
            }
        }
    }
}

/// True when `model` names a store's prefix rather than a local path.
fn is_remote(model: &str) -> bool {
    model.contains("://") && !model.starts_with("file://")
}

/// A whole small object, refused over `max` bytes before it is read.
fn read_object(uri: &str, storage: &StorageOptions, max: u64) -> Result<Vec<u8>> {
    let src = tensorizer::io::open_source(uri, storage)?;
    if src.len() > max {
        return Err(VllmError::Invalid {
            what: ShownUri::new(uri).to_string(),
            message: format!("over {max} bytes"),
        });
    }
    Ok(src.read_range(0, src.len())?)
}

/// The largest JSON file of a checkpoint read (config, index).
const MAX_JSON: u64 = 64 << 20;

/// `model.safetensors.index.json`'s `weight_map` (tensor → file), if any.
fn indexed_tensors(dir: &Path) -> Result<Option<Vec<(String, String)>>> {
    let index = dir.join("model.safetensors.index.json");
    if std::fs::symlink_metadata(&index).is_err() {
        return Ok(None);
    }
    let text = tensorizer::model_dir::read(
        dir,
        "model.safetensors.index.json",
        "the weight index",
        MAX_JSON,
    )?;
    let json: serde_json::Value =
        serde_json::from_slice(&text).map_err(|source| VllmError::Json {
            what: index.display().to_string(),
            source,
        })?;
    let bad = || VllmError::Checkpoint {
        location: dir.display().to_string(),
        message: "model.safetensors.index.json: \"weight_map\" must map tensor names to file names"
            .into(),
    };
    json.get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(bad)?
        .iter()
        .map(|(t, f)| Ok((t.clone(), f.as_str().ok_or_else(bad)?.to_owned())))
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// The weight files: those the index (`indexed`) names, else every
/// `*.safetensors`.
fn weight_files(dir: &Path, indexed: Option<&[(String, String)]>) -> Result<Vec<String>> {
    if let Some(indexed) = indexed {
        let mut files: Vec<String> = indexed.iter().map(|(_, f)| f.clone()).collect();
        files.sort();
        files.dedup();
        for f in &files {
            if f.contains('/') || !dir.join(f).is_file() {
                return Err(VllmError::Checkpoint {
                    location: dir.display().to_string(),
                    message: format!(
                        "weight file {f:?} named in model.safetensors.index.json is missing"
                    ),
                });
            }
        }
        return Ok(files);
    }
    Ok(tensorizer::model_dir::list_files(dir)?
        .into_iter()
        .filter(|n| n.ends_with(".safetensors"))
        .collect())
}

/// Where `model` lives: itself if it is a directory, else its snapshot in
/// the Hugging Face cache. `env` looks up environment variables.
pub fn resolve_model_dir(
    model: &str,
    env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<PathBuf> {
    let as_path = Path::new(model);
    if as_path.is_dir() {
        return Ok(as_path.to_path_buf());
    }
    let mut roots = Vec::new();
    if let Some(cache) = env("HF_HUB_CACHE").or_else(|| env("HUGGINGFACE_HUB_CACHE")) {
        roots.push(PathBuf::from(cache));
    }
    if let Some(home) = env("HF_HOME") {
        roots.push(PathBuf::from(home).join("hub"));
    }
    if let Some(xdg) = env("XDG_CACHE_HOME") {
        roots.push(PathBuf::from(xdg).join("huggingface/hub"));
    }
    if let Some(home) = env("HOME") {
        roots.push(PathBuf::from(home).join(".cache/huggingface/hub"));
    }
    let repo = format!("models--{}", model.replace('/', "--"));
    let mut searched = Vec::new();
    for root in roots {
        let repo_dir = root.join(&repo);
        searched.push(repo_dir.clone());
        if std::fs::symlink_metadata(repo_dir.join("refs/main")).is_err() {
            continue;
        }
        // A few bytes of a regular file of the repository (not a FIFO that
        // blocks, nor /dev/zero that never ends), never shown: whatever it
        // holds instead of a hash may be anything.
        let revision = tensorizer::model_dir::read(
            &repo_dir,
            "refs/main",
            "the revision file refs/main",
            128,
        )?;
        // A commit hash, nothing else: `refs/main` is a path component
        // below, and `../..` there would leave the cache.
        let revision = String::from_utf8_lossy(&revision);
        let revision = revision.trim();
        if !is_commit_hash(revision) {
            return Err(VllmError::Invalid {
                what: format!("{}", repo_dir.join("refs/main").display()),
                message: "does not hold a commit hash (40 or 64 hex digits)".into(),
            });
        }
        let snapshot = repo_dir.join("snapshots").join(revision);
        if snapshot.is_dir() {
            return Ok(snapshot);
        }
    }
    Err(VllmError::ModelNotFound {
        model: model.to_owned(),
        searched,
    })
}

/// A git commit hash as the Hugging Face cache names snapshots: 40 (SHA-1)
/// or 64 (SHA-256) lowercase hex digits.
fn is_commit_hash(s: &str) -> bool {
    matches!(s.len(), 40 | 64)
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Converts elements between float types (the identity for equal types).
/// `Err((from, to))` when a cast is asked between non-float types.
pub fn cast_into(src: &[u8], from: Dtype, dst: &mut [u8], to: Dtype) -> Result<(), (Dtype, Dtype)> {
    use half::{bf16, f16};
    if from == to {
        dst.copy_from_slice(src);
        return Ok(());
    }
    let read = |i: usize| -> f64 {
        let b = &src[i * from.itemsize()..(i + 1) * from.itemsize()];
        match from {
            Dtype::F16 => f16::from_le_bytes([b[0], b[1]]).to_f64(),
            Dtype::BF16 => bf16::from_le_bytes([b[0], b[1]]).to_f64(),
            Dtype::F32 => f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            _ => f64::from_le_bytes(b.try_into().expect("8 bytes")),
        }
    };
    let floating = |d: Dtype| matches!(d, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64);
    if !floating(from) || !floating(to) {
        return Err((from, to));
    }
    let n = src.len() / from.itemsize();
    for i in 0..n {
        let v = read(i);
        let out = &mut dst[i * to.itemsize()..(i + 1) * to.itemsize()];
        match to {
            // One rounding from the exact value, as torch's `.to(dtype)`.
            Dtype::F16 => out.copy_from_slice(&f16::from_f64(v).to_le_bytes()),
            Dtype::BF16 => out.copy_from_slice(&bf16::from_f64(v).to_le_bytes()),
            Dtype::F32 => out.copy_from_slice(&(v as f32).to_le_bytes()),
            _ => out.copy_from_slice(&v.to_le_bytes()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_main_must_be_a_commit_hash() {
        let home = tempfile::tempdir().unwrap();
        let repo = home
            .path()
            .join(".cache/huggingface/hub/models--acme--evil");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::create_dir_all(home.path().join("outside")).unwrap();
        std::fs::write(repo.join("refs/main"), "../../../../outside\n").unwrap();
        let env = |k: &str| (k == "HOME").then(|| home.path().as_os_str().to_owned());
        let err = resolve_model_dir("acme/evil", &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not hold a commit hash"), "{err}");
        assert!(
            !err.contains("outside"),
            "its content is never shown: {err}"
        );
        // Read bounded, never echoed: a secret-holding or endless file, a
        // link to /dev/zero, a FIFO that would block.
        std::fs::write(repo.join("refs/main"), "AKIA-SECRET ".repeat(1 << 20)).unwrap();
        let err = resolve_model_dir("acme/evil", &env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("over 128 bytes") && !err.contains("SECRET"),
            "{err}"
        );
        std::fs::remove_file(repo.join("refs/main")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", repo.join("refs/main")).unwrap();
        let err = resolve_model_dir("acme/evil", &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("refused"), "{err}");
        std::fs::remove_file(repo.join("refs/main")).unwrap();
        let fifo = std::ffi::CString::new(repo.join("refs/main").to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let err = resolve_model_dir("acme/evil", &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a regular file"), "{err}");
        assert!(is_commit_hash(&"a".repeat(40)) && is_commit_hash(&"0".repeat(64)));
        assert!(!is_commit_hash("main") && !is_commit_hash(&"A".repeat(40)));
    }

    #[test]
    fn cache_lookup_follows_refs_main() {
        let home = tempfile::tempdir().unwrap();
        let repo = home
            .path()
            .join(".cache/huggingface/hub/models--acme--tiny");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        let commit = "abc123abc123abc123abc123abc123abc123abc1";
        std::fs::create_dir_all(repo.join("snapshots").join(commit)).unwrap();
        std::fs::write(repo.join("refs/main"), format!("{commit}\n")).unwrap();
        let env = |k: &str| (k == "HOME").then(|| home.path().as_os_str().to_owned());
        assert_eq!(
            resolve_model_dir("acme/tiny", &env).unwrap(),
            repo.join("snapshots").join(commit)
        );
        // HF_HUB_CACHE is searched first, and a miss lists every place.
        let env2 = |k: &str| match k {
            "HF_HUB_CACHE" => Some("/nonexistent/hub".into()),
            "HOME" => Some(home.path().as_os_str().to_owned()),
            _ => None,
        };
        let e = resolve_model_dir("acme/other", &env2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/hub/models--acme--other"), "{e}");
        assert!(e.contains("nothing is downloaded"), "{e}");
    }

    #[test]
    fn casts_round_like_torch() {
        let src: Vec<u8> = [1.0f32 + f32::EPSILON, -2.5, 65504.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let mut out = vec![0u8; 6];
        cast_into(&src, Dtype::F32, &mut out, Dtype::F16).unwrap();
        let back: Vec<f32> = out
            .chunks(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect();
        assert_eq!(back, [1.0, -2.5, 65504.0]);
        assert!(cast_into(&[0; 4], Dtype::I32, &mut [0; 2], Dtype::F16).is_err());
    }
}
