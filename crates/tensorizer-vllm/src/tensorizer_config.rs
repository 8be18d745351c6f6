//! vLLM's `TensorizerConfig` (`model_executor/model_loader/tensorizer.py`):
//! the JSON a vLLM server takes as `--model-loader-extra-config`, read with
//! the same defaults, so a Rust server loads from the same configuration.

use serde::Deserialize;
use serde_json::{Map, Value};
use tensorizer::{Decryption, Deserializer, EncryptionKey, S3Options, StorageOptions, Verify};

use crate::error::{Result, VllmError};

/// vLLM's tensorizer configuration.
///
/// ```
/// use tensorizer_vllm::TensorizerConfig;
/// let c = TensorizerConfig::from_json(r#"{"tensorizer_uri": "s3://b/vllm/m/v1/model-rank-%03d.tensors", "num_readers": 8}"#)?;
/// assert!(c.is_sharded());
/// assert_eq!(c.uri_for_rank(1)?, "s3://b/vllm/m/v1/model-rank-001.tensors");
/// assert_eq!(c.tensorizer_dir.as_deref(), Some("s3://b/vllm/m/v1"));
/// assert!(TensorizerConfig::from_json(r#"{"tensorizer_uri": "m.tensors", "num_reader": 8}"#).is_err());
/// # Ok::<(), tensorizer_vllm::VllmError>(())
/// ```
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorizerConfig {
    /// The `.tensors` file, or a `%0Nd` template for per-rank files.
    pub tensorizer_uri: Option<String>,
    /// A directory holding `model.tensors` and the model's other files.
    pub tensorizer_dir: Option<String>,
    /// Deprecated in vLLM (files carry a marker); accepted and ignored.
    pub vllm_tensorized: Option<bool>,
    /// Check every tensor's hashes while loading.
    pub verify_hash: Option<bool>,
    /// Concurrent readers (default: the source's preference).
    pub num_readers: Option<usize>,
    /// A file or URI holding the 32 raw key bytes.
    pub encryption_keyfile: Option<String>,
    /// S3 access key id (default: `S3_ACCESS_KEY_ID`, ...).
    pub s3_access_key_id: Option<String>,
    /// S3 secret access key (default: `S3_SECRET_ACCESS_KEY`, ...).
    pub s3_secret_access_key: Option<String>,
    /// S3 endpoint (default: `S3_ENDPOINT_URL`, ...).
    pub s3_endpoint: Option<String>,
    /// A LoRA adapter directory (`adapter_model.tensors`, `adapter_config.json`).
    pub lora_dir: Option<String>,
    /// Extra `open_stream` arguments (only the S3 ones are understood).
    pub stream_kwargs: Option<Map<String, Value>>,
    /// Extra `TensorSerializer` arguments.
    pub serialization_kwargs: Option<Map<String, Value>>,
    /// Extra `TensorDeserializer` arguments.
    pub deserialization_kwargs: Option<Map<String, Value>>,
}

/// Every field but the secret: `s3_secret_access_key` shows as redacted,
/// URIs without credentials or query, `stream_kwargs` by key only.
impl std::fmt::Debug for TensorizerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let uri = |u: &Option<String>| u.as_deref().map(tensorizer::io::redact_uri);
        let keys = |m: &Option<Map<String, Value>>| {
            m.as_ref().map(|m| m.keys().cloned().collect::<Vec<_>>())
        };
        f.debug_struct("TensorizerConfig")
            .field("tensorizer_uri", &uri(&self.tensorizer_uri))
            .field("tensorizer_dir", &uri(&self.tensorizer_dir))
            .field("vllm_tensorized", &self.vllm_tensorized)
            .field("verify_hash", &self.verify_hash)
            .field("num_readers", &self.num_readers)
            .field("encryption_keyfile", &uri(&self.encryption_keyfile))
            .field("s3_access_key_id", &self.s3_access_key_id)
            .field(
                "s3_secret_access_key",
                &self.s3_secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("s3_endpoint", &uri(&self.s3_endpoint))
            .field("lora_dir", &uri(&self.lora_dir))
            .field("stream_kwargs (keys)", &keys(&self.stream_kwargs))
            .field("serialization_kwargs", &self.serialization_kwargs)
            .field(
                "deserialization_kwargs (keys)",
                &keys(&self.deserialization_kwargs),
            )
            .finish()
    }
}

/// `TensorDeserializer` keyword arguments that mean something here (others
/// are refused): `device`, `dtype`, `lazy_load` and `plaid_mode` are
/// accepted and decided by the caller.
const DESERIALIZATION_KWARGS: [&str; 7] = [
    "verify_hash",
    "num_readers",
    "encryption",
    "device",
    "dtype",
    "lazy_load",
    "plaid_mode",
];

impl TensorizerConfig {
    /// Parses the JSON form and resolves the URI as vLLM's `__post_init__`
    /// does; unknown keys are an error naming them.
    pub fn from_json(text: &str) -> Result<Self> {
        let mut c: Self = serde_json::from_str(text).map_err(|source| VllmError::Json {
            what: "tensorizer configuration".into(),
            source,
        })?;
        c.resolve()?;
        Ok(c)
    }

    /// vLLM's `__post_init__`: `tensorizer_uri` from `lora_dir` or
    /// `tensorizer_dir` when absent, `tensorizer_dir` from the URI.
    pub fn resolve(&mut self) -> Result<()> {
        if self.tensorizer_dir.is_some() && self.lora_dir.is_some() {
            return Err(VllmError::Invalid {
                what: "tensorizer configuration".into(),
                message: "only one of tensorizer_dir or lora_dir may be given".into(),
            });
        }
        match &self.tensorizer_uri {
            Some(uri) => {
                self.tensorizer_dir = Some(match uri.rsplit_once('/') {
                    Some((dir, _)) => dir.to_owned(),
                    None => String::new(),
                });
            }
            None => {
                self.tensorizer_uri = Some(if let Some(lora) = &self.lora_dir {
                    format!("{lora}/adapter_model.tensors")
                } else if let Some(dir) = &self.tensorizer_dir {
                    format!("{dir}/model.tensors")
                } else {
                    return Err(VllmError::Invalid {
                        what: "tensorizer configuration".into(),
                        message: "give tensorizer_uri or tensorizer_dir".into(),
                    });
                });
            }
        }
        if let Some(kwargs) = &self.deserialization_kwargs {
            let unknown: Vec<String> = kwargs
                .keys()
                .filter(|k| !DESERIALIZATION_KWARGS.contains(&k.as_str()))
                .cloned()
                .collect();
            if !unknown.is_empty() {
                return Err(VllmError::UnknownKeys {
                    what: "deserialization_kwargs".into(),
                    keys: unknown,
                });
            }
        }
        Ok(())
    }

    /// The URI, as resolved.
    pub fn uri(&self) -> &str {
        self.tensorizer_uri.as_deref().unwrap_or_default()
    }

    /// Whether the URI is a per-rank template (`%0Nd`, as vLLM tests it).
    pub fn is_sharded(&self) -> bool {
        is_rank_template(self.uri())
    }

    /// The URI of `rank`'s file: the template formatted as Python's
    /// `uri % rank`, or the URI itself when it is no template.
    pub fn uri_for_rank(&self, rank: usize) -> Result<String> {
        if !self.is_sharded() {
            return Ok(self.uri().to_owned());
        }
        format_rank(self.uri(), rank)
    }

    /// S3 credentials and endpoint from the configuration (the usual
    /// environment and file lookups fill what is unset).
    pub fn storage_options(&self) -> StorageOptions {
        let kw = |k: &str| {
            self.stream_kwargs
                .as_ref()
                .and_then(|m| m.get(k))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        StorageOptions {
            s3: S3Options {
                access_key_id: self
                    .s3_access_key_id
                    .clone()
                    .or_else(|| kw("s3_access_key_id")),
                secret_access_key: self
                    .s3_secret_access_key
                    .clone()
                    .or_else(|| kw("s3_secret_access_key")),
                endpoint: self.s3_endpoint.clone().or_else(|| kw("s3_endpoint")),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// The key from `encryption_keyfile`, if one is configured.
    pub fn decryption(&self) -> Result<Option<Decryption>> {
        let Some(keyfile) = &self.encryption_keyfile else {
            return Ok(None);
        };
        let source = tensorizer::io::open_source(keyfile, &self.storage_options())?;
        // 32 raw bytes (or 64 hex digits): never read more than a few KiB
        // of what a server says the key file holds.
        if source.len() > MAX_KEY_FILE {
            return Err(VllmError::Invalid {
                what: format!(
                    "encryption_keyfile {}",
                    tensorizer::io::ShownUri::new(keyfile)
                ),
                message: format!(
                    "{} bytes; a key file holds 32 bytes (or 64 hex digits)",
                    source.len()
                ),
            });
        }
        let bytes = source.read_range(0, source.len())?;
        let key = EncryptionKey::from_key_file(&bytes).map_err(|e| VllmError::Invalid {
            what: format!(
                "encryption_keyfile {}",
                tensorizer::io::ShownUri::new(keyfile)
            ),
            message: e.to_string(),
        })?;
        Ok(Some(Decryption::Key(key)))
    }

    /// Opens `rank`'s file with this configuration's key, hash checking
    /// and readers.
    pub fn open_rank(&self, rank: usize) -> Result<Deserializer> {
        let uri = self.uri_for_rank(rank)?;
        let mut d = Deserializer::open_uri_with(&uri, &self.storage_options())?;
        let kw = self.deserialization_kwargs.clone().unwrap_or_default();
        let verify = kw
            .get("verify_hash")
            .and_then(Value::as_bool)
            .or(self.verify_hash)
            .unwrap_or(false);
        d = d.verify(if verify { Verify::All } else { Verify::None });
        if let Some(n) = kw
            .get("num_readers")
            .and_then(Value::as_u64)
            .map(|n| n as usize)
            .or(self.num_readers)
        {
            d = d.num_readers(n);
        }
        if let Some(dec) = self.decryption()? {
            // vLLM's marker is the one meta tensor of its files, and vLLM
            // never reads its value: accept it, refuse any other.
            d = d
                .decryption(dec)?
                .unauthenticated_meta(tensorizer::UnauthenticatedMeta::Allow(vec![
                    crate::MARKER_TENSOR.into(),
                ]));
        }
        Ok(d)
    }
}

/// True when `uri` holds a `%0Nd` rank placeholder.
pub fn is_rank_template(uri: &str) -> bool {
    let b = uri.as_bytes();
    b.windows(4)
        .any(|w| w[0] == b'%' && w[1] == b'0' && w[2].is_ascii_digit() && w[3] == b'd')
}

/// The largest key file read.
const MAX_KEY_FILE: u64 = 4096;

/// The widest `%0Nd` a rank template may ask for.
const MAX_RANK_WIDTH: usize = 20;

/// Python's `template % rank` for the placeholders `%d`, `%Nd`, `%0Nd`
/// and `%%`.
pub fn format_rank(template: &str, rank: usize) -> Result<String> {
    let bad = |message: &str| VllmError::Invalid {
        what: format!("URI template {}", tensorizer::io::ShownUri::new(template)),
        message: message.into(),
    };
    let mut out = String::new();
    let mut chars = template.chars().peekable();
    let mut used = false;
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'%') {
            chars.next();
            out.push('%');
            continue;
        }
        let mut spec = String::new();
        while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            spec.push(d);
            chars.next();
        }
        if chars.next() != Some('d') || used {
            return Err(bad("only one %d-style placeholder is allowed"));
        }
        used = true;
        // vLLM writes %03d; a width past a few digits is a hostile or
        // mistyped template, not a rank, and would allocate that many bytes.
        let width: usize = if spec.is_empty() {
            0
        } else {
            spec.parse().unwrap_or(usize::MAX)
        };
        if width > MAX_RANK_WIDTH {
            return Err(bad(&format!(
                "a rank width of {spec} digits (at most {MAX_RANK_WIDTH})"
            )));
        }
        if spec.starts_with('0') {
            out.push_str(&format!("{rank:0width$}"));
        } else {
            out.push_str(&format!("{rank:width$}"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_holds_no_secret() {
        let c = TensorizerConfig::from_json(
            r#"{"tensorizer_uri": "https://u:pw@h/m.tensors?sig=SIG", "s3_access_key_id": "AKID",
                "s3_secret_access_key": "SECRETKEY", "stream_kwargs": {"s3_secret_access_key": "KW"}}"#,
        )
        .unwrap();
        let shown = format!("{c:?}");
        for secret in ["SECRETKEY", "pw", "SIG", "KW"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("AKID") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn defaults_follow_post_init() {
        let c = TensorizerConfig::from_json(r#"{"tensorizer_dir": "s3://b/m/v1"}"#).unwrap();
        assert_eq!(c.uri(), "s3://b/m/v1/model.tensors");
        let c = TensorizerConfig::from_json(r#"{"lora_dir": "/l"}"#).unwrap();
        assert_eq!(c.uri(), "/l/adapter_model.tensors");
        assert!(TensorizerConfig::from_json("{}").is_err());
        let e = TensorizerConfig::from_json(
            r#"{"tensorizer_uri": "a", "deserialization_kwargs": {"bogus": 1}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("\"bogus\""), "{e}");
    }

    #[test]
    fn templates_format_as_python() {
        assert_eq!(format_rank("m-%03d.t", 7).unwrap(), "m-007.t");
        assert_eq!(format_rank("m-%d-100%%.t", 12).unwrap(), "m-12-100%.t");
        assert!(format_rank("%03d-%03d", 1).is_err());
        // A giant width is refused, not allocated.
        let err = format_rank("m-%0999999999999d.t", 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("rank width"), "{err}");
        assert!(format_rank("m-%099999999999999999999999d.t", 1).is_err());
        assert!(is_rank_template("x/model-rank-%03d.tensors"));
        assert!(!is_rank_template("x/model.tensors"));
    }
}
