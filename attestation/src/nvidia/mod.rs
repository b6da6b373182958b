//! NVIDIA Hopper GPU evidence: an SPDM GET_MEASUREMENTS exchange signed by
//! the GPU's attestation key, whose certificate chains to the NVIDIA Device
//! Identity CA.

pub mod rim;
pub mod spdm;
pub mod xml;

use crate::checks::{expect_bytes, Category, Check, EvidenceKind, Verification};
use crate::roots::{self, TrustStore};
use crate::x509::{self, Certificate, Chain, EcdsaEncoding, PublicKey, SigAlg};
use crate::{Error, VerificationTime};
use rim::Rim;
pub use spdm::Exchange;

#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The nonce the verifier sent in the request.
    pub expect_nonce: Option<Vec<u8>>,
}

/// Trust anchors: the device identity root, and the RIM signing root.
#[derive(Debug, Clone)]
pub struct Trust {
    pub device: TrustStore,
    pub rim: TrustStore,
}

/// The embedded NVIDIA Device Identity CA and CoRIM signing root.
pub fn default_trust() -> Trust {
    Trust {
        device: roots::nvidia_device_identity(),
        rim: roots::nvidia_rim(),
    }
}

/// Parsed NVIDIA evidence: the SPDM exchange, the device chain (leaf first)
/// and the reference manifests to compare against (driver and/or VBIOS).
#[derive(Debug, Clone)]
pub struct Evidence {
    pub exchange: Exchange,
    pub chain: Chain,
    pub rims: Vec<Rim>,
}

impl Evidence {
    pub fn parse(report: &[u8], chain_pem: &[u8], rims: &[&[u8]]) -> Result<Self, Error> {
        let exchange = Exchange::parse_any(report)?;
        let chain = Chain::from_pem(chain_pem, "device certificate chain")?;
        let rims = rims
            .iter()
            .map(|r| Rim::parse(r))
            .collect::<Result<_, _>>()?;
        Ok(Evidence {
            exchange,
            chain,
            rims,
        })
    }
}

pub fn verify_bytes(
    report: &[u8],
    chain: &[u8],
    rims: &[&[u8]],
    trust: &Trust,
    policy: &Policy,
    at: VerificationTime,
) -> Result<Verification, Error> {
    Ok(verify(
        &Evidence::parse(report, chain, rims)?,
        trust,
        policy,
        at,
    ))
}

pub fn verify(ev: &Evidence, trust: &Trust, policy: &Policy, at: VerificationTime) -> Verification {
    let mut v = Verification::new(EvidenceKind::Nvidia, at);
    add_claims(&mut v, &ev.exchange);
    let leaf = &ev.chain.leaf;
    let [chain, validity] = x509::path_checks(
        "cert-chain",
        "cert-validity",
        leaf,
        &ev.chain.issuers,
        &trust.device.anchors,
        at,
    );
    v.push(chain);
    v.push(validity);
    v.push(check_signature(&ev.exchange, leaf));
    if ev.exchange.response.trailing > 0 {
        v.push(Check::warning(
            "trailing-bytes",
            Category::Format,
            format!(
                "{} bytes after the SPDM signature ignored (not signed)",
                ev.exchange.response.trailing
            ),
        ));
    }
    v.push(expect_bytes(
        "expect-nonce",
        policy.expect_nonce.as_deref(),
        &ev.exchange.request.nonce,
    ));
    if ev.rims.is_empty() {
        v.push(Check::skipped(
            "rim-comparison",
            Category::Policy,
            "no RIM given (measurements listed in the claims, not compared)",
        ));
    } else {
        for c in rim_checks(ev, &trust.rim, at) {
            v.push(c);
        }
    }
    v
}

fn add_claims(v: &mut Verification, x: &Exchange) {
    v.claim(
        "spdm_version",
        format!("{}.{}", x.request.version >> 4, x.request.version & 0xF),
    );
    v.claim("nonce", hex::encode(x.request.nonce));
    v.claim("ignored_trailing_bytes", x.response.trailing);
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

/// The checks of the reference manifests: their signatures, signer chains
/// and validity, that each is for the driver or VBIOS version the GPU
/// reports, and that every active reference measurement matches.
pub fn rim_checks(ev: &Evidence, trust: &TrustStore, at: VerificationTime) -> Vec<Check> {
    let sigs = ev
        .rims
        .iter()
        .map(|r| {
            r.verify_signature()
                .map_err(|e| format!("RIM {}: {e}", r.version))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|_| format!("{} RIMs signed (XMLDSig, ECDSA P-384)", ev.rims.len()));
    let mut checks = vec![Check::from_result(
        "rim-signature",
        Category::Signature,
        sigs,
    )];

    let mut paths = Vec::new();
    let chains = ev
        .rims
        .iter()
        .map(|r| {
            r.signer_chain
                .path_to(&trust.anchors)
                .map(|p| paths.extend(p.certs))
                .map_err(|e| format!("RIM {}: {e}", r.version))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|_| "RIM signers chain to the NVIDIA RIM signing root".to_string());
    checks.push(Check::from_result("rim-chain", Category::Chain, chains));
    let leaves: Vec<&Certificate> = ev.rims.iter().map(|r| &r.signer_chain.leaf).collect();
    let validity_set: Vec<&Certificate> = if paths.is_empty() {
        leaves
    } else {
        paths.iter().collect()
    };
    checks.push(x509::validity_check("rim-validity", validity_set, at));

    let fields = spdm::opaque_fields(&ev.exchange.response.opaque).unwrap_or_default();
    let field = |t: u16| fields.iter().find(|(ft, _)| *ft == t).map(|(_, v)| *v);
    let driver = field(3).map(|v| {
        String::from_utf8_lossy(v)
            .trim_end_matches('\0')
            .to_string()
    });
    let vbios = field(6).and_then(spdm::format_vbios_version);
    let versions = ev
        .rims
        .iter()
        .map(|r| {
            let v = r.version.to_ascii_lowercase();
            if driver
                .as_deref()
                .is_some_and(|d| d.to_ascii_lowercase() == v)
                || vbios
                    .as_deref()
                    .is_some_and(|b| b.to_ascii_lowercase() == v)
            {
                Ok(())
            } else {
                Err(format!(
                    "RIM for version {} does not match the GPU's driver {} or VBIOS {}",
                    r.version,
                    driver.as_deref().unwrap_or("?"),
                    vbios.as_deref().unwrap_or("?")
                ))
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|_| "RIM versions match the reported driver/VBIOS".to_string());
    checks.push(Check::from_result(
        "rim-version",
        Category::Policy,
        versions,
    ));
    checks.push(compare_measurements(&ev.exchange, &ev.rims));
    checks
}

/// Every active reference measurement (RIM index i is SPDM block i + 1)
/// equals one of its alternatives; an index active in two RIMs conflicts.
pub fn compare_measurements(x: &Exchange, rims: &[Rim]) -> Check {
    const NAME: &str = "rim-comparison";
    let mut golden: std::collections::BTreeMap<u32, &[Vec<u8>]> = Default::default();
    for r in rims {
        for m in r.measurements.iter().filter(|m| m.active) {
            if golden.insert(m.index, &m.alternatives).is_some() {
                return Check::failed(
                    NAME,
                    Category::Policy,
                    format!("measurement {} is active in more than one RIM", m.index),
                );
            }
        }
    }
    let mut mismatched = Vec::new();
    for (index, alternatives) in &golden {
        let block = x
            .response
            .blocks
            .iter()
            .find(|b| index.checked_add(1) == Some(u32::from(b.index)));
        if !block.is_some_and(|b| alternatives.contains(&b.value)) {
            mismatched.push(index.to_string());
        }
    }
    if mismatched.is_empty() {
        Check::passed(
            NAME,
            Category::Policy,
            format!("{} active reference measurements match", golden.len()),
        )
    } else {
        Check::failed(
            NAME,
            Category::Policy,
            format!(
                "{} of {} active reference measurements differ: indices {}",
                mismatched.len(),
                golden.len(),
                mismatched.join(", ")
            ),
        )
    }
}
