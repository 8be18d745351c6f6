//! `tensorizer`: inspect, verify, load and convert `.tensors` and
//! safetensors files and checkpoints, on any store.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
mod vllm;

use tensorizer::{
    AzureOptions, Decryption, Deserializer, Encryption, EncryptionKey, Error, GcsOptions,
    KdfParams, KdfStrength, PathComponent, S3Options, StorageOptions, TensorPath, Verify,
};

#[derive(Parser)]
#[command(
    name = "tensorizer",
    version,
    about = "Inspect, verify and convert tensorizer .tensors files"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    storage: StorageArgs,
}

/// Where remote files live. Every file argument is a path or a URI:
/// `file://`, `http(s)://` (read-only), `s3://bucket/key`, `gs://bucket/key`,
/// `az://container/key` (also `az://container@account.blob.core.windows.net/key`,
/// `abfss://...`, `https://account.blob.core.windows.net/container/key`),
/// `redis://host[:port]/prefix`.
#[derive(Args, Debug, Clone, Default)]
struct StorageArgs {
    /// S3 access key id (default: S3_ACCESS_KEY_ID, ~/.s3cfg, AWS_ACCESS_KEY_ID, ~/.aws/credentials).
    #[arg(long, global = true)]
    s3_access_key_id: Option<String>,
    /// File holding the S3 secret access key (`-`: standard input); or the
    /// environment or ~/.s3cfg. Preferred to --s3-secret-access-key.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        conflicts_with = "s3_secret_access_key"
    )]
    s3_secret_access_key_file: Option<PathBuf>,
    /// S3 secret access key, inline: visible to every user in `ps` (a
    /// warning says so); prefer --s3-secret-access-key-file.
    #[arg(long, global = true, hide_env_values = true)]
    s3_secret_access_key: Option<String>,
    /// S3-compatible endpoint, e.g. http://127.0.0.1:9000 (default: S3_ENDPOINT_URL,
    /// host_base of ~/.s3cfg, AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, else AWS).
    #[arg(long, global = true)]
    s3_endpoint: Option<String>,
    /// S3 signing region (default: AWS_REGION, AWS_DEFAULT_REGION, us-east-1).
    #[arg(long, global = true)]
    s3_region: Option<String>,
    /// An s3cmd config file to read instead of ~/.s3cfg.
    #[arg(long, global = true)]
    s3_config: Option<PathBuf>,
    /// GCS service-account JSON key file (default: GOOGLE_SERVICE_ACCOUNT,
    /// GOOGLE_APPLICATION_CREDENTIALS, gcloud's application default
    /// credentials, else the GCE metadata server).
    #[arg(long, global = true)]
    gcs_service_account: Option<PathBuf>,
    /// GCS service-account JSON key, as text (default: GOOGLE_SERVICE_ACCOUNT_KEY).
    #[arg(long, global = true, hide_env_values = true)]
    gcs_service_account_key: Option<String>,
    /// GCS endpoint, e.g. http://127.0.0.1:4443 for an emulator (default:
    /// STORAGE_EMULATOR_HOST, else Google's storage.googleapis.com).
    #[arg(long, global = true)]
    gcs_endpoint: Option<String>,
    /// Unsigned GCS requests, for public buckets.
    #[arg(long, global = true)]
    gcs_anonymous: bool,
    /// Allow GCS credentials over plain http to a host that is not
    /// loopback (the token then crosses the network in the clear).
    #[arg(long, global = true)]
    gcs_allow_http: bool,
    /// A PEM file of CA certificates to trust besides the system's, for
    /// every https endpoint (an S3-compatible store with an internal CA;
    /// default: AWS_CA_BUNDLE, else SSL_CERT_FILE).
    #[arg(long, global = true, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// A directory of PEM CA certificates to trust besides the system's
    /// (default: SSL_CERT_DIR).
    #[arg(long, global = true, value_name = "DIR")]
    ca_dir: Option<PathBuf>,
    /// Azure storage account (default: the URI's, AZURE_STORAGE_ACCOUNT, the connection string's).
    #[arg(long, global = true)]
    azure_account: Option<String>,
    /// File holding the Azure account key (`-`: standard input; default:
    /// AZURE_STORAGE_KEY, the connection string's).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        conflicts_with = "azure_access_key"
    )]
    azure_access_key_file: Option<PathBuf>,
    /// Azure account key, inline (visible in `ps`: prefer the -file form).
    #[arg(long, global = true, hide_env_values = true)]
    azure_access_key: Option<String>,
    /// File holding an Azure SAS token (`-`: standard input; default:
    /// AZURE_STORAGE_SAS_TOKEN, the URI's query).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        conflicts_with = "azure_sas_token"
    )]
    azure_sas_token_file: Option<PathBuf>,
    /// Azure SAS token, inline (visible in `ps`: prefer the -file form).
    #[arg(long, global = true, hide_env_values = true)]
    azure_sas_token: Option<String>,
    /// File holding an Azure connection string (`-`: standard input;
    /// default: AZURE_STORAGE_CONNECTION_STRING).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        conflicts_with = "azure_connection_string"
    )]
    azure_connection_string_file: Option<PathBuf>,
    /// Azure connection string, inline (visible in `ps`: prefer the -file form).
    #[arg(long, global = true, hide_env_values = true)]
    azure_connection_string: Option<String>,
    /// Azure blob service URL, e.g. http://127.0.0.1:10000/devstoreaccount1
    /// (default: AZURE_STORAGE_ENDPOINT, else ACCOUNT.blob.core.windows.net over HTTPS).
    #[arg(long, global = true)]
    azure_endpoint: Option<String>,
    /// Talk to Azurite with its development account (also AZURE_STORAGE_USE_EMULATOR=true).
    #[arg(long, global = true)]
    azure_use_emulator: bool,
    /// Unsigned Azure requests, for public containers.
    #[arg(long, global = true)]
    azure_anonymous: bool,
}

/// Secret flags whose value would show in `ps`, and their file forms.
const INLINE_SECRETS: [(&str, &str); 6] = [
    ("--s3-secret-access-key", "--s3-secret-access-key-file"),
    ("--azure-access-key", "--azure-access-key-file"),
    ("--azure-sas-token", "--azure-sas-token-file"),
    (
        "--azure-connection-string",
        "--azure-connection-string-file",
    ),
    ("--gcs-service-account-key", "--gcs-service-account"),
    ("--passphrase", "--passphrase-file or TENSORIZER_PASSPHRASE"),
];

/// Warns once per secret given inline on the command line.
fn warn_inline_secrets(args: &[String]) {
    for (flag, instead) in INLINE_SECRETS {
        let inline = args
            .iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")));
        if inline {
            eprintln!(
                "warning: {flag} on the command line is visible to every user of this machine \
                 (ps, /proc); use {instead}"
            );
        }
    }
}

/// A secret from a file (`-`: standard input), trailing newline removed.
fn secret_from(path: &Path, what: &str) -> Result<String, Error> {
    let bytes = read_file(path, what)?;
    let text = String::from_utf8(bytes).map_err(|_| Error::Io {
        path: path.to_path_buf(),
        action: format!("reading the {what}"),
        source: std::io::Error::other("not UTF-8 text"),
    })?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

impl StorageArgs {
    fn options(&self) -> Result<StorageOptions, Error> {
        let from_file = |file: &Option<PathBuf>, inline: &Option<String>, what: &str| match file {
            Some(path) => secret_from(path, what).map(Some),
            None => Ok(inline.clone()),
        };
        Ok(StorageOptions {
            s3: S3Options {
                access_key_id: self.s3_access_key_id.clone(),
                secret_access_key: from_file(
                    &self.s3_secret_access_key_file,
                    &self.s3_secret_access_key,
                    "S3 secret access key",
                )?,
                endpoint: self.s3_endpoint.clone(),
                region: self.s3_region.clone(),
                config_path: self.s3_config.clone(),
                ..Default::default()
            },
            gcs: GcsOptions {
                anonymous: self.gcs_anonymous,
                service_account_path: self.gcs_service_account.clone(),
                service_account_key: self.gcs_service_account_key.clone(),
                endpoint: self.gcs_endpoint.clone(),
                allow_plain_http: self.gcs_allow_http,
                ..Default::default()
            },
            azure: AzureOptions {
                account: self.azure_account.clone(),
                access_key: from_file(
                    &self.azure_access_key_file,
                    &self.azure_access_key,
                    "Azure account key",
                )?,
                sas_token: from_file(
                    &self.azure_sas_token_file,
                    &self.azure_sas_token,
                    "Azure SAS token",
                )?,
                connection_string: from_file(
                    &self.azure_connection_string_file,
                    &self.azure_connection_string,
                    "Azure connection string",
                )?,
                endpoint: self.azure_endpoint.clone(),
                use_emulator: self.azure_use_emulator,
                anonymous: self.azure_anonymous,
                ..Default::default()
            },
            trust: {
                let env =
                    tensorizer::io::TrustOptions::from_env(&tensorizer::io::ProcessEnvironment);
                tensorizer::io::TrustOptions {
                    ca_file: self.ca_file.clone().or(env.ca_file),
                    ca_dir: self.ca_dir.clone().or(env.ca_dir),
                    accept_invalid_certs: false,
                }
            },
            ..Default::default()
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// List the tensors of a file (name, dtype, shape, type, offsets).
    Inspect {
        /// A .tensors or .safetensors file, or a checkpoint (a directory,
        /// an object prefix ending in `/`, an index `.json`): a path or URI.
        file: String,
        /// One JSON document with the fields `oracle_read.py --json` prints
        /// (reads every tensor to hash it).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Check every stored CRC-32 and SHA-256 (and every MAC of an encrypted
    /// file); exit status 1 names each failing tensor.
    Verify {
        /// A .tensors or .safetensors file, or a checkpoint (a directory,
        /// an object prefix ending in `/`, an index `.json`): a path or URI.
        /// Safetensors files store no hashes: each is checked against its
        /// Hugging Face cache blob's SHA-256, or `--sha256`.
        file: String,
        /// The SHA-256 the file must have (64 hex digits; one file only).
        #[arg(long)]
        sha256: Option<String>,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Load every tensor into memory as a serving program would, then
    /// discard it, and print bytes, seconds and GiB/s: how fast a model
    /// loads from this storage.
    Load {
        /// A .tensors or .safetensors file, or a checkpoint (a directory,
        /// an object prefix ending in `/`, an index `.json`): a path or URI.
        file: String,
        /// The SHA-256 the file must have (64 hex digits; one file only).
        #[arg(long)]
        sha256: Option<String>,
        /// Which stored hashes to check while loading.
        #[arg(long, value_enum, default_value_t = VerifyArg::Crc32)]
        verify: VerifyArg,
        /// Reads in flight (default: the source's preferred concurrency,
        /// at least one per core).
        #[arg(long)]
        num_readers: Option<usize>,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Write a new random 32-byte key file (raw bytes, mode 0600).
    Keygen {
        /// Where to write the key.
        keyfile: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Encrypt a file's tensor data with a key file or a passphrase.
    Encrypt {
        /// Unencrypted input (path or URI).
        input: String,
        /// Encrypted output (path or URI).
        output: String,
        #[command(flatten)]
        key: KeyArgs,
        /// Argon2id cost when encrypting with a passphrase.
        #[arg(long, value_enum, default_value_t = Strength::Moderate)]
        kdf: Strength,
    },
    /// Decrypt a file into an unencrypted one.
    Decrypt {
        /// Encrypted input (path or URI).
        input: String,
        /// Unencrypted output (path or URI).
        output: String,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Re-encrypt a file under another key or passphrase.
    Rekey {
        /// Encrypted input (path or URI).
        input: String,
        /// Output, encrypted with the new key (path or URI).
        output: String,
        /// The current key file (32 raw bytes or 64 hex digits).
        #[arg(long, conflicts_with = "old_passphrase_file")]
        old_key_file: Option<PathBuf>,
        /// A file holding the current passphrase (used byte for byte).
        #[arg(long)]
        old_passphrase_file: Option<PathBuf>,
        /// The new key file.
        #[arg(long, conflicts_with = "new_passphrase_file")]
        new_key_file: Option<PathBuf>,
        /// A file holding the new passphrase.
        #[arg(long)]
        new_passphrase_file: Option<PathBuf>,
        /// Argon2id cost for a new passphrase.
        #[arg(long, value_enum, default_value_t = Strength::Moderate)]
        kdf: Strength,
        #[command(flatten)]
        meta: MetaArgs,
    },
    /// Copy a .tensors file between any two storages byte for byte (push a
    /// model to S3, GCS, Azure or Redis, move it from one store to another,
    /// fetch one to disk), with parallel ranged reads and multipart writes;
    /// encrypted files copy without a key.
    Copy {
        /// Source: path or URI.
        input: String,
        /// Destination: path, s3://, gs://, az:// or redis:// URI (replaced atomically).
        output: String,
    },
    /// Convert safetensors -> tensorizer or tensorizer -> safetensors
    /// (detected from the input; local files: use `copy` for remote ones).
    /// Convert between safetensors and tensorizer, from any URI to any URI,
    /// streaming (one tensor per writer thread in memory).
    Convert {
        /// A .tensors file, or a safetensors file or checkpoint (directory,
        /// prefix ending in `/`, index `.json`): a path or URI.
        input: String,
        /// Output file of the other format: a path or URI.
        output: String,
    },
    /// vLLM's tensorizer workflow: serialize a Hugging Face checkpoint into
    /// vLLM's layout (tensor-parallel ranks, key file, LoRA) and load it back.
    Vllm {
        #[command(subcommand)]
        command: vllm::VllmCommand,
    },
}

/// Where a key comes from: a key file, a passphrase file, or the
/// `TENSORIZER_PASSPHRASE` environment variable.
#[derive(Args, Debug, Clone)]
struct KeyArgs {
    /// Key file: 32 raw bytes (as `keygen` and vLLM write) or 64 hex digits.
    #[arg(long, conflicts_with_all = ["passphrase_file", "passphrase"])]
    key_file: Option<PathBuf>,
    /// File holding the passphrase, used byte for byte (mind trailing newlines).
    #[arg(long, conflicts_with = "passphrase")]
    passphrase_file: Option<PathBuf>,
    /// The passphrase itself (prefer the environment variable to the command line).
    #[arg(long, env = "TENSORIZER_PASSPHRASE", hide_env_values = true)]
    passphrase: Option<String>,
    /// Largest Argon2id time cost a passphrase file may ask for (default 4,
    /// the Python library's strongest preset).
    #[arg(long, value_name = "OPS")]
    kdf_max_opslimit: Option<u64>,
    /// Largest Argon2id memory a passphrase file may ask for, in bytes
    /// (default 1 GiB, the Python library's strongest preset).
    #[arg(long, value_name = "BYTES")]
    kdf_max_memlimit: Option<u64>,
    #[command(flatten)]
    meta: MetaArgs,
}

/// Which meta tensors of an encrypted file to accept: nothing authenticates
/// them (anyone can turn a tensor into one without the key).
#[derive(Args, Debug, Clone, Default)]
struct MetaArgs {
    /// Accept this meta tensor of an encrypted file (it loads as zeros);
    /// repeat for more. vLLM's `.vllm_tensorized_marker` is one.
    #[arg(long, value_name = "NAME")]
    allow_meta: Vec<String>,
    /// Accept every meta tensor of an encrypted file.
    #[arg(long, conflicts_with = "allow_meta")]
    allow_all_meta: bool,
}

impl MetaArgs {
    fn policy(&self) -> tensorizer::UnauthenticatedMeta {
        tensorizer::UnauthenticatedMeta::from_names(
            self.allow_meta.iter().map(String::as_str),
            self.allow_all_meta,
        )
    }
}

/// `--verify` of `load`.
#[derive(ValueEnum, Debug, Clone, Copy)]
enum VerifyArg {
    /// Check nothing.
    None,
    /// CRC-32 (the default of loads).
    Crc32,
    /// CRC-32 and SHA-256.
    All,
}

impl From<VerifyArg> for Verify {
    fn from(v: VerifyArg) -> Self {
        match v {
            VerifyArg::None => Verify::None,
            VerifyArg::Crc32 => Verify::Crc32,
            VerifyArg::All => Verify::All,
        }
    }
}

/// libsodium's Argon2id presets.
#[derive(ValueEnum, Debug, Clone, Copy)]
enum Strength {
    Min,
    Interactive,
    Moderate,
    Sensitive,
}

impl From<Strength> for KdfStrength {
    fn from(s: Strength) -> Self {
        match s {
            Strength::Min => KdfStrength::Min,
            Strength::Interactive => KdfStrength::Interactive,
            Strength::Moderate => KdfStrength::Moderate,
            Strength::Sensitive => KdfStrength::Sensitive,
        }
    }
}

enum Secret {
    Key(EncryptionKey),
    Passphrase(Vec<u8>),
}

/// Key and passphrase files are small: at most this many bytes are read
/// (`/dev/zero` or a model given by mistake must not fill memory). `-` is
/// standard input.
const MAX_SECRET_FILE: u64 = 64 << 10;

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, Error> {
    use std::io::Read;
    let err = |source| Error::Io {
        path: path.to_path_buf(),
        action: format!("reading the {what}"),
        source,
    };
    let mut data = Vec::new();
    if path == Path::new("-") {
        std::io::stdin()
            .take(MAX_SECRET_FILE + 1)
            .read_to_end(&mut data)
            .map_err(err)?;
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_SECRET_FILE + 1).read_to_end(&mut data))
            .map_err(err)?;
    }
    if data.len() as u64 > MAX_SECRET_FILE {
        return Err(err(std::io::Error::other(format!(
            "more than {MAX_SECRET_FILE} bytes: not a {what}"
        ))));
    }
    Ok(data)
}

fn key_error(path: impl AsRef<Path>, e: impl std::fmt::Display) -> Error {
    Error::Encryption {
        path: path.as_ref().to_path_buf(),
        message: e.to_string(),
    }
}

impl KeyArgs {
    fn secret(&self) -> Result<Option<Secret>, Error> {
        secret(
            self.key_file.as_deref(),
            self.passphrase_file.as_deref(),
            self.passphrase.as_deref(),
        )
    }

    fn decryption(&self) -> Result<Option<Decryption>, Error> {
        Ok(self.secret()?.map(|s| match s {
            Secret::Key(k) => Decryption::Key(k),
            Secret::Passphrase(p) => Decryption::passphrase(p),
        }))
    }
}

fn secret(
    key_file: Option<&Path>,
    passphrase_file: Option<&Path>,
    passphrase: Option<&str>,
) -> Result<Option<Secret>, Error> {
    if let Some(path) = key_file {
        let key = EncryptionKey::from_key_file(&read_file(path, "key file")?)
            .map_err(|e| key_error(path, e))?;
        return Ok(Some(Secret::Key(key)));
    }
    if let Some(path) = passphrase_file {
        return Ok(Some(Secret::Passphrase(read_file(
            path,
            "passphrase file",
        )?)));
    }
    Ok(passphrase.map(|p| Secret::Passphrase(p.as_bytes().to_vec())))
}

fn encryption(secret: Secret, strength: Strength, out: &str) -> Result<Encryption, Error> {
    match secret {
        Secret::Key(k) => Ok(Encryption::with_key(k)),
        Secret::Passphrase(p) => {
            let params = KdfParams::new(strength.into()).map_err(|e| key_error(out, e))?;
            Encryption::from_passphrase(&p, params).map_err(|e| key_error(out, e))
        }
    }
}

/// Opens a path or URI.
/// True when `uri` names a checkpoint of several files rather than one
/// file: a local directory, a prefix ending in `/`, an index `.json`.
fn is_checkpoint(uri: &str) -> bool {
    let local = !uri.contains("://") || uri.starts_with("file://");
    uri.ends_with('/')
        || uri.ends_with(".json")
        || (local && Path::new(uri.trim_start_matches("file://")).is_dir())
}

/// `--sha256 HEX`, parsed.
fn expected_sha256(hex: Option<&str>) -> Result<Option<[u8; 32]>, Error> {
    hex.map(|h| {
        tensorizer::parse_sha256(h).ok_or_else(|| Error::Checkpoint {
            uri: "--sha256".into(),
            message: "expected 64 hex digits".into(),
        })
    })
    .transpose()
}

/// A checkpoint, with the key settings of `key` on every shard.
fn open_checkpoint(
    uri: &str,
    key: &KeyArgs,
    storage: &StorageOptions,
) -> Result<tensorizer::Checkpoint, Error> {
    if key.secret()?.is_some() {
        return Err(Error::Checkpoint {
            uri: shown(uri).to_string(),
            message: "keys apply to one .tensors file; give the file's URI".into(),
        });
    }
    tensorizer::Checkpoint::open_uri_with(uri, storage)
}

fn open(file: &str, key: &KeyArgs, storage: &StorageOptions) -> Result<Deserializer, Error> {
    let defaults = tensorizer::KdfLimits::default();
    let d = Deserializer::open_uri_with(file, storage)?
        .kdf_limits(tensorizer::KdfLimits {
            max_opslimit: key.kdf_max_opslimit.unwrap_or(defaults.max_opslimit),
            max_memlimit: key.kdf_max_memlimit.unwrap_or(defaults.max_memlimit),
            ..defaults
        })
        .unauthenticated_meta(key.meta.policy());
    match key.decryption()? {
        Some(dec) => d.decryption(dec),
        None => Ok(d),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    warn_inline_secrets(&std::env::args().collect::<Vec<_>>());
    let storage = match cli.storage.options() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tensorizer: {}", printable(&e.to_string()));
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Vllm { command } => return vllm::run(command, &storage),
        Command::Inspect { file, json, key } => inspect(&file, json, &key, &storage),
        Command::Verify { file, sha256, key } => verify(&file, sha256.as_deref(), &key, &storage),
        Command::Load {
            file,
            sha256,
            verify,
            num_readers,
            key,
        } => load(
            &file,
            sha256.as_deref(),
            verify,
            num_readers,
            &key,
            &storage,
        ),
        Command::Copy { input, output } => (|| {
            let started = Instant::now();
            let (bar, callback) = progress_callback("copying");
            let s = tensorizer::copy_with_progress(&input, &output, &storage, Some(callback));
            bar.finish_and_clear();
            let s = s?;
            println!(
                "{} -> {}: {} tensors, {} bytes in {:.2} s",
                shown(&input),
                shown(&output),
                s.tensors,
                s.bytes,
                started.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        })(),
        Command::Convert { input, output } => convert(&input, &output, &storage),
        Command::Keygen { keyfile, force } => keygen(&keyfile, force),
        Command::Encrypt {
            input,
            output,
            key,
            kdf,
        } => (|| {
            let secret = key.secret()?.ok_or_else(|| {
                key_error(
                    &output,
                    "give --key-file, --passphrase-file or TENSORIZER_PASSPHRASE",
                )
            })?;
            let enc = encryption(secret, kdf, &output)?;
            report_rewrite(
                with_bar("encrypting", |cb| {
                    tensorizer::rewrite_with_progress(
                        &input,
                        &output,
                        &storage,
                        None,
                        Some(enc),
                        key.meta.policy(),
                        cb,
                    )
                }),
                "encrypted",
            )
        })(),
        Command::Decrypt { input, output, key } => (|| {
            let dec = key.decryption()?.ok_or_else(|| {
                key_error(
                    &input,
                    "give --key-file, --passphrase-file or TENSORIZER_PASSPHRASE",
                )
            })?;
            report_rewrite(
                with_bar("decrypting", |cb| {
                    tensorizer::rewrite_with_progress(
                        &input,
                        &output,
                        &storage,
                        Some(dec),
                        None,
                        key.meta.policy(),
                        cb,
                    )
                }),
                "decrypted",
            )
        })(),
        Command::Rekey {
            input,
            output,
            old_key_file,
            old_passphrase_file,
            new_key_file,
            new_passphrase_file,
            kdf,
            meta,
        } => (|| {
            let old = KeyArgs {
                key_file: old_key_file,
                passphrase_file: old_passphrase_file,
                passphrase: None,
                kdf_max_opslimit: None,
                kdf_max_memlimit: None,
                meta: meta.clone(),
            };
            let dec = old
                .decryption()?
                .ok_or_else(|| key_error(&input, "give --old-key-file or --old-passphrase-file"))?;
            let new = secret(
                new_key_file.as_deref(),
                new_passphrase_file.as_deref(),
                None,
            )?
            .ok_or_else(|| key_error(&output, "give --new-key-file or --new-passphrase-file"))?;
            report_rewrite(
                {
                    let enc = encryption(new, kdf, &output)?;
                    with_bar("re-encrypting", |cb| {
                        tensorizer::rewrite_with_progress(
                            &input,
                            &output,
                            &storage,
                            Some(dec),
                            Some(enc),
                            meta.policy(),
                            cb,
                        )
                    })
                },
                "re-encrypted",
            )
        })(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tensorizer: {}", printable(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}

/// A progress bar fed by the library's progress callback (sized on the
/// first report, since the total is known only once the file is open).
fn progress_callback(verb: &str) -> (ProgressBar, tensorizer::ProgressFn) {
    let bar = progress(0, verb);
    let fed = bar.clone();
    let callback: tensorizer::ProgressFn =
        std::sync::Arc::new(move |p: &tensorizer::Progress<'_>| {
            fed.set_length(p.total_bytes);
            fed.set_position(p.bytes);
            fed.set_message(printable(p.name));
        });
    (bar, callback)
}

/// Runs `f` with a progress callback drawing a bar, cleared at the end.
fn with_bar<T>(verb: &str, f: impl FnOnce(Option<tensorizer::ProgressFn>) -> T) -> T {
    let (bar, callback) = progress_callback(verb);
    let result = f(Some(callback));
    bar.finish_and_clear();
    result
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

/// A path or URI as it may be printed: userinfo and query (passwords,
/// presigned signatures, SAS tokens) redacted, control characters escaped.
fn shown(uri: &str) -> tensorizer::io::ShownUri {
    tensorizer::io::ShownUri::new(uri)
}

/// `text` safe for a terminal: control characters (escape sequences in a
/// hostile tensor name, say) shown escaped (`\u{1b}`); line breaks of our
/// own messages kept.
fn printable(text: &str) -> String {
    tensorizer::io::escape_controls(text)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of the whole file, read through its source (local or remote).
fn file_sha256(source: &dyn tensorizer::io::RangeSource) -> Result<String, Error> {
    let mut hasher = Sha256::new();
    let piece = 8u64 << 20;
    let mut at = 0;
    while at < source.len() {
        let n = piece.min(source.len() - at);
        let bytes = source.read_range(at, n).map_err(|e| Error::Source {
            action: "hashing the file".into(),
            source: e,
        })?;
        hasher.update(&bytes);
        at += n;
    }
    Ok(hex(&hasher.finalize()))
}

fn report_rewrite(
    result: Result<tensorizer::WriteSummary, Error>,
    verb: &str,
) -> Result<ExitCode, Error> {
    let s = result?;
    println!(
        "{}: {verb}, {} tensors, {} bytes (data version {})",
        shown(&s.path.to_string_lossy()),
        s.tensors,
        s.bytes,
        s.version
    );
    Ok(ExitCode::SUCCESS)
}

fn keygen(path: &Path, force: bool) -> Result<ExitCode, Error> {
    use tensorizer::io::{LocalSink, Sink};
    let key = EncryptionKey::random().map_err(|e| key_error(path, e))?;
    let source_error = |action: &'static str| {
        move |source| Error::Source {
            action: action.into(),
            source,
        }
    };
    if force {
        // Replaced atomically by a new file, mode 0600 from before it has a
        // name: the old file's mode is not kept, and a link at the path is
        // replaced, never written through.
        let sink = LocalSink::create_with_mode(path, 0o600)
            .map_err(source_error("creating the key file"))?;
        sink.write_all_at(0, key.as_bytes())
            .map_err(source_error("writing the key"))?;
        Box::new(sink)
            .commit()
            .map_err(source_error("writing the key"))?;
    } else {
        tensorizer::io::create_new(
            &path.to_string_lossy(),
            key.as_bytes(),
            0o600,
            &StorageOptions::default(),
        )
        .map_err(source_error(
            "creating the key file (use --force to replace one)",
        ))?;
    }
    println!(
        "{}: new 32-byte key written (keep it secret; without it the data is lost)",
        shown(&path.to_string_lossy())
    );
    Ok(ExitCode::SUCCESS)
}

/// The text `inspect` prints for one file: a summary line, then a line
/// per tensor.
fn describe(d: &Deserializer) -> Result<String, Error> {
    let path = d.path().to_string_lossy().into_owned();
    let header = &d.metadata().header;
    let mut out = match d.format() {
        tensorizer::FileFormat::Safetensors { metadata } => format!(
            "{}: safetensors, {} tensors, {} bytes of tensor data{}",
            shown(&path),
            d.len(),
            header.tensor_size,
            metadata
                .as_ref()
                .map(|m| format!(
                    ", metadata {}",
                    printable(&serde_json::to_string(m).unwrap_or_default())
                ))
                .unwrap_or_default()
        ),
        tensorizer::FileFormat::Tensorizer => format!(
            "{}: version {}, flags {}, {} tensors, {} bytes of tensor data{}",
            shown(&path),
            header.version.get(),
            header.flags.bits(),
            d.len(),
            header.tensor_size,
            if header.has_crypt_info() {
                ", encrypted"
            } else {
                ""
            }
        ),
    };
    for (i, e) in d.entries().iter().enumerate() {
        let h = d.read_header(i)?;
        out += &format!(
            "\n  {:<48} {:<10} {:<16} {:<10} idx={:<5} data@{}+{}{}",
            printable(&e.name.to_string()),
            e.dtype.dtype().torch_name(),
            e.shape.to_string(),
            e.tensor_type.name(),
            h.module_idx,
            e.data_offset,
            e.data_length,
            if e.is_meta() { " (meta)" } else { "" }
        );
    }
    Ok(out)
}

fn inspect(
    path: &str,
    as_json: bool,
    key: &KeyArgs,
    storage: &StorageOptions,
) -> Result<ExitCode, Error> {
    if is_checkpoint(path) {
        if as_json {
            return Err(Error::Checkpoint {
                uri: shown(path).to_string(),
                message: "inspect --json describes one file: give a shard's URI".into(),
            });
        }
        let c = open_checkpoint(path, key, storage)?;
        emit(&format!(
            "{}: checkpoint of {} files, {} tensors, {} bytes of tensor data",
            shown(path),
            c.shards().len(),
            c.len(),
            c.tensor_bytes()
        ));
        for d in c.shards() {
            emit(&describe(d)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let d = open(path, key, storage)?;
    if !as_json {
        emit(&describe(&d)?);
        return Ok(ExitCode::SUCCESS);
    }
    // Every tensor is hashed (its bytes, for the `sha256` field) and
    // checked against its stored CRC-32 and SHA-256 (and MACs), in
    // parallel; `verified` and `ok` say what was found.
    let (bar, callback) = progress_callback("inspecting");
    let d = d
        .verify(Verify::All)
        .on_progress(move |p: &tensorizer::Progress<'_>| callback(p));
    let header = &d.metadata().header;
    // A safetensors file stores no hashes: its tensors are read and hashed,
    // and `verified` stays null.
    let safetensors = matches!(d.format(), tensorizer::FileFormat::Safetensors { .. });
    let checks = if safetensors {
        d.check(|_| true, true)
    } else {
        d.check_strict(|_| true, true)
    };
    bar.finish_and_clear();
    let mut tensors = Vec::with_capacity(d.len());
    let mut failed = 0;
    for check in &checks {
        let e = &d.entries()[check.index];
        let (tensor_type, module_idx) = match &check.info {
            Some(info) => (info.tensor_type, info.module_idx),
            None => {
                let h = d.read_header(check.index)?;
                (h.tensor_type, h.module_idx)
            }
        };
        let mut rec = json!({
            "name": path_json(e.name.path()),
            "name_hex": hex(e.name.as_bytes()),
            "dtype": e.dtype.dtype().torch_name(),
            "shape": e.shape.dims(),
            "nbytes": e.deserialized_length(),
            "sha256": check.data_sha256.map(|d| hex(&d)),
            "tensor_type": tensor_type.name(),
            "module_idx": module_idx,
            "file_dtype": e.dtype.as_str(),
            "data_length": e.data_length,
            "header_offset": e.header_offset,
            "data_offset": e.data_offset,
            "meta": e.is_meta(),
            // What was checked: a tensor is `verified` only against these.
            "checked": check.stored.map(|s| s.names()).unwrap_or_default(),
        });
        match &check.outcome {
            Ok(()) if safetensors => rec["verified"] = Value::Null,
            Ok(()) => rec["verified"] = true.into(),
            // Listing an encrypted file needs no key; checking its data would.
            Err(Error::Encrypted { .. }) => rec["verified"] = Value::Null,
            Err(err) => {
                rec["verified"] = false.into();
                rec["error"] = err.to_string().into();
                eprintln!("tensorizer: {}", printable(&err.to_string()));
                failed += 1;
            }
        }
        tensors.push(rec);
    }
    let size = d.source().len();
    let doc = json!({
        "file": shown(path).as_str().rsplit('/').next(),
        "file_size": size,
        "file_sha256": file_sha256(d.source())?,
        "reader": concat!("tensorizer-rs ", env!("CARGO_PKG_VERSION")),
        "format": if safetensors { "safetensors" } else { "tensorizer" },
        "magic_ok": true,
        "format_version": header.version.get(),
        "feature_flags": header.flags.bits(),
        "header_tensor_size": header.tensor_size,
        "header_tensor_count": header.tensor_count,
        "metadata_size": d.metadata().index_len,
        "tensor_count": tensors.len(),
        "tensors": tensors,
        "failed_tensors": failed,
        "ok": failed == 0,
    });
    emit(&doc.to_string());
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Checks every tensor on all cores (each hashed while later reads are in
/// flight), one line per failing tensor.
fn verify(
    path: &str,
    sha256: Option<&str>,
    key: &KeyArgs,
    storage: &StorageOptions,
) -> Result<ExitCode, Error> {
    let expected = expected_sha256(sha256)?;
    if is_checkpoint(path) {
        if expected.is_some() {
            return Err(Error::Checkpoint {
                uri: shown(path).to_string(),
                message: "--sha256 names one file's digest: give the file's URI".into(),
            });
        }
        let (bar, callback) = progress_callback("verifying");
        let c = open_checkpoint(path, key, storage)?
            .verify(Verify::All)
            .on_progress(move |p: &tensorizer::Progress<'_>| callback(p));
        // Shards are verified one after another, each on all cores.
        let mut failed = false;
        let shards: Vec<_> = c.shards().iter().collect();
        for d in shards {
            failed |= verify_file(d, &bar)? != ExitCode::SUCCESS;
        }
        bar.finish_and_clear();
        if failed {
            eprintln!("tensorizer: {}: verification failed", shown(path));
            return Ok(ExitCode::FAILURE);
        }
        println!("{}: {} files OK", shown(path), c.shards().len());
        return Ok(ExitCode::SUCCESS);
    }
    let (bar, callback) = progress_callback("verifying");
    let mut d = open(path, key, storage)?
        .verify(Verify::All)
        .on_progress(move |p: &tensorizer::Progress<'_>| callback(p));
    if let Some(digest) = expected {
        d = d.expect_sha256(digest);
    }
    let code = verify_file(&d, &bar)?;
    bar.finish_and_clear();
    Ok(code)
}

/// Verifies one file: a tensorizer file's stored hashes and MACs, a
/// safetensors file's SHA-256 (which must be known); one line per
/// failure, one summary line.
fn verify_file(d: &Deserializer, bar: &ProgressBar) -> Result<ExitCode, Error> {
    let started = Instant::now();
    let path = &d.path().to_string_lossy().into_owned();
    if matches!(d.format(), tensorizer::FileFormat::Safetensors { .. }) {
        let Some(expected) = d.expected_sha256() else {
            bar.suspend(|| {
                eprintln!(
                    "tensorizer: {}: a safetensors file stores no hashes: nothing verifies it \
                     (give --sha256 HEX, or read it from a Hugging Face cache snapshot, whose blobs \
                     are named by their SHA-256)",
                    shown(path)
                )
            });
            return Ok(ExitCode::FAILURE);
        };
        let checks = d.check(|_| true, false);
        let failures: Vec<_> = checks
            .iter()
            .filter_map(|c| c.outcome.as_ref().err())
            .collect();
        for err in &failures {
            bar.suspend(|| eprintln!("tensorizer: {}", printable(&err.to_string())));
        }
        if !failures.is_empty() {
            return Ok(ExitCode::FAILURE);
        }
        let secs = started.elapsed().as_secs_f64();
        let size = d.source().len();
        bar.suspend(|| {
            println!(
                "{}: SHA-256 {} OK, {} tensors, {size} bytes in {secs:.2} s ({:.2} GiB/s)",
                shown(path),
                hex(&expected),
                d.len(),
                size as f64 / secs / (1u64 << 30) as f64
            )
        });
        return Ok(ExitCode::SUCCESS);
    }
    let checks = d.check_strict(|_| true, false);
    let mut failures = 0;
    let mut without_key = 0;
    for check in &checks {
        match &check.outcome {
            Ok(()) => {}
            // One line for the file, not one per tensor.
            Err(err @ Error::Encrypted { .. }) => {
                if without_key == 0 {
                    eprintln!(
                        "tensorizer: {err} (give --key-file, --passphrase-file or TENSORIZER_PASSPHRASE)"
                    );
                }
                without_key += 1;
                failures += 1;
            }
            Err(err) => {
                eprintln!("tensorizer: {}", printable(&err.to_string()));
                failures += 1;
            }
        }
    }
    if failures > 0 {
        eprintln!(
            "tensorizer: {}: {failures} of {} tensors failed verification",
            shown(path),
            d.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    let _ = bar;
    // Bytes whose hashes or MACs were checked: stored data, not the zeros
    // a meta tensor claims.
    let total: u64 = checks
        .iter()
        .map(|c| d.entries()[c.index].data_length)
        .sum();
    let secs = started.elapsed().as_secs_f64();
    // What was actually checked, counted over the tensors.
    let count = |f: fn(&tensorizer::StoredChecks) -> bool| {
        checks
            .iter()
            .filter(|c| c.stored.as_ref().is_some_and(f))
            .count()
    };
    let mut parts = Vec::new();
    for (n, what) in [
        (count(|s| s.macs), "MACs"),
        (count(|s| s.crc32), "CRC-32"),
        (count(|s| s.sha256), "SHA-256"),
    ] {
        if n > 0 {
            parts.push(format!("{what}: {n}"));
        }
    }
    let meta = count(|s| !s.has_data);
    if meta > 0 {
        parts.push(format!(
            "{meta} without data (meta or empty: only their headers checked)"
        ));
    }
    let what = parts.join(", ");
    println!(
        "{}: {} tensors OK ({what}), {} bytes in {secs:.2} s ({:.2} GiB/s)",
        shown(path),
        d.len(),
        total,
        total as f64 / secs / (1u64 << 30) as f64
    );
    Ok(ExitCode::SUCCESS)
}

fn load(
    path: &str,
    sha256: Option<&str>,
    verify: VerifyArg,
    num_readers: Option<usize>,
    key: &KeyArgs,
    storage: &StorageOptions,
) -> Result<ExitCode, Error> {
    let started = Instant::now();
    let expected = expected_sha256(sha256)?;
    if is_checkpoint(path) {
        let mut c = open_checkpoint(path, key, storage)?.verify(verify.into());
        if let Some(n) = num_readers {
            c = c.num_readers(n);
        }
        let opened = started.elapsed().as_secs_f64();
        let (bar, callback) = progress_callback("loading");
        let c = c.on_progress(move |p: &tensorizer::Progress<'_>| callback(p));
        let tensors = c.read_all();
        let secs = started.elapsed().as_secs_f64();
        bar.finish_and_clear();
        let tensors = tensors?;
        let bytes: u64 = tensors.iter().map(|t| t.as_bytes().len() as u64).sum();
        let hashed = c
            .shards()
            .iter()
            .filter(|d| d.expected_sha256().is_some())
            .count();
        println!(
            "{}: {} files, {} tensors, {bytes} bytes in {secs:.3} s ({:.2} GiB/s; open {:.3} s; {hashed} files checked against their SHA-256)",
            shown(path),
            c.shards().len(),
            tensors.len(),
            bytes as f64 / secs / (1u64 << 30) as f64,
            opened,
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut d = open(path, key, storage)?.verify(verify.into());
    if let Some(digest) = expected {
        d = d.expect_sha256(digest);
    }
    if let Some(n) = num_readers {
        d = d.num_readers(n);
    }
    let opened = started.elapsed().as_secs_f64();
    let (bar, callback) = progress_callback("loading");
    let d = d.on_progress(move |p: &tensorizer::Progress<'_>| callback(p));
    let tensors = d.read_all();
    let secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let tensors = tensors?;
    let bytes: u64 = tensors.iter().map(|t| t.as_bytes().len() as u64).sum();
    if !matches!(verify, VerifyArg::None)
        && d.verified_tensors() == 0
        && d.expected_sha256().is_none()
    {
        eprintln!(
            "warning: {}: nothing was verified: no tensor stores a hash that --verify {} checks \
             (nor a MAC)",
            shown(path),
            verify
                .to_possible_value()
                .expect("no skipped values")
                .get_name()
        );
    }
    println!(
        "{}: {} tensors, {bytes} bytes in {secs:.3} s ({:.2} GiB/s; open {:.3} s; verify {})",
        shown(path),
        tensors.len(),
        bytes as f64 / secs / (1u64 << 30) as f64,
        opened,
        verify
            .to_possible_value()
            .expect("no skipped values")
            .get_name()
    );
    drop(tensors);
    Ok(ExitCode::SUCCESS)
}

fn convert(input: &str, output: &str, storage: &StorageOptions) -> Result<ExitCode, Error> {
    let started = Instant::now();
    // A tensorizer file becomes a safetensors file; anything else is read
    // as a safetensors checkpoint.
    let tensorizer_input = !is_checkpoint(input)
        && matches!(
            Deserializer::open_uri_with(input, storage).map(|d| d.format().clone()),
            Ok(tensorizer::FileFormat::Tensorizer)
        );
    if tensorizer_input {
        let s = tensorizer::safetensors::tensorizer_to_safetensors_uri(input, output, storage)?;
        println!(
            "{} -> {} (safetensors): {} tensors, {} bytes in {:.2} s",
            shown(input),
            shown(output),
            s.tensors,
            s.tensor_bytes,
            started.elapsed().as_secs_f64()
        );
    } else {
        let s = tensorizer::safetensors::checkpoint_to_tensorizer(input, output, storage)?;
        println!(
            "{} -> {} (tensorizer v{}): {} tensors, {} bytes in {:.2} s",
            shown(input),
            shown(output),
            s.version,
            s.tensors,
            s.bytes,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}
