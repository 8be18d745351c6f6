//! vLLM's tensor-parallel layout as data: for each architecture, the
//! modules of its vLLM model class in `named_modules()` order, each with the
//! layer type that decides how its tensors are split across ranks and the
//! Hugging Face tensors that feed it. Every row cites the vLLM source file
//! it comes from (vLLM 0.33, the newest release read for this table).
//!
//! The layer types (`model_executor/layers/`):
//!
//! | kind | per rank | source |
//! |---|---|---|
//! | [`Kind::Qkv`] | rows `[q heads r; kv heads r / replicas; v likewise]`, KV heads replicated when TP > KV heads | `layers/linear.py` `QKVParallelLinear` |
//! | [`Kind::MergedColumn`] | rows `[gate shard r; up shard r]` | `layers/linear.py` `MergedColumnParallelLinear` |
//! | [`Kind::Column`] | rows (output dim) split, bias split | `layers/linear.py` `ColumnParallelLinear` |
//! | [`Kind::Row`] | columns (input dim) split, bias whole | `layers/linear.py` `RowParallelLinear` |
//! | [`Kind::Vocab`] | vocab padded to 64, rows split, padded rows zero | `layers/vocab_parallel_embedding.py` |
//! | [`Kind::Replicated`] | whole | norms, `ReplicatedLinear`, learned positions |
//! | [`Kind::Rotary`] | non-persistent `cos_sin_cache`, whole | `layers/rotary_embedding/base.py` |
//! | [`Kind::AttentionScales`] | `_k_scale`, `_v_scale`, `_q_scale`, `_prob_scale`: f32 1.0 | `attention/layer.py` |
//! | [`Kind::Container`] | nothing: counts in module numbering only | |

mod llama;
mod opt;
mod qwen2;

pub use llama::LLAMA;
pub use opt::OPT;
pub use qwen2::QWEN2;

/// The vLLM release these tables follow.
pub const VLLM_VERSION: &str = "0.33.0";

/// How one vLLM module's tensors are made from a checkpoint's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A module with no tensors of its own.
    Container,
    /// The root module: only the `vllm_tensorized_marker` parameter.
    Marker,
    /// Copied whole to every rank.
    Replicated,
    /// Output dimension split.
    Column,
    /// Input dimension split; the bias is whole on every rank.
    Row,
    /// Fused `q`, `k`, `v` projections (three checkpoint tensors).
    Qkv,
    /// Fused gate and up projections (two checkpoint tensors).
    MergedColumn,
    /// A vocabulary-parallel embedding or LM head; `tied_to` is the
    /// checkpoint tensor used when `tie_word_embeddings` is set.
    Vocab {
        /// The tensor shared under tied embeddings.
        tied_to: Option<&'static str>,
    },
    /// The rotary embedding's `cos_sin_cache` buffer.
    Rotary,
    /// The attention layer's quantisation scale buffers.
    AttentionScales,
}

/// Which tensors a module has besides `weight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bias {
    /// Never a bias.
    Never,
    /// Always a bias.
    Always,
    /// A bias when this `config.json` boolean is true (the default when absent).
    Config(&'static str, bool),
}

/// When a module exists at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Always.
    Always,
    /// In the first decoder layer only (a module shared by every layer is
    /// listed once by `named_modules()`).
    FirstLayer,
    /// When `word_embed_proj_dim` differs from `hidden_size` (OPT).
    ProjectionDiffers,
    /// When `do_layer_norm_before` and not `_remove_final_layer_norm` (OPT).
    FinalLayerNorm,
}

/// A size `config.json` implies, to check checkpoint shapes against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    /// `hidden_size`.
    Hidden,
    /// `num_attention_heads × head_dim`.
    QHeads,
    /// `intermediate_size` (or OPT's `ffn_dim`).
    Intermediate,
    /// `vocab_size`.
    Vocab,
    /// `word_embed_proj_dim` (OPT).
    WordEmbedProj,
    /// `max_position_embeddings + 2` (OPT's learned positions).
    PositionsPlus2,
}

/// One module of a vLLM model class.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// The module's path; in [`Architecture::layer`] rows, relative to the
    /// layer (`""` is the layer itself).
    pub module: &'static str,
    /// How its tensors are made.
    pub kind: Kind,
    /// The checkpoint modules feeding it (Hugging Face names, relative like
    /// `module`); `weight` and `bias` are appended.
    pub hf: &'static [&'static str],
    /// The checkpoint weight's shape `config.json` implies (each of `hf`'s
    /// for fused kinds; `Qkv` checks its own).
    pub shape: &'static [Dim],
    /// Whether there is a bias.
    pub bias: Bias,
    /// Whether the module exists.
    pub when: When,
    /// The vLLM file (and class) this row comes from.
    pub source: &'static str,
}

impl Rule {
    /// A module without tensors.
    pub const fn container(module: &'static str, source: &'static str) -> Self {
        Self {
            module,
            kind: Kind::Container,
            hf: &[],
            shape: &[],
            bias: Bias::Never,
            when: When::Always,
            source,
        }
    }
}

/// The root module's `vllm_tensorized_marker` parameter, first in every
/// table.
pub const MARKER: Rule = Rule {
    module: "",
    kind: Kind::Marker,
    hf: &[],
    shape: &[],
    bias: Bias::Never,
    when: When::Always,
    source: "model_loader/tensorizer.py serialize_vllm_model: register_parameter(\"vllm_tensorized_marker\")",
};

/// One architecture's vLLM model class, as a table.
#[derive(Debug)]
pub struct Architecture {
    /// The `config.json` `architectures` values served by this class.
    pub names: &'static [&'static str],
    /// The vLLM model file.
    pub model_file: &'static str,
    /// Modules before the decoder layers, in `named_modules()` order.
    pub head: &'static [Rule],
    /// The path of decoder layer `{i}`.
    pub layer_prefix: &'static str,
    /// Modules of each decoder layer.
    pub layer: &'static [Rule],
    /// Modules after the decoder layers.
    pub tail: &'static [Rule],
    /// `tie_word_embeddings` when `config.json` does not say.
    pub tie_default: bool,
    /// Whether the attention has a rotary embedding.
    pub rotary: bool,
    /// Other spellings of checkpoint names (`(alias, canonical)` prefixes),
    /// as the model's `hf_to_vllm_mapper` accepts them.
    pub hf_aliases: &'static [(&'static str, &'static str)],
}

/// Every architecture with rules.
pub const ARCHITECTURES: [&Architecture; 3] = [&LLAMA, &QWEN2, &OPT];

/// The rules for a `config.json` `architectures` value.
pub fn find(architecture: &str) -> Option<&'static Architecture> {
    ARCHITECTURES
        .into_iter()
        .find(|a| a.names.contains(&architecture))
}

/// The architectures that have rules, for messages.
pub fn known() -> String {
    ARCHITECTURES
        .iter()
        .flat_map(|a| a.names.iter().copied())
        .collect::<Vec<_>>()
        .join(", ")
}
