//! A model checkpoint as people keep them: one file, or the shards of a
//! Hugging Face directory, on any store, loaded as one model through the
//! same engine as a single `.tensors` file.
//!
//! [`Checkpoint::open_uri`] takes a file (`.safetensors` or `.tensors`), a
//! directory or object prefix holding `*.safetensors` (with
//! `model.safetensors.index.json` when there is one), a Hugging Face cache
//! snapshot or repository folder, or an index file's URI:
//!
//! ```no_run
//! # fn main() -> Result<(), tensorizer::Error> {
//! let model = tensorizer::Checkpoint::open_uri("s3://models/llama-3-8b/")?;
//! let tensors = model.read_all()?;
//! # Ok(()) }
//! ```
//!
//! What it trusts: an index's shard names stay inside the checkpoint (no
//! `..`, no absolute path); the index and the shards' headers must agree,
//! name for name; local files are opened through [`crate::model_dir`] (no
//! link out of the directory, except a cache snapshot's into its blobs).
//! Where the Hugging Face cache names a file after its SHA-256, the file
//! is hashed as it loads and must match.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tensorizer_format::{IndexEntry, TensorPath};
use tensorizer_io::{LocalFile, StorageOptions};

use crate::deserializer::{Deserializer, Progress, TensorCheck, Verify};
use crate::error::{Error, Result, source_error};
use crate::tensor::Tensor;

/// The index file of a sharded safetensors checkpoint.
pub const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";

/// The largest index file read (a model with a million tensors has one of
/// about 100 MB; real ones are well under 1 MB).
const MAX_INDEX_BYTES: u64 = 64 << 20;

/// Shards at most in one checkpoint.
const MAX_SHARDS: usize = 100_000;

/// One file of a checkpoint, before it is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardRef {
    /// Its URI or path.
    pub uri: String,
    /// Its name relative to the checkpoint (the index's spelling).
    pub name: String,
    /// The SHA-256 it must have (a cache blob's name), if known.
    pub sha256: Option<[u8; 32]>,
}

/// A checkpoint of one or many files; see the module docs.
#[derive(Debug)]
pub struct Checkpoint {
    uri: String,
    shards: Vec<Deserializer>,
    names: Vec<String>,
    by_path: HashMap<TensorPath, (usize, usize)>,
    readers: Option<usize>,
}

impl Checkpoint {
    /// Opens a local file or directory (see the module docs).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_uri(&path.as_ref().display().to_string())
    }

    /// Opens a checkpoint at a URI, with default storage options.
    pub fn open_uri(uri: &str) -> Result<Self> {
        Self::open_uri_with(uri, &StorageOptions::default())
    }

    /// Opens a checkpoint at a URI with explicit storage options: its
    /// files are found, then each is opened (headers only) in parallel.
    pub fn open_uri_with(uri: &str, options: &StorageOptions) -> Result<Self> {
        let found = resolve(uri, options)?;
        Self::open_shards(uri, found.shards, found.weight_map.as_ref(), options)
    }

    /// Opens the files `shards` as one checkpoint named `uri`; with
    /// `weight_map` (an index's), the shards' headers must list exactly
    /// the tensors it gives each of them.
    pub fn open_shards(
        uri: &str,
        shards: Vec<ShardRef>,
        weight_map: Option<&BTreeMap<String, String>>,
        options: &StorageOptions,
    ) -> Result<Self> {
        let shown = tensorizer_io::ShownUri::new(uri).to_string();
        if shards.is_empty() {
            return Err(Error::Checkpoint {
                uri: shown,
                message: "holds no .safetensors or .tensors file".into(),
            });
        }
        let opened: Vec<Result<Deserializer>> = std::thread::scope(|s| {
            let handles: Vec<_> = shards
                .iter()
                .map(|shard| s.spawn(move || open_shard(shard, options)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| panic!("opening a shard panicked"))
                })
                .collect()
        });
        let opened: Vec<Deserializer> = opened.into_iter().collect::<Result<_>>()?;
        // Shard names come from an index or a listing: shown escaped.
        let names: Vec<String> = shards
            .iter()
            .map(|s| tensorizer_io::escape_controls(&s.name))
            .collect();
        let mut by_path = HashMap::new();
        for (k, de) in opened.iter().enumerate() {
            for (i, entry) in de.entries().iter().enumerate() {
                if let Some((other, _)) = by_path.insert(entry.name.path().clone(), (k, i)) {
                    return Err(Error::Checkpoint {
                        uri: shown,
                        message: format!(
                            "tensor {:?} is in two shards, {} and {}",
                            entry.name.to_string(),
                            names[other],
                            names[k]
                        ),
                    });
                }
            }
        }
        if let Some(map) = weight_map {
            check_weight_map(&shown, map, &names, &opened)?;
        }
        Ok(Self {
            uri: shown,
            shards: opened,
            names,
            by_path,
            readers: None,
        })
    }

    /// The checkpoint's URI, as shown in messages.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Its files, in the order their tensors are returned.
    pub fn shards(&self) -> &[Deserializer] {
        &self.shards
    }

    /// The name of shard `k` in the checkpoint (its index's spelling).
    pub fn shard_name(&self, k: usize) -> &str {
        &self.names[k]
    }

    /// Every tensor's index entry with its shard's position, in load order.
    pub fn entries(&self) -> impl Iterator<Item = (usize, &IndexEntry)> {
        self.shards
            .iter()
            .enumerate()
            .flat_map(|(k, d)| d.entries().iter().map(move |e| (k, e)))
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.by_path.len()
    }

    /// True when no shard holds a tensor.
    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }

    /// Bytes of tensor data in all shards.
    pub fn tensor_bytes(&self) -> u64 {
        self.entries()
            .map(|(_, e)| e.deserialized_length().unwrap_or(0))
            .sum()
    }

    fn map_shards(mut self, f: impl Fn(Deserializer) -> Deserializer) -> Self {
        self.shards = self.shards.into_iter().map(f).collect();
        self
    }

    /// Which stored hashes to check (see [`Deserializer::verify`]; the
    /// SHA-256 of cache blobs is always checked).
    pub fn verify(self, verify: Verify) -> Self {
        self.map_shards(|d| d.verify(verify))
    }

    /// Converts floating-point tensors to `dtype` (see [`Deserializer::dtype`]).
    pub fn dtype(self, dtype: tensorizer_format::Dtype) -> Self {
        self.map_shards(|d| d.dtype(dtype))
    }

    /// Reads in flight over all shards together (default: each shard's
    /// source's preferred concurrency, shared among the shards).
    pub fn num_readers(mut self, n: usize) -> Self {
        self.readers = Some(n.max(1));
        self
    }

    /// Calls `f` after every tensor, with counts over the whole checkpoint.
    pub fn on_progress(self, f: impl Fn(&Progress<'_>) + Send + Sync + 'static) -> Self {
        let f = Arc::new(f);
        let bytes = Arc::new(AtomicU64::new(0));
        let tensors = Arc::new(AtomicUsize::new(0));
        let (total_bytes, total_tensors) = (self.tensor_bytes(), self.len());
        self.map_shards(|d| {
            let (f, bytes, tensors) = (f.clone(), bytes.clone(), tensors.clone());
            let last = Arc::new(AtomicU64::new(0));
            d.on_progress(move |p| {
                // Each shard reports its own running total: add the step.
                let step = p.bytes - last.swap(p.bytes, Ordering::Relaxed);
                f(&Progress {
                    bytes: bytes.fetch_add(step, Ordering::Relaxed) + step,
                    total_bytes,
                    tensors: tensors.fetch_add(1, Ordering::Relaxed) + 1,
                    total_tensors,
                    name: p.name,
                })
            })
        })
    }

    /// Applies each shard's share of the readers.
    fn shared_readers(&self) -> Vec<Option<usize>> {
        let n = self.shards.len();
        self.shards
            .iter()
            .map(|d| {
                let total = self.readers.unwrap_or_else(|| d.default_readers());
                Some(total.div_ceil(n).max(1))
            })
            .collect()
    }

    /// Reads tensor `name` from its shard.
    pub fn read(&self, name: impl Into<TensorPath>) -> Result<Tensor> {
        let name = name.into();
        let &(k, i) = self.by_path.get(&name).ok_or_else(|| Error::NotFound {
            path: PathBuf::from(&self.uri),
            name: name.to_string(),
        })?;
        self.shards[k].read_at(i)
    }

    /// Reads every tensor; shards in order, each in file order.
    pub fn read_all(&self) -> Result<Vec<Tensor>> {
        self.read_filtered(|_| true)
    }

    /// Reads the tensors whose entries pass `filter`, every shard's reads
    /// in flight together; shards in order, each in file order.
    pub fn read_filtered(
        &self,
        filter: impl Fn(&IndexEntry) -> bool + Sync,
    ) -> Result<Vec<Tensor>> {
        let readers = self.shared_readers();
        let filter = &filter;
        let results: Vec<Result<Vec<Tensor>>> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .shards
                .iter()
                .zip(readers)
                .map(|(d, r)| s.spawn(move || d.read_filtered_with(filter, r)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| panic!("a shard's load panicked"))
                })
                .collect()
        });
        let mut out = Vec::new();
        for r in results {
            out.extend(r?);
        }
        Ok(out)
    }

    /// Hands every tensor to `consume` in load order, holding at most
    /// `budget` bytes of tensor data (or one tensor, if larger): shard by
    /// shard, each streamed as [`Deserializer::stream`] does.
    pub fn stream(&self, budget: u64, mut consume: impl FnMut(Tensor) -> Result<()>) -> Result<()> {
        for d in &self.shards {
            d.stream(budget, &mut consume)?;
        }
        Ok(())
    }

    /// Checks every tensor (see [`Deserializer::check`]), every shard's
    /// reads in flight together; one list per shard, in order. A shard
    /// with an expected SHA-256 fails its first tensor's check on a
    /// mismatch.
    pub fn check(&self, data_sha256: bool) -> Vec<Vec<TensorCheck>> {
        std::thread::scope(|s| {
            let handles: Vec<_> = self
                .shards
                .iter()
                .map(|d| s.spawn(move || d.check(|_| true, data_sha256)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| panic!("a shard's check panicked"))
                })
                .collect()
        })
    }
}

/// Opens one shard: local files beneath their directory's rules, others
/// by URI; a known digest is expected.
fn open_shard(shard: &ShardRef, options: &StorageOptions) -> Result<Deserializer> {
    let source: Box<dyn tensorizer_io::RangeSource> = match local_path(&shard.uri) {
        Some(path) => {
            let (dir, name) = match (path.parent(), path.file_name()) {
                (Some(dir), Some(name)) => (dir, name.to_string_lossy()),
                _ => (Path::new("."), path.to_string_lossy()),
            };
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            let file = crate::model_dir::open(dir, &name, "a weight file")?;
            Box::new(LocalFile::from_file(file, path).map_err(source_error("opening"))?)
        }
        None => tensorizer_io::open_source(&shard.uri, options).map_err(source_error("opening"))?,
    };
    let d = Deserializer::from_source(source)?;
    Ok(match shard.sha256 {
        Some(digest) => d.expect_sha256(digest),
        None => d,
    })
}

/// The path of a local URI (no scheme, or `file://`).
fn local_path(uri: &str) -> Option<&Path> {
    if let Some(rest) = uri.strip_prefix("file://") {
        return Some(Path::new(rest));
    }
    (!uri.contains("://")).then(|| Path::new(uri))
}

/// A shard name from an index: a relative path that stays inside the
/// checkpoint.
fn check_shard_name(uri: &str, name: &str) -> Result<()> {
    let bad = |why: &str| Error::Checkpoint {
        uri: uri.to_owned(),
        message: format!(
            "the index names the shard {:?}, {why}",
            tensorizer_io::escape_controls(name)
        ),
    };
    if name.is_empty() {
        return Err(bad("an empty name"));
    }
    if name.starts_with('/') || name.contains('\\') || name.contains("://") {
        return Err(bad("which is not a name relative to the checkpoint"));
    }
    if name
        .split('/')
        .any(|c| c == ".." || c.is_empty() || c == ".")
    {
        return Err(bad(
            "which climbs out of the checkpoint or is not a plain relative path",
        ));
    }
    if name.bytes().any(|b| b < 0x20) {
        return Err(bad("with control characters"));
    }
    Ok(())
}

/// The index's weight map against the shards' headers, both ways.
fn check_weight_map(
    uri: &str,
    map: &BTreeMap<String, String>,
    names: &[String],
    shards: &[Deserializer],
) -> Result<()> {
    let bad = |message: String| Error::Checkpoint {
        uri: uri.to_owned(),
        message,
    };
    let position: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(k, n)| (n.as_str(), k))
        .collect();
    let mut listed = 0usize;
    for (k, d) in shards.iter().enumerate() {
        for e in d.entries() {
            let name = e.name.to_string();
            match map.get(&name) {
                Some(shard) if shard == &names[k] => listed += 1,
                Some(shard) => {
                    return Err(bad(format!(
                        "tensor {name:?} is in shard {} but the index places it in {shard}",
                        names[k]
                    )));
                }
                None => {
                    return Err(bad(format!(
                        "tensor {name:?} of shard {} is not in the index's weight_map",
                        names[k]
                    )));
                }
            }
        }
    }
    if listed != map.len() {
        let (name, shard) = map
            .iter()
            .find(|(name, shard)| {
                position.get(shard.as_str()).is_none_or(|&k| {
                    shards[k]
                        .position(&TensorPath::from(name.as_str()))
                        .is_none()
                })
            })
            .expect("some entry is missing");
        return Err(bad(format!(
            "the index places tensor {name:?} in shard {shard}, which does not hold it"
        )));
    }
    Ok(())
}

/// What an index file says.
#[derive(serde::Deserialize)]
struct IndexFile {
    weight_map: BTreeMap<String, String>,
}

/// Parses an index and returns its weight map and its shards in name order.
fn parse_index(uri: &str, bytes: &[u8]) -> Result<(BTreeMap<String, String>, Vec<String>)> {
    let index: IndexFile = serde_json::from_slice(bytes).map_err(|e| Error::Checkpoint {
        uri: uri.to_owned(),
        message: format!("{SAFETENSORS_INDEX} is not a valid index: {e}"),
    })?;
    let mut shards: Vec<String> = index.weight_map.values().cloned().collect();
    shards.sort();
    shards.dedup();
    if shards.len() > MAX_SHARDS {
        return Err(Error::Checkpoint {
            uri: uri.to_owned(),
            message: format!(
                "the index names {} shards, more than {MAX_SHARDS}",
                shards.len()
            ),
        });
    }
    for s in &shards {
        check_shard_name(uri, s)?;
    }
    Ok((index.weight_map, shards))
}

/// A checkpoint's files, and its index's weight map when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The files, in load order.
    pub shards: Vec<ShardRef>,
    /// Tensor name → shard name, from the index.
    pub weight_map: Option<BTreeMap<String, String>>,
}

/// Finds a checkpoint's files: see the module docs.
pub fn resolve(uri: &str, options: &StorageOptions) -> Result<Resolved> {
    let shown = tensorizer_io::ShownUri::new(uri).to_string();
    let is_file = |u: &str| {
        let lower = u.to_ascii_lowercase();
        lower.ends_with(".safetensors") || lower.ends_with(".tensors")
    };
    if let Some(path) = local_path(uri) {
        return resolve_local(&shown, path);
    }
    if is_file(uri) {
        return Ok(Resolved {
            shards: vec![ShardRef {
                uri: uri.to_owned(),
                name: uri.rsplit('/').next().unwrap_or(uri).to_owned(),
                sha256: None,
            }],
            weight_map: None,
        });
    }
    let (base, index_uri) = if uri.ends_with(".json") {
        let base = uri.rsplit_once('/').map_or(uri, |(b, _)| b);
        (base.to_owned(), Some(uri.to_owned()))
    } else {
        (uri.trim_end_matches('/').to_owned(), None)
    };
    let join = |name: &str| format!("{base}/{name}");
    let read_index = |index_uri: &str| -> Result<Option<Vec<u8>>> {
        match tensorizer_io::open_source(index_uri, options) {
            Ok(src) => {
                if src.len() > MAX_INDEX_BYTES {
                    return Err(Error::Checkpoint {
                        uri: shown.clone(),
                        message: format!("{SAFETENSORS_INDEX} is over {MAX_INDEX_BYTES} bytes"),
                    });
                }
                Ok(Some(
                    src.read_range(0, src.len())
                        .map_err(source_error("reading the index"))?,
                ))
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(source_error("opening the index")(e)),
        }
    };
    let index = match &index_uri {
        Some(u) => Some(read_index(u)?.ok_or_else(|| Error::Checkpoint {
            uri: shown.clone(),
            message: "the index file does not exist".into(),
        })?),
        None => read_index(&join(SAFETENSORS_INDEX))?,
    };
    if let Some(bytes) = index {
        let (map, shards) = parse_index(&shown, &bytes)?;
        let refs = shards
            .into_iter()
            .map(|name| ShardRef {
                uri: join(&name),
                sha256: None,
                name,
            })
            .collect();
        return Ok(Resolved {
            shards: refs,
            weight_map: Some(map),
        });
    }
    // No index: the listing's weight files, or for HTTP (no listing) the
    // single-file name Hugging Face uses.
    let listed = match tensorizer_io::list(&base, false, options) {
        Ok(listed) => listed.into_iter().map(|(n, _)| n).collect(),
        Err(tensorizer_io::IoError::Unsupported { .. }) => vec!["model.safetensors".to_owned()],
        Err(e) => return Err(source_error("listing the checkpoint")(e)),
    };
    let refs: Vec<ShardRef> = listed
        .into_iter()
        .filter(|n: &String| n.ends_with(".safetensors") && !n.contains('/'))
        .map(|name| ShardRef {
            uri: join(&name),
            sha256: None,
            name,
        })
        .collect();
    Ok(Resolved {
        shards: refs,
        weight_map: None,
    })
}

/// A local file, directory, cache repository or snapshot.
fn resolve_local(shown: &str, path: &Path) -> Result<Resolved> {
    let meta =
        std::fs::metadata(path).map_err(crate::error::io_error(path, "opening the checkpoint"))?;
    if meta.is_file() {
        if path
            .file_name()
            .is_some_and(|n| n == SAFETENSORS_INDEX || n.to_string_lossy().ends_with(".index.json"))
        {
            let dir = path.parent().unwrap_or(Path::new("."));
            let name = path.file_name().expect("a file name").to_string_lossy();
            return resolve_dir(shown, dir, Some(&name));
        }
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        return Ok(Resolved {
            shards: vec![ShardRef {
                uri: path.display().to_string(),
                sha256: blob_digest(dir, &name),
                name,
            }],
            weight_map: None,
        });
    }
    // A cache repository folder (`models--ORG--NAME`): its `refs/main`
    // snapshot.
    if path.join("refs").is_dir() && path.join("snapshots").is_dir() {
        let revision =
            crate::model_dir::read(path, "refs/main", "the revision file refs/main", 128)?;
        let revision = String::from_utf8_lossy(&revision).trim().to_owned();
        if !(revision.len() == 40 || revision.len() == 64)
            || !revision.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(Error::Checkpoint {
                uri: shown.to_owned(),
                message: "refs/main does not hold a commit hash (40 or 64 hex digits)".into(),
            });
        }
        return resolve_dir(shown, &path.join("snapshots").join(revision), None);
    }
    resolve_dir(shown, path, None)
}

/// The shards of a local directory, from its index (`index`, or the
/// default name when present) or its `*.safetensors`.
fn resolve_dir(shown: &str, dir: &Path, index: Option<&str>) -> Result<Resolved> {
    let names = crate::model_dir::list_files(dir)?;
    let index = index.or_else(|| {
        names
            .iter()
            .any(|n| n == SAFETENSORS_INDEX)
            .then_some(SAFETENSORS_INDEX)
    });
    let shard = |name: String| ShardRef {
        uri: dir.join(&name).display().to_string(),
        sha256: blob_digest(dir, &name),
        name,
    };
    if let Some(index) = index {
        let bytes = crate::model_dir::read(dir, index, "the checkpoint's index", MAX_INDEX_BYTES)?;
        let (map, shards) = parse_index(shown, &bytes)?;
        return Ok(Resolved {
            shards: shards.into_iter().map(shard).collect(),
            weight_map: Some(map),
        });
    }
    let mut refs: Vec<ShardRef> = names
        .into_iter()
        .filter(|n| n.ends_with(".safetensors"))
        .map(shard)
        .collect();
    if refs.is_empty() {
        // A directory of `.tensors` files is a checkpoint too.
        refs = crate::model_dir::list_files(dir)?
            .into_iter()
            .filter(|n| n.ends_with(".tensors"))
            .map(shard)
            .collect();
    }
    Ok(Resolved {
        shards: refs,
        weight_map: None,
    })
}

/// The SHA-256 a Hugging Face cache snapshot's file must have: its link's
/// target is `../../blobs/<sha256>` for files stored with LFS (weights);
/// small files are named by their git SHA-1 and have none.
fn blob_digest(dir: &Path, name: &str) -> Option<[u8; 32]> {
    let link = std::fs::read_link(dir.join(name)).ok()?;
    let blob = link.file_name()?.to_str()?;
    let parent = link.parent()?;
    (parent.file_name()? == "blobs").then_some(())?;
    crate::file_digest::parse_sha256(blob)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_stay_inside() {
        for bad in [
            "",
            "/etc/passwd",
            "../x.safetensors",
            "a/../../b",
            "a\\b",
            "s3://x/y",
            "a//b",
            "./a",
        ] {
            assert!(check_shard_name("m", bad).is_err(), "{bad:?}");
        }
        for good in ["model-00001-of-00002.safetensors", "sub/model.safetensors"] {
            check_shard_name("m", good).unwrap();
        }
    }
}
