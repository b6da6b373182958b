//! Which signed node image booted, read from the ESP (`docs/node-image.md`,
//! "Signed manifests on the ESP").
//!
//! `install` and `update` keep each slot's signed manifest next to its UKI:
//! `/EFI/Linux/bulwark-node-<version>.manifest` holds the bundle's first bytes
//! exactly as the bundle stores them (header page, signature page, manifest,
//! zero padding to 4 KiB; see `docs/image-format.md`): the bytes the manifest
//! digest and the signatures cover, with the signatures. It is paired with its
//! UKI by version, not by file name: systemd-boot renames the UKI alone when it
//! counts a try (`+1` → `+0-1`) and blessing renames it again, so a name that
//! followed the entry's could not stay paired; versions are unique on a disk.
//!
//! [`booted_image_identity`] reads the booted slot's manifest, checks its
//! signatures under a [`TrustPolicy`] with `bulwark_image`'s own code (the
//! manifest file and the slot's UKI are put back at their places in the
//! bundle; everything else in between is the zero padding a bundle has) and
//! that the UKI on the ESP hashes to the SHA-384 signed for it, and returns
//! the image's name, version, manifest SHA-384 and the keys that met the
//! policy. The booted entry comes from systemd-boot's `LoaderEntrySelected`
//! EFI variable ([`loader_entry_selected`]).

use std::path::Path;

use bulwark_image::{
    Bundle, BundleSource, ComponentKind, ImageError, KeyId, TrustPolicy, MAGIC, MAX_MANIFEST_LEN,
    PAGE,
};
use serde::Serialize;

use crate::disk::esp::Esp;
use crate::error::NodeImageError;
use crate::install::{Slot, ENTRY_PREFIX, LINUX_DIR};

/// systemd-boot's vendor GUID for its loader variables.
pub const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
/// The variable naming the entry systemd-boot booted.
pub const ENTRY_SELECTED_VAR: &str = "LoaderEntrySelected";
/// Where efivarfs is mounted.
pub const EFIVARFS: &str = "/sys/firmware/efi/efivars";
/// Suffix of a slot's signed manifest file.
pub const MANIFEST_SUFFIX: &str = ".manifest";
/// Where the manifest starts in a bundle (after the header and signature pages).
const MANIFEST_OFFSET: u64 = 2 * PAGE;
/// The largest manifest file: two pages and the largest manifest, padded.
pub const MAX_MANIFEST_FILE: u64 = MANIFEST_OFFSET + MAX_MANIFEST_LEN.div_ceil(PAGE) * PAGE;
/// Largest UKI read back.
const MAX_UKI: u64 = 1 << 30;

/// The file name of the signed manifest of the slot of `version`.
pub fn manifest_name(version: u64) -> String {
    format!("{ENTRY_PREFIX}{version}{MANIFEST_SUFFIX}")
}

/// ESP path of the signed manifest of the slot of `version`.
pub fn manifest_path(version: u64) -> String {
    format!("{LINUX_DIR}/{}", manifest_name(version))
}

/// The version of a manifest file name; `None` for other files.
pub fn parse_manifest_name(file: &str) -> Option<u64> {
    let lower = file.to_ascii_lowercase();
    let v = lower
        .strip_prefix(ENTRY_PREFIX)?
        .strip_suffix(MANIFEST_SUFFIX)?;
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// The signed manifest file of a verified bundle: its first bytes up to the
/// first component (header page, signature page, manifest, zero padding).
pub(crate) fn manifest_file_len(manifest_len: usize) -> u64 {
    MANIFEST_OFFSET + (manifest_len as u64).div_ceil(PAGE) * PAGE
}

/// The node image that booted, as its signed manifest on the ESP states and
/// the trust policy accepts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ImageIdentity {
    /// Image name.
    pub name: String,
    /// Image version.
    pub version: u64,
    /// SHA-384 of the signed manifest bytes.
    #[serde(serialize_with = "hex_bytes")]
    pub manifest_sha384: [u8; 48],
    /// The trusted keys whose signatures verified (they met the threshold).
    #[serde(serialize_with = "hex_list")]
    pub signer_key_ids: Vec<KeyId>,
    /// The slot's UKI file on the ESP (`bulwark-node-7.efi`, with the boot
    /// counter if it has one).
    pub entry: String,
}

impl ImageIdentity {
    /// The manifest SHA-384 in hex.
    pub fn manifest_sha384_hex(&self) -> String {
        hex::encode(self.manifest_sha384)
    }

    /// The signer key ids in hex.
    pub fn signer_key_ids_hex(&self) -> Vec<String> {
        self.signer_key_ids.iter().map(hex::encode).collect()
    }
}

fn hex_bytes<S: serde::Serializer>(b: &[u8; 48], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(b))
}

fn hex_list<S: serde::Serializer>(v: &[KeyId], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(hex::encode))
}

/// A bundle put back together from what the ESP keeps of it: the manifest
/// file at its start, the UKI at its signed offset, zeros elsewhere (what a
/// bundle's padding is; the other components are never read: see
/// [`verify_slot`]).
struct SlotSource<'a> {
    head: &'a [u8],
    uki: Option<(u64, &'a [u8])>,
    len: u64,
}

impl BundleSource for SlotSource<'_> {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= self.len)
            .ok_or_else(|| {
                ImageError::Format(format!(
                    "read of {} bytes at {offset} past the end ({})",
                    buf.len(),
                    self.len
                ))
            })?;
        buf.fill(0);
        let mut copy = |at: u64, src: &[u8]| {
            let (s, e) = (offset.max(at), end.min(at + src.len() as u64));
            if s < e {
                buf[(s - offset) as usize..(e - offset) as usize]
                    .copy_from_slice(&src[(s - at) as usize..(e - at) as usize]);
            }
        };
        copy(0, self.head);
        if let Some((at, uki)) = self.uki {
            copy(at, uki);
        }
        Ok(())
    }

    fn describe(&self) -> std::path::PathBuf {
        "the signed manifest on the ESP".into()
    }
}

/// What [`verify_slot`] found.
pub(crate) struct SlotIdentity {
    pub name: String,
    pub version: u64,
    pub manifest_sha384: [u8; 48],
    pub manifest_bytes: Vec<u8>,
    pub signed_by: Vec<KeyId>,
}

/// Check a slot: the signed manifest file `head` (signatures under `policy`,
/// a node image) and its UKI (the bytes hash to the SHA-384 signed for the
/// `uki` component).
pub(crate) fn verify_slot(
    head: &[u8],
    uki: &[u8],
    policy: &TrustPolicy,
) -> Result<SlotIdentity, NodeImageError> {
    let bad = |why: String| NodeImageError::Refused(format!("signed manifest: {why}"));
    if head.len() < MANIFEST_OFFSET as usize || head[..8] != MAGIC {
        return Err(bad(format!(
            "{} bytes, not the start of a Bulwark image bundle",
            head.len()
        )));
    }
    let len = u64::from_le_bytes(head[24..32].try_into().unwrap_or_default());
    // First the unverified layout, for where the UKI sits.
    let unverified = Bundle::from_source(SlotSource {
        head,
        uki: None,
        len,
    })
    .map_err(|e| bad(e.to_string()))?;
    if head.len() as u64 != manifest_file_len(unverified.manifest_bytes().len()) {
        return Err(bad(format!(
            "{} bytes, but its manifest needs {}",
            head.len(),
            manifest_file_len(unverified.manifest_bytes().len())
        )));
    }
    let c = unverified
        .unverified_manifest()
        .component(ComponentKind::Uki)
        .ok_or_else(|| bad("no uki component: not a node image".into()))?;
    if c.size != uki.len() as u64 {
        return Err(NodeImageError::Refused(format!(
            "the UKI is {} bytes, its signed manifest says {}: not the signed UKI",
            uki.len(),
            c.size
        )));
    }
    let at = c.offset;
    drop(unverified);
    let bundle = Bundle::from_source(SlotSource {
        head,
        uki: Some((at, uki)),
        len,
    })
    .map_err(|e| bad(e.to_string()))?;
    // Signatures, threshold, version and padding; the components are not
    // hashed here: the UKI is read (and hashed) below, the rest is not on the
    // ESP and not trusted from this.
    let verified = bundle
        .verify_for_loading(policy, &ComponentKind::ALL)
        .map_err(|e| bad(e.to_string()))?;
    let m = verified.manifest();
    if !m.is_node() {
        return Err(bad(format!(
            "{} is a tenant image, not a node image",
            m.name
        )));
    }
    match verified.read_component(ComponentKind::Uki) {
        Ok(Some(_)) => {}
        Ok(None) => return Err(bad("no uki component".into())),
        Err(ImageError::DigestMismatch { .. }) => {
            return Err(NodeImageError::Refused(
                "the UKI does not hash to the SHA-384 signed in its manifest".into(),
            ))
        }
        Err(e) => return Err(bad(e.to_string())),
    }
    Ok(SlotIdentity {
        name: m.name.clone(),
        version: m.version,
        manifest_sha384: verified.manifest_sha384(),
        manifest_bytes: verified.manifest_bytes().to_vec(),
        signed_by: verified.signed_by().to_vec(),
    })
}

/// The identity of the node image in the slot that booted as `booted_entry`
/// (systemd-boot's entry id or the file's path, e.g. `bulwark-node-7.efi`,
/// `bulwark-node-8+0-1.efi` or `\EFI\Linux\bulwark-node-8+0-1.efi`; the slot
/// is found by version, whatever its boot counter says now) on the ESP
/// `esp` (a whole disk, a partition or a FAT image file): its signed manifest
/// verified under `policy`, and its UKI on the ESP equal to the one signed.
///
/// Refused: an entry that is not a Bulwark node slot, no slot of that version
/// on the ESP, no manifest file for it, a manifest whose signatures do not
/// meet the policy, of another version, or a UKI that is not the signed one.
pub fn booted_image_identity(
    esp: &Path,
    policy: &TrustPolicy,
    booted_entry: &str,
) -> Result<ImageIdentity, NodeImageError> {
    let file = booted_entry
        .rsplit(['\\', '/'])
        .next()
        .unwrap_or(booted_entry);
    let booted = Slot::parse(file).ok_or_else(|| {
        NodeImageError::Refused(format!(
            "the booted entry {booted_entry:?} is not a Bulwark node slot ({ENTRY_PREFIX}<version>[+LEFT[-DONE]].efi)"
        ))
    })?;
    let v = booted.version;
    let (head, uki, slot) = crate::install::guarded(esp, || {
        let (e, _) = Esp::open(esp)?;
        let slot = crate::install::list_slots(&e)?
            .into_iter()
            .find(|s| s.version == v)
            .ok_or_else(|| {
                NodeImageError::Refused(format!(
                    "the booted entry {booted_entry:?}: no slot of version {v} on {}",
                    esp.display()
                ))
            })?;
        let head = e
            .read_file(&manifest_path(v), MAX_MANIFEST_FILE)?
            .ok_or_else(|| {
                NodeImageError::Refused(format!(
                    "no signed manifest {} for the booted slot {} on {} (written by install and update since manifests are kept: update or reinstall)",
                    manifest_path(v),
                    slot.file,
                    esp.display()
                ))
            })?;
        let uki = e
            .read_file(&format!("{LINUX_DIR}/{}", slot.file), MAX_UKI)?
            .ok_or_else(|| {
                NodeImageError::Refused(format!("{} vanished while it was read", slot.file))
            })?;
        Ok((head, uki, slot))
    })?;
    let id = verify_slot(&head, &uki, policy).map_err(|e| {
        NodeImageError::Refused(format!(
            "the booted slot {} on {}: {}",
            slot.file,
            esp.display(),
            e.to_string().trim_start_matches("refused: ")
        ))
    })?;
    if id.version != v {
        return Err(NodeImageError::Refused(format!(
            "{} states version {}, not the booted slot's {v}",
            manifest_path(v),
            id.version
        )));
    }
    Ok(ImageIdentity {
        name: id.name,
        version: id.version,
        manifest_sha384: id.manifest_sha384,
        signer_key_ids: id.signed_by,
        entry: slot.file,
    })
}

/// The entry systemd-boot booted: its `LoaderEntrySelected` variable in
/// efivarfs at `efivars` (normally [`EFIVARFS`]).
pub fn loader_entry_selected(efivars: &Path) -> Result<String, NodeImageError> {
    let path = efivars.join(format!("{ENTRY_SELECTED_VAR}-{LOADER_GUID}"));
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(NodeImageError::Refused(format!(
                "{} does not exist: the node did not boot through systemd-boot (or efivarfs is not mounted)",
                path.display()
            )))
        }
        Err(source) => {
            return Err(NodeImageError::Io {
                path: path.display().to_string(),
                source,
            })
        }
    };
    match decode_string_var(&bytes) {
        Ok(entry) if entry.is_empty() => Err(NodeImageError::Refused(format!(
            "{}: empty",
            path.display()
        ))),
        Ok(entry) => Ok(entry),
        Err(why) => Err(NodeImageError::Refused(format!(
            "{}: {why}",
            path.display()
        ))),
    }
}

/// Decodes an efivarfs file's bytes: a 4-byte little-endian attribute word,
/// then a UTF-16LE string with or without its terminating NUL (an empty string is
/// returned as such; callers judge it). The node's PID 1 reads the boot loader's
/// variables with it too.
pub fn decode_string_var(bytes: &[u8]) -> Result<String, String> {
    let Some(data) = bytes.get(4..) else {
        return Err(format!(
            "{} bytes: shorter than the 4-byte attribute header",
            bytes.len()
        ));
    };
    if data.len() % 2 != 0 {
        return Err(format!("{} data bytes: not UTF-16", data.len()));
    }
    let mut units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    while units.last() == Some(&0) {
        units.pop();
    }
    if units.contains(&0) {
        return Err("a NUL inside the string".into());
    }
    String::from_utf16(&units).map_err(|e| format!("not UTF-16: {e}"))
}

/// The bytes efivarfs shows for a string variable (attributes: non-volatile
/// off, boot service and runtime access), for tests and fakes.
pub fn encode_string_var(s: &str) -> Vec<u8> {
    let mut b = 6u32.to_le_bytes().to_vec();
    for u in s.encode_utf16().chain([0]) {
        b.extend_from_slice(&u.to_le_bytes());
    }
    b
}

/// [`booted_image_identity`] of the entry `LoaderEntrySelected` names.
pub fn booted_image_identity_from_efivars(
    esp: &Path,
    policy: &TrustPolicy,
    efivars: &Path,
) -> Result<ImageIdentity, NodeImageError> {
    let entry = loader_entry_selected(efivars)?;
    booted_image_identity(esp, policy, &entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_names() {
        assert_eq!(manifest_path(7), "EFI/Linux/bulwark-node-7.manifest");
        assert_eq!(parse_manifest_name("bulwark-node-7.manifest"), Some(7));
        assert_eq!(parse_manifest_name("BULWARK-NODE-12.MANIFEST"), Some(12));
        for bad in [
            "bulwark-node-7.efi",
            "bulwark-node-.manifest",
            "bulwark-node-7+1.manifest",
            "other-7.manifest",
        ] {
            assert_eq!(parse_manifest_name(bad), None, "{bad}");
        }
        assert_eq!(manifest_file_len(1), 3 * PAGE);
        assert_eq!(manifest_file_len(4096), 3 * PAGE);
        assert_eq!(manifest_file_len(4097), 4 * PAGE);
    }

    #[test]
    fn efivar_strings() {
        let b = encode_string_var("bulwark-node-7.efi");
        assert_eq!(decode_string_var(&b).unwrap(), "bulwark-node-7.efi");
        // Without the terminating NUL too.
        assert_eq!(
            decode_string_var(&b[..b.len() - 2]).unwrap(),
            "bulwark-node-7.efi"
        );
        assert!(decode_string_var(&[6, 0, 0]).is_err());
        assert!(decode_string_var(&[6, 0, 0, 0, 0x41]).is_err());
        // An empty string decodes; loader_entry_selected refuses it.
        assert_eq!(decode_string_var(&[6, 0, 0, 0, 0, 0]).unwrap(), "");
        assert!(decode_string_var(&[6, 0, 0, 0, 0x41, 0, 0, 0, 0x41, 0]).is_err());
    }
}
