//! `serialize` end to end on tiny generated checkpoints: the ranks' shards
//! put back together (by vLLM's rules, written out again here) give the
//! checkpoint bit for bit; TP 1 keeps Hugging Face names; key files, LoRA
//! adapters, fallbacks and refusals.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use common::{Tiny, write_checkpoint, write_lora};
use tensorizer::{Decryption, Deserializer, EncryptionKey, Tensor, TensorType};
use tensorizer_vllm::{Checkpoint, Layout, SerializeOptions, VllmError, serialize};

fn read_all(path: &Path, key: Option<&[u8]>) -> Vec<Tensor> {
    let mut d = Deserializer::open(path).unwrap();
    if let Some(k) = key {
        // vLLM's marker is the one meta tensor of its files.
        d = d
            .decryption(Decryption::Key(EncryptionKey::from_key_file(k).unwrap()))
            .unwrap()
            .unauthenticated_meta(tensorizer::UnauthenticatedMeta::Allow(vec![
                tensorizer_vllm::MARKER_TENSOR.into(),
            ]));
    }
    d.read_all().unwrap()
}

fn by_name(tensors: Vec<Tensor>) -> HashMap<String, Tensor> {
    tensors.into_iter().map(|t| (t.name(), t)).collect()
}

/// Rows `rows` of a row-major tensor's bytes.
fn rows(t: &Tensor, r: std::ops::Range<usize>) -> Vec<u8> {
    let row = t.as_bytes().len() / t.shape()[0] as usize;
    t.as_bytes()[r.start * row..r.end * row].to_vec()
}

/// Columns `c` of every row of a 2-D tensor.
fn cols(t: &Tensor, c: std::ops::Range<usize>) -> Vec<Vec<u8>> {
    let item = t.dtype().itemsize();
    let n = t.shape()[1] as usize;
    t.as_bytes()
        .chunks(n * item)
        .map(|row| row[c.start * item..c.end * item].to_vec())
        .collect()
}

fn concat_cols(parts: &[Vec<Vec<u8>>]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in 0..parts[0].len() {
        for p in parts {
            out.extend_from_slice(&p[r]);
        }
    }
    out
}

/// Puts each original checkpoint tensor back together from the ranks'
/// files, following vLLM's layer semantics independently of the planner.
fn unshard(tiny: Tiny, ranks: &[HashMap<String, Tensor>]) -> BTreeMap<String, Vec<u8>> {
    let c = tiny.config();
    let n = |k: &str| c[k].as_u64().unwrap() as usize;
    let tp = ranks.len();
    let heads = n("num_attention_heads");
    let kv = c
        .get("num_key_value_heads")
        .and_then(|v| v.as_u64())
        .map_or(heads, |v| v as usize);
    let hidden = n("hidden_size");
    let hd = c
        .get("head_dim")
        .and_then(|v| v.as_u64())
        .map_or(hidden / heads, |v| v as usize);
    let vocab = n("vocab_size");
    let (q_per, kv_per, replicas) = (heads / tp, (kv / tp).max(1), (tp / kv).max(1));
    let mut out = BTreeMap::new();
    let opt = tiny == Tiny::Opt;
    let (vp, hp) = if opt {
        ("model.decoder.", "decoder.")
    } else {
        ("model.", "model.")
    };
    // Vocab-parallel: rows concatenated, padding (zero) dropped.
    let vocab_of = |name: &str| {
        let mut all = Vec::new();
        for r in ranks {
            all.extend(r[name].as_bytes());
        }
        let row = hidden * ranks[0][name].dtype().itemsize();
        assert!(
            all[vocab * row..].iter().all(|&b| b == 0),
            "{name}: padded rows are zero"
        );
        assert_eq!(
            ranks[0][name].shape()[0] as usize * tp,
            vocab.div_ceil(64) * 64,
            "{name}: padded to 64"
        );
        all[..vocab * row].to_vec()
    };
    out.insert(
        format!("{hp}embed_tokens.weight"),
        vocab_of(&format!("{vp}embed_tokens.weight")),
    );
    let untied = !c["tie_word_embeddings"].as_bool().unwrap_or(opt);
    if untied {
        out.insert("lm_head.weight".into(), vocab_of("lm_head.weight"));
    } else {
        // Tied: vLLM's LM head is a module of its own sharing the weight.
        assert_eq!(
            vocab_of("lm_head.weight"),
            out[&format!("{hp}embed_tokens.weight")]
        );
    }
    // Replicated tensors: identical on every rank.
    fn same(
        ranks: &[HashMap<String, Tensor>],
        out: &mut BTreeMap<String, Vec<u8>>,
        vllm: String,
        hf: String,
    ) {
        for r in &ranks[1..] {
            assert_eq!(
                r[&vllm].as_bytes(),
                ranks[0][&vllm].as_bytes(),
                "{vllm} replicated"
            );
        }
        out.insert(hf, ranks[0][&vllm].as_bytes().to_vec());
    }
    if opt {
        same(
            ranks,
            &mut out,
            "model.decoder.embed_positions.weight".into(),
            "decoder.embed_positions.weight".into(),
        );
        for a in ["weight", "bias"] {
            same(
                ranks,
                &mut out,
                format!("model.decoder.final_layer_norm.{a}"),
                format!("decoder.final_layer_norm.{a}"),
            );
        }
    } else {
        same(
            ranks,
            &mut out,
            "model.norm.weight".into(),
            "model.norm.weight".into(),
        );
    }
    for i in 0..n("num_hidden_layers") {
        let (v, h) = (format!("{vp}layers.{i}"), format!("{hp}layers.{i}"));
        let qkv_attrs: &[&str] = match tiny {
            Tiny::Qwen2 | Tiny::Opt => &["weight", "bias"],
            _ => &["weight"],
        };
        for attr in qkv_attrs {
            let (mut q, mut k, mut vv) = (Vec::new(), Vec::new(), Vec::new());
            for (r, rank) in ranks.iter().enumerate() {
                let t = &rank[&format!("{v}.self_attn.qkv_proj.{attr}")];
                q.extend(rows(t, 0..q_per * hd));
                let kr = rows(t, q_per * hd..(q_per + kv_per) * hd);
                let vr = rows(t, (q_per + kv_per) * hd..(q_per + 2 * kv_per) * hd);
                if r % replicas == 0 {
                    k.extend(kr);
                    vv.extend(vr);
                } else {
                    // A replicated KV head equals the copy on its group's first rank.
                    let first = &ranks[r - r % replicas][&format!("{v}.self_attn.qkv_proj.{attr}")];
                    assert_eq!(kr, rows(first, q_per * hd..(q_per + kv_per) * hd));
                }
            }
            out.insert(format!("{h}.self_attn.q_proj.{attr}"), q);
            out.insert(format!("{h}.self_attn.k_proj.{attr}"), k);
            out.insert(format!("{h}.self_attn.v_proj.{attr}"), vv);
        }
        let row_parallel: &[(&str, &str)] = if opt {
            &[("self_attn.out_proj", "self_attn.out_proj"), ("fc2", "fc2")]
        } else {
            &[
                ("self_attn.o_proj", "self_attn.o_proj"),
                ("mlp.down_proj", "mlp.down_proj"),
            ]
        };
        for (vm, hm) in row_parallel {
            let parts: Vec<_> = ranks
                .iter()
                .map(|r| {
                    let t = &r[&format!("{v}.{vm}.weight")];
                    cols(t, 0..t.shape()[1] as usize)
                })
                .collect();
            out.insert(format!("{h}.{hm}.weight"), concat_cols(&parts));
            if opt {
                same(
                    ranks,
                    &mut out,
                    format!("{v}.{vm}.bias"),
                    format!("{h}.{hm}.bias"),
                );
            }
        }
        if opt {
            for a in ["weight", "bias"] {
                out.insert(
                    format!("{h}.fc1.{a}"),
                    ranks
                        .iter()
                        .flat_map(|r| r[&format!("{v}.fc1.{a}")].as_bytes().to_vec())
                        .collect(),
                );
                for ln in ["self_attn_layer_norm", "final_layer_norm"] {
                    same(
                        ranks,
                        &mut out,
                        format!("{v}.{ln}.{a}"),
                        format!("{h}.{ln}.{a}"),
                    );
                }
            }
        } else {
            let (mut gate, mut up) = (Vec::new(), Vec::new());
            for r in ranks {
                let t = &r[&format!("{v}.mlp.gate_up_proj.weight")];
                let half = t.shape()[0] as usize / 2;
                gate.extend(rows(t, 0..half));
                up.extend(rows(t, half..2 * half));
            }
            out.insert(format!("{h}.mlp.gate_proj.weight"), gate);
            out.insert(format!("{h}.mlp.up_proj.weight"), up);
            for ln in ["input_layernorm", "post_attention_layernorm"] {
                same(
                    ranks,
                    &mut out,
                    format!("{v}.{ln}.weight"),
                    format!("{h}.{ln}.weight"),
                );
            }
        }
    }
    out
}

fn options(model: &Path, out: &Path, tp: usize) -> SerializeOptions {
    let mut o = SerializeOptions::new(model.display().to_string(), out.display().to_string());
    o.model_name = Some("acme/tiny".into());
    o.suffix = Some("v1".into());
    o.tensor_parallel_size = tp;
    o
}

#[test]
fn ranks_put_back_together_give_the_checkpoint_bit_for_bit() {
    for tiny in [
        Tiny::Llama,
        Tiny::Llama31,
        Tiny::Mistral,
        Tiny::Qwen2,
        Tiny::Opt,
    ] {
        for tp in [2, 4] {
            let dir = tempfile::tempdir().unwrap();
            let model = write_checkpoint(&dir.path().join("ckpt"), tiny, tp == 4);
            let report = serialize(&options(&model, &dir.path().join("out"), tp), &|_| {}).unwrap();
            assert_eq!(report.layout, Layout::Vllm, "{tiny:?}");
            assert!(report.warnings.is_empty(), "{:?}", report.warnings);
            let base = dir.path().join("out/vllm/acme/tiny/v1");
            let ranks: Vec<_> = (0..tp)
                .map(|r| {
                    by_name(read_all(
                        &base.join(format!("model-rank-{r:03}.tensors")),
                        None,
                    ))
                })
                .collect();
            let checkpoint = Checkpoint::open(&model).unwrap();
            let rebuilt = unshard(tiny, &ranks);
            assert_eq!(
                rebuilt.len(),
                checkpoint.tensors().len(),
                "{tiny:?} tp {tp}: every tensor accounted for"
            );
            for (name, stored) in checkpoint.tensors() {
                assert_eq!(
                    &rebuilt[name],
                    &*checkpoint.bytes(stored).unwrap(),
                    "{tiny:?} tp {tp}: {name}"
                );
            }
            // What vLLM's loader needs beside the weights.
            for rank in &ranks {
                let marker = &rank[".vllm_tensorized_marker"];
                assert!(
                    marker.is_meta()
                        && marker.shape() == [1]
                        && marker.tensor_type() == TensorType::Param
                );
                assert_eq!(rank[".vllm_tensorized_marker"].module_idx(), 0);
                let scale = &rank[&format!(
                    "{}.0.self_attn.attn._k_scale",
                    if tiny == Tiny::Opt {
                        "model.decoder.layers"
                    } else {
                        "model.layers"
                    }
                )];
                assert_eq!(scale.as_bytes(), 1f32.to_le_bytes());
                assert_eq!(scale.tensor_type(), TensorType::Buffer);
                if tiny != Tiny::Opt {
                    let cache = &rank["model.layers.0.self_attn.rotary_emb.cos_sin_cache"];
                    let c = tiny.config();
                    assert_eq!(
                        cache.shape()[0],
                        c["max_position_embeddings"].as_u64().unwrap()
                    );
                    assert!(
                        !rank.contains_key("model.layers.1.self_attn.rotary_emb.cos_sin_cache"),
                        "shared module listed once"
                    );
                }
            }
            // The model's other files, as serialize_extra_artifacts copies them.
            for f in ["config.json", "tokenizer.json", "generation_config.json"] {
                assert!(base.join(f).is_file(), "{f}");
            }
            assert!(!base.join("README.md").exists() && !base.join("model.safetensors").exists());
            assert_eq!(base.join("model.safetensors.index.json").exists(), tp == 4);
        }
    }
}

#[test]
fn tp1_keeps_hugging_face_names_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_checkpoint(&dir.path().join("ckpt"), Tiny::Opt, true);
    let seen = std::sync::Mutex::new(Vec::new());
    let report = serialize(&options(&model, &dir.path().join("out"), 1), &|p| {
        seen.lock()
            .unwrap()
            .push((p.file.to_owned(), p.bytes, p.total))
    })
    .unwrap();
    assert_eq!(report.layout, Layout::Hf);
    // Progress reaches the file's size.
    let seen = seen.into_inner().unwrap();
    let (file, size) = (&report.files[0].0, report.files[0].1);
    assert!(seen.iter().all(|(f, _, total)| f == file && *total == size));
    assert_eq!(seen.iter().map(|s| s.1).max(), Some(size));
    let file = dir.path().join("out/vllm/acme/tiny/v1/model.tensors");
    let tensors = by_name(read_all(&file, None));
    let checkpoint = Checkpoint::open(&model).unwrap();
    assert_eq!(tensors.len(), checkpoint.tensors().len());
    for (name, t) in checkpoint.tensors() {
        assert_eq!(
            tensors[name].as_bytes(),
            &*checkpoint.bytes(t).unwrap(),
            "{name}"
        );
    }
    // A dtype asked for is applied (float16 -> bfloat16 here).
    let mut o = options(&model, &dir.path().join("out2"), 1);
    o.dtype = Some(tensorizer::Dtype::BF16);
    serialize(&o, &|_| {}).unwrap();
    let cast = by_name(read_all(
        &dir.path().join("out2/vllm/acme/tiny/v1/model.tensors"),
        None,
    ));
    let t = &cast["decoder.layers.0.fc1.bias"];
    assert_eq!(t.dtype(), tensorizer::Dtype::BF16);
    let want = tensors["decoder.layers.0.fc1.bias"]
        .cast(tensorizer::Dtype::BF16)
        .unwrap();
    assert_eq!(t.as_bytes(), want.as_bytes());
}

#[test]
fn key_file_encrypts_every_rank_and_lora_rides_along() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_checkpoint(&dir.path().join("ckpt"), Tiny::Llama, false);
    let lora = write_lora(&dir.path().join("lora"));
    let key_path = dir.path().join("model.key");
    let mut o = options(&model, &dir.path().join("out"), 2);
    o.keyfile = Some(key_path.display().to_string());
    o.lora_path = Some(lora.clone());
    serialize(&o, &|_| {}).unwrap();
    let key = std::fs::read(&key_path).unwrap();
    assert_eq!(key.len(), 32, "vLLM's key file: 32 raw bytes");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let base = dir.path().join("out/vllm/acme/tiny/v1");
    for r in 0..2 {
        let f = base.join(format!("model-rank-{r:03}.tensors"));
        assert!(!read_all(&f, Some(&key)).is_empty());
        // Without the key, or with another, the load fails and says why.
        let marker =
            || tensorizer::UnauthenticatedMeta::Allow(vec![tensorizer_vllm::MARKER_TENSOR.into()]);
        let e = Deserializer::open(&f)
            .unwrap()
            .unauthenticated_meta(marker())
            .read_all()
            .unwrap_err()
            .to_string();
        assert!(e.contains("encrypted"), "{e}");
        let wrong = Deserializer::open(&f)
            .unwrap()
            .unauthenticated_meta(marker())
            .decryption(Decryption::Key(EncryptionKey::from_bytes([7; 32])))
            .unwrap()
            .read_all()
            .unwrap_err()
            .to_string();
        assert!(wrong.contains("decryption failed"), "{wrong}");
    }
    // LoRA: the config re-spelled as json.dumps writes it, the tensors as they were.
    let config = std::fs::read_to_string(base.join("adapter_config.json")).unwrap();
    assert_eq!(
        config,
        r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.05}"#
    );
    let adapter = by_name(read_all(&base.join("adapter_model.tensors"), None));
    let bytes = std::fs::read(lora.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(adapter.len(), 2);
    for (name, view) in st.tensors() {
        assert_eq!(adapter[&name].as_bytes(), view.data(), "{name}");
        assert_eq!(adapter[&name].tensor_type(), TensorType::StateDict);
    }
    // The key is never replaced.
    let mut again = options(&model, &dir.path().join("out"), 2);
    again.suffix = Some("v2".into());
    again.keyfile = o.keyfile.clone();
    let e = serialize(&again, &|_| {}).unwrap_err();
    assert!(matches!(e, VllmError::Exists { .. }), "{e}");
    assert_eq!(std::fs::read(&key_path).unwrap(), key);
}

#[test]
fn bad_input_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    // A shard named in the index is missing.
    let model = write_checkpoint(&dir.path().join("sharded"), Tiny::Qwen2, true);
    std::fs::remove_file(model.join("model-00002-of-00002.safetensors")).unwrap();
    let e = serialize(&options(&model, &dir.path().join("o1"), 2), &|_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model-00002-of-00002.safetensors") && e.contains("missing"),
        "{e}"
    );

    // The index puts a tensor in a file that does not hold it.
    let model = write_checkpoint(&dir.path().join("index"), Tiny::Qwen2, true);
    let index_path = model.join("model.safetensors.index.json");
    let mut index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    index["weight_map"]["model.norm.weight"] = "model-00001-of-00002.safetensors".into();
    index["weight_map"]["lm_head.weight"] = "model-00002-of-00002.safetensors".into();
    std::fs::write(&index_path, index.to_string()).unwrap();
    let e = serialize(&options(&model, &dir.path().join("o0"), 2), &|_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("index.json puts in") && e.contains("is not there"),
        "{e}"
    );

    // A tensor whose shape disagrees with config.json.
    let model = write_checkpoint(&dir.path().join("shape"), Tiny::Llama, false);
    let mut config = Tiny::Llama.config();
    config["intermediate_size"] = 80.into();
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    let e = serialize(&options(&model, &dir.path().join("o2"), 2), &|_| {}).unwrap_err();
    match &e {
        VllmError::Shape {
            tensor,
            actual,
            expected,
            ..
        } => {
            assert!(tensor.ends_with("mlp.gate_proj.weight"), "{e}");
            assert_eq!((actual[0], expected[0]), (96, 80));
        }
        other => panic!("expected a shape error, got {other}"),
    }

    // Pickle weights are never loaded.
    let pickle = dir.path().join("pickle");
    std::fs::create_dir_all(&pickle).unwrap();
    std::fs::write(pickle.join("config.json"), Tiny::Llama.config().to_string()).unwrap();
    std::fs::write(pickle.join("pytorch_model.bin"), b"\x80\x02").unwrap();
    let e = serialize(&options(&pickle, &dir.path().join("o3"), 1), &|_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("pytorch_model.bin") && e.contains("safe_serialization=True"),
        "{e}"
    );

    // TP that does not divide the heads.
    let model = write_checkpoint(&dir.path().join("tp3"), Tiny::Llama, false);
    let e = serialize(&options(&model, &dir.path().join("o4"), 3), &|_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tensor parallel size 3: does not divide padded vocabulary 128"),
        "{e}"
    );

    // Unknown serialization kwargs are named.
    let mut o = options(&model, &dir.path().join("o5"), 1);
    o.serialization_kwargs
        .insert("compres_tensors".into(), true.into());
    let e = serialize(&o, &|_| {}).unwrap_err().to_string();
    assert!(e.contains("\"compres_tensors\""), "{e}");
}

#[test]
fn architectures_without_rules_fall_back_to_whole_copies_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_checkpoint(&dir.path().join("ckpt"), Tiny::Llama, false);
    let mut config = Tiny::Llama.config();
    config["architectures"] = serde_json::json!(["GPTNeoXForCausalLM"]);
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    let report = serialize(&options(&model, &dir.path().join("out"), 2), &|_| {}).unwrap();
    assert_eq!(report.layout, Layout::Hf);
    assert!(
        report.warnings[0].contains("GPTNeoXForCausalLM")
            && report.warnings[0].contains("--layout hf"),
        "{:?}",
        report.warnings
    );
    let base = dir.path().join("out/vllm/acme/tiny/v1");
    let (a, b) = (
        base.join("model-rank-000.tensors"),
        base.join("model-rank-001.tensors"),
    );
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(&a).unwrap().ino(),
        std::fs::metadata(&b).unwrap().ino(),
        "hard links locally"
    );

    // A directory that already holds a model is refused unless --overwrite.
    let e = serialize(&options(&model, &dir.path().join("out"), 2), &|_| {}).unwrap_err();
    assert!(e.to_string().contains("--overwrite"), "{e}");
    let mut o = options(&model, &dir.path().join("out"), 2);
    o.overwrite = true;
    serialize(&o, &|_| {}).unwrap();
}

/// A model directory whose files link out of it (a tokenizer pointing at
/// cloud credentials, another at the process environment) is refused,
/// naming the link, and nothing of it reaches the output; links inside the
/// directory work.
#[test]
fn links_out_of_the_model_directory_are_never_followed() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("credentials");
    std::fs::write(&secret, "aws_secret_access_key = SECRETSECRET").unwrap();
    let model = write_checkpoint(&dir.path().join("m"), Tiny::Llama, false);
    let _ = std::fs::remove_file(model.join("tokenizer.json"));
    symlink(&secret, model.join("tokenizer.json")).unwrap();
    let out = dir.path().join("out");
    let e = serialize(&options(&model, &out, 1), &|_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("outside the model directory"),
        "{e}"
    );
    let leaked = walk(&out).into_iter().any(|p| {
        std::fs::read(&p).is_ok_and(|b| String::from_utf8_lossy(&b).contains("SECRETSECRET"))
    });
    assert!(!leaked, "the secret reached the output");

    std::fs::remove_file(model.join("tokenizer.json")).unwrap();
    let _ = std::fs::remove_file(model.join("special_tokens_map.json"));
    symlink("/proc/self/environ", model.join("special_tokens_map.json")).unwrap();
    let e = serialize(&options(&model, &out, 1), &|_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("special_tokens_map.json"), "{e}");

    // A link within the directory is the model's own file.
    std::fs::remove_file(model.join("special_tokens_map.json")).unwrap();
    std::fs::write(model.join("real_tokenizer.json"), "{}").unwrap();
    symlink("real_tokenizer.json", model.join("tokenizer.json")).unwrap();
    serialize(&options(&model, &out, 1), &|_| {}).unwrap();
}

/// The Hugging Face cache layout (snapshot files are links into the
/// repository's `blobs/`) still serializes.
#[test]
fn hugging_face_cache_snapshots_still_serialize() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let plain = write_checkpoint(&dir.path().join("plain"), Tiny::Llama, false);
    let repo = dir.path().join("hub/models--acme--tiny");
    let snapshot = repo.join("snapshots").join("c".repeat(40));
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    for entry in std::fs::read_dir(&plain).unwrap() {
        let entry = entry.unwrap();
        let blob = format!(
            "{:x}",
            entry.path().to_string_lossy().len() * 7919 + entry.metadata().unwrap().len() as usize
        );
        std::fs::copy(entry.path(), repo.join("blobs").join(&blob)).unwrap();
        symlink(
            format!("../../blobs/{blob}"),
            snapshot.join(entry.file_name()),
        )
        .unwrap();
    }
    let report = serialize(&options(&snapshot, &dir.path().join("out"), 2), &|_| {}).unwrap();
    assert!(report.files.iter().any(|(f, _)| f.ends_with("config.json")));
    let ours = read_all(
        Path::new(&format!("{}/model-rank-001.tensors", report.directory)),
        None,
    );
    assert!(!ours.is_empty());
}

/// A key file is created exclusively: of many concurrent runs with one
/// key file exactly one wins (each used to replace the other's key, and a
/// model could no longer be decrypted), and a key file among the outputs
/// is refused before anything is written.
#[test]
fn key_files_are_created_exclusively_and_kept_apart_from_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_checkpoint(&dir.path().join("m"), Tiny::Llama, false);
    let key = dir.path().join("keys/model.key");
    let won = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for i in 0..6 {
            let (model, key, won, dir) = (&model, &key, &won, dir.path());
            s.spawn(move || {
                let mut o = options(model, &dir.join(format!("out{i}")), 1);
                o.keyfile = Some(key.display().to_string());
                if serialize(&o, &|_| {}).is_ok() {
                    won.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
    });
    assert_eq!(won.into_inner(), 1, "exactly one run may create the key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let out = dir.path().join("inside");
    let mut o = options(&model, &out, 1);
    o.keyfile = Some(format!("{}/vllm/acme/tiny/v1/config.json", out.display()));
    let e = serialize(&o, &|_| {}).unwrap_err().to_string();
    assert!(e.contains("inside the serialized directory"), "{e}");
    assert!(!out.exists(), "nothing written");
    // The key's parent a link into the directory (dangling: not made yet,
    // then made): refused too, not overwritten by config.json later.
    let link = dir.path().join("keys-link");
    std::os::unix::fs::symlink(out.join("vllm/acme/tiny/v1"), &link).unwrap();
    for made in [false, true] {
        if made {
            std::fs::create_dir_all(out.join("vllm/acme/tiny/v1")).unwrap();
        }
        let mut o = options(&model, &out, 1);
        o.keyfile = Some(format!("{}/config.json", link.display()));
        let e = serialize(&o, &|_| {}).unwrap_err().to_string();
        assert!(e.contains("inside the serialized directory"), "{made}: {e}");
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// `--model-name` and `--suffix` cannot climb out of
/// `--serialized-directory`, and no output file (the config and tokenizer
/// files included) is replaced without `--overwrite`.
#[test]
fn outputs_stay_below_the_serialized_directory_and_are_never_replaced_silently() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_checkpoint(&dir.path().join("m"), Tiny::Llama, false);
    let out = dir.path().join("out");
    for (name, suffix) in [
        (Some("../../escaped"), "v1"),
        (Some("/etc"), "v1"),
        (Some("acme//tiny"), "v1"),
        (Some("acme/tiny"), "../v2"),
        (Some("acme/tiny"), "a/b"),
        (Some("acme/tiny"), ".."),
    ] {
        let mut o = options(&model, &out, 1);
        o.model_name = name.map(str::to_owned);
        o.suffix = Some(suffix.into());
        let e = serialize(&o, &|_| {}).unwrap_err().to_string();
        assert!(
            e.contains("below --serialized-directory"),
            "{name:?} {suffix}: {e}"
        );
    }
    assert!(!dir.path().join("escaped").exists() && !out.exists());

    // A config.json already there (and no tensors): refused, untouched.
    let target = out.join("vllm/acme/tiny/v1");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("config.json"), "mine").unwrap();
    let e = serialize(&options(&model, &out, 1), &|_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("config.json"), "{e}");
    assert_eq!(std::fs::read(target.join("config.json")).unwrap(), b"mine");
    assert!(!target.join("model.tensors").exists());
    let mut o = options(&model, &out, 1);
    o.overwrite = true;
    serialize(&o, &|_| {}).unwrap();
    assert_ne!(std::fs::read(target.join("config.json")).unwrap(), b"mine");
}
