//! `tensorizer`: inspect, verify and convert `.tensors` files.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tensorizer::{Deserializer, Error, PathComponent, TensorPath, Verify, format::MAGIC};

#[derive(Parser)]
#[command(
    name = "tensorizer",
    version,
    about = "Inspect, verify and convert tensorizer .tensors files"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the tensors of a file (name, dtype, shape, type, offsets).
    Inspect {
        /// The .tensors file.
        file: PathBuf,
        /// One JSON document with the fields `oracle_read.py --json` prints
        /// (reads every tensor to hash it).
        #[arg(long)]
        json: bool,
    },
    /// Check every stored CRC-32 and SHA-256; exit status 1 names each failing tensor.
    Verify {
        /// The .tensors file.
        file: PathBuf,
    },
    /// Convert safetensors -> tensorizer or tensorizer -> safetensors (detected from the input).
    Convert {
        /// Input file (.safetensors or .tensors).
        input: PathBuf,
        /// Output file (the other format).
        output: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect { file, json } => inspect(&file, json),
        Command::Verify { file } => verify(&file),
        Command::Convert { input, output } => convert(&input, &output),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tensorizer: {e}");
            ExitCode::FAILURE
        }
    }
}

fn progress(total_bytes: u64, verb: &str) -> ProgressBar {
    let bar = ProgressBar::new(total_bytes);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{verb} {{bar:40}} {{bytes}}/{{total_bytes}} {{binary_bytes_per_sec}} {{wide_msg}}"
        ))
        .expect("valid template"),
    );
    bar
}

fn path_json(path: &TensorPath) -> Value {
    match path.as_plain() {
        Some(p) => p.into(),
        None => path
            .components()
            .iter()
            .map(|c| match c {
                PathComponent::Key(k) => Value::from(k.as_str()),
                PathComponent::Index(i) => Value::from(*i),
            })
            .collect(),
    }
}

/// Prints a line to stdout; a closed pipe (`| head`) is not an error.
fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn file_sha256(path: &Path) -> Result<String, Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        action: "hashing the file".into(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn inspect(path: &Path, as_json: bool) -> Result<ExitCode, Error> {
    let d = Deserializer::open(path)?;
    let header = &d.metadata().header;
    if !as_json {
        let mut out = format!(
            "{}: version {}, flags {}, {} tensors, {} bytes of tensor data{}",
            path.display(),
            header.version.get(),
            header.flags.bits(),
            d.len(),
            header.tensor_size,
            if header.has_crypt_info() {
                ", encrypted"
            } else {
                ""
            }
        );
        for (i, e) in d.entries().iter().enumerate() {
            let h = d.read_header(i)?;
            out += &format!(
                "\n  {:<48} {:<10} {:<16} {:<10} idx={:<5} data@{}+{}{}",
                e.name.to_string(),
                e.dtype.dtype().torch_name(),
                e.shape.to_string(),
                e.tensor_type.name(),
                h.module_idx,
                e.data_offset,
                e.data_length,
                if e.is_meta() { " (meta)" } else { "" }
            );
        }
        emit(&out);
        return Ok(ExitCode::SUCCESS);
    }
    let bar = progress(
        d.entries().iter().map(|e| e.data_length).sum(),
        "inspecting",
    );
    let mut tensors = Vec::with_capacity(d.len());
    for (i, e) in d.entries().iter().enumerate() {
        bar.set_message(e.name.to_string());
        let mut rec = json!({
            "name": path_json(e.name.path()),
            "name_hex": hex(e.name.as_bytes()),
            "dtype": e.dtype.dtype().torch_name(),
            "shape": e.shape.dims(),
            "file_dtype": e.dtype.as_str(),
            "data_length": e.data_length,
            "header_offset": e.header_offset,
            "data_offset": e.data_offset,
            "meta": e.is_meta(),
        });
        match d.read_at(i) {
            Ok(t) => {
                rec["nbytes"] = t.as_bytes().len().into();
                rec["sha256"] = hex(&Sha256::digest(t.as_bytes())).into();
                rec["tensor_type"] = t.tensor_type().name().into();
                rec["module_idx"] = t.module_idx().into();
            }
            // Listing an encrypted file needs no key; hashing its data would.
            Err(Error::Encrypted { .. }) => {
                let h = d.read_header(i)?;
                rec["nbytes"] = e.deserialized_length().into();
                rec["sha256"] = Value::Null;
                rec["tensor_type"] = h.tensor_type.name().into();
                rec["module_idx"] = h.module_idx.into();
            }
            Err(other) => return Err(other),
        }
        bar.inc(e.data_length);
        tensors.push(rec);
    }
    bar.finish_and_clear();
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let doc = json!({
        "file": path.file_name().map(|n| n.to_string_lossy().into_owned()),
        "file_size": size,
        "file_sha256": file_sha256(path)?,
        "reader": concat!("tensorizer-rs ", env!("CARGO_PKG_VERSION")),
        "magic_ok": true,
        "format_version": header.version.get(),
        "feature_flags": header.flags.bits(),
        "header_tensor_size": header.tensor_size,
        "header_tensor_count": header.tensor_count,
        "metadata_size": d.metadata().index_len,
        "tensor_count": tensors.len(),
        "tensors": tensors,
        "ok": true,
    });
    emit(&doc.to_string());
    Ok(ExitCode::SUCCESS)
}

fn verify(path: &Path) -> Result<ExitCode, Error> {
    let started = Instant::now();
    let d = Deserializer::open(path)?.verify(Verify::All);
    let total: u64 = d.entries().iter().map(|e| e.data_length).sum();
    let bar = progress(total, "verifying");
    let mut failures = 0;
    for (i, e) in d.entries().iter().enumerate() {
        bar.set_message(e.name.to_string());
        match d.read_at(i) {
            Ok(_) => {}
            Err(err @ Error::Format { .. }) => {
                bar.suspend(|| eprintln!("tensorizer: {err}"));
                failures += 1;
            }
            Err(other) => return Err(other),
        }
        bar.inc(e.data_length);
    }
    bar.finish_and_clear();
    if failures > 0 {
        eprintln!(
            "tensorizer: {}: {failures} of {} tensors failed verification",
            path.display(),
            d.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}: {} tensors OK (CRC-32 and SHA-256), {} bytes in {secs:.2} s ({:.2} GiB/s)",
        path.display(),
        d.len(),
        total,
        total as f64 / secs / (1u64 << 30) as f64
    );
    Ok(ExitCode::SUCCESS)
}

fn convert(input: &Path, output: &Path) -> Result<ExitCode, Error> {
    let mut magic = [0u8; 5];
    let n = std::fs::File::open(input)
        .and_then(|mut f| f.read(&mut magic))
        .map_err(|source| Error::Io {
            path: input.to_path_buf(),
            action: "opening".into(),
            source,
        })?;
    let started = Instant::now();
    if n == MAGIC.len() && magic == MAGIC {
        let s = tensorizer::safetensors::tensorizer_to_safetensors(input, output)?;
        println!(
            "{} -> {} (safetensors): {} tensors, {} bytes in {:.2} s",
            input.display(),
            output.display(),
            s.tensors,
            s.tensor_bytes,
            started.elapsed().as_secs_f64()
        );
    } else {
        let s = tensorizer::safetensors::safetensors_to_tensorizer(input, output)?;
        println!(
            "{} -> {} (tensorizer v{}): {} tensors, {} bytes in {:.2} s",
            input.display(),
            output.display(),
            s.version,
            s.tensors,
            s.bytes,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}
