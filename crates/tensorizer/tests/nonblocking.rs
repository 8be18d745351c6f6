//! The async front inside tokio runtimes: loads run on the blocking pool and
//! give what the blocking API gives; S3 works from async code, and even a
//! blocking S3 call made on a runtime thread returns instead of panicking.
#![cfg(all(feature = "tokio", feature = "s3"))]

#[path = "../../tensorizer-io/tests/support/mod.rs"]
mod support;

mod common;

use common::*;
use tensorizer::nonblocking::AsyncDeserializer;
use tensorizer::{Deserializer, S3Options, StorageOptions};

#[test]
fn async_loads_equal_blocking_loads_local_and_s3() {
    let path = fixtures().join("tensorizer-2.12.1/module.tensors");
    let want: Vec<_> = Deserializer::open(&path)
        .unwrap()
        .read_all()
        .unwrap()
        .iter()
        .map(tensor_fields)
        .collect();

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
    tensorizer::copy(path.to_str().unwrap(), "s3://models/m.tensors", &storage).unwrap();

    for flavor in ["current_thread", "multi_thread"] {
        let rt = match flavor {
            "current_thread" => tokio::runtime::Builder::new_current_thread().build(),
            _ => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .build(),
        }
        .unwrap();
        rt.block_on(async {
            for uri in [path.to_str().unwrap(), "s3://models/m.tensors"] {
                let model = AsyncDeserializer::open(uri, storage.clone()).await.unwrap();
                let got: Vec<_> = model
                    .read_all()
                    .await
                    .unwrap()
                    .iter()
                    .map(tensor_fields)
                    .collect();
                assert_eq!(got, want, "{flavor} {uri}");
                let one = model
                    .read(model.entries()[0].name.path().clone())
                    .await
                    .unwrap();
                assert_eq!(tensor_fields(&one), want[0]);
            }
            // A blocking S3 call on a runtime thread: slow for the runtime, but no panic.
            let d = Deserializer::open_uri_with("s3://models/m.tensors", &storage).unwrap();
            assert_eq!(d.read_all().unwrap().len(), want.len(), "{flavor}");
        });
    }
}
