//! Redis sources and sinks against a real redis-server: the Python key
//! layout, atomic replacement, cleanup of failed writes, and faults.
#![cfg(feature = "redis")]

mod support;

use std::time::Duration;

use support::*;
use tensorizer_io::{
    FileLayout, RangeSource, RedisSink, RedisSource, RetryPolicy, Segment, SegmentKind, Sink,
};

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        deadline: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
    }
}

/// A made-up file: prologue 100 bytes, tensor "a" (header 20, data 1000),
/// tensor "b.c" (header 20, data 0), terminator 8.
fn layout() -> FileLayout {
    let seg = |offset, len, kind| Segment { offset, len, kind };
    FileLayout {
        len: 1148,
        segments: vec![
            seg(0, 100, SegmentKind::Prologue),
            seg(100, 20, SegmentKind::TensorHeader("a".into())),
            seg(120, 1000, SegmentKind::TensorData("a".into())),
            seg(1120, 20, SegmentKind::TensorHeader("b.c".into())),
            seg(1140, 0, SegmentKind::TensorData("b.c".into())),
            seg(1140, 8, SegmentKind::Terminator),
        ],
    }
}

fn file(seed: u8) -> Vec<u8> {
    let mut v: Vec<u8> = (0..1140u32)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect();
    v.extend([0u8; 8]);
    v
}

fn write(uri: &str, data: &[u8], commit: bool) {
    let sink = RedisSink::create(uri, &policy()).unwrap();
    sink.reserve(&layout()).unwrap();
    // Whole segments, a segment in two pieces, and the terminator.
    sink.write_all_at(0, &data[..100]).unwrap();
    sink.write_all_at(600, &data[600..1120]).unwrap();
    sink.write_all_at(100, &data[100..600]).unwrap();
    sink.write_all_at(1120, &data[1120..]).unwrap();
    if commit {
        Box::new(sink).commit().unwrap();
    }
}

fn keys(port: u16) -> Vec<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/0")).unwrap();
    let mut con = client.get_connection().unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).unwrap();
    keys.sort();
    keys
}

#[test]
fn python_key_layout_round_trip_and_atomic_replacement() {
    let server = redis_server();
    let uri = format!("redis://127.0.0.1:{}/models/m1", server.port);
    let first = file(1);
    write(&uri, &first, true);
    assert_eq!(
        keys(server.port),
        [
            "models/m1:a:100",
            "models/m1:a:120",
            "models/m1:b.c:1120",
            "models/m1:header:0"
        ]
    );
    let src = RedisSource::open(&uri, &policy()).unwrap();
    // The terminator is not stored, as in Python.
    assert_eq!(src.len(), 1140);
    assert_eq!(src.read_range(0, 1140).unwrap(), &first[..1140]);
    assert_eq!(src.read_range(90, 40).unwrap(), &first[90..130]);

    // A failed write leaves the old file and no staged keys.
    write(&uri, &file(2), false);
    assert_eq!(keys(server.port).len(), 4);
    let src = RedisSource::open(&uri, &policy()).unwrap();
    assert_eq!(src.read_range(0, 1140).unwrap(), &first[..1140]);

    // What a killed writer leaves (staged, never committed nor dropped)
    // expires by itself; committed keys do not.
    let sink = RedisSink::create(&uri, &policy()).unwrap();
    sink.reserve(&layout()).unwrap();
    sink.write_all_at(0, &file(4)[..100]).unwrap();
    std::mem::forget(sink); // as SIGKILL would: no clean-up
    let staged: Vec<String> = keys(server.port)
        .into_iter()
        .filter(|k| k.contains(".tmp-"))
        .collect();
    assert_eq!(staged.len(), 1, "{staged:?}");
    let mut con = redis::Client::open(format!("redis://127.0.0.1:{}/0", server.port))
        .unwrap()
        .get_connection()
        .unwrap();
    let ttl = |con: &mut redis::Connection, key: &str| -> i64 {
        redis::cmd("TTL").arg(key).query(con).unwrap()
    };
    let left = ttl(&mut con, &staged[0]);
    assert!(left > 0 && left <= 24 * 3600, "TTL {left}");
    for key in keys(server.port).iter().filter(|k| !k.contains(".tmp-")) {
        assert_eq!(ttl(&mut con, key), -1, "{key} must not expire");
    }
    // Clean up the forgotten write as Redis would after the TTL.
    let _: () = redis::cmd("DEL").arg(&staged[0]).query(&mut con).unwrap();

    // A committed write replaces it whole, and its keys persist.
    let second = file(3);
    write(&uri, &second, true);
    assert_eq!(keys(server.port).len(), 4);
    for key in keys(server.port) {
        assert_eq!(ttl(&mut con, &key), -1, "{key} must not expire");
    }
    let src = RedisSource::open(&uri, &policy()).unwrap();
    assert_eq!(src.read_range(0, 1140).unwrap(), &second[..1140]);
}

#[test]
fn clear_errors_for_missing_prefix_server_and_layout() {
    let server = redis_server();
    let err = RedisSource::open(
        &format!("redis://127.0.0.1:{}/nothing", server.port),
        &policy(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("no keys named nothing:*"), "{err}");

    let sink =
        RedisSink::create(&format!("redis://127.0.0.1:{}/p", server.port), &policy()).unwrap();
    let err = sink.write_all_at(0, b"x").unwrap_err().to_string();
    assert!(err.contains("Sink::reserve"), "{err}");

    let dead = free_port();
    let err = RedisSource::open(&format!("redis://127.0.0.1:{dead}/p"), &policy())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("127.0.0.1:{dead}")) && err.contains("4 attempts"),
        "{err}"
    );
}

#[test]
fn connection_resets_are_retried() {
    let server = redis_server();
    let uri = format!("redis://127.0.0.1:{}/m", server.port);
    let data = file(5);
    write(&uri, &data, true);
    let proxy = FaultProxy::start(
        server.port,
        Fault::ResetAfter {
            bytes: 200,
            connections: 2,
        },
    );
    let via_proxy = format!("redis://127.0.0.1:{}/m", proxy.port);
    let src = RedisSource::open(&via_proxy, &policy()).unwrap();
    assert_eq!(src.read_range(0, 1140).unwrap(), &data[..1140]);
    let connections = proxy.connections.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!("Redis reset after 200 bytes: completed over {connections} connections");
    assert!((3..=6).contains(&connections), "{connections}");
}

/// Large values are read straight from the socket into the destination;
/// a connection reset in the middle of one is retried on a new connection
/// and the bytes come out right.
#[test]
fn a_reset_mid_value_is_retried_byte_exact() {
    let server = redis_server();
    let uri = format!("redis://127.0.0.1:{}/big", server.port);
    let len = 6u64 << 20;
    let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    let sink = RedisSink::create(&uri, &policy()).unwrap();
    sink.reserve(&FileLayout {
        len,
        segments: vec![
            Segment {
                offset: 0,
                len: 100,
                kind: SegmentKind::Prologue,
            },
            Segment {
                offset: 100,
                len: len - 108,
                kind: SegmentKind::TensorData("w".into()),
            },
            Segment {
                offset: len - 8,
                len: 8,
                kind: SegmentKind::Terminator,
            },
        ],
    })
    .unwrap();
    sink.write_all_at(0, &data).unwrap();
    Box::new(sink).commit().unwrap();

    // Listing and sizes are small answers and pass; the first value reads
    // are cut after 1 MB.
    let proxy = FaultProxy::start(
        server.port,
        Fault::ResetAfter {
            bytes: 1_000_000,
            connections: 3,
        },
    );
    let via_proxy = format!("redis://127.0.0.1:{}/big", proxy.port);
    let src = RedisSource::open(&via_proxy, &policy()).unwrap();
    // The terminator has no key of its own (the Python layout).
    assert_eq!(src.len(), len - 8);
    assert_eq!(
        src.read_range(0, len - 8).unwrap(),
        data[..len as usize - 8]
    );
    let connections = proxy.connections.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!("Redis reset mid-value: completed over {connections} connections");
    assert!((3..=6).contains(&connections), "{connections}");
}

/// Writing to `redis://HOST/PREFIX` used to delete every `PREFIX:*` key:
/// now a key that is not part of the file stored there stops the write,
/// and nothing is deleted or replaced.
#[test]
fn keys_of_others_under_the_prefix_are_never_deleted() {
    let server = redis_server();
    let mut con = redis::Client::open(format!("redis://127.0.0.1:{}/0", server.port))
        .unwrap()
        .get_connection()
        .unwrap();
    let set = |con: &mut redis::Connection, k: &str, v: &str| {
        let _: () = redis::cmd("SET").arg(k).arg(v).query(con).unwrap();
    };
    set(&mut con, "app:session:1234", "alice");
    set(&mut con, "app:cache:home", "<html>");
    set(&mut con, "app.other:header:0", "a model elsewhere");
    let uri = format!("redis://127.0.0.1:{}/app", server.port);
    let sink = RedisSink::create(&uri, &policy()).unwrap();
    sink.reserve(&layout()).unwrap();
    sink.write_all_at(0, &file(1)).unwrap();
    let err = Box::new(sink).commit().unwrap_err().to_string();
    assert!(err.contains("not part of the tensorizer file"), "{err}");
    assert!(
        err.contains("app:cache:home") || err.contains("app:session:1234"),
        "{err}"
    );
    assert_eq!(
        keys(server.port),
        ["app.other:header:0", "app:cache:home", "app:session:1234"],
        "nothing deleted, nothing staged left behind"
    );
    // A prefix of its own works, and replacing it leaves the others alone.
    let own = format!("redis://127.0.0.1:{}/app/model", server.port);
    write(&own, &file(2), true);
    write(&own, &file(3), true);
    let all = keys(server.port);
    assert!(all.contains(&"app:session:1234".to_owned()), "{all:?}");
    assert_eq!(
        all.iter().filter(|k| k.starts_with("app/model:")).count(),
        4,
        "{all:?}"
    );
}

/// A password in the URI reaches every connection, the plain GETRANGE
/// sockets included (they never sent AUTH, so reads failed).
#[test]
fn passwords_in_the_uri_authenticate_every_connection() {
    let server = redis_server_with(&["--requirepass", "s3cret pass"]);
    let uri = format!("redis://:s3cret%20pass@127.0.0.1:{}/m", server.port);
    write(&uri, &file(5), true);
    let src = RedisSource::open(&uri, &policy()).unwrap();
    assert_eq!(src.read_range(0, 1140).unwrap(), &file(5)[..1140]);
    let wrong = format!("redis://:nope@127.0.0.1:{}/m", server.port);
    let err = RedisSource::open(&wrong, &policy())
        .unwrap_err()
        .to_string();
    assert!(
        !err.contains("nope"),
        "the password must not be shown: {err}"
    );
    let none = format!("redis://127.0.0.1:{}/m", server.port);
    assert!(RedisSource::open(&none, &policy()).is_err());
}

/// A fake Redis server: `SCAN` gets `scan(round)`, anything else `+OK`.
/// Returns its port and how many SCANs it answered.
fn fake_redis(
    scan: impl Fn(u64) -> Vec<u8> + Send + Sync + 'static,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = served.clone();
    let scan = std::sync::Arc::new(scan);
    std::thread::spawn(move || {
        for con in listener.incoming().take(8) {
            let Ok(con) = con else { continue };
            let (count, scan) = (count.clone(), scan.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(con.try_clone().unwrap());
                let mut out = con;
                loop {
                    // One RESP array of bulk strings per command.
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let n: usize = line.trim()[1..].parse().unwrap_or(0);
                    let mut args = Vec::new();
                    for _ in 0..n {
                        let mut len = String::new();
                        reader.read_line(&mut len).unwrap();
                        let mut arg = String::new();
                        reader.read_line(&mut arg).unwrap();
                        args.push(arg.trim().to_uppercase());
                    }
                    let answer = if args.first().is_some_and(|a| a == "SCAN") {
                        scan(count.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                    } else {
                        b"+OK\r\n".to_vec()
                    };
                    if out.write_all(&answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, served)
}

/// A server whose SCAN cursor never ends: the listing stops at a bound,
/// with an error, instead of growing memory for ever.
#[test]
fn an_endless_scan_is_bounded() {
    let (port, served) = fake_redis(|k| {
        let key = format!("p:t:{k}");
        format!("*2\r\n$1\r\n7\r\n*1\r\n${}\r\n{key}\r\n", key.len()).into_bytes()
    });
    let started = std::time::Instant::now();
    let err = RedisSource::open(&format!("redis://127.0.0.1:{port}/p"), &policy())
        .unwrap_err()
        .to_string();
    assert!(err.contains("SCAN"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    eprintln!(
        "endless SCAN stopped after {} round trips in {:?}: {err}",
        served.load(std::sync::atomic::Ordering::Relaxed),
        started.elapsed()
    );
}

/// A server answering every SCAN with 1,000 keys of 64 KiB (the reader
/// grew until the allocator aborted the process): the listing stops at a
/// bound in bytes, and a key or a count too large for any file is refused
/// before anything is allocated for it.
#[test]
fn a_scan_of_huge_keys_is_bounded_in_bytes() {
    let round = |k: u64| {
        let mut answer = b"*2\r\n$1\r\n7\r\n*1000\r\n".to_vec();
        for i in 0..1000 {
            let key = format!("p:{}:{}", "x".repeat(64 << 10), k * 1000 + i);
            answer.extend(format!("${}\r\n{key}\r\n", key.len()).into_bytes());
        }
        answer
    };
    let (port, served) = fake_redis(round);
    let err = RedisSource::open(&format!("redis://127.0.0.1:{port}/p"), &policy())
        .unwrap_err()
        .to_string();
    assert!(err.contains("bytes of key names"), "{err}");
    assert!(served.load(std::sync::atomic::Ordering::Relaxed) <= 2);
    for answer in [
        // A key name of 1 GiB, announced.
        b"*2\r\n$1\r\n0\r\n*1\r\n$1073741824\r\n".to_vec(),
        // 2^40 keys, announced.
        b"*2\r\n$1\r\n0\r\n*1099511627776\r\n".to_vec(),
    ] {
        let (port, _) = fake_redis(move |_| answer.clone());
        let err = RedisSource::open(&format!("redis://127.0.0.1:{port}/p"), &policy())
            .unwrap_err()
            .to_string();
        assert!(err.contains("a SCAN answer of"), "{err}");
    }
}

/// A planted `p:header:0` whose index claims a 2^56-byte tensor: a write
/// to the prefix decides which keys are the old file's from the keys that
/// exist (here: that one), in no time, instead of naming 2^28 keys.
#[test]
fn a_planted_header_does_not_make_writers_loop() {
    use tensorizer_format::{
        Dtype, DtypeString, FileHeader, FormatVersion, IndexEntry, Metadata, Shape, TensorName,
        TensorType,
    };
    let server = redis_server();
    let planted = Metadata {
        header: FileHeader {
            version: FormatVersion::NON_OPAQUE,
            flags: Default::default(),
            tensor_size: 1 << 56,
            tensor_count: 1,
        },
        index_len: 64,
        entries: vec![IndexEntry {
            name: TensorName::parse(b"a").unwrap(),
            tensor_type: TensorType::StateDict,
            dtype: DtypeString::new(Dtype::U8),
            shape: Shape::from(vec![1u64 << 28, 1 << 28]),
            wide_dims: false,
            header_offset: 200,
            data_offset: 300,
            data_length: 1 << 56,
        }],
    }
    .encode()
    .unwrap();
    let mut con = redis::Client::open(format!("redis://127.0.0.1:{}/0", server.port))
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("p:header:0")
        .arg(planted)
        .query(&mut con)
        .unwrap();
    let uri = format!("redis://127.0.0.1:{}/p", server.port);
    let started = std::time::Instant::now();
    write(&uri, &file(9), true);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let src = RedisSource::open(&uri, &policy()).unwrap();
    assert_eq!(src.read_range(0, 1140).unwrap(), &file(9)[..1140]);
}
