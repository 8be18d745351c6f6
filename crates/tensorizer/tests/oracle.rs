//! Against the real Python tensorizer 2.12.1 (the "oracle"): for a spread of
//! generated inputs (every dtype torch 1.13 has, ranks 0-4, empty and meta
//! tensors, long dimensions, unicode and structured names, 1 000 tensors,
//! module-style writes) our writer's bytes equal the Python writer's, and the
//! Python reader loads every file we write.
//!
//! Needs the oracle venv: `cargo xtask test` installs it and sets
//! `TENSORIZER_ORACLE_PYTHON`; by hand:
//! `export TENSORIZER_ORACLE_PYTHON=$(bash scripts/setup_oracle.sh | tail -n1)`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::{Value, json};
use tensorizer::{Dtype, PathComponent, Serializer, TensorData, TensorPath, TensorType};

fn oracle_python() -> PathBuf {
    let py = std::env::var_os("TENSORIZER_ORACLE_PYTHON").unwrap_or_else(|| {
        panic!(
            "TENSORIZER_ORACLE_PYTHON is not set: this test needs the Python tensorizer oracle. \
             Run `cargo xtask test`, or: export TENSORIZER_ORACLE_PYTHON=$(bash scripts/setup_oracle.sh | tail -n1)"
        )
    });
    let py = PathBuf::from(py);
    assert!(
        py.exists(),
        "TENSORIZER_ORACLE_PYTHON={} does not exist; run scripts/setup_oracle.sh",
        py.display()
    );
    py
}

/// Dtypes the oracle's torch 1.13 can create.
const ORACLE_DTYPES: [Dtype; 13] = [
    Dtype::Bool,
    Dtype::U8,
    Dtype::I8,
    Dtype::I16,
    Dtype::I32,
    Dtype::I64,
    Dtype::F16,
    Dtype::F32,
    Dtype::F64,
    Dtype::C64,
    Dtype::C128,
    Dtype::BF16,
    Dtype::C32,
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

struct Spec {
    path: TensorPath,
    dtype: Dtype,
    shape: Vec<u64>,
    meta: bool,
    module_idx: u16,
    ty: TensorType,
}

fn sd(path: impl Into<TensorPath>, dtype: Dtype, shape: &[u64]) -> Spec {
    Spec {
        path: path.into(),
        dtype,
        shape: shape.to_vec(),
        meta: false,
        module_idx: 0,
        ty: TensorType::StateDict,
    }
}

fn structured(parts: Vec<PathComponent>) -> TensorPath {
    TensorPath::new(parts).unwrap()
}

struct Case {
    name: String,
    write_tensor: bool,
    /// False only where we deliberately differ from Python (0-d meta tensors).
    identical: bool,
    tensors: Vec<Spec>,
}

impl Case {
    fn new(name: impl Into<String>, tensors: Vec<Spec>) -> Self {
        Self {
            name: name.into(),
            write_tensor: false,
            identical: true,
            tensors,
        }
    }

    /// The Python reader fails on zero-element or meta tensors of opaque
    /// dtypes (FORMAT.md §11 a) even though its writer produces them.
    fn python_can_read(&self) -> bool {
        !self
            .tensors
            .iter()
            .any(|t| t.dtype.is_opaque() && (t.meta || t.shape.contains(&0)))
    }
}

fn cases() -> Vec<Case> {
    let shapes: [&[u64]; 5] = [&[], &[3], &[2, 3], &[2, 1, 3], &[1, 2, 2, 2]];
    let mut cases: Vec<Case> = ORACLE_DTYPES
        .iter()
        .map(|&d| {
            let tensors = shapes
                .iter()
                .enumerate()
                .map(|(i, s)| sd(format!("{d}.rank{i}"), d, s))
                .collect();
            Case::new(format!("dtype_{d}"), tensors)
        })
        .collect();

    let empty_shapes: [&[u64]; 4] = [&[0], &[2, 0], &[0, 3, 1], &[1, 0, 0, 2]];
    cases.push(Case::new(
        "empty",
        ORACLE_DTYPES
            .iter()
            .filter(|d| !d.is_opaque())
            .enumerate()
            .map(|(i, &d)| sd(format!("empty_{d}"), d, empty_shapes[i % 4]))
            .collect(),
    ));
    cases.push(Case::new(
        "empty_opaque",
        vec![
            sd("bf", Dtype::BF16, &[0, 4]),
            sd("c32", Dtype::C32, &[3, 0]),
        ],
    ));
    cases.push(Case::new(
        "unicode_names",
        [
            "层.权重",
            "emoji😀.w",
            "combining e\u{301}",
            "tab\tnew\nline",
            "nul\0byte",
            "[0]",
            "quo\"te\\",
            ".root",
        ]
        .iter()
        .map(|n| sd(*n, Dtype::F32, &[2]))
        .collect(),
    ));
    use PathComponent::{Index as I, Key as K};
    let k = |s: &str| K(s.to_owned());
    cases.push(Case::new(
        "nested",
        vec![
            sd(
                structured(vec![k("model"), k("layers"), I(0), k("w")]),
                Dtype::F32,
                &[2, 2],
            ),
            sd(
                structured(vec![k("model"), k("layers"), I(0), k("b")]),
                Dtype::BF16,
                &[2],
            ),
            sd(
                structured(vec![k("model"), k("layers"), I(1), k("w")]),
                Dtype::F32,
                &[2, 2],
            ),
            sd(
                structured(vec![k("model"), k("layers"), I(1), k("b")]),
                Dtype::BF16,
                &[2],
            ),
            sd(structured(vec![k("model"), k("head")]), Dtype::F16, &[3]),
            sd(structured(vec![k("é\u{1F600}"), I(0)]), Dtype::I64, &[1]),
            sd("lm_head", Dtype::F32, &[4]),
        ],
    ));
    cases.push(Case::new(
        "many_tensors",
        (0..1000)
            .map(|i| {
                let d = ORACLE_DTYPES[i % ORACLE_DTYPES.len()];
                sd(
                    format!("layers.{i}.w"),
                    d,
                    if i % 7 == 0 { &[] } else { &[2, 1] },
                )
            })
            .collect(),
    ));
    let mut module = Case::new(
        "write_tensor",
        [
            (0, ".weight", TensorType::Param, Dtype::F32),
            (0, ".running", TensorType::Buffer, Dtype::I64),
            (1, "encoder.weight", TensorType::Param, Dtype::BF16),
            (7, "encoder.flag", TensorType::Buffer, Dtype::Bool),
            (65535, "last.sd", TensorType::StateDict, Dtype::F16),
        ]
        .into_iter()
        .map(|(idx, n, ty, d)| Spec {
            module_idx: idx,
            ty,
            ..sd(n, d, &[3, 2])
        })
        .collect(),
    );
    module.write_tensor = true;
    cases.push(module);
    let mut meta = Case::new(
        "meta",
        vec![
            sd("real", Dtype::F32, &[2, 2]),
            Spec {
                meta: true,
                ..sd("ghost", Dtype::F32, &[4, 5])
            },
            Spec {
                meta: true,
                ..sd("ghost_i", Dtype::I8, &[3])
            },
            sd("after", Dtype::BF16, &[2]),
        ],
    );
    meta.write_tensor = true;
    cases.push(meta);
    cases.push(Case::new(
        "meta_opaque",
        vec![Spec {
            meta: true,
            ..sd("m", Dtype::BF16, &[2, 3])
        }],
    ));
    cases.push(Case::new(
        "long_dims",
        vec![
            sd("normal", Dtype::F32, &[2, 3]),
            sd("long_a", Dtype::F32, &[0, 1 << 32]),
            sd("max_u32", Dtype::F32, &[u64::from(u32::MAX), 0]),
            sd("long_b", Dtype::I8, &[(1 << 33) + 5, 0, 3]),
            sd("tail", Dtype::F16, &[2]),
        ],
    ));
    cases.push(Case::new(
        "big",
        vec![
            sd("big", Dtype::F32, &[2048, 1024]),
            sd("small", Dtype::BF16, &[7]),
        ],
    ));
    // Python writes a 0-d meta tensor with data_length = itemsize over a
    // never-written gap and hashes uninitialised memory (FORMAT.md §11 c), so
    // its output differs run to run. We write the same layout with zeros and
    // hashes of zeros: same length, and Python reads and verifies it.
    let mut meta_0d = Case::new(
        "meta_0d",
        vec![
            Spec {
                meta: true,
                ..sd("s", Dtype::F64, &[])
            },
            sd("x", Dtype::F32, &[1]),
        ],
    );
    meta_0d.identical = false;
    cases.push(meta_0d);
    let mut rng = Rng(2026);
    for c in 0..20 {
        let n = 1 + rng.below(12) as usize;
        let tensors = (0..n)
            .map(|i| {
                let d = ORACLE_DTYPES[rng.below(ORACLE_DTYPES.len() as u64) as usize];
                let rank = rng.below(5) as usize;
                let shape: Vec<u64> = (0..rank).map(|_| rng.below(6)).collect();
                let meta = !d.is_opaque() && rank > 0 && rng.below(8) == 0;
                Spec {
                    meta,
                    ..sd(format!("r{c}.t{i}"), d, &shape)
                }
            })
            .collect();
        cases.push(Case::new(format!("random_{c}"), tensors));
    }
    cases
}

fn name_json(path: &TensorPath) -> Value {
    path_json(path)
}

/// Writes our file and the oracle spec (with a raw data file) for a case.
fn prepare(dir: &Path, case: &Case, rng: &mut Rng) -> (PathBuf, PathBuf) {
    let mut raw = Vec::new();
    let mut offsets = Vec::new();
    for t in &case.tensors {
        offsets.push(raw.len());
        if t.meta {
            continue;
        }
        let n: u64 = t.shape.iter().product::<u64>() * t.dtype.itemsize() as u64;
        let mut bytes = rng.bytes(n as usize);
        if t.dtype == Dtype::Bool {
            bytes.iter_mut().for_each(|b| *b &= 1);
        }
        raw.extend(bytes);
    }
    let mut s = Serializer::new();
    let mut spec_tensors = Vec::new();
    for (t, &off) in case.tensors.iter().zip(&offsets) {
        let data = if t.meta {
            TensorData::meta(t.dtype, &t.shape)
        } else {
            let n = (t.shape.iter().product::<u64>() * t.dtype.itemsize() as u64) as usize;
            TensorData::new(t.dtype, &t.shape, &raw[off..off + n]).unwrap()
        };
        s.write_tensor(t.module_idx, t.path.clone(), t.ty, data)
            .unwrap();
        let mut st = json!({
            "name": name_json(&t.path),
            "dtype": t.dtype.torch_name(),
            "shape": t.shape,
            "data": if t.meta { json!("meta") } else { json!({"file": format!("{}.bin", case.name), "offset": off}) },
        });
        if case.write_tensor {
            st["tensor_type"] = t.ty.name().into();
            st["module_idx"] = t.module_idx.into();
        }
        spec_tensors.push(st);
    }
    let ours = dir.join(format!("{}.ours.tensors", case.name));
    s.write_to_file(&ours).unwrap();
    std::fs::write(dir.join(format!("{}.bin", case.name)), &raw).unwrap();
    let spec = json!({
        "writer": if case.write_tensor { "write_tensor" } else { "write_state_dict" },
        "tensors": spec_tensors,
    });
    let spec_path = dir.join(format!("{}.json", case.name));
    std::fs::write(&spec_path, serde_json::to_vec(&spec).unwrap()).unwrap();
    (ours, spec_path)
}

#[test]
fn byte_identical_to_python_and_readable_by_it() {
    let py = oracle_python();
    let dir = tempfile::tempdir().unwrap();
    let cases = cases();
    let mut rng = Rng(7);
    let mut jobs = Vec::new();
    let mut files = Vec::new();
    for case in &cases {
        let (ours, spec) = prepare(dir.path(), case, &mut rng);
        let theirs = dir.path().join(format!("{}.python.tensors", case.name));
        jobs.push(json!({"op": "write", "spec": spec, "out": theirs}));
        jobs.push(json!({"op": "read", "file": ours}));
        files.push((ours, theirs));
    }
    let jobs_path = dir.path().join("jobs.json");
    std::fs::write(&jobs_path, serde_json::to_vec(&jobs).unwrap()).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/oracle_batch.py");
    let out = Command::new(&py)
        .arg(&script)
        .arg(&jobs_path)
        .output()
        .expect("run the oracle");
    assert!(
        out.status.success(),
        "oracle_batch failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();

    let mut identical = 0;
    let mut read_by_python = 0;
    for (i, case) in cases.iter().enumerate() {
        let (write, read) = (&results[2 * i], &results[2 * i + 1]);
        assert_eq!(
            write["ok"], true,
            "{}: Python writer failed: {}",
            case.name, write["error"]
        );
        let (ours, theirs) = &files[i];
        let (a, b) = (std::fs::read(ours).unwrap(), std::fs::read(theirs).unwrap());
        if case.identical {
            assert!(
                a == b,
                "{}: our file ({} bytes) differs from Python's ({} bytes)",
                case.name,
                a.len(),
                b.len()
            );
            identical += 1;
        } else {
            assert_eq!(a.len(), b.len(), "{}: same layout as Python's", case.name);
        }

        if !case.python_can_read() {
            assert_eq!(
                read["ok"], false,
                "{}: the Python reader bug seems fixed; update the test",
                case.name
            );
            continue;
        }
        assert_eq!(
            read["ok"], true,
            "{}: Python could not read our file: {}",
            case.name, read["error"]
        );
        let loaded = read["info"]["tensors"].as_array().unwrap();
        assert_eq!(loaded.len(), case.tensors.len(), "{}", case.name);
        let ours = tensorizer::Deserializer::open(ours)
            .unwrap()
            .read_all()
            .unwrap();
        for (py_t, t) in loaded.iter().zip(&ours) {
            assert_eq!(py_t["name"], name_json(t.path()), "{}", case.name);
            assert_eq!(py_t["dtype"], t.dtype().torch_name(), "{}", case.name);
            assert_eq!(py_t["shape"], json!(t.shape()), "{}", case.name);
            assert_eq!(
                py_t["sha256"],
                sha256_hex(t.as_bytes()),
                "{}: {}",
                case.name,
                t.name()
            );
            assert_eq!(py_t["tensor_type"], t.tensor_type().name(), "{}", case.name);
            assert_eq!(py_t["module_idx"], t.module_idx(), "{}", case.name);
        }
        read_by_python += 1;
    }
    println!(
        "{identical} generated cases byte-identical to Python; {read_by_python} read back by Python"
    );
    assert_eq!(identical, cases.len() - 1);
    assert_eq!(
        read_by_python,
        cases.iter().filter(|c| c.python_can_read()).count()
    );
    assert!(
        read_by_python >= 30,
        "too few cases the Python reader can check: {read_by_python}"
    );
}
