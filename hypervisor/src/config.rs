//! The VM description: one schema for the `--config` JSON file and the REST API.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cpuid::CpuidPolicy;
use crate::layout::{MemoryLayout, GIB, MIB};
use crate::memory::Backing;
use crate::virtio::MAX_ID_LEN;

pub use crate::devices::SerialOutput;
pub use crate::seccomp::SeccompMode;
pub use crate::vfio::{VfioDeviceConfig, VfioInterface};
pub use crate::virtio::{BlockConfig, VirtioTransport, VsockConfig};

/// A complete VM description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// CPUs, memory, CPUID.
    pub machine: MachineConfig,
    /// What the guest boots.
    pub boot_source: BootSource,
    /// Emulated devices.
    #[serde(default)]
    pub devices: DevicesConfig,
    /// Seccomp filters for the VMM's threads.
    #[serde(default)]
    pub seccomp: SeccompMode,
}

/// CPUs and memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Number of vCPUs, 1..=254.
    pub vcpus: u8,
    /// Guest RAM in MiB (a multiple of 2, at least 4).
    pub mem_mib: u64,
    /// Size of the 64-bit MMIO window above RAM, in GiB.
    #[serde(default = "default_mmio64_gib")]
    pub mmio64_gib: u64,
    /// What backs guest RAM.
    #[serde(default)]
    pub backing: Backing,
    /// Touch all guest RAM before boot with this many threads (0: do not prefault).
    #[serde(default)]
    pub prefault_threads: u8,
    /// The CPUID policy (see `docs/vmm.md`).
    #[serde(default)]
    pub cpuid_policy: CpuidPolicy,
    /// ACPI tables for the guest (RSDP at 0xe0000) and the ACPI power-off/reset
    /// registers; `false`: no tables, no registers (see `docs/vmm.md`).
    #[serde(default = "yes")]
    pub acpi: bool,
    /// Guest firmware image (`bulwark-firmware`, `docs/firmware.md`). With it a Linux
    /// boot goes through the firmware: the VMM stages the kernel (a bzImage), initrd
    /// and command line and writes their SHA-256 into the measured hashes table; the
    /// firmware enters the kernel only when all three match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<PathBuf>,
}

fn default_mmio64_gib() -> u64 {
    1024
}

/// The boot source. JSON: an object whose `kind` (`linux`, `raw` or `bundle`) selects
/// the variant, with that variant's fields beside it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BootSource {
    /// A Linux kernel (vmlinux ELF or bzImage) from plain files: unsigned, for development.
    Linux(LinuxBoot),
    /// A flat binary copied to `load_addr` and entered with the given registers:
    /// unsigned, for test guests and firmware.
    Raw(RawBoot),
    /// A signed image bundle verified against trusted keys before anything is loaded.
    Bundle(BundleBoot),
}

/// A Linux kernel (vmlinux ELF or bzImage) from plain files: unsigned, for development.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinuxBoot {
    /// Path of the kernel.
    pub kernel: PathBuf,
    /// Path of the initrd, if any.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[serde(default)]
    pub cmdline: String,
    /// Which entry point of a vmlinux to use.
    #[serde(default)]
    pub entry: LinuxEntry,
}

/// A flat binary copied to `load_addr` and entered with the given registers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBoot {
    /// Path of the binary.
    pub image: PathBuf,
    /// Guest-physical load address.
    pub load_addr: u64,
    /// Entry state of the vCPUs.
    pub entry: RawEntry,
}

/// A signed image bundle verified against trusted keys before anything is loaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleBoot {
    /// Path of the bundle file.
    pub path: PathBuf,
    /// PEM public keys the bundle must be signed by.
    pub trusted_keys: Vec<PathBuf>,
    /// How many of `trusted_keys` must have signed.
    #[serde(default = "one")]
    pub threshold: usize,
    /// Lowest acceptable image version (rollback protection).
    #[serde(default)]
    pub min_version: u64,
    /// Rollback state file shared with `bulwark-image verify --state`: a version
    /// lower than the highest recorded for the image name is refused, and the
    /// booted version is recorded (the file is locked while checked and updated).
    #[serde(default)]
    pub rollback_state: Option<PathBuf>,
    /// Which entry point of a vmlinux to use.
    #[serde(default)]
    pub entry: LinuxEntry,
    /// Load the bundle's kernel component as a flat binary instead of a Linux
    /// kernel (for tiny guests and firmware); the load address and entry state
    /// come from here and are measured.
    #[serde(default)]
    pub raw: Option<RawLoad>,
}

/// Separates the path inside a boot source from the message in a deserialisation
/// error, so that [`path_error`] can name the inner field (serde's internally tagged
/// enums lose the path; `BootSource` is therefore deserialised by hand).
const INNER_PATH: char = '\u{1f}';

impl<'de> Deserialize<'de> for BootSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut map = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let kind = match map.remove("kind") {
            Some(serde_json::Value::String(k)) => k,
            Some(other) => {
                return Err(D::Error::custom(format_args!(
                    "{INNER_PATH}kind{INNER_PATH}expected a string, got {other}"
                )))
            }
            None => return Err(D::Error::missing_field("kind")),
        };
        fn inner<T: serde::de::DeserializeOwned, E: Error>(
            rest: serde_json::Map<String, serde_json::Value>,
        ) -> Result<T, E> {
            serde_path_to_error::deserialize(serde_json::Value::Object(rest)).map_err(|e| {
                let path = field_path("", e.path());
                E::custom(format_args!("{INNER_PATH}{path}{INNER_PATH}{}", e.inner()))
            })
        }
        match kind.as_str() {
            "linux" => inner(map).map(BootSource::Linux),
            "raw" => inner(map).map(BootSource::Raw),
            "bundle" => inner(map).map(BootSource::Bundle),
            other => Err(D::Error::custom(format_args!(
                "{INNER_PATH}kind{INNER_PATH}unknown variant `{other}`, expected one of `linux`, `raw`, `bundle`"
            ))),
        }
    }
}

/// Where and how a flat binary from a bundle is loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLoad {
    /// Guest-physical load address.
    pub load_addr: u64,
    /// Entry state of the vCPUs.
    pub entry: RawEntry,
}

fn one() -> usize {
    1
}

/// Entry point choice for a Linux kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinuxEntry {
    /// PVH if the vmlinux has a PVH note, else the 64-bit boot protocol.
    #[default]
    Auto,
    /// The Linux 64-bit boot protocol (zero page in RSI).
    Linux64,
    /// The PVH entry (32-bit protected mode, start info in EBX); vmlinux only.
    Pvh,
}

/// Entry state for a raw binary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEntry {
    /// CPU mode at entry.
    pub mode: RawMode,
    /// Entry instruction pointer (guest-physical; identity-mapped in `long64`).
    pub rip: u64,
    /// Initial RSP.
    #[serde(default)]
    pub rsp: u64,
    /// Initial RSI.
    #[serde(default)]
    pub rsi: u64,
    /// Where application processors start.
    #[serde(default)]
    pub aps: ApStart,
}

/// CPU mode for a raw entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawMode {
    /// 64-bit long mode, CPL0, the first 4 GiB identity-mapped with 2 MiB pages.
    Long64,
    /// 16-bit real mode; `rip` is split into a CS base (64 KiB aligned) and IP.
    Real,
}

/// How application processors (vCPU 1..N) start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApStart {
    /// Halted until the BSP sends INIT/SIPI (what Linux expects).
    #[default]
    WaitForSipi,
    /// Running at the entry point like the BSP, with RDI = vCPU index (test guests).
    AtEntry,
}

/// Emulated devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicesConfig {
    /// COM1 16550 UART at 0x3f8, IRQ 4.
    #[serde(default)]
    pub serial: SerialOutput,
    /// i8042 controller at 0x60/0x64 (only its reset line is wired).
    #[serde(default = "yes")]
    pub i8042: bool,
    /// Debug-exit port at 0xf4: a byte written there ends the VM with that code.
    #[serde(default)]
    pub debug_exit: bool,
    /// The transport of every virtio device: virtio-mmio windows (default) or
    /// virtio-pci functions on PCI bus 0 (see `virtio`, `virtio_pci`).
    #[serde(default, skip_serializing_if = "VirtioTransport::is_mmio")]
    pub virtio_transport: VirtioTransport,
    /// virtio-blk disks, in this order (see `virtio`).
    #[serde(default)]
    pub block: Vec<BlockConfig>,
    /// virtio-vsock with its host side on Unix sockets.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// virtio-rng fed from the host's getrandom.
    #[serde(default)]
    pub rng: bool,
    /// Host PCI devices passed through with VFIO (`docs/vfio.md`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vfio: Vec<VfioDeviceConfig>,
}

impl DevicesConfig {
    /// Checks the device fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vfio.len() > crate::vfio::MAX_DEVICES {
            return Err(ConfigError::new(
                "devices.vfio",
                format!("at most {} devices", crate::vfio::MAX_DEVICES),
            ));
        }
        let mut seen = Vec::new();
        for (i, d) in self.vfio.iter().enumerate() {
            let b: crate::pci::Bdf = d
                .bdf
                .parse()
                .map_err(|e: String| ConfigError::new(format!("devices.vfio[{i}].bdf"), e))?;
            if seen.contains(&b) {
                return Err(ConfigError::new(
                    format!("devices.vfio[{i}].bdf"),
                    format!("{b} is listed twice"),
                ));
            }
            seen.push(b);
            d.stated_id()
                .map_err(|e| ConfigError::new(format!("devices.vfio[{i}].id"), e))?;
        }
        Ok(())
    }
}

fn yes() -> bool {
    true
}

impl Default for DevicesConfig {
    fn default() -> Self {
        DevicesConfig {
            serial: SerialOutput::default(),
            i8042: true,
            debug_exit: false,
            virtio_transport: VirtioTransport::Mmio,
            block: Vec::new(),
            vsock: None,
            rng: false,
            vfio: Vec::new(),
        }
    }
}

/// A configuration error naming the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// Dotted path of the field.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    /// A new error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The dotted name of the field a deserialisation error is at, below `prefix`
/// (`prefix` itself when the error is not inside any field; the top-level prefix
/// `config`, or an empty one, is dropped once a field is known).
pub fn field_path(prefix: &str, path: &serde_path_to_error::Path) -> String {
    let inner: Vec<String> = path
        .iter()
        .map(|s| s.to_string())
        .filter(|s| !s.is_empty() && s != "?")
        .collect();
    // Sequence indices print as `[i]` and attach without a dot: `devices.block[0].id`.
    let joined = inner.iter().fold(String::new(), |mut acc, seg| {
        if !acc.is_empty() && !seg.starts_with('[') {
            acc.push('.');
        }
        acc.push_str(seg);
        acc
    });
    match (prefix, inner.is_empty()) {
        (p, true) => p.to_string(),
        ("config" | "", false) => joined,
        (p, false) if joined.starts_with('[') => format!("{p}{joined}"),
        (p, false) => format!("{p}.{joined}"),
    }
}

/// Largest vCPU count (xAPIC IDs 0..=253, 0xff is broadcast).
pub const MAX_VCPUS: u8 = 254;
/// Largest guest RAM accepted (1 TiB).
pub const MAX_MEM_MIB: u64 = 1 << 20;
/// Largest 64-bit MMIO window accepted (64 TiB).
pub const MAX_MMIO64_GIB: u64 = 64 << 10;

/// A deserialisation error as a [`ConfigError`] naming the field below `prefix`,
/// including fields inside the boot source (whose path [`BootSource`]'s deserialiser
/// carries in the message).
pub fn path_error(prefix: &str, e: serde_path_to_error::Error<serde_json::Error>) -> ConfigError {
    let field = field_path(prefix, e.path());
    let message = e.into_inner().to_string();
    let mut parts = message.splitn(3, INNER_PATH);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(inner), Some(rest)) => {
            let field = if inner.is_empty() {
                field
            } else {
                format!("{field}.{inner}")
            };
            ConfigError::new(field, rest.to_string())
        }
        _ => ConfigError::new(field, message),
    }
}

impl VmConfig {
    /// Parses JSON, naming the field on error.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let cfg: VmConfig =
            serde_path_to_error::deserialize(de).map_err(|e| path_error("config", e))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the values that the types alone do not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.machine.validate()?;
        self.devices.validate()?;
        self.boot_source.validate()?;
        self.validate_firmware()?;
        validate_virtio(&self.devices, Some(&self.boot_source))
    }

    /// A firmware boot needs a Linux kernel entered at its 64-bit entry.
    fn validate_firmware(&self) -> Result<(), ConfigError> {
        let Some(fw) = &self.machine.firmware else {
            return Ok(());
        };
        let no = |m: &str| Err(ConfigError::new("machine.firmware", m));
        if fw.as_os_str().is_empty() {
            return no("must not be empty");
        }
        match &self.boot_source {
            BootSource::Raw(_) | BootSource::Bundle(BundleBoot { raw: Some(_), .. }) => no(
                "a raw boot has no kernel for the firmware to check (use a Linux or bundle boot)",
            ),
            BootSource::Linux(LinuxBoot {
                entry: LinuxEntry::Pvh,
                ..
            })
            | BootSource::Bundle(BundleBoot {
                entry: LinuxEntry::Pvh,
                ..
            }) => {
                no("the firmware enters the kernel at its 64-bit entry: entry pvh is not possible")
            }
            _ => Ok(()),
        }
    }
}

impl BootSource {
    /// Checks the boot source fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            BootSource::Raw(RawBoot {
                load_addr, entry, ..
            }) => validate_raw("boot_source", *load_addr, entry)?,
            BootSource::Linux(LinuxBoot { kernel, .. }) if kernel.as_os_str().is_empty() => {
                return Err(ConfigError::new("boot_source.kernel", "must not be empty"));
            }
            BootSource::Bundle(BundleBoot {
                trusted_keys,
                threshold,
                raw,
                ..
            }) => {
                if let Some(r) = raw {
                    validate_raw("boot_source.raw", r.load_addr, &r.entry)?;
                }
                if trusted_keys.is_empty() {
                    return Err(ConfigError::new(
                        "boot_source.trusted_keys",
                        "at least one key is required",
                    ));
                }
                if *threshold == 0 || *threshold > trusted_keys.len() {
                    return Err(ConfigError::new(
                        "boot_source.threshold",
                        format!("must be between 1 and {}", trusted_keys.len()),
                    ));
                }
            }
            BootSource::Linux(_) => {}
        }
        Ok(())
    }
}

fn validate_raw(prefix: &str, load_addr: u64, entry: &RawEntry) -> Result<(), ConfigError> {
    if entry.mode == RawMode::Real && entry.aps == ApStart::AtEntry {
        return Err(ConfigError::new(
            format!("{prefix}.entry.aps"),
            "at_entry is only supported with mode long64",
        ));
    }
    if entry.mode == RawMode::Long64 && entry.rip >= 4 * GIB {
        return Err(ConfigError::new(
            format!("{prefix}.entry.rip"),
            "must be below 4 GiB (the identity-mapped range)",
        ));
    }
    if load_addr.checked_add(1).is_none() {
        return Err(ConfigError::new(
            format!("{prefix}.load_addr"),
            "out of range",
        ));
    }
    Ok(())
}

impl MachineConfig {
    /// Checks the machine shape.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::new(
                "machine.vcpus",
                format!("must be between 1 and {MAX_VCPUS}"),
            ));
        }
        if self.mem_mib > MAX_MEM_MIB {
            return Err(ConfigError::new(
                "machine.mem_mib",
                format!("at most {MAX_MEM_MIB}"),
            ));
        }
        if self.mmio64_gib > MAX_MMIO64_GIB {
            return Err(ConfigError::new(
                "machine.mmio64_gib",
                format!("at most {MAX_MMIO64_GIB}"),
            ));
        }
        self.layout(52).map_err(|e| {
            let s = e.to_string();
            let (field, msg) = s.split_once(": ").unwrap_or(("machine", &s));
            ConfigError::new(field, msg)
        })?;
        Ok(())
    }

    /// The memory layout for a guest physical address width of `phys_bits`.
    pub fn layout(&self, phys_bits: u8) -> Result<MemoryLayout, crate::layout::LayoutError> {
        let layout = MemoryLayout::new(self.mem_mib * MIB, self.mmio64_gib * GIB, phys_bits)?;
        Ok(match self.firmware {
            Some(_) => layout.with_firmware(),
            None => layout,
        })
    }
}

impl DevicesConfig {
    /// Checks the virtio part (`boot`: the boot source, when known, for
    /// `bundle_rootfs`).
    pub fn validate_virtio(&self, boot: Option<&BootSource>) -> Result<(), ConfigError> {
        validate_virtio(self, boot)
    }
}

/// Checks the virtio part of the devices configuration (`boot`: the boot source, when
/// known, for `bundle_rootfs`).
fn validate_virtio(cfg: &DevicesConfig, boot: Option<&BootSource>) -> Result<(), ConfigError> {
    let n = cfg.block.len() + usize::from(cfg.rng) + usize::from(cfg.vsock.is_some());
    match cfg.virtio_transport {
        VirtioTransport::Mmio if n > crate::virtio::max_devices() => {
            return Err(ConfigError::new(
                "devices",
                format!(
                    "{n} virtio devices; at most {} fit on virtio-mmio (one GSI each); devices.virtio_transport \"pci\" takes more",
                    crate::virtio::max_devices()
                ),
            ));
        }
        VirtioTransport::Pci if n > crate::virtio::max_pci_devices(cfg.vfio.len()) => {
            return Err(ConfigError::new(
                "devices",
                format!(
                    "{n} virtio-pci devices; beside {} assigned devices bus 0 has room for {}",
                    cfg.vfio.len(),
                    crate::virtio::max_pci_devices(cfg.vfio.len())
                ),
            ));
        }
        _ => {}
    }
    // The windows must fit the space the layout reserves for them.
    debug_assert!(
        crate::virtio::max_devices() as u64 * bulwark_virtio::MMIO_REGION_SIZE
            <= crate::layout::VIRTIO_MMIO_SIZE
    );
    let mut seen_rootfs = false;
    for (i, b) in cfg.block.iter().enumerate() {
        let field = |f: &str| format!("devices.block[{i}].{f}");
        if b.id.is_empty()
            || b.id.len() > MAX_ID_LEN
            || !b
                .id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
        {
            return Err(ConfigError::new(
                field("id"),
                format!("must be 1..={MAX_ID_LEN} characters of [A-Za-z0-9._-]"),
            ));
        }
        if cfg.block[..i].iter().any(|o| o.id == b.id) {
            return Err(ConfigError::new(
                field("id"),
                format!("duplicate id {:?}", b.id),
            ));
        }
        match (&b.path, b.bundle_rootfs) {
            (Some(_), true) | (None, false) => {
                return Err(ConfigError::new(
                    format!("devices.block[{i}]"),
                    "give exactly one of `path` and `bundle_rootfs: true`",
                ));
            }
            (Some(p), false) if p.as_os_str().is_empty() => {
                return Err(ConfigError::new(field("path"), "must not be empty"));
            }
            (None, true) => {
                if boot.is_some_and(|b| !matches!(b, BootSource::Bundle { .. })) {
                    return Err(ConfigError::new(
                        field("bundle_rootfs"),
                        "needs a signed bundle boot source (boot_source.kind: bundle)",
                    ));
                }
                if seen_rootfs {
                    return Err(ConfigError::new(
                        field("bundle_rootfs"),
                        "only one disk can serve the bundle rootfs",
                    ));
                }
                seen_rootfs = true;
                if b.read_only == Some(false) {
                    return Err(ConfigError::new(
                        field("read_only"),
                        "the bundle rootfs is always read-only",
                    ));
                }
            }
            (Some(_), false) => {}
        }
    }
    if let Some(v) = &cfg.vsock {
        if v.guest_cid < 3 || v.guest_cid >= u64::from(u32::MAX) {
            return Err(ConfigError::new(
                "devices.vsock.guest_cid",
                "must be between 3 and 4294967294",
            ));
        }
        if v.uds_path.as_os_str().is_empty() {
            return Err(ConfigError::new(
                "devices.vsock.uds_path",
                "must not be empty",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAW: &str = r#"{"machine":{"vcpus":2,"mem_mib":64},
        "boot_source":{"kind":"raw","image":"g.bin","load_addr":1048576,
        "entry":{"mode":"long64","rip":1048576,"aps":"at_entry"}},
        "devices":{"serial":{"file":"/tmp/x"},"debug_exit":true}}"#;

    #[test]
    fn parses_a_raw_config_with_defaults() {
        let c = VmConfig::from_json(RAW).unwrap();
        assert_eq!(c.machine.mmio64_gib, 1024);
        assert!(c.machine.acpi);
        assert!(c.devices.i8042);
        assert_eq!(c.seccomp, SeccompMode::Enforce);
        assert_eq!(c.devices.serial, SerialOutput::File("/tmp/x".into()));
    }

    #[test]
    fn errors_name_the_field() {
        let e = VmConfig::from_json(&RAW.replace("\"vcpus\":2", "\"vcpus\":0")).unwrap_err();
        assert_eq!(e.field, "machine.vcpus");
        let e = VmConfig::from_json(&RAW.replace("\"vcpus\":2", "\"vcpus\":\"x\"")).unwrap_err();
        assert_eq!(e.field, "machine.vcpus");
        let e = VmConfig::from_json(&RAW.replace("\"mem_mib\":64", "\"mem_mib\":65")).unwrap_err();
        assert_eq!(e.field, "machine.mem_mib");
        let e = VmConfig::from_json(&RAW.replace("long64", "protected")).unwrap_err();
        assert_eq!(e.field, "boot_source.entry.mode");
        assert!(
            e.message.contains("`protected`") && e.message.contains("long64"),
            "{e}"
        );
        assert!(!e.message.contains('\u{1f}'), "{e:?}");
        let e = VmConfig::from_json(&RAW.replace("\"raw\"", "\"firmware\"")).unwrap_err();
        assert_eq!(e.field, "boot_source.kind");
        assert!(e.message.contains("`firmware`"), "{e}");
        let e = VmConfig::from_json(&RAW.replace("\"kind\":\"raw\",", "")).unwrap_err();
        assert_eq!(e.field, "boot_source");
        assert!(e.message.contains("kind"), "{e}");
        let e = VmConfig::from_json(&RAW.replace("\"load_addr\":1048576", "\"load_addr\":-1"))
            .unwrap_err();
        assert_eq!(e.field, "boot_source.load_addr");
        let bundle = r#"{"machine":{"vcpus":1,"mem_mib":64},
            "boot_source":{"kind":"bundle","path":"b.bwi","trusted_keys":["k.pem"],
            "raw":{"load_addr":1048576,"entry":{"mode":"long64","rip":"x"}}}}"#;
        let e = VmConfig::from_json(bundle).unwrap_err();
        assert_eq!(e.field, "boot_source.raw.entry.rip");
        let e = VmConfig::from_json(&bundle.replace("\"k.pem\"", "7").replace("\"x\"", "1"))
            .unwrap_err();
        assert_eq!(e.field, "boot_source.trusted_keys[0]");
        let e = VmConfig::from_json(&RAW.replace("\"debug_exit\"", "\"bogus\"")).unwrap_err();
        assert_eq!(e.field, "devices.bogus");
        let e = VmConfig::from_json(&RAW.replace("\"load_addr\"", "\"bogus\":1,\"load_addr\""))
            .unwrap_err();
        assert_eq!(e.field, "boot_source.bogus", "{e}");
        assert!(e.message.contains("bogus"), "{e}");
        let e = VmConfig::from_json("{").unwrap_err();
        assert_eq!(e.field, "config");
    }

    #[test]
    fn vfio_devices_are_checked() {
        let with = |list: &str| {
            RAW.replace(
                "\"debug_exit\":true",
                &format!("\"debug_exit\":true,\"vfio\":{list}"),
            )
        };
        let c = VmConfig::from_json(&with(r#"[{"bdf":"0000:00:03.0"}]"#)).unwrap();
        assert_eq!(c.devices.vfio[0].interface, VfioInterface::Container);
        let e = VmConfig::from_json(&with(r#"[{"bdf":"00:03.0"}]"#)).unwrap_err();
        assert_eq!(e.field, "devices.vfio[0].bdf");
        let e = VmConfig::from_json(&with(r#"[{"bdf":"0000:00:03.0"},{"bdf":"0000:00:03.0"}]"#))
            .unwrap_err();
        assert_eq!(e.field, "devices.vfio[1].bdf");
        assert!(e.message.contains("twice"));
        let e = VmConfig::from_json(&with(r#"[{"bdf":"0000:00:03.0","x":1}]"#)).unwrap_err();
        assert!(e.field.starts_with("devices.vfio"), "{e}");
        let c = VmConfig::from_json(&with(r#"[{"bdf":"0000:00:03.0","interface":"iommufd"}]"#))
            .unwrap();
        assert_eq!(c.devices.vfio[0].interface, VfioInterface::Iommufd);
        let c = VmConfig::from_json(&with(r#"[{"bdf":"0000:00:03.0","id":"1234:11e8"}]"#)).unwrap();
        assert_eq!(c.devices.vfio[0].stated_id(), Ok(Some((0x1234, 0x11e8))));
        for bad in ["1234", "12345:11e8", "1234:xyzw", "1234:11e8:0"] {
            let e = VmConfig::from_json(&with(&format!(
                r#"[{{"bdf":"0000:00:03.0","id":"{bad}"}}]"#
            )))
            .unwrap_err();
            assert_eq!(e.field, "devices.vfio[0].id", "{bad}");
        }
    }
}
