//! `cargo xtask bench`: one command, one run, one table. Builds the release
//! binaries, makes (or takes) a model, starts nginx (HTTP and a static
//! S3, GCS and Azure endpoint), redis-server, fake-gcs-server and Azurite
//! on loopback ports, measures every row in its own process
//! (so peak RSS is the row's own), prints the table with ratios and
//! rewrites the generated section of `BENCHMARKS.md`.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Result, cargo, root, run};
use emulators::free_port;

#[path = "../../crates/tensorizer-io/tests/support/emulators.rs"]
mod emulators;

struct Options {
    size: String,
    model: Option<PathBuf>,
    runs: usize,
    write_report: bool,
    strict: bool,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        size: "2GiB".into(),
        model: None,
        runs: 5,
        write_report: true,
        strict: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--size" => o.size = value()?,
            "--model" => o.model = Some(value()?.into()),
            "--runs" => o.runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--no-report" => o.write_report = false,
            // Smoke runs (in `cargo xtask test`): every row must produce a number.
            "--strict" => o.strict = true,
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: cargo xtask bench [--size 2GiB | --model FILE] [--runs 5] [--no-report] [--strict]"
                ));
            }
        }
    }
    Ok(o)
}

/// A server child, killed on drop.
struct Server {
    port: u16,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(program: &str, args: &[String], port: u16) -> Result<Server> {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            format!(
                "cannot start {program}: {e} (run `cargo xtask test` once: it installs the servers)"
            )
        })?;
    let server = Server { port, child };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("{program} did not start on port {port}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(server)
}

/// One measurement: GiB/s per run and peak RSS, from a child's JSON line.
#[derive(Debug, Clone)]
struct Sample {
    median: f64,
    rss_mib: f64,
    /// Peak RSS during the writes above the RSS with the model loaded
    /// (serialize rows).
    write_rss_mib: Option<f64>,
    /// Every run's GiB/s, sorted.
    rates: Vec<f64>,
}

impl Sample {
    fn new(mut rates: Vec<f64>, rss_mib: f64) -> Option<Sample> {
        rates.sort_by(f64::total_cmp);
        Some(Sample {
            median: *rates.get(rates.len() / 2)?,
            rss_mib,
            write_rss_mib: None,
            rates,
        })
    }

    /// The fastest run: on a noisy VM, the run least disturbed.
    fn best(&self) -> f64 {
        self.rates.last().copied().unwrap_or(0.0)
    }

    /// The runs of both, as one sample.
    fn merge(a: Option<Sample>, b: Option<Sample>) -> Option<Sample> {
        match (a, b) {
            (Some(a), Some(b)) => {
                let write = match (a.write_rss_mib, b.write_rss_mib) {
                    (Some(x), Some(y)) => Some(x.max(y)),
                    (x, y) => x.or(y),
                };
                let mut s = Sample::new([a.rates, b.rates].concat(), a.rss_mib.max(b.rss_mib))?;
                s.write_rss_mib = write;
                Some(s)
            }
            (a, b) => a.or(b),
        }
    }
}

/// Measures `a` and `b` alternately, `rounds` processes each: writers
/// depend on how fast the kernel hands out fresh page-cache memory, which
/// on a VM drifts with what ran before; alternating gives both the same
/// drift.
fn interleaved(
    rounds: usize,
    (what_a, a): (&str, &dyn Fn() -> Command),
    (what_b, b): (&str, &dyn Fn() -> Command),
) -> (Option<Sample>, Option<Sample>) {
    let (mut sa, mut sb) = (None, None);
    for _ in 0..rounds {
        sa = Sample::merge(sa, measure(what_a, &mut a()).ok());
        sb = Sample::merge(sb, measure(what_b, &mut b()).ok());
    }
    (sa, sb)
}

fn measure(what: &str, cmd: &mut Command) -> Result<Sample> {
    eprintln!("  measuring {what}");
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{what}: {}", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    // Fields may sit on any line of the output (bench-load prints the
    // writes' RSS on a line of its own).
    let field = |name: &str| -> Option<&str> {
        let at = text.find(&format!("\"{name}\":"))? + name.len() + 3;
        Some(text[at..].trim_start())
    };
    let number = |name: &str| -> Option<f64> {
        let s = field(name)?;
        let end = s.find([',', '}', '\n']).unwrap_or(s.len());
        s[..end].trim().parse().ok()
    };
    let mut rates: Vec<f64> = field("gib_s")
        .and_then(|s| s.strip_prefix('['))
        .and_then(|s| s.split(']').next())
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_default();
    // The CLI's `load` line: "... in 0.221 s (3.61 GiB/s; ...)".
    if rates.is_empty()
        && let Some(rate) = line
            .split_once(" GiB/s")
            .and_then(|(head, _)| head.rsplit('(').next())
            .and_then(|r| r.trim().parse().ok())
    {
        rates.push(rate);
    }
    let rss = number("rss_kib").unwrap_or(0.0);
    let write_rss = number("write_rss_kib");
    if rates.is_empty() {
        return Err(format!("{what}: no result in {line:?}"));
    }
    eprintln!("    GiB/s per run: {rates:.2?}");
    let mut sample = Sample::new(rates, rss / 1024.0).ok_or_else(|| format!("{what}: no runs"))?;
    sample.write_rss_mib = write_rss.map(|kib| kib / 1024.0);
    Ok(sample)
}

/// Seconds between fresh-process measurements (see where it is used).
const FRESH_SETTLE_SECS: u64 = 5;

/// One thread spinning per core until dropped: the busy neighbours of a
/// shared node.
struct BusyNeighbours {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl BusyNeighbours {
    fn start() -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..cores)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for BusyNeighbours {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

struct Row {
    name: &'static str,
    sample: Option<Sample>,
    limit: &'static str,
}

pub fn bench(args: &[String]) -> Result {
    let o = parse(args)?;
    let root = root();
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    run(
        "build release binaries (bench-load, tensorizer)",
        cargo().args([
            "build",
            "--release",
            "--locked",
            "-p",
            "tensorizer-benches",
            "-p",
            "tensorizer-cli",
            "--bins",
        ]),
    )?;
    let oracle = crate::setup_oracle()?;
    // tensorizer_rs rows: our Python package, built and installed into the oracle venv.
    crate::install_wheel(&oracle)?;
    crate::setup_servers(&oracle)?;
    run(
        "pip install safetensors==0.4.5 (Python safetensors, the comparison)",
        Command::new(&oracle).args(["-m", "pip", "install", "-q", "safetensors==0.4.5"]),
    )?;
    // Run:ai Model Streamer 0.17.0 and safetensors 0.8 need torch 2: the
    // venv of the Run:ai suite, with our wheel in it too.
    let st_suite = crate::runai::setup()?;
    crate::install_wheel(&st_suite.python)?;
    let bin = root.join("target/release/bench-load");
    let cli = root.join("target/release/tensorizer");

    // The model: made here or given, in the folder nginx serves as bucket `bench`.
    let s3_root = dir.join("s3");
    let bucket = s3_root.join("bench");
    std::fs::create_dir_all(&bucket).map_err(|e| e.to_string())?;
    let model = bucket.join("model.tensors");
    match &o.model {
        Some(given) => {
            std::fs::copy(given, &model).map_err(|e| format!("{}: {e}", given.display()))?;
        }
        None => run(
            &format!("make a {} model", o.size),
            Command::new(&bin)
                .args(["make-model"])
                .arg(&model)
                .args(["--size", &o.size]),
        )?,
    }
    let st = dir.join("model.safetensors");
    let enc = bucket.join("model-encrypted.tensors");
    let key = dir.join("bench.key");
    let _ = std::fs::remove_file(&key);
    run("key", Command::new(&cli).arg("keygen").arg(&key))?;
    run(
        "encrypted copy",
        Command::new(&cli)
            .arg("encrypt")
            .arg(&model)
            .arg(&enc)
            .arg("--key-file")
            .arg(&key),
    )?;
    run(
        "safetensors copy",
        Command::new(&cli).arg("convert").arg(&model).arg(&st),
    )?;
    // The same model as safetensors, in the bucket folder (HTTP and S3 serve it).
    let st_remote = bucket.join("model.safetensors");
    let _ = std::fs::remove_file(&st_remote);
    std::fs::hard_link(&st, &st_remote)
        .or_else(|_| std::fs::copy(&st, &st_remote).map(drop))
        .map_err(|e| format!("{}: {e}", st_remote.display()))?;
    let key_hex: String = std::fs::read(&key)
        .map_err(|e| e.to_string())?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();

    let nginx_dir = tempfile_dir(&dir, "nginx")?;
    let http_port = free_port();
    std::fs::write(
        nginx_dir.join("nginx.conf"),
        format!(
            "daemon off; master_process off; pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{ log_format bytes '$body_bytes_sent'; access_log {d}/access.log bytes; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};\n\
             uwsgi_temp_path {d}; scgi_temp_path {d}; sendfile on; keepalive_requests 10000;\n\
             server {{ listen 127.0.0.1:{http_port}; root {root}; }} }}\n",
            d = nginx_dir.display(),
            root = s3_root.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or("nginx is not installed (cargo xtask test installs it)")?;
    let _nginx = start(
        nginx,
        &[
            "-c".into(),
            nginx_dir.join("nginx.conf").display().to_string(),
            "-p".into(),
            nginx_dir.display().to_string(),
        ],
        http_port,
    )?;
    let redis_port = free_port();
    let redis = start(
        "redis-server",
        &[
            "--port".into(),
            redis_port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
        ],
        redis_port,
    )?;
    let redis_uri = format!("redis://127.0.0.1:{}/bench", redis.port);
    run(
        "copy the model into Redis",
        Command::new(&cli).arg("copy").arg(&model).arg(&redis_uri),
    )?;
    // nginx answers Azure's path-style GETs below the account name too.
    let account = s3_root.join("devstoreaccount1");
    let _ = std::fs::remove_file(&account);
    std::os::unix::fs::symlink(".", &account).map_err(|e| e.to_string())?;
    // The emulators, with the model copied in by the CLI (whose upload
    // time is the emulator's, not a row).
    let gcs = emulators::fake_gcs("bench")?;
    let azurite = emulators::azurite("bench")?;
    let gcs_emulator = format!("127.0.0.1:{}", gcs.port);
    let azurite_url = format!("http://127.0.0.1:{}", azurite.port);
    let into_emulators = |uri: &str| {
        let mut c = Command::new(&cli);
        c.arg("copy")
            .arg(&model)
            .arg(uri)
            .env("STORAGE_EMULATOR_HOST", &gcs_emulator)
            .env("AZURE_STORAGE_USE_EMULATOR", "true")
            .env("AZURITE_BLOB_STORAGE_URL", &azurite_url);
        c
    };
    run(
        "copy the model into fake-gcs-server",
        &mut into_emulators("gs://bench/model.tensors"),
    )?;
    run(
        "copy the model into Azurite",
        &mut into_emulators("az://bench/model.tensors"),
    )?;

    // nginx serves the bucket folder, so it answers path-style S3 GETs
    // (`/bench/model.tensors`, signature ignored) as fast as plain HTTP: the
    // S3 rows measure the S3 clients, not a slow local S3 server (moto and
    // s3s-fs re-hash the whole object per request; see the io benchmark).
    let http_url = format!("http://127.0.0.1:{http_port}/bench/model.tensors");
    let s3_uri = "s3://bench/model.tensors";
    let s3_endpoint = format!("http://127.0.0.1:{http_port}");
    let runs = o.runs.to_string();
    let ours = |args: &[&str]| {
        let mut c = Command::new(&bin);
        c.args(args).args(["--runs", &runs]);
        c.env("S3_ACCESS_KEY_ID", "benchkey")
            .env("S3_SECRET_ACCESS_KEY", "benchsecret");
        c
    };
    let python = |args: &[&str]| {
        let mut c = Command::new(&oracle);
        c.arg(root.join("scripts/bench_python.py"))
            .args(args)
            .args(["--runs", &runs]);
        c.env("S3_ACCESS_KEY_ID", "benchkey")
            .env("S3_SECRET_ACCESS_KEY", "benchsecret");
        c
    };
    let m = model.to_str().ok_or("non-UTF-8 path")?;
    let e = enc.to_str().ok_or("non-UTF-8 path")?;
    let out = dir.join("out.tensors");
    let out = out.to_str().ok_or("non-UTF-8 path")?;
    let py_out = dir.join("out-python.tensors");
    let rs_out = dir.join("out-tensorizer-rs.tensors");
    let py_out = py_out.to_str().ok_or("non-UTF-8 path")?;
    let rs_out = rs_out.to_str().ok_or("non-UTF-8 path")?.to_owned();
    let k = key.to_str().ok_or("non-UTF-8 path")?;
    // Writers compared without the disk: tmpfs (fsync is free there).
    let shm_dir = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        dir.clone()
    };
    let shm_out = shm_dir.join("tensorizer-bench-out.tensors");
    let shm_out = shm_out.to_str().ok_or("non-UTF-8 path")?.to_owned();
    let shm_py_out = shm_dir.join("tensorizer-bench-out-python.tensors");
    let shm_py_out = shm_py_out.to_str().ok_or("non-UTF-8 path")?.to_owned();
    let shm_rs_out = shm_dir.join("tensorizer-bench-out-tensorizer-rs.tensors");
    let shm_rs_out = shm_rs_out.to_str().ok_or("non-UTF-8 path")?.to_owned();

    // The files just made are still being written back: flushing them now
    // keeps the kernel's writeback threads off the cores being measured.
    run(
        "sync (flush the files just made)",
        &mut Command::new("sync"),
    )?;
    eprintln!("\n==> measuring ({} runs each, median)", o.runs);
    let best = |a: Result<Sample>, b: Result<Sample>| -> Option<Sample> {
        match (a.ok(), b.ok()) {
            (Some(x), Some(y)) => Some(if x.median >= y.median { x } else { y }),
            (x, y) => x.or(y),
        }
    };
    // The writers run first and alternately (see `interleaved`).
    let (ours_tmpfs, python_tmpfs) = interleaved(
        2,
        ("ours serialize tmpfs", &|| {
            ours(&["serialize", m, &shm_out])
        }),
        ("python serialize tmpfs", &|| {
            python(&["serialize", m, &shm_py_out])
        }),
    );
    let (ours_disk, python_disk) = interleaved(
        2,
        ("ours serialize", &|| ours(&["serialize", m, out])),
        ("python serialize", &|| python(&["serialize", m, py_out])),
    );
    // The Python package against the library: tensorizer_rs fsyncs a local
    // file before renaming it into place, so to disk the library is timed
    // with an fsync too (like with like); on tmpfs fsync costs nothing.
    let (rs_tmpfs, python_tmpfs_2) = interleaved(
        2,
        ("tensorizer_rs serialize tmpfs", &|| {
            python(&["serialize", m, &shm_rs_out, "--rs"])
        }),
        ("python serialize tmpfs", &|| {
            python(&["serialize", m, &shm_py_out])
        }),
    );
    let (rs_disk, python_fsync) = interleaved(
        2,
        ("tensorizer_rs serialize", &|| {
            python(&["serialize", m, &rs_out, "--rs"])
        }),
        ("python serialize + fsync", &|| {
            python(&["serialize", m, py_out, "--fsync"])
        }),
    );
    let python_tmpfs = Sample::merge(python_tmpfs, python_tmpfs_2);
    for f in [&shm_out, &shm_py_out, &shm_rs_out] {
        let _ = std::fs::remove_file(f);
    }
    // Fresh processes, one load each (imports and start-up excluded): what a
    // pod does at start. The three loaders alternate round by round, so
    // page-cache and THP drift hit them alike, and each starts a few
    // seconds after the previous one ended: on a VM that reports free
    // memory to its host (virtio-balloon free page reporting, here after
    // about 2 s), a process started at once reuses its predecessor's
    // still-backed pages while one started later (after importing torch,
    // say) faults them in from the host: the CLI measured 0.42 s right
    // after a load and 1.4-1.8 s four seconds later, for the same 1 GiB.
    // Waiting gives every loader the fresh memory a pod starts with.
    let settle = || std::thread::sleep(Duration::from_secs(FRESH_SETTLE_SECS));
    let fresh_python = |lib: &str, file: &str, encrypted: bool| {
        let mut c = Command::new(&oracle);
        c.arg(root.join("scripts/bench_python.py"))
            .args(["tensorizer", file, "--runs", "1"]);
        if lib == "rs" {
            c.arg("--rs");
        }
        if encrypted {
            c.args(["--key-hex", &key_hex]);
        }
        c
    };
    let fresh_cli = |file: &str, encrypted: bool| {
        let mut c = Command::new(&cli);
        c.args(["load", file, "--verify", "none"]);
        if encrypted {
            c.args(["--key-file", k]);
        }
        c
    };
    let mut fresh: [Option<Sample>; 6] = Default::default();
    for _ in 0..o.runs {
        for (i, encrypted) in [false, true].into_iter().enumerate() {
            let file = if encrypted { e } else { m };
            let tag = if encrypted { " encrypted" } else { "" };
            let at = 3 * i;
            settle();
            fresh[at] = Sample::merge(
                fresh[at].take(),
                measure(
                    &format!("fresh python{tag}"),
                    &mut fresh_python("py", file, encrypted),
                )
                .ok(),
            );
            settle();
            fresh[at + 1] = Sample::merge(
                fresh[at + 1].take(),
                measure(
                    &format!("fresh tensorizer_rs{tag}"),
                    &mut fresh_python("rs", file, encrypted),
                )
                .ok(),
            );
            settle();
            fresh[at + 2] = Sample::merge(
                fresh[at + 2].take(),
                measure(&format!("fresh CLI{tag}"), &mut fresh_cli(file, encrypted)).ok(),
            );
        }
    }
    // One model, many ranks (gloo on loopback), from the S3 endpoint:
    // the group reading each byte once (distributed) against every rank
    // reading all of it; bytes served counted in nginx's access log.
    let served = || served_bytes(&nginx_dir.join("access.log"));
    let mut distributed = Vec::new();
    for world in [1usize, 2, 4] {
        for mode in ["all", "dist"] {
            if world == 1 && mode == "dist" {
                continue;
            }
            settle();
            let before = served();
            let sample = measure(
                &format!("distributed {mode} x{world}"),
                Command::new(&oracle)
                    .arg(root.join("scripts/bench_distributed.py"))
                    .args(["s3://bench/model.safetensors", &world.to_string()])
                    .args([
                        "--mode",
                        mode,
                        "--runs",
                        &runs,
                        "--s3-endpoint",
                        &s3_endpoint,
                    ])
                    .env("S3_ACCESS_KEY_ID", "benchkey")
                    .env("S3_SECRET_ACCESS_KEY", "benchsecret"),
            )
            .ok();
            let per_load = served().saturating_sub(before) / o.runs.max(1) as u64;
            distributed.push((world, mode, sample, per_load));
        }
    }
    // The same three loaders while the CPU is shared: one busy neighbour
    // per core (a pod's neighbours, a tokenizer warming up), as a loader
    // meets on a loaded node. The scheduler shares the cores by runnable
    // thread, so how many readers a loader runs decides its share.
    let mut shared: [Option<Sample>; 4] = Default::default();
    {
        let _neighbours = BusyNeighbours::start();
        for _ in 0..o.runs {
            settle();
            shared[0] = Sample::merge(
                shared[0].take(),
                measure("shared python", &mut fresh_python("py", m, false)).ok(),
            );
            settle();
            shared[1] = Sample::merge(
                shared[1].take(),
                measure("shared tensorizer_rs", &mut fresh_python("rs", m, false)).ok(),
            );
            settle();
            shared[2] = Sample::merge(
                shared[2].take(),
                measure("shared CLI", &mut fresh_cli(m, false)).ok(),
            );
            settle();
            shared[3] = Sample::merge(
                shared[3].take(),
                measure("shared pread", &mut ours(&["pread", m, "--runs", "1"])).ok(),
            );
        }
    }
    // Safetensors loaders, each in its own process: ours (Rust, the CLI's
    // engine), our Run:ai API, Run:ai's package, safetensors 0.8.
    let st_file = st.to_str().ok_or("non-UTF-8 path")?.to_owned();
    let st_s3 = "s3://bench/model.safetensors";
    let st_py = |args: &[&str]| {
        let mut c = Command::new(&st_suite.python);
        c.arg(root.join("scripts/bench_safetensors.py"))
            .args(args)
            .args(["--runs", &runs])
            .env("AWS_ENDPOINT_URL", &s3_endpoint)
            .env("AWS_ACCESS_KEY_ID", "benchkey")
            .env("AWS_SECRET_ACCESS_KEY", "benchsecret")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING", "0");
        c
    };
    let limited = |mut c: Command| {
        c.env("RUNAI_STREAMER_MEMORY_LIMIT", (256u64 << 20).to_string());
        c
    };
    let st_rows = vec![
        Row {
            name: "safetensors: baseline, torch 2 interpreter with the packages imported (RSS only)",
            sample: measure("st baseline", &mut st_py(&["baseline"])).ok(),
            limit: "what peak RSS of the Python rows includes before any load",
        },
        Row {
            name: "safetensors: limit, parallel pread into fresh memory",
            sample: measure("st pread", &mut ours(&["pread", &st_file])).ok(),
            limit: "page faults of fresh memory + page-cache copy",
        },
        Row {
            name: "safetensors: limit, one-thread pread into fresh memory",
            sample: measure(
                "st pread 1",
                &mut ours(&["pread", &st_file, "--threads", "1"]),
            )
            .ok(),
            limit: "one core: faults + copy",
        },
        Row {
            name: "safetensors: limit, mmap, every page touched (no copy)",
            sample: measure("st mmap", &mut ours(&["mmap", &st_file])).ok(),
            limit: "mapping the page cache: what a zero-copy loader costs",
        },
        Row {
            name: "safetensors: limit, parallel pread, cold cache",
            sample: measure("st pread cold", &mut ours(&["pread", &st_file, "--cold"])).ok(),
            limit: "disk",
        },
        Row {
            name: "safetensors: ours (Rust), local warm",
            sample: measure(
                "st ours warm",
                &mut ours(&["load", &st_file, "--verify", "none"]),
            )
            .ok(),
            limit: "as the pread limit",
        },
        Row {
            name: "safetensors: ours (Rust), local cold",
            sample: measure(
                "st ours cold",
                &mut ours(&["load", &st_file, "--verify", "none", "--cold"]),
            )
            .ok(),
            limit: "disk",
        },
        Row {
            name: "safetensors: ours (Rust), S3 (nginx endpoint)",
            sample: measure(
                "st ours s3",
                &mut ours(&[
                    "load",
                    st_s3,
                    "--s3-endpoint",
                    &s3_endpoint,
                    "--verify",
                    "none",
                ]),
            )
            .ok(),
            limit: "loopback TCP + nginx; SigV4 signing",
        },
        Row {
            name: "safetensors: tensorizer_rs runai_model_streamer, local warm",
            sample: measure("st rs-runai warm", &mut st_py(&["runai", &st_file, "--rs"])).ok(),
            limit: "as ours + torch tensors",
        },
        Row {
            name: "safetensors: tensorizer_rs runai_model_streamer, local cold",
            sample: measure(
                "st rs-runai cold",
                &mut st_py(&["runai", &st_file, "--rs", "--cold"]),
            )
            .ok(),
            limit: "disk",
        },
        Row {
            name: "safetensors: tensorizer_rs runai_model_streamer, S3",
            sample: measure("st rs-runai s3", &mut st_py(&["runai", st_s3, "--rs"])).ok(),
            limit: "loopback TCP + nginx",
        },
        Row {
            name: "safetensors: tensorizer_rs runai_model_streamer, 256 MiB limit, tensors dropped",
            sample: measure(
                "st rs-runai limit",
                &mut limited(st_py(&["runai", &st_file, "--rs", "--drop"])),
            )
            .ok(),
            limit: "peak RSS: the limit + the interpreter",
        },
        Row {
            name: "safetensors: runai-model-streamer 0.17.0, local warm",
            sample: measure("st runai warm", &mut st_py(&["runai", &st_file])).ok(),
            limit: "",
        },
        Row {
            name: "safetensors: runai-model-streamer 0.17.0, local cold",
            sample: measure("st runai cold", &mut st_py(&["runai", &st_file, "--cold"])).ok(),
            limit: "disk",
        },
        Row {
            name: "safetensors: runai-model-streamer 0.17.0, S3",
            sample: measure("st runai s3", &mut st_py(&["runai", st_s3])).ok(),
            limit: "loopback TCP + nginx",
        },
        Row {
            name: "safetensors: runai-model-streamer 0.17.0, 256 MiB limit, tensors dropped",
            sample: measure(
                "st runai limit",
                &mut limited(st_py(&["runai", &st_file, "--drop"])),
            )
            .ok(),
            limit: "peak RSS: the limit + the interpreter",
        },
        Row {
            name: "safetensors: safetensors 0.8 load_file (mmap, +clone), local warm",
            sample: measure("st load_file", &mut st_py(&["load_file", &st_file])).ok(),
            limit: "mmap faults + copy, one thread",
        },
        Row {
            name: "safetensors: safetensors 0.8 load_file (mmap, +clone), local cold",
            sample: measure(
                "st load_file cold",
                &mut st_py(&["load_file", &st_file, "--cold"]),
            )
            .ok(),
            limit: "disk, one thread",
        },
        Row {
            name: "safetensors: safetensors 0.8 load_file(backend=\"pread\"), local warm",
            sample: measure(
                "st load_file pread",
                &mut st_py(&["load_file", &st_file, "--backend", "pread"]),
            )
            .ok(),
            limit: "pread, one thread",
        },
        Row {
            name: "safetensors: curl of the same object over HTTP",
            sample: curl(
                &format!("http://127.0.0.1:{http_port}/bench/model.safetensors"),
                o.runs,
            ),
            limit: "loopback TCP: the raw network limit",
        },
    ];
    let [
        fresh_py,
        fresh_rs,
        fresh_cli_plain,
        fresh_py_enc,
        fresh_rs_enc,
        fresh_cli_enc,
    ] = fresh;
    let [shared_py, shared_rs, shared_cli, shared_pread] = shared;
    let rows = vec![
        Row {
            name: "limit: parallel pread, warm cache",
            sample: measure("pread warm", &mut ours(&["pread", m])).ok(),
            limit: "memory bandwidth + page faults",
        },
        Row {
            name: "limit: parallel pread, cold cache",
            sample: measure("pread cold", &mut ours(&["pread", m, "--cold"])).ok(),
            limit: "disk",
        },
        Row {
            name: "ours: local, warm (CRC-32 verified)",
            sample: measure("ours warm", &mut ours(&["load", m])).ok(),
            limit: "page faults of fresh memory, CRC-32",
        },
        Row {
            name: "limit: SHA-256 on every core",
            sample: measure("sha256 limit", &mut ours(&["sha256", m])).ok(),
            limit: "SHA-256 of bytes in memory, one share per core",
        },
        Row {
            name: "ours: local warm, SHA-256 verified",
            sample: measure(
                "ours warm sha256",
                &mut ours(&["load", m, "--verify", "all"]),
            )
            .ok(),
            limit: "SHA-256 on the cores + page faults",
        },
        Row {
            name: "ours: verify (SHA-256, buffers reused)",
            sample: measure("ours check", &mut ours(&["check", m])).ok(),
            limit: "SHA-256 + CRC-32 on the cores + page-cache copy",
        },
        Row {
            name: "ours: local, warm, no verification",
            sample: measure(
                "ours warm noverify",
                &mut ours(&["load", m, "--verify", "none"]),
            )
            .ok(),
            limit: "page faults of fresh memory",
        },
        Row {
            name: "ours: local, cold",
            sample: measure("ours cold", &mut ours(&["load", m, "--cold"])).ok(),
            limit: "disk",
        },
        Row {
            name: "ours: local, warm, encrypted",
            sample: measure("ours encrypted", &mut ours(&["load", e, "--key-file", k])).ok(),
            limit: "XSalsa20-Poly1305 on the cores",
        },
        Row {
            name: "ours: local, warm, encrypted, AVX2 kernels only",
            sample: measure(
                "ours encrypted avx2",
                ours(&["load", e, "--key-file", k]).env("TENSORIZER_SIMD", "avx2"),
            )
            .ok(),
            limit: "as a CPU without AVX-512 (TENSORIZER_SIMD=avx2)",
        },
        Row {
            name: "ours: streaming, 256 MiB budget",
            sample: measure(
                "ours stream",
                &mut ours(&["stream", m, "--budget", "256MiB"]),
            )
            .ok(),
            limit: "as warm; bounded memory",
        },
        Row {
            name: "ours: HTTP (nginx)",
            sample: measure("ours http", &mut ours(&["load", &http_url])).ok(),
            limit: "loopback TCP + nginx on the same 2 cores",
        },
        Row {
            name: "ours: S3 (path-style GETs, nginx as endpoint)",
            sample: measure(
                "ours s3",
                &mut ours(&["load", s3_uri, "--s3-endpoint", &s3_endpoint]),
            )
            .ok(),
            limit: "loopback TCP + nginx; SigV4 signing",
        },
        Row {
            name: "ours: GCS (XML GETs, nginx as endpoint)",
            sample: measure(
                "ours gcs nginx",
                ours(&["load", "gs://bench/model.tensors"])
                    .env("STORAGE_EMULATOR_HOST", format!("127.0.0.1:{http_port}")),
            )
            .ok(),
            limit: "loopback TCP + nginx",
        },
        Row {
            name: "ours: Azure Blob (GETs, nginx as endpoint)",
            sample: measure(
                "ours azure nginx",
                ours(&["load", "az://bench/model.tensors"])
                    .env("AZURE_STORAGE_USE_EMULATOR", "true")
                    .env(
                        "AZURITE_BLOB_STORAGE_URL",
                        format!("http://127.0.0.1:{http_port}"),
                    ),
            )
            .ok(),
            limit: "loopback TCP + nginx; Shared Key signing",
        },
        Row {
            name: "ours: GCS (fake-gcs-server emulator)",
            sample: measure(
                "ours gcs emulator",
                ours(&["load", "gs://bench/model.tensors"])
                    .env("STORAGE_EMULATOR_HOST", &gcs_emulator),
            )
            .ok(),
            limit: "fake-gcs-server (Go, in memory) on the same cores",
        },
        Row {
            name: "ours: Azure Blob (Azurite emulator)",
            sample: measure(
                "ours azure emulator",
                ours(&["load", "az://bench/model.tensors"])
                    .env("AZURE_STORAGE_USE_EMULATOR", "true")
                    .env("AZURITE_BLOB_STORAGE_URL", &azurite_url),
            )
            .ok(),
            limit: "Azurite (Node.js, in memory): its own ceiling",
        },
        Row {
            name: "ours: Redis",
            sample: measure("ours redis", &mut ours(&["load", &redis_uri])).ok(),
            limit: "redis-server (single-threaded)",
        },
        Row {
            name: "ours: serialize (fsync)",
            sample: ours_disk,
            limit: "disk write + fsync, SHA-256",
        },
        Row {
            name: "ours: serialize to tmpfs",
            sample: ours_tmpfs,
            limit: "SHA-256 (1.9 GiB/s/core) + page-cache copies",
        },
        Row {
            name: "python tensorizer 2.12.1: local, warm",
            sample: best(
                measure("python warm", &mut python(&["tensorizer", m])),
                measure(
                    "python warm n8",
                    &mut python(&["tensorizer", m, "--num-readers", "8"]),
                ),
            ),
            limit: "",
        },
        Row {
            name: "python tensorizer: verify_hash=True",
            sample: best(
                measure(
                    "python verify_hash",
                    &mut python(&["tensorizer", m, "--verify-hash"]),
                ),
                measure(
                    "python verify_hash n8",
                    &mut python(&["tensorizer", m, "--verify-hash", "--num-readers", "8"]),
                ),
            ),
            limit: "",
        },
        Row {
            name: "python tensorizer: local, warm, encrypted",
            sample: best(
                measure(
                    "python encrypted",
                    &mut python(&["tensorizer", e, "--key-hex", &key_hex]),
                ),
                measure(
                    "python encrypted n8",
                    &mut python(&["tensorizer", e, "--key-hex", &key_hex, "--num-readers", "8"]),
                ),
            ),
            limit: "",
        },
        Row {
            name: "python tensorizer: HTTP (nginx)",
            sample: best(
                measure("python http", &mut python(&["tensorizer", &http_url])),
                measure(
                    "python http n8",
                    &mut python(&["tensorizer", &http_url, "--num-readers", "8"]),
                ),
            ),
            limit: "curl subprocess per reader",
        },
        Row {
            name: "python tensorizer: S3 (same endpoint)",
            sample: measure(
                "python s3",
                &mut python(&["tensorizer", s3_uri, "--s3-endpoint", &s3_endpoint]),
            )
            .ok(),
            limit: "",
        },
        Row {
            name: "tensorizer_rs (Python, torch tensors): local, warm",
            sample: measure(
                "tensorizer_rs warm",
                &mut python(&["tensorizer", m, "--rs"]),
            )
            .ok(),
            limit: "like ours: page-cache copy; tensors handed to torch by DLPack, no copy",
        },
        Row {
            name: "tensorizer_rs (Python): local, warm, encrypted",
            sample: measure(
                "tensorizer_rs encrypted",
                &mut python(&["tensorizer", e, "--key-hex", &key_hex, "--rs"]),
            )
            .ok(),
            limit: "XSalsa20-Poly1305 on all cores",
        },
        Row {
            name: "tensorizer_rs (Python): serialize (fsync)",
            sample: rs_disk,
            limit: "streams each record at its call; disk write + fsync, SHA-256",
        },
        Row {
            name: "tensorizer_rs (Python): serialize to tmpfs",
            sample: rs_tmpfs,
            limit: "SHA-256 per tensor on all cores + page-cache copies",
        },
        Row {
            name: "python tensorizer: serialize + fsync",
            sample: python_fsync,
            limit: "",
        },
        Row {
            name: "python tensorizer: serialize (no fsync)",
            sample: python_disk,
            limit: "",
        },
        Row {
            name: "python tensorizer: serialize to tmpfs",
            sample: python_tmpfs,
            limit: "",
        },
        Row {
            name: "fresh process: python tensorizer, one load",
            sample: fresh_py,
            limit: "what a pod does at start (imports excluded)",
        },
        Row {
            name: "fresh process: tensorizer_rs, one load",
            sample: fresh_rs,
            limit: "fresh pages: first-touch faults are part of the load",
        },
        Row {
            name: "fresh process: CLI tensorizer load --verify none",
            sample: fresh_cli_plain,
            limit: "the Rust core alone",
        },
        Row {
            name: "shared CPU: python tensorizer, one load",
            sample: shared_py,
            limit: "one busy neighbour per core; fresh process",
        },
        Row {
            name: "shared CPU: tensorizer_rs, one load",
            sample: shared_rs,
            limit: "the scheduler shares the cores by runnable thread",
        },
        Row {
            name: "shared CPU: CLI tensorizer load --verify none",
            sample: shared_cli,
            limit: "",
        },
        Row {
            name: "shared CPU: limit, parallel pread into fresh memory",
            sample: shared_pread,
            limit: "4 readers a core, as ours",
        },
        Row {
            name: "fresh process: python tensorizer, one load, encrypted",
            sample: fresh_py_enc,
            limit: "",
        },
        Row {
            name: "fresh process: tensorizer_rs, one load, encrypted",
            sample: fresh_rs_enc,
            limit: "",
        },
        Row {
            name: "fresh process: CLI tensorizer load, encrypted",
            sample: fresh_cli_enc,
            limit: "",
        },
        Row {
            name: "python safetensors load_file (+clone)",
            sample: measure(
                "safetensors",
                &mut python(&["safetensors", st.to_str().unwrap_or_default()]),
            )
            .ok(),
            limit: "mmap faults + copy",
        },
        Row {
            name: "curl of the same HTTP file",
            sample: curl(&http_url, o.runs),
            limit: "loopback TCP: the raw network limit",
        },
    ];
    let rows: Vec<Row> = rows.into_iter().chain(st_rows).collect();
    let get = |name: &str, rows: &[Row]| {
        rows.iter()
            .find(|r| r.name == name)
            .and_then(|r| r.sample.clone())
            .map(|s| (s.median, s.best()))
    };
    // Ratios of the medians, and of the best runs.
    let ratio = |a: &str, b: &str, rows: &[Row]| match (get(a, rows), get(b, rows)) {
        (Some(x), Some(y)) if y.0 > 0.0 && y.1 > 0.0 => {
            [format!("{:.2}×", x.0 / y.0), format!("{:.2}×", x.1 / y.1)]
        }
        _ => ["n/a".into(), "n/a".into()],
    };
    let st = |what: &str| format!("safetensors: {what}");
    let ratios = vec![
        (
            "safetensors local warm: ours (Rust) / Run:ai (target ≥ 1.5)",
            ratio(
                &st("ours (Rust), local warm"),
                &st("runai-model-streamer 0.17.0, local warm"),
                &rows,
            ),
        ),
        (
            "safetensors local warm: our Run:ai API / Run:ai (target ≥ 1.5)",
            ratio(
                &st("tensorizer_rs runai_model_streamer, local warm"),
                &st("runai-model-streamer 0.17.0, local warm"),
                &rows,
            ),
        ),
        (
            "safetensors S3: ours (Rust) / Run:ai (target ≥ 1.5)",
            ratio(
                &st("ours (Rust), S3 (nginx endpoint)"),
                &st("runai-model-streamer 0.17.0, S3"),
                &rows,
            ),
        ),
        (
            "safetensors S3: our Run:ai API / Run:ai (target ≥ 1.5)",
            ratio(
                &st("tensorizer_rs runai_model_streamer, S3"),
                &st("runai-model-streamer 0.17.0, S3"),
                &rows,
            ),
        ),
        (
            "safetensors local warm: ours (Rust) / safetensors 0.8 load_file (target ≥ 2)",
            ratio(
                &st("ours (Rust), local warm"),
                &st("safetensors 0.8 load_file (mmap, +clone), local warm"),
                &rows,
            ),
        ),
        (
            "safetensors local warm: ours (Rust) / parallel pread limit (within 10%: ≥ 0.9)",
            ratio(
                &st("ours (Rust), local warm"),
                &st("limit, parallel pread into fresh memory"),
                &rows,
            ),
        ),
        (
            "safetensors local cold: ours (Rust) / Run:ai",
            ratio(
                &st("ours (Rust), local cold"),
                &st("runai-model-streamer 0.17.0, local cold"),
                &rows,
            ),
        ),
        (
            "safetensors S3: ours (Rust) / curl (within 10%: ≥ 0.9)",
            ratio(
                &st("ours (Rust), S3 (nginx endpoint)"),
                &st("curl of the same object over HTTP"),
                &rows,
            ),
        ),
        (
            "local warm / python tensorizer (target ≥ 3)",
            ratio(
                "ours: local, warm (CRC-32 verified)",
                "python tensorizer 2.12.1: local, warm",
                &rows,
            ),
        ),
        (
            "local warm / safetensors (target ≥ 1.5)",
            ratio(
                "ours: local, warm (CRC-32 verified)",
                "python safetensors load_file (+clone)",
                &rows,
            ),
        ),
        (
            "local warm / pread limit (target ≥ 0.7)",
            ratio(
                "ours: local, warm (CRC-32 verified)",
                "limit: parallel pread, warm cache",
                &rows,
            ),
        ),
        (
            "SHA-256 verified / SHA-256 limit (target ≥ 0.7)",
            ratio(
                "ours: local warm, SHA-256 verified",
                "limit: SHA-256 on every core",
                &rows,
            ),
        ),
        (
            "verify / SHA-256 limit",
            ratio(
                "ours: verify (SHA-256, buffers reused)",
                "limit: SHA-256 on every core",
                &rows,
            ),
        ),
        (
            "SHA-256 verified / python verify_hash (target ≥ 2.5)",
            ratio(
                "ours: local warm, SHA-256 verified",
                "python tensorizer: verify_hash=True",
                &rows,
            ),
        ),
        (
            "local cold / pread cold limit",
            ratio(
                "ours: local, cold",
                "limit: parallel pread, cold cache",
                &rows,
            ),
        ),
        (
            "encrypted / unencrypted (target ≥ 0.6)",
            ratio(
                "ours: local, warm, encrypted",
                "ours: local, warm (CRC-32 verified)",
                &rows,
            ),
        ),
        (
            "encrypted, AVX2 only / python encrypted",
            ratio(
                "ours: local, warm, encrypted, AVX2 kernels only",
                "python tensorizer: local, warm, encrypted",
                &rows,
            ),
        ),
        (
            "encrypted / python encrypted",
            ratio(
                "ours: local, warm, encrypted",
                "python tensorizer: local, warm, encrypted",
                &rows,
            ),
        ),
        (
            "tensorizer_rs / python tensorizer, torch tensors (Python drop-in)",
            ratio(
                "tensorizer_rs (Python, torch tensors): local, warm",
                "python tensorizer 2.12.1: local, warm",
                &rows,
            ),
        ),
        (
            "tensorizer_rs encrypted / python encrypted",
            ratio(
                "tensorizer_rs (Python): local, warm, encrypted",
                "python tensorizer: local, warm, encrypted",
                &rows,
            ),
        ),
        (
            "tensorizer_rs serialize / python, tmpfs (target ≥ 1.5)",
            ratio(
                "tensorizer_rs (Python): serialize to tmpfs",
                "python tensorizer: serialize to tmpfs",
                &rows,
            ),
        ),
        (
            "tensorizer_rs serialize / python, disk, both fsync (target ≥ 1.5)",
            ratio(
                "tensorizer_rs (Python): serialize (fsync)",
                "python tensorizer: serialize + fsync",
                &rows,
            ),
        ),
        (
            "HTTP / curl (target ≥ 0.8)",
            ratio("ours: HTTP (nginx)", "curl of the same HTTP file", &rows),
        ),
        (
            "S3 / curl (target ≥ 0.8)",
            ratio(
                "ours: S3 (path-style GETs, nginx as endpoint)",
                "curl of the same HTTP file",
                &rows,
            ),
        ),
        (
            "GCS / curl",
            ratio(
                "ours: GCS (XML GETs, nginx as endpoint)",
                "curl of the same HTTP file",
                &rows,
            ),
        ),
        (
            "Azure / curl",
            ratio(
                "ours: Azure Blob (GETs, nginx as endpoint)",
                "curl of the same HTTP file",
                &rows,
            ),
        ),
        (
            "HTTP / python HTTP (target ≥ 2)",
            ratio(
                "ours: HTTP (nginx)",
                "python tensorizer: HTTP (nginx)",
                &rows,
            ),
        ),
        (
            "S3 / python S3",
            ratio(
                "ours: S3 (path-style GETs, nginx as endpoint)",
                "python tensorizer: S3 (same endpoint)",
                &rows,
            ),
        ),
        (
            "fresh process: tensorizer_rs / CLI (target ≥ 0.9)",
            ratio(
                "fresh process: tensorizer_rs, one load",
                "fresh process: CLI tensorizer load --verify none",
                &rows,
            ),
        ),
        (
            "fresh process: tensorizer_rs / python tensorizer (target ≥ 1.8)",
            ratio(
                "fresh process: tensorizer_rs, one load",
                "fresh process: python tensorizer, one load",
                &rows,
            ),
        ),
        (
            "shared CPU: tensorizer_rs / python tensorizer (target ≥ 1)",
            ratio(
                "shared CPU: tensorizer_rs, one load",
                "shared CPU: python tensorizer, one load",
                &rows,
            ),
        ),
        (
            "shared CPU: CLI / python tensorizer (target ≥ 1)",
            ratio(
                "shared CPU: CLI tensorizer load --verify none",
                "shared CPU: python tensorizer, one load",
                &rows,
            ),
        ),
        (
            "fresh process, encrypted: tensorizer_rs / CLI (target ≥ 0.9)",
            ratio(
                "fresh process: tensorizer_rs, one load, encrypted",
                "fresh process: CLI tensorizer load, encrypted",
                &rows,
            ),
        ),
        (
            "fresh process, encrypted: tensorizer_rs / python tensorizer (target ≥ 1.8)",
            ratio(
                "fresh process: tensorizer_rs, one load, encrypted",
                "fresh process: python tensorizer, one load, encrypted",
                &rows,
            ),
        ),
        (
            "serialize to tmpfs / python (target ≥ 3)",
            ratio(
                "ours: serialize to tmpfs",
                "python tensorizer: serialize to tmpfs",
                &rows,
            ),
        ),
        (
            "serialize to disk / python (ours fsyncs, python leaves dirty pages)",
            ratio(
                "ours: serialize (fsync)",
                "python tensorizer: serialize (no fsync)",
                &rows,
            ),
        ),
    ];
    let size = std::fs::metadata(&model).map(|m| m.len()).unwrap_or(0);
    let st_size = std::fs::metadata(&st_file).map(|m| m.len()).unwrap_or(0);
    let report =
        render(&rows, &ratios, size, o.runs) + &render_distributed(&distributed, st_size, o.runs);
    println!("\n{report}");
    let _ = std::fs::remove_file(&shm_out);
    let _ = std::fs::remove_file(&shm_py_out);
    let mut failed: Vec<&str> = rows
        .iter()
        .filter(|r| r.sample.is_none())
        .map(|r| r.name)
        .collect();
    if distributed.iter().any(|(_, _, s, _)| s.is_none()) {
        failed.push("distributed loads");
    }
    if o.strict && !failed.is_empty() {
        return Err(format!("bench rows failed: {}", failed.join("; ")));
    }
    if o.write_report {
        write_report(&root.join("BENCHMARKS.md"), &report)?;
        eprintln!("BENCHMARKS.md updated");
    }
    Ok(())
}

fn tempfile_dir(dir: &Path, name: &str) -> Result<PathBuf> {
    let d = dir.join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
    Ok(d)
}

/// `curl` of the whole file to /dev/null, `runs` times; GiB/s from curl's own timer.
fn curl(url: &str, runs: usize) -> Option<Sample> {
    eprintln!("  measuring curl");
    let rates: Vec<f64> = (0..runs)
        .filter_map(|_| {
            let out = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{speed_download}", url])
                .output()
                .ok()?;
            let bytes_per_s: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
            Some(bytes_per_s / (1u64 << 30) as f64)
        })
        .collect();
    Sample::new(rates, 0.0)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or("?".into(), |kib| {
            format!("{:.0} GiB", kib / 1024.0 / 1024.0)
        });
    format!("{cores} cores of {cpu}, {mem} RAM")
}

fn render(rows: &[Row], ratios: &[(&str, [String; 2])], size: u64, runs: usize) -> String {
    let mut s = format!(
        "Machine: {}. Model: {:.2} GiB of fp16/bf16 tensors at LLM shapes; median and best of {runs} runs, each row in its own process (writers: two processes each, ours and Python alternating, as fresh page-cache memory costs drift on a VM).\n\n\
         | row | GiB/s (median) | best | peak RSS MiB | limited by |\n|---|---:|---:|---:|---|\n",
        machine(),
        size as f64 / (1u64 << 30) as f64
    );
    for r in rows {
        match &r.sample {
            Some(x) => {
                let rss = match x.write_rss_mib {
                    Some(w) => format!("{:.0} (writes: +{w:.0})", x.rss_mib),
                    None => format!("{:.0}", x.rss_mib),
                };
                s += &format!(
                    "| {} | {:.2} | {:.2} | {rss} | {} |\n",
                    r.name,
                    x.median,
                    x.best(),
                    r.limit
                )
            }
            None => s += &format!("| {} | failed | | | {} |\n", r.name, r.limit),
        }
    }
    s += "\n| ratio | of medians | of best runs |\n|---|---:|---:|\n";
    for (name, [median, best]) in ratios {
        s += &format!("| {name} | {median} | {best} |\n");
    }
    s
}

/// Bytes nginx has sent so far, from its access log (one number a line).
fn served_bytes(log: &Path) -> u64 {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .sum()
}

/// The distributed table: per world size and mode, time to give every
/// rank the whole model and the bytes the store served per load.
fn render_distributed(
    rows: &[(usize, &str, Option<Sample>, u64)],
    model: u64,
    runs: usize,
) -> String {
    let gib = (1u64 << 30) as f64;
    let mut s = format!(
        "\nDistributed loads: {:.2} GiB safetensors file from the S3 endpoint (nginx, loopback), \
         N ranks on one gloo group (spawned, 2 cores shared); wall time from a barrier until every \
         rank holds the whole model (median of {runs}); bytes served per load from nginx's log.\n\n\
         | ranks | mode | wall s (median) | GiB/s of model | served per load (× file) | peak RSS MiB (largest rank) |\n\
         |---:|---|---:|---:|---:|---:|\n",
        model as f64 / gib
    );
    for (world, mode, sample, served) in rows {
        let mode = if *mode == "dist" {
            "distributed (each byte read once, broadcast)"
        } else {
            "every rank reads all"
        };
        let times = |x: &Sample| model as f64 / gib / x.median;
        match sample {
            Some(x) => {
                s += &format!(
                    "| {world} | {mode} | {:.2} | {:.2} | {:.2} | {:.0} |\n",
                    times(x),
                    x.median,
                    *served as f64 / model.max(1) as f64,
                    x.rss_mib
                )
            }
            None => s += &format!("| {world} | {mode} | failed | | | |\n"),
        }
    }
    s
}

fn write_report(path: &Path, report: &str) -> Result {
    const START: &str = "<!-- cargo xtask bench: start -->";
    const END: &str = "<!-- cargo xtask bench: end -->";
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| {
        format!("# Benchmarks\n\nWritten by `cargo xtask bench`; the section between the markers is regenerated.\n\n{START}\n{END}\n")
    });
    let section = format!("{START}\n{report}{END}");
    let new = match (old.find(START), old.find(END)) {
        (Some(a), Some(b)) if a < b => format!("{}{section}{}", &old[..a], &old[b + END.len()..]),
        _ => format!("{old}\n{section}\n"),
    };
    std::fs::write(path, new).map_err(|e| format!("{}: {e}", path.display()))
}
