//! [`FileModelStore`]: models in a directory, `DIR/NAME/v0000000001.model`.
//!
//! A put writes the bytes to a temporary file in `DIR/NAME/` (named `.tmp-…`, which listings
//! ignore), syncs it, then gives it its version name with `link(2)`, which fails when that name
//! exists: a version appears whole, in one step, and two writers can never both create the
//! same version (the loser tries the next one). Then the temporary name is removed and the
//! directory synced, so a version that `put` returned survives a crash.
//!
//! The directory must be on a file system with hard links (any local Linux one, NFS; not FAT).
//! A crash between the write and the link leaves a `.tmp-…` file behind; it is never read.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use super::{
    next_version, parse_version_file_name, validate_name, version_file_name, ModelStore, ModelStoreError,
    ModelVersion, MAX_PUT_ATTEMPTS,
};

/// Models in a directory. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct FileModelStore {
    root: PathBuf,
    /// `file://ROOT`, for messages.
    label: String,
}

impl FileModelStore {
    /// The store in `dir`, created (with its parents) when missing.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, ModelStoreError> {
        let root = dir.into();
        let label = format!("file://{}", root.display());
        let store = FileModelStore { root, label };
        if store.root.exists() {
            store.check_root()?;
        } else {
            fs::create_dir_all(&store.root).map_err(|e| store.io_error(&store.root, e))?;
            if let Some(parent) = store.root.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent).map_err(|e| store.io_error(parent, e))?;
            }
        }
        Ok(store)
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file that holds `version` of `name`.
    pub fn version_path(&self, name: &str, version: u64) -> PathBuf {
        self.root.join(name).join(version_file_name(version))
    }

    /// Creates `version` of `name` holding `bytes`, if that version does not exist yet:
    /// `Ok(false)` when it does (nothing is written).
    #[cfg(test)]
    pub(crate) fn put_version(
        &self,
        name: &str,
        version: u64,
        bytes: &[u8],
    ) -> Result<bool, ModelStoreError> {
        validate_name(name)?;
        let dir = self.model_dir(name)?;
        let temp = self.write_temp(&dir, bytes)?;
        let result = self.link_version(&dir, &temp, version);
        let _ = fs::remove_file(&temp);
        result
    }

    /// `ROOT/NAME`, created when missing. Unreachable when the root itself is gone.
    fn model_dir(&self, name: &str) -> Result<PathBuf, ModelStoreError> {
        self.check_root()?;
        let dir = self.root.join(name);
        match fs::create_dir(&dir) {
            Ok(()) => sync_dir(&self.root).map_err(|e| self.io_error(&self.root, e))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(self.io_error(&dir, e)),
        }
        Ok(dir)
    }

    /// Writes and syncs `bytes` to a new temporary file in `dir`.
    fn write_temp(&self, dir: &Path, bytes: &[u8]) -> Result<PathBuf, ModelStoreError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let temp = dir.join(format!(
            ".tmp-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            let mut file = OpenOptions::new().write(true).create_new(true).open(&temp)?;
            file.write_all(bytes)?;
            file.sync_all()
        })();
        match written {
            Ok(()) => Ok(temp),
            Err(e) => {
                let _ = fs::remove_file(&temp);
                Err(self.io_error(&temp, e))
            }
        }
    }

    /// Gives `temp` the name of `version` unless that name exists (`Ok(false)`), and syncs
    /// the directory.
    fn link_version(&self, dir: &Path, temp: &Path, version: u64) -> Result<bool, ModelStoreError> {
        let path = dir.join(version_file_name(version));
        match fs::hard_link(temp, &path) {
            Ok(()) => {
                sync_dir(dir).map_err(|e| self.io_error(dir, e))?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(self.io_error(&path, e)),
        }
    }

    fn check_root(&self) -> Result<(), ModelStoreError> {
        match fs::metadata(&self.root) {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(_) => Err(ModelStoreError::Other {
                store: self.label.clone(),
                reason: format!("{} is not a directory", self.root.display()),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ModelStoreError::Unreachable {
                store: self.label.clone(),
                reason: format!("the directory {} is gone", self.root.display()),
            }),
            Err(e) => Err(self.io_error(&self.root, e)),
        }
    }

    /// Every version of `name` with its file name, unsorted.
    fn list(&self, name: &str) -> Result<Vec<u64>, ModelStoreError> {
        validate_name(name)?;
        let dir = self.root.join(name);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // No such model, unless the whole store is gone.
                self.check_root()?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(self.io_error(&dir, e)),
        };
        let mut versions = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| self.io_error(&dir, e))?;
            if let Some(version) = entry.file_name().to_str().and_then(parse_version_file_name) {
                versions.push(version);
            }
        }
        Ok(versions)
    }

    /// An I/O error as a store error: a vanished or failing disk is worth retrying, a refused
    /// permission or a full disk is not.
    fn io_error(&self, path: &Path, e: io::Error) -> ModelStoreError {
        use io::ErrorKind::*;
        let reason = format!("{}: {e}", path.display());
        match e.kind() {
            AlreadyExists | PermissionDenied | InvalidInput | InvalidData | Unsupported
            | ReadOnlyFilesystem | StorageFull | QuotaExceeded | FileTooLarge | NotADirectory
            | IsADirectory | InvalidFilename => ModelStoreError::Other { store: self.label.clone(), reason },
            _ => ModelStoreError::Unreachable { store: self.label.clone(), reason },
        }
    }
}

impl ModelStore for FileModelStore {
    fn put(&self, name: &str, bytes: &[u8]) -> Result<u64, ModelStoreError> {
        validate_name(name)?;
        let dir = self.model_dir(name)?;
        let temp = self.write_temp(&dir, bytes)?;
        let result = (|| {
            let mut version = 0;
            for _ in 0..MAX_PUT_ATTEMPTS {
                version = next_version(&self.list(name)?, &self.label, name)?;
                if self.link_version(&dir, &temp, version)? {
                    return Ok(version);
                }
            }
            Err(ModelStoreError::Conflict {
                store: self.label.clone(),
                name: name.to_owned(),
                version,
                attempts: MAX_PUT_ATTEMPTS,
            })
        })();
        if let Err(e) = fs::remove_file(&temp) {
            tracing::warn!(path = %temp.display(), error = %e, "model store: cannot remove a temporary file");
        }
        result
    }

    fn get(&self, name: &str, version: u64) -> Result<Vec<u8>, ModelStoreError> {
        validate_name(name)?;
        let path = self.version_path(name, version);
        match fs::read(&path) {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.check_root()?;
                Err(ModelStoreError::NotFound { store: self.label.clone(), name: name.to_owned(), version })
            }
            Err(e) => Err(self.io_error(&path, e)),
        }
    }

    fn latest(&self, name: &str) -> Result<Option<ModelVersion>, ModelStoreError> {
        // A version listed a moment ago is never removed by millstream, but someone may; then
        // list again.
        for _ in 0..3 {
            let Some(version) = self.list(name)?.into_iter().max() else { return Ok(None) };
            let path = self.version_path(name, version);
            match fs::metadata(&path) {
                Ok(meta) => {
                    let nanos = meta
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_nanos());
                    return Ok(Some(ModelVersion { version, etag: format!("{}-{nanos}", meta.len()) }));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io_error(&path, e)),
            }
        }
        Err(ModelStoreError::Unreachable {
            store: self.label.clone(),
            reason: format!("the versions of {name} keep vanishing while listed"),
        })
    }

    fn versions(&self, name: &str) -> Result<Vec<u64>, ModelStoreError> {
        let mut versions = self.list(name)?;
        versions.sort_unstable();
        Ok(versions)
    }

    fn location(&self) -> String {
        self.label.clone()
    }
}

/// Syncs a directory, so the names created in it survive a crash.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
