//! [`TestS3`]: a throwaway S3-compatible server ([s3s-fs]) for tests.
//!
//! The server runs as a child process on a free loopback port, keeps its buckets as folders
//! of a temporary directory (so they survive [`TestS3::stop`] and [`TestS3::restart`]), checks
//! request signatures against a fresh access key and secret, and is killed when the value is
//! dropped. It takes path-style requests only (`http://127.0.0.1:PORT/BUCKET/KEY`).
//!
//! ```no_run
//! let s3 = millstream_testkit::s3::TestS3::start()?;
//! s3.create_bucket("models")?;
//! // An S3 client: endpoint s3.endpoint(), s3.access_key() / s3.secret_key(), path style.
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! The program is found through the `S3S_FS` environment variable (a path), else in
//! `$CARGO_HOME/bin`, `~/.cargo/bin` or on `PATH`. Install it with
//! `cargo install s3s-fs --version 0.14.1 --features binary --locked` (about 3 minutes; later
//! versions need a newer Rust).
//!
//! What s3s-fs 0.14.1 does differently from S3, as far as millstream's tests go:
//! - ListObjectsV2 gives no ETags (HeadObject and GetObject do);
//! - `If-None-Match: *` on PutObject is checked before the write, not atomically with it;
//! - an object is the file `ROOT/BUCKET/KEY` ([`TestS3::object_path`]): tests can damage it
//!   there; its ETag and checksums are kept beside it, so a damaged object is served with its
//!   old checksums.
//!
//! [s3s-fs]: https://crates.io/crates/s3s-fs

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::process::{free_port, log_tail};
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

/// How long [`TestS3::start`] and [`TestS3::restart`] wait for the server to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one helper call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The server's log, in the temporary directory.
const LOG_FILE: &str = "s3s-fs.log";
/// The access key every server uses (the secret is fresh for each).
const ACCESS_KEY: &str = "millstream-test";
/// The region requests are signed for (s3s-fs accepts any).
pub const REGION: &str = "us-east-1";

/// An s3s-fs server for tests, on `127.0.0.1:PORT`, killed on drop.
pub struct TestS3 {
    /// Holds `data/` (the buckets, the server's root) and [`LOG_FILE`].
    dir: tempfile::TempDir,
    port: u16,
    bin: PathBuf,
    secret_key: String,
    /// The running server; `None` after [`TestS3::stop`].
    child: Mutex<Option<Child>>,
}

impl TestS3 {
    /// Starts a server on a free loopback port with an empty root directory, and waits (up to
    /// 30 s) until it answers a signed ListBuckets. Fails with a clear error when the `s3s-fs`
    /// program is missing.
    pub fn start() -> Result<Self> {
        let bin = find_s3s_fs()?;
        let dir = tempfile::Builder::new()
            .prefix("millstream-s3-")
            .tempdir()
            .context("cannot create a temporary directory for the S3 server")?;
        std::fs::create_dir(dir.path().join("data")).context("cannot create the S3 server's root")?;
        let mut s3 = TestS3 { dir, port: 0, bin, secret_key: fresh_secret(), child: Mutex::new(None) };
        // A free port is only free until someone takes it: retry on a clash.
        let mut last_error = None;
        for _ in 0..5 {
            s3.port = free_port()?;
            match s3.launch() {
                Ok(()) => return Ok(s3),
                Err(e) if s3.log().contains("in use") => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("no free port")))
    }

    /// `http://127.0.0.1:PORT`, the endpoint for S3 clients (path-style addressing).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The access key id requests must be signed with.
    pub fn access_key(&self) -> &str {
        ACCESS_KEY
    }

    /// The secret access key requests must be signed with.
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// The server's root: one folder per bucket.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The file that holds object `key` of `bucket`.
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.data_dir().join(bucket).join(key)
    }

    /// Creates bucket `name` (a real CreateBucket request). Fails when it exists.
    pub fn create_bucket(&self, name: &str) -> Result<()> {
        self.with_client(|client| async move { client.create_bucket().bucket(name).send().await.map(|_| ()) })
            .with_context(|| format!("cannot create bucket {name}"))
    }

    /// The keys of `bucket` under `prefix`, sorted (a real ListObjectsV2, every page).
    pub fn list_keys(&self, bucket: &str, prefix: &str) -> Result<Vec<String>> {
        self.with_client(|client| async move {
            let mut keys = Vec::new();
            let mut pages = client.list_objects_v2().bucket(bucket).prefix(prefix).into_paginator().send();
            while let Some(page) = pages.next().await {
                keys.extend(page?.contents().iter().filter_map(|o| o.key().map(str::to_owned)));
            }
            keys.sort();
            Ok(keys)
        })
        .with_context(|| format!("cannot list bucket {bucket}"))
    }

    /// Kills the server (SIGKILL): a crash, for fault tests. Its data stays for
    /// [`TestS3::restart`]. Does nothing when it is not running.
    pub fn stop(&self) {
        let mut child = self.child.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(mut process) = child.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Starts the server again on the same port and root (killing it first if it is running),
    /// and waits until it answers.
    pub fn restart(&self) -> Result<()> {
        self.stop();
        // The port was ours a moment ago; if the kernel has not let it go yet, try again.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.launch() {
                Err(_) if Instant::now() < deadline && self.log().contains("in use") => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                result => return result,
            }
        }
    }

    /// Whether the server process is running (it was started and has not exited).
    pub fn is_running(&self) -> bool {
        let mut child = self.child.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        matches!(child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The server's log so far (stdout and stderr of every start).
    pub fn log(&self) -> String {
        std::fs::read(self.log_path()).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(LOG_FILE)
    }

    fn launch(&self) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .with_context(|| format!("cannot open {}", self.log_path().display()))?;
        let child = Command::new(&self.bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", &self.secret_key])
            .arg(self.data_dir())
            .current_dir(self.dir.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot run {}", self.bin.display()))?;
        *self.child.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(child);
        self.wait_ready().map_err(|e| {
            self.stop();
            let log = self.log();
            e.context(format!("s3s-fs did not start on port {}; log:\n{}", self.port, log_tail(&log, 15)))
        })
    }

    fn wait_ready(&self) -> Result<()> {
        let address = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::from("no answer yet");
        loop {
            if !self.is_running() {
                bail!("the server exited");
            }
            if TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_ok() {
                let listed =
                    self.with_client(|client| async move { client.list_buckets().send().await.map(|_| ()) });
                match listed {
                    Ok(()) => return Ok(()),
                    Err(e) => last = format!("{e:#}"),
                }
            }
            if Instant::now() >= deadline {
                bail!("no answer from {address} within {READY_TIMEOUT:?} ({last})");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `call` with a client of this server on a runtime of its own, within
    /// [`CALL_TIMEOUT`].
    fn with_client<'a, F, Fut, T, E, R>(&'a self, call: F) -> Result<T>
    where
        F: FnOnce(aws_sdk_s3::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, aws_sdk_s3::error::SdkError<E, R>>> + 'a,
        E: std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(self.endpoint())
            .force_path_style(true)
            .credentials_provider(Credentials::new(ACCESS_KEY, &self.secret_key, None, None, "testkit"))
            .http_client(
                aws_smithy_http_client::Builder::new()
                    .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
                    .build_https(),
            )
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder().operation_timeout(CALL_TIMEOUT).build(),
            )
            .build();
        let client = aws_sdk_s3::Client::from_conf(config);
        runtime.block_on(call(client)).map_err(|e| anyhow!("{}", DisplayErrorContext(e)))
    }
}

impl Drop for TestS3 {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for TestS3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TestS3({}, {})", self.endpoint(), self.dir.path().display())
    }
}

/// A secret for one server: not guessable across runs, no crypto needed.
fn fresh_secret() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
    );
    hasher.write_u32(std::process::id());
    format!("secret-{:016x}", hasher.finish())
}

fn find_s3s_fs() -> Result<PathBuf> {
    crate::process::find_program(
        "s3s-fs",
        "S3S_FS",
        "the S3-compatible server",
        "`cargo install s3s-fs --version 0.14.1 --features binary --locked` (about 3 minutes)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_creates_buckets_stops_and_restarts() -> Result<()> {
        let s3 = TestS3::start()?;
        assert!(s3.is_running());
        s3.create_bucket("models")?;
        assert!(s3.data_dir().join("models").is_dir(), "a bucket is a folder of the root");
        assert!(s3.create_bucket("models").is_err(), "a bucket cannot be created twice");
        assert_eq!(s3.list_keys("models", "")?, Vec::<String>::new());

        // An object written behind the server's back is served (s3s-fs's layout).
        std::fs::create_dir_all(s3.object_path("models", "a/b").parent().unwrap())?;
        std::fs::write(s3.object_path("models", "a/b"), b"x")?;
        assert_eq!(s3.list_keys("models", "a/")?, vec!["a/b".to_owned()]);

        s3.stop();
        assert!(!s3.is_running());
        assert!(s3.list_keys("models", "").is_err(), "a stopped server does not answer");
        s3.restart()?;
        assert_eq!(s3.list_keys("models", "")?, vec!["a/b".to_owned()], "the data survives a restart");
        Ok(())
    }

    #[test]
    fn refuses_a_wrong_secret() -> Result<()> {
        let s3 = TestS3::start()?;
        // A handle on the same server (it runs no process of its own) that signs wrongly.
        let wrong = TestS3 {
            dir: tempfile::tempdir()?,
            port: s3.port,
            bin: s3.bin.clone(),
            secret_key: "wrong".into(),
            child: Mutex::new(None),
        };
        let error = wrong.create_bucket("nope").unwrap_err();
        assert!(format!("{error:#}").contains("SignatureDoesNotMatch"), "{error:#}");
        Ok(())
    }
}
