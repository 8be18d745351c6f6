//! The load pipeline's options: streaming with a memory budget, progress,
//! reader counts, dtype casts, and filters.

mod common;

use std::sync::{Arc, Mutex};

use tensorizer::{Deserializer, Dtype, Error, Serializer, TensorData, Verify};

/// 12 tensors of 1 MiB (f32) plus a small bf16 and an int tensor.
fn model(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("m.tensors");
    let big: Vec<Vec<f32>> = (0..12)
        .map(|i| {
            (0..262_144)
                .map(|k| (i * 1000 + k % 1000) as f32 * 0.5)
                .collect()
        })
        .collect();
    let small: Vec<half::bf16> = (0..16).map(|i| half::bf16::from_f32(i as f32)).collect();
    let ints: Vec<i32> = (0..16).collect();
    let mut s = Serializer::new();
    for (i, t) in big.iter().enumerate() {
        s.write_state_dict([(
            format!("layer.{i}.weight"),
            TensorData::from_slice(&[512, 512], t).unwrap(),
        )])
        .unwrap();
    }
    s.write_state_dict([("norm", TensorData::from_slice(&[16], &small).unwrap())])
        .unwrap();
    s.write_state_dict([("ids", TensorData::from_slice(&[16], &ints).unwrap())])
        .unwrap();
    s.write_to_file(&path).unwrap();
    path
}

#[test]
fn streaming_delivers_in_file_order_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let path = model(dir.path());
    let all = Deserializer::open(&path).unwrap().read_all().unwrap();
    for budget in [1u64, 3 << 20, 64 << 20] {
        let mut seen = Vec::new();
        Deserializer::open(&path)
            .unwrap()
            .verify(Verify::All)
            .stream(budget, |t| {
                seen.push(t);
                Ok(())
            })
            .unwrap();
        assert_eq!(seen.len(), all.len(), "budget {budget}");
        for (a, b) in seen.iter().zip(&all) {
            assert_eq!(a.name(), b.name());
            assert_eq!(a.as_bytes(), b.as_bytes());
        }
    }
    // The consumer's error stops the stream and comes back as is.
    let mut n = 0;
    let err = Deserializer::open(&path)
        .unwrap()
        .stream(2 << 20, |_| {
            n += 1;
            if n == 3 {
                Err(Error::NotFound {
                    path: "consumer".into(),
                    name: "stop".into(),
                })
            } else {
                Ok(())
            }
        })
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert_eq!(n, 3);
}

#[test]
fn progress_counts_every_tensor_and_byte() {
    let dir = tempfile::tempdir().unwrap();
    let path = model(dir.path());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let tensors = Deserializer::open(&path)
        .unwrap()
        .num_readers(3)
        .on_progress(move |p| {
            log.lock()
                .unwrap()
                .push((p.bytes, p.total_bytes, p.tensors, p.total_tensors))
        })
        .read_all()
        .unwrap();
    let seen = seen.lock().unwrap();
    let total: u64 = tensors.iter().map(|t| t.as_bytes().len() as u64).sum();
    assert_eq!(seen.len(), 14);
    assert!(seen.iter().all(|&(_, tb, _, tt)| tb == total && tt == 14));
    assert_eq!(seen.iter().map(|s| s.0).max(), Some(total));
    assert_eq!(seen.iter().map(|s| s.2).max(), Some(14));
}

#[test]
fn dtype_casts_floating_tensors_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = model(dir.path());
    let d = Deserializer::open(&path).unwrap().dtype(Dtype::F16);
    let w = d.read("layer.1.weight").unwrap();
    assert_eq!(w.dtype(), Dtype::F16);
    assert_eq!(w.shape(), &[512, 512]);
    assert_eq!(
        w.as_slice::<half::f16>().unwrap()[3],
        half::f16::from_f32(501.5)
    );
    assert_eq!(d.read("norm").unwrap().dtype(), Dtype::F16);
    assert_eq!(
        d.read("ids").unwrap().dtype(),
        Dtype::I32,
        "integers are not cast"
    );
    let ids = Deserializer::open(&path).unwrap().read("ids").unwrap();
    let err = ids.cast(Dtype::F32).unwrap_err().to_string();
    assert!(
        err.contains("cannot cast int32 to float32") || err.contains("cannot cast"),
        "{err}"
    );
    let back = w.cast(Dtype::F32).unwrap();
    assert_eq!(back.as_slice::<f32>().unwrap()[3], 501.5);
}

#[test]
fn filters_and_reader_counts_give_the_same_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = model(dir.path());
    let all = Deserializer::open(&path).unwrap().read_all().unwrap();
    for readers in [1, 2, 16] {
        let got = Deserializer::open(&path)
            .unwrap()
            .num_readers(readers)
            .read_filtered(|e| e.name.to_string().ends_with(".weight"))
            .unwrap();
        assert_eq!(got.len(), 12);
        for (a, b) in got.iter().zip(&all) {
            assert_eq!(a.as_bytes(), b.as_bytes());
        }
    }
}

/// A local file with the read hints a test gives it, counting the requests
/// that reach it.
#[derive(Debug)]
struct Probe {
    inner: tensorizer::io::LocalFile,
    hints: tensorizer::io::ReadHints,
    requests: std::sync::atomic::AtomicUsize,
}

impl Probe {
    fn new(path: &std::path::Path, hints: tensorizer::io::ReadHints) -> Self {
        Probe {
            inner: tensorizer::io::LocalFile::open(path).unwrap(),
            hints,
            requests: 0.into(),
        }
    }
}

impl tensorizer::io::RangeSource for Probe {
    fn uri(&self) -> &str {
        self.inner.uri()
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> tensorizer::io::Result<()> {
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.read_exact_at(offset, buf)
    }
    fn hints(&self) -> tensorizer::io::ReadHints {
        self.hints
    }
}

#[test]
fn small_tensors_are_read_in_few_large_requests() {
    let path = common::fixtures().join("tensorizer-2.12.1/many_tensors.tensors");
    let local = Deserializer::open(&path).unwrap().read_all().unwrap();
    let counting = Arc::new(Probe::new(&path, Default::default()));
    let d = Deserializer::from_source(Box::new(counting.clone())).unwrap();
    let opened = counting.requests.load(std::sync::atomic::Ordering::SeqCst);
    let tensors = d.verify(Verify::All).read_all().unwrap();
    let requests = counting.requests.load(std::sync::atomic::Ordering::SeqCst) - opened;
    assert_eq!(tensors.len(), local.len());
    assert!(tensors.len() >= 1000, "{}", tensors.len());
    for (a, b) in tensors.iter().zip(&local) {
        assert_eq!(a.as_bytes(), b.as_bytes());
    }
    // Two requests per tensor without coalescing; one per 16 MiB with it.
    assert!(
        requests <= 4,
        "{requests} requests for {} tensors",
        tensors.len()
    );
}

/// A destination with a fixed pool of staging buffers, like a GPU's pinned
/// ring: `allocate` waits for a free one, `complete` copies the tensor out
/// and returns the buffer.
struct Ring {
    free: Mutex<Vec<Vec<u8>>>,
    ready: std::sync::Condvar,
    in_flight: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
    out: Mutex<std::collections::BTreeMap<usize, Vec<u8>>>,
    /// Tensors being assembled from pieces, and how many pieces came.
    partial: Mutex<std::collections::BTreeMap<usize, Vec<u8>>>,
    pieces: std::sync::atomic::AtomicUsize,
    size: usize,
}

impl Ring {
    /// `count` buffers of `size` bytes; larger tensors come in pieces.
    fn new(count: usize, size: usize) -> Self {
        Ring {
            free: Mutex::new(vec![vec![0u8; size]; count]),
            ready: std::sync::Condvar::new(),
            in_flight: 0.into(),
            peak: 0.into(),
            out: Mutex::default(),
            partial: Mutex::default(),
            pieces: 0.into(),
            size,
        }
    }

    fn give_back(&self, buffer: Loan) {
        self.in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.free.lock().unwrap().push(buffer.0);
        self.ready.notify_one();
    }
}

/// A staging buffer on loan: derefs to its first `len` bytes.
struct Loan(Vec<u8>, usize);

impl std::ops::Deref for Loan {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0[..self.1]
    }
}

impl std::ops::DerefMut for Loan {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0[..self.1]
    }
}

impl tensorizer::Destination for Ring {
    type Buffer = Loan;

    fn allocate(
        &self,
        _: usize,
        _: &tensorizer::IndexEntry,
        len: usize,
    ) -> tensorizer::Result<Loan> {
        use std::sync::atomic::Ordering::SeqCst;
        let mut free = self.free.lock().unwrap();
        while free.is_empty() {
            free = self.ready.wait(free).unwrap();
        }
        let buf = free.pop().unwrap();
        assert!(len <= buf.len());
        let n = self.in_flight.fetch_add(1, SeqCst) + 1;
        self.peak.fetch_max(n, SeqCst);
        Ok(Loan(buf, len))
    }

    fn complete(
        &self,
        index: usize,
        _: tensorizer::TensorInfo,
        buffer: Loan,
    ) -> tensorizer::Result<()> {
        self.out.lock().unwrap().insert(index, buffer.to_vec());
        self.give_back(buffer);
        Ok(())
    }

    fn max_buffer(&self) -> usize {
        self.size
    }

    fn complete_piece(&self, index: usize, offset: usize, buffer: Loan) -> tensorizer::Result<()> {
        self.pieces
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        {
            let mut partial = self.partial.lock().unwrap();
            let tensor = partial.entry(index).or_default();
            assert_eq!(tensor.len(), offset, "pieces arrive in order");
            tensor.extend_from_slice(&buffer);
        }
        self.give_back(buffer);
        Ok(())
    }

    fn complete_in_pieces(
        &self,
        index: usize,
        _: tensorizer::TensorInfo,
    ) -> tensorizer::Result<()> {
        let tensor = self.partial.lock().unwrap().remove(&index).unwrap();
        self.out.lock().unwrap().insert(index, tensor);
        Ok(())
    }
}

#[test]
fn a_recycling_destination_bounds_buffers_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let path = model(dir.path());
    let all = Deserializer::open(&path).unwrap().read_all().unwrap();
    let ring = Ring::new(2, 1 << 20);
    Deserializer::open(&path)
        .unwrap()
        .verify(Verify::All)
        .num_readers(8)
        .load_into(&ring, |_| true)
        .unwrap();
    let out = ring.out.into_inner().unwrap();
    assert_eq!(out.len(), all.len());
    for (i, t) in all.iter().enumerate() {
        assert_eq!(out[&i], t.as_bytes(), "{}", t.name());
    }
    assert!(ring.peak.load(std::sync::atomic::Ordering::SeqCst) <= 2);
}

#[test]
fn tensors_larger_than_the_buffers_arrive_in_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let path = model(dir.path());
    let all = Deserializer::open(&path).unwrap().read_all().unwrap();
    // 1 MiB tensors through two 300 kB buffers: 4 pieces each.
    let ring = Ring::new(2, 300_000);
    Deserializer::open(&path)
        .unwrap()
        .verify(Verify::All)
        .num_readers(8)
        .load_into(&ring, |_| true)
        .unwrap();
    assert_eq!(
        ring.pieces.load(std::sync::atomic::Ordering::SeqCst),
        12 * 4
    );
    assert!(ring.peak.load(std::sync::atomic::Ordering::SeqCst) <= 2);
    let out = ring.out.into_inner().unwrap();
    assert_eq!(out.len(), all.len());
    for (i, t) in all.iter().enumerate() {
        assert_eq!(out[&i], t.as_bytes(), "{}", t.name());
    }
}

#[test]
fn every_fixture_loads_through_two_small_buffers() {
    let mut pieces = 0;
    for set in ["tensorizer-2.12.1", "tensorizer-2.12.1-extended-dtypes"] {
        for entry in std::fs::read_dir(common::fixtures().join(set)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "tensors") {
                continue;
            }
            let open = || {
                let d = Deserializer::open(&path)?.verify(Verify::All);
                #[cfg(feature = "encryption")]
                if let Some(k) = common::key_of(&path) {
                    return d.decryption(k);
                }
                Ok(d)
            };
            let Ok(host) = open().and_then(|d| d.read_all()) else {
                continue; // a broken fixture: refused either way
            };
            // 2 MiB: one cipher chunk; larger tensors come in pieces.
            let ring = Ring::new(2, 2 << 20);
            open().unwrap().load_into(&ring, |_| true).unwrap();
            pieces += ring.pieces.load(std::sync::atomic::Ordering::SeqCst);
            let out = ring.out.into_inner().unwrap();
            assert_eq!(out.len(), host.len(), "{}", path.display());
            for (i, t) in host.iter().enumerate() {
                assert_eq!(out[&i], t.as_bytes(), "{} {}", path.display(), t.name());
            }
        }
    }
    assert!(pieces > 0, "no fixture tensor exceeded the buffers");
}

#[test]
fn a_damaged_piece_fails_its_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = model(dir.path());
    let d = Deserializer::open(&path).unwrap();
    let i = d.position(&"layer.5.weight".into()).unwrap();
    let at = d.entries()[i].data_offset + 700_000;
    drop(d);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[at as usize] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let ring = Ring::new(2, 300_000);
    let err = Deserializer::open(&path)
        .unwrap()
        .num_readers(1)
        .load_into(&ring, |_| true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("layer.5.weight") && err.contains("CRC32"),
        "{err}"
    );
    assert!(!ring.out.into_inner().unwrap().contains_key(&i));
    // Whole tensors (CRC-32 of each read piece, combined) catch it too.
    let err = Deserializer::open(&path)
        .unwrap()
        .read_all()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("layer.5.weight") && err.contains("CRC32"),
        "{err}"
    );
}

#[cfg(feature = "encryption")]
#[test]
fn encrypted_tensors_go_through_small_buffers_chunk_by_chunk() {
    use tensorizer::{Decryption, Encryption, EncryptionKey};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.tensors");
    // 5 MiB: three 2 MiB cipher chunks, the last one short.
    let big: Vec<u8> = (0..5u32 << 20).map(|k| (k % 251) as u8).collect();
    let small = [7u8; 100];
    let key = EncryptionKey::random().unwrap();
    let mut s = Serializer::new();
    s.write_state_dict([
        (
            "big",
            TensorData::from_slice(&[big.len() as u64], &big).unwrap(),
        ),
        ("small", TensorData::from_slice(&[100], &small).unwrap()),
    ])
    .unwrap();
    s.encryption(Encryption::with_key(key.clone()));
    s.write_to_file(&path).unwrap();
    let open = || {
        Deserializer::open(&path)
            .unwrap()
            .verify(Verify::All)
            .decryption(Decryption::Key(key.clone()))
            .unwrap()
    };
    // 3 MiB buffers hold one 2 MiB chunk each: 3 pieces.
    let ring = Ring::new(2, 3 << 20);
    open().load_into(&ring, |_| true).unwrap();
    assert_eq!(ring.pieces.load(std::sync::atomic::Ordering::SeqCst), 3);
    let out = ring.out.into_inner().unwrap();
    assert_eq!(out[&0], big);
    assert_eq!(out[&1], small);
    // A buffer smaller than a cipher chunk cannot hold a piece.
    let err = open()
        .load_into(&Ring::new(2, 1 << 20), |_| true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"big\"") && err.contains("cipher chunks"),
        "{err}"
    );
}

#[test]
fn caller_buffers_must_fit_their_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = model(dir.path());
    let d = Deserializer::open(&path).unwrap();
    let mut small = [0u8; 10];
    let err = d
        .read_into([("norm", &mut small[..])])
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs a buffer of 32 bytes, got 10"), "{err}");
    let mut none = [0u8; 4];
    let err = d
        .read_into([("nope", &mut none[..])])
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope"), "{err}");
    let mut norm = [0u8; 32];
    let infos = d.read_into([("norm", &mut norm[..])]).unwrap();
    assert_eq!(infos[0].shape.dims(), &[16]);
    assert_eq!(norm, d.read("norm").unwrap().as_bytes());
}

#[test]
fn unordered_delivery_gives_every_tensor_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = model(dir.path());
    let all = Deserializer::open(&path).unwrap().read_all().unwrap();
    let mut got = std::collections::BTreeMap::new();
    Deserializer::open(&path)
        .unwrap()
        .num_readers(4)
        .for_each_unordered(|t| {
            assert!(got.insert(t.name(), t.as_bytes().to_vec()).is_none());
            Ok(())
        })
        .unwrap();
    assert_eq!(got.len(), all.len());
    for t in &all {
        assert_eq!(got[&t.name()], t.as_bytes());
    }
}

#[test]
fn a_large_tensor_is_checked_across_its_pieces_and_blocks() {
    use sha2::Digest;
    use tensorizer::io::{LocalFile, RangeSource, ReadHints};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("large.tensors");
    // 40 MB: three 16 MiB pieces from a local file, each read and hashed in
    // 1 MiB blocks, the last ones short.
    let values: Vec<f32> = (0..10_000_123).map(|k| (k % 7919) as f32).collect();
    let mut s = Serializer::new();
    s.write_state_dict([(
        "embed",
        TensorData::from_slice(&[values.len() as u64], &values).unwrap(),
    )])
    .unwrap();
    s.write_to_file(&path).unwrap();
    let expected: &[u8] = bytemuck::cast_slice(&values);
    let sources = || -> Vec<Box<dyn RangeSource>> {
        vec![
            Box::new(LocalFile::open(&path).unwrap()),
            // Blocks of an odd size, which do not divide the pieces.
            Box::new(Probe::new(
                &path,
                ReadHints {
                    request_size: 3 << 20,
                    concurrency: 2,
                    block_size: 100_003,
                },
            )),
        ]
    };
    for verify in [Verify::Crc32, Verify::All] {
        for source in sources() {
            let uri = source.uri().to_string();
            let d = Deserializer::from_source(source).unwrap().verify(verify);
            let tensors = d.read_all().unwrap();
            assert_eq!(tensors[0].as_bytes(), expected, "{uri} {verify:?}");
            // Through pieces (64 MiB in `check`) and blocks, hashed in order.
            let checks = d.check(|_| true, true);
            assert!(checks[0].outcome.is_ok(), "{uri}: {:?}", checks[0].outcome);
            let digest: [u8; 32] = sha2::Sha256::digest(expected).into();
            assert_eq!(checks[0].data_sha256, Some(digest), "{uri}");
        }
    }
    // One flipped bit deep in the last piece fails the tensor, with either
    // hash (SHA-256 alone where CRC-32 is not asked for).
    let at = Deserializer::open(&path).unwrap().entries()[0].data_offset + 35_000_017;
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[at as usize] ^= 0x10;
    std::fs::write(&path, bytes).unwrap();
    for source in sources() {
        let d = Deserializer::from_source(source).unwrap();
        let err = d.read_all().unwrap_err().to_string();
        assert!(err.contains("embed") && err.contains("CRC32"), "{err}");
        let d = d.verify(Verify::All);
        let err = d.read_all().unwrap_err().to_string();
        assert!(
            err.contains("embed") && err.contains("verification"),
            "{err}"
        );
        let err = d.check(|_| true, false).remove(0).outcome.unwrap_err();
        assert!(err.to_string().contains("embed"), "{err}");
    }
}

/// SHA-256 is hashed from a stream only: with CRC-32 gone, a flipped bit
/// must still fail a `Verify::All` load, in one piece or many.
#[test]
fn sha256_alone_catches_a_flipped_bit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.tensors");
    let values: Vec<u16> = (0..3_000_000u32).map(|k| k as u16).collect();
    let mut s = Serializer::new();
    s.write_state_dict([
        (
            "big",
            TensorData::from_slice(&[values.len() as u64], &values).unwrap(),
        ),
        ("small", TensorData::from_slice(&[2], &[1u8, 2]).unwrap()),
    ])
    .unwrap();
    s.write_to_file(&path).unwrap();
    let d = Deserializer::open(&path).unwrap();
    let header = d.read_header(0).unwrap();
    let entry = d.entries()[0].clone();
    drop(d);
    // Rewrite the stored CRC-32 to match the damaged data, so only SHA-256
    // can tell.
    let mut bytes = std::fs::read(&path).unwrap();
    let at = entry.data_offset as usize + 4_000_001;
    bytes[at] ^= 1;
    let data = &bytes[entry.data_offset as usize..entry.end_offset() as usize];
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header.hashable_bytes().unwrap());
    crc.update(data);
    let crc = crc.finalize();
    let old = match header.stored_hash(tensorizer::format::HashKind::Crc32) {
        Some(tensorizer::format::StoredHash::Crc32(v)) => v,
        other => panic!("{other:?}"),
    };
    let header_bytes = &mut bytes[entry.header_offset as usize..entry.data_offset as usize];
    let pos = header_bytes
        .windows(4)
        .position(|w| w == old.to_le_bytes())
        .unwrap();
    header_bytes[pos..pos + 4].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let d = Deserializer::open(&path).unwrap();
    assert!(d.read_all().is_ok(), "CRC-32 was forged to match");
    let d = d.verify(Verify::All);
    let err = d.read_all().unwrap_err().to_string();
    assert!(err.contains("\"big\"") && err.contains("SHA256"), "{err}");
    let checks = d.check(|_| true, false);
    assert!(
        checks[0]
            .outcome
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("SHA256")
    );
    assert!(checks[1].outcome.is_ok(), "the other tensor still checks");
}

/// The largest tensor is read first, so that hashing it (sequential per
/// tensor) overlaps the rest of the load instead of ending it alone.
#[test]
fn the_largest_tensor_is_loaded_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.tensors");
    let small = vec![1u8; 2 << 20];
    let big = vec![2u8; 24 << 20];
    let mut s = Serializer::new();
    s.write_state_dict([
        (
            "a",
            TensorData::from_slice(&[small.len() as u64], &small).unwrap(),
        ),
        (
            "b",
            TensorData::from_slice(&[small.len() as u64], &small).unwrap(),
        ),
        (
            "embed",
            TensorData::from_slice(&[big.len() as u64], &big).unwrap(),
        ),
    ])
    .unwrap();
    s.write_to_file(&path).unwrap();
    let order = Mutex::new(Vec::new());
    Deserializer::open(&path)
        .unwrap()
        .verify(Verify::All)
        .num_readers(1)
        .for_each_unordered(|t| {
            order.lock().unwrap().push(t.name());
            Ok(())
        })
        .unwrap();
    assert_eq!(order.into_inner().unwrap(), ["embed", "a", "b"]);
}

/// Peak resident memory of this test process, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        << 10
}

/// A 4 KB file of meta tensors claiming 2 GiB: checking it touches no
/// memory for them, and loading it hands out zero pages never written
/// (it cost 2 GiB of RSS in `load` and `verify`).
#[test]
fn meta_tensors_cost_no_memory_to_check_or_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.tensors");
    let mut s = Serializer::new();
    s.write_state_dict([
        ("a", TensorData::meta(Dtype::F32, &[256 << 20])),
        ("b", TensorData::meta(Dtype::BF16, &[512 << 20])),
    ])
    .unwrap();
    s.write_to_file(&path).unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() < 300 << 10);
    let before = peak_rss();
    let checks = Deserializer::open(&path)
        .unwrap()
        .verify(Verify::All)
        .check(|_| true, true);
    assert!(checks.iter().all(|c| c.outcome.is_ok()));
    // Too large to hash zeros for (a hostile size must not cost hours).
    assert!(checks[0].data_sha256.is_none());
    let tensors = Deserializer::open(&path).unwrap().read_all().unwrap();
    assert_eq!(tensors[1].as_bytes().len(), 1 << 30);
    assert!(tensors[0].as_bytes()[..4096].iter().all(|&b| b == 0));
    let grew = peak_rss().saturating_sub(before);
    assert!(grew < 256 << 20, "peak RSS grew by {} MiB", grew >> 20);
}
