//! `OPTForCausalLM` (vLLM `model_executor/models/opt.py`). Its LM head is
//! a module of its own sharing the embedding's weight when tied (OPT's
//! default), so the weight is written under both names.

use super::{Architecture, Bias, Dim, Kind, MARKER, Rule, When};

/// OPT.
pub static OPT: Architecture = Architecture {
    names: &["OPTForCausalLM"],
    model_file: "vllm/model_executor/models/opt.py",
    head: &[
        MARKER,
        Rule::container(
            "model",
            "models/opt.py OPTForCausalLM: self.model = OPTModel",
        ),
        Rule::container(
            "model.decoder",
            "models/opt.py OPTModel: self.decoder = OPTDecoder",
        ),
        Rule {
            module: "model.decoder.embed_tokens",
            kind: Kind::Vocab { tied_to: None },
            hf: &["model.decoder.embed_tokens"],
            shape: &[Dim::Vocab, Dim::WordEmbedProj],
            bias: Bias::Never,
            when: When::Always,
            source: "models/opt.py OPTDecoder: VocabParallelEmbedding(vocab_size, word_embed_proj_dim)",
        },
        Rule {
            module: "model.decoder.embed_positions",
            kind: Kind::Replicated,
            hf: &["model.decoder.embed_positions"],
            shape: &[Dim::PositionsPlus2, Dim::Hidden],
            bias: Bias::Never,
            when: When::Always,
            source: "models/opt.py OPTDecoder: OPTLearnedPositionalEmbedding (nn.Embedding, offset 2)",
        },
        Rule {
            module: "model.decoder.project_out",
            kind: Kind::Replicated,
            hf: &["model.decoder.project_out"],
            shape: &[Dim::WordEmbedProj, Dim::Hidden],
            bias: Bias::Never,
            when: When::ProjectionDiffers,
            source: "models/opt.py OPTDecoder: ReplicatedLinear(hidden, word_embed_proj_dim, bias=False)",
        },
        Rule {
            module: "model.decoder.project_in",
            kind: Kind::Replicated,
            hf: &["model.decoder.project_in"],
            shape: &[Dim::Hidden, Dim::WordEmbedProj],
            bias: Bias::Never,
            when: When::ProjectionDiffers,
            source: "models/opt.py OPTDecoder: ReplicatedLinear(word_embed_proj_dim, hidden, bias=False)",
        },
        Rule {
            module: "model.decoder.final_layer_norm",
            kind: Kind::Replicated,
            hf: &["model.decoder.final_layer_norm"],
            shape: &[Dim::Hidden],
            bias: Bias::Always,
            when: When::FinalLayerNorm,
            source: "models/opt.py OPTDecoder: nn.LayerNorm when do_layer_norm_before and not _remove_final_layer_norm",
        },
        Rule::container(
            "model.decoder.layers",
            "models/opt.py OPTDecoder: make_layers(OPTDecoderLayer)",
        ),
    ],
    layer_prefix: "model.decoder.layers.{i}",
    layer: &[
        Rule::container("", "models/opt.py OPTDecoderLayer"),
        Rule::container(".self_attn", "models/opt.py OPTAttention"),
        Rule {
            module: ".self_attn.qkv_proj",
            kind: Kind::Qkv,
            hf: &[
                ".self_attn.q_proj",
                ".self_attn.k_proj",
                ".self_attn.v_proj",
            ],
            shape: &[],
            bias: Bias::Config("enable_bias", true),
            when: When::Always,
            source: "models/opt.py OPTAttention: QKVParallelLinear(bias=enable_bias) (layers/linear.py)",
        },
        Rule {
            module: ".self_attn.out_proj",
            kind: Kind::Row,
            hf: &[".self_attn.out_proj"],
            shape: &[Dim::Hidden, Dim::Hidden],
            bias: Bias::Config("enable_bias", true),
            when: When::Always,
            source: "models/opt.py OPTAttention: RowParallelLinear(bias=enable_bias) (layers/linear.py)",
        },
        Rule {
            module: ".self_attn.attn",
            kind: Kind::AttentionScales,
            hf: &[],
            shape: &[],
            bias: Bias::Never,
            when: When::Always,
            source: "models/opt.py OPTAttention: Attention (attention/layer.py: persistent scale buffers)",
        },
        Rule {
            module: ".self_attn_layer_norm",
            kind: Kind::Replicated,
            hf: &[".self_attn_layer_norm"],
            shape: &[Dim::Hidden],
            bias: Bias::Always,
            when: When::Always,
            source: "models/opt.py OPTDecoderLayer: nn.LayerNorm",
        },
        Rule {
            module: ".fc1",
            kind: Kind::Column,
            hf: &[".fc1"],
            shape: &[Dim::Intermediate, Dim::Hidden],
            bias: Bias::Config("enable_bias", true),
            when: When::Always,
            source: "models/opt.py OPTDecoderLayer: ColumnParallelLinear(embed_dim, ffn_dim) (layers/linear.py)",
        },
        Rule {
            when: When::FirstLayer,
            ..Rule::container(
                ".activation_fn",
                "models/opt.py OPTDecoderLayer: get_act_fn, one cached module shared by every layer (layers/activation.py)",
            )
        },
        Rule {
            module: ".fc2",
            kind: Kind::Row,
            hf: &[".fc2"],
            shape: &[Dim::Hidden, Dim::Intermediate],
            bias: Bias::Config("enable_bias", true),
            when: When::Always,
            source: "models/opt.py OPTDecoderLayer: RowParallelLinear(ffn_dim, embed_dim) (layers/linear.py)",
        },
        Rule {
            module: ".final_layer_norm",
            kind: Kind::Replicated,
            hf: &[".final_layer_norm"],
            shape: &[Dim::Hidden],
            bias: Bias::Always,
            when: When::Always,
            source: "models/opt.py OPTDecoderLayer: nn.LayerNorm",
        },
    ],
    tail: &[
        Rule {
            module: "lm_head",
            kind: Kind::Vocab {
                tied_to: Some("model.decoder.embed_tokens"),
            },
            hf: &["lm_head"],
            shape: &[Dim::Vocab, Dim::WordEmbedProj],
            bias: Bias::Never,
            when: When::Always,
            source: "models/opt.py OPTForCausalLM: ParallelLMHead, tied to embed_tokens' weight in its own module",
        },
        Rule::container(
            "logits_processor",
            "models/opt.py OPTForCausalLM: LogitsProcessor",
        ),
    ],
    tie_default: true,
    rotary: false,
    hf_aliases: &[("decoder.", "model.decoder.")],
};
