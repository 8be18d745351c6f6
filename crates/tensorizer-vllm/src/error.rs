//! The one error type of this crate: each variant names the file, tensor,
//! key or rule at fault and, where the user can act, what to do.

use std::path::PathBuf;

use thiserror::Error;

/// Why a checkpoint could not be read, sharded, written or loaded.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum VllmError {
    /// The local operating system refused.
    #[error("{}: {action}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        action: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing a `.tensors` file failed.
    #[error(transparent)]
    Tensorizer(#[from] tensorizer::Error),
    /// A remote or local object could not be read, written or copied.
    #[error(transparent)]
    Storage(#[from] tensorizer::io::IoError),
    /// `--model ORG/NAME` is neither a directory nor in the Hugging Face cache.
    #[error(
        "model {model:?} is not a directory and not in the Hugging Face cache (looked in {}); \
         nothing is downloaded: fetch it first (`huggingface-cli download {model}`) or pass its directory",
        searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    ModelNotFound {
        /// What was asked for.
        model: String,
        /// Where it was looked for.
        searched: Vec<PathBuf>,
    },
    /// The checkpoint is incomplete or holds what we refuse to read.
    #[error("{location}: {message}")]
    Checkpoint {
        /// The checkpoint's directory or URI (as shown: secrets redacted).
        location: String,
        /// What is wrong.
        message: String,
    },
    /// `config.json` lacks a value a rule needs, or holds one we cannot use.
    #[error("config.json: {key}: {message}")]
    Config {
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A checkpoint tensor's shape disagrees with what `config.json` implies.
    #[error(
        "tensor {tensor:?} has shape {actual:?}, but config.json implies {expected:?} ({rule})"
    )]
    Shape {
        /// The checkpoint tensor.
        tensor: String,
        /// Its shape.
        actual: Vec<u64>,
        /// The shape the rule expects.
        expected: Vec<u64>,
        /// The rule, with its vLLM source.
        rule: String,
    },
    /// A tensor the rules need is not in the checkpoint.
    #[error("the checkpoint has no tensor {tensor:?} (needed for {needed_for:?}; {rule})")]
    MissingTensor {
        /// The checkpoint tensor looked for.
        tensor: String,
        /// The vLLM parameter it feeds.
        needed_for: String,
        /// The rule, with its vLLM source.
        rule: String,
    },
    /// The tensor-parallel size does not divide what vLLM would split.
    #[error("tensor parallel size {tp}: {message} ({rule})")]
    Parallel {
        /// The requested size.
        tp: usize,
        /// What does not divide.
        message: String,
        /// The rule, with its vLLM source.
        rule: String,
    },
    /// No sharding table exists for this architecture (or this rotary scaling).
    #[error("no vLLM sharding rules for {what} (rules exist for {known}); use --layout hf")]
    NoRules {
        /// The architecture, or the unsupported feature of it.
        what: String,
        /// The architectures that have rules.
        known: String,
    },
    /// A JSON option or configuration has keys this program does not know.
    #[error("{what}: unknown key{} {}", if keys.len() == 1 { "" } else { "s" }, keys.iter().map(|k| format!("{k:?}")).collect::<Vec<_>>().join(", "))]
    UnknownKeys {
        /// Which option or document.
        what: String,
        /// The keys.
        keys: Vec<String>,
    },
    /// An option's value is invalid.
    #[error("{what}: {message}")]
    Invalid {
        /// Which option.
        what: String,
        /// Why.
        message: String,
    },
    /// The destination already holds what this would overwrite.
    #[error("{uri} already exists: {hint}")]
    Exists {
        /// The existing object, as it may be shown.
        uri: tensorizer::io::ShownUri,
        /// What to do.
        hint: String,
    },
    /// A JSON document could not be parsed.
    #[error("{what}: {source}")]
    Json {
        /// The document.
        what: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = VllmError> = std::result::Result<T, E>;

pub(crate) fn io_error(
    path: &std::path::Path,
    action: impl Into<String>,
) -> impl FnOnce(std::io::Error) -> VllmError {
    let path = path.to_path_buf();
    let action = action.into();
    move |source| VllmError::Io {
        path,
        action,
        source,
    }
}
