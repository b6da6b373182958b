//! The evidence envelope: a tagged COSE_Sign1 (RFC 9052) whose payload is the
//! canonical CBOR body, signed with ES384 by the evidence signing key
//! (`node.evidence_key` in the body).

use super::document::EvidenceBody;
use crate::Error;
use coset::{iana, CoseSign1, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};

/// ECDSA P-384 r ‖ s.
pub const SIGNATURE_LEN: usize = 96;
/// SEC1 uncompressed P-384 point.
pub const PUBLIC_KEY_LEN: usize = 97;

/// The evidence signing key (P-384). In TPM mode its public part is bound
/// by the quote (through the binding hash); in software mode nothing vouches
/// for it.
#[derive(Debug)]
pub struct EvidenceSigningKey {
    pair: EcdsaKeyPair,
    pkcs8: Vec<u8>,
}

impl EvidenceSigningKey {
    /// A fresh key (the node makes one per boot).
    pub fn generate() -> Result<Self, Error> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
            .map_err(|_| Error::Argument("cannot generate a P-384 key".into()))?;
        Self::from_pkcs8(doc.as_ref())
    }

    /// From PKCS#8 DER.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, Error> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, der, &rng)
            .map_err(|e| Error::Argument(format!("evidence key: not a P-384 PKCS#8 key: {e}")))?;
        Ok(EvidenceSigningKey {
            pair,
            pkcs8: der.to_vec(),
        })
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
        .protected(
            HeaderBuilder::new()
                .algorithm(iana::Algorithm::ES384)
                .build(),
        )
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
    // Bound nesting before coset walks it.
    super::document::decode_value(bytes)?;
    let sign1 = CoseSign1::from_tagged_slice(bytes)
        .map_err(|e| Error::Parse(format!("COSE_Sign1: {e}")))?;
    let again = sign1
        .clone()
        .to_tagged_vec()
        .map_err(|e| Error::Parse(format!("COSE_Sign1: {e}")))?;
    if again != bytes {
        return Err(Error::parse("COSE_Sign1 is not in deterministic CBOR"));
    }
    let payload = sign1
        .payload
        .as_deref()
        .ok_or_else(|| Error::parse("COSE_Sign1 without a payload"))?;
    let body = EvidenceBody::from_cbor(payload)?;
    Ok(Envelope { sign1, body })
}

/// Verify the envelope's signature with the body's evidence key: protected
/// `alg` ES384 only, nothing else protected, no critical headers.
pub fn verify_envelope(env: &Envelope) -> Result<String, String> {
    let p = &env.sign1.protected.header;
    if p.alg
        != Some(coset::RegisteredLabelWithPrivate::Assigned(
            iana::Algorithm::ES384,
        ))
    {
        return Err(format!("protected alg is {:?}, not ES384 (-35)", p.alg));
    }
    if !p.crit.is_empty() {
        return Err("critical header parameters present".into());
    }
    let key = &env.body.node.evidence_key;
    if key.len() != PUBLIC_KEY_LEN || key.first() != Some(&4) {
        return Err(format!(
            "node.evidence_key is not an uncompressed P-384 point ({} bytes)",
            key.len()
        ));
    }
    if env.sign1.signature.len() != SIGNATURE_LEN {
        return Err(format!(
            "signature is {} bytes, not {SIGNATURE_LEN}",
            env.sign1.signature.len()
        ));
    }
    use crate::crypto::{verify_ecdsa, Ecdsa, SigEncoding};
    env.sign1
        .verify_signature(b"", |sig, tbs| {
            verify_ecdsa(Ecdsa::P384Sha384, SigEncoding::Fixed, key, tbs, sig)
        })
        .map_err(|_| "ES384 signature does not verify with node.evidence_key".to_string())?;
    Ok("COSE_Sign1 ES384 by node.evidence_key".into())
}
