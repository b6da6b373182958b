//! Offline verification of confidential-computing evidence: AMD SEV-SNP
//! attestation reports, Intel TDX DCAP quotes, AWS Nitro Enclaves attestation
//! documents and NVIDIA Hopper GPU SPDM measurements.
//!
//! Every verifier is a list of independent checks (one function each) that
//! produce a [`checks::Check`] with a name, a result and a detail. The outcome
//! of one run is a [`checks::Verification`], which serialises to an EAR-shaped
//! JSON object ([`ear`]). Nothing here touches the network: trust anchors are
//! embedded ([`roots`]) and collateral comes in as bytes.
#![forbid(unsafe_code)]

pub mod atls;
pub mod bytes;
pub mod cache;
pub mod checks;
pub mod crypto;
pub mod ear;
pub mod error;
pub mod evidence;
pub mod nitro;
pub mod nvidia;
pub mod roots;
pub mod sevsnp;
pub mod tdx;
pub mod time;
pub mod tpm;
pub mod x509;

pub use checks::{Check, Outcome, Status, Verification};
pub use error::Error;
pub use time::VerificationTime;
