//! AWS Nitro Enclaves attestation documents: COSE_Sign1 with ES384, signed by
//! a leaf certificate chained through the cabundle to the AWS Nitro root.

pub mod document;

use crate::checks::{debug_policy, expect_bytes, Category, Check, EvidenceKind, Verification};
use crate::roots::{self, TrustStore};
use crate::x509::{self, EcdsaEncoding, PublicKey, SigAlg};
use crate::{Error, VerificationTime};
pub use document::{AttestationDoc, CoseSign1, Document};

/// COSE algorithm ES384.
pub const ALG_ES384: i128 = -35;

#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Accept a debug-mode enclave (PCR0, PCR1, PCR2 all zero).
    pub allow_debug: bool,
    pub expect_pcrs: Vec<(u64, Vec<u8>)>,
    pub expect_nonce: Option<Vec<u8>>,
    pub expect_user_data: Option<Vec<u8>>,
    pub expect_public_key: Option<Vec<u8>>,
}

pub fn default_trust() -> TrustStore {
    roots::aws_nitro()
}

/// Parse `--expect-pcr N=HEX`.
pub fn parse_pcr_arg(arg: &str) -> Result<(u64, Vec<u8>), Error> {
    crate::bytes::parse_indexed_hex_arg(arg, "--expect-pcr")
}

pub fn verify_bytes(
    doc: &[u8],
    trust: &TrustStore,
    policy: &Policy,
    at: VerificationTime,
) -> Result<Verification, Error> {
    Ok(verify(&Document::parse_any(doc)?, trust, policy, at))
}

pub fn verify(
    d: &Document,
    trust: &TrustStore,
    policy: &Policy,
    at: VerificationTime,
) -> Verification {
    let mut v = Verification::new(EvidenceKind::Nitro, at);
    let doc = &d.doc;
    v.claim("module_id", doc.module_id.clone());
    v.claim("timestamp_ms", doc.timestamp);
    let pcrs: serde_json::Map<String, serde_json::Value> = doc
        .pcrs
        .iter()
        .map(|(i, p)| (i.to_string(), hex::encode(p).into()))
        .collect();
    v.claim("pcrs", serde_json::Value::Object(pcrs));
    for (k, val) in [
        ("public_key", &doc.public_key),
        ("user_data", &doc.user_data),
        ("nonce", &doc.nonce),
    ] {
        if let Some(b) = val {
            v.claim(k, hex::encode(b));
        }
    }
    v.push(check_fields(doc));
    let [chain, validity] = x509::path_checks(
        "cert-chain",
        "cert-validity",
        &doc.certificate,
        &doc.cabundle,
        &trust.anchors,
        at,
    );
    v.push(chain);
    v.push(validity);
    v.push(check_signature(d));
    v.push(check_debug(doc, policy));
    v.push(check_pcrs(doc, policy));
    v.push(opt_expect(
        "expect-nonce",
        policy.expect_nonce.as_deref(),
        doc.nonce.as_deref(),
    ));
    v.push(opt_expect(
        "expect-user-data",
        policy.expect_user_data.as_deref(),
        doc.user_data.as_deref(),
    ));
    v.push(opt_expect(
        "expect-public-key",
        policy.expect_public_key.as_deref(),
        doc.public_key.as_deref(),
    ));
    v
}

/// Field constraints AWS documents for the payload.
pub fn check_fields(doc: &AttestationDoc) -> Check {
    let r = (|| {
        if doc.module_id.is_empty() {
            return Err("module_id is empty".to_string());
        }
        if doc.digest != "SHA384" {
            return Err(format!("digest {:?} is not SHA384", doc.digest));
        }
        if doc.timestamp == 0 {
            return Err("timestamp is zero".into());
        }
        if doc.pcrs.is_empty() || doc.pcrs.len() > 32 {
            return Err(format!("{} PCRs (1 to 32 expected)", doc.pcrs.len()));
        }
        for (i, p) in &doc.pcrs {
            if *i >= 32 || ![32, 48, 64].contains(&p.len()) {
                return Err(format!("PCR{i} of {} bytes", p.len()));
            }
        }
        if doc.cabundle.is_empty() {
            return Err("cabundle is empty".into());
        }
        for (what, val, max) in [
            ("public_key", &doc.public_key, 1024),
            ("user_data", &doc.user_data, 512),
            ("nonce", &doc.nonce, 512),
        ] {
            if val.as_ref().is_some_and(|b| b.len() > max) {
                return Err(format!("{what} longer than {max} bytes"));
            }
        }
        Ok(format!(
            "module {}, {} PCRs, digest SHA384",
            doc.module_id,
            doc.pcrs.len()
        ))
    })();
    Check::from_result("document-fields", Category::Format, r)
}

/// ES384 over the COSE Sig_structure with the leaf certificate's key.
pub fn check_signature(d: &Document) -> Check {
    let r = (|| {
        let alg = d.cose.algorithm().map_err(|e| e.to_string())?;
        if alg != ALG_ES384 {
            return Err(format!("COSE alg {alg} is not ES384 (-35)"));
        }
        if !matches!(d.doc.certificate.key, PublicKey::EcP384(_)) {
            return Err("signing certificate key is not ECDSA P-384".into());
        }
        x509::verify_signature(
            &d.doc.certificate.key,
            SigAlg::EcdsaSha384,
            EcdsaEncoding::Fixed,
            &d.cose.to_be_signed(),
            &d.cose.signature,
        )?;
        Ok(format!("ES384 by \"{}\"", d.doc.certificate.common_name()))
    })();
    Check::from_result("document-signature", Category::Signature, r)
}

/// A debug-mode enclave reports PCR0, PCR1 and PCR2 as all zeros.
pub fn check_debug(doc: &AttestationDoc, policy: &Policy) -> Check {
    let zero = |i: u64| doc.pcrs.get(&i).is_some_and(|p| p.iter().all(|&b| b == 0));
    let debug = (zero(0) && zero(1) && zero(2))
        .then(|| "debug-mode enclave: PCR0, PCR1 and PCR2 are all zero".to_string());
    debug_policy(debug, policy.allow_debug, "not a debug-mode enclave")
}

pub fn check_pcrs(doc: &AttestationDoc, policy: &Policy) -> Check {
    const NAME: &str = "expect-pcrs";
    if policy.expect_pcrs.is_empty() {
        return Check::skipped(NAME, Category::Policy, "no expectation given");
    }
    for (i, want) in &policy.expect_pcrs {
        match doc.pcrs.get(i) {
            Some(have) if have == want => {}
            Some(have) => {
                return Check::failed(
                    NAME,
                    Category::Policy,
                    format!(
                        "PCR{i}: expected {}, found {}",
                        hex::encode(want),
                        hex::encode(have)
                    ),
                )
            }
            None => {
                return Check::failed(NAME, Category::Policy, format!("document has no PCR{i}"))
            }
        }
    }
    Check::passed(
        NAME,
        Category::Policy,
        format!("{} PCRs as expected", policy.expect_pcrs.len()),
    )
}

fn opt_expect(name: &'static str, expected: Option<&[u8]>, actual: Option<&[u8]>) -> Check {
    match (expected, actual) {
        (Some(_), None) => Check::failed(
            name,
            Category::Policy,
            "expected a value; the document has none",
        ),
        (e, a) => expect_bytes(name, e, a.unwrap_or_default()),
    }
}
