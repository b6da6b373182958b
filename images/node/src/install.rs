//! Install a verified node image on a disk, update the inactive slot, bless a
//! slot that booted well, and report the slots (`docs/node-image.md`, "Disk
//! layout, install, A/B updates").
//!
//! Slots are systemd-boot type #2 entries, `/EFI/Linux/bulwark-node-<version>.efi`:
//! - `bulwark-node-7.efi`: blessed (good);
//! - `bulwark-node-8+1.efi`: to be tried once; systemd-boot renames it to
//!   `bulwark-node-8+0-1.efi` before starting it;
//! - `bulwark-node-8+0-1.efi` not blessed by the next boot: bad, sorted last,
//!   so systemd-boot boots the other slot.
//!
//! The node's init calls [`bless`] once `bulwarkd` is healthy: the entry loses
//! its counter and the anti-rollback floor is raised to its version.
//!
//! Each slot's signed manifest is kept next to it,
//! `/EFI/Linux/bulwark-node-<version>.manifest`, paired by version (the
//! firmware's and blessing's renames touch the UKI alone): see
//! [`crate::booted`], which reads it back to state which image booted.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use bulwark_image::{Bundle, BundleSource, ComponentKind, ImageError, TrustPolicy};
use serde::Serialize;
use sha2::{Digest, Sha384};

use crate::booted::{manifest_file_len, manifest_path, parse_manifest_name, verify_slot};
use crate::disk::esp::{self, Container, Esp};
use crate::disk::{self, DiskError, Layout, Target};
use crate::error::NodeImageError;

/// Where Debian's systemd-boot-efi installs systemd-boot.
pub const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
/// Directory of the slot UKIs (systemd-boot type #2 entries).
pub const LINUX_DIR: &str = "EFI/Linux";
/// Entry file name prefix.
pub const ENTRY_PREFIX: &str = "bulwark-node-";
/// The two copies of the anti-rollback record.
pub const RECORD_FILES: [&str; 2] = ["loader/bulwark/floor-a", "loader/bulwark/floor-b"];
/// Size of one record copy.
const RECORD_LEN: usize = 512;
/// systemd-boot's configuration: no menu, newest good `bulwark-node-*` entry,
/// no command line editing, no automatic entries.
pub const LOADER_CONF: &str = "\
timeout 0
default bulwark-node-*
editor no
auto-entries no
auto-firmware no
console-mode keep
";
/// Largest UKI accepted.
const MAX_UKI: u64 = 1 << 30;

/// What install and update need from a verified node image.
#[derive(Clone, Debug)]
pub struct NodeImagePayload {
    /// Image name.
    pub name: String,
    /// Monotonic version.
    pub version: u64,
    /// The UKI (a PE file), the bundle's `uki` component.
    pub uki: Vec<u8>,
    /// SHA-384 of the UKI as signed in the manifest.
    pub uki_sha384: [u8; 48],
    /// The boot manager (systemd-bootx64.efi), the bundle's `bootloader`
    /// component.
    pub boot_manager: Vec<u8>,
    /// SHA-384 of the boot manager as signed in the manifest.
    pub boot_manager_sha384: [u8; 48],
    /// The signed manifest file kept next to the slot on the ESP: the
    /// bundle's header page, signature page and manifest (zero-padded to
    /// 4 KiB), exactly as the bundle stores them (`crate::booted`).
    pub signed_manifest: Vec<u8>,
}

/// Verify the signed node image at `path` against `trust` and take what
/// install/update need out of it: the UKI (`uki` component) and the boot
/// manager (`bootloader` component), both covered by the signature.
/// `progress` gets bytes verified.
///
/// Refused: a bundle that does not verify, a tenant image (no node field),
/// and a node image with no bootloader component (the disk boots through
/// systemd-boot, which must come from the signed image).
pub fn read_node_image(
    path: &Path,
    trust: &TrustPolicy,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<NodeImagePayload, NodeImageError> {
    let verified = Bundle::open(path)?.verify_with_progress(trust, progress)?;
    let m = verified.manifest();
    if m.node.is_none() {
        return Err(NodeImageError::Refused(format!(
            "{} is a tenant image, not a node image (build node images with `bulwark-node-image build`)",
            path.display()
        )));
    }
    let signed = |kind: ComponentKind, why: &str| -> Result<[u8; 48], NodeImageError> {
        m.component(kind)
            .and_then(|c| c.sha384())
            .copied()
            .ok_or_else(|| {
                NodeImageError::Refused(format!(
                    "{}: node image {} version {} has no {kind} component{why}",
                    path.display(),
                    m.name,
                    m.version
                ))
            })
    };
    let uki_sha384 = signed(ComponentKind::Uki, "")?;
    let boot_manager_sha384 = signed(
        ComponentKind::Bootloader,
        "; the disk boots through systemd-boot: rebuild it without `--no-boot-manager`",
    )?;
    let component = |kind: ComponentKind| -> Result<Vec<u8>, NodeImageError> {
        verified.read_component(kind)?.ok_or_else(|| {
            NodeImageError::Refused(format!("{}: no {kind} component", path.display()))
        })
    };
    let uki = component(ComponentKind::Uki)?;
    let boot_manager = component(ComponentKind::Bootloader)?;
    // The bundle's first bytes, with the signatures: checked again as the
    // booted node will check them, and against the manifest verified above
    // (the file could have changed since).
    let mut signed_manifest =
        vec![0u8; manifest_file_len(verified.manifest_bytes().len()) as usize];
    verified.source().read_exact_at(&mut signed_manifest, 0)?;
    let slot = verify_slot(&signed_manifest, &uki, trust)?;
    if slot.manifest_bytes != verified.manifest_bytes() {
        return Err(NodeImageError::Refused(format!(
            "{}: the manifest changed while it was read",
            path.display()
        )));
    }
    if sha384(&boot_manager) != boot_manager_sha384 {
        return Err(NodeImageError::Refused(format!(
            "{}: the bootloader component does not match its signed SHA-384",
            path.display()
        )));
    }
    Ok(NodeImagePayload {
        name: m.name.clone(),
        version: m.version,
        uki,
        uki_sha384,
        boot_manager,
        boot_manager_sha384,
        signed_manifest,
    })
}

/// A slot's boot-counting state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SlotState {
    /// No counter: marked good.
    Blessed,
    /// Tries left: systemd-boot will start it (and count down).
    Trying {
        /// Tries left.
        left: u32,
        /// Tries done.
        done: u32,
    },
    /// No tries left and not blessed: a failed boot; sorted last.
    Bad {
        /// Tries done.
        done: u32,
    },
}

/// One slot (entry) on the ESP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Slot {
    /// File name in `/EFI/Linux`.
    pub file: String,
    /// Image version.
    pub version: u64,
    /// Boot counting.
    #[serde(flatten)]
    pub state: SlotState,
}

impl Slot {
    /// Parse an entry file name; `None` for files that are not slots.
    pub fn parse(file: &str) -> Option<Slot> {
        let lower = file.to_ascii_lowercase();
        let stem = lower.strip_prefix(ENTRY_PREFIX)?.strip_suffix(".efi")?;
        let (ver, counter) = match stem.split_once('+') {
            Some((v, c)) => (v, Some(c)),
            None => (stem, None),
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(ver) {
            return None;
        }
        let version = ver.parse().ok()?;
        let state = match counter {
            None => SlotState::Blessed,
            Some(c) => {
                let (l, d) = match c.split_once('-') {
                    Some((l, d)) => (l, Some(d)),
                    None => (c, None),
                };
                if !digits(l) || d.is_some_and(|d| !digits(d)) {
                    return None;
                }
                let left = l.parse().ok()?;
                let done = d.map_or(Some(0), |d| d.parse().ok())?;
                if left == 0 {
                    SlotState::Bad { done }
                } else {
                    SlotState::Trying { left, done }
                }
            }
        };
        Some(Slot {
            file: file.to_string(),
            version,
            state,
        })
    }

    /// The blessed file name of `version`.
    pub fn blessed_name(version: u64) -> String {
        format!("{ENTRY_PREFIX}{version}.efi")
    }

    /// The file name of `version` to be tried `tries` times.
    pub fn trying_name(version: u64, tries: u32) -> String {
        format!("{ENTRY_PREFIX}{version}+{tries}.efi")
    }

    fn path(&self) -> String {
        format!("{LINUX_DIR}/{}", self.file)
    }

    fn is_bad(&self) -> bool {
        matches!(self.state, SlotState::Bad { .. })
    }
}

/// systemd-boot 252's order for these entries (`config_entry_compare`):
/// entries with no tries left last, then newest version first, then more
/// tries left first.
pub fn boot_order(slots: &mut [Slot]) {
    let left = |s: &Slot| match s.state {
        SlotState::Blessed => u32::MAX,
        SlotState::Trying { left, .. } => left,
        SlotState::Bad { .. } => 0,
    };
    slots.sort_by(|a, b| {
        a.is_bad()
            .cmp(&b.is_bad())
            .then(b.version.cmp(&a.version))
            .then(left(b).cmp(&left(a)))
    });
}

/// The anti-rollback record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Floor {
    /// Image name installed on the disk.
    pub name: String,
    /// Lowest version an update may have (the highest installed good one).
    pub version: u64,
    /// Write sequence number.
    pub seq: u64,
}

impl Floor {
    fn encode(&self) -> Vec<u8> {
        let mut b = format!(
            "bulwark-rollback v1 name={} version={} seq={}\n",
            self.name, self.version, self.seq
        )
        .into_bytes();
        b.resize(RECORD_LEN - 4, 0);
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Floor> {
        if b.len() != RECORD_LEN {
            return None;
        }
        let (body, crc) = b.split_at(RECORD_LEN - 4);
        if crc32fast::hash(body).to_le_bytes() != crc {
            return None;
        }
        let end = body.iter().position(|c| *c == b'\n')?;
        let text = std::str::from_utf8(&body[..end]).ok()?;
        let mut it = text.split(' ');
        if it.next()? != "bulwark-rollback" || it.next()? != "v1" {
            return None;
        }
        let name = it.next()?.strip_prefix("name=")?.to_string();
        let version = it.next()?.strip_prefix("version=")?.parse().ok()?;
        let seq = it.next()?.strip_prefix("seq=")?.parse().ok()?;
        Some(Floor { name, version, seq })
    }
}

/// Read both record copies: the valid one with the higher sequence number,
/// and the index of the copy to write next.
fn read_floor(esp: &Esp) -> Result<(Floor, usize), DiskError> {
    let mut best: Option<(Floor, usize)> = None;
    for (i, f) in RECORD_FILES.iter().enumerate() {
        if let Some(r) = esp
            .read_file(f, RECORD_LEN as u64)?
            .as_deref()
            .and_then(Floor::decode)
        {
            if best.as_ref().is_none_or(|(b, _)| r.seq > b.seq) {
                best = Some((r, i));
            }
        }
    }
    best.map(|(f, i)| (f, 1 - i)).ok_or_else(|| {
        DiskError::corrupt(
            &esp.path,
            format!(
                "no valid anti-rollback record ({} or {})",
                RECORD_FILES[0], RECORD_FILES[1]
            ),
        )
    })
}

/// Raise the floor to `version` (no change if it is not higher): the copy
/// not holding the current record is overwritten in place.
fn raise_floor(esp: &Esp, version: u64) -> Result<Floor, DiskError> {
    let (cur, next) = read_floor(esp)?;
    if version <= cur.version {
        return Ok(cur);
    }
    let new = Floor {
        name: cur.name,
        version,
        seq: cur.seq + 1,
    };
    esp.overwrite_in_place(RECORD_FILES[next], &new.encode())?;
    Ok(new)
}

/// The slots on `esp`, in systemd-boot's order.
pub(crate) fn list_slots(esp: &Esp) -> Result<Vec<Slot>, DiskError> {
    slots(esp)
}

fn slots(esp: &Esp) -> Result<Vec<Slot>, DiskError> {
    let mut s: Vec<Slot> = esp
        .list(LINUX_DIR)?
        .iter()
        .filter_map(|f| Slot::parse(f))
        .collect();
    boot_order(&mut s);
    Ok(s)
}

/// Run `f`, turning a panic inside it (a malformed filesystem that slipped
/// past the checks) into an error.
pub(crate) fn guarded<T>(
    path: &Path,
    f: impl FnOnce() -> Result<T, NodeImageError>,
) -> Result<T, NodeImageError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(DiskError::corrupt(path, "internal error reading a malformed filesystem").into())
    })
}

fn sha384(b: &[u8]) -> [u8; 48] {
    Sha384::digest(b).into()
}

/// Options of [`install`].
#[derive(Clone, Debug)]
pub struct InstallOptions {
    /// ESP size in MiB.
    pub esp_mib: u64,
    /// For a regular file: create it or extend it to this many bytes.
    pub create_size: Option<u64>,
}

impl Default for InstallOptions {
    fn default() -> Self {
        InstallOptions {
            esp_mib: disk::DEFAULT_ESP_MIB,
            create_size: None,
        }
    }
}

/// What [`install`] did.
#[derive(Clone, Debug, Serialize)]
pub struct InstallReport {
    /// The disk.
    pub disk: PathBuf,
    /// Disk size in bytes.
    pub disk_bytes: u64,
    /// Image name.
    pub name: String,
    /// Version installed.
    pub version: u64,
    /// Entry written.
    pub entry: String,
    /// Disk GUID.
    pub disk_guid: String,
    /// The partitions: label, type, PARTUUID, first LBA, sectors.
    pub partitions: Vec<PartitionReport>,
    /// SHA-384 of the UKI, read back from the ESP.
    pub uki_sha384: String,
    /// The slot's signed manifest on the ESP.
    pub manifest: String,
    /// Bytes of files written to the ESP.
    pub bytes_written: u64,
    /// For a block device: whether the kernel re-read the new partition
    /// table (`None` for a file).
    pub partitions_reread: Option<bool>,
    /// Why it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reread_error: Option<String>,
}

/// One partition in a report.
#[derive(Clone, Debug, Serialize)]
pub struct PartitionReport {
    /// PARTLABEL.
    pub label: String,
    /// Type GUID.
    pub type_guid: String,
    /// PARTUUID.
    pub partuuid: String,
    /// First LBA (512-byte sectors).
    pub start: u64,
    /// Size in sectors.
    pub sectors: u64,
}

/// Bytes [`install`] writes as files (for a progress bar).
pub fn install_bytes(p: &NodeImagePayload) -> u64 {
    p.uki.len() as u64 + 2 * p.boot_manager.len() as u64 + p.signed_manifest.len() as u64
}

/// Write a fresh disk: GPT, ESP with systemd-boot, `loader.conf`, the image
/// as the blessed slot and the anti-rollback record at its version; the state
/// partition's first MiB is zeroed (the node formats it). Then re-read and
/// check everything. `payload` must come from a verified bundle
/// ([`read_node_image`]).
pub fn install(
    payload: &NodeImagePayload,
    disk_path: &Path,
    opts: &InstallOptions,
    progress: &dyn Fn(u64),
) -> Result<InstallReport, NodeImageError> {
    guarded(disk_path, || {
        install_inner(payload, disk_path, opts, progress)
    })
}

fn install_inner(
    p: &NodeImagePayload,
    path: &Path,
    opts: &InstallOptions,
    progress: &dyn Fn(u64),
) -> Result<InstallReport, NodeImageError> {
    if sha384(&p.uki) != p.uki_sha384 {
        return Err(NodeImageError::Refused(
            "the UKI does not match its signed digest".into(),
        ));
    }
    let t = Target::open(path, opts.create_size)?;
    let layout = Layout::plan(path, t.size, opts.esp_mib)?;
    let (esp_part, state_part) = (layout.esp().clone(), layout.state().clone());
    // Old tables and signatures go first: a crash before the new GPT is
    // written leaves a disk without a partition table, not a stale one.
    disk::wipe(path, &t.file, 0, esp_part.offset())?;
    let tail = (layout.gpt.sectors * disk::gpt::SECTOR).saturating_sub(1 << 20);
    disk::wipe(path, &t.file, tail, t.size - tail)?;
    disk::wipe(
        path,
        &t.file,
        state_part.offset(),
        state_part.len().min(1 << 20),
    )?;

    let volume_id =
        u32::from_le_bytes(layout.esp().unique_guid.0[..4].try_into().unwrap_or([0; 4]));
    esp::format(path, &t.file, esp_part.offset(), esp_part.len(), volume_id)?;
    let esp = Esp::open_at(path, &t.file, esp_part.offset(), esp_part.len())?;
    for d in ["EFI/BOOT", "EFI/systemd", LINUX_DIR, "loader/bulwark"] {
        esp.mkdirs(d)?;
    }
    let entry = Slot::blessed_name(p.version);
    let none = &|_| {};
    esp.write_file("EFI/BOOT/BOOTX64.EFI", &p.boot_manager, progress)?;
    esp.write_file("EFI/systemd/systemd-bootx64.efi", &p.boot_manager, progress)?;
    esp.write_file("loader/loader.conf", LOADER_CONF.as_bytes(), none)?;
    let floor = Floor {
        name: p.name.clone(),
        version: p.version,
        seq: 1,
    };
    esp.write_file(RECORD_FILES[0], &floor.encode(), none)?;
    esp.write_file(RECORD_FILES[1], &Floor { seq: 0, ..floor }.encode(), none)?;
    esp.write_file(&manifest_path(p.version), &p.signed_manifest, progress)?;
    esp.write_file(&format!("{LINUX_DIR}/{entry}"), &p.uki, progress)?;
    esp.close()?;
    disk::write_gpt(path, &t.file, &layout)?;
    t.file.sync_all().map_err(|e| DiskError::io(path, e))?;
    let is_block = t.is_block;
    drop(t);
    // The exclusive open is closed: the kernel may now re-read the table.
    let reread = is_block.then(|| disk::device::reread_partitions(path));

    // Read everything back through a fresh open.
    let (esp, container) = Esp::open(path)?;
    let read = match container {
        Container::Disk(l) => *l,
        Container::Volume => return Err(DiskError::corrupt(path, "no GPT after writing it").into()),
    };
    if read != layout {
        return Err(DiskError::corrupt(path, "the partition table read back differs").into());
    }
    let uki = esp
        .read_file(&format!("{LINUX_DIR}/{entry}"), MAX_UKI)?
        .ok_or_else(|| DiskError::corrupt(path, format!("{entry} missing after writing it")))?;
    let digest = sha384(&uki);
    if digest != p.uki_sha384 {
        return Err(
            DiskError::corrupt(path, "the UKI read back does not match the signed digest").into(),
        );
    }
    for (f, want) in [
        ("EFI/BOOT/BOOTX64.EFI".to_string(), &p.boot_manager),
        (
            "EFI/systemd/systemd-bootx64.efi".to_string(),
            &p.boot_manager,
        ),
        (manifest_path(p.version), &p.signed_manifest),
    ] {
        if esp.read_file(&f, MAX_UKI)?.as_deref() != Some(&want[..]) {
            return Err(DiskError::corrupt(path, format!("{f} read back differs")).into());
        }
    }
    let (f, _) = read_floor(&esp)?;
    if f.version != p.version {
        return Err(DiskError::corrupt(path, "anti-rollback record read back differs").into());
    }
    drop(esp);
    Ok(InstallReport {
        disk: path.to_path_buf(),
        disk_bytes: layout.gpt.sectors * disk::gpt::SECTOR,
        name: p.name.clone(),
        version: p.version,
        entry,
        disk_guid: layout.gpt.disk_guid.to_string(),
        partitions: layout
            .gpt
            .partitions
            .iter()
            .map(|q| PartitionReport {
                label: q.name.clone(),
                type_guid: q.type_guid.to_string(),
                partuuid: q.unique_guid.to_string(),
                start: q.first_lba,
                sectors: q.last_lba + 1 - q.first_lba,
            })
            .collect(),
        uki_sha384: hex::encode(digest),
        manifest: manifest_path(p.version),
        bytes_written: install_bytes(p),
        partitions_reread: reread.as_ref().map(|r| r.is_ok()),
        reread_error: reread.and_then(|r| r.err()),
    })
}

/// What [`update`] did.
#[derive(Clone, Debug, Serialize)]
pub struct UpdateReport {
    /// Disk or ESP.
    pub disk: PathBuf,
    /// Version written.
    pub version: u64,
    /// Entry written (to be tried).
    pub entry: String,
    /// The slot kept as the fallback.
    pub fallback: String,
    /// Entries removed.
    pub removed: Vec<String>,
    /// SHA-384 of the UKI, read back.
    pub uki_sha384: String,
    /// The new slot's signed manifest on the ESP.
    pub manifest: String,
    /// The slots afterwards.
    pub state: BootState,
}

/// Write `payload` as the inactive slot, to be tried `tries` times: refuses a
/// different image name, a version not above every installed one and the
/// anti-rollback floor, and a disk with no blessed slot to fall back to. Keeps
/// the newest blessed slot; removes every other slot (the older one, or a
/// failed or pending update) before writing. `disk_path` is a whole disk or
/// the ESP alone.
pub fn update(
    payload: &NodeImagePayload,
    disk_path: &Path,
    tries: u32,
) -> Result<UpdateReport, NodeImageError> {
    guarded(disk_path, || update_inner(payload, disk_path, tries))
}

fn update_inner(
    p: &NodeImagePayload,
    path: &Path,
    tries: u32,
) -> Result<UpdateReport, NodeImageError> {
    if sha384(&p.uki) != p.uki_sha384 {
        return Err(NodeImageError::Refused(
            "the UKI does not match its signed digest".into(),
        ));
    }
    if tries == 0 {
        return Err(NodeImageError::Refused("tries must be at least 1".into()));
    }
    let (esp, _) = Esp::open(path)?;
    let (floor, _) = read_floor(&esp)?;
    if floor.name != p.name {
        return Err(NodeImageError::Refused(format!(
            "the disk holds image {:?}, this is {:?}",
            floor.name, p.name
        )));
    }
    let current = slots(&esp)?;
    let highest = current
        .iter()
        .map(|s| s.version)
        .max()
        .unwrap_or(0)
        .max(floor.version);
    if let Some(s) = current.iter().find(|s| s.version == p.version) {
        return Err(NodeImageError::Refused(format!(
            "version {} is already installed ({})",
            p.version, s.file
        )));
    }
    if p.version < highest {
        return Err(ImageError::Rollback {
            name: p.name.clone(),
            version: p.version,
            minimum: highest,
            why: "highest version installed on the disk",
        }
        .into());
    }
    if p.version == floor.version {
        return Err(NodeImageError::Refused(format!(
            "version {} is already installed",
            p.version
        )));
    }
    let keep = current
        .iter()
        .find(|s| s.state == SlotState::Blessed)
        .cloned()
        .ok_or_else(|| {
            NodeImageError::Refused(
                "no blessed slot to fall back to: bless the running slot first".into(),
            )
        })?;
    let mut removed = Vec::new();
    for s in current.iter().filter(|s| s.file != keep.file) {
        esp.remove(&s.path())?;
        removed.push(s.file.clone());
    }
    // Leftovers of an interrupted update, and the manifests of the slots
    // just removed (or of a slot whose UKI never got its name).
    for f in esp.list(LINUX_DIR)? {
        let stale_manifest = parse_manifest_name(&f).is_some_and(|v| v != keep.version);
        if (f.starts_with('.') && f.ends_with(".partial")) || stale_manifest {
            esp.remove(&format!("{LINUX_DIR}/{f}"))?;
        }
    }
    // The manifest first: a crash then leaves a manifest without its UKI
    // (removed by the next update), never a slot without its manifest.
    let manifest = manifest_path(p.version);
    esp.write_file(&manifest, &p.signed_manifest, &|_| {})?;
    // Written under a name systemd-boot ignores, then renamed: a crash
    // leaves either no new entry or a complete one.
    let partial = format!("{LINUX_DIR}/.{ENTRY_PREFIX}{}.partial", p.version);
    let entry = Slot::trying_name(p.version, tries);
    esp.write_file(&partial, &p.uki, &|_| {})?;
    esp.rename(&partial, &format!("{LINUX_DIR}/{entry}"))?;
    let uki = esp
        .read_file(&format!("{LINUX_DIR}/{entry}"), MAX_UKI)?
        .ok_or_else(|| DiskError::corrupt(path, format!("{entry} missing after writing it")))?;
    let digest = sha384(&uki);
    if digest != p.uki_sha384 {
        return Err(
            DiskError::corrupt(path, "the UKI read back does not match the signed digest").into(),
        );
    }
    if esp.read_file(&manifest, MAX_UKI)?.as_deref() != Some(&p.signed_manifest[..]) {
        return Err(DiskError::corrupt(path, format!("{manifest} read back differs")).into());
    }
    let state = state_of(&esp)?;
    esp.close()?;
    Ok(UpdateReport {
        disk: path.to_path_buf(),
        version: p.version,
        entry,
        fallback: keep.file,
        removed,
        uki_sha384: hex::encode(digest),
        manifest,
        state,
    })
}

/// The slots as systemd-boot will see them at the next boot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BootState {
    /// Image name on the disk.
    pub name: String,
    /// Anti-rollback floor.
    pub floor: u64,
    /// Slots in systemd-boot's order.
    pub slots: Vec<Slot>,
    /// The slot the next boot starts.
    pub next_boot: Option<Slot>,
    /// The slot booted if `next_boot` is on trial and fails.
    pub fallback: Option<Slot>,
}

fn state_of(esp: &Esp) -> Result<BootState, DiskError> {
    let (floor, _) = read_floor(esp)?;
    let slots = slots(esp)?;
    let next_boot = slots.first().cloned();
    let fallback = match &next_boot {
        Some(n) if n.state != SlotState::Blessed => {
            slots.iter().skip(1).find(|s| !s.is_bad()).cloned()
        }
        _ => None,
    };
    Ok(BootState {
        name: floor.name,
        floor: floor.version,
        slots,
        next_boot,
        fallback,
    })
}

/// Report the slots of a disk (or an ESP alone).
pub fn boot_state(path: &Path) -> Result<BootState, NodeImageError> {
    guarded(path, || {
        let (esp, _) = Esp::open(path)?;
        Ok(state_of(&esp)?)
    })
}

/// What [`bless`] did.
#[derive(Clone, Debug, Serialize)]
pub struct BlessReport {
    /// The entry, blessed.
    pub entry: String,
    /// Whether it was blessed already.
    pub already: bool,
    /// The anti-rollback floor afterwards.
    pub floor: u64,
}

/// Mark the slot of `version` good (the node's init calls this once
/// `bulwarkd` is healthy): drop its boot counter, then raise the
/// anti-rollback floor to `version`. Idempotent. `path` is the disk or the
/// ESP (partition device or file).
pub fn bless(path: &Path, version: u64) -> Result<BlessReport, NodeImageError> {
    guarded(path, || {
        let (esp, _) = Esp::open(path)?;
        let slot = slots(&esp)?
            .into_iter()
            .find(|s| s.version == version)
            .ok_or_else(|| {
                NodeImageError::Refused(format!(
                    "no slot of version {version} on {}",
                    path.display()
                ))
            })?;
        let entry = Slot::blessed_name(version);
        let already = slot.state == SlotState::Blessed;
        if !already {
            esp.rename(&slot.path(), &format!("{LINUX_DIR}/{entry}"))?;
        }
        let floor = raise_floor(&esp, version)?;
        esp.close()?;
        Ok(BlessReport {
            entry,
            already,
            floor: floor.version,
        })
    })
}

/// [`bless`] under the name Flatcar and Bottlerocket use.
pub fn mark_good(path: &Path, version: u64) -> Result<BlessReport, NodeImageError> {
    bless(path, version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entry_names() {
        let p = |s| Slot::parse(s).map(|s| (s.version, s.state));
        assert_eq!(p("bulwark-node-7.efi"), Some((7, SlotState::Blessed)));
        assert_eq!(
            p("bulwark-node-8+1.efi"),
            Some((8, SlotState::Trying { left: 1, done: 0 }))
        );
        assert_eq!(
            p("BULWARK-NODE-8+2-1.EFI"),
            Some((8, SlotState::Trying { left: 2, done: 1 }))
        );
        assert_eq!(
            p("bulwark-node-8+0-1.efi"),
            Some((8, SlotState::Bad { done: 1 }))
        );
        for bad in [
            "bulwark-node-.efi",
            "bulwark-node-x.efi",
            "bulwark-node-8+.efi",
            "bulwark-node-8+1-.efi",
            "other-1.efi",
            "bulwark-node-8",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }

    #[test]
    fn orders_like_systemd_boot() {
        let mut s: Vec<Slot> = [
            "bulwark-node-9+0-1.efi",
            "bulwark-node-7.efi",
            "bulwark-node-10.efi",
            "bulwark-node-8+1.efi",
        ]
        .iter()
        .filter_map(|f| Slot::parse(f))
        .collect();
        boot_order(&mut s);
        let v: Vec<u64> = s.iter().map(|s| s.version).collect();
        assert_eq!(v, [10, 8, 7, 9]);
    }

    #[test]
    fn floor_record_round_trip_and_torn_write() {
        let f = Floor {
            name: "node".into(),
            version: 12,
            seq: 3,
        };
        let mut b = f.encode();
        assert_eq!(b.len(), RECORD_LEN);
        assert_eq!(Floor::decode(&b), Some(f));
        b[30] ^= 1;
        assert_eq!(Floor::decode(&b), None);
        assert_eq!(Floor::decode(&[0u8; RECORD_LEN]), None);
    }
}
