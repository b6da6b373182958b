//! bulwarkd's configuration file (`--config FILE`, JSON; every field optional).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::lifecycle::valid_pci_address;

/// How devices are sanitized.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SanitizerConfig {
    /// VFIO device reset, then the vendor check (the node default).
    #[default]
    Vfio,
    /// Touches no hardware; for tests and demos only. Its records say so
    /// (`method: software-test`), so evidence cannot pass them off as a real scrub.
    SoftwareTest {
        /// Devices whose scrub fails (→ quarantined).
        #[serde(default)]
        fail: Vec<String>,
        /// Devices whose scrub never finishes (→ the timeout quarantines them).
        #[serde(default)]
        hang: Vec<String>,
        /// Time each step takes, in milliseconds.
        #[serde(default)]
        step_ms: u64,
    },
}

/// The jail each bulwark-vmm runs in.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailConfig {
    /// Each VMM gets its own uid from `uid_base .. uid_base + uid_count`.
    pub uid_base: u32,
    #[serde(default = "default_uid_count")]
    pub uid_count: u32,
    /// gid of every VMM: a group with access to /dev/kvm.
    pub gid: u32,
    /// cgroup v2 directory under which each VM gets one (`<cgroup_parent>/<vm>`)
    /// with cpu, memory and pids limits. Absent: no cgroup, and each VM records that.
    #[serde(default)]
    pub cgroup_parent: Option<PathBuf>,
    /// pids.max of each VMM's cgroup.
    #[serde(default = "default_pids")]
    pub pids_max: u32,
    /// Pivot each VMM's mount namespace into a root holding only its files (on by
    /// default; off is recorded in each VM's jail notes).
    #[serde(default = "default_true")]
    pub pivot_root: bool,
    /// More host paths the VMM may read (bind-mounted read-only at the same path),
    /// e.g. for a dynamically linked VMM's unusual library directories.
    #[serde(default)]
    pub extra_ro_paths: Vec<PathBuf>,
}

fn default_true() -> bool {
    true
}

fn default_uid_count() -> u32 {
    1000
}
fn default_pids() -> u32 {
    256
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The sysfs root (tests: a fake tree).
    #[serde(default = "default_sysfs")]
    pub sysfs_root: PathBuf,
    /// Extra PCI functions to track as accelerators.
    #[serde(default)]
    pub devices: Vec<String>,
    /// Host drivers a group member may not be taken from at enrolment.
    #[serde(default = "default_disallowed")]
    pub disallowed_host_drivers: Vec<String>,
    /// Besides root, members of this group may use the Unix socket API.
    #[serde(default)]
    pub operator_gid: Option<u32>,
    #[serde(default)]
    pub sanitizer: SanitizerConfig,
    /// Upper bound of each scrub step.
    #[serde(default = "default_scrub_timeout")]
    pub scrub_step_timeout_ms: u64,
    /// Upper bound of the sysfs writes that move a group's devices between drivers
    /// (enrolment, unenrolment); a driver whose unbind hangs is given up on after it.
    #[serde(default = "default_driver_change_timeout")]
    pub driver_change_timeout_ms: u64,
    /// The bulwark-vmm binary.
    #[serde(default)]
    pub vmm_bin: Option<PathBuf>,
    /// `machine.mmio64_gib` of every VM (the 64-bit PCI window, GiB); absent: the
    /// VMM's default. A machine with a small guest physical address space (a nested
    /// lab machine: 40 bits) needs a smaller window than that default.
    #[serde(default)]
    pub vmm_mmio64_gib: Option<u32>,
    /// The guest firmware image every VM boots through (bulwark-vmm's
    /// `machine.firmware`: measured direct boot, `docs/firmware.md`); none: the VMM
    /// loads the kernel itself.
    #[serde(default)]
    pub vm_firmware: Option<PathBuf>,
    /// The VMM jail; VMs cannot start without one.
    #[serde(default)]
    pub jail: Option<JailConfig>,
    /// Address the VMs' exposed vsock ports listen on.
    #[serde(default = "default_port_bind")]
    pub port_bind_addr: String,
    /// Largest image accepted by `PUT /images/{name}`.
    #[serde(default = "default_max_image")]
    pub max_image_bytes: u64,
    /// The API over TCP with mutual TLS; absent: Unix socket only.
    #[serde(default)]
    pub tls: Option<crate::tls::TlsConfig>,
    /// Evidence for `POST /vms/{id}/attest`; absent: attestation refused.
    #[serde(default)]
    pub attestation: Option<AttestationConfig>,
    /// Node OS image updates through the API (`PUT /node/image`); absent: refused.
    #[serde(default)]
    pub node_update: Option<NodeUpdateConfig>,
}

/// Where and how the node's own OS image is updated (`docs/node-image.md`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeUpdateConfig {
    /// The EFI system partition holding the A/B slots (a block device, e.g.
    /// `/dev/disk/by-partlabel/ESP`, or a disk image file in tests).
    pub esp: PathBuf,
    /// The provider's node image signing keys (SPKI PEM files).
    pub trust: Vec<PathBuf>,
    /// Signatures required (default 1).
    #[serde(default = "one")]
    pub threshold: usize,
    /// Boot attempts the new slot gets before systemd-boot falls back (default 1).
    #[serde(default = "one_u32")]
    pub tries: u32,
}

fn one() -> usize {
    1
}
fn one_u32() -> u32 {
    1
}

/// What bulwarkd puts in evidence about the node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationConfig {
    /// The node OS image that booted: stated in the config, or `"booted"`: read
    /// at start from the booted slot's signed manifest on `node_update.esp`.
    pub node_image: NodeImageSource,
    /// efivarfs, where systemd-boot's `LoaderEntrySelected` names the booted
    /// entry (for `node_image: "booted"`; tests: a folder of fake variables).
    #[serde(default = "default_efivars")]
    pub efivars: PathBuf,
    /// Sign evidence with a per-boot software key instead of a TPM-backed one (the
    /// evidence then says `software-key` and proves nothing about the node: tests
    /// and demos only). Exclusive with `tpm`.
    #[serde(default)]
    pub software_key: bool,
    /// The node's TPM: its AK is enrolled at the first evidence request, and every
    /// document carries a quote over its binding hash.
    #[serde(default)]
    pub tpm: Option<TpmConfig>,
}

/// `attestation.tpm`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmConfig {
    /// TCTI of the TPM: `device:/dev/tpmrm0` on a node, `swtpm:host=…,port=…` in tests.
    pub tcti: String,
    /// The EK certificate's issuers (PEM files) put in the evidence for the
    /// verifier to chain to its `ek_roots`.
    #[serde(default)]
    pub ek_chain: Vec<PathBuf>,
    /// The TCG event log of this boot (default: the kernel's copy of the
    /// firmware's log; absent file: a log of the header alone, which replays only
    /// to PCRs nothing was measured into).
    #[serde(default = "default_event_log")]
    pub event_log: PathBuf,
}

fn default_efivars() -> PathBuf {
    PathBuf::from(bulwark_node_image::booted::EFIVARFS)
}

fn default_event_log() -> PathBuf {
    PathBuf::from("/sys/kernel/security/tpm0/binary_bios_measurements")
}

/// `attestation.node_image`: the explicit identity, or the string `"booted"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeImageSource {
    /// Read at start from the ESP: the booted slot (systemd-boot's
    /// `LoaderEntrySelected`), its signed manifest verified under
    /// `node_update.trust` and `threshold`, its UKI the signed one.
    Booted,
    /// As written in the config.
    Stated(NodeImage),
}

impl<'de> Deserialize<'de> for NodeImageSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = NodeImageSource;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "\"booted\" or an object {name, version, manifest_sha384, signer_key_ids}",
                )
            }
            fn visit_str<E: serde::de::Error>(
                self,
                v: &str,
            ) -> std::result::Result<Self::Value, E> {
                if v == "booted" {
                    Ok(NodeImageSource::Booted)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(v), &self))
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                NodeImage::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(NodeImageSource::Stated)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeImage {
    pub name: String,
    pub version: u64,
    /// SHA-384 of its signed manifest, hex (48 bytes).
    pub manifest_sha384: String,
    /// Key ids (hex, 32 bytes each) that signed it.
    pub signer_key_ids: Vec<String>,
}

fn default_port_bind() -> String {
    "0.0.0.0".into()
}
fn default_max_image() -> u64 {
    64 << 30
}
fn default_sysfs() -> PathBuf {
    PathBuf::from("/sys")
}
fn default_scrub_timeout() -> u64 {
    120_000
}
fn default_driver_change_timeout() -> u64 {
    60_000
}
fn default_disallowed() -> Vec<String> {
    [
        "nvme",
        "ahci",
        "xhci_hcd",
        "ehci-pci",
        "e1000e",
        "igb",
        "ixgbe",
        "i40e",
        "ice",
        "mlx5_core",
        "bnxt_en",
        "megaraid_sas",
        "mpt3sas",
    ]
    .map(String::from)
    .to_vec()
}

impl Default for Config {
    fn default() -> Config {
        serde_json::from_str("{}").expect("the empty config is valid")
    }
}

impl Config {
    /// Reads and checks `path`; errors name the file and the field.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::bad("config", format!("reading {}: {e}", path.display())))?;
        Config::parse(&text).map_err(|e| {
            Error::bad(
                e.field.clone(),
                format!("{}: {}", path.display(), e.message),
            )
        })
    }

    pub fn parse(text: &str) -> Result<Config> {
        let c: Config = crate::error::parse_json(text.as_bytes())?;
        for (i, d) in c.devices.iter().enumerate() {
            if !valid_pci_address(d) {
                return Err(Error::bad(
                    format!("devices[{i}]"),
                    format!("{d:?} is not a PCI address DDDD:BB:DD.F"),
                ));
            }
        }
        if c.scrub_step_timeout_ms == 0 {
            return Err(Error::bad("scrub_step_timeout_ms", "must be positive"));
        }
        if c.driver_change_timeout_ms == 0 {
            return Err(Error::bad("driver_change_timeout_ms", "must be positive"));
        }
        if let Some(a) = &c.attestation {
            match &a.node_image {
                NodeImageSource::Stated(n) => {
                    if hex::decode(&n.manifest_sha384).map_or(true, |b| b.len() != 48) {
                        return Err(Error::bad(
                            "attestation.node_image.manifest_sha384",
                            "must be 48 bytes in hex",
                        ));
                    }
                    for (i, k) in n.signer_key_ids.iter().enumerate() {
                        if hex::decode(k).map_or(true, |b| b.len() != 32) {
                            return Err(Error::bad(
                                format!("attestation.node_image.signer_key_ids[{i}]"),
                                "must be 32 bytes in hex",
                            ));
                        }
                    }
                }
                NodeImageSource::Booted if c.node_update.is_none() => {
                    return Err(Error::bad(
                        "attestation.node_image",
                        "\"booted\" reads the booted image's signed manifest from the ESP with the provider's keys: it needs node_update (esp, trust, threshold)",
                    ));
                }
                NodeImageSource::Booted => {}
            }
            if a.software_key && a.tpm.is_some() {
                return Err(Error::bad(
                    "attestation.software_key",
                    "a software key and a TPM are exclusive: choose one",
                ));
            }
        }
        if let Some(j) = &c.jail {
            if j.uid_base == 0 || j.gid == 0 || j.gid == u32::MAX {
                return Err(Error::bad(
                    "jail.uid_base",
                    "a VMM never runs as root (uid or gid 0)",
                ));
            }
            if j.uid_count == 0 || j.uid_base.checked_add(j.uid_count).is_none() {
                return Err(Error::bad(
                    "jail.uid_count",
                    "must be positive and keep uids below 2^32",
                ));
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors_name_the_field() {
        let c = Config::parse("{}").unwrap();
        assert_eq!(c.sysfs_root, PathBuf::from("/sys"));
        assert_eq!(c.vmm_mmio64_gib, None);
        assert_eq!(
            Config::parse(r#"{"vmm_mmio64_gib": 64}"#)
                .unwrap()
                .vmm_mmio64_gib,
            Some(64)
        );
        assert_eq!(c.sanitizer, SanitizerConfig::Vfio);
        assert!(c.disallowed_host_drivers.contains(&"nvme".to_string()));
        let c = Config::parse(r#"{"sanitizer":{"kind":"software_test","fail":["0000:01:00.0"]}}"#)
            .unwrap();
        assert!(
            matches!(c.sanitizer, SanitizerConfig::SoftwareTest { ref fail, .. } if fail.len() == 1)
        );
        for (text, field) in [
            (r#"{"bogus":1}"#, "bogus"),
            (r#"{"devices":["x"]}"#, "devices[0]"),
            (r#"{"sanitizer":{"kind":"magic"}}"#, "sanitizer.kind"),
            (r#"{"jail":{"gid":5}}"#, "jail.uid_base"),
            (r#"{"scrub_step_timeout_ms":0}"#, "scrub_step_timeout_ms"),
            (
                r#"{"driver_change_timeout_ms":0}"#,
                "driver_change_timeout_ms",
            ),
            (r#"{"jail":{"uid_base":0,"gid":5}}"#, "jail.uid_base"),
            (r#"{"operator_gid":"x"}"#, "operator_gid"),
            (
                r#"{"attestation":{"node_image":{"name":"n","version":1,"manifest_sha384":"00","signer_key_ids":[]}}}"#,
                "attestation.node_image.manifest_sha384",
            ),
            (
                r#"{"attestation":{"node_image":"booted","software_key":true}}"#,
                "attestation.node_image",
            ),
            (
                r#"{"attestation":{"node_image":"latest","software_key":true}}"#,
                "attestation.node_image",
            ),
            (
                r#"{"attestation":{"node_image":{"name":"n","version":1,"manifest_sha384":"00","signer_key_ids":[],"extra":1}}}"#,
                "attestation.node_image.extra",
            ),
            (
                r#"{"attestation":{"node_image":"booted","efivarz":"/x"}}"#,
                "attestation.efivarz",
            ),
        ] {
            let e = Config::parse(text).unwrap_err();
            assert_eq!(e.field, field, "{text}: {e}");
        }
    }

    #[test]
    fn node_image_is_stated_or_booted() {
        let sha = "ab".repeat(48);
        let key = "cd".repeat(32);
        let c = Config::parse(&format!(
            r#"{{"attestation":{{"node_image":{{"name":"n","version":3,"manifest_sha384":"{sha}","signer_key_ids":["{key}"]}},"software_key":true}}}}"#
        ))
        .unwrap();
        let a = c.attestation.unwrap();
        assert!(
            matches!(&a.node_image, NodeImageSource::Stated(n) if n.version == 3 && n.signer_key_ids == [key])
        );
        assert_eq!(a.efivars, PathBuf::from("/sys/firmware/efi/efivars"));
        let c = Config::parse(
            r#"{"node_update":{"esp":"/dev/esp","trust":["/k.pem"]},
                "attestation":{"node_image":"booted","software_key":true,"efivars":"/tmp/ev"}}"#,
        )
        .unwrap();
        let a = c.attestation.unwrap();
        assert_eq!(a.node_image, NodeImageSource::Booted);
        assert_eq!(a.efivars, PathBuf::from("/tmp/ev"));
        let e = Config::parse(r#"{"attestation":{"node_image":"booted","software_key":true}}"#)
            .unwrap_err();
        assert!(e.message.contains("node_update"), "{e}");
    }
}
