//! TPM 2.0 evidence, verified in pure Rust (no libtss2 on the verifier's
//! machine): quotes signed by an attestation key (AK), the TCG crypto-agile
//! event log replayed to the quoted PCRs, the endorsement key (EK)
//! certificate chain, and TPM2_MakeCredential, which binds an AK to the EK
//! through credential activation.
//!
//! - [`structures`]: TPM2B_PUBLIC, TPMS_ATTEST (quotes), TPMT_SIGNATURE and
//!   the TPM name of a public area.
//! - [`quote`]: one named check per property, [`verify_quote`].
//! - [`eventlog`]: parsing and SHA-256 replay of the event log.
//! - [`ek`]: the EK certificate, [`verify_ek_chain`].
//! - [`credential`]: TPM2_MakeCredential for an RSA-2048 EK, [`make_credential`].

pub mod credential;
pub mod ek;
pub mod eventlog;
pub mod quote;
pub mod structures;

pub use credential::{make_credential, Credential};
pub use ek::{verify_ek_chain, EkVerification, TpmIdentity};
pub use eventlog::{Event, EventLog};
pub use quote::{verify_quote, QuoteVerification, ReplayedEvent};
pub use structures::{Attest, TpmPublic, TpmSignature};

#[cfg(test)]
mod tests;
