//! `Qwen2ForCausalLM` (vLLM `model_executor/models/qwen2.py`): Llama's
//! layout with a `q`/`k`/`v` bias and no output-projection bias.

use super::{Architecture, Bias, Dim, Kind, MARKER, Rule, When};

/// Qwen2 (and Qwen2.5).
pub static QWEN2: Architecture = Architecture {
    names: &["Qwen2ForCausalLM"],
    model_file: "vllm/model_executor/models/qwen2.py",
    head: &[
        MARKER,
        Rule::container(
            "model",
            "models/qwen2.py Qwen2ForCausalLM: self.model = Qwen2Model",
        ),
        Rule {
            module: "model.embed_tokens",
            kind: Kind::Vocab { tied_to: None },
            hf: &["model.embed_tokens"],
            shape: &[Dim::Vocab, Dim::Hidden],
            bias: Bias::Never,
            when: When::Always,
            source: "models/qwen2.py Qwen2Model: VocabParallelEmbedding (layers/vocab_parallel_embedding.py)",
        },
        Rule::container(
            "model.layers",
            "models/qwen2.py Qwen2Model: make_layers(Qwen2DecoderLayer)",
        ),
    ],
    layer_prefix: "model.layers.{i}",
    layer: &[
        Rule::container("", "models/qwen2.py Qwen2DecoderLayer"),
        Rule::container(".self_attn", "models/qwen2.py Qwen2Attention"),
        Rule {
            module: ".self_attn.qkv_proj",
            kind: Kind::Qkv,
            hf: &[
                ".self_attn.q_proj",
                ".self_attn.k_proj",
                ".self_attn.v_proj",
            ],
            shape: &[],
            bias: Bias::Always,
            when: When::Always,
            source: "models/qwen2.py Qwen2Attention: QKVParallelLinear(bias=True) (layers/linear.py)",
        },
        Rule {
            module: ".self_attn.o_proj",
            kind: Kind::Row,
            hf: &[".self_attn.o_proj"],
            shape: &[Dim::Hidden, Dim::QHeads],
            bias: Bias::Never,
            when: When::Always,
            source: "models/qwen2.py Qwen2Attention: RowParallelLinear(bias=False) (layers/linear.py)",
        },
        Rule {
            module: ".self_attn.rotary_emb",
            kind: Kind::Rotary,
            hf: &[],
            shape: &[],
            bias: Bias::Never,
            when: When::FirstLayer,
            source: "models/qwen2.py Qwen2Attention: get_rope, cached and shared by every layer (layers/rotary_embedding/)",
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
            source: "models/qwen2.py Qwen2Attention: Attention (attention/layer.py: persistent scale buffers)",
        },
        Rule::container(".mlp", "models/qwen2.py Qwen2MLP"),
        Rule {
            module: ".mlp.gate_up_proj",
            kind: Kind::MergedColumn,
            hf: &[".mlp.gate_proj", ".mlp.up_proj"],
            shape: &[Dim::Intermediate, Dim::Hidden],
            bias: Bias::Never,
            when: When::Always,
            source: "models/qwen2.py Qwen2MLP: MergedColumnParallelLinear(bias=False) (layers/linear.py)",
        },
        Rule {
            module: ".mlp.down_proj",
            kind: Kind::Row,
            hf: &[".mlp.down_proj"],
            shape: &[Dim::Hidden, Dim::Intermediate],
            bias: Bias::Never,
            when: When::Always,
            source: "models/qwen2.py Qwen2MLP: RowParallelLinear(bias=False) (layers/linear.py)",
        },
        Rule::container(".mlp.act_fn", "models/qwen2.py Qwen2MLP: SiluAndMul"),
        Rule {
            module: ".input_layernorm",
            kind: Kind::Replicated,
            hf: &[".input_layernorm"],
            shape: &[Dim::Hidden],
            bias: Bias::Never,
            when: When::Always,
            source: "models/qwen2.py Qwen2DecoderLayer: RMSNorm (layers/layernorm.py)",
        },
        Rule {
            module: ".post_attention_layernorm",
            kind: Kind::Replicated,
            hf: &[".post_attention_layernorm"],
            shape: &[Dim::Hidden],
            bias: Bias::Never,
            when: When::Always,
            source: "models/qwen2.py Qwen2DecoderLayer: RMSNorm (layers/layernorm.py)",
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
            source: "models/qwen2.py Qwen2Model: RMSNorm",
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
            source: "models/qwen2.py Qwen2ForCausalLM: ParallelLMHead, tied to embed_tokens' weight in its own module",
        },
        Rule::container(
            "logits_processor",
            "models/qwen2.py Qwen2ForCausalLM: LogitsProcessor",
        ),
    ],
    tie_default: false,
    rotary: true,
    hf_aliases: &[],
};
