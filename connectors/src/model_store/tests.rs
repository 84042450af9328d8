//! Tests of the model stores: the file store on a temporary directory, the S3 store against a
//! real S3-compatible server (s3s-fs, started by the testkit).

use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use millstream_testkit::TestS3;

use super::*;

// ---------------------------------------------------------------------------------------------
// Names, urls and settings.

#[test]
fn parses_store_urls() {
    let s3 = |bucket: &str, prefix: &str| ModelStoreSpec::S3 { bucket: bucket.into(), prefix: prefix.into() };
    let file = |dir: &str| ModelStoreSpec::File { dir: dir.into() };
    let cases = [
        ("s3://models", s3("models", ""), "s3://models"),
        ("s3://models/", s3("models", ""), "s3://models"),
        ("s3://my-bucket.1/plant/a", s3("my-bucket.1", "plant/a"), "s3://my-bucket.1/plant/a"),
        ("s3://my-bucket/plant/a/", s3("my-bucket", "plant/a"), "s3://my-bucket/plant/a"),
        ("file:///var/lib/models", file("/var/lib/models"), "file:///var/lib/models"),
        ("file://models", file("models"), "file://models"),
    ];
    for (url, spec, shown) in cases {
        assert_eq!(ModelStoreSpec::parse(url).unwrap(), spec, "{url}");
        assert_eq!(spec.to_string(), shown, "{url}");
        assert_eq!(shown.parse::<ModelStoreSpec>().unwrap(), spec, "{url}: round trip");
    }
    for url in [
        "",
        "models",
        "file://",
        "file:models",
        "http://bucket/x",
        "s3://",
        "s3://ab",
        "s3://Models",
        "s3://-models",
        "s3://models-",
        "s3://mo..dels",
        "s3://under_score",
        "s3://models//x",
        "s3://models/a//b",
        "s3://models/a/../b",
        "s3://models/./b",
        &format!("s3://{}", "b".repeat(64)),
    ] {
        let error = ModelStoreSpec::parse(url).unwrap_err();
        assert!(matches!(error, ModelStoreError::Invalid(_)), "{url}: {error}");
        assert!(!error.is_retryable());
    }
}

#[test]
fn reads_settings_and_refuses_unknown_keys() {
    let config: ModelStoreConfig = toml::from_str(
        r#"
        url = "s3://models/plant"
        endpoint = "http://127.0.0.1:9000"
        region = "eu-west-3"
        path_style = false
        timeout_ms = 2500
        "#,
    )
    .unwrap();
    assert_eq!(
        config,
        ModelStoreConfig {
            url: "s3://models/plant".into(),
            endpoint: Some("http://127.0.0.1:9000".into()),
            region: Some("eu-west-3".into()),
            path_style: false,
            timeout_ms: 2500,
        }
    );
    assert_eq!(config.effective_region(), "eu-west-3");
    assert_eq!(
        config.spec().unwrap(),
        ModelStoreSpec::S3 { bucket: "models".into(), prefix: "plant".into() }
    );

    let defaults: ModelStoreConfig = toml::from_str(r#"url = "file:///tmp/models""#).unwrap();
    assert_eq!(defaults, ModelStoreConfig::new("file:///tmp/models"));
    assert!(defaults.path_style);
    assert_eq!(defaults.timeout(), Duration::from_secs(10));

    let error = toml::from_str::<ModelStoreConfig>("url = \"s3://models\"\ntimeout = 5\n").unwrap_err();
    assert!(error.to_string().contains("unknown field `timeout`"), "{error}");
    let error = toml::from_str::<ModelStoreConfig>("endpoint = \"http://h\"\n").unwrap_err();
    assert!(error.to_string().contains("missing field `url`"), "{error}");

    // Settings that parse but make no sense.
    let bad = |config: ModelStoreConfig| match config.spec() {
        Err(ModelStoreError::Invalid(reason)) => reason,
        other => panic!("{config:?} gave {other:?}"),
    };
    bad(ModelStoreConfig { timeout_ms: 0, ..ModelStoreConfig::new("s3://models") });
    bad(ModelStoreConfig { endpoint: Some("127.0.0.1:9000".into()), ..ModelStoreConfig::new("s3://models") });
    bad(ModelStoreConfig { endpoint: Some("http://".into()), ..ModelStoreConfig::new("s3://models") });
    bad(ModelStoreConfig { region: Some("eu west".into()), ..ModelStoreConfig::new("s3://models") });
    bad(ModelStoreConfig { endpoint: Some("http://h:1".into()), ..ModelStoreConfig::new("file://m") });
    // A password in the endpoint is refused, and not repeated in the message.
    let reason = bad(ModelStoreConfig {
        endpoint: Some("http://key:hunter2@127.0.0.1:9000".into()),
        ..ModelStoreConfig::new("s3://models")
    });
    assert!(!reason.contains("hunter2"), "{reason}");
    assert!(reason.contains("AWS_ACCESS_KEY_ID"), "{reason}");

    // What the config shows (e.g. `config check`) is what it read.
    let shown = toml::to_string(&config).unwrap();
    assert_eq!(toml::from_str::<ModelStoreConfig>(&shown).unwrap(), config);
}

#[test]
fn checks_model_names_and_version_file_names() {
    for name in ["pump", "pump-7", "sensor_kind.v2", "A", &"x".repeat(MAX_NAME_LEN)] {
        validate_name(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for name in
        ["", ".", "..", ".hidden", "a/b", "../x", "a b", "pümp", "a\\b", &"x".repeat(MAX_NAME_LEN + 1)]
    {
        assert!(matches!(validate_name(name), Err(ModelStoreError::Invalid(_))), "{name:?}");
    }

    assert_eq!(version_file_name(1), "v0000000001.model");
    assert_eq!(version_file_name(u64::MAX), "v18446744073709551615.model");
    for version in [0, 1, 42, 9_999_999_999, 10_000_000_000, u64::MAX] {
        assert_eq!(parse_version_file_name(&version_file_name(version)), Some(version));
    }
    for file_name in [
        "v1.model",
        "v00000000001.model",
        "v000000000x.model",
        "v0000000001.model.tmp",
        "v0000000001",
        "0000000001.model",
        ".tmp-1-2-3",
        "LATEST",
        "v99999999999999999999.model",
    ] {
        assert_eq!(parse_version_file_name(file_name), None, "{file_name}");
    }
    // Zero-padding makes the listing order the version order.
    let mut names: Vec<String> = [10, 2, 9, 100, 1].into_iter().map(version_file_name).collect();
    names.sort();
    assert_eq!(
        names.iter().map(|n| parse_version_file_name(n).unwrap()).collect::<Vec<_>>(),
        [1, 2, 9, 10, 100]
    );
}

// ---------------------------------------------------------------------------------------------
// What every store does.

/// Put, get, versions and latest on an empty store.
fn check_round_trip(store: &dyn ModelStore) {
    assert_eq!(store.versions("pump").unwrap(), Vec::<u64>::new());
    assert_eq!(store.latest("pump").unwrap(), None);
    assert_eq!(store.get_latest("pump").unwrap(), None);

    let first = b"pump model, first".to_vec();
    let second: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    assert_eq!(store.put("pump", &first).unwrap(), 1);
    assert_eq!(store.put("pump", &second).unwrap(), 2);
    assert_eq!(store.put("valve", b"").unwrap(), 1, "each name counts its own versions");

    assert_eq!(store.get("pump", 1).unwrap(), first);
    assert_eq!(store.get("pump", 2).unwrap(), second);
    assert_eq!(store.get("valve", 1).unwrap(), b"", "an empty model is a model");
    assert_eq!(store.versions("pump").unwrap(), [1, 2]);
    assert_eq!(store.versions("valve").unwrap(), [1]);

    let latest = store.latest("pump").unwrap().unwrap();
    assert_eq!(latest.version, 2);
    assert!(!latest.etag.is_empty());
    assert_eq!(store.latest("pump").unwrap().unwrap(), latest, "the marker is stable");
    let (version, bytes) = store.get_latest("pump").unwrap().unwrap();
    assert_eq!((version, bytes), (latest.clone(), second));

    assert_eq!(store.put("pump", &first).unwrap(), 3, "the same bytes again are a new version");
    let newer = store.latest("pump").unwrap().unwrap();
    assert_eq!(newer.version, 3);

    // What is missing.
    for (name, version) in [("pump", 4), ("pump", 0), ("nothing", 1)] {
        match store.get(name, version) {
            Err(ModelStoreError::NotFound { name: n, version: v, .. }) => {
                assert_eq!((n.as_str(), v), (name, version))
            }
            other => panic!("get({name}, {version}) gave {other:?}"),
        }
    }
    let missing = store.get("pump", 4).unwrap_err();
    assert!(!missing.is_retryable());
    assert!(missing.to_string().contains("pump version 4 not found"), "{missing}");

    // Bad names never reach the store.
    for name in ["../pump", "", "a/b"] {
        assert!(matches!(store.put(name, b"x"), Err(ModelStoreError::Invalid(_))), "{name}");
        assert!(matches!(store.get(name, 1), Err(ModelStoreError::Invalid(_))), "{name}");
        assert!(matches!(store.latest(name), Err(ModelStoreError::Invalid(_))), "{name}");
        assert!(matches!(store.versions(name), Err(ModelStoreError::Invalid(_))), "{name}");
    }
}

// ---------------------------------------------------------------------------------------------
// The file store.

#[test]
fn file_store_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileModelStore::open(dir.path().join("models")).unwrap();
    check_round_trip(&store);
    assert!(dir.path().join("models/pump/v0000000001.model").is_file());
    assert!(dir.path().join("models/pump/v0000000003.model").is_file());
    assert_eq!(leftovers(&dir.path().join("models/pump")), Vec::<String>::new(), "no temporary file is left");

    // The same store through its url.
    let url = format!("file://{}", dir.path().join("models").display());
    let opened = ModelStoreConfig::new(&url).open().unwrap();
    assert_eq!(opened.location(), url);
    assert_eq!(opened.versions("pump").unwrap(), [1, 2, 3]);
}

#[test]
fn file_store_ignores_strangers_and_detects_replaced_versions() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileModelStore::open(dir.path()).unwrap();
    let models = dir.path().join("pump");
    std::fs::create_dir(&models).unwrap();
    // A crashed put's temporary file, a stray file, a mis-padded name, a folder.
    for stranger in [".tmp-1-2-3", "notes.txt", "v7.model", "v00000000009.model"] {
        std::fs::write(models.join(stranger), b"junk").unwrap();
    }
    std::fs::create_dir(models.join("v0000000005.model.d")).unwrap();
    assert_eq!(store.versions("pump").unwrap(), Vec::<u64>::new());
    assert_eq!(store.latest("pump").unwrap(), None);
    assert_eq!(store.put("pump", b"one").unwrap(), 1);

    // A version copied in by hand is a version; replacing one changes its marker.
    std::fs::write(models.join("v0000000002.model"), b"by hand").unwrap();
    let latest = store.latest("pump").unwrap().unwrap();
    assert_eq!(latest.version, 2);
    assert_eq!(store.get("pump", 2).unwrap(), b"by hand");
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(models.join("v0000000002.model"), b"by hand, again").unwrap();
    let replaced = store.latest("pump").unwrap().unwrap();
    assert_eq!(replaced.version, 2);
    assert_ne!(replaced.etag, latest.etag);
}

#[test]
fn file_store_never_overwrites_a_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileModelStore::open(dir.path()).unwrap();
    assert_eq!(store.put("pump", b"first").unwrap(), 1);
    assert!(!store.put_version("pump", 1, b"second").unwrap(), "version 1 exists");
    assert_eq!(store.get("pump", 1).unwrap(), b"first");
    assert!(store.put_version("pump", 7, b"seventh").unwrap());
    assert_eq!(store.put("pump", b"next").unwrap(), 8, "the next version is above the highest");
    assert_eq!(leftovers(&dir.path().join("pump")), Vec::<String>::new());
}

/// Writers on several threads (and two store values, as two processes would have): every put
/// gets its own version, and a reader never sees a version half written.
#[test]
fn file_store_concurrent_writers_and_readers() {
    const WRITERS: usize = 4;
    const PUTS: usize = 25;
    let dir = tempfile::tempdir().unwrap();
    let stores = [FileModelStore::open(dir.path()).unwrap(), FileModelStore::open(dir.path()).unwrap()];
    let start = Arc::new(Barrier::new(WRITERS + 1));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let reader = {
        let store = stores[0].clone();
        let start = start.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            start.wait();
            let mut reads = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some((_, bytes)) = store.get_latest("pump").unwrap() {
                    check_payload(&bytes);
                    reads += 1;
                }
            }
            reads
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let store = stores[writer % 2].clone();
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                (0..PUTS)
                    .map(|i| (store.put("pump", &payload(writer, i)).unwrap(), writer, i))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut puts: Vec<(u64, usize, usize)> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.join().unwrap();

    puts.sort();
    let versions: Vec<u64> = puts.iter().map(|(v, _, _)| *v).collect();
    assert_eq!(versions, (1..=(WRITERS * PUTS) as u64).collect::<Vec<_>>(), "one version per put, no gap");
    for (version, writer, i) in puts {
        assert_eq!(stores[1].get("pump", version).unwrap(), payload(writer, i), "version {version}");
    }
    assert!(reads > 0, "the reader read");
    assert_eq!(leftovers(&dir.path().join("pump")), Vec::<String>::new());
}

#[test]
fn file_store_gone_is_unreachable_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("models");
    let store = FileModelStore::open(&root).unwrap();
    assert_eq!(store.put("pump", b"one").unwrap(), 1);

    // The volume goes away (unmounted, renamed).
    let away = dir.path().join("away");
    std::fs::rename(&root, &away).unwrap();
    for error in [
        store.latest("pump").unwrap_err(),
        store.versions("pump").unwrap_err(),
        store.get("pump", 1).unwrap_err(),
        store.put("pump", b"two").unwrap_err(),
    ] {
        assert!(matches!(error, ModelStoreError::Unreachable { .. }), "{error:?}");
        assert!(error.is_retryable());
    }
    assert!(!root.exists(), "a put does not recreate a vanished store");

    std::fs::rename(&away, &root).unwrap();
    assert_eq!(store.latest("pump").unwrap().unwrap().version, 1);
    assert_eq!(store.put("pump", b"two").unwrap(), 2);
}

#[test]
fn file_store_refusals_are_not_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let error = FileModelStore::open(&file).unwrap_err();
    assert!(matches!(error, ModelStoreError::Other { .. }), "{error:?}");
    assert!(error.to_string().contains("is not a directory"), "{error}");
    assert!(!error.is_retryable());

    // The root turns into a file after opening.
    let root = dir.path().join("models");
    let store = FileModelStore::open(&root).unwrap();
    std::fs::remove_dir(&root).unwrap();
    std::fs::write(&root, b"x").unwrap();
    let error = store.put("pump", b"x").unwrap_err();
    assert!(matches!(error, ModelStoreError::Other { .. }), "{error:?}");
    assert!(!error.is_retryable());
}

/// A payload that tells whether it arrived whole: 8 bytes of length, then a pattern.
fn payload(writer: usize, i: usize) -> Vec<u8> {
    let len = 1000 + 997 * (writer * 31 + i) % 50_000;
    let mut bytes = (len as u64).to_le_bytes().to_vec();
    bytes.extend((0..len).map(|k| (k + writer) as u8));
    bytes
}

fn check_payload(bytes: &[u8]) {
    assert!(bytes.len() >= 8, "a model of {} bytes", bytes.len());
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(bytes.len(), 8 + len, "a torn model");
    let writer = bytes.get(8).copied().unwrap_or(0) as usize;
    assert!(bytes[8..].iter().enumerate().all(|(k, &b)| b == (k + writer) as u8), "a mixed model");
}

/// Everything in `dir` that is not a version.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| parse_version_file_name(n).is_none())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The S3 store, against s3s-fs.

const BUCKET: &str = "models";

/// A server with the bucket [`BUCKET`], and a store on it under `prefix`.
fn s3_store(prefix: &str, timeout_ms: u64) -> (TestS3, S3ModelStore) {
    let s3 = TestS3::start().unwrap();
    s3.create_bucket(BUCKET).unwrap();
    let store = store_on(&s3, &format!("s3://{BUCKET}/{prefix}"), timeout_ms);
    (s3, store)
}

fn store_on(s3: &TestS3, url: &str, timeout_ms: u64) -> S3ModelStore {
    let config = ModelStoreConfig { endpoint: Some(s3.endpoint()), timeout_ms, ..ModelStoreConfig::new(url) };
    S3ModelStore::connect_with_credentials(&config, s3.access_key(), s3.secret_key()).unwrap()
}

#[test]
fn s3_store_round_trip() {
    let (s3, store) = s3_store("plant/a", 10_000);
    check_round_trip(&store);
    assert_eq!(
        s3.list_keys(BUCKET, "").unwrap(),
        [
            "plant/a/pump/v0000000001.model",
            "plant/a/pump/v0000000002.model",
            "plant/a/pump/v0000000003.model",
            "plant/a/valve/v0000000001.model",
        ]
    );
    assert!(store.location().starts_with("s3://models/plant/a at http://127.0.0.1:"), "{}", store.location());
    assert_eq!(format!("{store:?}"), format!("S3ModelStore({})", store.location()));
    assert!(!format!("{store:?}").contains(s3.secret_key()));

    // Another prefix in the same bucket is another store; no prefix is the bucket's top.
    let top = store_on(&s3, &format!("s3://{BUCKET}"), 10_000);
    assert_eq!(top.versions("pump").unwrap(), Vec::<u64>::new());
    assert_eq!(top.put("pump", b"top").unwrap(), 1);
    assert!(s3.list_keys(BUCKET, "pump/").unwrap() == ["pump/v0000000001.model"]);
    assert_eq!(store.versions("pump").unwrap(), [1, 2, 3]);

    // Keys that are not versions are ignored: deeper folders, other names, a model's "LATEST".
    for key in ["plant/a/pump/LATEST", "plant/a/pump/old/v0000000009.model", "plant/a/pump/v9.model"] {
        let path = s3.object_path(BUCKET, key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"stranger").unwrap();
    }
    assert_eq!(store.versions("pump").unwrap(), [1, 2, 3]);
    assert_eq!(store.latest("pump").unwrap().unwrap().version, 3);
}

#[test]
fn s3_store_latest_marker_is_the_etag() {
    let (_s3, store) = s3_store("", 10_000);
    store.put("pump", b"hello").unwrap();
    // A single-part upload's ETag is the MD5 of its bytes.
    assert_eq!(store.latest("pump").unwrap().unwrap().etag, "5d41402abc4b2a76b9719d911017c592");
}

#[test]
fn s3_store_never_overwrites_a_version() {
    let (s3, store) = s3_store("p", 10_000);
    assert_eq!(store.put("pump", b"first").unwrap(), 1);
    // The conditional put refuses an existing key…
    assert!(!store.put_version_blocking("pump", 1, b"second").unwrap());
    assert_eq!(store.get("pump", 1).unwrap(), b"first");
    // …and creates a missing one.
    assert!(store.put_version_blocking("pump", 5, b"fifth").unwrap());
    assert_eq!(store.put("pump", b"next").unwrap(), 6);

    // Two writers, one after the other, each from its own store value.
    let other = store_on(&s3, &format!("s3://{BUCKET}/p"), 10_000);
    assert_eq!(other.put("pump", b"other").unwrap(), 7);
    assert_eq!(store.put("pump", b"mine").unwrap(), 8);
    assert_eq!(other.get("pump", 8).unwrap(), b"mine");
}

#[test]
fn s3_store_stopped_server_is_unreachable_fast_and_comes_back() {
    let (s3, store) = s3_store("plant", 3_000);
    assert_eq!(store.put("pump", b"one").unwrap(), 1);

    s3.stop();
    type Call<'a> = Box<dyn Fn() -> ModelStoreError + 'a>;
    let calls: [(&str, Call); 4] = [
        ("latest", Box::new(|| store.latest("pump").unwrap_err())),
        ("versions", Box::new(|| store.versions("pump").unwrap_err())),
        ("get", Box::new(|| store.get("pump", 1).unwrap_err())),
        ("put", Box::new(|| store.put("pump", b"two").unwrap_err())),
    ];
    for (what, call) in &calls {
        let started = Instant::now();
        let error = call();
        let took = started.elapsed();
        assert!(matches!(error, ModelStoreError::Unreachable { .. }), "{what}: {error:?}");
        assert!(error.is_retryable(), "{what}");
        assert!(took < Duration::from_secs(5), "{what} took {took:?}");
        eprintln!("{what} on a stopped server: {took:?}: {error}");
    }

    s3.restart().unwrap();
    assert_eq!(store.latest("pump").unwrap().unwrap().version, 1, "the same store value works again");
    assert_eq!(store.get("pump", 1).unwrap(), b"one");
    assert_eq!(store.put("pump", b"two").unwrap(), 2);
}

/// A server that accepts connections and never answers: each call ends within its timeout.
#[test]
fn s3_store_silent_server_is_unreachable_within_the_timeout() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = ModelStoreConfig {
        endpoint: Some(format!("http://{}", silent.local_addr().unwrap())),
        timeout_ms: 1_000,
        ..ModelStoreConfig::new("s3://models")
    };
    let store = S3ModelStore::connect_with_credentials(&config, "key", "secret").unwrap();
    let started = Instant::now();
    let error = store.latest("pump").unwrap_err();
    let took = started.elapsed();
    assert!(matches!(error, ModelStoreError::Unreachable { .. }), "{error:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    eprintln!("latest on a silent server: {took:?}: {error}");
    drop(silent);
}

#[test]
fn s3_store_detects_damaged_models() {
    let (s3, store) = s3_store("", 10_000);
    let model: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(store.put("pump", &model).unwrap(), 1);
    // Flip one byte of the object behind the server's back: it keeps serving the checksum
    // computed at upload.
    let path = s3.object_path(BUCKET, "pump/v0000000001.model");
    let mut damaged = std::fs::read(&path).unwrap();
    assert_eq!(damaged, model);
    damaged[5_000] ^= 0xff;
    std::fs::write(&path, &damaged).unwrap();
    match store.get("pump", 1) {
        Err(ModelStoreError::Corrupt { name, version, reason, .. }) => {
            assert_eq!((name.as_str(), version), ("pump", 1));
            assert!(reason.contains("checksum mismatch"), "{reason}");
            eprintln!("damaged: {reason}");
        }
        other => panic!("a damaged model gave {:?}", other.map(|b| b.len())),
    }
}

#[test]
fn s3_store_refusals_are_not_retryable() {
    let s3 = TestS3::start().unwrap();
    s3.create_bucket(BUCKET).unwrap();

    // No such bucket.
    let store = store_on(&s3, "s3://no-such-bucket/p", 5_000);
    let error = store.versions("pump").unwrap_err();
    assert!(matches!(error, ModelStoreError::Other { .. }), "{error:?}");
    assert!(error.to_string().contains("NoSuchBucket"), "{error}");
    assert!(!error.is_retryable());
    eprintln!("no such bucket: {error}");

    // Wrong credentials.
    let config = ModelStoreConfig { endpoint: Some(s3.endpoint()), ..ModelStoreConfig::new("s3://models") };
    let store = S3ModelStore::connect_with_credentials(&config, s3.access_key(), "not-the-secret").unwrap();
    let error = store.put("pump", b"x").unwrap_err();
    assert!(matches!(error, ModelStoreError::Other { .. }), "{error:?}");
    assert!(!error.is_retryable());
    assert!(!error.to_string().contains("not-the-secret"), "{error}");
    eprintln!("wrong credentials: {error}");
}

#[test]
fn s3_store_refuses_to_block_inside_an_async_runtime() {
    let (_s3, store) = s3_store("", 5_000);
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let error = runtime.block_on(async { store.latest("pump").unwrap_err() });
    assert!(matches!(error, ModelStoreError::Other { .. }), "{error:?}");
    assert!(error.to_string().contains("spawn_blocking"), "{error}");
    // Dropping the store inside a runtime does not panic either, nor does connecting there.
    runtime.block_on(async move { drop(store) });
    let config = ModelStoreConfig {
        endpoint: Some("http://127.0.0.1:9".into()),
        ..ModelStoreConfig::new("s3://models")
    };
    let error =
        runtime.block_on(async { S3ModelStore::connect_with_credentials(&config, "k", "s").unwrap_err() });
    assert!(error.to_string().contains("spawn_blocking"), "{error}");
}

#[test]
fn s3_store_needs_an_s3_url() {
    let error = S3ModelStore::connect(&ModelStoreConfig::new("file:///tmp/m")).unwrap_err();
    assert!(matches!(error, ModelStoreError::Invalid(_)), "{error:?}");
}
