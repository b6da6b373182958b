//! Produce a software-key Bulwark evidence document (tests and demos only:
//! the node agent will produce TPM-backed ones with the same library call,
//! `bulwark_attestation::evidence::build_evidence`).
//!
//! ```text
//! cargo run -p bulwark-attestation --example make-evidence -- \
//!     --vm-info get-vm.json --nonce HEX --image-signer HEX \
//!     --node-signer HEX --out evidence.cose
//! ```
#![forbid(unsafe_code)]

use bulwark_attestation::evidence::document::ImageId;
use bulwark_attestation::evidence::{
    build_evidence, EvidenceInputs, EvidenceSigningKey, LaunchClaims,
};
use clap::Parser;
use std::path::PathBuf;

#[derive(Parser, Debug)]
struct Args {
    /// `GET /vm` JSON of the running VM (bulwark-vmm).
    #[arg(long)]
    vm_info: PathBuf,
    /// The relying party's challenge (hex).
    #[arg(long)]
    nonce: String,
    /// Key id (hex) that signed the tenant image; repeatable.
    #[arg(long)]
    image_signer: Vec<String>,
    #[arg(long, default_value = "bulwark-node")]
    node_name: String,
    #[arg(long, default_value_t = 1)]
    node_version: u64,
    /// SHA-384 (hex) of the node image manifest.
    #[arg(long, default_value_t = "00".repeat(48))]
    node_manifest: String,
    /// Key id (hex) that signed the node image.
    #[arg(long)]
    node_signer: Vec<String>,
    /// Evidence key, PKCS#8 DER (default: a fresh one).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Unix seconds (default: now).
    #[arg(long)]
    timestamp: Option<u64>,
    /// SHA-256 (hex) of the guest's TLS public key.
    #[arg(long)]
    tls_key_sha256: Option<String>,
    #[arg(long)]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let vm: serde_json::Value = serde_json::from_slice(&std::fs::read(&a.vm_info)?)?;
    let hexes = |v: &[String]| v.iter().map(hex::decode).collect::<Result<Vec<_>, _>>();
    let claims = LaunchClaims::from_vm_info(&vm, &hexes(&a.image_signer)?)?;
    let key = match &a.key {
        Some(p) => EvidenceSigningKey::from_pkcs8(&std::fs::read(p)?)?,
        None => EvidenceSigningKey::generate()?,
    };
    let timestamp = a.timestamp.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    });
    let inputs = EvidenceInputs {
        node_image: ImageId {
            name: a.node_name,
            version: a.node_version,
            manifest_sha384: hex::decode(&a.node_manifest)?.into(),
            signer_key_ids: hexes(&a.node_signer)?.into_iter().map(Into::into).collect(),
        },
        tpm: None,
        launch: claims.launch,
        isolation: claims.isolation,
        tee: None,
        gpus: Vec::new(),
        nonce: hex::decode(&a.nonce)?,
        timestamp,
        tls_key_sha256: a.tls_key_sha256.as_deref().map(hex::decode).transpose()?,
    };
    std::fs::write(&a.out, build_evidence(&inputs, &key)?)?;
    eprintln!(
        "make-evidence: wrote {} (software key: tests only)",
        a.out.display()
    );
    Ok(())
}
