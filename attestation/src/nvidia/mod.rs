//! NVIDIA Hopper GPU evidence: an SPDM GET_MEASUREMENTS exchange signed by
//! the GPU's attestation key, whose certificate chains to the NVIDIA Device
//! Identity CA.

pub mod spdm;

use crate::checks::{expect_bytes, Category, Check, EvidenceKind, Verification};
use crate::roots::{self, TrustStore};
use crate::x509::{self, parse_pem_certificates, Certificate, EcdsaEncoding, PublicKey, SigAlg};
use crate::{Error, VerificationTime};
pub use spdm::Exchange;

#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The nonce the verifier sent in the request.
    pub expect_nonce: Option<Vec<u8>>,
}

pub fn default_trust() -> TrustStore {
    roots::nvidia_device_identity()
}

/// Parsed NVIDIA evidence: the SPDM exchange and the device chain (leaf first).
#[derive(Debug, Clone)]
pub struct Evidence {
    pub exchange: Exchange,
    pub chain: Vec<Certificate>,
}

impl Evidence {
    pub fn parse(report: &[u8], chain_pem: &[u8]) -> Result<Self, Error> {
        let exchange = Exchange::parse_any(report)?;
        let chain = parse_pem_certificates(chain_pem)?;
        if chain.is_empty() {
            return Err(Error::parse(
                "device certificate chain holds no certificate",
            ));
        }
        Ok(Evidence { exchange, chain })
    }
}

pub fn verify_bytes(
    report: &[u8],
    chain: &[u8],
    rim: Option<&[u8]>,
    trust: &TrustStore,
    policy: &Policy,
    at: VerificationTime,
) -> Result<Verification, Error> {
    let ev = Evidence::parse(report, chain)?;
    if rim.is_some() {
        return Err(Error::NotImplemented(
            "RIM comparison (--rim): verifying the RIM's XML signature and comparing reference values is not implemented; run without --rim".into(),
        ));
    }
    Ok(verify(&ev, trust, policy, at))
}

pub fn verify(
    ev: &Evidence,
    trust: &TrustStore,
    policy: &Policy,
    at: VerificationTime,
) -> Verification {
    let mut v = Verification::new(EvidenceKind::Nvidia, at);
    add_claims(&mut v, &ev.exchange);
    let leaf = &ev.chain[0];
    let [chain, validity] = x509::path_checks(
        "cert-chain",
        "cert-validity",
        leaf,
        &ev.chain[1..],
        &trust.anchors,
        at,
    );
    v.push(chain);
    v.push(validity);
    v.push(check_signature(&ev.exchange, leaf));
    v.push(expect_bytes(
        "expect-nonce",
        policy.expect_nonce.as_deref(),
        &ev.exchange.request.nonce,
    ));
    v.push(Check::skipped(
        "rim-comparison",
        Category::Policy,
        "no RIM given (measurements listed in the claims, not compared)",
    ));
    v
}

fn add_claims(v: &mut Verification, x: &Exchange) {
    v.claim(
        "spdm_version",
        format!("{}.{}", x.request.version >> 4, x.request.version & 0xF),
    );
    v.claim("nonce", hex::encode(x.request.nonce));
    v.claim("responder_nonce", hex::encode(x.response.nonce));
    let blocks: serde_json::Map<String, serde_json::Value> = x
        .response
        .blocks
        .iter()
        .map(|b| (b.index.to_string(), hex::encode(&b.value).into()))
        .collect();
    v.claim("measurements", serde_json::Value::Object(blocks));
    if let Ok(fields) = spdm::opaque_fields(&x.response.opaque) {
        for (t, val) in fields {
            let Some(name) = spdm::opaque_field_name(t) else {
                continue;
            };
            let text = match t {
                6 => spdm::format_vbios_version(val).unwrap_or_else(|| hex::encode(val)),
                3 | 15 | 16 | 17 | 18 | 19 => String::from_utf8_lossy(val)
                    .trim_end_matches('\0')
                    .to_string(),
                _ => hex::encode(val),
            };
            v.claim(name, text);
        }
    }
}

/// ECDSA P-384 over request || response (without the signature), by the
/// device leaf certificate.
pub fn check_signature(x: &Exchange, leaf: &Certificate) -> Check {
    let r = (|| {
        if !matches!(leaf.key, PublicKey::EcP384(_)) {
            return Err("device certificate key is not ECDSA P-384".to_string());
        }
        x509::verify_signature(
            &leaf.key,
            SigAlg::EcdsaSha384,
            EcdsaEncoding::Fixed,
            &x.signed,
            &x.response.signature,
        )?;
        Ok(format!(
            "{} measurement blocks signed by \"{}\"",
            x.response.blocks.len(),
            leaf.common_name()
        ))
    })();
    Check::from_result("measurement-signature", Category::Signature, r)
}
