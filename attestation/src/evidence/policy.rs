//! The appraisal policy: a TOML file (schema in `docs/evidence.md`). Unknown
//! keys are refused, with the key named.

use crate::Error;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Largest policy file accepted.
pub const MAX_POLICY_LEN: usize = 1 << 20;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Accept evidence signed by a software key (no TPM). For tests only:
    /// such evidence proves nothing about the node.
    #[serde(default)]
    pub allow_software_key: bool,
    /// Largest accepted age of the evidence (now − timestamp), seconds.
    #[serde(default = "default_max_age")]
    pub max_age_seconds: u64,
    /// Refuse debuggable TEEs and unsigned boots (default true).
    #[serde(default = "yes")]
    pub debug_forbidden: bool,
    #[serde(default)]
    pub node: NodePolicy,
    #[serde(default)]
    pub vm: VmPolicy,
    #[serde(default)]
    pub isolation: IsolationPolicy,
    #[serde(default)]
    pub tee: TeePolicy,
    #[serde(default)]
    pub gpu: GpuPolicy,
    /// Directory of the policy file: relative paths resolve against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

fn default_max_age() -> u64 {
    300
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodePolicy {
    /// Key ids (hex SHA-256 of the SPKI) trusted to sign node OS images.
    #[serde(default)]
    pub image_signers: Vec<String>,
    /// Allowed node image names (empty: any name from a trusted signer).
    #[serde(default)]
    pub image_names: Vec<String>,
    #[serde(default)]
    pub min_image_version: u64,
    /// EK CA certificates (PEM files) for TPM mode.
    #[serde(default)]
    pub ek_roots: Vec<PathBuf>,
    /// Pinned node identities: the EK certificate's issuer or subject must
    /// contain one of these (empty: any node whose EK chains to `ek_roots`).
    #[serde(default)]
    pub pinned_identities: Vec<String>,
    /// Expected PCR values (index → hex SHA-256), on top of the event log replay.
    #[serde(default)]
    pub pcrs: std::collections::BTreeMap<String, String>,
    /// Signed node OS images one of which the quoted boot must be: PCRs 9, 11,
    /// 12 and the PCR 4 boot applications as each image predicts them
    /// (`evidence/node_boot.rs`, `docs/node-image.md`).
    #[serde(default)]
    pub boot_images: Vec<NodeImageRef>,
    /// Reference values of the firmware-owned PCRs (0–3, 5–7), one entry per
    /// hardware model; one model must match all its values.
    #[serde(default)]
    pub firmware: Vec<FirmwareReference>,
}

/// A signed node OS image and the keys it must verify against.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeImageRef {
    /// The signed node image bundle (.bwi).
    pub image: PathBuf,
    /// Trusted public keys (PEM) the bundle must verify against.
    pub trust: Vec<PathBuf>,
}

/// Firmware PCR reference values of one hardware model.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirmwareReference {
    /// A name for the model (reported when it matches).
    pub model: String,
    /// PCR index (0–3, 5, 6, 7) → hex SHA-256.
    pub pcrs: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmPolicy {
    /// Key ids (hex) trusted to sign tenant images.
    #[serde(default)]
    pub image_signers: Vec<String>,
    /// Allowed tenant image names (empty: any).
    #[serde(default)]
    pub image_names: Vec<String>,
    #[serde(default)]
    pub min_image_version: u64,
    /// Allowed launch measurements (hex SHA-384), e.g. from `bulwark-verify predict`.
    #[serde(default)]
    pub measurements: Vec<String>,
    /// "The measurement predicted from this signed image": computed at
    /// verification time with bulwark-vmm's offline loader.
    #[serde(default)]
    pub predict_from: Vec<PredictFrom>,
    #[serde(default)]
    pub vcpus: Option<u32>,
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    #[serde(default)]
    pub cpuid_policy: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictFrom {
    /// The signed bundle (.bwi).
    pub image: PathBuf,
    /// Trusted public keys (PEM) the bundle must verify against.
    pub trust: Vec<PathBuf>,
    /// The VM configuration (bulwark-vmm config JSON) without its boot source.
    #[serde(default)]
    pub vm: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsolationPolicy {
    /// Require the node's statement that it hosts one tenant (default true).
    #[serde(default = "yes")]
    pub require_single_tenant: bool,
    /// Require every passed-through device's IOMMU group to be this VM's alone.
    #[serde(default = "yes")]
    pub require_exclusive_groups: bool,
    /// Largest time since a device's last sanitization, seconds (absent: not checked).
    #[serde(default)]
    pub max_since_sanitize_seconds: Option<u64>,
}

impl Default for IsolationPolicy {
    fn default() -> Self {
        IsolationPolicy {
            require_single_tenant: true,
            require_exclusive_groups: true,
            max_since_sanitize_seconds: None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeePolicy {
    /// `none` (default), `any`, `sev-snp` or `tdx`.
    #[serde(default)]
    pub require: Option<String>,
    /// SEV-SNP: ASK/ARK PEM file instead of the embedded AMD roots.
    #[serde(default)]
    pub sev_snp_chain: Option<PathBuf>,
    /// TDX: accept TCB statuses other than UpToDate (warnings).
    #[serde(default)]
    pub allow_outdated_tcb: bool,
    /// Expected SEV-SNP measurement / TDX MRTD (hex).
    #[serde(default)]
    pub measurement: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuPolicy {
    /// Require NVIDIA CC evidence for every GPU passed through (default false).
    #[serde(default)]
    pub require_cc: bool,
    /// NVIDIA device identity root (PEM) instead of the embedded one.
    #[serde(default)]
    pub root: Option<PathBuf>,
}

impl Policy {
    /// Parse policy text; `base_dir` resolves relative paths.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Self, Error> {
        if text.len() > MAX_POLICY_LEN {
            return Err(Error::Argument("policy: file too large".into()));
        }
        let mut p: Policy = toml::from_str(text)
            .map_err(|e| Error::Argument(format!("policy: {}", one_line(&e))))?;
        p.base_dir = base_dir.to_path_buf();
        p.validate()?;
        Ok(p)
    }

    /// Read and parse a policy file.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read(path)
            .map_err(|e| Error::Argument(format!("policy {}: {e}", path.display())))?;
        let text = String::from_utf8(text)
            .map_err(|_| Error::Argument(format!("policy {}: not UTF-8", path.display())))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, dir)
    }

    /// The permissive policy the fuzz target and library users start from:
    /// every expectation empty, software key allowed, no age limit.
    pub fn permissive() -> Self {
        Policy {
            allow_software_key: true,
            max_age_seconds: u64::MAX,
            debug_forbidden: false,
            isolation: IsolationPolicy {
                require_single_tenant: false,
                require_exclusive_groups: false,
                max_since_sanitize_seconds: None,
            },
            ..Policy::default()
        }
    }

    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    fn validate(&self) -> Result<(), Error> {
        let hex_list = |what: &str, list: &[String], len: usize| {
            for h in list {
                match hex::decode(h) {
                    Ok(b) if b.len() == len => {}
                    _ => {
                        return Err(Error::Argument(format!(
                            "policy: {what}: {h:?} is not {len} hex bytes"
                        )))
                    }
                }
            }
            Ok(())
        };
        hex_list("node.image_signers", &self.node.image_signers, 32)?;
        hex_list("vm.image_signers", &self.vm.image_signers, 32)?;
        hex_list("vm.measurements", &self.vm.measurements, 48)?;
        for (i, v) in &self.node.pcrs {
            if i.parse::<u32>().map_or(true, |i| i > 23) {
                return Err(Error::Argument(format!(
                    "policy: node.pcrs: {i:?} is not a PCR index 0..=23"
                )));
            }
            hex_list("node.pcrs", std::slice::from_ref(v), 32)?;
        }
        for f in &self.node.firmware {
            f.to_model()?;
        }
        if let Some(r) = &self.tee.require {
            if !matches!(r.as_str(), "none" | "any" | "sev-snp" | "tdx") {
                return Err(Error::Argument(format!(
                    "policy: tee.require: {r:?} is not none, any, sev-snp or tdx"
                )));
            }
        }
        if let Some(m) = &self.tee.measurement {
            if hex::decode(m).is_err() {
                return Err(Error::Argument(format!(
                    "policy: tee.measurement: {m:?} is not hex"
                )));
            }
        }
        Ok(())
    }
}

impl FirmwareReference {
    /// The checked form: indexes among the firmware PCRs, 32-byte values, at
    /// least one value.
    pub fn to_model(&self) -> Result<super::node_boot::FirmwareModel, Error> {
        use super::node_boot::FIRMWARE_PCRS;
        let what = format!("policy: node.firmware {:?}", self.model);
        if self.pcrs.is_empty() {
            return Err(Error::Argument(format!("{what}: no PCR values")));
        }
        let mut pcrs = std::collections::BTreeMap::new();
        for (i, v) in &self.pcrs {
            let idx = i
                .parse::<u32>()
                .ok()
                .filter(|i| FIRMWARE_PCRS.contains(i))
                .ok_or_else(|| {
                    Error::Argument(format!(
                        "{what}: {i:?} is not a firmware PCR ({FIRMWARE_PCRS:?}); the image's PCRs come from node.boot_images"
                    ))
                })?;
            let value = hex::decode(v)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    Error::Argument(format!("{what}: PCR {i}: {v:?} is not 32 hex bytes"))
                })?;
            pcrs.insert(idx, value);
        }
        Ok(super::node_boot::FirmwareModel {
            model: self.model.clone(),
            pcrs,
        })
    }
}

fn one_line(e: &toml::de::Error) -> String {
    e.to_string()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firmware_models_are_checked_when_the_policy_is_read() {
        let ok = format!(
            "[[node.firmware]]\nmodel = 'lab'\npcrs = {{ 0 = '{}', 7 = '{}' }}",
            "aa".repeat(32),
            "bb".repeat(32)
        );
        let p = Policy::parse(&ok, Path::new(".")).unwrap();
        let m = p.node.firmware[0].to_model().unwrap();
        assert_eq!(m.pcrs.keys().copied().collect::<Vec<_>>(), [0, 7]);
        for (text, want) in [
            (
                format!(
                    "[[node.firmware]]\nmodel = 'x'\npcrs = {{ 4 = '{}' }}",
                    "aa".repeat(32)
                ),
                "\"4\" is not a firmware PCR",
            ),
            (
                "[[node.firmware]]\nmodel = 'x'\npcrs = { 0 = 'zz' }".to_string(),
                "PCR 0: \"zz\" is not 32 hex bytes",
            ),
            (
                "[[node.firmware]]\nmodel = 'x'\npcrs = {}".to_string(),
                "no PCR values",
            ),
            ("[[node.boot_images]]\nimage = 'a.bwi'".to_string(), "trust"),
        ] {
            let e = Policy::parse(&text, Path::new("."))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn unknown_keys_are_refused_and_named() {
        for (text, key) in [
            ("allow_sofware_key = true", "allow_sofware_key"),
            ("[vm]\nmeasurement = []", "measurement"),
            ("[node]\nimage_signer = []", "image_signer"),
            ("[isolation]\nsingle_tenant = true", "single_tenant"),
            (
                "[[vm.predict_from]]\nimage = 'a'\ntrust = []\nvms = 'x'",
                "vms",
            ),
            ("[extra]\n", "extra"),
        ] {
            let e = Policy::parse(text, Path::new(".")).unwrap_err().to_string();
            assert!(e.contains(key), "{text:?}: {e}");
        }
    }

    #[test]
    fn defaults_are_strict() {
        let p = Policy::parse("", Path::new(".")).unwrap();
        assert!(!p.allow_software_key);
        assert!(p.debug_forbidden);
        assert_eq!(p.max_age_seconds, 300);
        assert!(p.isolation.require_single_tenant);
    }

    #[test]
    fn bad_values_are_refused() {
        for text in [
            "[vm]\nmeasurements = ['00']",
            "[node]\nimage_signers = ['zz']",
            "[tee]\nrequire = 'sgx'",
            "[node.pcrs]\n24 = '00'",
            "max_age_seconds = -1",
        ] {
            assert!(Policy::parse(text, Path::new(".")).is_err(), "{text}");
        }
    }
}
