//! Reading the boot source: plain files (unsigned) or a signed image bundle.

use std::path::{Path, PathBuf};

use bulwark_image::{Bundle, ComponentKind, PublicKey, RollbackState, TrustPolicy};

use crate::config::{BootSource, BundleBoot, LinuxBoot, LinuxEntry, RawBoot, RawEntry, RawLoad};
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
        /// Hex SHA-384 of the signed manifest bytes (binds every component,
        /// the rootfs's dm-verity root hash included).
        manifest_sha384: String,
    },
}

impl Origin {
    /// The measured `boot-source` event.
    pub fn event(&self) -> Event {
        match self {
            Origin::Unsigned => Event::new("boot-source", vec![Field::U8(0)], "unsigned files"),
            Origin::Signed {
                name,
                version,
                manifest_sha384,
            } => Event::new(
                "boot-source",
                vec![
                    Field::U8(1),
                    text(name),
                    Field::U64(*version),
                    Field::Bytes(hex::decode(manifest_sha384).unwrap_or_default()),
                ],
                format!("signed bundle {name} version {version}, manifest {manifest_sha384}"),
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
    /// The rootfs of a verified bundle (and its dm-verity tree), served in place to
    /// the guest as a read-only disk when `devices.block` asks for it.
    pub rootfs: Option<RootfsExtent>,
}

/// Where a verified bundle's rootfs lies in the bundle file: the filesystem image and
/// its dm-verity hash tree, `[offset, offset + len)`, with the very file descriptor
/// that was verified (so the disk cannot be a different file swapped in at `path`).
#[derive(Debug, Clone)]
pub struct RootfsExtent {
    /// The bundle file's path (for messages).
    pub path: PathBuf,
    /// The verified bundle file, opened read-only.
    pub file: std::sync::Arc<std::fs::File>,
    /// First byte of the rootfs component.
    pub offset: u64,
    /// Bytes from `offset` to the end of the hash tree.
    pub len: u64,
}

impl PartialEq for RootfsExtent {
    fn eq(&self, other: &Self) -> bool {
        (&self.path, self.offset, self.len) == (&other.path, other.offset, other.len)
    }
}

impl Eq for RootfsExtent {}

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
    /// A trusted key could not be read.
    #[error("boot_source.trusted_keys[{index}]: {message}")]
    Key {
        /// Index in `trusted_keys`.
        index: usize,
        /// Why.
        message: String,
    },
    /// The rollback state file could not be read or written.
    #[error("boot_source.rollback_state: {0}")]
    State(String),
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

/// What reading a bundle does with its `rollback_state` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateUse {
    /// Refuse a rolled-back version, change nothing (`measure`).
    CheckOnly,
    /// Refuse a rolled-back version and record this one (booting).
    Record,
}

/// Reads (and for bundles, verifies) the boot source.
pub fn read_boot_source(
    source: &BootSource,
    state_use: StateUse,
) -> Result<BootInputs, SourceError> {
    match source {
        BootSource::Linux(LinuxBoot {
            kernel,
            initrd,
            cmdline,
            entry,
        }) => Ok(BootInputs {
            payload: BootPayload::Linux {
                kernel: read("boot_source.kernel", kernel)?,
                initrd: initrd
                    .as_deref()
                    .map(|p| read("boot_source.initrd", p))
                    .transpose()?,
                cmdline: cmdline.clone(),
                entry: *entry,
            },
            origin: Origin::Unsigned,
            rootfs: None,
        }),
        BootSource::Raw(RawBoot {
            image,
            load_addr,
            entry,
        }) => Ok(BootInputs {
            payload: BootPayload::Raw {
                image: read("boot_source.image", image)?,
                load_addr: *load_addr,
                entry: entry.clone(),
            },
            origin: Origin::Unsigned,
            rootfs: None,
        }),
        BootSource::Bundle(BundleBoot {
            path,
            trusted_keys,
            threshold,
            min_version,
            rollback_state,
            entry,
            raw,
        }) => read_bundle(
            path,
            trusted_keys,
            TrustOptions {
                threshold: *threshold,
                min_version: *min_version,
                rollback_state: rollback_state.as_deref(),
                state_use,
            },
            *entry,
            raw.as_ref(),
        ),
    }
}

/// Verifies the bundle at `path` against the trust policy before reading a single
/// component, then reads the kernel, initrd and command line (each re-hashed against
/// the signed digest as it is read).
/// The policy knobs of a bundle boot source besides the keys.
struct TrustOptions<'a> {
    threshold: usize,
    min_version: u64,
    rollback_state: Option<&'a Path>,
    state_use: StateUse,
}

fn read_bundle(
    path: &Path,
    trusted_keys: &[PathBuf],
    trust: TrustOptions<'_>,
    entry: LinuxEntry,
    raw: Option<&RawLoad>,
) -> Result<BootInputs, SourceError> {
    let keys = trusted_keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            PublicKey::from_pem_file(k).map_err(|e| SourceError::Key {
                index: i,
                message: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let policy = TrustPolicy {
        keys,
        threshold: trust.threshold,
        min_version: trust.min_version,
    };
    // Locked from before verification until the booted version is recorded.
    let mut state = trust
        .rollback_state
        .map(RollbackState::open)
        .transpose()
        .map_err(|e| SourceError::State(e.to_string()))?;
    let bundle = Bundle::open(path).map_err(|e| SourceError::Bundle(e.to_string()))?;
    let verified = bundle
        .verify(&policy)
        .map_err(|e| SourceError::Bundle(format!("verification failed: {e}")))?;
    let manifest = verified.manifest();
    if let Some(state) = state.as_mut() {
        state
            .check(&manifest.name, manifest.version)
            .map_err(|e| SourceError::Bundle(format!("verification failed: {e}")))?;
        if trust.state_use == StateUse::Record {
            state
                .record(&manifest.name, manifest.version)
                .map_err(|e| SourceError::State(e.to_string()))?;
        }
    }
    for kind in [
        ComponentKind::Kernel,
        ComponentKind::Initrd,
        ComponentKind::Cmdline,
    ] {
        if let Some(c) = manifest.component(kind) {
            if c.size > MAX_BLOB_SIZE {
                return Err(SourceError::Bundle(format!(
                    "the {kind} component is {} bytes, more than the {MAX_BLOB_SIZE} this VMM loads",
                    c.size
                )));
            }
        }
    }
    let read = |kind| {
        verified
            .read_component(kind)
            .map_err(|e| SourceError::Bundle(format!("reading the {kind} component: {e}")))
    };
    let kernel = read(ComponentKind::Kernel)?
        .ok_or_else(|| SourceError::Bundle("the bundle has no kernel component".into()))?;
    let initrd = read(ComponentKind::Initrd)?;
    let cmdline = match read(ComponentKind::Cmdline)? {
        Some(b) => String::from_utf8(b)
            .map_err(|_| SourceError::Bundle("the cmdline component is not UTF-8".into()))?,
        None => String::new(),
    };
    let origin = Origin::Signed {
        name: manifest.name.clone(),
        version: manifest.version,
        manifest_sha384: hex::encode(verified.manifest_sha384()),
    };
    let payload = match raw {
        Some(r) => {
            if initrd.is_some() || !cmdline.is_empty() {
                return Err(SourceError::Bundle(
                    "a bundle booted as a raw binary must not carry an initrd or a command line (they would not be loaded)".into(),
                ));
            }
            BootPayload::Raw {
                image: kernel,
                load_addr: r.load_addr,
                entry: r.entry.clone(),
            }
        }
        None => BootPayload::Linux {
            kernel,
            initrd,
            cmdline,
            entry,
        },
    };
    let rootfs = match manifest.component(ComponentKind::Rootfs) {
        Some(c) => {
            let end = c
                .stored_end()
                .ok_or_else(|| SourceError::Bundle("the rootfs extent overflows".into()))?;
            let file =
                verified.source().file().try_clone().map_err(|e| {
                    SourceError::Bundle(format!("keeping the bundle file open: {e}"))
                })?;
            Some(RootfsExtent {
                path: path.to_path_buf(),
                file: std::sync::Arc::new(file),
                offset: c.offset,
                len: end - c.offset,
            })
        }
        None => None,
    };
    Ok(BootInputs {
        payload,
        origin,
        rootfs,
    })
}
