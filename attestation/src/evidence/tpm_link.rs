//! Where the TPM quote verifier (`crate::tpm`, written separately) plugs in.
//!
//! [`verify_tpm_quote`] is the only function the appraiser calls for the
//! TPM: quote signature by the AK, extraData = binding hash, the quoted PCR
//! digest against the PCR values, the event log replayed against them, and
//! the AK's name against `ak_activation.ak_name`.

use super::document::Tpm;
use crate::checks::{Category, Check};

/// Name of the check for a document without a quote.
pub const NO_QUOTE: &str = "tpm-quote";
/// Name of the check binding the quoting AK to the enrolled one.
pub const AK_NAME: &str = "tpm-ak-enrolled";

/// Verify the TPM quote of `tpm` against `expected_extra_data` (the body's
/// binding hash). Returns the TPM verifier's checks (their names are that
/// verifier's; the appraiser files them under the `node` submodule).
pub fn verify_tpm_quote(tpm: &Tpm, expected_extra_data: &[u8; 32]) -> Vec<Check> {
    let Some(quote) = &tpm.quote else {
        return vec![Check::failed(
            NO_QUOTE,
            Category::Format,
            "node.tpm.quote is missing",
        )];
    };
    let pcrs: Vec<(u32, Vec<u8>)> = quote
        .pcrs
        .iter()
        .map(|p| (p.index, p.sha256.0.clone()))
        .collect();
    let verified = crate::tpm::verify_quote(
        &tpm.ak_public.0,
        &quote.attest.0,
        &quote.signature.0,
        expected_extra_data,
        &pcrs,
        Some(&quote.event_log.0),
    );
    let mut checks = verified.checks;
    // The AK that signed is the one whose name was activated against the EK at
    // enrollment.
    checks.push(match verified.ak.as_ref().map(|ak| ak.name()) {
        Some(Ok(name)) if name == tpm.ak_activation.ak_name.0 => Check::passed(
            AK_NAME,
            Category::Signature,
            format!(
                "the quoting AK's name {} is the one activated at enrollment",
                hex::encode(&name)
            ),
        ),
        Some(Ok(name)) => Check::failed(
            AK_NAME,
            Category::Signature,
            format!(
                "the quoting AK's name {} is not the enrolled {}",
                hex::encode(&name),
                hex::encode(&tpm.ak_activation.ak_name.0)
            ),
        ),
        Some(Err(e)) => Check::failed(AK_NAME, Category::Signature, e.to_string()),
        None => Check::failed(
            AK_NAME,
            Category::Signature,
            "the AK public area does not parse",
        ),
    });
    checks
}
