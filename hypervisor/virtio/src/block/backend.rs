//! Disk backends: a whole file, or a byte range of a file (the rootfs extent
//! inside a verified image bundle, served in place), read-only or writable.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;

/// Why a backend could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The file could not be opened or measured.
    #[error("disk file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: io::Error,
    },
    /// The range is empty, not sector aligned, or past the end of the file.
    #[error("disk range {offset}+{len} is not a sector-aligned, non-empty range inside the {file_len}-byte file")]
    BadRange {
        /// Range start.
        offset: u64,
        /// Range length.
        len: u64,
        /// File size.
        file_len: u64,
    },
}

/// A disk: `len` bytes of `file` starting at `offset`.
#[derive(Debug)]
pub struct DiskBackend {
    file: File,
    offset: u64,
    len: u64,
    read_only: bool,
}

/// Why a disk access failed.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The access reaches past the end of the disk (or overflows).
    #[error("access {offset}+{len} is past the end of the {capacity}-byte disk")]
    OutOfRange {
        /// Start, in disk bytes.
        offset: u64,
        /// Length in bytes.
        len: u64,
        /// Disk size.
        capacity: u64,
    },
    /// A write or discard to a read-only disk.
    #[error("disk is read-only")]
    ReadOnly,
    /// The host file failed.
    #[error("disk I/O: {0}")]
    Io(#[from] io::Error),
}

impl DiskBackend {
    /// The whole of the file at `path`. Its size must be a multiple of 512.
    pub fn open_file(path: &Path, read_only: bool) -> Result<Self, BackendError> {
        let file = open(path, read_only)?;
        let len = file_len(&file, path)?;
        Self::from_range(file, 0, len, read_only)
    }

    /// `len` bytes of the file at `path` from `offset`, e.g. the rootfs extent
    /// `[rootfs offset, verity tree end)` of a verified image bundle served
    /// read-only in place.
    pub fn open_range(
        path: &Path,
        offset: u64,
        len: u64,
        read_only: bool,
    ) -> Result<Self, BackendError> {
        let file = open(path, read_only)?;
        Self::from_range(file, offset, len, read_only)
    }

    /// Wraps an already open file.
    pub fn from_range(
        file: File,
        offset: u64,
        len: u64,
        read_only: bool,
    ) -> Result<Self, BackendError> {
        let file_len = file
            .metadata()
            .map_err(|source| BackendError::Io {
                path: "(open file)".into(),
                source,
            })?
            .len();
        let end = offset.checked_add(len);
        if len == 0 || !len.is_multiple_of(SECTOR_SIZE) || end.is_none_or(|e| e > file_len) {
            return Err(BackendError::BadRange {
                offset,
                len,
                file_len,
            });
        }
        Ok(Self {
            file,
            offset,
            len,
            read_only,
        })
    }

    /// Disk size in bytes.
    pub fn capacity(&self) -> u64 {
        self.len
    }

    /// Whether writes are refused.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The file offset of disk bytes `[pos, pos + len)`, checked.
    fn locate(&self, pos: u64, len: u64) -> Result<u64, DiskError> {
        match pos.checked_add(len) {
            Some(end) if end <= self.len => Ok(self.offset + pos),
            _ => Err(DiskError::OutOfRange {
                offset: pos,
                len,
                capacity: self.len,
            }),
        }
    }

    /// Checks that `[pos, pos + len)` is inside the disk.
    pub fn check(&self, pos: u64, len: u64) -> Result<(), DiskError> {
        self.locate(pos, len).map(|_| ())
    }

    /// Reads exactly `buf.len()` bytes at disk byte `pos`.
    pub fn read_at(&self, pos: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let at = self.locate(pos, buf.len() as u64)?;
        self.file.read_exact_at(buf, at)?;
        Ok(())
    }

    /// Reads `len` bytes at disk byte `pos` straight into guest memory at
    /// `addr` (no bounce copy): `lseek` then `read(2)` into the mapping, split
    /// per memory region by `vm-memory`. The caller has checked that
    /// `[addr, addr + len)` lies in guest memory. Only the device's worker
    /// uses the file, so the shared file offset is not raced.
    pub fn read_into_guest(
        &self,
        pos: u64,
        mem: &crate::GuestMemory,
        addr: vm_memory::GuestAddress,
        len: usize,
    ) -> Result<(), DiskError> {
        use std::io::{Seek, SeekFrom};
        use vm_memory::Bytes;
        let at = self.locate(pos, len as u64)?;
        let mut file = &self.file;
        file.seek(SeekFrom::Start(at))?;
        mem.read_exact_volatile_from(addr, &mut file, len)
            .map_err(|e| DiskError::Io(io::Error::other(e)))
    }

    /// Writes `buf` at disk byte `pos`.
    pub fn write_at(&self, pos: u64, buf: &[u8]) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        let at = self.locate(pos, buf.len() as u64)?;
        self.file.write_all_at(buf, at)?;
        Ok(())
    }

    /// Makes written data durable.
    pub fn flush(&self) -> Result<(), DiskError> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()?;
        Ok(())
    }

    /// Deallocates `[pos, pos + len)`; it then reads as zeros.
    pub fn discard(&self, pos: u64, len: u64) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        let at = self.locate(pos, len)?;
        rustix::fs::fallocate(
            &self.file,
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            at,
            len,
        )
        .map_err(io::Error::from)?;
        Ok(())
    }
}

fn open(path: &Path, read_only: bool) -> Result<File, BackendError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(path)
        .map_err(|source| BackendError::Io {
            path: path.display().to_string(),
            source,
        })
}

fn file_len(file: &File, path: &Path) -> Result<u64, BackendError> {
    file.metadata()
        .map(|m| m.len())
        .map_err(|source| BackendError::Io {
            path: path.display().to_string(),
            source,
        })
}
