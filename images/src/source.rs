//! Positioned reads from a bundle, whether it is a file on disk or bytes in
//! memory (tests, fuzzing). Verification reads only through this trait, so it
//! never needs the whole bundle in memory and can read from several threads.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::ImageError;

/// A random-access, read-only view of a bundle.
pub trait BundleSource: Sync {
    /// Total length in bytes.
    fn len(&self) -> u64;

    /// Whether the source is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fill `buf` from `offset`; a short source is an error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ImageError>;

    /// A name for messages.
    fn describe(&self) -> PathBuf;
}

/// A bundle file, read with `pread` so threads can share it.
#[derive(Debug)]
pub struct FileSource {
    file: File,
    len: u64,
    path: PathBuf,
}

impl FileSource {
    /// Open `path` read-only.
    pub fn open(path: &Path) -> Result<Self, ImageError> {
        let file = File::open(path).map_err(|e| ImageError::io(path, e))?;
        let meta = file.metadata().map_err(|e| ImageError::io(path, e))?;
        if !meta.is_file() {
            return Err(ImageError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
            ));
        }
        Ok(FileSource {
            file,
            len: meta.len(),
            path: path.to_path_buf(),
        })
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl BundleSource for FileSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| ImageError::io(&self.path, e))
    }

    fn describe(&self) -> PathBuf {
        self.path.clone()
    }
}

/// A bundle held in memory.
#[derive(Debug)]
pub struct BytesSource<'a>(pub &'a [u8]);

impl BundleSource for BytesSource<'_> {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        let start = usize::try_from(offset).ok();
        let slice = start
            .and_then(|s| Some((s, s.checked_add(buf.len())?)))
            .and_then(|(s, e)| self.0.get(s..e));
        match slice {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(ImageError::io(
                "<memory>",
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read past end"),
            )),
        }
    }

    fn describe(&self) -> PathBuf {
        PathBuf::from("<memory>")
    }
}
