#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

pub mod checkpoint;
pub mod config;
mod deserialize;
mod error;
mod pyjson;
mod rotary;
pub mod rules;
mod serialize;
mod shard;
mod tensorizer_config;

pub use checkpoint::Checkpoint;
pub use config::ModelConfig;
pub use deserialize::{Device, RankLoad, load_ranks};
pub use error::{Result, VllmError};
pub use rotary::RotarySpec;
pub use rules::{Architecture, VLLM_VERSION};

/// The name vLLM gives its marker parameter in every tensorized file: a
/// meta tensor (int64, shape `[1]`) whose value is never read.
pub const MARKER_TENSOR: &str = ".vllm_tensorized_marker";
pub use serialize::{
    Layout, Progress, SerializeOptions, SerializeReport, auto_dtype, serialize,
    tensorize_lora_adapter,
};
pub use shard::{
    Content, Piece, PlannedTensor, RankPlan, VOCAB_PADDING, architecture_of, plan_from_config,
    shard,
};
pub use tensorizer_config::{TensorizerConfig, format_rank, is_rank_template};
