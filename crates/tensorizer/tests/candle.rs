//! The candle bridge against candle itself: all-MiniLM-L6-v2 embeds the
//! same sentences bit for bit whether its weights come through candle's own
//! safetensors loader or through ours (plain and encrypted, a local file
//! and S3), and bad weights are errors that name the tensor.
#![cfg(all(feature = "candle", feature = "s3", feature = "encryption"))]

#[path = "../examples/candle_embeddings.rs"]
#[allow(dead_code, reason = "the example's main is not used here")]
mod example;

#[path = "../../tensorizer-io/tests/support/mod.rs"]
mod support;

use std::path::PathBuf;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::Config;
use tensorizer::{
    Decryption, Deserializer, Dtype, Encryption, EncryptionKey, S3Options, Serializer,
    StorageOptions, TensorData,
};
use tokenizers::Tokenizer;

fn minilm() -> PathBuf {
    let dir = std::env::var_os("TENSORIZER_MINILM_DIR").unwrap_or_else(|| {
        panic!(
            "TENSORIZER_MINILM_DIR is not set: this test needs all-MiniLM-L6-v2. Run `cargo xtask test`, \
             or: export TENSORIZER_MINILM_DIR=$(bash scripts/setup_models.sh ORACLE_PYTHON | tail -n1)"
        )
    });
    PathBuf::from(dir)
}

fn sentences() -> Vec<String> {
    [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The girl is carrying a baby.",
        "Weights streamed from object storage, verified on the way.",
    ]
    .map(String::from)
    .to_vec()
}

struct Model {
    config: Config,
    tokenizer: Tokenizer,
    safetensors: PathBuf,
}

fn model() -> Model {
    let dir = minilm();
    Model {
        config: serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap(),
        tokenizer: Tokenizer::from_file(dir.join("tokenizer.json")).unwrap(),
        safetensors: dir.join("model.safetensors"),
    }
}

fn embed(m: &Model, vb: VarBuilder<'_>) -> Vec<Vec<f32>> {
    let model = candle_transformers::models::bert::BertModel::load(vb, &m.config).unwrap();
    example::embed(&model, &m.tokenizer, &sentences()).unwrap()
}

fn bits(e: &[Vec<f32>]) -> Vec<Vec<u32>> {
    e.iter()
        .map(|r| r.iter().map(|v| v.to_bits()).collect())
        .collect()
}

#[test]
fn minilm_embeds_bit_identically_through_candle_and_through_tensorizer() {
    let m = model();
    // SAFETY: the model file is not modified while mapped.
    let theirs = unsafe {
        VarBuilder::from_mmaped_safetensors(&[&m.safetensors], DType::F32, &Device::Cpu).unwrap()
    };
    let want = embed(&m, theirs);
    assert_eq!(want.len(), 4);
    assert_eq!(want[0].len(), 384);
    let similar = example::cosine_matrix(&want);
    assert!(
        similar[0][1] > similar[0][2],
        "food/bread closer than food/baby: {similar:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("minilm.tensors");
    tensorizer::safetensors::safetensors_to_tensorizer(&m.safetensors, &plain).unwrap();
    let encrypted = dir.path().join("minilm-encrypted.tensors");
    let key = EncryptionKey::from_bytes([42; 32]);
    tensorizer::rewrite(
        &plain,
        &encrypted,
        None,
        Some(Encryption::with_key(key.clone())),
    )
    .unwrap();

    let moto = support::moto("models");
    let storage = StorageOptions {
        s3: S3Options {
            access_key_id: Some("testing".into()),
            secret_access_key: Some("testing".into()),
            endpoint: Some(format!("http://127.0.0.1:{}", moto.port)),
            ..Default::default()
        },
        ..Default::default()
    };
    let s3_plain = "s3://models/minilm/model.tensors";
    let s3_encrypted = "s3://models/minilm/model-encrypted.tensors";
    tensorizer::copy(plain.to_str().unwrap(), s3_plain, &storage).unwrap();
    tensorizer::copy(encrypted.to_str().unwrap(), s3_encrypted, &storage).unwrap();

    let plain = plain.to_str().unwrap();
    let encrypted = encrypted.to_str().unwrap();
    for (uri, decryption) in [
        (plain, None),
        (encrypted, Some(Decryption::Key(key.clone()))),
        (s3_plain, None),
        (s3_encrypted, Some(Decryption::Key(key.clone()))),
    ] {
        let vb = example::tensorizer_weights(uri, &storage, decryption).unwrap();
        assert_eq!(bits(&embed(&m, vb)), bits(&want), "{uri}");
    }
    // Lazily, one tensor per `get`.
    let lazy = tensorizer::candle::var_builder(
        Deserializer::open(plain).unwrap(),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(bits(&embed(&m, lazy)), bits(&want), "lazy");
}

#[test]
fn a_model_stored_in_f16_loads_with_the_cast_requested() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("minilm.tensors");
    tensorizer::safetensors::safetensors_to_tensorizer(&m.safetensors, &plain).unwrap();
    // A half-precision copy, as a user would ship it.
    let tensors = Deserializer::open(&plain)
        .unwrap()
        .dtype(Dtype::F16)
        .read_all()
        .unwrap();
    let half = dir.path().join("minilm-f16.tensors");
    let mut s = Serializer::new();
    s.write_tensors(&tensors).unwrap();
    s.write_to_file(&half).unwrap();

    let loaded =
        tensorizer::candle::load(&Deserializer::open(&half).unwrap(), &Device::Cpu).unwrap();
    let word = &loaded["embeddings.word_embeddings.weight"];
    assert_eq!(word.dtype(), DType::F16);
    assert_eq!(word.dims(), [30522, 384]);

    // The model asks for f32; the f16 weights are cast on the way.
    let vb = tensorizer::candle::var_builder(
        Deserializer::open(&half).unwrap(),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(
        vb.get((30522, 384), "embeddings.word_embeddings.weight")
            .unwrap()
            .dtype(),
        DType::F32
    );
    let got = embed(&m, vb);
    // SAFETY: the model file is not modified while mapped.
    let theirs = unsafe {
        VarBuilder::from_mmaped_safetensors(&[&m.safetensors], DType::F32, &Device::Cpu).unwrap()
    };
    let want = embed(&m, theirs);
    for (g, w) in got.iter().zip(&want) {
        let cosine: f32 = g.iter().zip(w).map(|(a, b)| a * b).sum();
        assert!(
            cosine > 0.999,
            "f16 weights change an embedding too much: cosine {cosine}"
        );
    }
    // And the other way: f32 weights into an f16 model.
    let vb = tensorizer::candle::var_builder(
        Deserializer::open(&plain).unwrap(),
        DType::F16,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(
        vb.get((30522, 384), "embeddings.word_embeddings.weight")
            .unwrap()
            .dtype(),
        DType::F16
    );
}

#[test]
fn missing_tensors_wrong_shapes_and_wrong_dtypes_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.tensors");
    let mut s = Serializer::new();
    s.write_state_dict([
        (
            "weight",
            TensorData::from_slice(&[2, 3], &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap(),
        ),
        (
            "position_ids",
            TensorData::from_slice(&[3], &[0i64, 1, 2]).unwrap(),
        ),
        (
            "mask",
            TensorData::new(Dtype::Bool, &[2], &[1u8, 0]).unwrap(),
        ),
    ])
    .unwrap();
    s.write_to_file(&path).unwrap();
    let vb = |dtype| {
        tensorizer::candle::var_builder(Deserializer::open(&path).unwrap(), dtype, &Device::Cpu)
            .unwrap()
    };

    assert_eq!(
        vb(DType::F32)
            .get((2, 3), "weight")
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()[1],
        [4.0, 5.0, 6.0]
    );
    assert_eq!(
        vb(DType::I64)
            .get(3, "position_ids")
            .unwrap()
            .to_vec1::<i64>()
            .unwrap(),
        [0, 1, 2]
    );
    assert!(vb(DType::F32).contains_tensor("weight"));
    assert!(!vb(DType::F32).contains_tensor("bias"));

    let err = vb(DType::F32).get(3, "bias").unwrap_err().to_string();
    assert!(err.contains("bias"), "missing: {err}");
    let err = vb(DType::F32)
        .get((3, 2), "weight")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("weight") && err.contains("[3, 2]") && err.contains("[2, 3]"),
        "shape: {err}"
    );
    let err = vb(DType::F32)
        .get(3, "position_ids")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("position_ids") && err.contains("I64") && err.contains("F32"),
        "dtype: {err}"
    );
    let err = vb(DType::U8).get(2, "mask").unwrap_err().to_string();
    assert!(
        err.contains("mask") && err.contains("no dtype for bool"),
        "bool: {err}"
    );
    let err = tensorizer::candle::load(&Deserializer::open(&path).unwrap(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"mask\"") && err.contains("bool"),
        "load: {err}"
    );
}
