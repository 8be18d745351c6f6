//! Tiny Hugging Face checkpoints with deterministic pseudo-random weights
//! and the `config.json` keys real checkpoints of each architecture carry.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype as StDtype, TensorView};
use serde_json::{Value, json};

/// An architecture to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tiny {
    /// Llama: 4 heads, 4 KV heads (no grouping), untied head, vocab 100.
    Llama,
    /// Mistral: 8 heads, 2 KV heads, head_dim 16 ≠ hidden / heads.
    Mistral,
    /// Llama 3.1's shape of attention: head_dim 128, one KV head (so it is
    /// replicated at TP 2), llama3 rotary scaling, 2 048 positions.
    Llama31,
    /// Qwen2: 4 heads, 2 KV heads, q/k/v biases, tied embeddings.
    Qwen2,
    /// OPT: tied embeddings, biases everywhere, `decoder.` names.
    Opt,
}

impl Tiny {
    pub fn config(self) -> Value {
        match self {
            Tiny::Llama => json!({
                "architectures": ["LlamaForCausalLM"], "model_type": "llama",
                "hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4,
                "num_key_value_heads": 4, "num_hidden_layers": 2, "vocab_size": 100,
                "max_position_embeddings": 48, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
                "hidden_act": "silu", "tie_word_embeddings": false, "torch_dtype": "bfloat16",
                "attention_bias": false, "mlp_bias": false
            }),
            Tiny::Llama31 => json!({
                "architectures": ["LlamaForCausalLM"], "model_type": "llama",
                "hidden_size": 256, "intermediate_size": 64, "num_attention_heads": 4,
                "num_key_value_heads": 1, "head_dim": 128, "num_hidden_layers": 1, "vocab_size": 64,
                "max_position_embeddings": 2048, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
                "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 256},
                "hidden_act": "silu", "tie_word_embeddings": true, "torch_dtype": "bfloat16"
            }),
            Tiny::Mistral => json!({
                "architectures": ["MistralForCausalLM"], "model_type": "mistral",
                "hidden_size": 96, "intermediate_size": 128, "num_attention_heads": 8,
                "num_key_value_heads": 2, "head_dim": 16, "num_hidden_layers": 2, "vocab_size": 250,
                "max_position_embeddings": 64, "rope_theta": 1000000.0, "rms_norm_eps": 1e-5,
                "hidden_act": "silu", "tie_word_embeddings": false, "torch_dtype": "bfloat16",
                "sliding_window": null
            }),
            Tiny::Qwen2 => json!({
                "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
                "hidden_size": 64, "intermediate_size": 160, "num_attention_heads": 4,
                "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 151,
                "max_position_embeddings": 40, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
                "hidden_act": "silu", "tie_word_embeddings": true, "torch_dtype": "bfloat16",
                "use_sliding_window": false
            }),
            Tiny::Opt => json!({
                "architectures": ["OPTForCausalLM"], "model_type": "opt",
                "hidden_size": 64, "ffn_dim": 128, "num_attention_heads": 4,
                "num_hidden_layers": 2, "vocab_size": 130, "max_position_embeddings": 32,
                "word_embed_proj_dim": 64, "do_layer_norm_before": true, "enable_bias": true,
                "activation_function": "relu", "torch_dtype": "float16"
            }),
        }
    }

    /// Every tensor of the checkpoint: name → shape.
    pub fn tensors(self) -> BTreeMap<String, Vec<usize>> {
        let c = self.config();
        let n = |k: &str| c[k].as_u64().unwrap() as usize;
        let mut t = BTreeMap::new();
        let hidden = n("hidden_size");
        let heads = n("num_attention_heads");
        let layers = n("num_hidden_layers");
        let vocab = n("vocab_size");
        if self == Tiny::Opt {
            let ffn = n("ffn_dim");
            t.insert("decoder.embed_tokens.weight".into(), vec![vocab, hidden]);
            t.insert(
                "decoder.embed_positions.weight".into(),
                vec![n("max_position_embeddings") + 2, hidden],
            );
            t.insert("decoder.final_layer_norm.weight".into(), vec![hidden]);
            t.insert("decoder.final_layer_norm.bias".into(), vec![hidden]);
            for i in 0..layers {
                let p = format!("decoder.layers.{i}");
                for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                    t.insert(format!("{p}.self_attn.{proj}.weight"), vec![hidden, hidden]);
                    t.insert(format!("{p}.self_attn.{proj}.bias"), vec![hidden]);
                }
                for ln in ["self_attn_layer_norm", "final_layer_norm"] {
                    t.insert(format!("{p}.{ln}.weight"), vec![hidden]);
                    t.insert(format!("{p}.{ln}.bias"), vec![hidden]);
                }
                t.insert(format!("{p}.fc1.weight"), vec![ffn, hidden]);
                t.insert(format!("{p}.fc1.bias"), vec![ffn]);
                t.insert(format!("{p}.fc2.weight"), vec![hidden, ffn]);
                t.insert(format!("{p}.fc2.bias"), vec![hidden]);
            }
            return t;
        }
        let kv = n("num_key_value_heads");
        let hd = c
            .get("head_dim")
            .and_then(Value::as_u64)
            .map_or(hidden / heads, |d| d as usize);
        let inter = n("intermediate_size");
        t.insert("model.embed_tokens.weight".into(), vec![vocab, hidden]);
        t.insert("model.norm.weight".into(), vec![hidden]);
        if !c["tie_word_embeddings"].as_bool().unwrap() {
            t.insert("lm_head.weight".into(), vec![vocab, hidden]);
        }
        for i in 0..layers {
            let p = format!("model.layers.{i}");
            t.insert(
                format!("{p}.self_attn.q_proj.weight"),
                vec![heads * hd, hidden],
            );
            t.insert(
                format!("{p}.self_attn.k_proj.weight"),
                vec![kv * hd, hidden],
            );
            t.insert(
                format!("{p}.self_attn.v_proj.weight"),
                vec![kv * hd, hidden],
            );
            if self == Tiny::Qwen2 {
                t.insert(format!("{p}.self_attn.q_proj.bias"), vec![heads * hd]);
                t.insert(format!("{p}.self_attn.k_proj.bias"), vec![kv * hd]);
                t.insert(format!("{p}.self_attn.v_proj.bias"), vec![kv * hd]);
            }
            t.insert(
                format!("{p}.self_attn.o_proj.weight"),
                vec![hidden, heads * hd],
            );
            t.insert(format!("{p}.mlp.gate_proj.weight"), vec![inter, hidden]);
            t.insert(format!("{p}.mlp.up_proj.weight"), vec![inter, hidden]);
            t.insert(format!("{p}.mlp.down_proj.weight"), vec![hidden, inter]);
            t.insert(format!("{p}.input_layernorm.weight"), vec![hidden]);
            t.insert(format!("{p}.post_attention_layernorm.weight"), vec![hidden]);
        }
        t
    }

    pub fn dtype(self) -> StDtype {
        if self == Tiny::Opt {
            StDtype::F16
        } else {
            StDtype::BF16
        }
    }
}

/// Deterministic bytes: a xorshift stream seeded by the tensor's name, as
/// 16-bit floats in [-1, 1).
pub fn weights(name: &str, elems: usize, dtype: StDtype) -> Vec<u8> {
    let mut s: u64 = name.bytes().fold(0x9e37_79b9_7f4a_7c15, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let mut out = Vec::with_capacity(elems * 2);
    for _ in 0..elems {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let v = ((s >> 11) as f64 / (1u64 << 53) as f64) as f32 * 2.0 - 1.0;
        let bits = match dtype {
            StDtype::F16 => half::f16::from_f32(v).to_bits(),
            _ => half::bf16::from_f32(v).to_bits(),
        };
        out.extend_from_slice(&bits.to_le_bytes());
    }
    out
}

/// Writes the checkpoint into `dir`: `config.json`, the weights (in two
/// shards with an index when `sharded`), a tokenizer, a generation config
/// and a README (which vLLM does not copy).
pub fn write_checkpoint(dir: &Path, tiny: Tiny, sharded: bool) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&tiny.config()).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("tokenizer.json"),
        r#"{"version": "1.0", "model": {"type": "BPE"}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("generation_config.json"),
        r#"{"do_sample": false}"#,
    )
    .unwrap();
    std::fs::write(dir.join("README.md"), "# tiny\n").unwrap();
    let tensors = tiny.tensors();
    let data: BTreeMap<String, (Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s)| {
            (
                n.clone(),
                (s.clone(), weights(n, s.iter().product(), tiny.dtype())),
            )
        })
        .collect();
    let names: Vec<&String> = data.keys().collect();
    let groups: Vec<Vec<&String>> = if sharded {
        let half = names.len() / 2;
        vec![names[..half].to_vec(), names[half..].to_vec()]
    } else {
        vec![names]
    };
    let mut weight_map = serde_json::Map::new();
    for (i, group) in groups.iter().enumerate() {
        let file = if sharded {
            format!("model-{:05}-of-{:05}.safetensors", i + 1, groups.len())
        } else {
            "model.safetensors".into()
        };
        let views: Vec<(String, TensorView<'_>)> = group
            .iter()
            .map(|n| {
                let (shape, bytes) = &data[*n];
                (
                    (*n).clone(),
                    TensorView::new(tiny.dtype(), shape.clone(), bytes).unwrap(),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join(&file)).unwrap();
        for n in group {
            weight_map.insert((*n).clone(), json!(file));
        }
    }
    if sharded {
        let index = json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    }
    dir.to_path_buf()
}

/// A LoRA adapter for `tiny`'s first layer.
pub fn write_lora(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("adapter_config.json"),
        "{\n  \"peft_type\": \"LORA\",\n  \"r\": 4,\n  \"lora_alpha\": 8,\n  \"target_modules\": [\"q_proj\", \"v_proj\"],\n  \"lora_dropout\": 0.05\n}\n",
    )
    .unwrap();
    let a = weights("lora_A", 4 * 64, StDtype::BF16);
    let b = weights("lora_B", 64 * 4, StDtype::BF16);
    let views = vec![
        (
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight".to_owned(),
            TensorView::new(StDtype::BF16, vec![4, 64], &a).unwrap(),
        ),
        (
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight".to_owned(),
            TensorView::new(StDtype::BF16, vec![64, 4], &b).unwrap(),
        ),
    ];
    safetensors::serialize_to_file(views, None, &dir.join("adapter_model.safetensors")).unwrap();
    dir.to_path_buf()
}
