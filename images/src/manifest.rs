//! The signed manifest: what a bundle holds, where, and the digests that bind
//! it. Encoded as canonical JSON (see `docs/image-format.md`): the bytes that
//! are signed are exactly the bytes this module produces for the decoded
//! value, so a manifest can never be read two ways.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ImageError;
use crate::layout::align_up;
use crate::verity::VerityParams;

/// The value of the manifest's `format` field for this version of the format.
pub const FORMAT_ID: &str = "bulwark.image.v1";
/// Largest manifest accepted, in bytes.
pub const MAX_MANIFEST_LEN: u64 = 64 * 1024;
/// Longest image name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// The parts a guest boots from, in the order they are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComponentKind {
    /// The guest kernel (required).
    Kernel,
    /// The initial ramdisk.
    Initrd,
    /// The kernel command line (printable ASCII).
    Cmdline,
    /// A configuration blob for the guest init.
    Config,
    /// A read-only filesystem image protected by dm-verity.
    Rootfs,
    /// Node images only: the UEFI boot manager (systemd-boot) installed on the
    /// EFI system partition.
    Bootloader,
    /// Node images only: the Unified Kernel Image (a UEFI PE holding the
    /// node's kernel, initramfs, command line and os-release).
    Uki,
}

impl ComponentKind {
    /// All kinds, in storage order.
    pub const ALL: [ComponentKind; 7] = [
        ComponentKind::Kernel,
        ComponentKind::Initrd,
        ComponentKind::Cmdline,
        ComponentKind::Config,
        ComponentKind::Rootfs,
        ComponentKind::Bootloader,
        ComponentKind::Uki,
    ];

    /// Whether this kind belongs in a node image (and only there).
    pub fn is_node_only(self) -> bool {
        matches!(self, ComponentKind::Bootloader | ComponentKind::Uki)
    }

    /// The name used in the manifest and in messages.
    pub fn name(self) -> &'static str {
        match self {
            ComponentKind::Kernel => "kernel",
            ComponentKind::Initrd => "initrd",
            ComponentKind::Cmdline => "cmdline",
            ComponentKind::Config => "config",
            ComponentKind::Rootfs => "rootfs",
            ComponentKind::Bootloader => "bootloader",
            ComponentKind::Uki => "uki",
        }
    }

    /// Largest size the format accepts for this kind.
    pub fn max_size(self) -> u64 {
        const MIB: u64 = 1 << 20;
        match self {
            ComponentKind::Kernel => 512 * MIB,
            ComponentKind::Initrd => 4096 * MIB,
            ComponentKind::Cmdline => 4096,
            ComponentKind::Config => MIB,
            ComponentKind::Rootfs => 16 << 40,
            ComponentKind::Bootloader => 16 * MIB,
            ComponentKind::Uki => 4096 * MIB,
        }
    }
}

impl fmt::Display for ComponentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a component's bytes are bound to the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Integrity {
    /// SHA-384 of the component's bytes.
    Sha384([u8; 48]),
    /// A dm-verity hash tree stored after the component, with its root hash.
    Verity(VerityParams),
}

/// One component entry of the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Component {
    /// What it is.
    pub kind: ComponentKind,
    /// Byte offset in the bundle file (a multiple of 4096).
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
    /// The digest that binds it.
    pub integrity: Integrity,
}

impl Component {
    /// The SHA-384 digest, for components bound that way.
    pub fn sha384(&self) -> Option<&[u8; 48]> {
        match &self.integrity {
            Integrity::Sha384(d) => Some(d),
            Integrity::Verity(_) => None,
        }
    }

    /// The dm-verity parameters, for the rootfs.
    pub fn verity(&self) -> Option<&VerityParams> {
        match &self.integrity {
            Integrity::Verity(v) => Some(v),
            Integrity::Sha384(_) => None,
        }
    }

    /// First byte after the component and everything stored for it (its hash
    /// tree), before padding.
    pub fn stored_end(&self) -> Option<u64> {
        match &self.integrity {
            Integrity::Sha384(_) => self.offset.checked_add(self.size),
            Integrity::Verity(v) => v.hash_offset.checked_add(v.hash_size),
        }
    }
}

/// Highest PCR index a node manifest may predict.
pub const MAX_PCR_INDEX: u32 = 23;

/// What makes a manifest a node OS image (`docs/image-format.md`, "Node
/// images"): the digests the firmware measures and the PCR values predicted
/// from the image alone (SHA-256 bank).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// Authenticode SHA-256 of the boot manager component, when there is one.
    pub boot_manager_authenticode_sha256: Option<[u8; 32]>,
    /// Predicted PCR values, by index.
    pub pcrs: std::collections::BTreeMap<u32, [u8; 32]>,
    /// The Secure Boot state the prediction assumes.
    pub secure_boot: bool,
    /// Authenticode SHA-256 of the UKI component.
    pub uki_authenticode_sha256: [u8; 32],
}

/// The decoded, validated manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// Image name (`[A-Za-z0-9._+-]`, 1..=128 bytes).
    pub name: String,
    /// Monotonic version, for rollback protection.
    pub version: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// The components in storage order.
    pub components: Vec<Component>,
    /// Present for node OS images, absent (and not encoded) for tenant images.
    pub node: Option<NodeInfo>,
}

// The wire form. Fields are declared in ascending byte order of their names so
// that serde_json's compact output is the canonical encoding.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireManifest {
    components: Vec<WireComponent>,
    created: u64,
    format: String,
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node: Option<WireNode>,
    version: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireNode {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    boot_manager_authenticode_sha256: Option<String>,
    // Keys are decimal PCR indices; a BTreeMap of strings serializes in
    // ascending byte order, which is canonical.
    pcrs: std::collections::BTreeMap<String, String>,
    secure_boot: bool,
    uki_authenticode_sha256: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireComponent {
    kind: ComponentKind,
    offset: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sha384: Option<String>,
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    verity: Option<WireVerity>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireVerity {
    algorithm: String,
    data_block_size: u32,
    data_blocks: u64,
    hash_block_size: u32,
    hash_offset: u64,
    hash_size: u64,
    root_hash: String,
    salt: String,
    version: u32,
}

impl Manifest {
    /// The canonical bytes: what is stored and signed.
    pub fn encode(&self) -> Vec<u8> {
        let wire = WireManifest {
            components: self.components.iter().map(to_wire).collect(),
            created: self.created,
            format: FORMAT_ID.to_string(),
            name: self.name.clone(),
            node: self.node.as_ref().map(node_to_wire),
            version: self.version,
        };
        // Serializing plain structs of integers and strings cannot fail.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// Decode and validate manifest bytes. `data_start` is where the first
    /// component must begin (fixed by the header's manifest length).
    pub fn decode(bytes: &[u8], data_start: u64) -> Result<Manifest, ImageError> {
        if bytes.len() as u64 > MAX_MANIFEST_LEN {
            return Err(ImageError::ManifestTooLarge {
                len: bytes.len() as u64,
                max: MAX_MANIFEST_LEN,
            });
        }
        let wire: WireManifest = serde_json::from_slice(bytes).map_err(classify_json_error)?;
        if wire.format != FORMAT_ID {
            return Err(ImageError::Manifest(format!(
                "format {:?} is not supported (expected {FORMAT_ID:?})",
                wire.format
            )));
        }
        check_name(&wire.name)?;
        let mut components = Vec::with_capacity(wire.components.len());
        for w in &wire.components {
            if components.iter().any(|c: &Component| c.kind == w.kind) {
                return Err(ImageError::DuplicateComponent(w.kind));
            }
            components.push(from_wire(w)?);
        }
        let node = wire.node.as_ref().map(node_from_wire).transpose()?;
        let manifest = Manifest {
            name: wire.name,
            version: wire.version,
            created: wire.created,
            components,
            node,
        };
        manifest.check_components(data_start)?;
        if manifest.encode() != bytes {
            return Err(ImageError::NonCanonical);
        }
        Ok(manifest)
    }

    /// "node" for a node OS image, "tenant" for a tenant image.
    pub fn kind_name(&self) -> &'static str {
        if self.node.is_some() {
            "node"
        } else {
            "tenant"
        }
    }

    /// Whether this is a node OS image.
    pub fn is_node(&self) -> bool {
        self.node.is_some()
    }

    /// Look a component up by kind.
    pub fn component(&self, kind: ComponentKind) -> Option<&Component> {
        self.components.iter().find(|c| c.kind == kind)
    }

    /// The length the bundle file must have: the end of the last stored
    /// region, rounded up to a page.
    pub fn file_len(&self, data_start: u64) -> u64 {
        self.components
            .last()
            .and_then(Component::stored_end)
            .map_or(data_start, align_up)
    }

    /// Order, presence, limits and the exact placement of every component.
    fn check_components(&self, data_start: u64) -> Result<(), ImageError> {
        match &self.node {
            None => {
                if self.component(ComponentKind::Kernel).is_none() {
                    return Err(ImageError::Manifest("no kernel component".into()));
                }
                if let Some(c) = self.components.iter().find(|c| c.kind.is_node_only()) {
                    return Err(ImageError::Manifest(format!(
                        "a tenant image cannot have a {} component (node images only)",
                        c.kind
                    )));
                }
            }
            Some(node) => {
                if let Some(c) = self.components.iter().find(|c| !c.kind.is_node_only()) {
                    return Err(ImageError::Manifest(format!(
                        "a node image cannot have a {} component (its kernel, initrd and command line are inside the uki)",
                        c.kind
                    )));
                }
                if self.component(ComponentKind::Uki).is_none() {
                    return Err(ImageError::Manifest(
                        "node image with no uki component".into(),
                    ));
                }
                if self.component(ComponentKind::Bootloader).is_some()
                    != node.boot_manager_authenticode_sha256.is_some()
                {
                    return Err(ImageError::Manifest(
                        "node: boot_manager_authenticode_sha256 must be given exactly when there is a bootloader component".into(),
                    ));
                }
            }
        }
        let mut expected_offset = data_start;
        let mut previous: Option<ComponentKind> = None;
        for c in &self.components {
            if previous.is_some_and(|p| p >= c.kind) {
                return Err(ImageError::Manifest(format!(
                    "components out of order: {} after {}",
                    c.kind,
                    previous.map_or("", ComponentKind::name)
                )));
            }
            previous = Some(c.kind);
            if c.size == 0 {
                return Err(ImageError::Manifest(format!(
                    "{} component is empty",
                    c.kind
                )));
            }
            if c.size > c.kind.max_size() {
                return Err(ImageError::Manifest(format!(
                    "{} component is {} bytes, over the limit of {}",
                    c.kind,
                    c.size,
                    c.kind.max_size()
                )));
            }
            if c.offset != expected_offset {
                return Err(ImageError::Manifest(format!(
                    "{} component at offset {}, expected {}",
                    c.kind, c.offset, expected_offset
                )));
            }
            let end = c
                .offset
                .checked_add(c.size)
                .ok_or_else(|| ImageError::Manifest("component extent overflows".into()))?;
            if let Integrity::Verity(v) = &c.integrity {
                v.check_against(c.size, align_up(end))?;
            }
            let stored_end = c
                .stored_end()
                .ok_or_else(|| ImageError::Manifest("component extent overflows".into()))?;
            expected_offset = align_up(stored_end);
            if expected_offset < stored_end {
                return Err(ImageError::Manifest("component extent overflows".into()));
            }
        }
        Ok(())
    }
}

fn check_name(name: &str) -> Result<(), ImageError> {
    let ok_char = |b: u8| b.is_ascii_alphanumeric() || b".-_+".contains(&b);
    if name.is_empty() || name.len() > MAX_NAME_LEN || !name.bytes().all(ok_char) {
        return Err(ImageError::Manifest(format!(
            "name {name:?} must be 1..={MAX_NAME_LEN} characters of [A-Za-z0-9._+-]"
        )));
    }
    Ok(())
}

/// Check an image name as `build` would; exposed for the CLI.
pub fn validate_name(name: &str) -> Result<(), ImageError> {
    check_name(name)
}

fn node_to_wire(n: &NodeInfo) -> WireNode {
    WireNode {
        boot_manager_authenticode_sha256: n.boot_manager_authenticode_sha256.map(hex::encode),
        pcrs: n
            .pcrs
            .iter()
            .map(|(k, v)| (k.to_string(), hex::encode(v)))
            .collect(),
        secure_boot: n.secure_boot,
        uki_authenticode_sha256: hex::encode(n.uki_authenticode_sha256),
    }
}

fn decode_hex32(s: &str, what: &str) -> Result<[u8; 32], ImageError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|_| {
        ImageError::Manifest(format!("node: {what} must be 64 lower-case hex digits"))
    })?;
    Ok(out)
}

fn node_from_wire(w: &WireNode) -> Result<NodeInfo, ImageError> {
    if w.pcrs.is_empty() {
        return Err(ImageError::Manifest("node: no predicted pcrs".into()));
    }
    let mut pcrs = std::collections::BTreeMap::new();
    for (k, v) in &w.pcrs {
        let idx: u32 = k
            .parse()
            .ok()
            .filter(|i: &u32| *i <= MAX_PCR_INDEX && i.to_string() == *k)
            .ok_or_else(|| {
                ImageError::Manifest(format!(
                    "node: pcr index {k:?} must be a decimal number 0..={MAX_PCR_INDEX}"
                ))
            })?;
        pcrs.insert(idx, decode_hex32(v, &format!("pcr {k}"))?);
    }
    Ok(NodeInfo {
        boot_manager_authenticode_sha256: w
            .boot_manager_authenticode_sha256
            .as_deref()
            .map(|s| decode_hex32(s, "boot_manager_authenticode_sha256"))
            .transpose()?,
        pcrs,
        secure_boot: w.secure_boot,
        uki_authenticode_sha256: decode_hex32(
            &w.uki_authenticode_sha256,
            "uki_authenticode_sha256",
        )?,
    })
}

fn classify_json_error(e: serde_json::Error) -> ImageError {
    let msg = e.to_string();
    if msg.starts_with("unknown field") {
        ImageError::UnknownField(msg)
    } else if msg.starts_with("duplicate field") {
        ImageError::DuplicateField(msg)
    } else {
        ImageError::Manifest(msg)
    }
}

fn to_wire(c: &Component) -> WireComponent {
    let (sha384, verity) = match &c.integrity {
        Integrity::Sha384(d) => (Some(hex::encode(d)), None),
        Integrity::Verity(v) => (
            None,
            Some(WireVerity {
                algorithm: v.algorithm.name().to_string(),
                data_block_size: v.data_block_size,
                data_blocks: v.data_blocks,
                hash_block_size: v.hash_block_size,
                hash_offset: v.hash_offset,
                hash_size: v.hash_size,
                root_hash: hex::encode(&v.root_hash),
                salt: hex::encode(&v.salt),
                version: v.version,
            }),
        ),
    };
    WireComponent {
        kind: c.kind,
        offset: c.offset,
        sha384,
        size: c.size,
        verity,
    }
}

fn from_wire(w: &WireComponent) -> Result<Component, ImageError> {
    let integrity = match (w.kind, &w.sha384, &w.verity) {
        (ComponentKind::Rootfs, None, Some(v)) => Integrity::Verity(VerityParams::from_manifest(
            v.version,
            &v.algorithm,
            v.data_block_size,
            v.hash_block_size,
            v.data_blocks,
            v.hash_offset,
            v.hash_size,
            &v.salt,
            &v.root_hash,
        )?),
        (ComponentKind::Rootfs, _, _) => {
            return Err(ImageError::Manifest(
                "rootfs component must carry `verity` and no `sha384`".into(),
            ))
        }
        (kind, Some(d), None) => Integrity::Sha384(decode_hex_array(d, kind)?),
        (kind, _, _) => {
            return Err(ImageError::Manifest(format!(
                "{kind} component must carry `sha384` and no `verity`"
            )))
        }
    };
    Ok(Component {
        kind: w.kind,
        offset: w.offset,
        size: w.size,
        integrity,
    })
}

fn decode_hex_array(s: &str, kind: ComponentKind) -> Result<[u8; 48], ImageError> {
    let mut out = [0u8; 48];
    hex::decode_to_slice(s, &mut out).map_err(|_| {
        ImageError::Manifest(format!("{kind} sha384 must be 96 lower-case hex digits"))
    })?;
    Ok(out)
}
