//! `tensorizer vllm serialize | deserialize`: vLLM's
//! `examples/features/tensorize_vllm_model.py`, without vLLM, Python or a GPU.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Instant;
use tensorizer::io::ShownUri;

use clap::{Args, Subcommand, ValueEnum};
use indicatif::ProgressBar;
use serde_json::{Map, Value};
use tensorizer::StorageOptions;
use tensorizer_vllm::{
    Device, Layout, Progress, SerializeOptions, TensorizerConfig, VllmError, load_ranks, serialize,
};

use crate::progress;

/// The vLLM workflow (layout of vLLM 0.33.0).
#[derive(Subcommand)]
pub enum VllmCommand {
    /// Turn a Hugging Face checkpoint into what vLLM's `--load-format
    /// tensorizer` loads: `{dir}/vllm/{ORG/NAME}/{suffix}/` with
    /// `model.tensors` (TP 1, Hugging Face names) or one
    /// `model-rank-%03d.tensors` per rank holding that rank's shards under
    /// vLLM 0.33.0's parameter names (Llama, Mistral, Qwen2, OPT), plus the
    /// model's config and tokenizer files, a key file and a LoRA adapter.
    Serialize(SerializeArgs),
    /// Load every rank of a serialized model as vLLM would, check its
    /// hashes, and print bytes, seconds and GiB/s per rank and in all.
    Deserialize(DeserializeArgs),
}

/// `vllm serialize`.
#[derive(Args)]
pub struct SerializeArgs {
    /// A checkpoint (config.json + *.safetensors): a directory, ORG/NAME
    /// in the local Hugging Face cache (nothing is downloaded), or a
    /// prefix on any store (s3://bucket/llama/, gs://, az://, https://),
    /// read by range as the files are written.
    #[arg(long)]
    model: String,
    /// ORG/NAME in the output path when --model is a directory or prefix
    /// (default: its last component).
    #[arg(long)]
    model_name: Option<String>,
    /// Where `vllm/ORG/NAME/SUFFIX/` is created: a directory or s3://bucket/prefix.
    #[arg(long)]
    serialized_directory: String,
    /// The last path component (default: a random UUID, printed).
    #[arg(long)]
    suffix: Option<String>,
    /// Tensor-parallel ranks: one file per rank.
    #[arg(long, default_value_t = 1)]
    tensor_parallel_size: usize,
    /// For TP > 1: `vllm` (each rank's shards, vLLM's names; default where
    /// the architecture has rules) or `hf` (whole copies under Hugging Face
    /// names, for any architecture).
    #[arg(long, value_enum)]
    layout: Option<LayoutArg>,
    /// The dtype of the written tensors (`auto`: as vLLM picks from config.json).
    #[arg(long, default_value = "auto")]
    dtype: String,
    /// Write a new random key here (32 raw bytes; never replaces a key) and
    /// encrypt every tensor file with it.
    #[arg(long)]
    keyfile: Option<String>,
    /// A LoRA adapter directory (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    lora_path: Option<PathBuf>,
    /// JSON keyword arguments of TensorSerializer (compress_tensors, limit_cpu_concurrency).
    #[arg(long)]
    serialization_kwargs: Option<String>,
    /// Replace a model already serialized at this path.
    #[arg(long)]
    overwrite: bool,
}

/// `vllm deserialize`.
#[derive(Args)]
pub struct DeserializeArgs {
    /// The tensors: a file, or a `%03d` template for per-rank files.
    #[arg(long)]
    path_to_tensors: Option<String>,
    /// A serialized directory holding `model.tensors`.
    #[arg(long, conflicts_with = "path_to_tensors")]
    serialized_directory: Option<String>,
    /// The key file (local or URI) if the model is encrypted.
    #[arg(long)]
    keyfile: Option<String>,
    /// Ranks to load.
    #[arg(long, default_value_t = 1)]
    tensor_parallel_size: usize,
    /// vLLM's `--model-loader-extra-config` JSON (TensorizerConfig keys);
    /// its values override the flags. `@FILE` reads it from FILE (keep
    /// secrets such as `s3_secret_access_key` off the command line).
    #[arg(long)]
    model_loader_extra_config: Option<String>,
    /// JSON keyword arguments of TensorDeserializer.
    #[arg(long)]
    deserialization_kwargs: Option<String>,
    /// Concurrent readers per rank.
    #[arg(long)]
    num_readers: Option<usize>,
    /// Skip the hash checks (vLLM's default is not to check; ours is to).
    #[arg(long)]
    no_verify_hash: bool,
    /// Where ranks load to: host memory, or rank r onto GPU r.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum LayoutArg {
    Vllm,
    Hf,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DeviceArg {
    Cpu,
    Cuda,
}

/// Runs a `vllm` subcommand; errors are printed.
pub fn run(command: VllmCommand, storage: &StorageOptions) -> ExitCode {
    let result = match command {
        VllmCommand::Serialize(args) => serialize_cmd(args, storage),
        VllmCommand::Deserialize(args) => deserialize_cmd(args, storage),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "tensorizer vllm: {}",
                tensorizer::io::escape_controls(&e.to_string())
            );
            ExitCode::FAILURE
        }
    }
}

/// Keys of the extra config that hold a secret.
const EXTRA_CONFIG_SECRETS: [&str; 1] = ["s3_secret_access_key"];

/// The text of `--model-loader-extra-config`: `@FILE`'s content, or the
/// argument itself, with a warning when it carries a secret on the command
/// line (visible to every user of the machine, as for the flags).
fn extra_config_text(arg: &str) -> Result<String, VllmError> {
    if let Some(path) = arg.strip_prefix('@') {
        return std::fs::read_to_string(path).map_err(|source| VllmError::Io {
            path: path.into(),
            action: "reading --model-loader-extra-config".into(),
            source,
        });
    }
    if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(arg) {
        for key in EXTRA_CONFIG_SECRETS.iter().filter(|k| m.contains_key(**k)) {
            eprintln!(
                "warning: {key} in --model-loader-extra-config on the command line is visible \
                 to every user of this machine (ps, /proc); put the JSON in a file and pass \
                 --model-loader-extra-config @FILE"
            );
        }
    }
    Ok(arg.to_owned())
}

fn json_object(what: &str, text: Option<&str>) -> Result<Map<String, Value>, VllmError> {
    let Some(text) = text else {
        return Ok(Map::new());
    };
    match serde_json::from_str(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(VllmError::Invalid {
            what: what.into(),
            message: "must be a JSON object".into(),
        }),
        Err(source) => Err(VllmError::Json {
            what: what.into(),
            source,
        }),
    }
}

fn serialize_cmd(args: SerializeArgs, storage: &StorageOptions) -> Result<(), VllmError> {
    let dtype =
        match args.dtype.as_str() {
            "auto" => None,
            other => Some(tensorizer_vllm::config::parse_dtype(other).ok_or_else(|| {
                VllmError::Invalid {
                    what: "--dtype".into(),
                    message: format!("{other:?} is not auto, float16, bfloat16 or float32"),
                }
            })?),
        };
    let opts = SerializeOptions {
        model: args.model,
        model_name: args.model_name,
        serialized_directory: args.serialized_directory,
        suffix: args.suffix,
        tensor_parallel_size: args.tensor_parallel_size,
        layout: args.layout.map(|l| match l {
            LayoutArg::Vllm => Layout::Vllm,
            LayoutArg::Hf => Layout::Hf,
        }),
        dtype,
        keyfile: args.keyfile,
        lora_path: args.lora_path,
        serialization_kwargs: json_object(
            "--serialization-kwargs",
            args.serialization_kwargs.as_deref(),
        )?,
        storage: storage.clone(),
        overwrite: args.overwrite,
    };
    let started = Instant::now();
    let bar: Mutex<Option<(String, ProgressBar)>> = Mutex::new(None);
    let on_progress = |p: Progress<'_>| {
        let mut bar = bar.lock().expect("progress lock");
        if bar.as_ref().is_none_or(|(f, _)| f != p.file) {
            if let Some((_, old)) = bar.take() {
                old.finish_and_clear();
            }
            let b = progress(p.total, "writing");
            let shown = ShownUri::new(p.file);
            b.set_message(
                shown
                    .as_str()
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            );
            *bar = Some((p.file.to_owned(), b));
        }
        if let Some((_, b)) = bar.as_ref() {
            b.set_position(p.bytes);
        }
    };
    let report = serialize(&opts, &on_progress);
    if let Some((_, b)) = bar.lock().expect("progress lock").take() {
        b.finish_and_clear();
    }
    let report = report?;
    let secs = started.elapsed().as_secs_f64();
    for w in &report.warnings {
        eprintln!("warning: {}", tensorizer::io::escape_controls(w));
    }
    let bytes: u64 = report.files.iter().map(|(_, b)| b).sum();
    for (uri, size) in &report.files {
        println!("  {} ({size} bytes)", ShownUri::new(uri));
    }
    println!(
        "serialized {} ({} layout{}, suffix {}) in {secs:.2} s, {:.2} GiB/s",
        ShownUri::new(&report.directory),
        match report.layout {
            Layout::Vllm => "vllm",
            Layout::Hf => "hf",
        },
        report.dtype.map(|d| format!(", {d}")).unwrap_or_default(),
        report.suffix,
        bytes as f64 / secs / (1u64 << 30) as f64,
    );
    let uri = if opts.tensor_parallel_size > 1 {
        format!("{}/model-rank-%03d.tensors", report.directory)
    } else {
        format!("{}/model.tensors", report.directory)
    };
    println!(
        "load with: vllm serve {} --load-format tensorizer --tensor-parallel-size {} \
         --model-loader-extra-config '{}'",
        ShownUri::new(&report.directory),
        opts.tensor_parallel_size,
        serde_json::json!({
            "tensorizer_uri": ShownUri::new(&uri).as_str(),
            "encryption_keyfile": opts.keyfile.as_deref().map(|k| ShownUri::new(k).to_string()),
        })
        .as_object()
        .map(|m| {
            Value::Object(
                m.iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            )
        })
        .unwrap_or_default()
    );
    Ok(())
}

fn deserialize_cmd(args: DeserializeArgs, storage: &StorageOptions) -> Result<(), VllmError> {
    let mut config = TensorizerConfig {
        tensorizer_uri: args.path_to_tensors,
        tensorizer_dir: args.serialized_directory,
        encryption_keyfile: args.keyfile,
        num_readers: args.num_readers,
        verify_hash: Some(!args.no_verify_hash),
        s3_access_key_id: storage.s3.access_key_id.clone(),
        s3_secret_access_key: storage.s3.secret_access_key.clone(),
        s3_endpoint: storage.s3.endpoint.clone(),
        deserialization_kwargs: Some(json_object(
            "--deserialization-kwargs",
            args.deserialization_kwargs.as_deref(),
        )?),
        ..Default::default()
    };
    let extra = match args.model_loader_extra_config.as_deref() {
        Some(arg) => Some(extra_config_text(arg)?),
        None => None,
    };
    if let Some(extra) = extra.as_deref() {
        // As vLLM's example merges it: the extra config's keys win.
        let extra_cfg: TensorizerConfig =
            serde_json::from_str(extra).map_err(|source| VllmError::Json {
                what: "--model-loader-extra-config".into(),
                source,
            })?;
        let extra: Map<String, Value> = json_object("--model-loader-extra-config", Some(extra))?;
        merge(&mut config, extra_cfg, &extra);
    }
    config.resolve()?;
    let device = match args.device {
        DeviceArg::Cpu => Device::Cpu,
        #[cfg(feature = "cuda")]
        DeviceArg::Cuda => Device::Cuda,
        #[cfg(not(feature = "cuda"))]
        DeviceArg::Cuda => {
            return Err(VllmError::Invalid {
                what: "--device cuda".into(),
                message: "this tensorizer was built without the `cuda` feature".into(),
            });
        }
    };
    let started = Instant::now();
    let loads = load_ranks(&config, args.tensor_parallel_size, device, &mut |r| {
        println!(
            "rank {}: {}: {} tensors, {} bytes in {:.3} s ({:.2} GiB/s)",
            r.rank,
            ShownUri::new(&r.uri),
            r.tensors,
            r.bytes,
            r.seconds,
            r.bytes as f64 / r.seconds / (1u64 << 30) as f64
        );
    })?;
    let secs = started.elapsed().as_secs_f64();
    let bytes: u64 = loads.iter().map(|l| l.bytes).sum();
    println!(
        "all {} rank{}: {bytes} bytes in {secs:.3} s ({:.2} GiB/s), hashes {}",
        loads.len(),
        if loads.len() == 1 { "" } else { "s" },
        bytes as f64 / secs / (1u64 << 30) as f64,
        if args.no_verify_hash {
            "not checked"
        } else {
            "verified"
        }
    );
    Ok(())
}

/// Copies into `config` every field `extra` sets.
fn merge(config: &mut TensorizerConfig, extra_cfg: TensorizerConfig, keys: &Map<String, Value>) {
    macro_rules! take {
        ($($f:ident),*) => {$(
            if keys.contains_key(stringify!($f)) {
                config.$f = extra_cfg.$f.clone();
            }
        )*};
    }
    take!(
        tensorizer_uri,
        tensorizer_dir,
        vllm_tensorized,
        verify_hash,
        num_readers,
        encryption_keyfile,
        s3_access_key_id,
        s3_secret_access_key,
        s3_endpoint,
        lora_dir,
        stream_kwargs,
        serialization_kwargs,
        deserialization_kwargs
    );
}
