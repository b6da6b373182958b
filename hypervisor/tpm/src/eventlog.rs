//! Writes a TCG PC Client crypto-agile event log (SHA-256 bank only) while
//! extending the PCRs it describes, so a TPM without firmware (swtpm) gets a
//! log that replays to its PCRs. Layout (little-endian): a legacy
//! TCG_PCR_EVENT (PCR 0, EV_NO_ACTION, 20 zero bytes) carrying the
//! "Spec ID Event03" header, then one TCG_PCR_EVENT2 per measurement.

use crate::{Tpm, TpmError};
use sha2::{Digest as _, Sha256};

/// EV_NO_ACTION (not extended).
pub const EV_NO_ACTION: u32 = 0x3;
/// EV_SEPARATOR: digest = SHA-256 of the data.
pub const EV_SEPARATOR: u32 = 0x4;
/// EV_EVENT_TAG.
pub const EV_EVENT_TAG: u32 = 0x6;
/// EV_IPL.
pub const EV_IPL: u32 = 0xD;
/// EV_EFI_ACTION: digest = SHA-256 of the action string.
pub const EV_EFI_ACTION: u32 = 0x8000_0007;

const TPM_ALG_SHA256: u16 = 0x000B;

/// A crypto-agile event log being written.
#[derive(Debug, Clone)]
pub struct EventLogWriter {
    bytes: Vec<u8>,
}

impl Default for EventLogWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl EventLogWriter {
    /// A log holding only the Spec ID header (platform class 0, spec 2.0
    /// errata 0, uintnSize 2 (UINT64), one algorithm: SHA-256, 32 bytes).
    pub fn new() -> Self {
        let mut spec = b"Spec ID Event03\0".to_vec();
        spec.extend_from_slice(&0u32.to_le_bytes()); // platformClass
        spec.extend_from_slice(&[0, 2, 0, 2]); // minor, major, errata, uintnSize
        spec.extend_from_slice(&1u32.to_le_bytes()); // numberOfAlgorithms
        spec.extend_from_slice(&TPM_ALG_SHA256.to_le_bytes());
        spec.extend_from_slice(&32u16.to_le_bytes());
        spec.push(0); // vendorInfoSize
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&EV_NO_ACTION.to_le_bytes());
        bytes.extend_from_slice(&[0u8; 20]);
        bytes.extend_from_slice(&(spec.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&spec);
        EventLogWriter { bytes }
    }

    /// Append an event without extending anything.
    pub fn record(&mut self, pcr: u32, event_type: u32, sha256: &[u8; 32], data: &[u8]) {
        self.bytes.extend_from_slice(&pcr.to_le_bytes());
        self.bytes.extend_from_slice(&event_type.to_le_bytes());
        self.bytes.extend_from_slice(&1u32.to_le_bytes());
        self.bytes.extend_from_slice(&TPM_ALG_SHA256.to_le_bytes());
        self.bytes.extend_from_slice(sha256);
        self.bytes
            .extend_from_slice(&(data.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(data);
    }

    /// Extend `pcr` with `sha256` and log the event.
    pub fn measure_digest(
        &mut self,
        tpm: &mut Tpm,
        pcr: u32,
        event_type: u32,
        sha256: &[u8; 32],
        data: &[u8],
    ) -> Result<(), TpmError> {
        tpm.extend_pcr(pcr, sha256)?;
        self.record(pcr, event_type, sha256, data);
        Ok(())
    }

    /// Extend `pcr` with SHA-256(`data`) and log the event; returns the digest.
    pub fn measure(
        &mut self,
        tpm: &mut Tpm,
        pcr: u32,
        event_type: u32,
        data: &[u8],
    ) -> Result<[u8; 32], TpmError> {
        let digest: [u8; 32] = Sha256::digest(data).into();
        self.measure_digest(tpm, pcr, event_type, &digest, data)?;
        Ok(digest)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}
