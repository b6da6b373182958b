//! The endorsement key certificate: its path to the TPM manufacturer's CA and
//! the TCG EK credential profile (EKU tcg-kp-EKCertificate, the TPM
//! manufacturer/model/version in a directoryName SubjectAltName).

use crate::checks::{Category, Check};
use crate::x509::{self, Certificate, PublicKey};
use crate::{Error, VerificationTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

pub const CHECK_EK_CHAIN: &str = "tpm-ek-chain";
pub const CHECK_EK_VALIDITY: &str = "tpm-ek-validity";
pub const CHECK_EK_PROFILE: &str = "tpm-ek-profile";

/// tcg-kp-EKCertificate (TCG EK Credential Profile).
pub const OID_TCG_KP_EK_CERTIFICATE: &str = "2.23.133.8.1";
/// tcg-at-tpmManufacturer, tcg-at-tpmModel, tcg-at-tpmVersion.
pub const OID_TPM_MANUFACTURER: &str = "2.23.133.2.1";
pub const OID_TPM_MODEL: &str = "2.23.133.2.2";
pub const OID_TPM_VERSION: &str = "2.23.133.2.3";

const OID_EKU: &str = "2.5.29.37";

/// Extensions this verifier understands, so they may be critical.
const KNOWN_CRITICAL: &[&str] = &[
    "2.5.29.14", // subjectKeyIdentifier
    "2.5.29.15", // keyUsage
    "2.5.29.17", // subjectAltName (critical in EK certs with an empty subject)
    "2.5.29.19", // basicConstraints
    "2.5.29.32", // certificatePolicies
    "2.5.29.35", // authorityKeyIdentifier
    "2.5.29.37", // extKeyUsage
    "2.5.29.9",  // subjectDirectoryAttributes (TPM specification)
];

/// The TPM described by the EK certificate's SubjectAltName.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TpmIdentity {
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub version: Option<String>,
}

/// The checks on an EK certificate, and the certificate.
#[derive(Debug, Clone)]
pub struct EkVerification {
    pub checks: Vec<Check>,
    pub certificate: Certificate,
    pub identity: TpmIdentity,
}

/// Verify an EK certificate (DER or PEM) as of `at`: a path through
/// `intermediates` to one of `roots` (every signature verified, cA=TRUE on
/// intermediates), validity, and the EK profile.
pub fn verify_ek_chain(
    ek_cert: &[u8],
    intermediates: &[Certificate],
    roots: &[Certificate],
    at: VerificationTime,
) -> Result<EkVerification, Error> {
    let certificate = Certificate::from_der_or_pem(ek_cert)?;
    let identity = tpm_identity(&certificate.der)?;
    let mut checks = x509::path_checks(
        CHECK_EK_CHAIN,
        CHECK_EK_VALIDITY,
        &certificate,
        intermediates,
        roots,
        at,
    )
    .to_vec();
    checks.push(check_profile(&certificate, &identity));
    Ok(EkVerification {
        checks,
        certificate,
        identity,
    })
}

fn check_profile(cert: &Certificate, id: &TpmIdentity) -> Check {
    let unknown: Vec<&str> = cert
        .extensions
        .iter()
        .filter(|e| e.critical && !KNOWN_CRITICAL.contains(&e.oid.as_str()))
        .map(|e| e.oid.as_str())
        .collect();
    if !unknown.is_empty() {
        return Check::failed(
            CHECK_EK_PROFILE,
            Category::Format,
            format!("unknown critical extensions {unknown:?}"),
        );
    }
    match cert.extension(OID_EKU).map(|e| eku_has_ek(&e.value)) {
        Some(Ok(true)) => {}
        Some(Ok(false)) => {
            return Check::failed(
                CHECK_EK_PROFILE,
                Category::Format,
                format!("extKeyUsage lacks tcg-kp-EKCertificate ({OID_TCG_KP_EK_CERTIFICATE})"),
            )
        }
        Some(Err(e)) => return Check::failed(CHECK_EK_PROFILE, Category::Format, e),
        None => {
            return Check::warning(
                CHECK_EK_PROFILE,
                Category::Format,
                "no extKeyUsage: not marked as an EK certificate",
            )
        }
    }
    let key = match &cert.key {
        PublicKey::Rsa(_) => "RSA",
        PublicKey::EcP256(_) => "ECC P-256",
        PublicKey::EcP384(_) => "ECC P-384",
        PublicKey::Unsupported(s) => {
            return Check::failed(
                CHECK_EK_PROFILE,
                Category::Format,
                format!("unsupported EK key {s}"),
            )
        }
    };
    Check::passed(
        CHECK_EK_PROFILE,
        Category::Format,
        format!(
            "EK certificate ({key}), TPM manufacturer {}, model {}, version {}",
            id.manufacturer.as_deref().unwrap_or("?"),
            id.model.as_deref().unwrap_or("?"),
            id.version.as_deref().unwrap_or("?")
        ),
    )
}

fn eku_has_ek(value: &[u8]) -> Result<bool, String> {
    let seq = x509::der::expect(value, x509::der::SEQUENCE)?;
    for item in x509::der::items(seq)? {
        if item.tag == x509::der::OID
            && x509::der::oid_string(item.content)? == OID_TCG_KP_EK_CERTIFICATE
        {
            return Ok(true);
        }
    }
    Ok(false)
}

fn tpm_identity(der: &[u8]) -> Result<TpmIdentity, Error> {
    let (_, c) =
        X509Certificate::from_der(der).map_err(|e| Error::Parse(format!("certificate: {e}")))?;
    let mut id = TpmIdentity::default();
    let san = c
        .subject_alternative_name()
        .map_err(|e| Error::Parse(format!("EK certificate subjectAltName: {e}")))?;
    let Some(san) = san else { return Ok(id) };
    for gn in &san.value.general_names {
        if let GeneralName::DirectoryName(name) = gn {
            for a in name.iter_attributes() {
                let v = a.as_str().ok().map(str::to_string);
                match a.attr_type().to_id_string().as_str() {
                    OID_TPM_MANUFACTURER => id.manufacturer = v,
                    OID_TPM_MODEL => id.model = v,
                    OID_TPM_VERSION => id.version = v,
                    _ => {}
                }
            }
        }
    }
    Ok(id)
}
