//! Node-side TPM 2.0 access over tss-esapi (libtss2): the EK certificate, an
//! attestation key (AK) under the endorsement key, credential activation,
//! quotes and PCR extends. The verifier side is `bulwark_attestation::tpm`
//! (pure Rust).
//!
//! The TPM is used without a resource manager (swtpm, `/dev/tpm0`): every
//! object this crate loads is flushed again, when [`Tpm::flush`] is called or
//! the [`Tpm`] is dropped, so the TPM's few object slots are never leaked.
//!
//! [`attester`] makes the node's evidence documents (TPM-quoted, or a software key
//! that says so); [`harness`] starts a private swtpm for tests; [`eventlog`] writes
//! a TCG crypto-agile event log alongside PCR extends.
#![forbid(unsafe_code)]

pub mod attester;
pub mod eventlog;
pub mod harness;

use std::convert::TryFrom;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};
use tss_esapi::abstraction::{ak, ek, pcr, AsymmetricAlgorithmSelection};
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{AuthHandle, KeyHandle, ObjectHandle, PcrHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, SignatureSchemeAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    AttestInfo, Data, Digest, DigestValues, EncryptedSecret, IdObject, PcrSelectionListBuilder,
    PcrSlot, SignatureScheme, SymmetricDefinition,
};
use tss_esapi::traits::Marshall;
use tss_esapi::{Context, TctiNameConf};

/// Why a TPM operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    /// A TPM or TSS call failed.
    #[error("TPM {op}: {source}")]
    Tss {
        op: &'static str,
        #[source]
        source: tss_esapi::Error,
    },
    /// An argument is out of range (PCR index, data size).
    #[error("invalid argument: {0}")]
    Argument(String),
    /// The operation needs an attestation key; call [`Tpm::create_ak`] first.
    #[error("no attestation key loaded")]
    NoAk,
    /// The TPM returned something inconsistent.
    #[error("unexpected TPM response: {0}")]
    Unexpected(String),
}

fn tss(op: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmError {
    move |source| TpmError::Tss { op, source }
}

/// The attestation key as the verifier needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AkInfo {
    /// TPM2B_PUBLIC: big-endian u16 size, then TPMT_PUBLIC (tpm2-tools "tss" format).
    pub public: Vec<u8>,
    /// TPM name: nameAlg (u16, SHA-256) ‖ SHA-256(TPMT_PUBLIC), as the TPM reports it.
    pub name: Vec<u8>,
}

/// A quote and the PCR values it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// TPMS_ATTEST, the bytes the AK signed.
    pub attest: Vec<u8>,
    /// TPMT_SIGNATURE.
    pub signature: Vec<u8>,
    /// SHA-256 bank values of the quoted PCRs, ascending index.
    pub pcrs: Vec<(u32, Vec<u8>)>,
}

/// NV index of the RSA-2048 EK certificate (TCG EK Credential Profile).
pub const RSA_2048_EK_CERT_NV_INDEX: u32 = 0x01c0_0002;

/// An open TPM with at most one EK and one AK loaded.
#[derive(Debug)]
pub struct Tpm {
    ctx: Context,
    ek: Option<KeyHandle>,
    ak: Option<KeyHandle>,
}

impl Tpm {
    /// Open a TPM by TCTI string, e.g. `swtpm:path=/tmp/x/tpm.sock` or
    /// `device:/dev/tpmrm0`.
    pub fn open(tcti: &str) -> Result<Self, TpmError> {
        let conf = TctiNameConf::from_str(tcti).map_err(tss("parse TCTI"))?;
        let ctx = Context::new(conf).map_err(tss("open context"))?;
        Ok(Tpm {
            ctx,
            ek: None,
            ak: None,
        })
    }

    /// The RSA-2048 EK certificate (DER) from NV index 0x01c00002.
    pub fn ek_certificate(&mut self) -> Result<Vec<u8>, TpmError> {
        ek::retrieve_ek_pubcert(
            &mut self.ctx,
            AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
        )
        .map_err(tss("read EK certificate"))
    }

    /// Create the RSA-2048 EK (TCG default template, so its public key is the
    /// one in the EK certificate) and an ECC P-256 ECDSA-SHA256 restricted
    /// signing AK under it, and keep both loaded. Replaces a previous AK.
    pub fn create_ak(&mut self) -> Result<AkInfo, TpmError> {
        self.flush()?;
        let ek = ek::create_ek_object_2(
            &mut self.ctx,
            AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
            None,
        )
        .map_err(tss("create EK"))?;
        self.ek = Some(ek);
        let created = ak::create_ak_2(
            &mut self.ctx,
            ek,
            HashingAlgorithm::Sha256,
            AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
            SignatureSchemeAlgorithm::EcDsa,
            None,
            None,
        )
        .map_err(tss("create AK"))?;
        let handle = ak::load_ak(
            &mut self.ctx,
            ek,
            None,
            created.out_private,
            created.out_public.clone(),
        )
        .map_err(tss("load AK"))?;
        self.ak = Some(handle);
        let tpmt = created
            .out_public
            .marshall()
            .map_err(tss("marshal AK public"))?;
        let size = u16::try_from(tpmt.len())
            .map_err(|_| TpmError::Unexpected("AK public area too large".into()))?;
        let mut public = size.to_be_bytes().to_vec();
        public.extend_from_slice(&tpmt);
        let (_, name, _) = self
            .ctx
            .execute_without_session(|c| c.read_public(handle))
            .map_err(tss("read AK public"))?;
        Ok(AkInfo {
            public,
            name: name.value().to_vec(),
        })
    }

    /// TPM2_ActivateCredential with the loaded AK and EK: returns the secret
    /// when the credential was made for this EK and this AK's name.
    /// `credential_blob` and `encrypted_secret` are the TPM2B_ID_OBJECT and
    /// TPM2B_ENCRYPTED_SECRET contents (without their size prefixes).
    pub fn activate_credential(
        &mut self,
        credential_blob: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Vec<u8>, TpmError> {
        let (Some(ek), Some(ak)) = (self.ek, self.ak) else {
            return Err(TpmError::NoAk);
        };
        let id = IdObject::try_from(credential_blob.to_vec())
            .map_err(|e| TpmError::Argument(format!("credential blob: {e}")))?;
        let enc = EncryptedSecret::try_from(encrypted_secret.to_vec())
            .map_err(|e| TpmError::Argument(format!("encrypted secret: {e}")))?;
        let session = self
            .ctx
            .start_auth_session(
                None,
                None,
                None,
                SessionType::Policy,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .map_err(tss("start policy session"))?
            .ok_or_else(|| TpmError::Unexpected("no policy session".into()))?;
        let result = (|| {
            let policy = PolicySession::try_from(session).map_err(tss("policy session"))?;
            self.ctx
                .execute_with_nullauth_session(|c| {
                    c.policy_secret(
                        policy,
                        AuthHandle::Endorsement,
                        Default::default(),
                        Default::default(),
                        Default::default(),
                        None,
                    )
                })
                .map_err(tss("PolicySecret(endorsement)"))?;
            self.ctx
                .execute_with_sessions((Some(AuthSession::Password), Some(session), None), |c| {
                    c.activate_credential(ak, ek, id, enc)
                })
                .map_err(tss("ActivateCredential"))
        })();
        // The policy session is spent or dead either way; flushing an
        // already-closed session fails harmlessly.
        let _ = self
            .ctx
            .flush_context(ObjectHandle::from(SessionHandle::from(session)));
        Ok(result?.value().to_vec())
    }

    /// TPM2_Quote over the given PCRs of the SHA-256 bank with the AK, and
    /// the values of those PCRs (checked against the quote's pcrDigest).
    pub fn quote(&mut self, pcrs: &[u32], qualifying_data: &[u8]) -> Result<Quote, TpmError> {
        let ak = self.ak.ok_or(TpmError::NoAk)?;
        let data = Data::try_from(qualifying_data.to_vec())
            .map_err(|e| TpmError::Argument(format!("qualifying data: {e}")))?;
        let selection = selection(pcrs)?;
        let (attest, signature) = self
            .ctx
            .execute_with_nullauth_session(|c| c.quote(ak, data, SignatureScheme::Null, selection))
            .map_err(tss("Quote"))?;
        let values = self.read_pcrs(pcrs)?;
        let AttestInfo::Quote { info } = attest.attested() else {
            return Err(TpmError::Unexpected(
                "quote is not a TPMS_QUOTE_INFO".into(),
            ));
        };
        let mut h = Sha256::new();
        for (_, v) in &values {
            h.update(v);
        }
        if h.finalize().as_slice() != info.pcr_digest().value() {
            return Err(TpmError::Unexpected(
                "PCRs changed between the quote and the read; retry".into(),
            ));
        }
        Ok(Quote {
            attest: attest.marshall().map_err(tss("marshal TPMS_ATTEST"))?,
            signature: signature
                .marshall()
                .map_err(tss("marshal TPMT_SIGNATURE"))?,
            pcrs: values,
        })
    }

    /// SHA-256 bank values of `pcrs`, ascending index.
    pub fn read_pcrs(&mut self, pcrs: &[u32]) -> Result<Vec<(u32, Vec<u8>)>, TpmError> {
        let list = selection(pcrs)?;
        let data = self
            .ctx
            .execute_without_session(|c| pcr::read_all(c, list))
            .map_err(tss("PCR_Read"))?;
        let bank = data
            .pcr_bank(HashingAlgorithm::Sha256)
            .ok_or_else(|| TpmError::Unexpected("no SHA-256 PCR bank".into()))?;
        let mut out = Vec::new();
        for &i in &sorted(pcrs) {
            let d = bank
                .get_digest(slot(i)?)
                .ok_or_else(|| TpmError::Unexpected(format!("PCR {i} not read")))?;
            out.push((i, d.value().to_vec()));
        }
        Ok(out)
    }

    /// TPM2_PCR_Extend of PCR `pcr` in the SHA-256 bank with `digest`.
    pub fn extend_pcr(&mut self, pcr: u32, digest: &[u8; 32]) -> Result<(), TpmError> {
        let handle = PcrHandle::try_from(pcr)
            .map_err(|_| TpmError::Argument(format!("PCR {pcr} out of range")))?;
        if pcr > 23 {
            return Err(TpmError::Argument(format!("PCR {pcr} out of range")));
        }
        let mut values = DigestValues::new();
        values.set(
            HashingAlgorithm::Sha256,
            Digest::try_from(digest.to_vec()).map_err(tss("digest"))?,
        );
        self.ctx
            .execute_with_nullauth_session(|c| c.pcr_extend(handle, values))
            .map_err(tss("PCR_Extend"))
    }

    /// Flush the AK and the EK. Every handle is attempted; the first error
    /// is returned.
    pub fn flush(&mut self) -> Result<(), TpmError> {
        let mut first = Ok(());
        for h in [self.ak.take(), self.ek.take()].into_iter().flatten() {
            let r = self.ctx.flush_context(ObjectHandle::from(h));
            if first.is_ok() {
                first = r.map_err(tss("FlushContext"));
            }
        }
        first
    }
}

impl Drop for Tpm {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

fn sorted(pcrs: &[u32]) -> Vec<u32> {
    let mut v = pcrs.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

fn slot(i: u32) -> Result<PcrSlot, TpmError> {
    if i > 23 {
        return Err(TpmError::Argument(format!("PCR {i} out of range")));
    }
    PcrSlot::try_from(1u32 << i).map_err(|_| TpmError::Argument(format!("PCR {i} out of range")))
}

fn selection(pcrs: &[u32]) -> Result<tss_esapi::structures::PcrSelectionList, TpmError> {
    if pcrs.is_empty() {
        return Err(TpmError::Argument("no PCR selected".into()));
    }
    let slots = sorted(pcrs)
        .into_iter()
        .map(slot)
        .collect::<Result<Vec<_>, _>>()?;
    PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
        .map_err(tss("PCR selection"))
}
