//! TDX verification on the real fixtures (testdata/PROVENANCE.md).

mod common;

use bulwark_attestation::checks::{Category, Outcome, Status};
use bulwark_attestation::roots::TrustStore;
use bulwark_attestation::tdx::{self, collateral::Collateral, Policy, Quote};
use bulwark_attestation::{Error, Verification, VerificationTime};
use common::*;

/// Inside every fixture PCK chain's validity window.
fn now() -> VerificationTime {
    VerificationTime::parse("2026-06-01T00:00:00Z").unwrap()
}

/// Inside the collateral's window (issued 2025-06-19, next update 2025-07-19).
fn in_window() -> VerificationTime {
    VerificationTime::parse("2025-06-25T00:00:00Z").unwrap()
}

fn verify(quote: &str, policy: &Policy) -> Verification {
    tdx::verify_bytes(&read(quote), None, &tdx::default_trust(), policy, now()).unwrap()
}

fn failed_names(v: &Verification) -> Vec<&'static str> {
    v.failures().map(|c| c.name).collect()
}

#[test]
fn production_quotes_verify_with_tcb_not_evaluated() {
    for (file, version) in [
        ("tdx/quote-v4-spr.dat", 4),
        ("tdx/quote-v5.dat", 5),
        ("tdx/quote-v4-uptodate.dat", 4),
    ] {
        let v = verify(file, &Policy::default());
        assert_eq!(v.status(), Status::Warning, "{file}: {}", v.to_text());
        assert_eq!(v.claims["quote_version"], version);
        let tcb = v.check("tcb-status").unwrap();
        assert_eq!(tcb.result, Outcome::Warning);
        assert!(tcb.detail.contains("TCB not evaluated"));
        for name in [
            "pck-chain",
            "qe-report-signature",
            "qe-key-binding",
            "quote-signature",
        ] {
            assert_eq!(
                v.check(name).unwrap().result,
                Outcome::Passed,
                "{file} {name}"
            );
        }
    }
}

#[test]
fn debug_quote_is_authentic_but_fails_default_policy() {
    let v = verify("tdx/quote-v4-debug.dat", &Policy::default());
    assert_eq!(failed_names(&v), ["policy-debug"], "{}", v.to_text());
    let v = verify(
        "tdx/quote-v4-debug.dat",
        &Policy {
            allow_debug: true,
            ..Policy::default()
        },
    );
    assert!(v.is_ok());
}

fn collateral() -> Collateral {
    Collateral::parse(&read("tdx/quote-v4-uptodate.collateral.json")).unwrap()
}

#[test]
fn full_collateral_evaluates_the_tcb_inside_its_window() {
    let q = Quote::parse(&read("tdx/quote-v4-uptodate.dat")).unwrap();
    let v = tdx::verify(
        &q,
        Some(&collateral()),
        &tdx::default_trust(),
        &Policy::default(),
        in_window(),
    );
    assert_eq!(v.status(), Status::Affirming, "{}", v.to_text());
    let tcb = v.check("tcb-status").unwrap();
    assert!(tcb.detail.starts_with("UpToDate"), "{}", tcb.detail);
    // Past nextUpdate (2025-07-19T10:16:03Z) the collateral is expired.
    let late = VerificationTime::parse("2025-07-19T10:16:04Z").unwrap();
    let v = tdx::verify(
        &q,
        Some(&collateral()),
        &tdx::default_trust(),
        &Policy::default(),
        late,
    );
    let c = v.check("collateral-validity").unwrap();
    assert_eq!(
        (c.result, c.category),
        (Outcome::Failed, Category::Validity)
    );
    assert!(c.detail.contains("collateral expired"), "{}", c.detail);
    // Before it was issued it is not valid either.
    let early = VerificationTime::parse("2025-06-19T10:16:02Z").unwrap();
    let v = tdx::verify(
        &q,
        Some(&collateral()),
        &tdx::default_trust(),
        &Policy::default(),
        early,
    );
    assert_eq!(
        v.check("collateral-validity").unwrap().result,
        Outcome::Failed
    );
}

#[test]
fn tampered_collateral_fails_its_signature() {
    let q = Quote::parse(&read("tdx/quote-v4-uptodate.dat")).unwrap();
    let mut c = collateral();
    c.tcb_info.text = c
        .tcb_info
        .text
        .replace("\"tcbStatus\":\"OutOfDate\"", "\"tcbStatus\":\"UpToDate\"");
    assert_ne!(c.tcb_info.text, collateral().tcb_info.text);
    let v = tdx::verify(
        &q,
        Some(&c),
        &tdx::default_trust(),
        &Policy::default(),
        in_window(),
    );
    assert_eq!(
        v.check("collateral-signatures").unwrap().result,
        Outcome::Failed
    );
    assert_eq!(v.check("tcb-status").unwrap().result, Outcome::Failed);
}

#[test]
fn collateral_for_another_platform_fails_tcb_status() {
    let q = Quote::parse(&read("tdx/quote-v4-spr.dat")).unwrap();
    let v = tdx::verify(
        &q,
        Some(&collateral()),
        &tdx::default_trust(),
        &Policy::default(),
        now(),
    );
    let tcb = v.check("tcb-status").unwrap();
    assert_eq!(tcb.result, Outcome::Failed, "{}", tcb.detail);
    assert!(tcb.detail.contains("FMSPC"), "{}", tcb.detail);
}

#[test]
fn every_signed_byte_is_covered() {
    let raw = read("tdx/quote-v4-spr.dat");
    let base = Quote::parse(&raw).unwrap();
    let signed = base.signed.len();
    // Header + TD report, signed by the attestation key. The two version
    // bytes select the layout: flipping them is a parse error instead.
    for pos in 0..signed {
        let mut b = raw.clone();
        b[pos] ^= 0x01;
        match Quote::parse(&b) {
            Ok(q) => {
                let c = tdx::check_quote_signature(&q);
                assert_eq!(
                    (c.result, c.category),
                    (Outcome::Failed, Category::Signature),
                    "pos {pos}"
                );
            }
            Err(Error::Parse(_)) | Err(Error::NotImplemented(_)) => assert!(pos < 2, "pos {pos}"),
            Err(e) => panic!("pos {pos}: {e}"),
        }
    }
    // Quote signature (after the 4-byte length): r || s.
    for pos in signed + 4..signed + 4 + 64 {
        let mut b = raw.clone();
        b[pos] ^= 0x01;
        let q = Quote::parse(&b).unwrap();
        assert_eq!(
            tdx::check_quote_signature(&q).result,
            Outcome::Failed,
            "pos {pos}"
        );
    }
    // QE report (signed by the PCK leaf) and its signature.
    let qe_start = signed + 4 + 64 + 64 + 6;
    for pos in qe_start..qe_start + 384 + 64 {
        let mut b = raw.clone();
        b[pos] ^= 0x01;
        let q = Quote::parse(&b).unwrap();
        let c = tdx::check_qe_report_signature(&q);
        assert_eq!(
            (c.result, c.category),
            (Outcome::Failed, Category::Signature),
            "pos {pos}"
        );
    }
    // Attestation key: the QE report data binding breaks.
    for pos in signed + 4 + 64..signed + 4 + 128 {
        let mut b = raw.clone();
        b[pos] ^= 0x01;
        let q = Quote::parse(&b).unwrap();
        assert_eq!(
            tdx::check_qe_key_binding(&q).result,
            Outcome::Failed,
            "pos {pos}"
        );
    }
}

#[test]
fn truncation_at_every_length_is_a_parse_error() {
    for file in ["tdx/quote-v4-spr.dat", "tdx/quote-v5.dat"] {
        let raw = read(file);
        let q = Quote::parse(&raw).unwrap();
        let end = raw.len() - q.trailing;
        for len in 0..end {
            assert!(
                matches!(Quote::parse(&raw[..len]), Err(Error::Parse(_))),
                "{file} len {len}"
            );
        }
    }
    let c = read("tdx/quote-v4-uptodate.collateral.json");
    for len in (0..c.len()).step_by(7) {
        assert!(
            matches!(Collateral::parse(&c[..len]), Err(Error::Parse(_))),
            "collateral len {len}"
        );
    }
}

#[test]
fn pck_chain_to_another_root_fails_the_chain_check() {
    let amd = TrustStore::from_pem(&read("sev-snp/ask-ark-milan.pem")).unwrap();
    let v = tdx::verify_bytes(
        &read("tdx/quote-v4-spr.dat"),
        None,
        &amd,
        &Policy::default(),
        now(),
    )
    .unwrap();
    let c = v.check("pck-chain").unwrap();
    assert_eq!((c.result, c.category), (Outcome::Failed, Category::Chain));
}

#[test]
fn pck_validity_follows_the_verification_time() {
    let q = Quote::parse(&read("tdx/quote-v4-spr.dat")).unwrap();
    let leaf = &q.pck_chain.leaf;
    let before = VerificationTime::from_unix_seconds(leaf.not_before - 1);
    let after = VerificationTime::from_unix_seconds(leaf.not_after + 1);
    for (t, word) in [(before, "not yet valid"), (after, "certificate expired")] {
        let v = tdx::verify(&q, None, &tdx::default_trust(), &Policy::default(), t);
        let c = v.check("pck-validity").unwrap();
        assert_eq!(c.result, Outcome::Failed);
        assert!(c.detail.contains(word), "{}", c.detail);
    }
}

#[test]
fn expectations() {
    let q = Quote::parse(&read("tdx/quote-v4-spr.dat")).unwrap();
    let good = Policy {
        expect_mrtd: Some(q.body.mr_td.to_vec()),
        expect_mrconfigid: Some(q.body.mr_config_id.to_vec()),
        expect_rtmrs: vec![(0, q.body.rtmr[0].to_vec()), (3, q.body.rtmr[3].to_vec())],
        expect_report_data: Some(q.body.report_data.to_vec()),
        ..Policy::default()
    };
    assert!(tdx::verify(&q, None, &tdx::default_trust(), &good, now()).is_ok());
    let bad = Policy {
        expect_mrtd: Some(vec![0; 48]),
        expect_rtmrs: vec![(2, vec![1; 48])],
        ..Policy::default()
    };
    let v = tdx::verify(&q, None, &tdx::default_trust(), &bad, now());
    assert_eq!(failed_names(&v), ["expect-mrtd", "expect-rtmrs"]);
}

/// The status rules, on the real collateral with its (already verified)
/// level statuses edited: the signature check is separate and would fail.
#[test]
fn tcb_status_policy() {
    let q = Quote::parse(&read("tdx/quote-v4-uptodate.dat")).unwrap();
    let with_status = |platform: &str, qe: &str, allow_outdated_tcb: bool| {
        let mut c = collateral();
        c.tcb_info.body.tcb_levels[0].tcb_status = platform.to_string();
        c.tcb_info.body.tcb_levels[0].advisory_ids = vec!["INTEL-SA-00001".into()];
        c.qe_identity.body.tcb_levels[0].tcb_status = qe.to_string();
        let policy = Policy {
            allow_outdated_tcb,
            ..Policy::default()
        };
        tdx::tcb_status(&q, &c, &policy, true)
    };
    let c = with_status("UpToDate", "UpToDate", false);
    assert_eq!(c.result, Outcome::Passed, "{}", c.detail);
    let c = with_status("SWHardeningNeeded", "UpToDate", false);
    assert_eq!(c.result, Outcome::Warning);
    assert!(c.detail.contains("INTEL-SA-00001"), "{}", c.detail);
    assert_eq!(
        with_status("OutOfDate", "UpToDate", false).result,
        Outcome::Failed
    );
    assert_eq!(
        with_status("OutOfDate", "UpToDate", true).result,
        Outcome::Warning
    );
    // The worst of platform and QE status wins.
    let c = with_status("ConfigurationNeeded", "OutOfDate", false);
    assert!(
        c.result == Outcome::Failed && c.detail.starts_with("OutOfDate"),
        "{}",
        c.detail
    );
    assert_eq!(
        with_status("Revoked", "UpToDate", true).result,
        Outcome::Failed
    );
    // Unauthentic collateral is never evaluated.
    let c = tdx::tcb_status(&q, &collateral(), &Policy::default(), false);
    assert_eq!(c.result, Outcome::Failed);
}

/// The PCS response and CRL samples (PROVENANCE: parse + signature checks),
/// verified with the issuer chains carried in the collateral bundle.
#[test]
fn pcs_collateral_samples_parse_and_verify() {
    use bulwark_attestation::tdx::collateral::{QeIdentity, Signed, TcbInfo};
    use bulwark_attestation::x509::Crl;
    let bundle = collateral();
    let anchors = tdx::default_trust().anchors;
    let tcb: Signed<TcbInfo> = Signed::from_pcs_response(
        &read("tdx/tcbinfo-response.json"),
        "tcbInfo",
        bundle.tcb_info.issuer_chain.clone(),
    )
    .unwrap();
    assert_eq!(
        (tcb.body.id.as_str(), tcb.body.fmspc.as_str()),
        ("TDX", "50806f000000")
    );
    tcb.verify("TCB info", &anchors).unwrap();
    let qe: Signed<QeIdentity> = Signed::from_pcs_response(
        &read("tdx/qeidentity-response.json"),
        "enclaveIdentity",
        bundle.qe_identity.issuer_chain.clone(),
    )
    .unwrap();
    assert_eq!(qe.body.id, "TD_QE");
    qe.verify("QE identity", &anchors).unwrap();
    // One changed byte in the signed text breaks the signature.
    let mut forged = tcb.clone();
    forged.text = forged.text.replacen("UpToDate", "UpToDatf", 1);
    assert!(forged.verify("TCB info", &anchors).is_err());

    let root_crl = Crl::from_der(&read("tdx/root-crl.der")).unwrap();
    root_crl.verify_signed_by(&anchors[0]).unwrap();
    let pck_crl = Crl::from_der(&read("tdx/pck-crl")).unwrap();
    pck_crl
        .verify_signed_by(&bundle.pck_crl_issuer_chain.leaf)
        .unwrap();
    assert!(pck_crl.verify_signed_by(&anchors[0]).is_err());
    // The PCK CRL sample: thisUpdate 2023-06-08T07:27:52Z, nextUpdate 2023-07-08T07:27:52Z.
    assert!(pck_crl
        .valid_at(VerificationTime::parse("2023-06-20T00:00:00Z").unwrap())
        .is_ok());
    let late = pck_crl.valid_at(VerificationTime::parse("2023-07-08T07:27:53Z").unwrap());
    assert!(late.unwrap_err().contains("expired"));
}
