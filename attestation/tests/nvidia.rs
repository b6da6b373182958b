//! NVIDIA Hopper SPDM evidence on the real fixtures (testdata/PROVENANCE.md).

mod common;

use bulwark_attestation::checks::{Category, Outcome, Status};
use bulwark_attestation::nvidia::{self, spdm, Evidence, Exchange, Policy};
use bulwark_attestation::roots::TrustStore;
use bulwark_attestation::{Error, VerificationTime};
use common::*;

fn evidence() -> Evidence {
    Evidence::parse(
        &read("nvidia/hopper-report.hex"),
        &read("nvidia/hopper-cert-chain.pem"),
    )
    .unwrap()
}

fn at() -> VerificationTime {
    VerificationTime::parse("2024-06-01T00:00:00Z").unwrap()
}

const NONCE: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";

#[test]
fn hopper_evidence_is_valid() {
    let ev = evidence();
    assert_eq!(ev.exchange.response.blocks.len(), 64);
    assert_eq!(ev.chain.len(), 5);
    let policy = Policy {
        expect_nonce: Some(hex::decode(NONCE).unwrap()),
    };
    let v = nvidia::verify(&ev, &nvidia::default_trust(), &policy, at());
    assert_eq!(v.status(), Status::Affirming, "{}", v.to_text());
    assert_eq!(v.check("expect-nonce").unwrap().result, Outcome::Passed);
    assert_eq!(v.claims["driver_version"], "550.90.07");
    assert_eq!(v.claims["vbios_version"], "96.00.9F.00.01");
    assert_eq!(v.claims["measurements"].as_object().unwrap().len(), 64);
}

#[test]
fn wrong_nonce_fails() {
    let policy = Policy {
        expect_nonce: Some(vec![0; 32]),
    };
    let v = nvidia::verify(&evidence(), &nvidia::default_trust(), &policy, at());
    assert_eq!(
        v.failures().map(|c| c.name).collect::<Vec<_>>(),
        ["expect-nonce"]
    );
}

#[test]
fn every_signed_byte_and_the_signature_are_covered() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let ev = evidence();
    let raw = hex::decode(
        String::from_utf8(read("nvidia/hopper-report.hex"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let leaf = &ev.chain[0];
    let sig_failures = AtomicUsize::new(0);
    for_each_flip(&raw, 0..raw.len(), |pos, b| match Exchange::parse(b) {
        // Version, codes and length fields: the layout no longer holds.
        Err(Error::Parse(_)) | Err(Error::NotImplemented(_)) => {}
        Err(e) => panic!("pos {pos}: {e}"),
        Ok(x) => {
            let c = nvidia::check_signature(&x, leaf);
            assert_eq!(
                (c.result, c.category),
                (Outcome::Failed, Category::Signature),
                "pos {pos}"
            );
            sig_failures.fetch_add(1, Ordering::Relaxed);
        }
    });
    // Every byte except the structural fields (codes, versions, lengths and
    // the 6-byte header of each of the 64 blocks) reaches the signature check.
    let n = sig_failures.into_inner();
    assert!(n >= raw.len() - (64 * 6 + 16), "{n} of {}", raw.len());
}

#[test]
fn truncation_at_every_length_is_a_parse_error() {
    let raw = hex::decode(
        String::from_utf8(read("nvidia/hopper-report.hex"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    for len in 0..raw.len() {
        assert!(
            matches!(Exchange::parse(&raw[..len]), Err(Error::Parse(_))),
            "len {len}"
        );
    }
    let text = read("nvidia/hopper-report.hex");
    for len in (0..text.len() - 1).step_by(5) {
        assert!(
            matches!(Exchange::parse_any(&text[..len]), Err(Error::Parse(_))),
            "hex len {len}"
        );
    }
    let chain = read("nvidia/hopper-cert-chain.pem");
    for len in (0..chain.len()).step_by(97) {
        // Cut inside the first certificate: no usable chain.
        if len < 700 {
            assert!(
                Evidence::parse(&raw, &chain[..len]).is_err(),
                "chain len {len}"
            );
        }
    }
}

#[test]
fn chain_to_another_root_fails() {
    let amd = TrustStore::from_pem(&read("sev-snp/ask-ark-genoa.pem")).unwrap();
    let v = nvidia::verify(&evidence(), &amd, &Policy::default(), at());
    let c = v.check("cert-chain").unwrap();
    assert_eq!((c.result, c.category), (Outcome::Failed, Category::Chain));
    // A chain missing its intermediates does not reach the root either.
    let mut ev = evidence();
    ev.chain.truncate(2);
    let v = nvidia::verify(&ev, &nvidia::default_trust(), &Policy::default(), at());
    assert!(v.failed_in(Category::Chain));
}

#[test]
fn validity_follows_the_verification_time() {
    let ev = evidence();
    let leaf = &ev.chain[0];
    // notBefore 2020-10-17; notAfter 9999-12-31T23:59:59Z.
    let before = VerificationTime::from_unix_seconds(leaf.not_before - 1);
    let v = nvidia::verify(&ev, &nvidia::default_trust(), &Policy::default(), before);
    assert!(v
        .check("cert-validity")
        .unwrap()
        .detail
        .contains("not yet valid"));
    let after = VerificationTime::from_unix_seconds(leaf.not_after + 1);
    let v = nvidia::verify(&ev, &nvidia::default_trust(), &Policy::default(), after);
    let c = v.check("cert-validity").unwrap();
    assert!(
        c.result == Outcome::Failed && c.detail.contains("certificate expired"),
        "{}",
        c.detail
    );
}

#[test]
fn opaque_fields_parse() {
    let ev = evidence();
    let fields = spdm::opaque_fields(&ev.exchange.response.opaque).unwrap();
    assert!(fields
        .iter()
        .any(|(t, v)| *t == 3 && v.starts_with(b"550.90.07")));
}
