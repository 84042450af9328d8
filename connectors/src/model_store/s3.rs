//! [`S3ModelStore`]: models in an S3 bucket, `s3://BUCKET/PREFIX/NAME/v0000000001.model`,
//! through aws-sdk-s3.
//!
//! - **Connection**: a configurable endpoint (any S3-compatible server), path-style addressing
//!   by default, the region from the config (else `AWS_REGION`, else `us-east-1`), and the
//!   standard AWS credential chain (environment, profile files, web identity, container and
//!   instance roles; not SSO profiles: the SDK is built without them).
//! - **Time limits**: each request takes at most [`ModelStoreConfig::timeout_ms`], retries
//!   included (a put makes two: a listing and the upload); one attempt at most half of it;
//!   connecting at most 1 s; up to 3 attempts, 100 ms apart at first. A stopped
//!   server (connection refused) fails in well under a second, a silent one (no answer) within
//!   the timeout, both as [`ModelStoreError::Unreachable`].
//! - **Integrity**: puts send a CRC32 checksum, which S3 checks and keeps; gets ask for it back
//!   and the SDK checks the bytes against it: a mismatch is [`ModelStoreError::Corrupt`].
//! - **Concurrent writers**: a put is `PutObject` with `If-None-Match: *`, which S3 refuses
//!   (412) when the key exists. The loser lists again and tries the next version. If the
//!   object that won holds the very same bytes, the put counts as done at that version: this
//!   is what a put whose answer was lost and was retried finds.
//!
//!   Servers that ignore `If-None-Match` on PUT (older MinIO and Ceph releases) let two
//!   simultaneous writers overwrite the same version: run one writer at a time against them.
//!   s3s-fs 0.14.1 (the test server) honours it, but checks before it writes rather than
//!   atomically, so two puts of the same key in the same instant can both pass there; puts one
//!   after another are refused correctly.
//!
//! The store owns a tokio runtime (one worker thread) and blocks on it: call it from plain
//! threads, never from inside an async runtime (that is refused with an error).

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumMode;
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

use super::config::{ModelStoreConfig, ModelStoreSpec};
use super::{
    next_version, parse_version_file_name, validate_name, version_file_name, ModelStore, ModelStoreError,
    ModelVersion, MAX_PUT_ATTEMPTS,
};

/// Attempts per request (the first and two retries).
const MAX_ATTEMPTS: u32 = 3;
/// The longest a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Models in an S3 bucket. See the [module docs](self).
pub struct S3ModelStore {
    /// `Some` until dropped.
    runtime: Option<tokio::runtime::Runtime>,
    client: Client,
    bucket: String,
    /// `""` or `PREFIX/`.
    prefix: String,
    /// `s3://BUCKET/PREFIX`, and the endpoint when one is set, for messages.
    label: String,
}

/// How a failed request went wrong, before it becomes a [`ModelStoreError`].
enum Failure {
    /// 404 on the object.
    NotFound,
    /// 412 or 409 on a conditional put: the key exists, or another write to it is under way.
    Conflict,
    /// Worth retrying later.
    Unreachable(String),
    /// Not.
    Other(String),
}

impl S3ModelStore {
    /// Connects to the store a config names, with the standard AWS credential chain. No
    /// request is made yet: an unreachable store shows in the first call.
    pub fn connect(config: &ModelStoreConfig) -> Result<Self, ModelStoreError> {
        Self::build(config, None)
    }

    /// Like [`S3ModelStore::connect`], with these credentials rather than the standard chain
    /// (tests, embedding).
    pub fn connect_with_credentials(
        config: &ModelStoreConfig,
        access_key_id: &str,
        secret_access_key: &str,
    ) -> Result<Self, ModelStoreError> {
        let credentials = Credentials::new(access_key_id, secret_access_key, None, None, "millstream");
        Self::build(config, Some(credentials))
    }

    fn build(config: &ModelStoreConfig, credentials: Option<Credentials>) -> Result<Self, ModelStoreError> {
        let ModelStoreSpec::S3 { bucket, prefix } = config.spec()? else {
            return Err(ModelStoreError::Invalid(format!("model store {}: not an s3:// url", config.url)));
        };
        let mut label = ModelStoreSpec::S3 { bucket: bucket.clone(), prefix: prefix.clone() }.to_string();
        if let Some(endpoint) = &config.endpoint {
            label = format!("{label} at {endpoint}");
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(inside_runtime(&label));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("millstream-s3")
            .enable_all()
            .build()
            .map_err(|e| ModelStoreError::Other {
                store: label.clone(),
                reason: format!("cannot start a tokio runtime: {e}"),
            })?;

        let timeout = config.timeout();
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT.min(timeout))
            .operation_timeout(timeout)
            // Leaves time for at least one retry when an attempt hangs.
            .operation_attempt_timeout(timeout / 2)
            .build();
        let retries = aws_config::retry::RetryConfig::standard()
            .with_max_attempts(MAX_ATTEMPTS)
            .with_initial_backoff(Duration::from_millis(100))
            .with_max_backoff(Duration::from_secs(1));
        // rustls with ring (no aws-lc to build), the system's trusted roots.
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http_client)
            .region(Region::new(config.effective_region()))
            .timeout_config(timeouts)
            .retry_config(retries);
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(credentials) = credentials {
            loader = loader.credentials_provider(credentials);
        }
        let sdk_config = runtime.block_on(loader.load());
        let s3_config =
            aws_sdk_s3::config::Builder::from(&sdk_config).force_path_style(config.path_style).build();
        let client = Client::from_conf(s3_config);
        let prefix = if prefix.is_empty() { prefix } else { format!("{prefix}/") };
        Ok(S3ModelStore { runtime: Some(runtime), client, bucket, prefix, label })
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The key of `version` of `name`.
    pub fn key(&self, name: &str, version: u64) -> String {
        format!("{}{name}/{}", self.prefix, version_file_name(version))
    }

    /// Creates `version` of `name` unless it exists (`Ok(false)`): the conditional put alone.
    #[cfg(test)]
    pub(crate) fn put_version_blocking(
        &self,
        name: &str,
        version: u64,
        bytes: &[u8],
    ) -> Result<bool, ModelStoreError> {
        self.block_on(self.put_version(name, version, bytes))?
    }

    /// Runs `future` on the store's runtime.
    fn block_on<F: std::future::Future>(&self, future: F) -> Result<F::Output, ModelStoreError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(inside_runtime(&self.label));
        }
        let runtime = self.runtime.as_ref().expect("the runtime lives until drop");
        Ok(runtime.block_on(future))
    }

    /// Every version of `name` with its ETag when the listing gives one, unsorted.
    async fn list(&self, name: &str) -> Result<Vec<(u64, Option<String>)>, ModelStoreError> {
        let prefix = format!("{}{name}/", self.prefix);
        let mut versions = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| self.error(classify(e), name, 0, "list"))?;
            for object in page.contents() {
                let Some(file_name) = object.key().and_then(|key| key.strip_prefix(&prefix)) else {
                    continue;
                };
                // Keys in deeper "folders" are not versions of this model.
                if let Some(version) = parse_version_file_name(file_name) {
                    versions.push((version, object.e_tag().map(unquote)));
                }
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_owned()),
                _ => return Ok(versions),
            }
        }
    }

    async fn get_async(&self, name: &str, version: u64) -> Result<Vec<u8>, ModelStoreError> {
        let output = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(name, version))
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .map_err(|e| self.error(classify(e), name, version, "get"))?;
        let expected_len = output.content_length();
        let bytes = match output.body.collect().await {
            Ok(bytes) => bytes.into_bytes().to_vec(),
            Err(e) => {
                let reason = error_chain(&e);
                return Err(if reason.contains("checksum mismatch") {
                    self.corrupt(name, version, reason)
                } else {
                    ModelStoreError::Unreachable {
                        store: self.label.clone(),
                        reason: format!("get: {reason}"),
                    }
                });
            }
        };
        if let Some(expected) = expected_len.filter(|&n| n >= 0 && n as u64 != bytes.len() as u64) {
            let reason = format!("{} bytes arrived, {expected} announced", bytes.len());
            return Err(self.corrupt(name, version, reason));
        }
        Ok(bytes)
    }

    /// Creates `version` of `name` unless that key exists: `Ok(false)` when it does.
    async fn put_version(&self, name: &str, version: u64, bytes: &[u8]) -> Result<bool, ModelStoreError> {
        let sent = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(name, version))
            .if_none_match("*")
            .content_type("application/octet-stream")
            .body(ByteStream::from(bytes.to_vec()))
            .send()
            .await;
        match sent {
            Ok(_) => Ok(true),
            Err(e) => match classify(e) {
                Failure::Conflict => Ok(false),
                failure => Err(self.error(failure, name, version, "put")),
            },
        }
    }

    async fn put_async(&self, name: &str, bytes: &[u8]) -> Result<u64, ModelStoreError> {
        validate_name(name)?;
        let mut version = 0;
        for _ in 0..MAX_PUT_ATTEMPTS {
            let listed: Vec<u64> = self.list(name).await?.into_iter().map(|(v, _)| v).collect();
            version = next_version(&listed, &self.label, name)?;
            if self.put_version(name, version, bytes).await? {
                return Ok(version);
            }
            // Taken. By this very put, retried after its answer was lost? (A 409 means a
            // write is still under way: that key cannot be read yet.)
            match self.get_async(name, version).await {
                Ok(existing) if existing == bytes => return Ok(version),
                Ok(_) | Err(ModelStoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Err(ModelStoreError::Conflict {
            store: self.label.clone(),
            name: name.to_owned(),
            version,
            attempts: MAX_PUT_ATTEMPTS,
        })
    }

    async fn latest_async(&self, name: &str) -> Result<Option<ModelVersion>, ModelStoreError> {
        // Versions are never removed by millstream, but someone may: then list again.
        for _ in 0..3 {
            let Some((version, etag)) = self.list(name).await?.into_iter().max_by_key(|(v, _)| *v) else {
                return Ok(None);
            };
            if let Some(etag) = etag {
                return Ok(Some(ModelVersion { version, etag }));
            }
            // s3s-fs lists no ETags: ask for it.
            let head =
                self.client.head_object().bucket(&self.bucket).key(self.key(name, version)).send().await;
            match head {
                Ok(head) => {
                    return Ok(Some(ModelVersion {
                        version,
                        etag: head.e_tag().map(unquote).unwrap_or_default(),
                    }))
                }
                Err(e) => match classify(e) {
                    Failure::NotFound => continue,
                    failure => return Err(self.error(failure, name, version, "head")),
                },
            }
        }
        Err(ModelStoreError::Unreachable {
            store: self.label.clone(),
            reason: format!("the versions of {name} keep vanishing while listed"),
        })
    }

    fn error(&self, failure: Failure, name: &str, version: u64, op: &str) -> ModelStoreError {
        let store = self.label.clone();
        match failure {
            Failure::NotFound => ModelStoreError::NotFound { store, name: name.to_owned(), version },
            Failure::Conflict => {
                ModelStoreError::Conflict { store, name: name.to_owned(), version, attempts: 1 }
            }
            Failure::Unreachable(reason) => {
                ModelStoreError::Unreachable { store, reason: format!("{op}: {reason}") }
            }
            Failure::Other(reason) => ModelStoreError::Other { store, reason: format!("{op}: {reason}") },
        }
    }

    fn corrupt(&self, name: &str, version: u64, reason: String) -> ModelStoreError {
        ModelStoreError::Corrupt { store: self.label.clone(), name: name.to_owned(), version, reason }
    }
}

impl ModelStore for S3ModelStore {
    fn put(&self, name: &str, bytes: &[u8]) -> Result<u64, ModelStoreError> {
        self.block_on(self.put_async(name, bytes))?
    }

    fn get(&self, name: &str, version: u64) -> Result<Vec<u8>, ModelStoreError> {
        validate_name(name)?;
        self.block_on(self.get_async(name, version))?
    }

    fn latest(&self, name: &str) -> Result<Option<ModelVersion>, ModelStoreError> {
        validate_name(name)?;
        self.block_on(self.latest_async(name))?
    }

    fn versions(&self, name: &str) -> Result<Vec<u64>, ModelStoreError> {
        validate_name(name)?;
        let mut versions: Vec<u64> =
            self.block_on(self.list(name))??.into_iter().map(|(version, _)| version).collect();
        versions.sort_unstable();
        Ok(versions)
    }

    fn location(&self) -> String {
        self.label.clone()
    }
}

impl Drop for S3ModelStore {
    fn drop(&mut self) {
        // Dropping a runtime inside another one panics; this works anywhere.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for S3ModelStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3ModelStore({})", self.label)
    }
}

/// The error for a call made from inside an async runtime, where blocking would panic.
fn inside_runtime(label: &str) -> ModelStoreError {
    ModelStoreError::Other {
        store: label.to_owned(),
        reason: "the S3 model store blocks: call it from a plain thread (or spawn_blocking), not from \
                 inside an async runtime"
            .into(),
    }
}

/// Sorts a failed request into [`Failure`]s.
fn classify<E>(error: SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = error.raw_response().map(|r| r.status().as_u16());
    let code = error.code().map(str::to_owned);
    // The chain of Display texts: the Debug form of the SDK's errors is long, and carries
    // whole HTTP responses.
    let text = error_chain(&error);
    match &error {
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => return Failure::Unreachable(text),
        SdkError::DispatchFailure(failure) if failure.is_user() => return Failure::Other(text),
        SdkError::DispatchFailure(_) => return Failure::Unreachable(text),
        SdkError::ServiceError(_) => {}
        // ConstructionFailure (no credentials found, a bad request), and any new kind.
        _ => return Failure::Other(text),
    }
    match (status, code.as_deref()) {
        (_, Some("NoSuchBucket")) => Failure::Other(text),
        (Some(404), _) | (_, Some("NoSuchKey" | "NotFound")) => Failure::NotFound,
        (Some(412 | 409), _) | (_, Some("PreconditionFailed" | "ConditionalRequestConflict")) => {
            Failure::Conflict
        }
        (Some(429 | 500..=599), _)
        | (_, Some("SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable")) => {
            Failure::Unreachable(text)
        }
        _ => Failure::Other(text),
    }
}

/// An error and its sources, `a: b: c`.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// An ETag without its quotes.
fn unquote(etag: &str) -> String {
    etag.trim_matches('"').to_owned()
}
