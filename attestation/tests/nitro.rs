//! Nitro attestation documents on the real fixtures (testdata/PROVENANCE.md).

mod common;

use bulwark_attestation::checks::{Category, Outcome, Status};
use bulwark_attestation::nitro::{self, Document, Policy};
use bulwark_attestation::roots::TrustStore;
use bulwark_attestation::{Error, Verification, VerificationTime};
use common::*;

const DEBUG_TS: i64 = 1695049410860;
const PROD_TS: i64 = 1665651482136;

fn debug_doc() -> Document {
    Document::parse_any(&read("nitro/doc-2023-debug.b64")).unwrap()
}

fn prod_doc() -> Document {
    Document::parse_any(&read("nitro/doc-beta-production.cbor")).unwrap()
}

fn verify(d: &Document, policy: &Policy, ms: i64) -> Verification {
    nitro::verify(
        d,
        &nitro::default_trust(),
        policy,
        VerificationTime::from_unix_ms(ms),
    )
}

#[test]
fn debug_document_is_valid_at_its_timestamp_but_fails_default_policy() {
    let d = debug_doc();
    assert_eq!(d.doc.timestamp as i64, DEBUG_TS);
    let v = verify(&d, &Policy::default(), DEBUG_TS);
    let failed: Vec<_> = v.failures().map(|c| c.name).collect();
    assert_eq!(failed, ["policy-debug"], "{}", v.to_text());
    let v = verify(
        &d,
        &Policy {
            allow_debug: true,
            ..Policy::default()
        },
        DEBUG_TS,
    );
    assert_eq!(v.status(), Status::Warning, "{}", v.to_text());
}

/// The PCR values this production document carries (PCR0, 1, 2, 8 set).
const PROD_PCRS: [(u64, &str); 4] = [
    (0, "f4d48b81a460c9916d1e685119074bf24660afd3e34fae9fca0a0d28d9d5599936332687e6f66fc890ac8cf150142d8b"),
    (1, "bcdf05fefccaa8e55bf2c8d6dee9e79bbff31e34bf28a99aa19e6b29c37ee80b214a414b7607236edf26fcb78654e63f"),
    (2, "d8f114da658de5481f8d9ec73907feb553560787522f705c92d7d96beed8e15e2aa611984e098c576832c292e8dc469a"),
    (8, "8790eb3cce6c83d07e84b126dc61ca923333d6f66615c4a79157de48c5ab2418bdc60746ea7b7afbff03a1c6210201cb"),
];

#[test]
fn production_document_is_valid_with_its_pcrs() {
    let d = prod_doc();
    assert_eq!(d.doc.timestamp as i64, PROD_TS);
    let expect_pcrs: Vec<(u64, Vec<u8>)> = PROD_PCRS
        .iter()
        .map(|(i, h)| (*i, hex::decode(h).unwrap()))
        .collect();
    let policy = Policy {
        expect_pcrs: expect_pcrs.clone(),
        ..Policy::default()
    };
    let v = verify(&d, &policy, PROD_TS);
    assert_eq!(v.status(), Status::Affirming, "{}", v.to_text());
    assert_eq!(v.check("expect-pcrs").unwrap().result, Outcome::Passed);

    let mut wrong = expect_pcrs;
    wrong[3].1[0] ^= 1;
    let v = verify(
        &d,
        &Policy {
            expect_pcrs: wrong,
            ..Policy::default()
        },
        PROD_TS,
    );
    assert_eq!(
        v.failures().map(|c| c.name).collect::<Vec<_>>(),
        ["expect-pcrs"]
    );
    let v = verify(
        &d,
        &Policy {
            expect_nonce: Some(vec![1, 2, 3]),
            ..Policy::default()
        },
        PROD_TS,
    );
    assert_eq!(
        v.failures().map(|c| c.name).collect::<Vec<_>>(),
        ["expect-nonce"]
    );
}

/// The spec file copied beside the document describes another upstream
/// document (its "file" member names a PEM from 18-1-23): PCR1 agrees, PCR0,
/// PCR2 and PCR8 do not, and expecting them must fail.
#[test]
fn spec_file_pcrs_belong_to_another_document() {
    let spec: serde_json::Value =
        serde_json::from_slice(&read("nitro/doc-beta-production.spec.json")).unwrap();
    assert!(spec["file"].as_str().unwrap().ends_with("18-1-23.pem"));
    let spec_pcr = |i: u64| hex::decode(spec["pcrs"][format!("pcr{i}")].as_str().unwrap()).unwrap();
    let d = prod_doc();
    let one = Policy {
        expect_pcrs: vec![(1, spec_pcr(1))],
        ..Policy::default()
    };
    assert!(verify(&d, &one, PROD_TS).is_ok());
    let all = Policy {
        expect_pcrs: [0, 1, 2, 8].map(|i| (i, spec_pcr(i))).to_vec(),
        ..Policy::default()
    };
    let v = verify(&d, &all, PROD_TS);
    assert_eq!(
        v.failures().map(|c| c.name).collect::<Vec<_>>(),
        ["expect-pcrs"]
    );
}

#[test]
fn leaf_certificates_expire_within_hours() {
    let d = prod_doc();
    let later = verify(&d, &Policy::default(), PROD_TS + 4 * 3600 * 1000);
    let c = later.check("cert-validity").unwrap();
    assert_eq!(
        (c.result, c.category),
        (Outcome::Failed, Category::Validity)
    );
    assert!(c.detail.contains("certificate expired"), "{}", c.detail);
    let before = verify(
        &d,
        &Policy::default(),
        d.doc.certificate.not_before * 1000 - 1000,
    );
    assert!(before
        .check("cert-validity")
        .unwrap()
        .detail
        .contains("not yet valid"));
}

#[test]
fn wrong_root_fails_the_chain_check() {
    let intel = TrustStore::from_pem(&read("tdx/intel-sgx-root-ca.pem")).unwrap();
    let v = nitro::verify(
        &prod_doc(),
        &intel,
        &Policy::default(),
        VerificationTime::from_unix_ms(PROD_TS),
    );
    let c = v.check("cert-chain").unwrap();
    assert_eq!((c.result, c.category), (Outcome::Failed, Category::Chain));
}

#[test]
fn tagged_and_indefinite_length_encodings_verify() {
    let raw = read("nitro/doc-beta-production.cbor");
    assert_eq!(raw[0], 0x84);
    let mut tagged = vec![0xD2];
    tagged.extend_from_slice(&raw);
    let mut indefinite = vec![0x9F];
    indefinite.extend_from_slice(&raw[1..]);
    indefinite.push(0xFF);
    for bytes in [tagged, indefinite] {
        let d = Document::parse_any(&bytes).unwrap();
        assert!(verify(&d, &Policy::default(), PROD_TS).is_ok());
    }
}

/// Every byte of protected header, payload and signature: either the
/// document no longer parses, or the signature check fails.
#[test]
fn every_signed_byte_is_covered() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let raw = read("nitro/doc-beta-production.cbor");
    let (parse_errors, sig_failures) = (AtomicUsize::new(0), AtomicUsize::new(0));
    for_each_flip(&raw, 1..raw.len(), |pos, b| match Document::parse(b) {
        Err(Error::Parse(_)) => {
            parse_errors.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => panic!("pos {pos}: {e}"),
        Ok(d) => {
            let c = nitro::check_signature(&d);
            assert_eq!(
                (c.result, c.category),
                (Outcome::Failed, Category::Signature),
                "pos {pos}"
            );
            sig_failures.fetch_add(1, Ordering::Relaxed);
        }
    });
    let (p, s) = (parse_errors.into_inner(), sig_failures.into_inner());
    assert_eq!(p + s, raw.len() - 1);
    // Most flips land in certificate bytes or PCR values and keep the CBOR well-formed.
    assert!(
        s > raw.len() / 2,
        "{s} signature failures, {p} parse errors"
    );
}

#[test]
fn truncation_at_every_length_is_a_parse_error() {
    let raw = read("nitro/doc-beta-production.cbor");
    for len in 0..raw.len() {
        assert!(
            matches!(Document::parse_any(&raw[..len]), Err(Error::Parse(_))),
            "len {len}"
        );
    }
    let b64 = read("nitro/doc-2023-debug.b64");
    for len in (0..b64.len() - 1).step_by(3) {
        assert!(
            matches!(Document::parse_any(&b64[..len]), Err(Error::Parse(_))),
            "b64 len {len}"
        );
    }
}

/// ga.spec.json describes the 2023 debug document: PCR0, 1, 2 and 8 all zero.
#[test]
fn debug_document_pcrs_match_its_spec() {
    let spec: serde_json::Value = serde_json::from_slice(&read("nitro/ga.spec.json")).unwrap();
    assert!(spec["attestationDoc"]
        .as_str()
        .unwrap()
        .ends_with("valid-attestation-doc-base64"));
    let d = debug_doc();
    for i in [0u64, 1, 2, 8] {
        let want = hex::decode(spec["pcrs"][format!("pcr{i}")].as_str().unwrap()).unwrap();
        assert_eq!(d.doc.pcrs[&i], want, "PCR{i}");
    }
}
