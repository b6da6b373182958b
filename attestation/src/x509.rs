//! X.509 certificates and CRLs as owned values, with signature verification
//! (ECDSA through [`crate::crypto`], RSA by `ring`), path building to a set of trust anchors and validity "as of" a
//! [`VerificationTime`]. Parsing is done by `x509-parser`; the checks are here.

use crate::checks::{Category, Check};
use crate::time::{format_unix_seconds, VerificationTime};
use crate::Error;
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;
use x509_parser::signature_algorithm::SignatureAlgorithm;
use x509_parser::x509::{AlgorithmIdentifier, SubjectPublicKeyInfo};

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_RSA_PSS: &str = "1.2.840.113549.1.1.10";
const OID_SHA256: &str = "2.16.840.1.101.3.4.2.1";
const OID_SHA384: &str = "2.16.840.1.101.3.4.2.2";

/// A public key that this crate can verify signatures with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// Uncompressed SEC1 point (0x04 || X || Y).
    EcP256(Vec<u8>),
    EcP384(Vec<u8>),
    /// DER RSAPublicKey.
    Rsa(Vec<u8>),
    Unsupported(String),
}

/// Signature algorithms found in certificates and CRLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigAlg {
    EcdsaSha256,
    EcdsaSha384,
    RsaPkcs1Sha256,
    RsaPkcs1Sha384,
    RsaPssSha256,
    RsaPssSha384,
    Unsupported,
}

/// Encoding of an ECDSA signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EcdsaEncoding {
    /// ASN.1 DER `Ecdsa-Sig-Value` (certificates, CRLs).
    Der,
    /// Fixed-width big-endian r || s (COSE, SPDM, TDX quotes).
    Fixed,
}

/// Verify `sig` over `msg` with `key`.
pub fn verify_signature(
    key: &PublicKey,
    alg: SigAlg,
    enc: EcdsaEncoding,
    msg: &[u8],
    sig: &[u8],
) -> Result<(), String> {
    use crate::crypto::{self, Ecdsa, SigEncoding};
    let ec = |alg: Ecdsa, k: &[u8]| {
        let enc = match enc {
            EcdsaEncoding::Der => SigEncoding::Der,
            EcdsaEncoding::Fixed => SigEncoding::Fixed,
        };
        crypto::verify_ecdsa(alg, enc, k, msg, sig)
            .map_err(|_| "signature does not verify".to_string())
    };
    let der = enc == EcdsaEncoding::Der;
    let (ring_alg, key_bytes): (&dyn VerificationAlgorithm, &[u8]) = match (key, alg) {
        (PublicKey::EcP256(k), SigAlg::EcdsaSha256) => return ec(Ecdsa::P256Sha256, k),
        (PublicKey::EcP256(k), SigAlg::EcdsaSha384) if der => return ec(Ecdsa::P256Sha384, k),
        (PublicKey::EcP384(k), SigAlg::EcdsaSha384) => return ec(Ecdsa::P384Sha384, k),
        (PublicKey::EcP384(k), SigAlg::EcdsaSha256) if der => return ec(Ecdsa::P384Sha256, k),
        (PublicKey::Rsa(k), SigAlg::RsaPkcs1Sha256) => (&signature::RSA_PKCS1_2048_8192_SHA256, k),
        (PublicKey::Rsa(k), SigAlg::RsaPkcs1Sha384) => (&signature::RSA_PKCS1_2048_8192_SHA384, k),
        (PublicKey::Rsa(k), SigAlg::RsaPssSha256) => (&signature::RSA_PSS_2048_8192_SHA256, k),
        (PublicKey::Rsa(k), SigAlg::RsaPssSha384) => (&signature::RSA_PSS_2048_8192_SHA384, k),
        (k, a) => {
            return Err(format!(
                "unsupported key/algorithm combination: {} with {a:?}",
                key_name(k)
            ))
        }
    };
    UnparsedPublicKey::new(ring_alg, key_bytes)
        .verify(msg, sig)
        .map_err(|_| "signature does not verify".to_string())
}

fn key_name(k: &PublicKey) -> String {
    match k {
        PublicKey::EcP256(_) => "ECDSA P-256 key".into(),
        PublicKey::EcP384(_) => "ECDSA P-384 key".into(),
        PublicKey::Rsa(_) => "RSA key".into(),
        PublicKey::Unsupported(s) => format!("unsupported key ({s})"),
    }
}

fn public_key(spki: &SubjectPublicKeyInfo) -> PublicKey {
    let alg = spki.algorithm.algorithm.to_id_string();
    let bits = spki.subject_public_key.data.to_vec();
    match alg.as_str() {
        OID_RSA | OID_RSA_PSS => PublicKey::Rsa(bits),
        OID_EC_PUBLIC_KEY => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string());
            match curve.as_deref() {
                Some(OID_P256) => PublicKey::EcP256(bits),
                Some(OID_P384) => PublicKey::EcP384(bits),
                other => PublicKey::Unsupported(format!("EC curve {other:?}")),
            }
        }
        other => PublicKey::Unsupported(other.to_string()),
    }
}

/// The key of a DER SubjectPublicKeyInfo; trailing bytes are an error.
pub fn spki_public_key(der: &[u8]) -> Result<PublicKey, Error> {
    let (rest, spki) = SubjectPublicKeyInfo::from_der(der)
        .map_err(|e| Error::Parse(format!("SubjectPublicKeyInfo: {e}")))?;
    if !rest.is_empty() {
        return Err(Error::parse(
            "SubjectPublicKeyInfo: trailing bytes after DER",
        ));
    }
    Ok(public_key(&spki))
}

fn sig_alg(alg: &AlgorithmIdentifier) -> SigAlg {
    let oid = alg.algorithm.to_id_string();
    match oid.as_str() {
        "1.2.840.10045.4.3.2" => SigAlg::EcdsaSha256,
        "1.2.840.10045.4.3.3" => SigAlg::EcdsaSha384,
        "1.2.840.113549.1.1.11" => SigAlg::RsaPkcs1Sha256,
        "1.2.840.113549.1.1.12" => SigAlg::RsaPkcs1Sha384,
        OID_RSA_PSS => match SignatureAlgorithm::try_from(alg) {
            Ok(SignatureAlgorithm::RSASSA_PSS(p)) => {
                let hash = p.hash_algorithm_oid().to_id_string();
                let mgf_hash = p
                    .mask_gen_algorithm()
                    .map(|m| m.hash.to_id_string())
                    .unwrap_or_default();
                // ring checks the salt length equals the hash length.
                match (hash.as_str(), mgf_hash == hash, p.salt_length()) {
                    (OID_SHA384, true, 48) => SigAlg::RsaPssSha384,
                    (OID_SHA256, true, 32) => SigAlg::RsaPssSha256,
                    _ => SigAlg::Unsupported,
                }
            }
            _ => SigAlg::Unsupported,
        },
        _ => SigAlg::Unsupported,
    }
}

/// The signed part of a certificate or CRL: the issuer's name, the
/// to-be-signed bytes and the signature over them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SignedPart {
    issuer_raw: Vec<u8>,
    tbs: Vec<u8>,
    sig_alg: SigAlg,
    signature: Vec<u8>,
}

impl SignedPart {
    fn new(issuer_raw: &[u8], tbs: &[u8], alg: &AlgorithmIdentifier, signature: &[u8]) -> Self {
        SignedPart {
            issuer_raw: issuer_raw.to_vec(),
            tbs: tbs.to_vec(),
            sig_alg: sig_alg(alg),
            signature: signature.to_vec(),
        }
    }

    /// `signer` is named as the issuer and its key verifies the signature.
    fn verify_by(&self, signer: &Certificate) -> Result<(), String> {
        if self.issuer_raw != signer.subject_raw {
            return Err(format!("issuer name is not \"{}\"", signer.subject));
        }
        verify_signature(
            &signer.key,
            self.sig_alg,
            EcdsaEncoding::Der,
            &self.tbs,
            &self.signature,
        )
    }
}

/// One certificate extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    pub oid: String,
    pub critical: bool,
    pub value: Vec<u8>,
}

/// An owned, parsed X.509 certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    pub der: Vec<u8>,
    pub subject: String,
    pub issuer: String,
    subject_raw: Vec<u8>,
    signed: SignedPart,
    pub not_before: i64,
    pub not_after: i64,
    pub key: PublicKey,
    pub serial: Vec<u8>,
    pub extensions: Vec<Extension>,
    /// basicConstraints cA, when the extension is present.
    pub is_ca: Option<bool>,
}

impl Certificate {
    /// Parse one DER certificate; trailing bytes are an error.
    pub fn from_der(der: &[u8]) -> Result<Self, Error> {
        let (rest, c) = X509Certificate::from_der(der)
            .map_err(|e| Error::Parse(format!("certificate: {e}")))?;
        if !rest.is_empty() {
            return Err(Error::parse(format!(
                "certificate: {} trailing bytes after DER",
                rest.len()
            )));
        }
        let is_ca = c
            .basic_constraints()
            .map_err(|e| Error::Parse(format!("certificate basicConstraints: {e}")))?
            .map(|b| b.value.ca);
        Ok(Certificate {
            der: der.to_vec(),
            subject: c.subject().to_string(),
            issuer: c.issuer().to_string(),
            subject_raw: c.subject().as_raw().to_vec(),
            signed: SignedPart::new(
                c.issuer().as_raw(),
                c.tbs_certificate.as_ref(),
                &c.signature_algorithm,
                &c.signature_value.data,
            ),
            not_before: c.validity().not_before.timestamp(),
            not_after: c.validity().not_after.timestamp(),
            key: public_key(c.public_key()),
            serial: c.raw_serial().to_vec(),
            extensions: c
                .extensions()
                .iter()
                .map(|e| Extension {
                    oid: e.oid.to_id_string(),
                    critical: e.critical,
                    value: e.value.to_vec(),
                })
                .collect(),
            is_ca,
        })
    }

    /// Parse a certificate given as DER or as PEM text (first block).
    pub fn from_der_or_pem(bytes: &[u8]) -> Result<Self, Error> {
        if looks_like_pem(bytes) {
            let mut certs = parse_pem_certificates(bytes)?;
            if certs.is_empty() {
                return Err(Error::parse("PEM file holds no certificate"));
            }
            Ok(certs.swap_remove(0))
        } else {
            Self::from_der(bytes)
        }
    }

    /// The CN attribute of the subject, or the whole subject without one.
    pub fn common_name(&self) -> &str {
        self.subject
            .split(", ")
            .find_map(|rdn| rdn.strip_prefix("CN="))
            .unwrap_or(&self.subject)
    }

    pub fn extension(&self, oid: &str) -> Option<&Extension> {
        self.extensions.iter().find(|e| e.oid == oid)
    }

    pub fn is_self_issued(&self) -> bool {
        self.subject_raw == self.signed.issuer_raw
    }

    /// Whether `issuer` signed this certificate.
    pub fn verify_signed_by(&self, issuer: &Certificate) -> Result<(), String> {
        self.signed.verify_by(issuer).map_err(|e| {
            format!(
                "\"{}\" not signed by \"{}\": {e}",
                self.common_name(),
                issuer.common_name()
            )
        })
    }

    /// Validity at `at`; the error says which bound was crossed.
    pub fn valid_at(&self, at: VerificationTime) -> Result<(), String> {
        let t = at.unix_seconds();
        if t < self.not_before {
            Err(format!(
                "certificate not yet valid: \"{}\" notBefore {}",
                self.subject,
                format_unix_seconds(self.not_before)
            ))
        } else if t > self.not_after {
            Err(format!(
                "certificate expired: \"{}\" notAfter {}",
                self.subject,
                format_unix_seconds(self.not_after)
            ))
        } else {
            Ok(())
        }
    }
}

fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

/// Every `CERTIFICATE` block of a PEM text, in order.
pub fn parse_pem_certificates(bytes: &[u8]) -> Result<Vec<Certificate>, Error> {
    let mut out = Vec::new();
    for pem in x509_parser::pem::Pem::iter_from_buffer(bytes) {
        let pem = pem.map_err(|e| Error::Parse(format!("PEM: {e}")))?;
        if pem.label == "CERTIFICATE" {
            out.push(Certificate::from_der(&pem.contents)?);
        }
    }
    Ok(out)
}

/// A certificate chain as presented in evidence: a leaf and the certificates
/// offered to chain it (issuers, possibly the root). Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub leaf: Certificate,
    pub issuers: Vec<Certificate>,
}

impl Chain {
    /// Leaf first; `what` names the chain in the error for an empty list.
    pub fn from_certs(mut certs: Vec<Certificate>, what: &str) -> Result<Self, Error> {
        if certs.is_empty() {
            return Err(Error::Parse(format!("{what} holds no certificate")));
        }
        let leaf = certs.remove(0);
        Ok(Chain {
            leaf,
            issuers: certs,
        })
    }

    /// Every `CERTIFICATE` block of a PEM text, leaf first.
    pub fn from_pem(pem: &[u8], what: &str) -> Result<Self, Error> {
        Self::from_certs(parse_pem_certificates(pem)?, what)
    }

    /// Path from the leaf through the issuers to one of `anchors`.
    pub fn path_to(&self, anchors: &[Certificate]) -> Result<CertPath, String> {
        build_path(&self.leaf, &self.issuers, anchors)
    }

    pub fn len(&self) -> usize {
        1 + self.issuers.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// A certificate path from a leaf to a trust anchor (anchor last).
#[derive(Debug, Clone)]
pub struct CertPath {
    pub certs: Vec<Certificate>,
}

impl CertPath {
    pub fn describe(&self) -> String {
        self.certs
            .iter()
            .map(|c| format!("\"{}\"", c.common_name()))
            .collect::<Vec<_>>()
            .join(" -> ")
    }
}

const MAX_PATH: usize = 8;

/// Build and verify a path from `leaf` through certificates in `pool` to one
/// of `anchors`. Every signature on the path is verified, every intermediate
/// must carry basicConstraints cA=TRUE, and every anchor must be
/// self-signed. An anchor byte-identical to a pool certificate ends
/// the path there.
pub fn build_path(
    leaf: &Certificate,
    pool: &[Certificate],
    anchors: &[Certificate],
) -> Result<CertPath, String> {
    let mut path = vec![leaf.clone()];
    loop {
        let current = &path[path.len() - 1];
        if anchors.iter().any(|a| a.der == current.der) {
            return Ok(CertPath { certs: path });
        }
        if path.len() >= MAX_PATH {
            return Err(format!(
                "no path to a trust anchor within {MAX_PATH} certificates"
            ));
        }
        if let Some(a) = anchors.iter().find(|a| current.verify_signed_by(a).is_ok()) {
            path.push(a.clone());
            return Ok(CertPath { certs: path });
        }
        let next = pool.iter().find(|c| {
            c.der != current.der
                && !path.iter().any(|p| p.der == c.der)
                && current.verify_signed_by(c).is_ok()
        });
        match next {
            Some(c) => {
                if c.is_ca != Some(true) {
                    return Err(format!(
                        "\"{}\" signs certificates but is not a CA (basicConstraints)",
                        c.common_name()
                    ));
                }
                path.push(c.clone());
            }
            None => {
                return Err(format!(
                    "\"{}\" (issuer \"{}\") does not chain to a trusted root",
                    current.subject, current.issuer
                ))
            }
        }
    }
}

/// A chain check: the named path to a trust anchor.
pub fn chain_check(
    name: &'static str,
    leaf: &Certificate,
    pool: &[Certificate],
    anchors: &[Certificate],
) -> (Check, Option<CertPath>) {
    match build_path(leaf, pool, anchors) {
        Ok(p) => (Check::passed(name, Category::Chain, p.describe()), Some(p)),
        Err(e) => (Check::failed(name, Category::Chain, e), None),
    }
}

/// The chain check of `leaf` and the validity check, as of `at`, of the path
/// it built (of the leaf alone when there is no path).
pub fn path_checks(
    chain_name: &'static str,
    validity_name: &'static str,
    leaf: &Certificate,
    pool: &[Certificate],
    anchors: &[Certificate],
    at: VerificationTime,
) -> [Check; 2] {
    let (chain, path) = chain_check(chain_name, leaf, pool, anchors);
    let certs = match &path {
        Some(p) => p.certs.as_slice(),
        None => std::slice::from_ref(leaf),
    };
    [chain, validity_check(validity_name, certs, at)]
}

/// A validity check over every certificate given, as of `at`.
pub fn validity_check<'a>(
    name: &'static str,
    certs: impl IntoIterator<Item = &'a Certificate>,
    at: VerificationTime,
) -> Check {
    let mut n = 0;
    for c in certs {
        if let Err(e) = c.valid_at(at) {
            return Check::failed(name, Category::Validity, e);
        }
        n += 1;
    }
    if n == 0 {
        return Check::skipped(name, Category::Validity, "no certificate path to check");
    }
    Check::passed(
        name,
        Category::Validity,
        format!("{n} certificates valid at {}", at.to_rfc3339()),
    )
}

/// An owned, parsed certificate revocation list.
#[derive(Debug, Clone)]
pub struct Crl {
    pub issuer: String,
    signed: SignedPart,
    pub this_update: i64,
    pub next_update: Option<i64>,
    pub revoked_serials: Vec<Vec<u8>>,
}

impl Crl {
    pub fn from_der(der: &[u8]) -> Result<Self, Error> {
        let (rest, crl) = CertificateRevocationList::from_der(der)
            .map_err(|e| Error::Parse(format!("CRL: {e}")))?;
        if !rest.is_empty() {
            return Err(Error::parse("CRL: trailing bytes after DER"));
        }
        Ok(Crl {
            issuer: crl.issuer().to_string(),
            signed: SignedPart::new(
                crl.issuer().as_raw(),
                crl.tbs_cert_list.as_ref(),
                &crl.signature_algorithm,
                &crl.signature_value.data,
            ),
            this_update: crl.last_update().timestamp(),
            next_update: crl.next_update().map(|t| t.timestamp()),
            revoked_serials: crl
                .iter_revoked_certificates()
                .map(|r| r.raw_serial().to_vec())
                .collect(),
        })
    }

    pub fn verify_signed_by(&self, issuer: &Certificate) -> Result<(), String> {
        self.signed
            .verify_by(issuer)
            .map_err(|e| format!("CRL of \"{}\": {e}", self.issuer))
    }

    pub fn valid_at(&self, at: VerificationTime) -> Result<(), String> {
        let t = at.unix_seconds();
        if t < self.this_update {
            return Err(format!(
                "CRL of \"{}\" not yet valid (thisUpdate {})",
                self.issuer,
                format_unix_seconds(self.this_update)
            ));
        }
        match self.next_update {
            Some(n) if t > n => Err(format!(
                "CRL of \"{}\" expired (nextUpdate {})",
                self.issuer,
                format_unix_seconds(n)
            )),
            _ => Ok(()),
        }
    }

    pub fn is_revoked(&self, cert: &Certificate) -> bool {
        let strip = |s: &[u8]| -> Vec<u8> {
            let mut v = s;
            while v.len() > 1 && v[0] == 0 {
                v = &v[1..];
            }
            v.to_vec()
        };
        let serial = strip(&cert.serial);
        cert.signed.issuer_raw == self.signed.issuer_raw
            && self.revoked_serials.iter().any(|s| strip(s) == serial)
    }
}

/// Minimal DER walking for vendor-specific extension values (AMD VCEK SPLs,
/// Intel SGX extensions). Only definite lengths; everything bounds-checked.
pub mod der {
    /// One TLV: tag byte and content.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Tlv<'a> {
        pub tag: u8,
        pub content: &'a [u8],
    }

    pub const INTEGER: u8 = 0x02;
    pub const OCTET_STRING: u8 = 0x04;
    pub const OID: u8 = 0x06;
    pub const ENUMERATED: u8 = 0x0A;
    pub const SEQUENCE: u8 = 0x30;

    /// Read one TLV from the front of `input`; returns it and the rest.
    pub fn read(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), String> {
        let (&tag, rest) = input.split_first().ok_or("DER: empty input")?;
        if tag & 0x1F == 0x1F {
            return Err("DER: multi-byte tags not supported".into());
        }
        let (&l0, rest) = rest.split_first().ok_or("DER: missing length")?;
        let (len, rest) = if l0 < 0x80 {
            (l0 as usize, rest)
        } else {
            let n = (l0 & 0x7F) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return Err("DER: bad length".into());
            }
            let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
            (len, &rest[n..])
        };
        if rest.len() < len {
            return Err("DER: content truncated".into());
        }
        Ok((
            Tlv {
                tag,
                content: &rest[..len],
            },
            &rest[len..],
        ))
    }

    /// Exactly one TLV with this tag.
    pub fn expect(input: &[u8], tag: u8) -> Result<&[u8], String> {
        let (tlv, rest) = read(input)?;
        if tlv.tag != tag || !rest.is_empty() {
            return Err(format!("DER: expected a single tag {tag:#04x}"));
        }
        Ok(tlv.content)
    }

    /// Every TLV in a sequence of TLVs.
    pub fn items(mut input: &[u8]) -> Result<Vec<Tlv<'_>>, String> {
        let mut out = Vec::new();
        while !input.is_empty() {
            let (t, rest) = read(input)?;
            out.push(t);
            input = rest;
        }
        Ok(out)
    }

    /// An unsigned INTEGER (or ENUMERATED) content that fits in u64.
    pub fn uint(content: &[u8]) -> Result<u64, String> {
        let mut c = content;
        while c.len() > 1 && c[0] == 0 {
            c = &c[1..];
        }
        if c.is_empty() || c.len() > 8 || c[0] & 0x80 != 0 && content.len() == c.len() {
            return Err("DER: integer out of range".into());
        }
        Ok(c.iter().fold(0u64, |a, &b| (a << 8) | b as u64))
    }

    /// Dotted text of OID content bytes.
    pub fn oid_string(content: &[u8]) -> Result<String, String> {
        if content.is_empty() {
            return Err("DER: empty OID".into());
        }
        let mut arcs: Vec<u64> = Vec::new();
        let mut acc: u64 = 0;
        for (i, &b) in content.iter().enumerate() {
            if acc > (u64::MAX >> 7) {
                return Err("DER: OID arc too large".into());
            }
            acc = (acc << 7) | (b & 0x7F) as u64;
            if b & 0x80 == 0 {
                if arcs.is_empty() {
                    let first = (acc / 40).min(2);
                    arcs.push(first);
                    arcs.push(acc - first * 40);
                } else {
                    arcs.push(acc);
                }
                acc = 0;
            } else if i == content.len() - 1 {
                return Err("DER: OID truncated".into());
            }
        }
        Ok(arcs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join("."))
    }
}
