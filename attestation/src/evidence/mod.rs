//! Bulwark's own evidence: one signed document per VM and challenge
//! (`docs/evidence.md`), its producer ([`build_evidence`]) and its verifier
//! ([`appraise::verify_document`]).
//!
//! - [`document`]: the body's types and deterministic CBOR.
//! - [`sign`]: the COSE_Sign1 envelope (ES256, or ES384, by the evidence key).
//! - [`policy`]: the TOML appraisal policy.
//! - [`appraise`]: checks → EAR submodules (node, vm, gpuN).
//! - [`predict`]: the expected launch measurement, offline.
//! - [`launch`]: launch and isolation claims from bulwark-vmm's `GET /vm`.
//! - [`tpm_link`]: where the TPM quote verifier plugs in.
//! - [`node_boot`]: which node OS image booted (quoted PCRs and event log
//!   against a signed node image's prediction; firmware PCRs per model).

pub mod appraise;
pub mod document;
pub mod launch;
pub mod node_boot;
pub mod policy;
pub mod predict;
pub mod sign;
pub mod tpm_link;

pub use appraise::{verify_document, verify_document_with, EvidenceAppraisal};
pub use document::EvidenceBody;
pub use launch::LaunchClaims;
pub use policy::Policy;
pub use sign::{parse_document, sign_body, EvidenceSigningKey};

use crate::Error;

/// Everything the producer puts in a document. The body is assembled as
/// given; `node.evidence_key` is set from the signing key.
#[derive(Debug, Clone)]
pub struct EvidenceInputs {
    pub node_image: document::ImageId,
    /// TPM evidence whose quote's extraData is the body's binding hash
    /// (the node agent quotes after [`EvidenceBody::binding_hash`]); `None`:
    /// software-key mode.
    pub tpm: Option<document::Tpm>,
    pub launch: document::Launch,
    pub isolation: document::Isolation,
    pub tee: Option<document::Tee>,
    pub gpus: Vec<document::Gpu>,
    pub nonce: Vec<u8>,
    /// Unix seconds.
    pub timestamp: u64,
    pub tls_key_sha256: Option<Vec<u8>>,
}

impl EvidenceInputs {
    /// The body these inputs give with this evidence key.
    pub fn body(&self, evidence_key: Vec<u8>) -> Result<EvidenceBody, Error> {
        if self.nonce.is_empty() || self.nonce.len() > document::MAX_NONCE_LEN {
            return Err(Error::Argument(format!(
                "nonce must be 1..={} bytes",
                document::MAX_NONCE_LEN
            )));
        }
        Ok(EvidenceBody {
            version: document::FORMAT_VERSION,
            node: document::Node {
                image: self.node_image.clone(),
                attestation: if self.tpm.is_some() {
                    document::attestation_kind::TPM
                } else {
                    document::attestation_kind::SOFTWARE_KEY
                }
                .to_string(),
                evidence_key: evidence_key.into(),
                tpm: self.tpm.clone(),
            },
            launch: self.launch.clone(),
            isolation: self.isolation.clone(),
            tee: self.tee.clone(),
            gpus: self.gpus.clone(),
            freshness: document::Freshness {
                nonce: self.nonce.clone().into(),
                timestamp: self.timestamp,
                tls_key_sha256: self.tls_key_sha256.clone().map(Into::into),
            },
        })
    }
}

/// Produce a signed evidence document (tagged COSE_Sign1 bytes).
///
/// In TPM mode the caller computes the binding hash first
/// (`inputs.body(key.public_key())?.binding_hash()`), has the TPM quote it
/// as extraData, and puts the quote in `inputs.tpm` before calling this.
pub fn build_evidence(
    inputs: &EvidenceInputs,
    signing_key: &EvidenceSigningKey,
) -> Result<Vec<u8>, Error> {
    let body = inputs.body(signing_key.public_key())?;
    sign_body(&body, signing_key)
}
