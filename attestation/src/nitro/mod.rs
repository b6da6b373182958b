//! AWS Nitro Enclaves attestation documents.

use crate::checks::Verification;
use crate::roots::{self, TrustStore};
use crate::{Error, VerificationTime};

#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub allow_debug: bool,
    pub expect_pcrs: Vec<(u32, Vec<u8>)>,
    pub expect_nonce: Option<Vec<u8>>,
}

pub fn default_trust() -> TrustStore {
    roots::aws_nitro()
}

/// Parse `N=HEX`.
pub fn parse_pcr_arg(arg: &str) -> Result<(u32, Vec<u8>), Error> {
    let (n, h) = arg
        .split_once('=')
        .ok_or_else(|| Error::Argument(format!("--expect-pcr {arg:?}: expected N=HEX")))?;
    let n: u32 = n
        .trim()
        .parse()
        .map_err(|_| Error::Argument(format!("--expect-pcr {arg:?}: bad PCR index")))?;
    Ok((n, crate::bytes::parse_hex_arg(h, "--expect-pcr")?))
}

pub fn verify_bytes(
    _doc: &[u8],
    _trust: &TrustStore,
    _policy: &Policy,
    _at: VerificationTime,
) -> Result<Verification, Error> {
    Err(Error::NotImplemented(
        "Nitro attestation document verification".into(),
    ))
}
