//! Provisioning the state partition at install: formatted ext4 (with e2fsprogs'
//! `mkfs.ext4`, at the partition's offset on the disk or disk image) and, when the
//! provider gives them, seeded with the node's own files (`mkfs.ext4 -d`): bulwarkd's
//! API TLS files, the TPM's EK issuer chain, the provider's public key. bulwark-node-init
//! mounts it on `/var/lib/bulwark` at boot.
//!
//! The partition is **not encrypted** (the TPM-sealed key is not built): what is put
//! on it can be read from the disk. The report says so.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::disk::STATE_LABEL;
use crate::install::InstallReport;
use crate::NodeImageError;

/// What [`format_state`] did.
#[derive(Clone, Debug, Serialize)]
pub struct StateReport {
    /// Byte offset of the state partition on the disk.
    pub offset: u64,
    /// Its size in bytes.
    pub bytes: u64,
    /// The filesystem made.
    pub filesystem: &'static str,
    /// The directory whose contents were copied in, if any.
    pub seeded_from: Option<PathBuf>,
    /// Regular files copied in.
    pub files: u64,
    /// Always false: the TPM-sealed encryption of the state partition is not built.
    pub encrypted: bool,
}

/// Checks, before anything is written, that the state partition can be formatted:
/// `mkfs.ext4` runs and `files`, when given, is a directory.
pub fn check_state_inputs(files: Option<&Path>) -> Result<(), NodeImageError> {
    if let Some(dir) = files {
        if !dir.is_dir() {
            return Err(NodeImageError::Invalid(format!(
                "--state-files {}: not a directory",
                dir.display()
            )));
        }
    }
    match Command::new("mkfs.ext4").arg("-V").output() {
        Ok(_) => Ok(()),
        Err(e) => Err(NodeImageError::Invalid(format!(
            "mkfs.ext4 (e2fsprogs) is needed to format the state partition: {e}"
        ))),
    }
}

/// Formats the state partition of the disk `install` just wrote (`report`) as ext4
/// labelled `bulwark-state`, with the contents of `files` when given.
pub fn format_state(
    disk: &Path,
    report: &InstallReport,
    files: Option<&Path>,
) -> Result<StateReport, NodeImageError> {
    let part = report
        .partitions
        .iter()
        .find(|p| p.label == STATE_LABEL)
        .ok_or_else(|| {
            NodeImageError::Invalid(format!("the install report has no {STATE_LABEL} partition"))
        })?;
    let count = match files {
        Some(dir) => {
            if !dir.is_dir() {
                return Err(NodeImageError::Invalid(format!(
                    "--state-files {}: not a directory",
                    dir.display()
                )));
            }
            count_files(dir)?
        }
        None => 0,
    };
    let sector = crate::disk::gpt::SECTOR;
    let (offset, bytes) = (part.start * sector, part.sectors * sector);
    let mut mkfs = Command::new("mkfs.ext4");
    mkfs.args(["-q", "-F", "-L", STATE_LABEL, "-E"])
        .arg(format!("offset={offset}"));
    if let Some(dir) = files {
        mkfs.arg("-d").arg(dir);
    }
    mkfs.arg(disk).arg(format!("{}k", bytes / 1024));
    let out = mkfs.output().map_err(|e| {
        NodeImageError::Invalid(format!(
            "running mkfs.ext4 (e2fsprogs) to format the state partition: {e}"
        ))
    })?;
    if !out.status.success() {
        return Err(NodeImageError::Invalid(format!(
            "mkfs.ext4 on the state partition of {} failed ({}): {}",
            disk.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(StateReport {
        offset,
        bytes,
        filesystem: "ext4",
        seeded_from: files.map(Path::to_path_buf),
        files: count,
        encrypted: false,
    })
}

/// Regular files under `dir`, recursively (symlinks not followed).
fn count_files(dir: &Path) -> Result<u64, NodeImageError> {
    let io = |e: std::io::Error| NodeImageError::Io {
        path: dir.display().to_string(),
        source: e,
    };
    let mut n = 0;
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let ty = entry.file_type().map_err(io)?;
        if ty.is_dir() {
            n += count_files(&entry.path())?;
        } else if ty.is_file() {
            n += 1;
        }
    }
    Ok(n)
}
