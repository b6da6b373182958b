//! The TPM flow against a real (software) TPM: EK certificate chain,
//! credential activation, quotes with a synthetic event log verified by
//! `bulwark_attestation::tpm`, and agreement with tpm2-tools'
//! `tpm2_checkquote`. Each test starts its own swtpm (one client at a time).
//! These tests need swtpm, swtpm-tools and tpm2-tools: `scripts/setup`.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use bulwark_attestation::checks::Outcome;
use bulwark_attestation::tpm::{self, ek, quote as q, TpmPublic};
use bulwark_attestation::x509::parse_pem_certificates;
use bulwark_attestation::VerificationTime;
use bulwark_tpm::eventlog::{EventLogWriter, EV_EFI_ACTION, EV_IPL, EV_SEPARATOR};
use bulwark_tpm::harness::Swtpm;
use bulwark_tpm::Tpm;

const PCRS: [u32; 13] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

fn start() -> Swtpm {
    Swtpm::start().unwrap_or_else(|e| panic!("cannot start swtpm: {e}"))
}

fn open(sw: &Swtpm) -> Tpm {
    Tpm::open(&sw.tcti()).unwrap_or_else(|e| panic!("cannot open {}: {e}", sw.tcti()))
}

fn nonce(tag: u8) -> Vec<u8> {
    (0..32u8).map(|i| i.wrapping_mul(7) ^ tag).collect()
}

/// A synthetic boot: a few events in PCRs 0-9 and 11, each extended and
/// logged (EV_SEPARATOR and EV_EFI_ACTION digests are the hash of their
/// data, so tampering with their data is detectable on its own).
fn measure_boot(tpm: &mut Tpm) -> EventLogWriter {
    let mut log = EventLogWriter::new();
    let m = |log: &mut EventLogWriter, tpm: &mut Tpm, pcr, t, data: &[u8]| {
        log.measure(tpm, pcr, t, data)
            .unwrap_or_else(|e| panic!("measure PCR {pcr}: {e}"));
    };
    m(
        &mut log,
        tpm,
        0,
        EV_EFI_ACTION,
        b"bulwark test firmware 1.0",
    );
    m(
        &mut log,
        tpm,
        4,
        EV_EFI_ACTION,
        b"Calling EFI Application from Boot Option",
    );
    // A measurement whose data only describes what was hashed.
    let kernel = [0x5au8; 4096];
    let digest: [u8; 32] = {
        use sha2::Digest as _;
        sha2::Sha256::digest(kernel).into()
    };
    log.measure_digest(tpm, 4, 0x8000_0003, &digest, b"\\EFI\\BOOT\\BOOTX64.EFI")
        .expect("measure kernel");
    for pcr in 0..=7 {
        m(&mut log, tpm, pcr, EV_SEPARATOR, &[0, 0, 0, 0]);
    }
    m(&mut log, tpm, 8, EV_IPL, b"console=ttyS0 bulwark.test=1");
    m(&mut log, tpm, 9, EV_IPL, b"initrd");
    m(&mut log, tpm, 11, EV_EFI_ACTION, b"bulwark image manifest");
    log
}

fn failed(v: &q::QuoteVerification) -> Vec<&'static str> {
    v.failures().map(|c| c.name).collect()
}

fn assert_ok(v: &q::QuoteVerification) {
    assert!(
        v.is_ok(),
        "quote rejected: {:#?}",
        v.failures().collect::<Vec<_>>()
    );
}

fn pem_certs(path: &Path) -> Vec<bulwark_attestation::x509::Certificate> {
    let pem = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parse_pem_certificates(&pem).expect("PEM certificates")
}

#[test]
fn ek_certificate_chains_to_the_per_test_ca_and_not_another() {
    let sw = start();
    let der = {
        let mut tpm = open(&sw);
        tpm.ek_certificate().expect("read EK certificate")
    };
    let file = std::fs::read(sw.ek_rsa_cert_der()).expect("EK certificate file");
    assert_eq!(
        der, file,
        "NV 0x01c00002 holds the certificate swtpm_setup wrote"
    );

    let roots = pem_certs(&sw.ca_root_pem());
    let issuers = pem_certs(&sw.ca_issuer_pem());
    let v = tpm::verify_ek_chain(&der, &issuers, &roots, VerificationTime::now())
        .expect("EK certificate parses");
    for c in &v.checks {
        assert_eq!(c.result, Outcome::Passed, "{c:?}");
    }
    assert_eq!(v.identity.model.as_deref(), Some("swtpm"));
    assert!(v.identity.manufacturer.is_some());
    let san = v
        .certificate
        .extension("2.5.29.17")
        .expect("EK certificate has a subjectAltName");
    assert!(san.critical, "swtpm's SAN is critical and is accepted");

    // Without the issuer, and against a different CA, there is no path.
    let v = tpm::verify_ek_chain(&der, &[], &roots, VerificationTime::now()).unwrap();
    assert_eq!(v.checks[0].result, Outcome::Failed, "{:?}", v.checks[0]);
    let other = start();
    let v = tpm::verify_ek_chain(
        &der,
        &pem_certs(&other.ca_issuer_pem()),
        &pem_certs(&other.ca_root_pem()),
        VerificationTime::now(),
    )
    .unwrap();
    let chain = &v.checks[0];
    assert_eq!(chain.name, ek::CHECK_EK_CHAIN);
    assert_eq!(chain.result, Outcome::Failed, "{chain:?}");
}

#[test]
fn credential_activation_recovers_the_secret_only_for_the_named_ak() {
    let sw = start();
    let mut tpm = open(&sw);
    let ek_der = tpm.ek_certificate().expect("EK certificate");
    let ek_cert = bulwark_attestation::x509::Certificate::from_der(&ek_der).unwrap();
    let ak = tpm.create_ak().expect("create AK");
    let parsed = TpmPublic::from_tpm2b(&ak.public).expect("AK public parses");
    assert_eq!(
        parsed.name().unwrap(),
        ak.name,
        "our TPM name equals the TPM's"
    );

    let secret = b"bulwark credential secret 0123!!";
    let t = Instant::now();
    let cred = tpm::make_credential(&ek_cert.key, &ak.name, secret).expect("make credential");
    let made = t.elapsed();
    let t = Instant::now();
    let got = tpm
        .activate_credential(&cred.credential_blob, &cred.encrypted_secret)
        .expect("activate credential");
    eprintln!(
        "make_credential {:?}, activate_credential {:?}",
        made,
        t.elapsed()
    );
    assert_eq!(got, secret);

    // A credential for another object's name does not activate with this AK.
    let mut other_name = ak.name.clone();
    let last = other_name.len() - 1;
    other_name[last] ^= 1;
    let wrong = tpm::make_credential(&ek_cert.key, &other_name, secret).unwrap();
    let err = tpm
        .activate_credential(&wrong.credential_blob, &wrong.encrypted_secret)
        .expect_err("a credential for another name must not activate");
    eprintln!("wrong-name activation: {err}");
    // A tampered credential blob does not activate either.
    let mut tampered = cred.clone();
    tampered.credential_blob[5] ^= 0x40;
    assert!(tpm
        .activate_credential(&tampered.credential_blob, &tampered.encrypted_secret)
        .is_err());
    // And the TPM is still usable afterwards (sessions were flushed).
    let again = tpm
        .activate_credential(&cred.credential_blob, &cred.encrypted_secret)
        .expect("activate again");
    assert_eq!(again, secret);
    tpm.flush().expect("flush");
}

#[test]
fn quote_with_event_log_verifies() {
    let sw = start();
    let mut tpm = open(&sw);
    let log = measure_boot(&mut tpm);
    let ak = tpm.create_ak().expect("create AK");
    let n = nonce(1);
    let t = Instant::now();
    let quote = tpm.quote(&PCRS, &n).expect("quote");
    let quote_time = t.elapsed();
    let t = Instant::now();
    let v = q::verify_quote(
        &ak.public,
        &quote.attest,
        &quote.signature,
        &n,
        &quote.pcrs,
        Some(log.as_bytes()),
    );
    let verify_time = t.elapsed();
    eprintln!("quote {quote_time:?}, verify_quote {verify_time:?}");
    assert_ok(&v);
    for name in [
        q::CHECK_AK_PUBLIC,
        q::CHECK_SIGNATURE,
        q::CHECK_MAGIC_TYPE,
        q::CHECK_EXTRA_DATA,
        q::CHECK_PCR_SELECTION,
        q::CHECK_PCR_DIGEST,
        q::CHECK_EVENT_LOG,
        q::CHECK_EVENT_DIGESTS,
        q::CHECK_EVENT_REPLAY,
    ] {
        let c = v.check(name).unwrap_or_else(|| panic!("{name} ran"));
        assert_eq!(c.result, Outcome::Passed, "{c:?}");
    }
    assert_eq!(v.events.len(), 14);
    assert!(v.events.iter().all(|e| e.quoted));
    let replayed = v.replayed.as_ref().unwrap();
    for (i, val) in &quote.pcrs {
        assert_eq!(&replayed[*i as usize][..], &val[..]);
    }
    // PCR 10 and 12 were never extended: zero, and the replay agrees.
    assert_eq!(quote.pcrs[12].1, vec![0u8; 32]);

    // Without a log the quote still verifies, the log checks are skipped.
    let v = q::verify_quote(
        &ak.public,
        &quote.attest,
        &quote.signature,
        &n,
        &quote.pcrs,
        None,
    );
    assert_ok(&v);
    assert_eq!(
        v.check(q::CHECK_EVENT_REPLAY).unwrap().result,
        Outcome::Skipped
    );

    if let Some(dir) = std::env::var_os("BULWARK_TPM_RECORD") {
        record(Path::new(&dir), &ak.public, &quote, &n, log.as_bytes());
    }
}

/// Save a good quote for attestation/testdata/tpm (run with
/// BULWARK_TPM_RECORD=attestation/testdata/tpm).
fn record(dir: &Path, ak_public: &[u8], quote: &bulwark_tpm::Quote, n: &[u8], log: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("ak.pub"), ak_public).unwrap();
    std::fs::write(dir.join("quote.msg"), &quote.attest).unwrap();
    std::fs::write(dir.join("quote.sig"), &quote.signature).unwrap();
    std::fs::write(dir.join("nonce.hex"), hex::encode(n) + "\n").unwrap();
    std::fs::write(dir.join("eventlog.bin"), log).unwrap();
    let pcrs: String = quote
        .pcrs
        .iter()
        .map(|(i, v)| format!("{i} {}\n", hex::encode(v)))
        .collect();
    std::fs::write(dir.join("pcrs.txt"), pcrs).unwrap();
}

fn tool(sw: &Swtpm, dir: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .current_dir(dir)
        .env("TPM2TOOLS_TCTI", sw.tcti())
        .output()
        .unwrap_or_else(|e| panic!("{} ({e}): run scripts/setup (installs tpm2-tools)", args[0]));
    out
}

fn checkquote(sw: &Swtpm, dir: &Path, msg: &str, nonce_hex: &str) -> bool {
    let out = tool(
        sw,
        dir,
        &[
            "tpm2_checkquote",
            "-u",
            "ak.pub",
            "-m",
            msg,
            "-s",
            "quote.sig",
            "-f",
            "pcrs.bin",
            "-g",
            "sha256",
            "-q",
            nonce_hex,
        ],
    );
    eprintln!(
        "tpm2_checkquote {msg} -q {nonce_hex}: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out.status.success()
}

#[test]
fn quote_verdicts_agree_with_tpm2_checkquote() {
    let sw = start();
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    let n = nonce(2);
    let (ak, quote, log) = {
        let mut tpm = open(&sw);
        let log = measure_boot(&mut tpm);
        let ak = tpm.create_ak().expect("create AK");
        let quote = tpm.quote(&PCRS, &n).expect("quote");
        tpm.flush().expect("flush");
        (ak, quote, log)
    };
    // The connection is closed: tpm2-tools may talk to the swtpm now.
    std::fs::write(d.join("ak.pub"), &ak.public).unwrap();
    std::fs::write(d.join("quote.msg"), &quote.attest).unwrap();
    std::fs::write(d.join("quote.sig"), &quote.signature).unwrap();
    let out = tool(
        &sw,
        d,
        &[
            "tpm2_pcrread",
            "sha256:0,1,2,3,4,5,6,7,8,9,10,11,12",
            "-F",
            "serialized",
            "-o",
            "pcrs.bin",
        ],
    );
    assert!(out.status.success(), "tpm2_pcrread: {out:?}");
    assert_eq!(std::fs::metadata(d.join("pcrs.bin")).unwrap().len(), 1200);

    let good_hex = hex::encode(&n);
    let ours = |attest: &[u8], expected: &[u8]| {
        q::verify_quote(
            &ak.public,
            attest,
            &quote.signature,
            expected,
            &quote.pcrs,
            Some(log.as_bytes()),
        )
    };

    // Good quote: both accept.
    assert!(checkquote(&sw, d, "quote.msg", &good_hex));
    assert_ok(&ours(&quote.attest, &n));

    // Wrong nonce: both reject; ours names the extra-data check.
    let mut wrong = n.clone();
    wrong[0] ^= 1;
    assert!(!checkquote(&sw, d, "quote.msg", &hex::encode(&wrong)));
    assert_eq!(
        failed(&ours(&quote.attest, &wrong)),
        vec![q::CHECK_EXTRA_DATA]
    );

    // A tampered attest byte (in pcrDigest, the last byte): both reject.
    let mut tampered = quote.attest.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    std::fs::write(d.join("tampered.msg"), &tampered).unwrap();
    assert!(!checkquote(&sw, d, "tampered.msg", &good_hex));
    let v = ours(&tampered, &n);
    assert!(failed(&v).contains(&q::CHECK_SIGNATURE), "{:?}", failed(&v));
    assert!(
        failed(&v).contains(&q::CHECK_PCR_DIGEST),
        "{:?}",
        failed(&v)
    );

    // A tampered byte in the firmware version: signature only.
    let mut tampered = quote.attest.clone();
    let fw = 4 + 2 + 2 + 34 + 2 + 32 + 17; // magic type signer(2+34) extraData(2+32) clockInfo
    tampered[fw] ^= 0x80;
    std::fs::write(d.join("tampered2.msg"), &tampered).unwrap();
    assert!(!checkquote(&sw, d, "tampered2.msg", &good_hex));
    assert_eq!(failed(&ours(&tampered, &n)), vec![q::CHECK_SIGNATURE]);
}

#[test]
fn verifier_rejects_late_extends_and_tampered_logs() {
    let sw = start();
    let mut tpm = open(&sw);
    let log = measure_boot(&mut tpm);
    let ak = tpm.create_ak().expect("create AK");
    let n = nonce(3);
    let quote = tpm.quote(&PCRS, &n).expect("quote");
    let verify = |attest: &[u8], sig: &[u8], pcrs: &[(u32, Vec<u8>)], log: &[u8]| {
        q::verify_quote(&ak.public, attest, sig, &n, pcrs, Some(log))
    };
    assert_ok(&verify(
        &quote.attest,
        &quote.signature,
        &quote.pcrs,
        log.as_bytes(),
    ));

    // PCR 8 extended after the log was written, without logging it.
    tpm.extend_pcr(8, &[0x42; 32]).expect("extend");
    // The old quote with the PCR values read now: the digest no longer matches.
    let now = tpm.read_pcrs(&PCRS).expect("read PCRs");
    let v = verify(&quote.attest, &quote.signature, &now, log.as_bytes());
    assert!(
        failed(&v).contains(&q::CHECK_PCR_DIGEST),
        "{:?}",
        failed(&v)
    );
    // A fresh quote: authentic, but the log does not reproduce PCR 8.
    let fresh = tpm.quote(&PCRS, &n).expect("quote");
    let v = verify(&fresh.attest, &fresh.signature, &fresh.pcrs, log.as_bytes());
    assert_eq!(failed(&v), vec![q::CHECK_EVENT_REPLAY]);
    let detail = &v.check(q::CHECK_EVENT_REPLAY).unwrap().detail;
    assert!(detail.starts_with("PCR 8:"), "{detail}");

    // Tampered logs against the original (good) quote.
    let bytes = log.as_bytes();
    let header = 32 + 33; // TCG_PCR_EVENT fixed part + Spec ID event
    let first_digest = header + 4 + 4 + 4 + 2; // pcr, type, count, alg
    let mut t = bytes.to_vec();
    t[first_digest] ^= 1;
    let v = verify(&quote.attest, &quote.signature, &quote.pcrs, &t);
    assert!(
        failed(&v).contains(&q::CHECK_EVENT_REPLAY),
        "{:?}",
        failed(&v)
    );
    assert!(v
        .check(q::CHECK_EVENT_REPLAY)
        .unwrap()
        .detail
        .starts_with("PCR 0:"));
    // The event's data ("bulwark test firmware 1.0") changed, digest kept.
    let first_data = first_digest + 32 + 4;
    let mut t = bytes.to_vec();
    t[first_data] ^= 0x20;
    let v = verify(&quote.attest, &quote.signature, &quote.pcrs, &t);
    assert_eq!(failed(&v), vec![q::CHECK_EVENT_DIGESTS]);
    // A truncated log is a format failure.
    let v = verify(
        &quote.attest,
        &quote.signature,
        &quote.pcrs,
        &bytes[..bytes.len() - 3],
    );
    assert!(failed(&v).contains(&q::CHECK_EVENT_LOG), "{:?}", failed(&v));
    // An event dropped from the log.
    let v = verify(
        &quote.attest,
        &quote.signature,
        &quote.pcrs,
        &bytes[..header],
    );
    assert_eq!(failed(&v), vec![q::CHECK_EVENT_REPLAY]);
    tpm.flush().unwrap();
}
