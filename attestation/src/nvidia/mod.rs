//! NVIDIA Hopper GPU SPDM evidence.

use crate::checks::Verification;
use crate::roots::{self, TrustStore};
use crate::{Error, VerificationTime};

#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub expect_nonce: Option<Vec<u8>>,
}

pub fn default_trust() -> TrustStore {
    roots::nvidia_device_identity()
}

pub fn verify_bytes(
    _report: &[u8],
    _chain: &[u8],
    _rim: Option<&[u8]>,
    _trust: &TrustStore,
    _policy: &Policy,
    _at: VerificationTime,
) -> Result<Verification, Error> {
    Err(Error::NotImplemented(
        "NVIDIA SPDM evidence verification".into(),
    ))
}
