//! Per-rank names, shapes, dtypes and module indices from published
//! `config.json`s alone (no weights), against tables worked out by hand
//! from vLLM 0.33.0's rules: vocabularies padded to 64 then split
//! (`layers/vocab_parallel_embedding.py`), `q`/`k`/`v` fused with KV heads
//! split or replicated (`QKVParallelLinear`), gate/up fused
//! (`MergedColumnParallelLinear`), row-parallel input splits, and the
//! module order of `models/opt.py` and `models/llama.py` (modules shared
//! by every layer, the rotary embedding and OPT's activation, are listed
//! in layer 0 only; tied LM heads are modules of their own).

use tensorizer::Dtype;
use tensorizer_vllm::{ModelConfig, PlannedTensor, plan_from_config, rules};

fn plan(
    config: &str,
    arch: &rules::Architecture,
    tp: usize,
    dtype: Dtype,
) -> Vec<Vec<PlannedTensor>> {
    let path = format!("{}/tests/configs/{config}", env!("CARGO_MANIFEST_DIR"));
    let config = ModelConfig::parse(&std::fs::read_to_string(path).unwrap()).unwrap();
    let ranks = plan_from_config(&config, arch, tp, dtype).unwrap();
    ranks.into_iter().map(|r| r.tensors).collect()
}

/// Checks rows `name | shape | dtype | type | module index` of a table.
fn check(rank: &[PlannedTensor], table: &str) {
    for line in table.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let t = rank
            .iter()
            .find(|t| t.name == cells[0])
            .unwrap_or_else(|| panic!("{} missing", cells[0]));
        let got = format!(
            "{} | {:?} | {} | {:?} | {}",
            t.name, t.shape, t.dtype, t.tensor_type, t.module_idx
        );
        assert_eq!(got, cells.join(" | "), "{}", cells[0]);
    }
}

#[test]
fn opt_125m() {
    // facebook/opt-125m: hidden 768, 12 heads, ffn 3072, vocab 50272 (padded 50304), tied.
    for (tp, v, qkv, attn_in, ffn) in [(2, 25152, 1152, 384, 1536), (4, 12576, 576, 192, 768)] {
        for rank in plan("facebook-opt-125m.json", &rules::OPT, tp, Dtype::F16) {
            // marker, embed, positions, final LN ×2, 12 layers × 16, LM head.
            assert_eq!(rank.len(), 1 + 1 + 1 + 2 + 12 * 16 + 1);
            check(
                &rank,
                &format!(
                    "
                    .vllm_tensorized_marker | [1] | int64 | Param | 0
                    model.decoder.embed_tokens.weight | [{v}, 768] | float16 | Param | 3
                    model.decoder.embed_positions.weight | [2050, 768] | float16 | Param | 4
                    model.decoder.final_layer_norm.bias | [768] | float16 | Param | 5
                    model.decoder.layers.0.self_attn.qkv_proj.weight | [{qkv}, 768] | float16 | Param | 9
                    model.decoder.layers.0.self_attn.qkv_proj.bias | [{qkv}] | float16 | Param | 9
                    model.decoder.layers.0.self_attn.out_proj.weight | [768, {attn_in}] | float16 | Param | 10
                    model.decoder.layers.0.self_attn.out_proj.bias | [768] | float16 | Param | 10
                    model.decoder.layers.0.self_attn.attn._k_scale | [] | float32 | Buffer | 11
                    model.decoder.layers.0.self_attn_layer_norm.weight | [768] | float16 | Param | 12
                    model.decoder.layers.0.fc1.weight | [{ffn}, 768] | float16 | Param | 13
                    model.decoder.layers.0.fc1.bias | [{ffn}] | float16 | Param | 13
                    model.decoder.layers.0.fc2.weight | [768, {ffn}] | float16 | Param | 15
                    model.decoder.layers.0.fc2.bias | [768] | float16 | Param | 15
                    model.decoder.layers.0.final_layer_norm.bias | [768] | float16 | Param | 16
                    model.decoder.layers.1.self_attn.qkv_proj.weight | [{qkv}, 768] | float16 | Param | 19
                    model.decoder.layers.1.fc2.weight | [768, {ffn}] | float16 | Param | 24
                    model.decoder.layers.11.final_layer_norm.weight | [768] | float16 | Param | 115
                    lm_head.weight | [{v}, 768] | float16 | Param | 116
                    "
                ),
            );
        }
    }
}

#[test]
fn llama_3_8b() {
    // meta-llama/Meta-Llama-3-8B: hidden 4096, 32 heads, 8 KV heads, intermediate 14336, vocab 128256.
    for (tp, v, qkv, o_in, inter) in [(2, 64128, 3072, 2048, 7168), (4, 32064, 1536, 1024, 3584)] {
        for rank in plan("meta-llama-3-8b.json", &rules::LLAMA, tp, Dtype::BF16) {
            // marker, embed, 32 layers × (qkv, o, 4 scales, gate_up, down, 2 norms), rotary, norm, LM head.
            assert_eq!(rank.len(), 1 + 1 + 32 * 10 + 1 + 1 + 1);
            let gate_up = 2 * inter;
            check(
                &rank,
                &format!(
                    "
                    .vllm_tensorized_marker | [1] | int64 | Param | 0
                    model.embed_tokens.weight | [{v}, 4096] | bfloat16 | Param | 2
                    model.layers.0.self_attn.qkv_proj.weight | [{qkv}, 4096] | bfloat16 | Param | 6
                    model.layers.0.self_attn.o_proj.weight | [4096, {o_in}] | bfloat16 | Param | 7
                    model.layers.0.self_attn.rotary_emb.cos_sin_cache | [8192, 128] | bfloat16 | Buffer | 8
                    model.layers.0.self_attn.attn._prob_scale | [] | float32 | Buffer | 10
                    model.layers.0.mlp.gate_up_proj.weight | [{gate_up}, 4096] | bfloat16 | Param | 12
                    model.layers.0.mlp.down_proj.weight | [4096, {inter}] | bfloat16 | Param | 13
                    model.layers.0.input_layernorm.weight | [4096] | bfloat16 | Param | 15
                    model.layers.0.post_attention_layernorm.weight | [4096] | bfloat16 | Param | 16
                    model.layers.1.self_attn.qkv_proj.weight | [{qkv}, 4096] | bfloat16 | Param | 19
                    model.layers.31.post_attention_layernorm.weight | [4096] | bfloat16 | Param | 357
                    model.norm.weight | [4096] | bfloat16 | Param | 358
                    lm_head.weight | [{v}, 4096] | bfloat16 | Param | 359
                    "
                ),
            );
            assert_eq!(rank.last().unwrap().name, "lm_head.weight");
        }
    }
    // 16 ranks > 8 KV heads: each KV head on two ranks.
    let ranks = plan("meta-llama-3-8b.json", &rules::LLAMA, 16, Dtype::BF16);
    let qkv = ranks[5]
        .iter()
        .find(|t| t.name == "model.layers.0.self_attn.qkv_proj.weight")
        .unwrap();
    assert_eq!(qkv.shape, [(2 + 2) * 128, 4096]);
    let tensorizer_vllm::Content::Rows(pieces) = &qkv.content else {
        panic!("rows")
    };
    let tensorizer_vllm::Piece::Slice { rows, .. } = &pieces[1] else {
        panic!("a slice")
    };
    assert_eq!(*rows, 2 * 128..3 * 128, "rank 5 holds KV head 2");
}
