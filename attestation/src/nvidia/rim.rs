//! NVIDIA reference integrity manifests: TCG SWID tags (ISO/IEC 19770-2)
//! signed with an enveloped XMLDSig (Canonical XML 1.1, ECDSA P-384,
//! SHA-384), whose `Payload` lists reference measurements by index.

use super::xml::{self, Element, Scope};
use crate::x509::{self, Certificate, Chain, EcdsaEncoding, SigAlg};
use crate::Error;
use base64::Engine;
use ring::digest;

const DSIG: &str = "http://www.w3.org/2000/09/xmldsig#";
const C14N11: &str = "http://www.w3.org/2006/12/xml-c14n11";
const ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";
const ECDSA_SHA384: &str = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384";
const SHA384: &str = "http://www.w3.org/2001/04/xmldsig-more#sha384";

/// One reference measurement: active ones must match one alternative.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RimMeasurement {
    pub index: u32,
    pub active: bool,
    pub alternatives: Vec<Vec<u8>>,
}

/// A parsed RIM with what its signature verification needs.
#[derive(Debug, Clone)]
pub struct Rim {
    /// `Meta/@colloquialVersion`: driver version or VBIOS version.
    pub version: String,
    pub measurements: Vec<RimMeasurement>,
    /// KeyInfo certificates: the signer and its issuers.
    pub signer_chain: Chain,
    /// SHA-384 of the canonical document without the signature.
    pub document_digest: Vec<u8>,
    pub digest_value: Vec<u8>,
    /// Canonical SignedInfo, the signed bytes.
    pub signed_info: Vec<u8>,
    pub signature: Vec<u8>,
}

fn b64(text: &str, what: &str) -> Result<Vec<u8>, Error> {
    let t: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(t)
        .map_err(|e| Error::Parse(format!("RIM {what}: base64: {e}")))
}

fn need<'a>(el: Option<&'a Element>, what: &str) -> Result<&'a Element, Error> {
    el.ok_or_else(|| Error::Parse(format!("RIM lacks {what}")))
}

fn algorithm(el: Option<&Element>, what: &str, want: &str) -> Result<(), Error> {
    let alg = need(el, what)?.attr("Algorithm").unwrap_or_default();
    if alg == want {
        Ok(())
    } else {
        Err(Error::NotImplemented(format!(
            "RIM {what} algorithm {alg:?} (only {want})"
        )))
    }
}

impl Rim {
    pub fn parse(text: &[u8]) -> Result<Self, Error> {
        let root = xml::parse(text)?;
        let root_scope = root.scope(&Scope::new());
        let is_sig =
            |e: &Element, s: &Scope| e.local_name() == "Signature" && e.namespace(s) == DSIG;
        let sigs: Vec<&Element> = root
            .child_elements()
            .filter(|e| is_sig(e, &e.scope(&root_scope)))
            .collect();
        let [sig] = sigs[..] else {
            return Err(Error::Parse(format!(
                "RIM has {} enveloped signatures, expected 1",
                sigs.len()
            )));
        };
        let sig_scope = sig.scope(&root_scope);
        let signed_info = need(sig.child("SignedInfo"), "SignedInfo")?;
        algorithm(
            signed_info.child("CanonicalizationMethod"),
            "CanonicalizationMethod",
            C14N11,
        )?;
        algorithm(
            signed_info.child("SignatureMethod"),
            "SignatureMethod",
            ECDSA_SHA384,
        )?;
        let refs: Vec<&Element> = signed_info
            .child_elements()
            .filter(|e| e.local_name() == "Reference")
            .collect();
        let [reference] = refs[..] else {
            return Err(Error::NotImplemented(format!(
                "RIM with {} references (only 1)",
                refs.len()
            )));
        };
        if reference.attr("URI") != Some("") {
            return Err(Error::NotImplemented(
                "RIM reference other than the whole document".into(),
            ));
        }
        let transforms: Vec<&str> = need(reference.child("Transforms"), "Transforms")?
            .child_elements()
            .map(|t| t.attr("Algorithm").unwrap_or_default())
            .collect();
        if transforms != [ENVELOPED, C14N11] {
            return Err(Error::NotImplemented(format!(
                "RIM transforms {transforms:?}"
            )));
        }
        algorithm(reference.child("DigestMethod"), "DigestMethod", SHA384)?;
        let digest_value = b64(
            &need(reference.child("DigestValue"), "DigestValue")?.text(),
            "DigestValue",
        )?;

        let canonical_doc = xml::canonicalize(&root, &Scope::new(), &is_sig)?;
        let document_digest = digest::digest(&digest::SHA384, canonical_doc.as_bytes())
            .as_ref()
            .to_vec();
        let canonical_si = xml::canonicalize(signed_info, &sig_scope, &|_, _| false)?;
        let signature = b64(
            &need(sig.child("SignatureValue"), "SignatureValue")?.text(),
            "SignatureValue",
        )?;
        let x509_data = need(
            need(sig.child("KeyInfo"), "KeyInfo")?.child("X509Data"),
            "X509Data",
        )?;
        let signer_chain = x509_data
            .child_elements()
            .filter(|e| e.local_name() == "X509Certificate")
            .map(|e| Certificate::from_der(&b64(&e.text(), "X509Certificate")?))
            .collect::<Result<Vec<_>, _>>()?;
        let signer_chain = Chain::from_certs(signer_chain, "RIM KeyInfo")?;

        let version = need(root.child("Meta"), "Meta")?
            .attr("colloquialVersion")
            .ok_or_else(|| Error::parse("RIM Meta lacks colloquialVersion"))?
            .to_string();
        let mut measurements = Vec::new();
        for r in need(root.child("Payload"), "Payload")?.child_elements() {
            if r.local_name() != "Resource" || r.attr("type") != Some("Measurement") {
                continue;
            }
            let num = |k: &str| -> Result<u32, Error> {
                r.attr(k)
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| Error::Parse(format!("RIM measurement lacks a numeric {k}")))
            };
            let index = num("index")?;
            let count = num("alternatives")?;
            if count > 16 {
                return Err(Error::Parse(format!(
                    "RIM measurement {index}: {count} alternatives"
                )));
            }
            let alternatives = (0..count)
                .map(|i| {
                    let h = r.attr(&format!("Hash{i}")).ok_or_else(|| {
                        Error::Parse(format!("RIM measurement {index} lacks Hash{i}"))
                    })?;
                    hex::decode(h)
                        .map_err(|e| Error::Parse(format!("RIM measurement {index}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            measurements.push(RimMeasurement {
                index,
                active: r
                    .attr("active")
                    .is_some_and(|a| a.eq_ignore_ascii_case("true")),
                alternatives,
            });
        }
        Ok(Rim {
            version,
            measurements,
            signer_chain,
            document_digest,
            digest_value,
            signed_info: canonical_si.into_bytes(),
            signature,
        })
    }

    /// The digest of the document matches the reference, and the signer's
    /// P-384 key signed the canonical SignedInfo.
    pub fn verify_signature(&self) -> Result<(), String> {
        if self.document_digest != self.digest_value {
            return Err("RIM document digest does not match its signed reference".into());
        }
        x509::verify_signature(
            &self.signer_chain.leaf.key,
            SigAlg::EcdsaSha384,
            EcdsaEncoding::Fixed,
            &self.signed_info,
            &self.signature,
        )
        .map_err(|e| format!("RIM SignedInfo: {e}"))
    }
}
