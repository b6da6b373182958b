//! Intel TDX DCAP quotes.

use crate::checks::Verification;
use crate::roots::{self, TrustStore};
use crate::{Error, VerificationTime};

/// The relying party's policy for TDX.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub allow_debug: bool,
    pub allow_outdated_tcb: bool,
    pub expect_mrtd: Option<Vec<u8>>,
    pub expect_mrconfigid: Option<Vec<u8>>,
    /// Expected RTMR values by index (0..=3).
    pub expect_rtmrs: Vec<(usize, Vec<u8>)>,
    pub expect_report_data: Option<Vec<u8>>,
}

pub fn default_trust() -> TrustStore {
    roots::intel_sgx()
}

pub fn verify_bytes(
    _quote: &[u8],
    _collateral: Option<&[u8]>,
    _trust: &TrustStore,
    _policy: &Policy,
    _at: VerificationTime,
) -> Result<Verification, Error> {
    Err(Error::NotImplemented("TDX quote verification".into()))
}
