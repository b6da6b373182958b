//! Updating the node's own OS image through the API (`PUT /node/image`): the
//! signed node image is received like a tenant image upload, verified against
//! the provider's keys of `node_update.trust`, and written to the inactive slot
//! of the EFI system partition as an entry systemd-boot tries `tries` times
//! (`bulwark_node_image::install::update`: anti-rollback, the newest good slot
//! kept). The node's init marks it good once bulwarkd is healthy on it; a boot
//! that never gets there falls back by itself. `GET /node/boot` reports the
//! slots.

use std::path::Path;

use bulwark_node_image::NodeImageError;

use crate::config::NodeUpdateConfig;
use crate::error::{Error, Kind, Result};

/// The error for `e`, refusals (tampered, untrusted, rolled back) as 422.
fn from_node(e: NodeImageError) -> Error {
    if e.is_refusal() {
        Error::new(Kind::Unprocessable, "image", e.to_string())
    } else {
        Error::internal("node_update", e.to_string())
    }
}

fn trust(cfg: &NodeUpdateConfig) -> Result<bulwark_image::TrustPolicy> {
    bulwark_image::TrustPolicy::from_pem_files(&cfg.trust, cfg.threshold, 0)
        .map_err(|e| Error::internal("node_update", format!("trust key: {e}")))
}

/// Verifies the node image at `bundle` and writes it to the inactive slot.
/// Blocking (run it on a blocking thread).
pub fn apply(cfg: &NodeUpdateConfig, bundle: &Path) -> Result<serde_json::Value> {
    let policy = trust(cfg)?;
    let payload = bulwark_node_image::install::read_node_image(bundle, &policy, &|_| {})
        .map_err(from_node)?;
    let report =
        bulwark_node_image::install::update(&payload, &cfg.esp, cfg.tries).map_err(from_node)?;
    Ok(serde_json::to_value(&report).unwrap_or_default())
}

/// The slots on the ESP: versions, boot counting, the next boot and the fallback.
pub fn boot_state(cfg: &NodeUpdateConfig) -> Result<serde_json::Value> {
    let state = bulwark_node_image::install::boot_state(&cfg.esp).map_err(from_node)?;
    Ok(serde_json::to_value(&state).unwrap_or_default())
}

/// The configuration, or why there is none (501).
pub fn configured(cfg: &Option<NodeUpdateConfig>) -> Result<&NodeUpdateConfig> {
    cfg.as_ref().ok_or_else(|| {
        Error::not_implemented(
            "node_update",
            "node image updates are not configured on this node (config node_update: esp, trust)",
        )
    })
}

/// The node image that booted, for evidence (`attestation.node_image: "booted"`):
/// the entry systemd-boot's `LoaderEntrySelected` names in `efivars`, its slot's
/// signed manifest on `node_update.esp` verified under `node_update.trust` and
/// `threshold`, and its UKI the signed one
/// (`bulwark_node_image::booted::booted_image_identity`). Blocking. The error is
/// the reason, for the log and for refusing attestation.
pub fn booted_identity(
    cfg: &NodeUpdateConfig,
    efivars: &Path,
) -> std::result::Result<crate::config::NodeImage, String> {
    let policy = trust(cfg).map_err(|e| e.message)?;
    let id =
        bulwark_node_image::booted::booted_image_identity_from_efivars(&cfg.esp, &policy, efivars)
            .map_err(|e| e.to_string())?;
    Ok(crate::config::NodeImage {
        name: id.name.clone(),
        version: id.version,
        manifest_sha384: id.manifest_sha384_hex(),
        signer_key_ids: id.signer_key_ids_hex(),
    })
}
