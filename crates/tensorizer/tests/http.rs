//! Loading through `http://` URIs (nginx on loopback) gives the same tensors
//! as loading the local file; unknown schemes and missing objects are clear
//! errors.
#![cfg(feature = "http")]

#[path = "../../tensorizer-io/tests/support/mod.rs"]
mod support;

use std::path::PathBuf;

use tensorizer::{Decryption, Deserializer, EncryptionKey, Verify};

#[test]
fn fixtures_load_over_http_like_from_disk() {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tensorizer-2.12.1");
    let nginx = support::Nginx::start(&dir);
    for name in [
        "dtypes_all_v2.tensors",
        "many_tensors.tensors",
        "long_dims.tensors",
        "names.tensors",
    ] {
        let local = Deserializer::open(dir.join(name))
            .unwrap()
            .verify(Verify::All)
            .read_all()
            .unwrap();
        let remote = Deserializer::open_uri(&nginx.url(name))
            .unwrap()
            .verify(Verify::All)
            .read_all()
            .unwrap();
        assert_eq!(local.len(), remote.len());
        for (a, b) in local.iter().zip(&remote) {
            assert_eq!((a.name(), a.as_bytes()), (b.name(), b.as_bytes()), "{name}");
        }
    }
    let key =
        EncryptionKey::from_key_file(&std::fs::read(dir.join("encrypted_random_key.key")).unwrap())
            .unwrap();
    let remote = Deserializer::open_uri(&nginx.url("encrypted_random_key.tensors"))
        .unwrap()
        .decryption(Decryption::Key(key))
        .unwrap()
        .read_all()
        .unwrap();
    assert_eq!(remote.len(), 5);

    let err = Deserializer::open_uri(&nginx.url("missing.tensors"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("404") && err.contains("missing.tensors"),
        "{err}"
    );
    let err = Deserializer::open_uri("ftp://example/model.tensors")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown URI scheme"), "{err}");
}

/// A server claiming a 1 TiB object whose header states a 512 GiB index:
/// a clear error, no allocation attempted (the CLI used to abort with
/// "memory allocation of 549755813961 bytes failed").
#[test]
fn a_server_claiming_huge_sizes_gets_an_error_not_an_abort() {
    use std::io::{BufRead, BufReader, Write};
    // A real file's first bytes, its index length patched to 2^39.
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tensorizer-2.12.1");
    let mut head = std::fs::read(dir.join("dtypes_all_v2.tensors")).unwrap()[..73].to_vec();
    head[65..73].copy_from_slice(&(1u64 << 39).to_le_bytes());
    let total: u64 = 1 << 40;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for con in listener.incoming().take(16) {
            let Ok(mut con) = con else { return };
            let head = head.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(con.try_clone().unwrap());
                let mut range = (0u64, 0u64);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if let Some(r) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        let (a, b) = r.trim().split_once('-').unwrap();
                        range = (a.parse().unwrap(), b.parse().unwrap());
                    }
                    if line == "\r\n" {
                        // Bytes past the real head are zeros.
                        let (a, b) = range;
                        let n = b - a + 1;
                        let mut body = Vec::new();
                        for i in a..=b.min(a + (1 << 20)) {
                            body.push(head.get(i as usize).copied().unwrap_or(0));
                        }
                        let _ = write!(
                            con,
                            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/{total}\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n"
                        );
                        let _ = con.write_all(&body);
                        return;
                    }
                }
            });
        }
    });
    let err = Deserializer::open_uri(&format!("http://127.0.0.1:{port}/m.tensors"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("index claims 549755813888 bytes"), "{err}");
}
