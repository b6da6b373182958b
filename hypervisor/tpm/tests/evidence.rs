//! Bulwark evidence in TPM mode against a real (software) TPM: the node enrolls its
//! AK by credential activation against the EK certificate, measures a synthetic boot
//! into PCRs and an event log, quotes with the evidence body's binding hash as
//! qualifying data, and signs the document; `bulwark_attestation`'s verifier affirms
//! it under a policy that trusts the swtpm CA, and refuses it, naming the check, when
//! the nonce, the PCRs (a late extend), the event log, the enrolled AK or the pinned
//! node identity do not match. Needs swtpm (`scripts/setup`).

use std::time::{SystemTime, UNIX_EPOCH};

use bulwark_attestation::evidence::appraise::VerifyOptions;
use bulwark_attestation::evidence::document::{ImageId, Pcr};
use bulwark_attestation::evidence::{
    self, build_evidence, EvidenceInputs, EvidenceSigningKey, LaunchClaims, Policy,
};
use bulwark_attestation::VerificationTime;
use bulwark_tpm::attester::{Attester, TpmAttester, QUOTED_PCRS};
use bulwark_tpm::eventlog::{EventLogWriter, EV_EFI_ACTION, EV_SEPARATOR};
use bulwark_tpm::harness::Swtpm;
use bulwark_tpm::Tpm;

const NODE_SIGNER: [u8; 32] = [0x11; 32];
const TENANT_SIGNER: [u8; 32] = [0x44; 32];
const NONCE: [u8; 32] = [0x5a; 32];
const MEASUREMENT: &str = "7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What `GET /vm` says about the tenant VM.
fn vm_info() -> serde_json::Value {
    serde_json::json!({
        "state": "running",
        "measurement": {"value": MEASUREMENT, "events": []},
        "signed": true,
        "boot_source": {"kind": "signed", "name": "tenant-app", "version": 3,
                        "manifest_sha384": "22".repeat(48)},
        "cpuid_policy": "bulwark-default-v1",
        "vcpus": [{"index": 0, "exits": 0}],
        "memory": {"guest_ram_bytes": 268435456u64, "prefault_ms": null},
        "unowned_pio": 0
    })
}

/// The node side: enrollment, a measured boot, and the evidence inputs whose quote
/// binds the body. `extend_after` extends PCR 8 after the quote (without logging it).
struct Node {
    sw: Swtpm,
    inputs: EvidenceInputs,
    key: EvidenceSigningKey,
}

/// The swtpm EK certificate's issuer (DER), what the node puts in `ek_chain`.
fn ek_issuer(sw: &Swtpm) -> Vec<u8> {
    let issuer = std::fs::read(sw.ca_issuer_pem()).expect("issuer PEM");
    bulwark_attestation::x509::parse_pem_certificates(&issuer)
        .expect("issuer parses")
        .remove(0)
        .der
        .clone()
}

fn node(extend_after: bool) -> Node {
    let sw = Swtpm::start().unwrap_or_else(|e| panic!("cannot start swtpm: {e}"));
    let mut t = Tpm::open(&sw.tcti()).expect("open the TPM");
    // A measured boot.
    let mut log = EventLogWriter::new();
    for (pcr, what) in [
        (0u32, &b"bulwark test firmware"[..]),
        (4, b"bulwark node UKI"),
        (8, b"console=ttyS0 bulwark.version=7"),
        (11, b"node image manifest"),
    ] {
        log.measure(&mut t, pcr, EV_EFI_ACTION, what)
            .expect("measure");
    }
    for pcr in 0..=7 {
        log.measure(&mut t, pcr, EV_SEPARATOR, &[0, 0, 0, 0])
            .expect("separator");
    }
    let issuer_der = ek_issuer(&sw);
    // Enrollment: the AK's credential, made for its name and the EK certificate's key,
    // is activated by the TPM.
    let mut attester =
        TpmAttester::enroll(t, vec![issuer_der], log.into_bytes()).expect("enroll the AK");
    let claims =
        LaunchClaims::from_vm_info(&vm_info(), &[TENANT_SIGNER.to_vec()]).expect("launch claims");
    let key = EvidenceSigningKey::generate().expect("evidence key");
    let inputs = EvidenceInputs {
        node_image: ImageId {
            name: "bulwark-node".into(),
            version: 7,
            manifest_sha384: vec![0x22; 48].into(),
            signer_key_ids: vec![NODE_SIGNER.to_vec().into()],
        },
        tpm: None,
        launch: claims.launch,
        isolation: claims.isolation,
        tee: None,
        gpus: vec![],
        nonce: NONCE.to_vec(),
        timestamp: now(),
        tls_key_sha256: Some(vec![0x33; 32]),
    };
    let mut inputs = attester.quoted_inputs(inputs, &key).expect("quote");
    if extend_after {
        attester
            .tpm_mut()
            .extend_pcr(8, &[0xee; 32])
            .expect("late extend");
        let now_pcrs = attester
            .tpm_mut()
            .read_pcrs(&QUOTED_PCRS)
            .expect("read PCRs");
        if let Some(q) = inputs.tpm.as_mut().and_then(|t| t.quote.as_mut()) {
            q.pcrs = now_pcrs
                .into_iter()
                .map(|(index, v)| Pcr {
                    index,
                    sha256: v.into(),
                })
                .collect();
        }
    }
    Node { sw, inputs, key }
}

fn policy(sw: &Swtpm, extra_node: &str) -> Policy {
    let text = format!(
        r#"max_age_seconds = 300
[node]
image_signers = ["{}"]
ek_roots = ["{}"]
{extra_node}
[vm]
image_signers = ["{}"]
measurements = ["{MEASUREMENT}"]
"#,
        hex::encode(NODE_SIGNER),
        sw.ca_root_pem().display(),
        hex::encode(TENANT_SIGNER),
    );
    Policy::parse(&text, std::path::Path::new("/"))
        .unwrap_or_else(|e| panic!("policy: {e}\n{text}"))
}

fn opts(nonce: &[u8]) -> VerifyOptions {
    VerifyOptions {
        nonce: Some(nonce.to_vec()),
        at: VerificationTime::now(),
    }
}

fn failed(a: &evidence::EvidenceAppraisal) -> Vec<String> {
    a.failures().map(|(_, c)| c.name.to_string()).collect()
}

#[test]
fn tpm_evidence_is_affirmed_and_each_mismatch_is_named() {
    let n = node(false);
    let doc = build_evidence(&n.inputs, &n.key).expect("build evidence");
    let p = policy(&n.sw, "");
    let a = evidence::verify_document(&doc, &p, &opts(&NONCE)).expect("appraise");
    assert!(a.is_ok(), "{}", a.to_text());
    for name in [
        "tpm-quote-signature",
        "tpm-quote-extra-data",
        "tpm-pcr-digest",
        "tpm-event-log-replay",
        "tpm-ak-enrolled",
    ] {
        assert!(
            a.check(name)
                .is_some_and(|c| c.result == bulwark_attestation::checks::Outcome::Passed),
            "{name}: {}",
            a.to_text()
        );
    }

    // Another nonce than the one asked for.
    let a = evidence::verify_document(&doc, &p, &opts(&[0x11; 32])).unwrap();
    assert!(
        failed(&a).contains(&"freshness-nonce".to_string()),
        "{:?}",
        failed(&a)
    );

    // A node identity the policy does not pin.
    let pinned = policy(&n.sw, r#"pinned_identities = ["CN=some-other-node-ca"]"#);
    let a = evidence::verify_document(&doc, &pinned, &opts(&NONCE)).unwrap();
    assert!(!a.is_ok(), "{}", a.to_text());

    // The event log with one event changed no longer reproduces the quoted PCRs.
    let mut bad_log = n.inputs.clone();
    if let Some(q) = bad_log.tpm.as_mut().and_then(|t| t.quote.as_mut()) {
        let log = &mut q.event_log.0;
        let at = log.len() - 40;
        log[at] ^= 0x01;
    }
    let doc2 = build_evidence(&bad_log, &n.key).unwrap();
    let a = evidence::verify_document(&doc2, &p, &opts(&NONCE)).unwrap();
    assert!(
        failed(&a).iter().any(|f| f.starts_with("tpm-event-log")),
        "{:?}",
        failed(&a)
    );

    // An AK other than the enrolled one.
    let mut other_ak = n.inputs.clone();
    if let Some(t) = other_ak.tpm.as_mut() {
        t.ak_activation.ak_name.0[5] ^= 0x01;
    }
    let doc3 = build_evidence(&other_ak, &n.key).unwrap();
    let a = evidence::verify_document(&doc3, &p, &opts(&NONCE)).unwrap();
    assert!(
        failed(&a).contains(&"tpm-ak-enrolled".to_string()),
        "{:?}",
        failed(&a)
    );

    // Another launch measurement than the policy's: the VM is not the approved one,
    // and the quote (bound to the body) no longer matches either.
    let mut other_vm = n.inputs.clone();
    other_vm.launch.measurement.0[0] ^= 0x01;
    let doc4 = build_evidence(&other_vm, &n.key).unwrap();
    let a = evidence::verify_document(&doc4, &p, &opts(&NONCE)).unwrap();
    let f = failed(&a);
    assert!(f.contains(&"launch-measurement".to_string()), "{f:?}");
    assert!(f.contains(&"tpm-quote-extra-data".to_string()), "{f:?}");
}

#[test]
fn a_pcr_extended_after_the_quote_is_refused() {
    let n = node(true);
    let doc = build_evidence(&n.inputs, &n.key).expect("build evidence");
    let a = evidence::verify_document(&doc, &policy(&n.sw, ""), &opts(&NONCE)).unwrap();
    assert!(
        failed(&a).contains(&"tpm-pcr-digest".to_string()),
        "{:?}",
        failed(&a)
    );
}

#[test]
fn the_node_attester_signs_tpm_evidence_and_says_software_when_it_has_no_tpm() {
    let n = node(false);
    let p = policy(&n.sw, "");
    // The Attester re-quotes for each document: fresh inputs, same enrollment.
    let mut tpm_inputs = n.inputs.clone();
    tpm_inputs.tpm = None;
    let sw = Swtpm::start().expect("a second swtpm");
    let t = Tpm::open(&sw.tcti()).expect("open");
    let issuer_der = ek_issuer(&sw);
    let enrolled = TpmAttester::enroll(t, vec![issuer_der], EventLogWriter::new().into_bytes())
        .expect("enroll");
    let mut attester = Attester::Tpm(Box::new(enrolled), n.key);
    assert_eq!(attester.kind(), "tpm");
    let doc = attester.evidence(tpm_inputs.clone()).expect("TPM evidence");
    let a = evidence::verify_document(&doc, &policy(&sw, ""), &opts(&NONCE)).unwrap();
    assert!(a.is_ok(), "{}", a.to_text());
    // Under the first swtpm's CA, this node's EK does not chain.
    let a = evidence::verify_document(&doc, &p, &opts(&NONCE)).unwrap();
    assert!(!a.is_ok(), "{}", a.to_text());

    let mut software = Attester::Software(EvidenceSigningKey::generate().unwrap());
    assert_eq!(software.kind(), "software-key");
    let doc = software.evidence(tpm_inputs).expect("software evidence");
    let a = evidence::verify_document(&doc, &p, &opts(&NONCE)).unwrap();
    assert!(
        failed(&a).contains(&"key-protection".to_string()),
        "{:?}",
        failed(&a)
    );
}
