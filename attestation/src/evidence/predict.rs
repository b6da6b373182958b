//! The launch measurement a tenant should expect, computed offline from a
//! signed image and a VM configuration by bulwark-vmm's own loader (the code
//! a boot runs, against scratch memory), so the policy can be written before
//! the VM exists.

use crate::Error;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The machine assumed when no VM configuration is given.
pub const DEFAULT_VM: &str = r#"{"machine": {"vcpus": 1, "mem_mib": 1024}}"#;

/// What `predict` found.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    /// Hex SHA-384 launch measurement.
    pub measurement: String,
    pub image_name: String,
    pub image_version: u64,
    /// Hex SHA-384 of the signed manifest.
    pub manifest_sha384: String,
    /// Key ids (hex) of the trusted keys given.
    pub trusted_key_ids: Vec<String>,
    pub vcpus: u32,
    pub memory_bytes: u64,
    pub cpuid_policy: String,
    /// The measurement log (tag, digest, detail per event).
    pub events: serde_json::Value,
    /// With `--snp-vcpu-type` and a firmware boot (`machine.firmware`): the AMD
    /// SEV-SNP launch digest of the same boot (`bulwark-vmm measure --snp`), what an
    /// SNP attestation report's `MEASUREMENT` must be
    /// (`bulwark-verify snp --expect-measurement`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snp: Option<SnpPrediction>,
}

/// The SEV-SNP launch digest of a firmware boot.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SnpPrediction {
    /// Hex SHA-384 launch digest.
    pub launch_digest: String,
    /// The guest CPU model whose signature is in each VMSA.
    pub vcpu_type: String,
}

impl Prediction {
    /// A policy (TOML) accepting exactly this launch: the image signers,
    /// name, version and measurement. Node-side entries come from the caller.
    pub fn policy_toml(&self, node_signers: &[String], allow_software_key: bool) -> String {
        let list = |v: &[String]| {
            v.iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut out = String::new();
        out.push_str(
            "# Bulwark evidence policy (docs/evidence.md), written by bulwark-verify predict\n",
        );
        if allow_software_key {
            out.push_str("# TESTS ONLY: accepts evidence with no TPM behind it.\n");
            out.push_str("allow_software_key = true\n");
        }
        out.push_str("max_age_seconds = 300\n\n[node]\n");
        out.push_str(&format!(
            "image_signers = [{}]\n\n[vm]\n",
            list(node_signers)
        ));
        out.push_str(&format!(
            "image_signers = [{}]\nimage_names = [{:?}]\nmin_image_version = {}\n",
            list(&self.trusted_key_ids),
            self.image_name,
            self.image_version
        ));
        out.push_str(&format!(
            "measurements = [{:?}]\nvcpus = {}\nmemory_bytes = {}\ncpuid_policy = {:?}\n",
            self.measurement, self.vcpus, self.memory_bytes, self.cpuid_policy
        ));
        if let Some(snp) = &self.snp {
            out.push_str(&format!(
                "# SEV-SNP launch digest of this firmware boot on {} x {} (bulwark-verify snp --expect-measurement):\n# {}\n",
                self.vcpus, snp.vcpu_type, snp.launch_digest
            ));
        }
        out
    }
}

/// Predict the launch measurement of `image` (verified against `trust`, PEM
/// public keys) booted with the VM configuration in `vm` (bulwark-vmm config
/// JSON; its `boot_source`, if any, contributes only `entry`, `raw`,
/// `threshold` and `min_version`). Without `vm`, [`DEFAULT_VM`].
pub fn predict(image: &Path, trust: &[PathBuf], vm: Option<&Path>) -> Result<Prediction, Error> {
    predict_snp(image, trust, vm, None)
}

/// [`predict`], and with `snp_vcpu_type` (QEMU's CPU model names) also the SEV-SNP
/// launch digest of the VM's firmware boot (the VM configuration must name
/// `machine.firmware`).
pub fn predict_snp(
    image: &Path,
    trust: &[PathBuf],
    vm: Option<&Path>,
    snp_vcpu_type: Option<&str>,
) -> Result<Prediction, Error> {
    let text = match vm {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| Error::Argument(format!("{}: {e}", p.display())))?,
        None => DEFAULT_VM.to_string(),
    };
    predict_json_snp(image, trust, &text, snp_vcpu_type)
}

/// [`predict`] with the VM configuration as JSON text.
pub fn predict_json(image: &Path, trust: &[PathBuf], vm_json: &str) -> Result<Prediction, Error> {
    predict_json_snp(image, trust, vm_json, None)
}

/// [`predict_snp`] with the VM configuration as JSON text.
pub fn predict_json_snp(
    image: &Path,
    trust: &[PathBuf],
    vm_json: &str,
    snp_vcpu_type: Option<&str>,
) -> Result<Prediction, Error> {
    if trust.is_empty() {
        return Err(Error::Argument(
            "predict needs at least one trusted key".into(),
        ));
    }
    let mut cfg: serde_json::Value = serde_json::from_str(vm_json)
        .map_err(|e| Error::Argument(format!("VM configuration: {e}")))?;
    let obj = cfg
        .as_object_mut()
        .ok_or_else(|| Error::Argument("VM configuration is not a JSON object".into()))?;
    let mut boot = serde_json::Map::new();
    boot.insert("kind".into(), "bundle".into());
    boot.insert("path".into(), image.display().to_string().into());
    boot.insert(
        "trusted_keys".into(),
        trust
            .iter()
            .map(|p| serde_json::Value::from(p.display().to_string()))
            .collect(),
    );
    if let Some(old) = obj.get("boot_source").and_then(|b| b.as_object()) {
        for k in ["entry", "raw", "threshold", "min_version"] {
            if let Some(v) = old.get(k) {
                boot.insert(k.into(), v.clone());
            }
        }
    }
    obj.insert("boot_source".into(), serde_json::Value::Object(boot));
    run(&cfg, trust, snp_vcpu_type)
}

/// The key ids (hex SHA-256 of the SPKI) of trusted image keys (PEM files).
#[cfg(feature = "predict")]
pub fn trusted_key_ids(trust: &[PathBuf]) -> Result<Vec<String>, Error> {
    trust
        .iter()
        .map(|p| {
            bulwark_image::PublicKey::from_pem_file(p)
                .map(|k| k.id_hex())
                .map_err(|e| Error::Argument(format!("{}: {e}", p.display())))
        })
        .collect()
}

/// The key ids of trusted image keys: needs the `predict` feature.
#[cfg(not(feature = "predict"))]
pub fn trusted_key_ids(_trust: &[PathBuf]) -> Result<Vec<String>, Error> {
    Err(Error::NotImplemented(
        "reading image keys: this build has no `predict` feature".into(),
    ))
}

#[cfg(all(feature = "predict", target_os = "linux"))]
fn run(
    cfg: &serde_json::Value,
    trust: &[PathBuf],
    snp_vcpu_type: Option<&str>,
) -> Result<Prediction, Error> {
    use bulwark_vmm::boot_source::{read_inputs, Origin, StateUse};
    use bulwark_vmm::config::VmConfig;
    use bulwark_vmm::vm::measure_offline;

    let trusted_key_ids = trusted_key_ids(trust)?;
    let cfg = VmConfig::from_json(&cfg.to_string())
        .map_err(|e| Error::Argument(format!("VM configuration: {e}")))?;
    let inputs = read_inputs(&cfg, StateUse::CheckOnly)
        .map_err(|e| Error::Argument(format!("image: {e}")))?;
    let Origin::Signed {
        name,
        version,
        manifest_sha384,
    } = inputs.origin.clone()
    else {
        return Err(Error::Argument("image is not a signed bundle".into()));
    };
    let plan =
        measure_offline(&cfg, &inputs).map_err(|e| Error::Argument(format!("measure: {e}")))?;
    let events = serde_json::to_value(&plan.measurement.events).unwrap_or_default();
    let snp = match snp_vcpu_type {
        None => None,
        Some(vcpu_type) => {
            let d = bulwark_vmm::firmware_boot::snp_launch_digest(
                &inputs,
                &plan,
                cfg.machine.vcpus,
                vcpu_type,
                bulwark_firmware_abi::snp::DEFAULT_GUEST_FEATURES,
            )
            .map_err(|e| Error::Argument(format!("--snp-vcpu-type: {e}")))?;
            Some(SnpPrediction {
                launch_digest: hex::encode(d.launch_digest),
                vcpu_type: vcpu_type.to_string(),
            })
        }
    };
    Ok(Prediction {
        snp,
        measurement: plan.measurement.value.clone(),
        image_name: name,
        image_version: version,
        manifest_sha384,
        trusted_key_ids,
        vcpus: u32::from(cfg.machine.vcpus),
        memory_bytes: cfg.machine.mem_mib.saturating_mul(1 << 20),
        cpuid_policy: cfg.machine.cpuid_policy.name().to_string(),
        events,
    })
}

#[cfg(not(all(feature = "predict", target_os = "linux")))]
fn run(
    _cfg: &serde_json::Value,
    _trust: &[PathBuf],
    _snp_vcpu_type: Option<&str>,
) -> Result<Prediction, Error> {
    Err(Error::NotImplemented(
        "predict needs bulwark-vmm's loader: Linux builds with the `predict` feature".into(),
    ))
}
