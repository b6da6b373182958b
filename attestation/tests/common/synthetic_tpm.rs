//! TPM-mode evidence made in software, without a TPM or swtpm: an EK PKI
//! (root CA → intermediate CA → EK certificate with tcg-kp-EKCertificate),
//! a software P-256 attestation key with a TPM2B_PUBLIC of a real AK's
//! attributes, and a TPMS_ATTEST quote of the PCRs recorded from swtpm
//! (`testdata/tpm/pcrs.txt`, with the event log that replays to them),
//! signed by that AK. Used by the tests and by `examples/verify_bench.rs`
//! (which includes this file by path).
#![allow(dead_code)]

use bulwark_attestation::evidence::document::{AkActivation, Pcr, Tpm, TpmQuote};
use bulwark_attestation::evidence::{
    build_evidence, EvidenceBody, EvidenceInputs, EvidenceSigningKey,
};
use bulwark_attestation::tpm::structures::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use ring::digest::{digest, SHA256};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};

const TPM_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/tpm/");

/// tcg-kp-EKCertificate.
const TCG_KP_EK_CERTIFICATE: [u64; 5] = [2, 23, 133, 8, 1];

/// An EK certificate and the CAs above it.
#[derive(Clone)]
pub struct EkPki {
    /// The root CA, PEM (what a policy's `node.ek_roots` names).
    pub root_pem: String,
    pub root_der: Vec<u8>,
    pub intermediate_der: Vec<u8>,
    pub ek_der: Vec<u8>,
}

/// PEM text of one DER block.
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn unix(t: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t).expect("time in range")
}

impl EkPki {
    /// Root and intermediate P-384 CAs valid 2000..2100; the EK certificate
    /// (a P-256 EK) valid from `not_before` to `not_after` (Unix seconds).
    pub fn generate(not_before: i64, not_after: i64) -> Self {
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "Bulwark Test EK Root CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = rcgen::date_time_ymd(2000, 1, 1);
        p.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let root = p.self_signed(&root_key).unwrap();

        let int_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "Bulwark Test EK Intermediate CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = rcgen::date_time_ymd(2000, 1, 1);
        p.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let intermediate = p.signed_by(&int_key, &root, &root_key).unwrap();

        let ek_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "Bulwark Test TPM EK");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::Other(
            TCG_KP_EK_CERTIFICATE.to_vec(),
        )];
        p.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
        p.not_before = unix(not_before);
        p.not_after = unix(not_after);
        let ek = p.signed_by(&ek_key, &intermediate, &int_key).unwrap();

        EkPki {
            root_pem: pem("CERTIFICATE", root.der()),
            root_der: root.der().to_vec(),
            intermediate_der: intermediate.der().to_vec(),
            ek_der: ek.der().to_vec(),
        }
    }
}

/// A restricted P-256 ECDSA-SHA256 signing key standing in for a TPM AK.
pub struct SoftwareAk {
    pair: EcdsaKeyPair,
    /// TPM2B_PUBLIC.
    pub public: Vec<u8>,
    /// nameAlg ‖ SHA-256(TPMT_PUBLIC).
    pub name: Vec<u8>,
}

impl SoftwareAk {
    pub fn generate() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = pair.public_key().as_ref();
        let (x, y) = (&point[1..33], &point[33..65]);
        let mut t = Vec::new();
        t.extend_from_slice(&TPM_ALG_ECC.to_be_bytes());
        t.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
        let attributes = attr::FIXED_TPM
            | attr::FIXED_PARENT
            | attr::SENSITIVE_DATA_ORIGIN
            | attr::USER_WITH_AUTH
            | attr::RESTRICTED
            | attr::SIGN_ENCRYPT;
        t.extend_from_slice(&attributes.to_be_bytes());
        t.extend_from_slice(&0u16.to_be_bytes()); // authPolicy
        t.extend_from_slice(&TPM_ALG_NULL.to_be_bytes()); // symmetric
        t.extend_from_slice(&TPM_ALG_ECDSA.to_be_bytes());
        t.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
        t.extend_from_slice(&TPM_ECC_NIST_P256.to_be_bytes());
        t.extend_from_slice(&TPM_ALG_NULL.to_be_bytes()); // kdf
        for c in [x, y] {
            t.extend_from_slice(&(c.len() as u16).to_be_bytes());
            t.extend_from_slice(c);
        }
        let mut public = (t.len() as u16).to_be_bytes().to_vec();
        public.extend_from_slice(&t);
        let mut name = TPM_ALG_SHA256.to_be_bytes().to_vec();
        name.extend_from_slice(digest(&SHA256, &t).as_ref());
        SoftwareAk { pair, public, name }
    }

    /// A TPMS_ATTEST quote of `pcrs` (SHA-256 bank, ascending indexes) with
    /// this extraData, and its TPMT_SIGNATURE.
    pub fn quote(&self, extra_data: &[u8], pcrs: &[Pcr]) -> (Vec<u8>, Vec<u8>) {
        let mut a = Vec::new();
        a.extend_from_slice(&TPM_GENERATED_VALUE.to_be_bytes());
        a.extend_from_slice(&TPM_ST_ATTEST_QUOTE.to_be_bytes());
        for b in [&self.name[..], extra_data] {
            a.extend_from_slice(&(b.len() as u16).to_be_bytes());
            a.extend_from_slice(b);
        }
        a.extend_from_slice(&1_000_000u64.to_be_bytes()); // clock
        a.extend_from_slice(&1u32.to_be_bytes()); // resetCount
        a.extend_from_slice(&0u32.to_be_bytes()); // restartCount
        a.push(1); // safe
        a.extend_from_slice(&0x2023_0101_0000_0000u64.to_be_bytes()); // firmwareVersion
        a.extend_from_slice(&1u32.to_be_bytes()); // one bank
        a.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
        let mut bitmap = [0u8; 3];
        for p in pcrs {
            bitmap[(p.index / 8) as usize] |= 1 << (p.index % 8);
        }
        a.push(bitmap.len() as u8);
        a.extend_from_slice(&bitmap);
        let mut sorted: Vec<&Pcr> = pcrs.iter().collect();
        sorted.sort_by_key(|p| p.index);
        let concat: Vec<u8> = sorted.iter().flat_map(|p| p.sha256.0.clone()).collect();
        let pcr_digest = digest(&SHA256, &concat);
        a.extend_from_slice(&32u16.to_be_bytes());
        a.extend_from_slice(pcr_digest.as_ref());

        let sig = self.pair.sign(&SystemRandom::new(), &a).unwrap();
        let (r, s) = sig.as_ref().split_at(32);
        let mut t = Vec::new();
        t.extend_from_slice(&TPM_ALG_ECDSA.to_be_bytes());
        t.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
        for c in [r, s] {
            t.extend_from_slice(&32u16.to_be_bytes());
            t.extend_from_slice(c);
        }
        (a, t)
    }
}

/// The PCR values recorded from swtpm (0..=12, SHA-256).
pub fn recorded_pcrs() -> Vec<Pcr> {
    let text = std::fs::read_to_string(format!("{TPM_DIR}pcrs.txt")).unwrap();
    text.lines()
        .map(|l| {
            let (i, v) = l.split_once(' ').unwrap();
            Pcr {
                index: i.parse().unwrap(),
                sha256: hex::decode(v).unwrap().into(),
            }
        })
        .collect()
}

/// The event log recorded with them.
pub fn recorded_event_log() -> Vec<u8> {
    std::fs::read(format!("{TPM_DIR}eventlog.bin")).unwrap()
}

/// The TPM part of a document, without its quote.
/// The inputs that reproduce `body` (node image, launch, isolation, freshness),
/// without its TPM, TEE and GPU parts.
pub fn inputs_of(body: &EvidenceBody) -> EvidenceInputs {
    EvidenceInputs {
        node_image: body.node.image.clone(),
        tpm: None,
        launch: body.launch.clone(),
        isolation: body.isolation.clone(),
        tee: None,
        gpus: vec![],
        nonce: body.freshness.nonce.0.clone(),
        timestamp: body.freshness.timestamp,
        tls_key_sha256: body.freshness.tls_key_sha256.as_ref().map(|t| t.0.clone()),
    }
}

pub fn tpm_without_quote(pki: &EkPki, ak: &SoftwareAk, enrolled_at: u64) -> Tpm {
    Tpm {
        ek_certificate: pki.ek_der.clone().into(),
        ek_chain: vec![pki.intermediate_der.clone().into()],
        ak_public: ak.public.clone().into(),
        ak_activation: AkActivation {
            enrolled_at,
            ak_name: ak.name.clone().into(),
        },
        quote: None,
    }
}

/// A signed TPM-mode document: `inputs` with this node's TPM evidence, the
/// quote's extraData the body's binding hash (what a node agent does).
pub fn tpm_document(
    inputs: &EvidenceInputs,
    key: &EvidenceSigningKey,
    pki: &EkPki,
    ak: &SoftwareAk,
    enrolled_at: u64,
) -> Vec<u8> {
    tpm_document_with(
        inputs,
        key,
        pki,
        ak,
        enrolled_at,
        recorded_pcrs(),
        recorded_event_log(),
    )
}

/// [`tpm_document`] with these PCR values and the event log that replays to them.
pub fn tpm_document_with(
    inputs: &EvidenceInputs,
    key: &EvidenceSigningKey,
    pki: &EkPki,
    ak: &SoftwareAk,
    enrolled_at: u64,
    pcrs: Vec<Pcr>,
    event_log: Vec<u8>,
) -> Vec<u8> {
    let mut i = inputs.clone();
    i.tpm = Some(tpm_without_quote(pki, ak, enrolled_at));
    let binding = i.body(key.public_key()).unwrap().binding_hash().unwrap();
    let (attest, signature) = ak.quote(&binding, &pcrs);
    if let Some(t) = i.tpm.as_mut() {
        t.quote = Some(TpmQuote {
            attest: attest.into(),
            signature: signature.into(),
            pcrs,
            event_log: event_log.into(),
        });
    }
    build_evidence(&i, key).unwrap()
}
