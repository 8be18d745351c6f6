//! `bench-load`: one measurement per process, driven by `cargo xtask bench`
//! (so each row's peak RSS is its own). Prints one JSON object:
//! `{"gib_s": [per run], "bytes": N, "rss_kib": peak resident set}`.
//!
//! ```text
//! bench-load make-model OUT.tensors --size 2GiB     # fp16/bf16 tensors of LLM shapes
//! bench-load pread FILE [--threads N] [--runs R] [--cold]
//! bench-load mmap FILE [--runs R] [--cold]    # the file mapped, every page touched: zero-copy's limit
//! bench-load check URI [--runs R]     # every tensor SHA-256 checked, nothing kept (`tensorizer verify`)
//! bench-load sha256 FILE [--runs R]    # SHA-256 of the file, in memory, on every core: the verified-load limit
//! bench-load load URI [--runs R] [--cold] [--key-file K] [--verify none|crc32|all] [--s3-endpoint E]
//! bench-load stream URI [--runs R] [--budget BYTES]   # bounded-memory streaming into a callback
//! bench-load serialize FILE OUT [--runs R]
//! bench-load cuda FILE [--runs R] [--key-file K]     # file -> GPU 0 (page cache warm)
//! bench-load h2d [--size 4GiB] [--runs R]            # pinned host -> GPU peak
//! ```

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use tensorizer::{
    AlignedBuffer, Decryption, Deserializer, Dtype, EncryptionKey, S3Options, Serializer,
    StorageOptions, TensorData, Verify,
};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() {
    if let Err(e) = run() {
        eprintln!("bench-load: {e}");
        std::process::exit(1);
    }
}

struct Args {
    positional: Vec<String>,
    runs: usize,
    threads: usize,
    cold: bool,
    key_file: Option<String>,
    verify: Verify,
    size: u64,
    budget: u64,
    s3_endpoint: Option<String>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        positional: Vec::new(),
        runs: 3,
        threads: std::thread::available_parallelism().map_or(4, |n| n.get() * 4),
        cold: false,
        key_file: None,
        verify: Verify::Crc32,
        size: 2 << 30,
        budget: 256 << 20,
        s3_endpoint: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--runs" => a.runs = value()?.parse()?,
            "--threads" => a.threads = value()?.parse()?,
            "--cold" => a.cold = true,
            "--key-file" => a.key_file = Some(value()?),
            "--size" => a.size = parse_size(&value()?).ok_or("bad --size")?,
            "--budget" => a.budget = parse_size(&value()?).ok_or("bad --budget")?,
            "--s3-endpoint" => a.s3_endpoint = Some(value()?),
            "--verify" => {
                a.verify = match value()?.as_str() {
                    "none" => Verify::None,
                    "crc32" => Verify::Crc32,
                    "all" => Verify::All,
                    other => return Err(format!("--verify {other}?").into()),
                }
            }
            _ => a.positional.push(arg),
        }
    }
    Ok(a)
}

fn run() -> Result {
    let args = parse_args()?;
    let pos = |i: usize| {
        args.positional
            .get(i)
            .cloned()
            .ok_or("missing argument (see the usage at the top of bench_load.rs)")
    };
    match pos(0)?.as_str() {
        "make-model" => make_model(Path::new(&pos(1)?), args.size),
        "pread" => {
            let file = pos(1)?;
            report(&args, |_| {
                pread_all(Path::new(&file), args.threads, args.cold)
            })
        }
        "mmap" => {
            let file = pos(1)?;
            report(&args, |_| mmap_touch(Path::new(&file), args.cold))
        }
        "sha256" => {
            // Read once, untimed: the limit is hashing alone, one
            // contiguous share of the bytes per core (SHA-256 of one
            // stream is sequential).
            let bytes = std::fs::read(pos(1)?)?;
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            report(&args, |_| {
                std::thread::scope(|s| {
                    for share in bytes.chunks(bytes.len().div_ceil(cores).max(1)) {
                        s.spawn(move || {
                            let mut h = tensorizer_format::TensorHasher::new([
                                tensorizer_format::HashKind::Sha256,
                            ]);
                            h.update(share);
                            std::hint::black_box(h.finish());
                        });
                    }
                });
                Ok(bytes.len() as u64)
            })
        }
        "check" => {
            let uri = pos(1)?;
            let storage = storage(&args);
            report(&args, |_| {
                let d = Deserializer::open_uri_with(&uri, &storage)?.verify(Verify::All);
                let checks = d.check(|_| true, false);
                if let Some(failed) = checks.iter().find_map(|c| c.outcome.as_ref().err()) {
                    return Err(failed.to_string().into());
                }
                Ok(checks.iter().map(|c| c.bytes).sum())
            })
        }
        "load" => {
            let uri = pos(1)?;
            let storage = storage(&args);
            let key = match &args.key_file {
                Some(k) => Some(EncryptionKey::from_key_file(&std::fs::read(k)?)?),
                None => None,
            };
            report(&args, |_| {
                if args.cold {
                    drop_cache(Path::new(&uri));
                }
                let mut d = Deserializer::open_uri_with(&uri, &storage)?.verify(args.verify);
                if let Some(k) = &key {
                    d = d.decryption(Decryption::Key(k.clone()))?;
                }
                let tensors = d.read_all()?;
                Ok(tensors.iter().map(|t| t.as_bytes().len() as u64).sum())
            })
        }
        "stream" => {
            let uri = pos(1)?;
            let storage = storage(&args);
            report(&args, |_| {
                let d = Deserializer::open_uri_with(&uri, &storage)?.verify(args.verify);
                let mut bytes = 0u64;
                d.stream(args.budget, |t| {
                    bytes += t.as_bytes().len() as u64;
                    Ok(())
                })?;
                Ok(bytes)
            })
        }
        "serialize" => {
            let (input, output) = (pos(1)?, pos(2)?);
            let tensors = Deserializer::open(&input)?.read_all()?;
            // What the writes add is measured from here, the model loaded.
            let baseline = reset_peak_rss();
            // The previous output is removed untimed, as the Python script
            // does: freeing 2 GiB of page cache is not the writer's work.
            let remove = || drop(std::fs::remove_file(&output));
            report_prepared(&args, remove, |_| {
                let mut s = Serializer::new();
                s.write_tensors(&tensors)?;
                Ok(s.write_to_file(&output)?.bytes)
            })?;
            println!(
                "{{\"write_rss_kib\": {}}}",
                peak_rss_kib().saturating_sub(baseline)
            );
            Ok(())
        }
        "cuda" => {
            let file = pos(1)?;
            let key = match &args.key_file {
                Some(k) => Some(EncryptionKey::from_key_file(&std::fs::read(k)?)?),
                None => None,
            };
            report(&args, |_| {
                let mut d = Deserializer::open(&file)?.verify(args.verify);
                if let Some(k) = &key {
                    d = d.decryption(Decryption::Key(k.clone()))?;
                }
                let model = d.to_cuda(0, &tensorizer::cuda::CudaOptions::default())?;
                Ok(model.tensors().iter().map(|t| t.len as u64).sum())
            })
        }
        "h2d" => {
            use tensorizer_cuda::{Gpu, StagingRing};
            let gpu = Gpu::open(0, 4)?;
            let piece = 256usize << 20;
            let total = (args.size as usize).div_ceil(piece) * piece;
            let ring = StagingRing::new(&gpu, 4, piece)?;
            let mut device = gpu.alloc(total, "the h2d benchmark")?;
            report(&args, |_| {
                for k in 0..total / piece {
                    let staging = ring.take(piece)?;
                    gpu.upload(staging, &mut device, k * piece)?;
                }
                gpu.synchronize()?;
                Ok(total as u64)
            })
        }
        other => Err(format!("unknown command {other:?}").into()),
    }
}

fn storage(args: &Args) -> StorageOptions {
    StorageOptions {
        s3: S3Options {
            endpoint: args.s3_endpoint.clone(),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Runs `f` `args.runs` times and prints GiB/s per run and the peak RSS.
fn report(args: &Args, f: impl FnMut(usize) -> Result<u64>) -> Result {
    report_prepared(args, || {}, f)
}

/// Like [`report`], running `prepare` untimed before each run.
fn report_prepared(
    args: &Args,
    mut prepare: impl FnMut(),
    mut f: impl FnMut(usize) -> Result<u64>,
) -> Result {
    let mut gib_s = Vec::new();
    let mut bytes = 0;
    for i in 0..args.runs {
        prepare();
        let started = Instant::now();
        bytes = f(i)?;
        gib_s.push(bytes as f64 / started.elapsed().as_secs_f64() / (1u64 << 30) as f64);
    }
    println!(
        "{{\"gib_s\": {gib_s:?}, \"bytes\": {bytes}, \"rss_kib\": {}}}",
        peak_rss_kib()
    );
    Ok(())
}

/// `VmHWM` of this process.
fn peak_rss_kib() -> u64 {
    status_kib("VmHWM:")
}

/// Resets `VmHWM` to the current RSS (`clear_refs` 5) and returns it.
fn reset_peak_rss() -> u64 {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    status_kib("VmRSS:")
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Evicts a local file from the page cache (clean pages only, no root needed).
fn drop_cache(path: &Path) {
    if let Ok(f) = std::fs::File::open(path) {
        use std::os::fd::AsRawFd;
        // SAFETY: advice on an open descriptor; no memory is touched.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
}

/// The hardware limit for a loader: the whole file into fresh memory with
/// parallel 16 MiB `pread`s.
fn pread_all(path: &Path, threads: usize, cold: bool) -> Result<u64> {
    if cold {
        drop_cache(path);
    }
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len() as usize;
    let mut buf = AlignedBuffer::zeroed(len).ok_or("allocation")?;
    let piece = 16 << 20;
    let queue = std::sync::Mutex::new(buf.chunks_mut(piece).enumerate().collect::<Vec<_>>());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let Some((i, chunk)) = queue.lock().unwrap().pop() else {
                        return;
                    };
                    file.read_exact_at(chunk, (i * piece) as u64).unwrap();
                }
            });
        }
    });
    Ok(len as u64)
}

/// What a zero-copy loader costs at least: the file mapped read-only and
/// one byte of every page read, so every page is faulted in (from the page
/// cache when warm), nothing copied.
fn mmap_touch(path: &Path, cold: bool) -> Result<u64> {
    use std::os::fd::AsRawFd;
    if cold {
        drop_cache(path);
    }
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len() as usize;
    // SAFETY: a read-only private mapping of a file nothing else writes
    // during the measurement; unmapped below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error().into());
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let base = ptr as usize;
    let share = len.div_ceil(cores).next_multiple_of(4096);
    std::thread::scope(|s| {
        for k in 0..cores {
            s.spawn(move || {
                let mut sum = 0u8;
                let mut at = k * share;
                while at < len.min((k + 1) * share) {
                    // SAFETY: inside the mapping of `len` bytes.
                    sum ^= unsafe { std::ptr::read_volatile((base + at) as *const u8) };
                    at += 4096;
                }
                std::hint::black_box(sum);
            });
        }
    });
    // SAFETY: the mapping made above, no longer used.
    unsafe { libc::munmap(ptr, len) };
    Ok(len as u64)
}

/// A decoder's tensors (bf16 attention, fp16 MLP, f32 norms) at LLM shapes
/// until `size` bytes are used; random contents.
fn make_model(out: &Path, size: u64) -> Result {
    let hidden: u64 = if size >= 1 << 30 { 4096 } else { 1024 };
    let inter = hidden * 11 / 4;
    let mut layout: Vec<(String, Dtype, Vec<u64>)> = vec![(
        "model.embed_tokens.weight".into(),
        Dtype::BF16,
        vec![32000.min(size / hidden / 8), hidden],
    )];
    let bytes = |d: Dtype, s: &[u64]| s.iter().product::<u64>() * d.itemsize() as u64;
    let mut total = bytes(layout[0].1, &layout[0].2);
    let mut layer = 0;
    while total < size {
        for (n, d, s) in [
            ("self_attn.q_proj.weight", Dtype::BF16, vec![hidden, hidden]),
            ("self_attn.k_proj.weight", Dtype::BF16, vec![hidden, hidden]),
            ("self_attn.v_proj.weight", Dtype::BF16, vec![hidden, hidden]),
            ("self_attn.o_proj.weight", Dtype::BF16, vec![hidden, hidden]),
            ("mlp.gate_proj.weight", Dtype::F16, vec![inter, hidden]),
            ("mlp.up_proj.weight", Dtype::F16, vec![inter, hidden]),
            ("mlp.down_proj.weight", Dtype::F16, vec![hidden, inter]),
            ("input_layernorm.weight", Dtype::F16, vec![hidden]),
            ("post_attention_layernorm.weight", Dtype::F16, vec![hidden]),
        ] {
            if total >= size {
                break;
            }
            total += bytes(d, &s);
            layout.push((format!("model.layers.{layer}.{n}"), d, s));
        }
        layer += 1;
    }
    let buffers: Vec<Vec<u8>> = layout
        .iter()
        .enumerate()
        .map(|(i, (_, d, s))| {
            let mut b = vec![0u8; bytes(*d, s) as usize];
            fill(&mut b, i as u64);
            b
        })
        .collect();
    let mut s = Serializer::new();
    for ((name, dtype, shape), data) in layout.iter().zip(&buffers) {
        s.write_state_dict([(name.as_str(), TensorData::new(*dtype, shape, data)?)])?;
    }
    let summary = s.write_to_file(out)?;
    println!(
        "{{\"bytes\": {}, \"tensors\": {}, \"layers\": {layer}}}",
        summary.bytes, summary.tensors
    );
    Ok(())
}

fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed;
    for chunk in buf.chunks_mut(8) {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes()[..chunk.len()]);
    }
}

fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let n: f64 = num.parse().ok()?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kib" | "k" => 1024.0,
        "mib" | "m" => 1024.0 * 1024.0,
        "gib" | "g" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some((n * mult) as u64)
}
