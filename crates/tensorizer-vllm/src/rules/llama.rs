//! `LlamaForCausalLM` (vLLM `model_executor/models/llama.py`), which also
//! serves `MistralForCausalLM` (`models/mistral.py` subclasses these
//! classes without changing their parameters).

use super::{Architecture, Bias, Dim, Kind, MARKER, Rule, When};

/// The Llama family.
pub static LLAMA: Architecture = Architecture {
    names: &["LlamaForCausalLM", "MistralForCausalLM"],
    model_file: "vllm/model_executor/models/llama.py",
    head: &[
        MARKER,
        Rule::container(
            "model",
            "models/llama.py LlamaForCausalLM: self.model = LlamaModel",
        ),
        Rule {
            module: "model.embed_tokens",
            kind: Kind::Vocab { tied_to: None },
            hf: &["model.embed_tokens"],
            shape: &[Dim::Vocab, Dim::Hidden],
            bias: Bias::Never,
            when: When::Always,
            source: "models/llama.py LlamaModel: VocabParallelEmbedding (layers/vocab_parallel_embedding.py)",
        },
        Rule::container(
            "model.layers",
            "models/llama.py LlamaModel: make_layers(LlamaDecoderLayer)",
        ),
    ],
    layer_prefix: "model.layers.{i}",
    layer: &[
        Rule::container("", "models/llama.py LlamaDecoderLayer"),
        Rule::container(".self_attn", "models/llama.py LlamaAttention"),
        Rule {
            module: ".self_attn.qkv_proj",
            kind: Kind::Qkv,
            hf: &[
                ".self_attn.q_proj",
                ".self_attn.k_proj",
                ".self_attn.v_proj",
            ],
            shape: &[],
            bias: Bias::Config("attention_bias", false),
            when: When::Always,
            source: "models/llama.py LlamaAttention: QKVParallelLinear (layers/linear.py), stacked_params_mapping q/k/v",
        },
        Rule {
            module: ".self_attn.o_proj",
            kind: Kind::Row,
            hf: &[".self_attn.o_proj"],
            shape: &[Dim::Hidden, Dim::QHeads],
            bias: Bias::Config("attention_bias", false),
            when: When::Always,
            source: "models/llama.py LlamaAttention: RowParallelLinear(bias=bias_o_proj) (layers/linear.py)",
        },
        Rule {
            module: ".self_attn.rotary_emb",
            kind: Kind::Rotary,
            hf: &[],
            shape: &[],
            bias: Bias::Never,
            when: When::FirstLayer,
            source: "models/llama.py LlamaAttention: get_rope, cached and shared by every layer (layers/rotary_embedding/)",
        },
        Rule {
            when: When::FirstLayer,
            ..Rule::container(
                ".self_attn.rotary_emb.apply_rotary_emb",
                "layers/rotary_embedding/base.py RotaryEmbedding: self.apply_rotary_emb = ApplyRotaryEmb (a module of the shared rotary embedding)",
            )
        },
        Rule {
            module: ".self_attn.attn",
            kind: Kind::AttentionScales,
            hf: &[],
            shape: &[],
            bias: Bias::Never,
            when: When::Always,
            source: "models/llama.py LlamaAttention: Attention (attention/layer.py: persistent scale buffers)",
        },
        Rule::container(".mlp", "models/llama.py LlamaMLP"),
        Rule {
            module: ".mlp.gate_up_proj",
            kind: Kind::MergedColumn,
            hf: &[".mlp.gate_proj", ".mlp.up_proj"],
            shape: &[Dim::Intermediate, Dim::Hidden],
            bias: Bias::Config("mlp_bias", false),
            when: When::Always,
            source: "models/llama.py LlamaMLP: MergedColumnParallelLinear([intermediate] * 2) (layers/linear.py)",
        },
        Rule {
            module: ".mlp.down_proj",
            kind: Kind::Row,
            hf: &[".mlp.down_proj"],
            shape: &[Dim::Hidden, Dim::Intermediate],
            bias: Bias::Config("mlp_bias", false),
            when: When::Always,
            source: "models/llama.py LlamaMLP: RowParallelLinear (layers/linear.py)",
        },
        Rule::container(".mlp.act_fn", "models/llama.py LlamaMLP: SiluAndMul"),
        Rule {
            module: ".input_layernorm",
            kind: Kind::Replicated,
            hf: &[".input_layernorm"],
            shape: &[Dim::Hidden],
            bias: Bias::Never,
            when: When::Always,
            source: "models/llama.py LlamaDecoderLayer: RMSNorm (layers/layernorm.py)",
        },
        Rule {
            module: ".post_attention_layernorm",
            kind: Kind::Replicated,
            hf: &[".post_attention_layernorm"],
            shape: &[Dim::Hidden],
            bias: Bias::Never,
            when: When::Always,
            source: "models/llama.py LlamaDecoderLayer: RMSNorm (layers/layernorm.py)",
        },
    ],
    tail: &[
        Rule {
            module: "model.norm",
            kind: Kind::Replicated,
            hf: &["model.norm"],
            shape: &[Dim::Hidden],
            bias: Bias::Never,
            when: When::Always,
            source: "models/llama.py LlamaModel: RMSNorm",
        },
        Rule {
            module: "lm_head",
            kind: Kind::Vocab {
                tied_to: Some("model.embed_tokens"),
            },
            hf: &["lm_head"],
            shape: &[Dim::Vocab, Dim::Hidden],
            bias: Bias::Never,
            when: When::Always,
            source: "models/llama.py LlamaForCausalLM: ParallelLMHead, tie_weights(embed_tokens) shares the weight in its own module",
        },
        Rule::container(
            "logits_processor",
            "models/llama.py LlamaForCausalLM: LogitsProcessor",
        ),
    ],
    tie_default: false,
    rotary: true,
    hf_aliases: &[],
};
