//! The evidence envelope: a tagged COSE_Sign1 (RFC 9052) whose payload is the
//! canonical CBOR body, signed by the evidence signing key (`node.evidence_key`
//! in the body) with ES256 (P-256, what [`EvidenceSigningKey::generate`] makes)
//! or ES384 (P-384). The verifier takes the algorithm from the protected header
//! and requires the key to be of that curve.
//!
//! Why ES256 by default: in TPM mode the evidence key is vouched for by a quote
//! of the TPM's P-256 attestation key, so a P-384 document signature adds no
//! strength to the chain, and it costs a verifier about 4× the time of a P-256
//! one (`docs/attestation.md`, "Performance").

use super::document::EvidenceBody;
use crate::Error;
use coset::{
    iana, AsCborValue, CborSerializable, CoseSign1, CoseSign1Builder, HeaderBuilder,
    TaggedCborSerializable,
};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};

/// The document signature algorithms: COSE algorithm, the ring signing
/// algorithm, the verifier's curve, public key and r ‖ s lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentAlgorithm {
    /// ECDSA P-256 with SHA-256 (the default).
    Es256,
    /// ECDSA P-384 with SHA-384.
    Es384,
}

impl DocumentAlgorithm {
    fn cose(self) -> iana::Algorithm {
        match self {
            DocumentAlgorithm::Es256 => iana::Algorithm::ES256,
            DocumentAlgorithm::Es384 => iana::Algorithm::ES384,
        }
    }

    fn signing(self) -> &'static signature::EcdsaSigningAlgorithm {
        match self {
            DocumentAlgorithm::Es256 => &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            DocumentAlgorithm::Es384 => &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        }
    }

    fn verifying(self) -> crate::crypto::Ecdsa {
        match self {
            DocumentAlgorithm::Es256 => crate::crypto::Ecdsa::P256Sha256,
            DocumentAlgorithm::Es384 => crate::crypto::Ecdsa::P384Sha384,
        }
    }

    /// SEC1 uncompressed point length.
    pub fn public_key_len(self) -> usize {
        match self {
            DocumentAlgorithm::Es256 => 65,
            DocumentAlgorithm::Es384 => 97,
        }
    }

    /// r ‖ s length.
    pub fn signature_len(self) -> usize {
        self.public_key_len() - 1
    }

    /// `ES256` or `ES384`.
    pub fn name(self) -> &'static str {
        match self {
            DocumentAlgorithm::Es256 => "ES256",
            DocumentAlgorithm::Es384 => "ES384",
        }
    }

    fn from_header(alg: &Option<coset::Algorithm>) -> Option<Self> {
        use coset::RegisteredLabelWithPrivate::Assigned;
        match alg {
            Some(Assigned(iana::Algorithm::ES256)) => Some(DocumentAlgorithm::Es256),
            Some(Assigned(iana::Algorithm::ES384)) => Some(DocumentAlgorithm::Es384),
            _ => None,
        }
    }
}

/// The evidence signing key (P-256 or P-384). In TPM mode its public part is
/// bound by the quote (through the binding hash); in software mode nothing
/// vouches for it.
#[derive(Debug)]
pub struct EvidenceSigningKey {
    pair: EcdsaKeyPair,
    alg: DocumentAlgorithm,
    pkcs8: Vec<u8>,
}

impl EvidenceSigningKey {
    /// A fresh P-256 key (the node makes one per boot): ES256 documents.
    pub fn generate() -> Result<Self, Error> {
        Self::generate_for(DocumentAlgorithm::Es256)
    }

    /// A fresh key for `alg`.
    pub fn generate_for(alg: DocumentAlgorithm) -> Result<Self, Error> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(alg.signing(), &rng)
            .map_err(|_| Error::Argument(format!("cannot generate an {} key", alg.name())))?;
        Self::from_pkcs8(doc.as_ref())
    }

    /// From PKCS#8 DER: a P-256 (ES256) or P-384 (ES384) key.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, Error> {
        let rng = SystemRandom::new();
        [DocumentAlgorithm::Es256, DocumentAlgorithm::Es384]
            .into_iter()
            .find_map(|alg| {
                EcdsaKeyPair::from_pkcs8(alg.signing(), der, &rng)
                    .ok()
                    .map(|pair| EvidenceSigningKey {
                        pair,
                        alg,
                        pkcs8: der.to_vec(),
                    })
            })
            .ok_or_else(|| Error::Argument("evidence key: not a P-256 or P-384 PKCS#8 key".into()))
    }

    /// The algorithm its documents are signed with.
    pub fn algorithm(&self) -> DocumentAlgorithm {
        self.alg
    }

    /// PKCS#8 DER of the private key.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// SEC1 uncompressed public key (what goes into `node.evidence_key`).
    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, Error> {
        self.pair
            .sign(&SystemRandom::new(), msg)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| Error::Argument("ECDSA signing failed".into()))
    }
}

/// Sign a body: the tagged COSE_Sign1 bytes. The body's `node.evidence_key`
/// must be this key's public key.
pub fn sign_body(body: &EvidenceBody, key: &EvidenceSigningKey) -> Result<Vec<u8>, Error> {
    if body.node.evidence_key.0 != key.public_key() {
        return Err(Error::Argument(
            "node.evidence_key is not the signing key's public key".into(),
        ));
    }
    let payload = body.to_cbor()?;
    let mut sign1 = CoseSign1Builder::new()
        .protected(HeaderBuilder::new().algorithm(key.alg.cose()).build())
        .payload(payload)
        .build();
    let tbs = sign1.tbs_data(b"");
    sign1.signature = key.sign(&tbs)?;
    sign1
        .to_tagged_vec()
        .map_err(|e| Error::Parse(format!("COSE encode: {e}")))
}

/// A parsed envelope: the body, the bytes it was decoded from, the signature.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub sign1: CoseSign1,
    pub body: EvidenceBody,
}

/// Parse a document: a tagged COSE_Sign1 in canonical form (re-encoding it
/// gives the same bytes) whose payload is a canonical evidence body.
pub fn parse_document(bytes: &[u8]) -> Result<Envelope, Error> {
    if bytes.len() > super::document::MAX_DOCUMENT_LEN {
        return Err(Error::parse("evidence document too large"));
    }
    // One bounded walk of the whole document; coset takes the tree it built.
    let value = super::document::decode_value(bytes)?;
    let inner = match value {
        ciborium::value::Value::Tag(tag, inner) if tag == CoseSign1::TAG => *inner,
        _ => return Err(Error::parse("COSE_Sign1: not tagged 18 (COSE_Sign1)")),
    };
    let sign1 =
        CoseSign1::from_cbor_value(inner).map_err(|e| Error::Parse(format!("COSE_Sign1: {e}")))?;
    let payload = sign1
        .payload
        .as_deref()
        .ok_or_else(|| Error::parse("COSE_Sign1 without a payload"))?;
    if deterministic_envelope(&sign1, payload)? != bytes {
        return Err(Error::parse("COSE_Sign1 is not in deterministic CBOR"));
    }
    let body = EvidenceBody::from_cbor(payload)?;
    Ok(Envelope { sign1, body })
}

/// The deterministic encoding of `sign1`: tag 18, a 4-array of the protected
/// header's bytes as received, the unprotected header, the payload and the
/// signature. Built by hand so that the payload is copied once, not walked.
fn deterministic_envelope(sign1: &CoseSign1, payload: &[u8]) -> Result<Vec<u8>, Error> {
    let protected = match &sign1.protected.original_data {
        Some(b) => b.clone(),
        None => sign1
            .protected
            .clone()
            .to_vec()
            .map_err(|e| Error::Parse(format!("COSE_Sign1 protected header: {e}")))?,
    };
    let unprotected = sign1
        .unprotected
        .clone()
        .to_vec()
        .map_err(|e| Error::Parse(format!("COSE_Sign1 unprotected header: {e}")))?;
    let mut out = Vec::with_capacity(payload.len() + protected.len() + unprotected.len() + 128);
    out.extend_from_slice(&[0xd2, 0x84]); // tag 18, array of 4
    push_bstr(&mut out, &protected);
    out.extend_from_slice(&unprotected);
    push_bstr(&mut out, payload);
    push_bstr(&mut out, &sign1.signature);
    Ok(out)
}

/// A CBOR byte string (major type 2) with the shortest length head.
fn push_bstr(out: &mut Vec<u8>, b: &[u8]) {
    let n = b.len() as u64;
    match n {
        0..=23 => out.push(0x40 | n as u8),
        24..=0xff => out.extend_from_slice(&[0x58, n as u8]),
        0x100..=0xffff => {
            out.push(0x59);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(0x5a);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(0x5b);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
    out.extend_from_slice(b);
}

/// Verify the envelope's signature with the body's evidence key: protected
/// `alg` ES256 or ES384 and a key of that curve, nothing else protected, no
/// critical headers.
pub fn verify_envelope(env: &Envelope) -> Result<String, String> {
    let p = &env.sign1.protected.header;
    let alg = DocumentAlgorithm::from_header(&p.alg).ok_or_else(|| {
        format!(
            "protected alg is {:?}, not ES256 (-7) or ES384 (-35)",
            p.alg
        )
    })?;
    if !p.crit.is_empty() {
        return Err("critical header parameters present".into());
    }
    let key = &env.body.node.evidence_key;
    if key.len() != alg.public_key_len() || key.first() != Some(&4) {
        return Err(format!(
            "node.evidence_key is not an uncompressed point of the {} curve ({} bytes)",
            alg.name(),
            key.len()
        ));
    }
    if env.sign1.signature.len() != alg.signature_len() {
        return Err(format!(
            "signature is {} bytes, not {} for {}",
            env.sign1.signature.len(),
            alg.signature_len(),
            alg.name()
        ));
    }
    use crate::crypto::{verify_ecdsa, SigEncoding};
    env.sign1
        .verify_signature(b"", |sig, tbs| {
            verify_ecdsa(alg.verifying(), SigEncoding::Fixed, key, tbs, sig)
        })
        .map_err(|_| {
            format!(
                "{} signature does not verify with node.evidence_key",
                alg.name()
            )
        })?;
    Ok(format!("COSE_Sign1 {} by node.evidence_key", alg.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_curves_sign_and_a_mismatched_header_or_key_is_refused() {
        for alg in [DocumentAlgorithm::Es256, DocumentAlgorithm::Es384] {
            let key = EvidenceSigningKey::generate_for(alg).unwrap();
            assert_eq!(key.algorithm(), alg);
            let again = EvidenceSigningKey::from_pkcs8(key.pkcs8()).unwrap();
            assert_eq!(
                (again.algorithm(), again.public_key()),
                (alg, key.public_key())
            );
            let tbs = b"to be signed";
            let sig = key.sign(tbs).unwrap();
            assert_eq!(sig.len(), alg.signature_len());
            assert_eq!(key.public_key().len(), alg.public_key_len());
            crate::crypto::verify_ecdsa(
                alg.verifying(),
                crate::crypto::SigEncoding::Fixed,
                &key.public_key(),
                tbs,
                &sig,
            )
            .unwrap();
        }
        assert!(EvidenceSigningKey::from_pkcs8(b"not a key").is_err());
    }

    /// The sample body with this key and a GPU whose certificate chain is
    /// longer than ciborium's 4 KiB scratch buffer, signed.
    fn signed_sample(key: &EvidenceSigningKey) -> (EvidenceBody, Vec<u8>) {
        let mut body = crate::evidence::document::tests::sample();
        body.node.evidence_key = key.public_key().into();
        body.gpus.push(crate::evidence::document::Gpu {
            host_bdf: "0000:41:00.0".into(),
            spdm: vec![7; 300].into(),
            cert_chain: vec![b'A'; 5000].into(),
            rims: vec![],
        });
        let doc = sign_body(&body, key).unwrap();
        (body, doc)
    }

    /// A COSE_Sign1 around `payload` written with a 4-byte length head for the
    /// payload when `long_head`, as a careless encoder would.
    fn envelope(payload: &[u8], signature: &[u8], long_head: bool) -> Vec<u8> {
        let protected = [0xa1, 0x01, 0x26]; // {1: -7}
        let mut out = vec![0xd2, 0x84, 0x43];
        out.extend_from_slice(&protected);
        out.push(0xa0);
        if long_head {
            out.push(0x5a);
            out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            out.extend_from_slice(payload);
        } else {
            push_bstr(&mut out, payload);
        }
        push_bstr(&mut out, signature);
        out
    }

    #[test]
    fn a_document_parses_back_to_its_body_and_any_other_encoding_is_refused() {
        let key = EvidenceSigningKey::generate().unwrap();
        let (body, doc) = signed_sample(&key);
        let env = parse_document(&doc).unwrap();
        assert_eq!(env.body, body);
        verify_envelope(&env).unwrap();
        let payload = body.to_cbor().unwrap();
        let sig = env.sign1.signature.clone();
        // The envelope written by hand is the same bytes as the signer's.
        assert_eq!(envelope(&payload, &sig, false), doc);

        let refused = |bytes: &[u8]| match parse_document(bytes) {
            Err(Error::Parse(m)) => m,
            other => panic!("accepted or wrong error: {other:?}"),
        };
        assert!(refused(&envelope(&payload, &sig, true)).contains("not in deterministic CBOR"));
        assert!(refused(&doc[1..]).contains("not tagged 18"));
        let mut trailing = doc.clone();
        trailing.push(0);
        assert!(refused(&trailing).contains("after the CBOR item"));
        // The body's top-level map in reverse order: same content, not canonical.
        let value: ciborium::value::Value = ciborium::de::from_reader(&payload[..]).unwrap();
        let mut entries = value.into_map().unwrap();
        entries.reverse();
        let mut reversed = Vec::new();
        ciborium::ser::into_writer(&ciborium::value::Value::Map(entries.clone()), &mut reversed)
            .unwrap();
        assert_ne!(reversed, payload);
        assert!(refused(&envelope(&reversed, &sig, false))
            .contains("evidence body is not in deterministic CBOR"));
        // An extra key in the body.
        entries.reverse();
        entries.push(("extra".into(), 1.into()));
        let mut extra = Vec::new();
        ciborium::ser::into_writer(&ciborium::value::Value::Map(entries), &mut extra).unwrap();
        assert!(refused(&envelope(&extra, &sig, false)).contains("evidence body"));
    }
}
