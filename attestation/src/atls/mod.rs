//! Attested TLS (`docs/evidence.md`, "Attested TLS"): the guest serves TLS 1.3
//! with a certificate for its own key that carries Bulwark evidence bound to
//! that key and to the nonce the client put in this very handshake; the
//! client appraises the evidence under its policy before the handshake
//! completes, so not one application byte flows to an unappraised peer.
//!
//! - [`extension`]: the evidence in the certificate (RFC 9999 `id-pe-cmw`).
//! - [`nonce`]: the client's nonce in the SNI.
//! - [`server`]: the guest's key, the per-handshake certificate resolver and
//!   the `rustls` server configuration (used by bulwark-init's vsock bridge).
//! - [`client`]: the `rustls` certificate verifier and [`connect`].
//!
//! TLS 1.3 only, `rustls` with the `ring` provider; no WebPKI: the evidence
//! is the trust.

pub mod client;
pub mod extension;
pub mod nonce;
pub mod server;

pub use client::{client_config, connect, AppraisalSlot, AttestedServerVerifier, ConnectOptions};
pub use extension::{evidence_from_certificate, CertificateEvidence, CMW_EXTENSION_OID};
pub use nonce::{nonce_from_sni, nonce_to_sni, NONCE_LEN};
pub use server::{
    server_config_for, server_config_for_certificate, AtlsKey, AttestedCertResolver,
    EvidenceResult, EvidenceSource,
};

use crate::evidence::EvidenceAppraisal;

/// Why the client refused the server: the checks that failed (by name) and,
/// when the evidence could be appraised, the whole appraisal.
#[derive(Debug, Clone, thiserror::Error)]
#[error("failed checks: {} ({detail})", failed.join(", "))]
pub struct Refusal {
    /// Names of the failed checks: `atls-extension` (no or malformed
    /// evidence extension), `evidence-format` (the document does not parse),
    /// `atls-key-binding`, `atls-handshake-signature`, or the appraisal's own
    /// (`freshness-nonce`, `launch-measurement`, ...).
    pub failed: Vec<String>,
    pub detail: String,
    pub appraisal: Option<Box<EvidenceAppraisal>>,
}

/// Errors of attested TLS.
#[derive(Debug, thiserror::Error)]
pub enum AtlsError {
    /// The server was appraised and refused: no application byte was sent.
    #[error("attested TLS refused: {0}")]
    Refused(Refusal),
    #[error("invalid argument: {0}")]
    Argument(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The server side could not produce a certificate.
    #[error("server: {0}")]
    Server(String),
}

impl AtlsError {
    /// CLI exit status: 1 refused, 2 anything else (usage, I/O, TLS).
    pub fn exit_code(&self) -> i32 {
        match self {
            AtlsError::Refused(_) => 1,
            _ => 2,
        }
    }
}

/// The `ring` provider both sides use. rustls 0.23.48 deprecates it because
/// its key exchange (X25519, P-256, P-384) has no post-quantum hybrid; the
/// crate stays on `ring` (no aws-lc-rs build toolchain), so session
/// confidentiality against a future quantum adversary recording traffic
/// today is not provided (`docs/evidence.md`, "Attested TLS").
#[allow(deprecated)]
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
