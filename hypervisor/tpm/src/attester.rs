//! The node's evidence producer: what signs a Bulwark evidence document
//! (`docs/evidence.md`) for a VM and a challenge. One per node; the node agent
//! keeps it and answers every evidence request (its `attest` endpoint, a guest's
//! attested TLS handshake) with [`Attester::evidence`].
//!
//! - [`Attester::Tpm`]: the AK was enrolled against the TPM's EK certificate by
//!   credential activation ([`TpmAttester::enroll`]); each document carries a
//!   quote over [`QUOTED_PCRS`] whose qualifying data is the body's binding hash,
//!   the PCR values, the boot's event log, the EK certificate and chain, and the
//!   AK with its activation record.
//! - [`Attester::Software`]: no TPM. The document says `software-key`, and the
//!   default policy refuses it.

use std::time::{SystemTime, UNIX_EPOCH};

use bulwark_attestation::evidence::document::{AkActivation, Pcr, Tpm as TpmClaims, TpmQuote};
use bulwark_attestation::evidence::{build_evidence, EvidenceInputs, EvidenceSigningKey};

use crate::{AkInfo, Tpm, TpmError};

/// The PCRs every quote covers (SHA-256 bank): firmware and its configuration
/// (0–3), the boot loader (4–5), platform state (6–7), the kernel/UKI command line
/// and its sections (8, 9, 11, where systemd-stub measures the UKI into 11), and the
/// command-line overrides (12, empty for a node: `docs/node-image.md`). Not PCR 10:
/// it is the kernel's IMA register (the `boot_aggregate` a kernel with IMA extends
/// at start, found in the lab's node), whose log is IMA's own, not the firmware's
/// event log the document carries, so a verifier could never replay it.
pub const QUOTED_PCRS: [u32; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12];

/// Why no evidence was made.
#[derive(Debug, thiserror::Error)]
pub enum AttesterError {
    #[error(transparent)]
    Tpm(#[from] TpmError),
    /// The TPM's EK certificate, or enrollment, failed.
    #[error("enrollment: {0}")]
    Enrollment(String),
    /// The evidence library refused the inputs.
    #[error("evidence: {0}")]
    Evidence(#[from] bulwark_attestation::Error),
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A TPM with an enrolled attestation key.
#[derive(Debug)]
pub struct TpmAttester {
    tpm: Tpm,
    ek_certificate: Vec<u8>,
    ek_chain: Vec<Vec<u8>>,
    ak: AkInfo,
    enrolled_at: u64,
    event_log: Vec<u8>,
}

impl TpmAttester {
    /// Enrolls the node: reads the TPM's EK certificate, creates the AK under the
    /// EK, and proves that the AK is in that TPM by credential activation (the
    /// credential made for the AK's name and encrypted to the EK certificate's key
    /// with the verifier's own code, as a registrar does, and the secret compared).
    /// `ek_chain`: the EK certificate's issuers (DER), for the verifier to chain to
    /// its `ek_roots`; `event_log`: the TCG event log of this boot.
    pub fn enroll(
        mut tpm: Tpm,
        ek_chain: Vec<Vec<u8>>,
        event_log: Vec<u8>,
    ) -> Result<Self, AttesterError> {
        let ek_certificate = tpm.ek_certificate()?;
        let ek = bulwark_attestation::x509::Certificate::from_der(&ek_certificate)
            .map_err(|e| AttesterError::Enrollment(format!("the EK certificate: {e}")))?;
        let ak = tpm.create_ak()?;
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret)
            .map_err(|e| AttesterError::Enrollment(format!("random secret: {e}")))?;
        let credential = bulwark_attestation::tpm::make_credential(&ek.key, &ak.name, &secret)
            .map_err(|e| AttesterError::Enrollment(format!("making the credential: {e}")))?;
        let got =
            tpm.activate_credential(&credential.credential_blob, &credential.encrypted_secret)?;
        if got != secret {
            return Err(AttesterError::Enrollment(
                "credential activation returned another secret: the AK is not in the EK's TPM"
                    .into(),
            ));
        }
        Ok(TpmAttester {
            tpm,
            ek_certificate,
            ek_chain,
            ak,
            enrolled_at: unix_now(),
            event_log,
        })
    }

    /// The enrolled AK.
    pub fn ak(&self) -> &AkInfo {
        &self.ak
    }

    /// The TPM (to measure into it; tests extend PCRs behind the log's back).
    pub fn tpm_mut(&mut self) -> &mut Tpm {
        &mut self.tpm
    }

    /// `inputs` with their TPM part filled: the enrollment record and a fresh
    /// quote over [`QUOTED_PCRS`] with the binding hash of the body that `key`
    /// signs as qualifying data.
    pub fn quoted_inputs(
        &mut self,
        mut inputs: EvidenceInputs,
        key: &EvidenceSigningKey,
    ) -> Result<EvidenceInputs, AttesterError> {
        inputs.tpm = Some(TpmClaims {
            ek_certificate: self.ek_certificate.clone().into(),
            ek_chain: self.ek_chain.iter().cloned().map(Into::into).collect(),
            ak_public: self.ak.public.clone().into(),
            ak_activation: AkActivation {
                enrolled_at: self.enrolled_at,
                ak_name: self.ak.name.clone().into(),
            },
            quote: None,
        });
        let binding = inputs.body(key.public_key())?.binding_hash()?;
        let q = self.tpm.quote(&QUOTED_PCRS, &binding)?;
        if let Some(tpm) = inputs.tpm.as_mut() {
            tpm.quote = Some(TpmQuote {
                attest: q.attest.into(),
                signature: q.signature.into(),
                pcrs: q
                    .pcrs
                    .into_iter()
                    .map(|(index, v)| Pcr {
                        index,
                        sha256: v.into(),
                    })
                    .collect(),
                event_log: self.event_log.clone().into(),
            });
        }
        Ok(inputs)
    }
}

/// How this node signs its evidence.
#[derive(Debug)]
pub enum Attester {
    /// A TPM-backed evidence key.
    Tpm(Box<TpmAttester>, EvidenceSigningKey),
    /// No TPM: a software key, said so in every document.
    Software(EvidenceSigningKey),
}

impl Attester {
    /// The signed evidence document for `inputs` (whose `tpm` is ignored).
    pub fn evidence(&mut self, mut inputs: EvidenceInputs) -> Result<Vec<u8>, AttesterError> {
        inputs.tpm = None;
        match self {
            Attester::Tpm(t, key) => {
                let inputs = t.quoted_inputs(inputs, key)?;
                Ok(build_evidence(&inputs, key)?)
            }
            Attester::Software(key) => Ok(build_evidence(&inputs, key)?),
        }
    }

    /// `tpm` or `software-key`, as the documents say.
    pub fn kind(&self) -> &'static str {
        use bulwark_attestation::evidence::document::attestation_kind;
        match self {
            Attester::Tpm(..) => attestation_kind::TPM,
            Attester::Software(_) => attestation_kind::SOFTWARE_KEY,
        }
    }
}
