//! NVIDIA Hopper SPDM evidence on the real fixtures (testdata/PROVENANCE.md).

mod common;

use bulwark_attestation::checks::{Category, Outcome, Status};
use bulwark_attestation::nvidia::{self, rim::Rim, spdm, Evidence, Exchange, Policy};
use bulwark_attestation::roots::TrustStore;
use bulwark_attestation::{Error, VerificationTime};
use common::*;

fn evidence() -> Evidence {
    Evidence::parse(
        &read("nvidia/hopper-report.hex"),
        &read("nvidia/hopper-cert-chain.pem"),
        &[],
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
    let leaf = &ev.chain.leaf;
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
                Evidence::parse(&raw, &chain[..len], &[]).is_err(),
                "chain len {len}"
            );
        }
    }
}

#[test]
fn chain_to_another_root_fails() {
    let amd = nvidia::Trust {
        device: TrustStore::from_pem(&read("sev-snp/ask-ark-genoa.pem")).unwrap(),
        ..nvidia::default_trust()
    };
    let v = nvidia::verify(&evidence(), &amd, &Policy::default(), at());
    let c = v.check("cert-chain").unwrap();
    assert_eq!((c.result, c.category), (Outcome::Failed, Category::Chain));
    // A chain missing its intermediates does not reach the root either.
    let mut ev = evidence();
    ev.chain.issuers.truncate(1);
    let v = nvidia::verify(&ev, &nvidia::default_trust(), &Policy::default(), at());
    assert!(v.failed_in(Category::Chain));
}

#[test]
fn validity_follows_the_verification_time() {
    let ev = evidence();
    let leaf = &ev.chain.leaf;
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

const DRIVER_RIM: &str = "nvidia/driver-rim-test.swidtag";
const VBIOS_RIM: &str = "nvidia/vbios-rim-96005E0001.swidtag";

fn with_rims(files: &[&str]) -> Evidence {
    let rims: Vec<Vec<u8>> = files.iter().map(|f| read(f)).collect();
    let rims: Vec<&[u8]> = rims.iter().map(Vec::as_slice).collect();
    Evidence::parse(
        &read("nvidia/hopper-report.hex"),
        &read("nvidia/hopper-cert-chain.pem"),
        &rims,
    )
    .unwrap()
}

/// The fixture RIMs are authentic, but for driver 545.00 and VBIOS
/// 96.00.5E.00.01 while the GPU reports 550.90.07 and 96.00.9F.00.01: the
/// version check and the comparison must fail, and list what differs.
#[test]
fn fixture_rims_are_signed_but_for_other_versions() {
    let ev = with_rims(&[DRIVER_RIM, VBIOS_RIM]);
    assert_eq!(ev.rims[0].version, "545.00");
    assert_eq!(ev.rims[1].version, "96.00.5E.00.01");
    let v = nvidia::verify(&ev, &nvidia::default_trust(), &Policy::default(), at());
    for name in ["rim-signature", "rim-chain", "rim-validity"] {
        assert_eq!(
            v.check(name).unwrap().result,
            Outcome::Passed,
            "{name}: {}",
            v.to_text()
        );
    }
    assert_eq!(
        v.failures().map(|c| c.name).collect::<Vec<_>>(),
        ["rim-version", "rim-comparison"]
    );
    let cmp = v.check("rim-comparison").unwrap();
    assert!(
        cmp.detail
            .starts_with("19 of 33 active reference measurements differ"),
        "{}",
        cmp.detail
    );
}

#[test]
fn comparison_passes_when_reference_values_match() {
    let ev = with_rims(&[VBIOS_RIM]);
    let mut rim = ev.rims[0].clone();
    // Same active indices, reference values taken from the GPU's blocks (i + 1).
    for m in rim.measurements.iter_mut().filter(|m| m.active) {
        let block = ev
            .exchange
            .response
            .blocks
            .iter()
            .find(|b| u32::from(b.index) == m.index + 1)
            .unwrap();
        m.alternatives = vec![vec![0; 48], block.value.clone()];
    }
    let c = nvidia::compare_measurements(&ev.exchange, std::slice::from_ref(&rim));
    assert_eq!(c.result, Outcome::Passed, "{}", c.detail);
    // The same index active in two RIMs is a conflict.
    let c = nvidia::compare_measurements(&ev.exchange, &[rim.clone(), rim]);
    assert_eq!(c.result, Outcome::Failed);
    assert!(c.detail.contains("more than one RIM"));
}

#[test]
fn rim_signer_certificates_expire() {
    // The VBIOS RIM signer's notAfter is 2025-06-22T09:30:33Z.
    let ev = with_rims(&[VBIOS_RIM]);
    let late = VerificationTime::parse("2025-06-22T09:30:34Z").unwrap();
    let v = nvidia::verify(&ev, &nvidia::default_trust(), &Policy::default(), late);
    let c = v.check("rim-validity").unwrap();
    assert!(
        c.result == Outcome::Failed && c.detail.contains("certificate expired"),
        "{}",
        c.detail
    );
}

#[test]
fn tampered_rims_fail_the_signature_check() {
    let text = String::from_utf8(read(VBIOS_RIM)).unwrap();
    let reference = Rim::parse(text.as_bytes()).unwrap();
    assert!(reference.verify_signature().is_ok());
    // A reference value, an attribute, the version, and the signature itself.
    let active = reference.measurements.iter().find(|m| m.active).unwrap();
    let value = hex::encode(&active.alternatives[0]);
    let mut changed = value.clone();
    changed.replace_range(0..1, if &value[0..1] == "0" { "1" } else { "0" });
    for (from, to) in [
        (value.as_str(), changed.as_str()),
        ("active=\"False\"", "active=\"True\""),
        (
            "colloquialVersion=\"96.00.5E.00.01\"",
            "colloquialVersion=\"96.00.9F.00.01\"",
        ),
        ("<ds:SignatureValue>", "<ds:SignatureValue>AAAA"),
    ] {
        assert!(text.contains(from), "{from}");
        let tampered = text.replacen(from, to, 1);
        let rim = Rim::parse(tampered.as_bytes()).unwrap();
        assert!(rim.verify_signature().is_err(), "{from} -> {to}");
    }
    // Whitespace and attribute order are canonicalized away, so they do not
    // break the signature.
    let reordered = text.replacen(
        "corpus=\"false\" name=\"GH100\"",
        "name=\"GH100\"   corpus=\"false\"",
        1,
    );
    assert_ne!(reordered, text);
    assert!(Rim::parse(reordered.as_bytes())
        .unwrap()
        .verify_signature()
        .is_ok());
}

#[test]
fn truncated_rims_are_parse_errors() {
    let text = read(DRIVER_RIM);
    for len in (0..text.len() - 1).step_by(37) {
        assert!(
            matches!(Rim::parse(&text[..len]), Err(Error::Parse(_))),
            "len {len}"
        );
    }
}

#[test]
fn trailing_bytes_after_the_signature_are_ignored_with_a_warning() {
    // Seen on a production GPU: one byte after the SPDM signature.
    let mut report = String::from_utf8(read("nvidia/hopper-report.hex")).unwrap();
    report = report.trim_end().to_string();
    report.push_str("00");
    let ev = Evidence::parse(
        report.as_bytes(),
        &read("nvidia/hopper-cert-chain.pem"),
        &[],
    )
    .unwrap();
    assert_eq!(ev.exchange.response.trailing, 1);
    let policy = Policy {
        expect_nonce: Some(hex::decode(NONCE).unwrap()),
    };
    let v = nvidia::verify(&ev, &nvidia::default_trust(), &policy, at());
    assert_eq!(v.status(), Status::Warning, "{}", v.to_text());
    assert_eq!(v.check("trailing-bytes").unwrap().result, Outcome::Warning);
    assert_eq!(
        v.check("measurement-signature").unwrap().result,
        Outcome::Passed
    );
    assert_eq!(v.claims["ignored_trailing_bytes"], 1);
}
