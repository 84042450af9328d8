//! Naming a model store: [`ModelStoreSpec`] (the url) and [`ModelStoreConfig`] (the url plus
//! the S3 settings, as read from the configuration file).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{FileModelStore, ModelStore, ModelStoreError, S3ModelStore};

/// The region S3 requests are signed for when neither the config nor `AWS_REGION` /
/// `AWS_DEFAULT_REGION` says.
pub const DEFAULT_REGION: &str = "us-east-1";
/// The default of [`ModelStoreConfig::timeout_ms`].
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// Where models are: `s3://BUCKET/PREFIX` or `file://DIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelStoreSpec {
    /// `file://DIR`: `file:///var/lib/models` (absolute) or `file://models` (relative to the
    /// working directory).
    File { dir: PathBuf },
    /// `s3://BUCKET` or `s3://BUCKET/PREFIX`. The prefix has no leading or trailing `/`
    /// (empty: models at the top of the bucket).
    S3 { bucket: String, prefix: String },
}

impl ModelStoreSpec {
    /// Parses `s3://BUCKET[/PREFIX]` or `file://DIR`.
    ///
    /// The bucket follows S3's naming rules (3 to 63 lowercase letters, digits, `-` and `.`,
    /// starting and ending with a letter or digit). The prefix is a path of non-empty segments
    /// other than `.` and `..`; a trailing `/` is dropped.
    pub fn parse(url: &str) -> Result<Self, ModelStoreError> {
        let invalid = |reason: String| ModelStoreError::Invalid(format!("model store {url:?}: {reason}"));
        if let Some(dir) = url.strip_prefix("file://") {
            if dir.is_empty() {
                return Err(invalid("no directory after file://".into()));
            }
            return Ok(ModelStoreSpec::File { dir: PathBuf::from(dir) });
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            check_bucket(bucket).map_err(|reason| invalid(reason.into()))?;
            let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
            if !prefix.is_empty() {
                for segment in prefix.split('/') {
                    if segment.is_empty() || segment == "." || segment == ".." {
                        return Err(invalid(format!(
                            "the prefix {prefix:?} has an empty, '.' or '..' segment"
                        )));
                    }
                    if segment.chars().any(|c| c.is_control()) {
                        return Err(invalid("the prefix has a control character".into()));
                    }
                }
            }
            return Ok(ModelStoreSpec::S3 { bucket: bucket.to_owned(), prefix: prefix.to_owned() });
        }
        Err(invalid("expected s3://BUCKET/PREFIX or file://DIR".into()))
    }
}

impl fmt::Display for ModelStoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelStoreSpec::File { dir } => write!(f, "file://{}", dir.display()),
            ModelStoreSpec::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            ModelStoreSpec::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

impl std::str::FromStr for ModelStoreSpec {
    type Err = ModelStoreError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        ModelStoreSpec::parse(url)
    }
}

fn check_bucket(bucket: &str) -> Result<(), &'static str> {
    if bucket.len() < 3 || bucket.len() > 63 {
        return Err("the bucket name must have 3 to 63 characters");
    }
    if !bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.') {
        return Err("the bucket name may hold only lowercase letters, digits, '-' and '.'");
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bucket.as_bytes()[0]) || !alnum(bucket.as_bytes()[bucket.len() - 1]) {
        return Err("the bucket name must start and end with a letter or digit");
    }
    if bucket.contains("..") {
        return Err("the bucket name must not contain '..'");
    }
    Ok(())
}

/// The model store settings. Credentials are never part of it: the S3 store takes them from
/// the standard AWS chain (`AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
/// `AWS_PROFILE` and the shared credentials file, web identity, container and instance roles).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelStoreConfig {
    /// Where models are: `s3://BUCKET/PREFIX` or `file://DIR`.
    pub url: String,
    /// S3 only: the endpoint, `http(s)://HOST[:PORT]`, for an S3-compatible server (MinIO,
    /// s3s-fs, …). Default: AWS's endpoint for the region, or `AWS_ENDPOINT_URL` when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// S3 only: the region requests are signed for. Default: `AWS_REGION`, else
    /// `AWS_DEFAULT_REGION`, else `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// S3 only: path-style addressing (`ENDPOINT/BUCKET/KEY`) rather than virtual-hosted
    /// (`BUCKET.ENDPOINT/KEY`). Most S3-compatible servers need it. Default: true.
    #[serde(default = "default_path_style")]
    pub path_style: bool,
    /// The longest one request to the store may take, retries included, in ms (a put makes
    /// two: a listing and the upload). Connecting may take at most 1 s of it, so a store that
    /// is down fails fast. Default: 10000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_path_style() -> bool {
    true
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

impl ModelStoreConfig {
    /// The settings for `url`, every other one at its default.
    pub fn new(url: impl Into<String>) -> Self {
        ModelStoreConfig {
            url: url.into(),
            endpoint: None,
            region: None,
            path_style: true,
            timeout_ms: DEFAULT_TIMEOUT_MS,
        }
    }

    /// Checks the settings and parses the url.
    pub fn spec(&self) -> Result<ModelStoreSpec, ModelStoreError> {
        let spec = ModelStoreSpec::parse(&self.url)?;
        if self.timeout_ms == 0 {
            return Err(ModelStoreError::Invalid("model store timeout_ms must be above 0".into()));
        }
        if let ModelStoreSpec::File { .. } = spec {
            if self.endpoint.is_some() || self.region.is_some() {
                return Err(ModelStoreError::Invalid(format!(
                    "model store {}: endpoint and region are for s3:// stores only",
                    self.url
                )));
            }
        }
        if let Some(endpoint) = &self.endpoint {
            check_endpoint(endpoint)?;
        }
        if let Some(region) = &self.region {
            if region.is_empty() || !region.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(ModelStoreError::Invalid(format!(
                    "model store region {region:?} is not a region name"
                )));
            }
        }
        Ok(spec)
    }

    /// [`ModelStoreConfig::timeout_ms`] as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The region S3 requests are signed for: [`ModelStoreConfig::region`], else `AWS_REGION`,
    /// else `AWS_DEFAULT_REGION`, else [`DEFAULT_REGION`].
    pub fn effective_region(&self) -> String {
        self.region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok().filter(|r| !r.is_empty()))
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok().filter(|r| !r.is_empty()))
            .unwrap_or_else(|| DEFAULT_REGION.to_owned())
    }

    /// Opens the store: a [`FileModelStore`] (its directory is created when missing) or an
    /// [`S3ModelStore`] with the standard credential chain.
    pub fn open(&self) -> Result<Box<dyn ModelStore>, ModelStoreError> {
        match self.spec()? {
            ModelStoreSpec::File { dir } => Ok(Box::new(FileModelStore::open(dir)?)),
            ModelStoreSpec::S3 { .. } => Ok(Box::new(S3ModelStore::connect(self)?)),
        }
    }
}

/// An endpoint must be `http://` or `https://` with a host, and carry no credentials (they
/// would end up in logs).
fn check_endpoint(endpoint: &str) -> Result<(), ModelStoreError> {
    let invalid = |reason: &str| {
        // Never echo an endpoint that may hold a password.
        let shown = if endpoint.contains('@') { "(hidden)" } else { endpoint };
        ModelStoreError::Invalid(format!("model store endpoint {shown}: {reason}"))
    };
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .ok_or_else(|| invalid("expected http://HOST[:PORT] or https://HOST[:PORT]"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(invalid(
            "credentials do not belong in the endpoint: use AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        ));
    }
    if authority.is_empty() {
        return Err(invalid("no host"));
    }
    Ok(())
}
