//! Crash-safe file replacement: write a temporary file beside the target,
//! flush it, rename it over the target, then flush the directory. A crash at
//! any point leaves either the old file or the new one, never a mix.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::error::ImageError;

/// A temporary file that becomes `target` on [`AtomicFile::commit`] and is
/// removed if dropped before that.
#[derive(Debug)]
pub struct AtomicFile {
    target: PathBuf,
    tmp: PathBuf,
    file: File,
    committed: bool,
}

impl AtomicFile {
    /// Start a new file for `target` (empty, or a copy of `copy_of`).
    pub fn create(target: &Path, copy_of: Option<&Path>) -> Result<Self, ImageError> {
        let dir = parent_dir(target);
        let name = target
            .file_name()
            .ok_or_else(|| ImageError::io(target, std::io::ErrorKind::InvalidInput.into()))?;
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        if let Some(src) = copy_of {
            // copy_file_range underneath: a reflink or in-kernel copy where
            // the filesystem allows.
            std::fs::copy(src, &tmp).map_err(|e| ImageError::io(&tmp, e))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(copy_of.is_none())
            .open(&tmp)
            .map_err(|e| ImageError::io(&tmp, e))?;
        Ok(AtomicFile {
            target: target.to_path_buf(),
            tmp,
            file,
            committed: false,
        })
    }

    /// The temporary file being written.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Flush and move the file into place.
    pub fn commit(mut self) -> Result<(), ImageError> {
        self.file
            .sync_all()
            .map_err(|e| ImageError::io(&self.tmp, e))?;
        std::fs::rename(&self.tmp, &self.target).map_err(|e| ImageError::io(&self.target, e))?;
        self.committed = true;
        let dir = parent_dir(&self.target);
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| ImageError::io(&dir, e))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
