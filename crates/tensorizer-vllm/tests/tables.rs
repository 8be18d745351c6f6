//! Per-rank names, shapes, dtypes and module indices from published
//! `config.json`s alone (no weights), against tables worked out by hand
//! from vLLM's layer rules: vocabularies padded to 64 then split
//! (`layers/vocab_parallel_embedding.py`), `q`/`k`/`v` fused with KV heads
//! split or replicated (`QKVParallelLinear`), gate/up fused
//! (`MergedColumnParallelLinear`), row-parallel input splits, and the
//! module order of `models/opt.py` and `models/llama.py`.

use tensorizer::{Dtype, TensorType};
use tensorizer_vllm::{ModelConfig, PlannedTensor, plan_from_config, rules};

fn plan(
    config: &str,
    arch: &rules::Architecture,
    tp: usize,
    dtype: Dtype,
) -> Vec<Vec<PlannedTensor>> {
    let text = std::fs::read_to_string(format!(
        "{}/tests/configs/{config}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let config = ModelConfig::parse(&text).unwrap();
    plan_from_config(&config, arch, tp, dtype)
        .unwrap()
        .into_iter()
        .map(|r| r.tensors)
        .collect()
}

/// (name, shape, dtype, type, module index)
type Row<'a> = (&'a str, &'a [u64], Dtype, TensorType, u16);

fn check(got: &[PlannedTensor], want: &[Row<'_>]) {
    for (name, shape, dtype, ty, idx) in want {
        let t = got
            .iter()
            .find(|t| t.name == *name)
            .unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(
            (t.shape.as_slice(), t.dtype, t.tensor_type, t.module_idx),
            (*shape, *dtype, *ty, *idx),
            "{name}"
        );
    }
}

const P: TensorType = TensorType::Param;
const B: TensorType = TensorType::Buffer;

#[test]
fn opt_125m() {
    for (tp, vocab_rows, qkv, out_in, ffn) in
        [(2, 25152, 1152, 384, 1536), (4, 12576, 576, 192, 768)]
    {
        let ranks = plan("facebook-opt-125m.json", &rules::OPT, tp, Dtype::F16);
        assert_eq!(ranks.len(), tp);
        for rank in &ranks {
            // marker + embed + positions + final LN (2) + 12 layers × 16.
            assert_eq!(rank.len(), 1 + 1 + 1 + 2 + 12 * 16);
            let first: Vec<&str> = rank.iter().take(6).map(|t| t.name.as_str()).collect();
            assert_eq!(
                first,
                [
                    ".vllm_tensorized_marker",
                    "model.decoder.embed_tokens.weight",
                    "model.decoder.embed_positions.weight",
                    "model.decoder.final_layer_norm.weight",
                    "model.decoder.final_layer_norm.bias",
                    "model.decoder.layers.0.self_attn.qkv_proj.weight"
                ]
            );
            assert!(
                rank.iter().all(|t| t.name != "lm_head.weight"),
                "tied: lm_head is embed_tokens"
            );
            let rows: &[Row<'_>] = &[
                (".vllm_tensorized_marker", &[1], Dtype::I64, P, 0),
                (
                    "model.decoder.embed_tokens.weight",
                    &[vocab_rows, 768],
                    Dtype::F16,
                    P,
                    3,
                ),
                (
                    "model.decoder.embed_positions.weight",
                    &[2050, 768],
                    Dtype::F16,
                    P,
                    4,
                ),
                (
                    "model.decoder.final_layer_norm.bias",
                    &[768],
                    Dtype::F16,
                    P,
                    5,
                ),
                (
                    "model.decoder.layers.0.self_attn.qkv_proj.weight",
                    &[qkv, 768],
                    Dtype::F16,
                    P,
                    9,
                ),
                (
                    "model.decoder.layers.0.self_attn.qkv_proj.bias",
                    &[qkv],
                    Dtype::F16,
                    P,
                    9,
                ),
                (
                    "model.decoder.layers.0.self_attn.out_proj.weight",
                    &[768, out_in],
                    Dtype::F16,
                    P,
                    10,
                ),
                (
                    "model.decoder.layers.0.self_attn.out_proj.bias",
                    &[768],
                    Dtype::F16,
                    P,
                    10,
                ),
                (
                    "model.decoder.layers.0.self_attn.attn._k_scale",
                    &[],
                    Dtype::F32,
                    B,
                    11,
                ),
                (
                    "model.decoder.layers.0.self_attn_layer_norm.weight",
                    &[768],
                    Dtype::F16,
                    P,
                    12,
                ),
                (
                    "model.decoder.layers.0.fc1.weight",
                    &[ffn, 768],
                    Dtype::F16,
                    P,
                    13,
                ),
                ("model.decoder.layers.0.fc1.bias", &[ffn], Dtype::F16, P, 13),
                (
                    "model.decoder.layers.0.fc2.weight",
                    &[768, ffn],
                    Dtype::F16,
                    P,
                    15,
                ),
                ("model.decoder.layers.0.fc2.bias", &[768], Dtype::F16, P, 15),
                (
                    "model.decoder.layers.0.final_layer_norm.bias",
                    &[768],
                    Dtype::F16,
                    P,
                    16,
                ),
                (
                    "model.decoder.layers.1.self_attn.qkv_proj.weight",
                    &[qkv, 768],
                    Dtype::F16,
                    P,
                    19,
                ),
                (
                    "model.decoder.layers.11.final_layer_norm.weight",
                    &[768],
                    Dtype::F16,
                    P,
                    126,
                ),
            ];
            check(rank, rows);
        }
    }
}

#[test]
fn llama_3_8b() {
    for (tp, vocab_rows, qkv, o_in, inter) in
        [(2, 64128, 3072, 2048, 7168), (4, 32064, 1536, 1024, 3584)]
    {
        let ranks = plan("meta-llama-3-8b.json", &rules::LLAMA, tp, Dtype::BF16);
        for rank in &ranks {
            // marker + embed + 32 layers × (qkv, o, 4 scales, gate_up, down, 2 norms) + rotary + norm + lm_head.
            assert_eq!(rank.len(), 1 + 1 + 32 * 10 + 1 + 1 + 1);
            let rows: &[Row<'_>] = &[
                (".vllm_tensorized_marker", &[1], Dtype::I64, P, 0),
                (
                    "model.embed_tokens.weight",
                    &[vocab_rows, 4096],
                    Dtype::BF16,
                    P,
                    2,
                ),
                (
                    "model.layers.0.self_attn.qkv_proj.weight",
                    &[qkv, 4096],
                    Dtype::BF16,
                    P,
                    6,
                ),
                (
                    "model.layers.0.self_attn.o_proj.weight",
                    &[4096, o_in],
                    Dtype::BF16,
                    P,
                    7,
                ),
                (
                    "model.layers.0.self_attn.rotary_emb.cos_sin_cache",
                    &[8192, 128],
                    Dtype::BF16,
                    B,
                    8,
                ),
                (
                    "model.layers.0.self_attn.attn._prob_scale",
                    &[],
                    Dtype::F32,
                    B,
                    9,
                ),
                (
                    "model.layers.0.mlp.gate_up_proj.weight",
                    &[2 * inter, 4096],
                    Dtype::BF16,
                    P,
                    11,
                ),
                (
                    "model.layers.0.mlp.down_proj.weight",
                    &[4096, inter],
                    Dtype::BF16,
                    P,
                    12,
                ),
                (
                    "model.layers.0.input_layernorm.weight",
                    &[4096],
                    Dtype::BF16,
                    P,
                    14,
                ),
                (
                    "model.layers.0.post_attention_layernorm.weight",
                    &[4096],
                    Dtype::BF16,
                    P,
                    15,
                ),
                // Layer 1 has no rotary module of its own: 11 modules from 16.
                (
                    "model.layers.1.self_attn.qkv_proj.weight",
                    &[qkv, 4096],
                    Dtype::BF16,
                    P,
                    18,
                ),
                (
                    "model.layers.31.post_attention_layernorm.weight",
                    &[4096],
                    Dtype::BF16,
                    P,
                    15 + 31 * 11,
                ),
                ("model.norm.weight", &[4096], Dtype::BF16, P, 16 + 31 * 11),
                (
                    "lm_head.weight",
                    &[vocab_rows, 4096],
                    Dtype::BF16,
                    P,
                    17 + 31 * 11,
                ),
            ];
            check(rank, rows);
            assert_eq!(rank.last().unwrap().name, "lm_head.weight");
        }
    }
    // 16 ranks > 8 KV heads: each KV head on two ranks, one per rank.
    let ranks = plan("meta-llama-3-8b.json", &rules::LLAMA, 16, Dtype::BF16);
    let qkv = ranks[5]
        .iter()
        .find(|t| t.name == "model.layers.0.self_attn.qkv_proj.weight")
        .unwrap();
    assert_eq!(qkv.shape, [(2 + 2) * 128, 4096]);
    let tensorizer_vllm::Content::Rows(pieces) = &qkv.content else {
        panic!()
    };
    let tensorizer_vllm::Piece::Slice { rows, .. } = &pieces[1] else {
        panic!()
    };
    assert_eq!(*rows, 2 * 128..3 * 128, "rank 5 holds KV head 2");
}
