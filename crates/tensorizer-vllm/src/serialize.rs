//! `tensorizer vllm serialize`: a checkpoint directory into the directory
//! vLLM's `examples/features/tensorize_vllm_model.py` writes:
//!
//! ```text
//! {serialized_directory}/vllm/{ORG/NAME}/{suffix}/
//!     model.tensors                      TP = 1 (Hugging Face names)
//!     model-rank-000.tensors ...         TP = N (vLLM's names and shards)
//!     adapter_config.json, adapter_model.tensors   with a LoRA adapter
//!     config.json, tokenizer.json, ...   the model's other files
//! ```

use std::path::{Path, PathBuf};
use tensorizer::io::ShownUri;

use serde_json::{Map, Value};
use tensorizer::io::{copy_object, create_sink, exists};
use tensorizer::{
    Dtype, Encryption, EncryptionKey, Serializer, StorageOptions, TensorData, TensorType,
};

use crate::checkpoint::{Checkpoint, cast_into};
use crate::error::{Result, VllmError, io_error};
use crate::shard::{Content, architecture_of, shard};

/// The largest artifact (tokenizer, config, ...) copied beside the weights.
const MAX_ARTIFACT: u64 = 1 << 30;

/// How a TP > 1 model is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One file per rank with that rank's shards, under vLLM's names (what
    /// `serialize_vllm_model` writes; loaded straight into the model).
    Vllm,
    /// Every rank's file a whole copy under Hugging Face names (loaded
    /// through vLLM's weights iterator; works for any architecture).
    Hf,
}

/// What to serialize, and where.
#[derive(Debug, Clone)]
pub struct SerializeOptions {
    /// A checkpoint directory, `ORG/NAME` in the Hugging Face cache, or a
    /// store's prefix (`s3://bucket/llama/`, read with `storage`).
    pub model: String,
    /// The `ORG/NAME` in the output path (default: `model` when it is no
    /// directory, else the directory's name).
    pub model_name: Option<String>,
    /// Where `vllm/...` goes: a directory or `s3://bucket/prefix`.
    pub serialized_directory: String,
    /// The last path component (default: a random UUID).
    pub suffix: Option<String>,
    /// Ranks.
    pub tensor_parallel_size: usize,
    /// The layout for TP > 1 (default: `Vllm` where rules exist).
    pub layout: Option<Layout>,
    /// The model dtype (`None`: `auto`, vLLM's choice from `config.json`).
    pub dtype: Option<Dtype>,
    /// Write a new random key here and encrypt every tensor file with it.
    pub keyfile: Option<String>,
    /// A LoRA adapter directory to serialize beside the model.
    pub lora_path: Option<PathBuf>,
    /// `TensorSerializer` keyword arguments.
    pub serialization_kwargs: Map<String, Value>,
    /// Credentials and retries for a remote model and remote destinations.
    pub storage: StorageOptions,
    /// Replace a model already at the destination.
    pub overwrite: bool,
}

impl SerializeOptions {
    /// Options with defaults for everything but the model and destination.
    pub fn new(model: impl Into<String>, serialized_directory: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            model_name: None,
            serialized_directory: serialized_directory.into(),
            suffix: None,
            tensor_parallel_size: 1,
            layout: None,
            dtype: None,
            keyfile: None,
            lora_path: None,
            serialization_kwargs: Map::new(),
            storage: StorageOptions::default(),
            overwrite: false,
        }
    }
}

/// Progress of one file being written.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// The file.
    pub file: &'a str,
    /// Bytes written so far.
    pub bytes: u64,
    /// The file's size.
    pub total: u64,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct SerializeReport {
    /// `{serialized_directory}/vllm/{ORG/NAME}/{suffix}`.
    pub directory: String,
    /// The suffix used.
    pub suffix: String,
    /// The layout used.
    pub layout: Layout,
    /// The tensor dtype of vLLM-layout files (`None`: kept per tensor).
    pub dtype: Option<Dtype>,
    /// Every object written, with its size in bytes.
    pub files: Vec<(String, u64)>,
    /// What the user should know (fallbacks).
    pub warnings: Vec<String>,
}

/// Serializes a checkpoint as vLLM's example script does; see the module docs.
pub fn serialize(
    opts: &SerializeOptions,
    progress: &(dyn Fn(Progress<'_>) + Sync),
) -> Result<SerializeReport> {
    let checkpoint = Checkpoint::resolve_with(&opts.model, &opts.storage)?;
    let tp = opts.tensor_parallel_size;
    if tp == 0 {
        return Err(VllmError::Invalid {
            what: "--tensor-parallel-size".into(),
            message: "must be at least 1".into(),
        });
    }
    let limit_cpu = serialization_kwargs(&opts.serialization_kwargs)?;
    let model_ref = match &opts.model_name {
        Some(name) => name.clone(),
        // A directory or prefix by its folder's name; a cache id as given.
        None if Path::new(&opts.model).is_dir() || opts.model.contains("://") => checkpoint
            .folder_name()
            .unwrap_or_else(|| opts.model.clone()),
        None => opts.model.clone(),
    };
    let suffix = match &opts.suffix {
        Some(s) => s.clone(),
        None => uuid4_hex()?,
    };
    // Both become path components under --serialized-directory: nothing
    // may climb out of it or land at an absolute path.
    check_components("--model-name", &model_ref, true)?;
    check_components("--suffix", &suffix, false)?;
    let directory = format!(
        "{}/vllm/{}/{suffix}",
        opts.serialized_directory.trim_end_matches('/'),
        model_ref.trim_matches('/')
    );
    let mut warnings = Vec::new();

    // What goes in the tensor files: vLLM's shards where rules exist.
    let want_vllm = tp > 1 && opts.layout != Some(Layout::Hf);
    let mut plans = None;
    let mut model_dtype = None;
    if want_vllm {
        let dtype = match opts.dtype {
            Some(d) => d,
            None => auto_dtype(&checkpoint)?,
        };
        match architecture_of(&checkpoint.config).and_then(|arch| shard(&checkpoint, arch, tp, dtype)) {
            Ok(p) => {
                plans = Some(p);
                model_dtype = Some(dtype);
            }
            Err(VllmError::NoRules { what, known }) => warnings.push(format!(
                "no vLLM sharding rules for {what} (rules exist for {known}): writing {tp} whole copies \
                 under Hugging Face names (--layout hf); every rank will read the whole model"
            )),
            Err(e) => return Err(e),
        }
    }
    let layout = if plans.is_some() {
        Layout::Vllm
    } else {
        Layout::Hf
    };
    let tensor_files: Vec<String> = if tp == 1 {
        vec![format!("{directory}/model.tensors")]
    } else {
        (0..tp)
            .map(|r| format!("{directory}/model-rank-{r:03}.tensors"))
            .collect()
    };

    // Refuse before writing anything: every file this run reads is the
    // model's own (no link out of its directory, no device or FIFO)...
    let artifacts = checkpoint.artifacts()?;
    if let Some(lora) = &opts.lora_path
        && std::fs::symlink_metadata(lora.join("adapter_model.safetensors")).is_ok()
    {
        tensorizer::model_dir::open(lora, "adapter_config.json", "the adapter config")?;
        tensorizer::model_dir::open(lora, "adapter_model.safetensors", "the adapter weights")?;
    }
    // ...and no file this run would write exists (unless --overwrite).
    if !opts.overwrite {
        let mut outputs = tensor_files.clone();
        for name in &artifacts {
            outputs.push(format!("{directory}/{name}"));
        }
        if opts.lora_path.is_some() {
            outputs.push(format!("{directory}/adapter_config.json"));
            outputs.push(format!("{directory}/adapter_model.tensors"));
        }
        for f in &outputs {
            if exists(f, &opts.storage)? {
                return Err(VllmError::Exists {
                    uri: f.into(),
                    hint: "the directory already holds a serialized model; pass --overwrite or another --suffix".into(),
                });
            }
        }
    }
    if let Some(k) = &opts.keyfile
        && key_inside(k, &directory)
    {
        return Err(VllmError::Invalid {
            what: format!("--keyfile {}", ShownUri::new(k)),
            message: format!(
                "inside the serialized directory {}: keep the key apart from what it encrypts",
                ShownUri::new(&directory)
            ),
        });
    }
    if let Some(k) = &opts.keyfile
        && exists(k, &opts.storage)?
    {
        return Err(VllmError::Exists {
            uri: k.into(),
            hint: "an existing key is never replaced (what it encrypts would be lost); choose another --keyfile".into(),
        });
    }

    if !directory.contains("://") {
        std::fs::create_dir_all(&directory).map_err(io_error(
            Path::new(&directory),
            "creating the serialized directory",
        ))?;
    }
    let mut files = Vec::new();
    let key = match &opts.keyfile {
        Some(k) => {
            let key = EncryptionKey::random().map_err(|e| VllmError::Invalid {
                what: "--keyfile".into(),
                message: e.to_string(),
            })?;
            write_key(k, key.as_bytes(), &opts.storage)?;
            files.push((k.clone(), 32));
            Some(key)
        }
        None => None,
    };
    let encryption = || {
        key.as_ref()
            .map(|k| Encryption::with_key(EncryptionKey::from_bytes(*k.as_bytes())))
    };

    let pool = rayon_pool(limit_cpu)?;
    let write = |serializer, uri| {
        write_file(
            serializer,
            uri,
            encryption(),
            progress,
            pool.as_ref(),
            &opts.storage,
        )
    };

    match plans {
        Some(plans) => {
            for (plan, uri) in plans.iter().zip(&tensor_files) {
                let mut s = Serializer::new();
                for t in &plan.tensors {
                    if matches!(t.content, Content::Meta) {
                        s.write_tensor(
                            t.module_idx,
                            t.name.as_str(),
                            t.tensor_type,
                            TensorData::meta(t.dtype, &t.shape),
                        )?;
                        continue;
                    }
                    let checkpoint = &checkpoint;
                    s.write_tensor_with(
                        t.module_idx,
                        t.name.as_str(),
                        t.tensor_type,
                        t.dtype,
                        &t.shape,
                        move |buf| Ok(t.fill(checkpoint, buf)?),
                    )?;
                }
                files.push((uri.clone(), write(s, uri)?));
            }
        }
        None => {
            let first = &tensor_files[0];
            let bytes = write(hf_serializer(&checkpoint, opts.dtype)?, first)?;
            files.push((first.clone(), bytes));
            for other in &tensor_files[1..] {
                copy_object(first, other, &opts.storage)?;
                files.push((other.clone(), bytes));
            }
        }
    }

    if let Some(lora) = &opts.lora_path {
        files.extend(tensorize_lora_adapter(lora, &directory, &opts.storage)?);
    }
    for name in &artifacts {
        let bytes = checkpoint.read_artifact(name, MAX_ARTIFACT)?;
        let uri = format!("{directory}/{name}");
        write_object(&uri, &bytes, &opts.storage)?;
        files.push((uri, bytes.len() as u64));
    }
    Ok(SerializeReport {
        directory,
        suffix,
        layout,
        dtype: model_dtype,
        files,
        warnings,
    })
}

/// vLLM's `--dtype auto`: `config.json`'s dtype, float32 served as bfloat16
/// (`config/model.py` `_resolve_auto_dtype`, on GPUs with bfloat16).
pub fn auto_dtype(checkpoint: &Checkpoint) -> Result<Dtype> {
    Ok(match checkpoint.config.dtype()? {
        Some(Dtype::F32) | None => Dtype::BF16,
        Some(d) => d,
    })
}

/// Writes one tensor file, encrypted if asked, on `pool` if given.
fn write_file<'s>(
    mut serializer: Serializer<'s>,
    uri: &'s str,
    encryption: Option<Encryption>,
    progress: &'s (dyn Fn(Progress<'_>) + Sync),
    pool: Option<&rayon::ThreadPool>,
    storage: &StorageOptions,
) -> Result<u64> {
    if let Some(e) = encryption {
        serializer.encryption(e);
    }
    serializer.on_progress(move |p| {
        progress(Progress {
            file: uri,
            bytes: p.bytes,
            total: p.total_bytes,
        })
    });
    let run = || serializer.write_to_uri_with(uri, storage);
    let summary = match pool {
        Some(pool) => pool.install(run),
        None => run(),
    }?;
    Ok(summary.bytes)
}

/// Every checkpoint tensor under its Hugging Face name, in name order,
/// each cast to `dtype` if one is given and it is floating.
fn hf_serializer(checkpoint: &Checkpoint, dtype: Option<Dtype>) -> Result<Serializer<'_>> {
    let floating = |d: Dtype| matches!(d, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64);
    let mut s = Serializer::new();
    let out_dtype = |d: Dtype| match dtype {
        Some(to) if floating(d) => to,
        _ => d,
    };
    for (name, t) in checkpoint.tensors() {
        let to = out_dtype(t.dtype);
        if to == t.dtype {
            match checkpoint.mapped(t) {
                // Written from the map, without a copy.
                Some(bytes) => s.write_tensor(
                    0,
                    name.as_str(),
                    TensorType::StateDict,
                    TensorData::new(t.dtype, &t.shape, bytes)?,
                )?,
                // Read from the store into the writer's buffer when it
                // is written: one tensor at a time in memory.
                None => s.write_tensor_with(
                    0,
                    name.as_str(),
                    TensorType::StateDict,
                    t.dtype,
                    &t.shape,
                    move |buf| Ok(checkpoint.read_into(t, buf)?),
                )?,
            };
            continue;
        }
        s.write_tensor_with(
            0,
            name.as_str(),
            TensorType::StateDict,
            to,
            &t.shape,
            move |buf| {
                cast_into(&checkpoint.bytes(t)?, t.dtype, buf, to)
                    .map_err(|(f, to)| format!("{name}: cannot cast {f} to {to}"))?;
                Ok(())
            },
        )?;
    }
    Ok(s)
}

/// vLLM's `tensorize_lora_adapter`: `adapter_config.json` (re-spelled by
/// `json.dumps`) and `adapter_model.tensors` (a state dict, unencrypted as
/// vLLM writes it) into `directory`.
pub fn tensorize_lora_adapter(
    lora: &Path,
    directory: &str,
    storage: &StorageOptions,
) -> Result<Vec<(String, u64)>> {
    let bad = |message: String| VllmError::Checkpoint {
        location: lora.display().to_string(),
        message,
    };
    let weights = lora.join("adapter_model.safetensors");
    if std::fs::symlink_metadata(&weights).is_err() {
        return Err(bad(if lora.join("adapter_model.bin").is_file() {
            "only a pickle adapter (adapter_model.bin) here: it is never loaded (unpickling runs code); \
             save the adapter with safe_serialization=True"
                .into()
        } else {
            "no adapter_model.safetensors here".into()
        }));
    }
    let text =
        tensorizer::model_dir::read(lora, "adapter_config.json", "the adapter config", 1 << 20)?;
    let config = crate::pyjson::dumps(&String::from_utf8_lossy(&text))?;
    let config_uri = format!("{directory}/adapter_config.json");
    write_object(&config_uri, config.as_bytes(), storage)?;

    let file =
        tensorizer::model_dir::open(lora, "adapter_model.safetensors", "the adapter weights")?;
    // SAFETY: read-only map of a file we do not write, for this call only.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_error(&weights, "mapping"))?;
    let st = safetensors::SafeTensors::deserialize(&map)
        .map_err(|e| bad(format!("adapter_model.safetensors: {e}")))?;
    let mut tensors = st.tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut s = Serializer::new();
    for (name, view) in &tensors {
        let dtype =
            tensorizer::safetensors::from_safetensors_dtype(view.dtype()).ok_or_else(|| {
                bad(format!(
                    "tensor {name:?}: dtype {:?} has no tensorizer equivalent",
                    view.dtype()
                ))
            })?;
        let shape: Vec<u64> = view.shape().iter().map(|&d| d as u64).collect();
        s.write_tensor(
            0,
            name.as_str(),
            TensorType::StateDict,
            TensorData::new(dtype, &shape, view.data())?,
        )?;
    }
    let uri = format!("{directory}/adapter_model.tensors");
    let summary = s.write_to_uri_with(&uri, storage)?;
    Ok(vec![
        (config_uri, config.len() as u64),
        (uri, summary.bytes),
    ])
}

/// `TensorSerializer`'s keyword arguments: `compress_tensors` (a no-op in
/// tensorizer 2.12) and `limit_cpu_concurrency` (worker threads).
fn serialization_kwargs(kwargs: &Map<String, Value>) -> Result<Option<usize>> {
    let unknown: Vec<String> = kwargs
        .keys()
        .filter(|k| !["compress_tensors", "limit_cpu_concurrency"].contains(&k.as_str()))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(VllmError::UnknownKeys {
            what: "--serialization-kwargs (known: compress_tensors, limit_cpu_concurrency; encryption comes from --keyfile)".into(),
            keys: unknown,
        });
    }
    match kwargs.get("limit_cpu_concurrency") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => Ok(Some(n as usize)),
            _ => Err(VllmError::Invalid {
                what: "--serialization-kwargs limit_cpu_concurrency".into(),
                message: format!("{v} is not an integer ≥ 1"),
            }),
        },
    }
}

fn rayon_pool(threads: Option<usize>) -> Result<Option<rayon::ThreadPool>> {
    threads
        .map(|n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .map_err(|e| VllmError::Invalid {
                    what: "limit_cpu_concurrency".into(),
                    message: e.to_string(),
                })
        })
        .transpose()
}

/// Writes a small object whole, atomically.
fn write_object(uri: &str, bytes: &[u8], storage: &StorageOptions) -> Result<()> {
    let sink = create_sink(uri, storage)?;
    sink.write_all_at(0, bytes)?;
    sink.commit()?;
    Ok(())
}

/// Writes the key as a new file or object: never over an existing one
/// (two runs racing for one key file: exactly one wins), a local one
/// readable by its owner only, from before it has a name.
fn write_key(uri: &str, key: &[u8], storage: &StorageOptions) -> Result<()> {
    if !uri.contains("://")
        && let Some(parent) = Path::new(uri)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent)
            .map_err(io_error(parent, "creating the key file's directory"))?;
    }
    tensorizer::io::create_new(uri, key, 0o600, storage).map_err(|e| match e {
        tensorizer::io::IoError::Protocol { .. } => VllmError::Exists {
            uri: uri.into(),
            hint: "an existing key is never replaced (what it encrypts would be lost); choose another --keyfile".into(),
        },
        tensorizer::io::IoError::Local { ref source, .. }
            if source.kind() == std::io::ErrorKind::AlreadyExists =>
        {
            VllmError::Exists {
                uri: uri.into(),
                hint: "an existing key is never replaced (what it encrypts would be lost); choose another --keyfile".into(),
            }
        }
        e => e.into(),
    })
}

/// True when the key file would land in the serialized directory (or
/// below it): among the files of the model, where one of them could
/// replace it, or it be served with them.
fn key_inside(keyfile: &str, directory: &str) -> bool {
    let norm = |s: &str| -> String {
        if s.contains("://") {
            s.trim_end_matches('/').to_owned()
        } else {
            let p = Path::new(s);
            let abs = if p.is_absolute() {
                p.to_path_buf()
            } else {
                std::env::current_dir().unwrap_or_default().join(p)
            };
            // Lexically: `..` and `.` resolved without touching the disk.
            let mut out = std::path::PathBuf::new();
            for c in abs.components() {
                match c {
                    std::path::Component::ParentDir => {
                        out.pop();
                    }
                    std::path::Component::CurDir => {}
                    c => out.push(c),
                }
            }
            // Then through the links on disk: a key whose parent is a link
            // into the directory lands in it all the same. The deepest
            // existing ancestor is resolved; the rest (not created yet)
            // cannot be a link.
            resolve_links(&out).to_string_lossy().into_owned()
        }
    };
    let (key, dir) = (norm(keyfile), norm(directory));
    key.strip_prefix(&dir)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// `path` (absolute, `..`-free) through the links on disk: its deepest
/// existing ancestor canonicalized, the rest (not created yet) appended. A
/// dangling link (to a directory not made yet) is followed by hand.
fn resolve_links(path: &Path) -> std::path::PathBuf {
    let mut path = path.to_path_buf();
    // Bounded as the kernel bounds link chains.
    for _ in 0..40 {
        let mut existing = path.as_path();
        let mut rest = Vec::new();
        while std::fs::symlink_metadata(existing).is_err() {
            match (existing.parent(), existing.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_owned());
                    existing = parent;
                }
                _ => break,
            }
        }
        let resolved = match std::fs::canonicalize(existing) {
            Ok(resolved) => resolved,
            Err(_) => match std::fs::read_link(existing) {
                // Dangling: its target, relative to where the link is.
                Ok(target) => {
                    let base = existing.parent().unwrap_or(Path::new("/"));
                    let mut next = base.join(target);
                    next.extend(rest.iter().rev());
                    path = next;
                    continue;
                }
                Err(_) => existing.to_path_buf(),
            },
        };
        let mut resolved = resolved;
        resolved.extend(rest.iter().rev());
        return resolved;
    }
    path
}

/// `value` as path components: none empty, `.` or `..`, no leading `/`
/// (and a single component unless `nested`).
fn check_components(what: &str, value: &str, nested: bool) -> Result<()> {
    let bad = |why: &str| VllmError::Invalid {
        what: format!("{what} {value:?}"),
        message: format!("{why}: it names a directory below --serialized-directory"),
    };
    if value.starts_with('/') {
        return Err(bad("an absolute path"));
    }
    let parts: Vec<&str> = value.split('/').collect();
    if !nested && parts.len() > 1 {
        return Err(bad("a '/' in it"));
    }
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err(bad("an empty, '.' or '..' component"));
    }
    if value.chars().any(|c| c.is_control() || c == '\\') {
        return Err(bad("a control character or backslash"));
    }
    Ok(())
}

/// `uuid.uuid4().hex`: 32 hex digits of a random version-4 UUID.
fn uuid4_hex() -> Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| VllmError::Invalid {
        what: "--suffix".into(),
        message: format!("no randomness for a UUID: {e}"),
    })?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}
