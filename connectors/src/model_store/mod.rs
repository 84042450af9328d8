//! The model store: versioned model artifacts by name, in a directory (`file://DIR`) or an S3
//! bucket (`s3://BUCKET/PREFIX`).
//!
//! A model is opaque bytes here (its format belongs to `operators/`). It is known by a `name`
//! (an asset class such as `pump`, or a sensor kind) and a `version`: 1, 2, 3, … Versions are
//! immutable: [`ModelStore::put`] always makes a new one, numbered one above the highest there is.
//!
//! # Layout
//!
//! Both stores use the same keys under their root (the directory, or the bucket and prefix):
//!
//! ```text
//! ROOT/NAME/v0000000001.model
//! ROOT/NAME/v0000000002.model
//! ```
//!
//! The version is zero-padded to 10 digits, so listing order is version order (up to 10¹⁰ − 1;
//! the stores parse and sort numerically anyway). Keys that do not have exactly this form (a
//! `v`, the version with at least 10 digits and no extra leading zero, `.model`) are ignored, and
//! so are the temporary files of the file store.
//!
//! There is no `LATEST` pointer: the latest version is the highest one listed. A pointer would
//! be a second write that can fail or race after the model itself was written (a pointer behind
//! or ahead of the models), and it would need its own conditional update. The listing is always
//! what is really there: S3's LIST is strongly consistent, and a version appears in one atomic
//! step (one PUT, or one `link` into the directory). Its cost is one LIST per poll, fine for the
//! few versions a model accumulates.
//!
//! # Concurrent writers
//!
//! Two writers may both find version N highest and both try N + 1. Each store creates a version
//! only if it does not exist yet (the file store with `link(2)`, which refuses an existing
//! name; the S3 store with a conditional PUT, `If-None-Match: *`), so exactly one wins; the other
//! lists again and tries the next number. See [`s3`] for the servers that ignore the condition.
//!
//! # Errors
//!
//! A caller serving a model keeps it when the store fails in a way [`ModelStoreError::is_retryable`]
//! says is passing (the store is unreachable, or other writers kept winning), and tries again
//! later.
//!
//! The API is synchronous: the dataflow calls it from a background thread. The S3 store owns a
//! small tokio runtime of its own, so it must not be called from inside an async runtime (it
//! says so with an error rather than panicking).

pub mod config;
pub mod file;
pub mod s3;
#[cfg(test)]
mod tests;

pub use config::{ModelStoreConfig, ModelStoreSpec};
pub use file::FileModelStore;
pub use s3::S3ModelStore;

/// A store of versioned models. Implementations are safe to share between threads.
pub trait ModelStore: Send + Sync + std::fmt::Debug {
    /// Stores `bytes` as a new version of `name`, one above the highest there is (1 for the
    /// first), and returns that version. It is visible to readers completely or not at all.
    fn put(&self, name: &str, bytes: &[u8]) -> Result<u64, ModelStoreError>;

    /// The bytes of `version` of `name`: [`ModelStoreError::NotFound`] when there is no such
    /// version.
    fn get(&self, name: &str, version: u64) -> Result<Vec<u8>, ModelStoreError>;

    /// The highest version of `name` and its marker, or `None` when `name` has no version.
    fn latest(&self, name: &str) -> Result<Option<ModelVersion>, ModelStoreError>;

    /// Every version of `name`, ascending (empty when there is none).
    fn versions(&self, name: &str) -> Result<Vec<u64>, ModelStoreError>;

    /// The store, for messages: its url (never a secret).
    fn location(&self) -> String;

    /// The latest version of `name` and its bytes, or `None` when `name` has no version.
    fn get_latest(&self, name: &str) -> Result<Option<(ModelVersion, Vec<u8>)>, ModelStoreError> {
        match self.latest(name)? {
            None => Ok(None),
            Some(latest) => {
                let bytes = self.get(name, latest.version)?;
                Ok(Some((latest, bytes)))
            }
        }
    }
}

/// A version of a model as listed by [`ModelStore::latest`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelVersion {
    pub version: u64,
    /// Changes whenever the stored bytes do: the object's ETag in S3 (quotes removed), the
    /// file's size and modification time (`SIZE-NANOS`) in the file store. Versions are never
    /// rewritten by millstream, so it only changes when someone replaced a version by hand.
    pub etag: String,
}

/// What went wrong in a model store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelStoreError {
    /// There is no such version of the model.
    #[error("model {name} version {version} not found in {store}")]
    NotFound { store: String, name: String, version: u64 },
    /// The store cannot be reached now (connection refused or timed out, server error, the
    /// directory is gone, …). Retryable: keep serving the current model and try again later.
    #[error("model store {store} is unreachable: {reason}")]
    Unreachable { store: String, reason: String },
    /// The stored bytes fail an integrity check (for S3: the checksum stored with the object).
    #[error("model {name} version {version} in {store} is corrupt: {reason}")]
    Corrupt { store: String, name: String, version: u64, reason: String },
    /// Other writers took every version number this put tried. Retryable.
    #[error("model {name}: other writers kept taking the next version in {store} ({attempts} attempts, last {version})")]
    Conflict { store: String, name: String, version: u64, attempts: u32 },
    /// A bad model name, store url or setting.
    #[error("{0}")]
    Invalid(String),
    /// Anything else (refused credentials, a missing bucket, a full disk, …): retrying as it is
    /// will not help.
    #[error("model store {store}: {reason}")]
    Other { store: String, reason: String },
}

impl ModelStoreError {
    /// Whether the same call may succeed later: [`ModelStoreError::Unreachable`] and
    /// [`ModelStoreError::Conflict`].
    pub fn is_retryable(&self) -> bool {
        matches!(self, ModelStoreError::Unreachable { .. } | ModelStoreError::Conflict { .. })
    }
}

/// Opens the store a config names.
pub fn open(config: &ModelStoreConfig) -> Result<Box<dyn ModelStore>, ModelStoreError> {
    config.open()
}

/// How many versions [`ModelStore::put`] tries before giving up with
/// [`ModelStoreError::Conflict`].
pub(crate) const MAX_PUT_ATTEMPTS: u32 = 32;

/// The longest model name.
pub const MAX_NAME_LEN: usize = 128;

/// Checks that `name` can be a model name: 1 to [`MAX_NAME_LEN`] ASCII letters, digits, `_`,
/// `-` and `.`, not starting with `.` (so no `..`, no hidden files, no path separators).
pub fn validate_name(name: &str) -> Result<(), ModelStoreError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_NAME_LEN {
        "it is longer than 128 bytes"
    } else if name.starts_with('.') {
        "it starts with '.'"
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')) {
        "only ASCII letters, digits, '_', '-' and '.' are allowed"
    } else {
        return Ok(());
    };
    Err(ModelStoreError::Invalid(format!("invalid model name {name:?}: {reason}")))
}

/// The file name (last key segment) of `version`: `v0000000042.model`.
pub fn version_file_name(version: u64) -> String {
    format!("v{version:010}.model")
}

/// The version a file name (last key segment) holds, when it is one [`version_file_name`]
/// makes.
pub fn parse_version_file_name(file_name: &str) -> Option<u64> {
    let digits = file_name.strip_prefix('v')?.strip_suffix(".model")?;
    if digits.len() < 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let version: u64 = digits.parse().ok()?;
    // One spelling per version: no extra leading zeros.
    (version_file_name(version) == file_name).then_some(version)
}

/// The version after the highest of `versions` (1 when there is none).
pub(crate) fn next_version(versions: &[u64], store: &str, name: &str) -> Result<u64, ModelStoreError> {
    match versions.iter().max() {
        None => Ok(1),
        Some(&max) => max.checked_add(1).ok_or_else(|| ModelStoreError::Other {
            store: store.to_owned(),
            reason: format!("model {name} has reached the highest version ({max})"),
        }),
    }
}
