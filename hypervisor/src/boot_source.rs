//! Reading the boot source: plain files (unsigned) or a signed image bundle.

use std::path::Path;

use crate::config::{BootSource, LinuxEntry, RawEntry};
use crate::measurement::{text, Event, Field};

/// Largest kernel, initrd or raw image read (1 GiB).
pub const MAX_BLOB_SIZE: u64 = 1 << 30;

/// What the guest boots, in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootPayload {
    /// A Linux kernel.
    Linux {
        /// vmlinux ELF or bzImage bytes.
        kernel: Vec<u8>,
        /// Initrd bytes.
        initrd: Option<Vec<u8>>,
        /// Command line.
        cmdline: String,
        /// Entry choice.
        entry: LinuxEntry,
    },
    /// A flat binary.
    Raw {
        /// The bytes.
        image: Vec<u8>,
        /// Where they go.
        load_addr: u64,
        /// Entry state.
        entry: RawEntry,
    },
}

/// Where the payload came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    /// Plain files: nothing vouches for them.
    Unsigned,
    /// A bundle whose signatures met the trust policy.
    Signed {
        /// Image name from the signed manifest.
        name: String,
        /// Image version from the signed manifest.
        version: u64,
    },
}

impl Origin {
    /// The measured `boot-source` event.
    pub fn event(&self) -> Event {
        match self {
            Origin::Unsigned => Event::new("boot-source", vec![Field::U8(0)], "unsigned files"),
            Origin::Signed { name, version } => Event::new(
                "boot-source",
                vec![Field::U8(1), text(name), Field::U64(*version)],
                format!("signed bundle {name} version {version}"),
            ),
        }
    }

    /// Whether the boot source was a verified bundle.
    pub fn is_signed(&self) -> bool {
        matches!(self, Origin::Signed { .. })
    }
}

/// The payload and its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootInputs {
    /// What to load.
    pub payload: BootPayload,
    /// Who vouches for it.
    pub origin: Origin,
}

/// Errors reading the boot source, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A file could not be read.
    #[error("{field}: reading {path}: {message}")]
    Read {
        /// Config field.
        field: &'static str,
        /// The path.
        path: String,
        /// Why.
        message: String,
    },
    /// The bundle failed verification or is unusable.
    #[error("boot_source.path: {0}")]
    Bundle(String),
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, SourceError> {
    let err = |message: String| SourceError::Read {
        field,
        path: path.display().to_string(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    if meta.len() > MAX_BLOB_SIZE {
        return Err(err(format!("larger than {MAX_BLOB_SIZE} bytes")));
    }
    std::fs::read(path).map_err(|e| err(e.to_string()))
}

/// Reads (and for bundles, verifies) the boot source.
pub fn read_boot_source(source: &BootSource) -> Result<BootInputs, SourceError> {
    match source {
        BootSource::Linux { kernel, initrd, cmdline, entry } => Ok(BootInputs {
            payload: BootPayload::Linux {
                kernel: read("boot_source.kernel", kernel)?,
                initrd: initrd.as_deref().map(|p| read("boot_source.initrd", p)).transpose()?,
                cmdline: cmdline.clone(),
                entry: *entry,
            },
            origin: Origin::Unsigned,
        }),
        BootSource::Raw { image, load_addr, entry } => Ok(BootInputs {
            payload: BootPayload::Raw {
                image: read("boot_source.image", image)?,
                load_addr: *load_addr,
                entry: entry.clone(),
            },
            origin: Origin::Unsigned,
        }),
        BootSource::Bundle { .. } => Err(SourceError::Bundle(
            "signed image bundles are not supported by this build yet (the bulwark-image crate is not merged); use kind \"linux\" or \"raw\"".into(),
        )),
    }
}
