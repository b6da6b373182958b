//! Verifier tests on a quote recorded from swtpm (attestation/testdata/tpm,
//! see PROVENANCE there), so the verifier is tested without a TPM.

use super::eventlog::{digest_covers_data, EventLog, EV_NO_ACTION};
use super::quote::*;
use super::structures::*;
use crate::checks::Outcome;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/tpm");

struct Recorded {
    ak: Vec<u8>,
    attest: Vec<u8>,
    sig: Vec<u8>,
    nonce: Vec<u8>,
    pcrs: Vec<(u32, Vec<u8>)>,
    log: Vec<u8>,
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(format!("{DIR}/{name}")).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn recorded() -> Recorded {
    let text = String::from_utf8(read("pcrs.txt")).unwrap();
    let pcrs = text
        .lines()
        .map(|l| {
            let (i, v) = l.split_once(' ').unwrap();
            (i.parse().unwrap(), hex::decode(v).unwrap())
        })
        .collect();
    Recorded {
        ak: read("ak.pub"),
        attest: read("quote.msg"),
        sig: read("quote.sig"),
        nonce: hex::decode(String::from_utf8(read("nonce.hex")).unwrap().trim()).unwrap(),
        pcrs,
        log: read("eventlog.bin"),
    }
}

impl Recorded {
    fn verify(&self) -> QuoteVerification {
        verify_quote(
            &self.ak,
            &self.attest,
            &self.sig,
            &self.nonce,
            &self.pcrs,
            Some(&self.log),
        )
    }
}

fn failed(v: &QuoteVerification) -> Vec<&'static str> {
    v.failures().map(|c| c.name).collect()
}

#[test]
fn recorded_quote_verifies() {
    let r = recorded();
    let v = r.verify();
    assert!(v.is_ok(), "{:#?}", v.checks);
    assert_eq!(v.checks.len(), 9);
    assert!(v.checks.iter().all(|c| c.result == Outcome::Passed));
    let ak = v.ak.as_ref().unwrap();
    assert_eq!(ak.describe(), "ECC P-256 ecdsa-sha256");
    assert_eq!(ak.name_alg, TPM_ALG_SHA256);
    let name = ak.name().unwrap();
    assert_eq!(name.len(), 34);
    let a = v.attest.as_ref().unwrap();
    assert_eq!(a.magic, TPM_GENERATED_VALUE);
    assert_eq!(a.extra_data, r.nonce);
    assert_eq!(a.pcr_select.len(), 1);
    assert_eq!(a.pcr_select[0].pcrs, (0..=12).collect::<Vec<u32>>());
    // The events were replayed and described.
    assert_eq!(v.events.len(), 14);
    assert_eq!(
        v.events[0].description,
        "EV_EFI_ACTION: \"bulwark test firmware 1.0\""
    );
    assert!(v.events.iter().all(|e| e.quoted && e.sha256.len() == 64));
}

#[test]
fn unordered_pcr_list_is_accepted_and_missing_or_extra_pcrs_are_not() {
    let r = recorded();
    let mut rev = r.pcrs.clone();
    rev.reverse();
    let v = verify_quote(&r.ak, &r.attest, &r.sig, &r.nonce, &rev, Some(&r.log));
    assert!(v.is_ok(), "{:?}", failed(&v));

    let fewer = &r.pcrs[..12];
    let v = verify_quote(&r.ak, &r.attest, &r.sig, &r.nonce, fewer, Some(&r.log));
    assert!(failed(&v).contains(&CHECK_PCR_SELECTION));
    assert!(failed(&v).contains(&CHECK_PCR_DIGEST));

    let mut more = r.pcrs.clone();
    more.push((13, vec![0; 32]));
    let v = verify_quote(&r.ak, &r.attest, &r.sig, &r.nonce, &more, Some(&r.log));
    assert!(failed(&v).contains(&CHECK_PCR_SELECTION));

    let mut dup = r.pcrs.clone();
    dup.push(r.pcrs[3].clone());
    let v = verify_quote(&r.ak, &r.attest, &r.sig, &r.nonce, &dup, Some(&r.log));
    assert!(failed(&v).contains(&CHECK_PCR_SELECTION));
}

/// Every byte of the TPMS_ATTEST is covered by the AK's signature: flipping
/// any one of them (three different masks) fails `tpm-quote-signature`, and
/// field checks fail as well where the byte belongs to their field.
#[test]
fn every_attest_byte_flip_is_rejected() {
    let r = recorded();
    // Offsets: magic 0..4, type 4..6, qualifiedSigner 6..42, extraData
    // 42..76, clockInfo 76..93, firmwareVersion 93..101, selection 101..111,
    // pcrDigest 111..145.
    assert_eq!(r.attest.len(), 145);
    for i in 0..r.attest.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut t = r.attest.clone();
            t[i] ^= mask;
            let v = verify_quote(&r.ak, &t, &r.sig, &r.nonce, &r.pcrs, Some(&r.log));
            let f = failed(&v);
            assert!(
                f.contains(&CHECK_SIGNATURE),
                "byte {i} ^ {mask:#04x} not rejected by the signature: {f:?}"
            );
            match i {
                0..=3 => assert!(f.contains(&CHECK_MAGIC_TYPE), "byte {i}: {f:?}"),
                44..=75 => assert!(f.contains(&CHECK_EXTRA_DATA), "byte {i}: {f:?}"),
                113..=144 => assert!(f.contains(&CHECK_PCR_DIGEST), "byte {i}: {f:?}"),
                _ => {}
            }
        }
    }
}

#[test]
fn every_signature_byte_flip_is_rejected() {
    let r = recorded();
    for i in 0..r.sig.len() {
        let mut t = r.sig.clone();
        t[i] ^= 0x01;
        let v = verify_quote(&r.ak, &r.attest, &t, &r.nonce, &r.pcrs, Some(&r.log));
        assert_eq!(failed(&v), vec![CHECK_SIGNATURE], "signature byte {i}");
    }
}

#[test]
fn every_pcr_value_byte_flip_is_rejected() {
    let r = recorded();
    for p in 0..r.pcrs.len() {
        for i in 0..32 {
            let mut t = r.pcrs.clone();
            t[p].1[i] ^= 0x01;
            let v = verify_quote(&r.ak, &r.attest, &r.sig, &r.nonce, &t, Some(&r.log));
            let f = failed(&v);
            assert!(
                f.contains(&CHECK_PCR_DIGEST) && f.contains(&CHECK_EVENT_REPLAY),
                "PCR {p} byte {i}: {f:?}"
            );
        }
    }
}

/// Flipping one bit of the AK public area is rejected, except for bits that
/// the quote's signature check does not use: reserved object attributes.
/// Those change the AK's name, so credential activation (which binds the
/// name to the EK) rejects such an AK, not the quote check.
#[test]
fn ak_public_byte_flips() {
    let r = recorded();
    let original = TpmPublic::from_tpm2b(&r.ak).unwrap().name().unwrap();
    let mut accepted = Vec::new();
    for i in 0..r.ak.len() {
        let mut t = r.ak.clone();
        t[i] ^= 0x01;
        let v = verify_quote(&t, &r.attest, &r.sig, &r.nonce, &r.pcrs, Some(&r.log));
        if v.is_ok() {
            let name = v.ak.as_ref().unwrap().name().unwrap();
            assert_ne!(name, original, "byte {i}: same name");
            accepted.push(i);
        }
    }
    // TPM2B size 0..2, type 2..4, nameAlg 4..6, objectAttributes 6..10:
    // bit 0 of bytes 6 and 8 are reserved bits 24 and 8; bit 0 of byte 9 is
    // reserved bit 0; bit 0 of byte 7 is `restricted` (required).
    assert_eq!(accepted, vec![6, 8, 9], "accepted flips");
}

/// Byte offsets of the recorded (synthetic) event log by field, for the
/// exhaustive tamper test: the fields that nothing attests are listed.
fn unattested_log_bytes(log: &[u8]) -> Vec<(usize, &'static str)> {
    let parsed = EventLog::parse(log).unwrap();
    let mut out = Vec::new();
    // Legacy header: pcr 0..4 and type 4..8 are checked; SHA-1 digest 8..28
    // is ignored; size 28..32; Spec ID: signature 32..48, platformClass
    // 48..52, version/errata 52..55, uintnSize 55, algorithm list, vendor.
    out.extend((8..28).map(|i| (i, "legacy header digest")));
    out.extend((48..52).map(|i| (i, "platformClass")));
    out.extend((52..56).map(|i| (i, "spec version, errata, uintnSize")));
    let mut off = 65;
    for e in &parsed.events {
        // pcr 4, type 4, count 4, alg 2, digest 32, size 4, data.
        let type_at = off + 4;
        let data_at = off + 4 + 4 + 4 + 2 + 32 + 4;
        out.extend((type_at..type_at + 4).map(|i| (i, "event type")));
        if !digest_covers_data(e.event_type) && e.event_type != EV_NO_ACTION {
            out.extend((data_at..data_at + e.data.len()).map(|i| (i, "event data (described)")));
        }
        off = data_at + e.data.len();
    }
    assert_eq!(off, log.len());
    out
}

/// Every byte of the log is either attested (a flip fails a named check or
/// the log no longer parses) or belongs to a field no one attests: the event
/// type (the TPM extends digests, not types), descriptive event data whose
/// digest is of something else (a kernel image), and header fields the
/// replay does not use.
#[test]
fn every_event_log_byte_flip() {
    let r = recorded();
    let unattested = unattested_log_bytes(&r.log);
    let mut passed = Vec::new();
    for i in 0..r.log.len() {
        let mut t = r.log.clone();
        t[i] ^= 0x01;
        let v = verify_quote(&r.ak, &r.attest, &r.sig, &r.nonce, &r.pcrs, Some(&t));
        let f = failed(&v);
        if f.is_empty() {
            passed.push(i);
        } else {
            assert!(
                f.iter().all(
                    |n| [CHECK_EVENT_LOG, CHECK_EVENT_DIGESTS, CHECK_EVENT_REPLAY].contains(n)
                ),
                "byte {i}: {f:?}"
            );
        }
    }
    for i in &passed {
        assert!(
            unattested.iter().any(|(u, _)| u == i),
            "log byte {i} changed without detection"
        );
    }
    // Event type flips that matter (a type turned into or out of a
    // digest-covers-data type with data that no longer hashes) are caught;
    // the rest pass, as they should: e.g. EV_IPL (0x0D) -> 0x0C.
    assert!(!passed.is_empty());
}

#[test]
fn log_replay_starts_pcrs_17_to_22_at_ones_and_honours_startup_locality() {
    let mut log = Vec::new();
    log.extend_from_slice(&0u32.to_le_bytes());
    log.extend_from_slice(&EV_NO_ACTION.to_le_bytes());
    log.extend_from_slice(&[0; 20]);
    let mut spec = b"Spec ID Event03\0".to_vec();
    spec.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 2, 1, 0, 0, 0, 0x0b, 0, 32, 0, 0]);
    log.extend_from_slice(&(spec.len() as u32).to_le_bytes());
    log.extend_from_slice(&spec);
    // StartupLocality 3.
    log.extend_from_slice(&0u32.to_le_bytes());
    log.extend_from_slice(&EV_NO_ACTION.to_le_bytes());
    log.extend_from_slice(&1u32.to_le_bytes());
    log.extend_from_slice(&0x000bu16.to_le_bytes());
    log.extend_from_slice(&[0; 32]);
    log.extend_from_slice(&17u32.to_le_bytes());
    log.extend_from_slice(b"StartupLocality\0\x03");
    let parsed = EventLog::parse(&log).unwrap();
    let pcrs = parsed.replay_sha256();
    let mut p0 = [0u8; 32];
    p0[31] = 3;
    assert_eq!(pcrs[0], p0);
    assert_eq!(pcrs[17], [0xff; 32]);
    assert_eq!(pcrs[22], [0xff; 32]);
    assert_eq!(pcrs[23], [0; 32]);
}

#[test]
fn malformed_inputs_never_panic() {
    let r = recorded();
    for input in [&r.ak, &r.attest, &r.sig, &r.log] {
        for n in 0..input.len() {
            let cut = &input[..n];
            let _ = verify_quote(cut, &r.attest, &r.sig, &r.nonce, &r.pcrs, Some(&r.log));
            let _ = verify_quote(&r.ak, cut, &r.sig, &r.nonce, &r.pcrs, Some(&r.log));
            let _ = verify_quote(&r.ak, &r.attest, cut, &r.nonce, &r.pcrs, Some(&r.log));
            let v = verify_quote(&r.ak, &r.attest, &r.sig, &r.nonce, &r.pcrs, Some(cut));
            if n < r.log.len() {
                assert!(!v.is_ok(), "truncated log of {n} bytes accepted");
            }
        }
    }
    // Huge declared sizes are bounded.
    let mut log = r.log[..65].to_vec();
    log.extend_from_slice(&[0, 0, 0, 0, 4, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    assert!(EventLog::parse(&log).is_err());
}
