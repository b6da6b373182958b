//! SEV-SNP verification on the real fixtures (testdata/PROVENANCE.md).

mod common;

use bulwark_attestation::checks::{Category, Outcome, Status};
use bulwark_attestation::roots::TrustStore;
use bulwark_attestation::sevsnp::{self, report, AttestationReport, Evidence, Policy};
use bulwark_attestation::{Error, VerificationTime};
use common::*;

fn milan() -> Evidence {
    Evidence::parse(
        &read("sev-snp/milan-report.hex"),
        &read("sev-snp/milan-vcek.der"),
    )
    .unwrap()
}

fn debug_evidence() -> Evidence {
    Evidence::parse(
        &read("sev-snp/milan-debug-report.bin"),
        &read("sev-snp/milan-debug-vcek.der"),
    )
    .unwrap()
}

/// Inside every fixture certificate's validity window.
fn at() -> VerificationTime {
    VerificationTime::parse("2024-06-01T00:00:00Z").unwrap()
}

fn failed_names(v: &bulwark_attestation::Verification) -> Vec<&'static str> {
    v.failures().map(|c| c.name).collect()
}

#[test]
fn milan_report_is_valid_and_within_default_policy() {
    let ev = milan();
    assert_eq!(ev.report.version, 2);
    assert!(!ev.report.debug_allowed());
    let v = sevsnp::verify(&ev, &sevsnp::default_trust(), &Policy::default(), at());
    assert_eq!(v.status(), Status::Affirming, "{}", v.to_text());
    for name in [
        "cert-chain",
        "cert-validity",
        "cert-tcb-match",
        "cert-hwid-match",
        "report-signature",
    ] {
        assert_eq!(v.check(name).unwrap().result, Outcome::Passed, "{name}");
    }
    assert!(v.check("cert-chain").unwrap().detail.contains("ARK-Milan"));
}

#[test]
fn debug_report_is_authentic_but_fails_default_policy() {
    let ev = debug_evidence();
    assert_eq!(ev.report.policy, 0xb0000);
    let v = sevsnp::verify(&ev, &sevsnp::default_trust(), &Policy::default(), at());
    assert_eq!(failed_names(&v), ["policy-debug"], "{}", v.to_text());
    assert_eq!(v.check("report-signature").unwrap().result, Outcome::Passed);
    let allow = Policy {
        allow_debug: true,
        ..Policy::default()
    };
    let v = sevsnp::verify(&ev, &sevsnp::default_trust(), &allow, at());
    assert_eq!(v.status(), Status::Warning, "{}", v.to_text());
}

#[test]
fn every_byte_of_the_signed_region_and_signature_is_covered() {
    let ev = milan();
    let trust = sevsnp::default_trust();
    let policy = Policy {
        allow_debug: true,
        ..Policy::default()
    };
    let raw = ev.report.raw.clone();
    // 0x000..0x2A0 is signed; 0x2A0..0x330 holds r and s (both 48 significant bytes + zero padding).
    for pos in 0..report::SIGNED_LEN + 144 {
        let mut bytes = raw.clone();
        bytes[pos] ^= 0x01;
        let flipped = Evidence {
            report: AttestationReport::parse(&bytes).unwrap(),
            endorsement_key: ev.endorsement_key.clone(),
        };
        let v = sevsnp::verify(&flipped, &trust, &policy, at());
        let sig = v.check("report-signature").unwrap();
        assert_eq!(sig.result, Outcome::Failed, "flip at {pos:#x} not detected");
        assert_eq!(sig.category, Category::Signature);
    }
}

#[test]
fn truncation_at_every_length_is_a_parse_error() {
    let raw = milan().report.raw;
    for len in 0..raw.len() {
        assert!(
            matches!(
                AttestationReport::parse_any(&raw[..len]),
                Err(Error::Parse(_))
            ),
            "raw len {len}"
        );
    }
    let hex = read("sev-snp/milan-report.hex");
    for len in 0..hex.len() - 1 {
        assert!(
            matches!(
                AttestationReport::parse_any(&hex[..len]),
                Err(Error::Parse(_))
            ),
            "hex len {len}"
        );
    }
    let cert = read("sev-snp/milan-vcek.der");
    for len in 0..cert.len() {
        assert!(
            Evidence::parse(&raw, &cert[..len]).is_err(),
            "cert len {len}"
        );
    }
}

#[test]
fn unsupported_report_version_fails() {
    let mut raw = milan().report.raw;
    raw[0] = 1;
    let ev = Evidence {
        report: AttestationReport::parse(&raw).unwrap(),
        ..milan()
    };
    let v = sevsnp::verify(&ev, &sevsnp::default_trust(), &Policy::default(), at());
    let names = failed_names(&v);
    assert!(
        names.contains(&"report-version") && names.contains(&"report-signature"),
        "{names:?}"
    );
}

#[test]
fn vcek_from_the_wrong_chain_fails_the_chain_check() {
    let genoa = TrustStore::from_pem(&read("sev-snp/ask-ark-genoa.pem")).unwrap();
    let v = sevsnp::verify(&milan(), &genoa, &Policy::default(), at());
    let chain = v.check("cert-chain").unwrap();
    assert_eq!(
        (chain.result, chain.category),
        (Outcome::Failed, Category::Chain)
    );
    assert_eq!(failed_names(&v), ["cert-chain"]);
    // The VLEK chain (ASVK) does not issue VCEKs either.
    let vlek = TrustStore::from_pem(&read("sev-snp/ask-ark-milan-vlek.pem")).unwrap();
    assert!(sevsnp::verify(&milan(), &vlek, &Policy::default(), at()).failed_in(Category::Chain));
    // The right chain given explicitly works.
    let milan_chain = TrustStore::from_pem(&read("sev-snp/ask-ark-milan.pem")).unwrap();
    assert!(sevsnp::verify(&milan(), &milan_chain, &Policy::default(), at()).is_ok());
}

#[test]
fn report_with_another_chips_vcek_fails_binding_and_signature() {
    let ev = Evidence {
        endorsement_key: debug_evidence().endorsement_key,
        ..milan()
    };
    let v = sevsnp::verify(&ev, &sevsnp::default_trust(), &Policy::default(), at());
    let names = failed_names(&v);
    assert!(
        names.contains(&"report-signature") && names.contains(&"cert-hwid-match"),
        "{names:?}"
    );
}

#[test]
fn certificate_validity_follows_the_verification_time() {
    let ev = milan();
    let trust = sevsnp::default_trust();
    // VCEK: notBefore 2023-04-03T19:23:43Z, notAfter 2030-04-03T19:23:43Z.
    let before = VerificationTime::parse("2023-04-03T19:23:42Z").unwrap();
    let v = sevsnp::verify(&ev, &trust, &Policy::default(), before);
    let c = v.check("cert-validity").unwrap();
    assert_eq!(
        (c.result, c.category),
        (Outcome::Failed, Category::Validity)
    );
    assert!(c.detail.contains("not yet valid"), "{}", c.detail);
    let after = VerificationTime::parse("2030-04-03T19:23:44Z").unwrap();
    let c = sevsnp::verify(&ev, &trust, &Policy::default(), after)
        .check("cert-validity")
        .cloned()
        .unwrap();
    assert!(
        c.result == Outcome::Failed && c.detail.contains("certificate expired"),
        "{}",
        c.detail
    );
    let edge = VerificationTime::parse("2030-04-03T19:23:43Z").unwrap();
    assert!(sevsnp::verify(&ev, &trust, &Policy::default(), edge).is_ok());
}

#[test]
fn policy_expectations() {
    let ev = milan();
    let trust = sevsnp::default_trust();
    let good = Policy {
        expect_measurement: Some(ev.report.measurement.to_vec()),
        expect_report_data: Some(ev.report.report_data.to_vec()),
        expect_host_data: Some(ev.report.host_data.to_vec()),
        expect_vmpl: Some(ev.report.vmpl),
        min_tcb: Some(ev.report.reported_tcb),
        ..Policy::default()
    };
    let v = sevsnp::verify(&ev, &trust, &good, at());
    assert_eq!(v.status(), Status::Affirming, "{}", v.to_text());
    assert!(
        v.checks.iter().all(|c| c.result == Outcome::Passed),
        "{}",
        v.to_text()
    );

    let mut wrong_measurement = ev.report.measurement.to_vec();
    wrong_measurement[0] ^= 1;
    let mut higher = ev.report.reported_tcb;
    higher.snp += 1;
    let bad = Policy {
        expect_measurement: Some(wrong_measurement),
        expect_report_data: Some(vec![0xAA; 64]),
        expect_host_data: Some(vec![1; 32]),
        expect_vmpl: Some(ev.report.vmpl + 1),
        min_tcb: Some(higher),
        ..Policy::default()
    };
    let v = sevsnp::verify(&ev, &trust, &bad, at());
    assert_eq!(
        failed_names(&v),
        [
            "policy-min-tcb",
            "expect-report-data",
            "expect-measurement",
            "expect-host-data",
            "expect-vmpl"
        ]
    );
}
