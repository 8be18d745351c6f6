//! Encode -> parse -> encode is the identity, for generated files and for
//! every byte of the spec's worked example (FORMAT.md §10.1).

use proptest::prelude::*;
use tensorizer_format::{
    CryptChunk, CryptInfo, Dtype, DtypeString, FilePlan, KeyDerivation, PathComponent, PlanOptions,
    RecordSpec, Shape, TERMINATOR, TensorPath, TensorType, TensorizerFile,
};

/// Writes a whole file from a plan and per-record data.
fn write(plan: &FilePlan, data: &[Vec<u8>]) -> Vec<u8> {
    let mut file = plan.metadata.encode().unwrap();
    for (i, d) in data.iter().enumerate() {
        assert_eq!(file.len() as u64, plan.metadata.entries[i].header_offset);
        file.extend(plan.seal_header(i, d).unwrap());
        file.extend(d);
    }
    file.extend(TERMINATOR);
    assert_eq!(file.len() as u64, plan.file_len());
    file
}

#[test]
fn spec_example_10_1_is_byte_exact() {
    let data: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let plan = FilePlan::new(
        vec![RecordSpec::new(
            0,
            TensorType::Param,
            TensorPath::from("a"),
            Dtype::F32,
            [2, 3],
        )],
        PlanOptions::default(),
    )
    .unwrap();
    let file = write(&plan, &[data]);
    let expected = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/spec/v1_plain.tensors"
    ))
    .unwrap();
    assert_eq!(file.len(), 262_327);
    assert_eq!(file, expected);
}

fn dtype() -> impl Strategy<Value = DtypeString> {
    (proptest::sample::select(Dtype::ALL), any::<bool>()).prop_map(|(d, opaque)| {
        if opaque {
            DtypeString::opaque(d)
        } else {
            DtypeString::new(d)
        }
    })
}

fn component() -> impl Strategy<Value = PathComponent> {
    prop_oneof![
        any::<u64>().prop_map(PathComponent::Index),
        "\\PC{1,12}".prop_map(PathComponent::Key),
    ]
}

fn path() -> impl Strategy<Value = TensorPath> {
    prop_oneof![
        "[^\u{1e}]\\PC{0,20}".prop_map(TensorPath::from),
        proptest::collection::vec(component(), 1..4).prop_map(|c| TensorPath::new(c).unwrap()),
    ]
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        8 => proptest::collection::vec(0u64..5, 0..5),
        1 => proptest::collection::vec(prop_oneof![Just(0u64), Just(1u64 << 32), Just(u64::from(u32::MAX))], 1..4),
    ]
    .prop_map(Shape)
}

fn crypt_info() -> impl Strategy<Value = CryptInfo> {
    let kdf = (
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..20),
    )
        .prop_map(|(o, m, salt)| {
            CryptChunk::KeyDerivation(KeyDerivation {
                method: 1,
                opslimit: o,
                memlimit: m,
                alg: 2,
                salt,
            })
        });
    let par = (
        1u64..100,
        any::<[u8; 24]>(),
        proptest::collection::vec(any::<[u8; 16]>(), 0..5),
    )
        .prop_map(|(k, nonce, macs)| CryptChunk::XSalsa20Parallel {
            chunk_size: k * 1024,
            nonce,
            macs,
        });
    let seq = (any::<[u8; 24]>(), any::<[u8; 16]>())
        .prop_map(|(nonce, mac)| CryptChunk::XSalsa20Sequential { nonce, mac });
    proptest::collection::vec(prop_oneof![kdf, par, seq], 0..3)
        .prop_map(|chunks| CryptInfo { chunks })
}

#[derive(Debug, Clone)]
struct Rec {
    path: TensorPath,
    dtype: DtypeString,
    shape: Shape,
    meta: bool,
    module_idx: u16,
    ty: TensorType,
}

fn record() -> impl Strategy<Value = Rec> {
    (
        path(),
        dtype(),
        shape(),
        prop::bool::weighted(0.15),
        any::<u16>(),
        0u8..3,
    )
        .prop_map(|(path, dtype, shape, meta, module_idx, ty)| Rec {
            path,
            dtype,
            shape,
            meta,
            module_idx,
            ty: TensorType::from_u8(ty).unwrap(),
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn plan_write_parse_reencode(recs in proptest::collection::vec(record(), 0..12), encrypted in any::<bool>(), cis in proptest::collection::vec(crypt_info(), 12)) {
        // Avoid conflicting paths: distinct top-level components, all of one kind.
        let mut seen = std::collections::HashSet::new();
        let is_index = |r: &Rec| matches!(r.path.components()[0], PathComponent::Index(_));
        let first_kind = recs.first().map(is_index);
        let recs: Vec<Rec> = recs
            .into_iter()
            .filter(|r| Some(is_index(r)) == first_kind && seen.insert(r.path.components()[0].clone()))
            .collect();
        let mut data = Vec::new();
        let mut specs = Vec::new();
        for (i, r) in recs.iter().enumerate() {
            let mut spec = RecordSpec::new(r.module_idx, r.ty, r.path.clone(), r.dtype.clone(), r.shape.clone());
            // Huge shapes can only be meta tensors here (no data to hold).
            spec.meta = r.meta || r.shape.numel().is_none_or(|n| n > 4096);
            let len = spec.data_length().unwrap() as usize;
            if encrypted {
                // A record without data has no cipher chunk (one with chunks
                // is refused as data cut away): key derivation at most.
                let mut ci = cis[i].clone();
                if len == 0 {
                    ci.chunks.retain(|c| matches!(c, tensorizer_format::CryptChunk::KeyDerivation(_)));
                }
                spec.crypt_info = Some(ci);
            }
            data.push((0..len).map(|j| (j * 31 + i) as u8).collect::<Vec<u8>>());
            specs.push(spec);
        }
        let plan = FilePlan::new(specs, PlanOptions { encrypted, min_index_len: 64 }).unwrap();
        let file = write(&plan, &data);

        let parsed = TensorizerFile::parse(&file).unwrap();
        prop_assert_eq!(parsed.metadata(), &plan.metadata);
        prop_assert_eq!(parsed.metadata().encode().unwrap(), plan.metadata.encode().unwrap());
        for (i, rec) in parsed.records().enumerate() {
            let rec = rec.unwrap();
            rec.header.verify(rec.data, |_| true).unwrap();
            // Piece-wise checks agree: CRC-32s of pieces combined, and the
            // streaming verifier fed piece by piece.
            let step = (rec.data.len() / 3).max(1);
            let crcs: Vec<(u32, u64)> = rec.data.chunks(step).map(|p| (crc32fast::hash(p), p.len() as u64)).collect();
            rec.header.check_crc32_pieces(&crcs).unwrap();
            let mut verifier = rec.header.verifier(|_| true).unwrap();
            rec.data.chunks(step).for_each(|p| verifier.update(p));
            rec.header.check_hashes(verifier).unwrap();
            let has_crc = rec.header.stored_hash(tensorizer_format::HashKind::Crc32).is_some();
            if let Some(first) = crcs.first().filter(|_| has_crc && !rec.data.is_empty()) {
                let mut damaged = crcs.clone();
                damaged[0] = (first.0 ^ 1, first.1);
                prop_assert!(rec.header.check_crc32_pieces(&damaged).is_err());
            }
            prop_assert_eq!(rec.data, &data[i][..]);
            prop_assert_eq!(rec.header.module_idx, recs[i].module_idx);
            let start = rec.entry.header_offset as usize;
            prop_assert_eq!(rec.header.encode().unwrap(), file[start..rec.entry.data_offset as usize].to_vec());
        }
    }

    #[test]
    fn names_round_trip(p in path()) {
        prop_assert_eq!(TensorPath::decode(&p.encode()).unwrap(), p);
    }
}

/// A path of one to three components drawn from a small alphabet, so that
/// equal names, prefixes and mixed levels all come up.
fn small_path() -> impl Strategy<Value = TensorPath> {
    let component = prop_oneof![
        (0u64..3).prop_map(PathComponent::Index),
        prop::sample::select(vec!["a", "b"]).prop_map(|k| PathComponent::Key(k.into())),
    ];
    proptest::collection::vec(component, 1..4).prop_map(|c| TensorPath::new(c).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// Checking names as they arrive accepts exactly the sets the batch
    /// check accepts.
    #[test]
    fn path_set_agrees_with_the_batch_check(paths in proptest::collection::vec(small_path(), 1..8)) {
        let mut set = tensorizer_format::PathSet::new();
        let incremental = paths.iter().try_for_each(|p| set.insert(p)).is_ok();
        let batch = tensorizer_format::check_paths_distinct(&paths).is_ok();
        prop_assert_eq!(incremental, batch);
    }
}

/// The records of a streamed file land where a whole-file plan puts them.
#[test]
fn stream_plan_places_records_as_the_file_plan_does() {
    let specs: Vec<RecordSpec> = (0..5u64)
        .map(|i| {
            let mut s = RecordSpec::new(
                1,
                TensorType::Param,
                TensorPath::from(format!("t{i}").as_str()),
                Dtype::BF16,
                vec![i, 3],
            );
            s.meta = i == 2;
            s
        })
        .chain([RecordSpec::new(
            0,
            TensorType::Buffer,
            TensorPath::from("long"),
            Dtype::F32,
            vec![1 << 32, 0],
        )])
        .collect();
    let plan = FilePlan::new(specs.clone(), PlanOptions::default()).unwrap();
    let mut stream = tensorizer_format::StreamPlan::new(PlanOptions::default());
    for (i, s) in specs.into_iter().enumerate() {
        let placed = stream.push(s).unwrap();
        assert_eq!(placed.header, plan.headers[i]);
        assert_eq!(placed.header_offset, plan.metadata.entries[i].header_offset);
    }
    assert_eq!(stream.metadata(), plan.metadata);
    assert_eq!(stream.file_len(), plan.file_len());
    assert_eq!(plan.metadata.header.version.get(), 5);
}

/// A streamed file cannot grow its index once records follow it: the push
/// that would overflow it is refused, as Python's "Metadata overflow", and
/// leaves the plan as it was.
#[test]
fn stream_plan_refuses_an_index_overflow_and_stays_usable() {
    let mut stream = tensorizer_format::StreamPlan::new(PlanOptions {
        encrypted: false,
        min_index_len: 200,
    });
    let spec = |name: &str, shape: Vec<u64>| {
        RecordSpec::new(
            0,
            TensorType::StateDict,
            TensorPath::from(name),
            Dtype::U8,
            shape,
        )
    };
    // Each entry: 2 + 2 + 1 + 1 + 5 ("uint8") + 1 + 4 + 24 = 40 bytes.
    for i in 0..5 {
        stream.push(spec(&format!("n{i}"), vec![4])).unwrap();
    }
    let before = stream.metadata();
    let err = stream.push(spec("n5", vec![4])).unwrap_err().to_string();
    assert!(
        err.contains("Metadata overflow") && err.contains("200"),
        "{err}"
    );
    // A long tensor would tag every entry (4 bytes each): refused too.
    let mut tight = tensorizer_format::StreamPlan::new(PlanOptions {
        encrypted: false,
        min_index_len: 160,
    });
    for i in 0..3 {
        tight.push(spec(&format!("n{i}"), vec![4])).unwrap();
    }
    assert!(tight.push(spec("wide", vec![1 << 32, 0])).is_err());
    assert_eq!(stream.metadata(), before);
    assert_eq!(stream.len(), 5);
    // A duplicate name is refused without a trace either.
    let err = tight.push(spec("n1", vec![4])).unwrap_err().to_string();
    assert!(err.contains("twice"), "{err}");
    assert_eq!(tight.len(), 3);
}
