//! Reading the boot source: plain files (unsigned) or a signed image bundle.

use std::path::{Path, PathBuf};

use bulwark_image::{Bundle, Component, ComponentKind, Manifest, RollbackState, TrustPolicy};
use sha2::{Digest, Sha384};

use crate::blob::{Blob, SignedComponent};
use crate::config::{BootSource, BundleBoot, LinuxBoot, LinuxEntry, RawBoot, RawEntry, RawLoad};
use crate::initrd_config;
use crate::measurement::{text, Event, Field};

/// Largest kernel, initrd or raw image read (1 GiB).
pub const MAX_BLOB_SIZE: u64 = 1 << 30;

/// What the guest boots, in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootPayload {
    /// A Linux kernel.
    Linux {
        /// vmlinux ELF or bzImage (a signed one is read by the loader).
        kernel: Blob,
        /// Initrd (a signed one is read by the loader).
        initrd: Option<Blob>,
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
    /// The guest firmware image (`machine.firmware`), checked by [`read_firmware`].
    pub firmware: Option<Vec<u8>>,
    /// SHA-384 of a raw payload's image, verified against the signed digest as it was
    /// read, so that the launch measurement reuses it instead of hashing the same bytes
    /// again (a Linux payload's signed blobs carry theirs).
    pub verified_raw_sha384: Option<[u8; 48]>,
    /// How long reading took, by phase (logged with the build's phases).
    pub read_timings: ReadTimings,
    /// The version to record in the rollback state once the boot has read and checked
    /// every signed component (`Vm::build` does, right after loading).
    pub pending_version: Option<PendingVersion>,
}

/// A signed image's version, checked against the rollback state file (still locked)
/// and to be recorded there once its components are loaded and checked.
#[derive(Debug, Clone)]
pub struct PendingVersion {
    state: std::sync::Arc<std::sync::Mutex<RollbackState>>,
    name: String,
    version: u64,
}

impl PartialEq for PendingVersion {
    fn eq(&self, other: &Self) -> bool {
        (&self.name, self.version) == (&other.name, other.version)
    }
}

impl Eq for PendingVersion {}

impl PendingVersion {
    /// Records the version (a no-op when a higher one is recorded).
    pub fn record(&self) -> Result<(), SourceError> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| SourceError::State("the rollback state lock is poisoned".into()))?;
        state
            .record(&self.name, self.version)
            .map_err(|e| SourceError::State(e.to_string()))
    }
}

/// Time spent reading the boot source, by phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadTimings {
    /// Checking a bundle's signatures and every byte of its contents (0 for files).
    pub verify: std::time::Duration,
    /// Reading a bundle's command line and config (and a raw boot's image) into memory,
    /// each re-hashed as read, or the plain files; a signed kernel and initrd are read
    /// later, as they are loaded (`load_and_measure`).
    pub read: std::time::Duration,
    /// Reading and checking the firmware image.
    pub firmware: std::time::Duration,
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

/// Reads everything `cfg` boots: the boot source ([`read_boot_source`]) and the
/// firmware image ([`read_firmware`]).
pub fn read_inputs(
    cfg: &crate::config::VmConfig,
    state_use: StateUse,
) -> Result<BootInputs, SourceError> {
    let started = std::time::Instant::now();
    let mut inputs = read_boot_source(&cfg.boot_source, state_use)?;
    if !inputs.origin.is_signed() {
        inputs.read_timings.read = started.elapsed();
    }
    let firmware_started = std::time::Instant::now();
    inputs.firmware = cfg
        .machine
        .firmware
        .as_deref()
        .map(read_firmware)
        .transpose()?;
    inputs.read_timings.firmware = firmware_started.elapsed();
    Ok(inputs)
}

/// Reads a firmware image and checks that it is one this VMM can load: exactly
/// [`map::FIRMWARE_SIZE`] bytes, with an OVMF-style footer table that declares the
/// kernel-hashes table where the VMM writes it ([`map::HASH_TABLE`]) and SEV metadata
/// with that page as its `KERNEL_HASHES` section.
///
/// [`map::FIRMWARE_SIZE`]: bulwark_firmware_abi::map::FIRMWARE_SIZE
/// [`map::HASH_TABLE`]: bulwark_firmware_abi::map::HASH_TABLE
pub fn read_firmware(path: &Path) -> Result<Vec<u8>, SourceError> {
    use bulwark_firmware_abi::footer::{FooterTable, SectionKind};
    use bulwark_firmware_abi::{hashes, map};
    let image = read("machine.firmware", path)?;
    let bad = |message: String| SourceError::Read {
        field: "machine.firmware",
        path: path.display().to_string(),
        message,
    };
    if image.len() as u64 != map::FIRMWARE_SIZE {
        return Err(bad(format!(
            "{} bytes: a Bulwark firmware image is exactly {} bytes",
            image.len(),
            map::FIRMWARE_SIZE
        )));
    }
    let table = FooterTable::parse(&image).map_err(|e| bad(e.to_string()))?;
    match table.hash_table().map_err(|e| bad(e.to_string()))? {
        Some((gpa, size))
            if u64::from(gpa) == map::HASH_TABLE && size as usize >= hashes::PADDED_LEN => {}
        other => {
            return Err(bad(format!(
                "the footer table declares the kernel-hashes table at {other:?}, not at {:#x} where this VMM writes it",
                map::HASH_TABLE
            )))
        }
    }
    let sections = table.sections(&image).map_err(|e| bad(e.to_string()))?;
    if !sections
        .iter()
        .any(|s| s.kind == SectionKind::KernelHashes && u64::from(s.gpa) == map::HASHES_PAGE)
    {
        return Err(bad(format!(
            "the SEV metadata has no KERNEL_HASHES section at {:#x}",
            map::HASHES_PAGE
        )));
    }
    Ok(image)
}

/// The components a boot reads into memory (each re-hashed as read, all before the
/// boot goes on), in the order they are read.
const LOADED_COMPONENTS: [ComponentKind; 4] = [
    ComponentKind::Kernel,
    ComponentKind::Initrd,
    ComponentKind::Cmdline,
    ComponentKind::Config,
];

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
                kernel: Blob::Bytes(read("boot_source.kernel", kernel)?),
                initrd: initrd
                    .as_deref()
                    .map(|p| read("boot_source.initrd", p).map(Blob::Bytes))
                    .transpose()?,
                cmdline: cmdline.clone(),
                entry: *entry,
            },
            origin: Origin::Unsigned,
            rootfs: None,
            firmware: None,
            verified_raw_sha384: None,
            read_timings: ReadTimings::default(),
            pending_version: None,
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
            firmware: None,
            verified_raw_sha384: None,
            read_timings: ReadTimings::default(),
            pending_version: None,
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

/// The policy knobs of a bundle boot source besides the keys.
struct TrustOptions<'a> {
    threshold: usize,
    min_version: u64,
    rollback_state: Option<&'a Path>,
    state_use: StateUse,
}

/// Verifies the bundle at `path` against the trust policy before reading a single
/// component, then reads the kernel, initrd, command line and config (each re-hashed
/// against the signed digest as it is read); a Linux boot gets what
/// [`signed_linux_handoff`] derives from the verified manifest.
fn read_bundle(
    path: &Path,
    trusted_keys: &[PathBuf],
    trust: TrustOptions<'_>,
    entry: LinuxEntry,
    raw: Option<&RawLoad>,
) -> Result<BootInputs, SourceError> {
    let policy = TrustPolicy::from_pem_files(trusted_keys, trust.threshold, trust.min_version)
        .map_err(|e| SourceError::Key {
            index: e.index,
            message: e.source.to_string(),
        })?;
    // Locked from before verification until the booted version is recorded.
    let state = trust
        .rollback_state
        .map(RollbackState::open)
        .transpose()
        .map_err(|e| SourceError::State(e.to_string()))?;
    let verify_started = std::time::Instant::now();
    let bundle = Bundle::open(path).map_err(|e| SourceError::Bundle(e.to_string()))?;
    // The components read into memory below are hashed as they are read (once);
    // everything else in the file is checked here, before any of them is read.
    let verified = on_boot_pool(|| bundle.verify_for_loading(&policy, &LOADED_COMPONENTS))?
        .map_err(|e| SourceError::Bundle(format!("verification failed: {e}")))?;
    let verify = verify_started.elapsed();
    let manifest = verified.manifest();
    // Refused before the rollback state records this version.
    if manifest.is_node() {
        return Err(SourceError::Bundle(format!(
            "{} is a {} image (kind \"{}\": a node OS image for a server's disk), not a tenant image: the VMM boots tenant images only",
            manifest.name,
            manifest.kind_name(),
            manifest.kind_name()
        )));
    }
    if raw.is_some() && manifest.component(ComponentKind::Config).is_some() {
        return Err(SourceError::Bundle(
            "a config component needs a Linux boot (a bundle booted as a raw binary has no initrd to carry it)".into(),
        ));
    }
    if let Some(state) = state.as_ref() {
        state
            .check(&manifest.name, manifest.version)
            .map_err(|e| SourceError::Bundle(format!("verification failed: {e}")))?;
    }
    for kind in LOADED_COMPONENTS {
        if let Some(c) = manifest.component(kind) {
            if c.size > MAX_BLOB_SIZE {
                return Err(SourceError::Bundle(format!(
                    "the {kind} component is {} bytes, more than the {MAX_BLOB_SIZE} this VMM loads",
                    c.size
                )));
            }
        }
    }
    let read_started = std::time::Instant::now();
    let read = |kind| {
        verified.read_component(kind).map_err(|e| {
            SourceError::Bundle(format!(
                "verification failed: reading the {kind} component: {e}"
            ))
        })
    };
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
    let bundle_file = || {
        verified
            .source()
            .file()
            .try_clone()
            .map(std::sync::Arc::new)
            .map_err(|e| SourceError::Bundle(format!("keeping the bundle file open: {e}")))
    };
    let mut verified_raw_sha384 = None;
    let payload = match raw {
        Some(r) => {
            let image = read(ComponentKind::Kernel)?
                .ok_or_else(|| SourceError::Bundle("the bundle has no kernel component".into()))?;
            if manifest.component(ComponentKind::Initrd).is_some() || !cmdline.is_empty() {
                return Err(SourceError::Bundle(
                    "a bundle booted as a raw binary must not carry an initrd or a command line (they would not be loaded)".into(),
                ));
            }
            verified_raw_sha384 = manifest
                .component(ComponentKind::Kernel)
                .and_then(|c| c.sha384())
                .copied();
            BootPayload::Raw {
                image,
                load_addr: r.load_addr,
                entry: r.entry.clone(),
            }
        }
        None => {
            // The kernel and initrd stay in the verified file: the loader reads each
            // once, hashing it against the signed digest as it writes it into guest
            // memory (`crate::blob`).
            let file = bundle_file()?;
            let signed = |kind| -> Result<Option<Blob>, SourceError> {
                let Some(c) = manifest.component(kind) else {
                    return Ok(None);
                };
                let sha384 = *c.sha384().ok_or_else(|| {
                    SourceError::Bundle(format!(
                        "the {kind} component is not bound by a SHA-384 digest"
                    ))
                })?;
                Ok(Some(Blob::Signed(SignedComponent {
                    kind,
                    file: file.clone(),
                    offset: c.offset,
                    len: c.size,
                    sha384,
                    appended: Vec::new(),
                })))
            };
            let kernel = signed(ComponentKind::Kernel)?
                .ok_or_else(|| SourceError::Bundle("the bundle has no kernel component".into()))?;
            let initrd = signed(ComponentKind::Initrd)?;
            let config = read(ComponentKind::Config)?;
            let (cmdline, initrd) =
                signed_linux_handoff(manifest, config.as_deref(), cmdline, initrd)?;
            BootPayload::Linux {
                kernel,
                initrd,
                cmdline,
                entry,
            }
        }
    };
    // Recorded once every loaded component is read and checked (`Vm::build`); the
    // state file stays locked until then.
    let pending_version = match (state, trust.state_use) {
        (Some(state), StateUse::Record) => Some(PendingVersion {
            state: std::sync::Arc::new(std::sync::Mutex::new(state)),
            name: manifest.name.clone(),
            version: manifest.version,
        }),
        _ => None,
    };
    let rootfs = match manifest.component(ComponentKind::Rootfs) {
        Some(c) => {
            let end = c
                .stored_end()
                .ok_or_else(|| SourceError::Bundle("the rootfs extent overflows".into()))?;
            Some(RootfsExtent {
                path: path.to_path_buf(),
                file: bundle_file()?,
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
        firmware: None,
        verified_raw_sha384,
        read_timings: ReadTimings {
            verify,
            read: read_started.elapsed(),
            firmware: std::time::Duration::ZERO,
        },
        pending_version,
    })
}

/// Runs `f` (the bundle's verification, parallel inside) on a thread pool of its own
/// and returns once every thread of that pool has been joined. The process-wide pool
/// would keep idle threads for the VMM's lifetime, the only threads without the seccomp
/// filter that each VMM thread installs for itself: a guest that took over a filtered
/// thread could hand them work. (And their stacks would stay resident.)
fn on_boot_pool<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T, SourceError> {
    use std::sync::{Arc, Mutex, PoisonError};
    let threads: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>> = Arc::default();
    let spawned = Arc::clone(&threads);
    let pool = rayon::ThreadPoolBuilder::new()
        .spawn_handler(move |worker| {
            let handle = std::thread::Builder::new()
                .name(format!("verify-{}", worker.index()))
                .spawn(move || worker.run())?;
            spawned
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(handle);
            Ok(())
        })
        .build()
        .map_err(|e| SourceError::Bundle(format!("starting the verification threads: {e}")))?;
    let out = pool.install(f);
    // Dropping the pool ends its workers; joining waits until each thread is gone.
    drop(pool);
    let handles = std::mem::take(&mut *threads.lock().unwrap_or_else(PoisonError::into_inner));
    for h in handles {
        h.join()
            .map_err(|_| SourceError::Bundle("a verification thread panicked".into()))?;
    }
    Ok(out)
}

/// What a signed bundle booted as Linux gives the guest beyond its signed command line
/// and initrd, derived from the verified manifest and the verified config bytes: the one
/// place this is computed (booting and `bulwark-vmm measure` both get it through
/// [`read_boot_source`], so both load and measure the same bytes). Specified byte for
/// byte in `docs/image-format.md` ("What the VMM gives the guest from a signed bundle"):
///
/// - with a `rootfs` component, the fragment
///   `bulwark.verity=1:<algorithm>:<data_block_size>:<hash_block_size>:<data_blocks>:<hash_start_block>:<root_hash>:<salt or ->`;
/// - with a `config` component, the fragment `bulwark.config_sha384=<hex>` and
///   [`initrd_config::config_archive`] appended to the initrd (padded to 4 bytes first;
///   without an initrd, the archive is the initrd).
///
/// Fragments follow `cmdline` in that order, each after one space (no space before the
/// first one when `cmdline` is empty). A bundle with neither component gets `cmdline`
/// and `initrd` back unchanged.
pub fn signed_linux_handoff(
    manifest: &Manifest,
    config: Option<&[u8]>,
    cmdline: String,
    initrd: Option<Blob>,
) -> Result<(String, Option<Blob>), SourceError> {
    let mut fragments = Vec::new();
    if let Some(rootfs) = manifest.component(ComponentKind::Rootfs) {
        fragments.push(verity_fragment(rootfs)?);
    }
    let initrd = match config {
        Some(config) => {
            fragments.push(format!(
                "bulwark.config_sha384={}",
                hex::encode(Sha384::digest(config))
            ));
            let archive = initrd_config::config_archive(config)
                .map_err(|e| SourceError::Bundle(e.to_string()))?;
            Some(match initrd {
                Some(Blob::Signed(mut c)) => {
                    // The padding and the archive follow the signed bytes in guest
                    // memory; the measurement covers them, the signature does not.
                    c.appended = initrd_config::archive_after(c.len, &archive);
                    Blob::Signed(c)
                }
                Some(Blob::Bytes(b)) => {
                    Blob::Bytes(initrd_config::append_archive(Some(b), &archive))
                }
                None => Blob::Bytes(archive),
            })
        }
        None => initrd,
    };
    let mut cmdline = cmdline;
    for f in fragments {
        if !cmdline.is_empty() {
            cmdline.push(' ');
        }
        cmdline.push_str(&f);
    }
    Ok((cmdline, initrd))
}

/// The `bulwark.verity=` fragment for the rootfs component: its dm-verity parameters, the
/// hash tree's start given in hash blocks from the start of the disk the VMM serves (the
/// rootfs extent followed by its tree, [`RootfsExtent`]).
fn verity_fragment(rootfs: &Component) -> Result<String, SourceError> {
    let bad = |m: String| SourceError::Bundle(format!("the rootfs component's verity.{m}"));
    let v = rootfs.verity().ok_or_else(|| {
        SourceError::Bundle("the rootfs component has no dm-verity parameters".into())
    })?;
    if v.version != 1 {
        return Err(bad(format!(
            "version is {}: this VMM hands the guest only version 1",
            v.version
        )));
    }
    let tree_offset = v.hash_offset.checked_sub(rootfs.offset).ok_or_else(|| {
        bad(format!(
            "hash_offset {} lies before the rootfs offset {}",
            v.hash_offset, rootfs.offset
        ))
    })?;
    let block = u64::from(v.hash_block_size);
    let hash_start_block = match tree_offset.checked_div(block) {
        Some(q) if tree_offset.is_multiple_of(block) => q,
        _ => {
            return Err(bad(format!(
                "hash_offset {} is not a whole number of {}-byte hash blocks after the rootfs offset {}",
                v.hash_offset, v.hash_block_size, rootfs.offset
            )))
        }
    };
    let salt = if v.salt.is_empty() {
        "-".to_string()
    } else {
        hex::encode(&v.salt)
    };
    Ok(format!(
        "bulwark.verity=1:{}:{}:{}:{}:{}:{}:{}",
        v.algorithm.name(),
        v.data_block_size,
        v.hash_block_size,
        v.data_blocks,
        hash_start_block,
        hex::encode(&v.root_hash),
        salt
    ))
}

#[cfg(test)]
mod tests {
    use bulwark_image::{Integrity, VerityHash, VerityParams};

    use super::*;
    use crate::initrd_config::tests::parse_newc;

    const DATA_START: u64 = 8192;

    fn sha(kind: ComponentKind, offset: u64, size: u64) -> Component {
        Component {
            kind,
            offset,
            size,
            integrity: Integrity::Sha384([7; 48]),
        }
    }

    /// A manifest with a kernel, optionally a config and a 3-block rootfs whose tree
    /// starts `tree_gap` bytes after the rootfs.
    fn manifest(config: bool, rootfs: Option<(u64, Vec<u8>)>) -> Manifest {
        let mut components = vec![sha(ComponentKind::Kernel, DATA_START, 100)];
        if config {
            components.push(sha(ComponentKind::Config, DATA_START + 4096, 10));
        }
        if let Some((tree_gap, salt)) = rootfs {
            let offset = DATA_START + 8192;
            components.push(Component {
                kind: ComponentKind::Rootfs,
                offset,
                size: 3 * 4096,
                integrity: Integrity::Verity(VerityParams {
                    version: 1,
                    algorithm: VerityHash::Sha256,
                    data_block_size: 4096,
                    hash_block_size: 4096,
                    data_blocks: 3,
                    hash_offset: offset + tree_gap,
                    hash_size: 4096,
                    salt,
                    root_hash: (0..32).collect(),
                }),
            });
        }
        Manifest {
            name: "t".into(),
            version: 1,
            created: 0,
            components,
            node: None,
        }
    }

    const ROOT: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn no_rootfs_and_no_config_change_nothing() {
        let m = manifest(false, None);
        for (cmdline, initrd) in [
            ("", None),
            ("console=ttyS0", Some(Blob::Bytes(b"abc".to_vec()))),
        ] {
            let got = signed_linux_handoff(&m, None, cmdline.into(), initrd.clone()).unwrap();
            assert_eq!(got, (cmdline.to_string(), initrd));
        }
    }

    #[test]
    fn the_rootfs_gives_the_verity_fragment() {
        let m = manifest(false, Some((3 * 4096, vec![0xab, 0x01])));
        let want = format!("bulwark.verity=1:sha256:4096:4096:3:3:{ROOT}:ab01");
        let (cmdline, initrd) = signed_linux_handoff(
            &m,
            None,
            "console=ttyS0".into(),
            Some(Blob::Bytes(b"i".to_vec())),
        )
        .unwrap();
        assert_eq!(cmdline, format!("console=ttyS0 {want}"));
        assert_eq!(
            initrd,
            Some(Blob::Bytes(b"i".to_vec())),
            "no config: the initrd is untouched"
        );
        let (cmdline, initrd) = signed_linux_handoff(&m, None, String::new(), None).unwrap();
        assert_eq!((cmdline, initrd), (want, None), "no leading space");
        // An empty salt is written as "-"; the start block counts from the rootfs.
        let m = manifest(false, Some((5 * 4096, vec![])));
        let (cmdline, _) = signed_linux_handoff(&m, None, String::new(), None).unwrap();
        assert_eq!(
            cmdline,
            format!("bulwark.verity=1:sha256:4096:4096:3:5:{ROOT}:-")
        );
    }

    #[test]
    fn a_tree_not_on_a_hash_block_boundary_is_refused() {
        for gap in [3 * 4096 + 512, 1] {
            let m = manifest(false, Some((gap, vec![1])));
            let e = signed_linux_handoff(&m, None, String::new(), None).unwrap_err();
            assert!(matches!(e, SourceError::Bundle(_)));
            assert!(
                e.to_string().contains("verity.hash_offset")
                    && e.to_string().contains("4096-byte hash blocks"),
                "{e}"
            );
        }
        // A tree before the rootfs (and a zero block size) are refused, not a panic.
        let mut m = manifest(false, Some((0, vec![1])));
        if let Integrity::Verity(v) = &mut m.components[1].integrity {
            v.hash_offset = 5;
        }
        let e = signed_linux_handoff(&m, None, String::new(), None).unwrap_err();
        assert!(
            e.to_string().contains("lies before the rootfs offset"),
            "{e}"
        );
        let mut m = manifest(false, Some((4096, vec![1])));
        if let Integrity::Verity(v) = &mut m.components[1].integrity {
            v.hash_block_size = 0;
        }
        let e = signed_linux_handoff(&m, None, String::new(), None).unwrap_err();
        assert!(e.to_string().contains("verity.hash_offset"), "{e}");
    }

    #[test]
    fn the_config_gives_an_archive_and_its_digest_after_the_verity_fragment() {
        let config = br#"{"workload":"x"}"#;
        let digest = hex::encode(Sha384::digest(config));
        let m = manifest(true, Some((3 * 4096, vec![0xab])));
        let initrd = b"0123456".to_vec(); // 7 bytes: one byte of padding
        let (cmdline, got) = signed_linux_handoff(
            &m,
            Some(config),
            "quiet".into(),
            Some(Blob::Bytes(initrd.clone())),
        )
        .unwrap();
        assert_eq!(
            cmdline,
            format!("quiet bulwark.verity=1:sha256:4096:4096:3:3:{ROOT}:ab bulwark.config_sha384={digest}")
        );
        let got = got.unwrap().read().unwrap().into_owned();
        assert_eq!(&got[..7], &initrd[..]);
        assert_eq!(got[7], 0);
        let entries = parse_newc(&got[8..]);
        assert_eq!(entries.len(), 3);
        assert_eq!(
            (
                entries[1].name.as_str(),
                entries[1].mode,
                &entries[1].data[..]
            ),
            ("bulwark/config.json", 0o100400, &config[..])
        );
        // Without an initrd (and without a rootfs), the archive is the initrd.
        let m = manifest(true, None);
        let (cmdline, got) = signed_linux_handoff(&m, Some(config), String::new(), None).unwrap();
        assert_eq!(cmdline, format!("bulwark.config_sha384={digest}"));
        assert_eq!(
            got,
            Some(Blob::Bytes(initrd_config::config_archive(config).unwrap()))
        );
    }

    /// A signed initrd still in the bundle gets the same padding and archive after it as
    /// one in memory, for every length modulo 4.
    #[test]
    fn a_signed_initrd_gets_the_archive_the_in_memory_one_gets() {
        use std::io::Write;
        let config = br#"{"workload":"x"}"#;
        let m = manifest(true, None);
        for len in 0..8usize {
            let body: Vec<u8> = (0..len as u8).map(|b| b + 1).collect();
            let mut f = tempfile::tempfile().unwrap();
            f.write_all(&body).unwrap();
            let signed = Blob::Signed(SignedComponent {
                kind: ComponentKind::Initrd,
                file: std::sync::Arc::new(f),
                offset: 0,
                len: len as u64,
                sha384: Sha384::digest(&body).into(),
                appended: Vec::new(),
            });
            let (_, streamed) =
                signed_linux_handoff(&m, Some(config), String::new(), Some(signed)).unwrap();
            let (_, in_memory) =
                signed_linux_handoff(&m, Some(config), String::new(), Some(Blob::Bytes(body)))
                    .unwrap();
            let (streamed, in_memory) = (streamed.unwrap(), in_memory.unwrap());
            assert_eq!(streamed.len(), in_memory.len());
            assert_eq!(streamed.read().unwrap(), in_memory.read().unwrap());
            assert_eq!(streamed.known_sha384(), None, "the archive is not signed");
        }
    }
}
