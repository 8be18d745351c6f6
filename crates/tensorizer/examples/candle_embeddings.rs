//! Sentence embeddings with candle's BERT, its weights streamed from a
//! tensorizer file or URI (local, HTTP, S3, GCS, Azure, Redis).
//!
//! ```text
//! tensorizer convert model.safetensors minilm.tensors     # all-MiniLM-L6-v2
//! cargo run --release -p tensorizer --features candle,s3 --example candle_embeddings -- \
//!     --weights s3://models/minilm.tensors --config config.json --tokenizer tokenizer.json \
//!     "A man is eating food." "A man is eating a piece of bread." "The girl is carrying a baby."
//! ```
//!
//! Prints the load time, each sentence's first embedding values and, last,
//! on one line, the cosine-similarity matrix as JSON. `--key-file K` (or
//! `--passphrase-file P`) decrypts; `--compare-safetensors model.safetensors`
//! also times candle's own memory-mapped safetensors load of the same model.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tensorizer::{Decryption, Deserializer, EncryptionKey, StorageOptions, Verify};
use tokenizers::{PaddingParams, Tokenizer};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Mean-pooled, L2-normalised embeddings of `sentences` (what
/// sentence-transformers computes for all-MiniLM-L6-v2).
pub fn embed(
    model: &BertModel,
    tokenizer: &Tokenizer,
    sentences: &[String],
) -> Result<Vec<Vec<f32>>> {
    let mut tokenizer = tokenizer.clone();
    tokenizer.with_padding(Some(PaddingParams::default()));
    let encodings = tokenizer.encode_batch(sentences.to_vec(), true)?;
    let device = &Device::Cpu;
    let rows = |f: &dyn Fn(&tokenizers::Encoding) -> Vec<u32>| -> Result<Tensor> {
        let rows = encodings
            .iter()
            .map(|e| Tensor::new(f(e).as_slice(), device))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::stack(&rows, 0)?)
    };
    let ids = rows(&|e| e.get_ids().to_vec())?;
    let mask = rows(&|e| e.get_attention_mask().to_vec())?;
    let token_types = ids.zeros_like()?;
    let hidden = model.forward(&ids, &token_types, Some(&mask))?;
    // Mean over the real tokens only.
    let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
    let pooled = summed.broadcast_div(&mask.sum(1)?)?;
    let norm = pooled.sqr()?.sum_keepdim(1)?.sqrt()?;
    Ok(pooled.broadcast_div(&norm)?.to_vec2::<f32>()?)
}

/// The cosine similarity of every pair (the embeddings are normalised).
pub fn cosine_matrix(embeddings: &[Vec<f32>]) -> Vec<Vec<f32>> {
    embeddings
        .iter()
        .map(|a| {
            embeddings
                .iter()
                .map(|b| a.iter().zip(b).map(|(x, y)| x * y).sum())
                .collect()
        })
        .collect()
}

/// A `VarBuilder` over a tensorizer file or URI, every tensor prefetched in
/// parallel and its CRC-32 checked.
pub fn tensorizer_weights(
    uri: &str,
    storage: &StorageOptions,
    decryption: Option<Decryption>,
) -> Result<VarBuilder<'static>> {
    let mut weights = Deserializer::open_uri_with(uri, storage)?.verify(Verify::Crc32);
    if let Some(d) = decryption {
        weights = weights.decryption(d)?;
    }
    Ok(tensorizer::candle::var_builder_prefetched(
        weights,
        DType::F32,
        &Device::Cpu,
    )?)
}

struct Args {
    weights: String,
    config: String,
    tokenizer: String,
    decryption: Option<Decryption>,
    compare: Option<String>,
    sentences: Vec<String>,
}

fn parse() -> Result<Args> {
    let mut args = std::env::args().skip(1);
    let (mut weights, mut config, mut tokenizer, mut decryption, mut compare) =
        (None, None, None, None, None);
    let mut sentences = Vec::new();
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--weights" => weights = Some(value()?),
            "--config" => config = Some(value()?),
            "--tokenizer" => tokenizer = Some(value()?),
            "--key-file" => {
                let key = EncryptionKey::from_key_file(&std::fs::read(value()?)?)?;
                decryption = Some(Decryption::Key(key));
            }
            "--passphrase-file" => {
                decryption = Some(Decryption::passphrase(std::fs::read(value()?)?));
            }
            "--compare-safetensors" => compare = Some(value()?),
            _ if a.starts_with("--") => return Err(format!("unknown option {a}").into()),
            _ => sentences.push(a),
        }
    }
    let need = |v: Option<String>, flag: &str| v.ok_or_else(|| format!("{flag} is required"));
    if sentences.is_empty() {
        sentences = [
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "The girl is carrying a baby.",
        ]
        .map(String::from)
        .to_vec();
    }
    Ok(Args {
        weights: need(weights, "--weights URI")?,
        config: need(config, "--config config.json")?,
        tokenizer: need(tokenizer, "--tokenizer tokenizer.json")?,
        decryption,
        compare,
        sentences,
    })
}

fn main() -> Result<()> {
    let args = parse()?;
    let config: Config = serde_json::from_slice(&std::fs::read(&args.config)?)?;
    let tokenizer = Tokenizer::from_file(&args.tokenizer)?;

    // Both timings cover reading every weight and building the model.
    let started = Instant::now();
    let vb = tensorizer_weights(&args.weights, &StorageOptions::default(), args.decryption)?;
    let model = BertModel::load(vb, &config)?;
    println!(
        "loaded {} with tensorizer in {:.1} ms",
        args.weights,
        started.elapsed().as_secs_f64() * 1e3
    );
    if let Some(path) = &args.compare {
        let started = Instant::now();
        // SAFETY: the file is not modified while mapped (candle's own loader).
        let theirs =
            unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, &Device::Cpu)? };
        BertModel::load(theirs, &config)?;
        println!(
            "loaded {path} with candle's safetensors loader in {:.1} ms",
            started.elapsed().as_secs_f64() * 1e3
        );
    }
    let embeddings = embed(&model, &tokenizer, &args.sentences)?;
    for (sentence, e) in args.sentences.iter().zip(&embeddings) {
        let head: Vec<String> = e.iter().take(5).map(|v| format!("{v:.5}")).collect();
        println!(
            "{sentence:?}: [{}, ...] ({} values)",
            head.join(", "),
            e.len()
        );
    }
    println!("{}", serde_json::to_string(&cosine_matrix(&embeddings))?);
    Ok(())
}
