//! Rollback protection across runs: the highest version seen per image name,
//! kept in a small JSON file that is updated crash-safely under a lock.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic::AtomicFile;
use crate::error::ImageError;

/// Largest state file accepted.
const MAX_STATE_LEN: u64 = 16 << 20;

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    /// Highest verified version per image name.
    highest_version: BTreeMap<String, u64>,
}

/// An open, locked state file. The lock is held until it is dropped, so a
/// check and the update after it cannot interleave with another verifier.
#[derive(Debug)]
pub struct RollbackState {
    path: PathBuf,
    _lock: File,
    versions: BTreeMap<String, u64>,
}

impl RollbackState {
    /// Lock and read `path` (a missing file is an empty state).
    pub fn open(path: &Path) -> Result<Self, ImageError> {
        let lock_path = lock_path(path);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| ImageError::io(&lock_path, e))?;
        lock.lock().map_err(|e| ImageError::io(&lock_path, e))?;
        let versions = match File::open(path) {
            Ok(f) => {
                let len = f.metadata().map_err(|e| ImageError::io(path, e))?.len();
                if len > MAX_STATE_LEN {
                    return Err(state_err(
                        path,
                        format!("larger than {MAX_STATE_LEN} bytes"),
                    ));
                }
                let s: StateFile =
                    serde_json::from_reader(f).map_err(|e| state_err(path, e.to_string()))?;
                s.highest_version
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(ImageError::io(path, e)),
        };
        Ok(RollbackState {
            path: path.to_path_buf(),
            _lock: lock,
            versions,
        })
    }

    /// The highest version recorded for `name`.
    pub fn highest(&self, name: &str) -> Option<u64> {
        self.versions.get(name).copied()
    }

    /// Refuse `version` if a higher one was recorded for `name`.
    pub fn check(&self, name: &str, version: u64) -> Result<(), ImageError> {
        match self.highest(name) {
            Some(h) if version < h => Err(ImageError::Rollback {
                name: name.to_string(),
                version,
                minimum: h,
                why: "highest version recorded in the state file",
            }),
            _ => Ok(()),
        }
    }

    /// Record `version` for `name` if it is the highest, and write the file.
    pub fn record(&mut self, name: &str, version: u64) -> Result<(), ImageError> {
        if self.highest(name).is_some_and(|h| h >= version) {
            return Ok(());
        }
        self.versions.insert(name.to_string(), version);
        let body = serde_json::to_vec_pretty(&StateFile {
            highest_version: self.versions.clone(),
        })
        .map_err(|e| state_err(&self.path, e.to_string()))?;
        let out = AtomicFile::create(&self.path, None)?;
        let mut f = out.file();
        f.write_all(&body)
            .map_err(|e| ImageError::io(&self.path, e))?;
        out.commit()
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

fn state_err(path: &Path, reason: String) -> ImageError {
    ImageError::State {
        path: path.to_path_buf(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_highest_and_refuses_lower() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        let mut s = RollbackState::open(&p).unwrap();
        s.check("img", 3).unwrap();
        s.record("img", 3).unwrap();
        drop(s);
        let s = RollbackState::open(&p).unwrap();
        assert_eq!(s.highest("img"), Some(3));
        s.check("img", 3).unwrap();
        assert!(matches!(
            s.check("img", 2),
            Err(ImageError::Rollback { minimum: 3, .. })
        ));
        s.check("other", 1).unwrap();
    }

    #[test]
    fn corrupt_state_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        std::fs::write(&p, b"{not json").unwrap();
        assert!(matches!(
            RollbackState::open(&p),
            Err(ImageError::State { .. })
        ));
    }
}
