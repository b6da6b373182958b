//! Bulwark evidence end to end in software-key mode: a signed tenant image is
//! built, `predict` computes its launch measurement with bulwark-vmm's own
//! loader and writes the policy, the producer signs a document, and the
//! verifier accepts it; then each way it must be refused.

mod common;
#[path = "common/synthetic_tpm.rs"]
mod synthetic_tpm;

use bulwark_attestation::cache::ChainCache;
use bulwark_attestation::checks::Outcome;
use bulwark_attestation::evidence::appraise::VerifyOptions;
use bulwark_attestation::evidence::document::{self, AkActivation, Gpu, Pcr, Tpm, TpmQuote};
use bulwark_attestation::evidence::{
    self, build_evidence, predict, EvidenceInputs, EvidenceSigningKey, LaunchClaims, Policy,
};
use bulwark_attestation::VerificationTime;
use bulwark_image::{build, generate_key_pair, sign, BuildSpec, SigningKey};
use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};

const T: u64 = 1_750_000_000;
const NONCE: [u8; 32] = [0x5a; 32];
const NODE_SIGNER: [u8; 32] = [0x11; 32];

struct Fixture {
    dir: PathBuf,
    bundle: PathBuf,
    other_bundle: PathBuf,
    key_pub: PathBuf,
    other_pub: PathBuf,
    key_id: Vec<u8>,
    vm_json: PathBuf,
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bulwark-evidence-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn make_bundle(dir: &Path, key: &Path, name: &str, kernel: &[u8]) -> PathBuf {
    let k = dir.join(format!("{name}.kernel"));
    std::fs::write(&k, kernel).unwrap();
    let spec = BuildSpec {
        name: "tenant-app".into(),
        version: 3,
        created: 0,
        kernel: k,
        initrd: None,
        cmdline: None,
        config: None,
        rootfs: None,
    };
    let out = dir.join(format!("{name}.bwi"));
    build(&spec, &out, &|_| {}).unwrap();
    sign(&out, &SigningKey::from_pem_file(key).unwrap(), &|_| {}).unwrap();
    out
}

fn fixture(name: &str) -> Fixture {
    let dir = scratch(name);
    let (key, key_pub, pk) = generate_key_pair(&dir.join("keys")).unwrap();
    let (_, other_pub, _) = generate_key_pair(&dir.join("other")).unwrap();
    // A flat binary loaded by the raw loader: any bytes will do.
    let kernel: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    let bundle = make_bundle(&dir, &key, "tenant", &kernel);
    let mut k2 = kernel.clone();
    k2[100] ^= 1;
    let other_bundle = make_bundle(&dir, &key, "tenant2", &k2);
    let vm_json = dir.join("vm.json");
    std::fs::write(
        &vm_json,
        json!({
            "machine": {"vcpus": 2, "mem_mib": 64},
            "boot_source": {"kind": "bundle", "path": "ignored", "trusted_keys": ["ignored"],
                "raw": {"load_addr": 1048576, "entry": {"mode": "long64", "rip": 1048576}}},
            "devices": {"debug_exit": true}
        })
        .to_string(),
    )
    .unwrap();
    Fixture {
        dir,
        bundle,
        other_bundle,
        key_pub,
        other_pub,
        key_id: hex::decode(pk.id_hex()).unwrap(),
        vm_json,
    }
}

/// What `GET /vm` would say for a VM booted from this prediction.
fn vm_info(p: &predict::Prediction) -> serde_json::Value {
    json!({
        "state": "running",
        "measurement": {"value": p.measurement, "events": p.events},
        "signed": true,
        "boot_source": {"kind": "signed", "name": p.image_name, "version": p.image_version,
                        "manifest_sha384": p.manifest_sha384},
        "cpuid_policy": p.cpuid_policy,
        "vcpus": (0..p.vcpus).map(|i| json!({"index": i, "exits": 0})).collect::<Vec<_>>(),
        "memory": {"guest_ram_bytes": p.memory_bytes, "prefault_ms": null},
        "unowned_pio": 0
    })
}

fn inputs(f: &Fixture, bundle: &Path) -> EvidenceInputs {
    let p = predict::predict(bundle, std::slice::from_ref(&f.key_pub), Some(&f.vm_json)).unwrap();
    let claims = LaunchClaims::from_vm_info(&vm_info(&p), std::slice::from_ref(&f.key_id)).unwrap();
    assert!(
        claims.launch.unknown.is_empty(),
        "{:?}",
        claims.launch.unknown
    );
    EvidenceInputs {
        node_image: node_image(NODE_SIGNER),
        tpm: None,
        launch: claims.launch,
        isolation: claims.isolation,
        tee: None,
        gpus: vec![],
        nonce: NONCE.to_vec(),
        timestamp: T,
        tls_key_sha256: Some(vec![0x33; 32]),
    }
}

/// The policy `bulwark-verify predict` writes for the fixture's image.
fn predicted_policy(f: &Fixture, allow_software_key: bool) -> PathBuf {
    let mut args = vec![
        "predict".to_string(),
        f.bundle.display().to_string(),
        "--trust".into(),
        f.key_pub.display().to_string(),
        "--vm".into(),
        f.vm_json.display().to_string(),
        "--node-signer".into(),
        hex::encode(NODE_SIGNER),
    ];
    if allow_software_key {
        args.push("--allow-software-key".into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = cli(&args);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let p = f.dir.join(if allow_software_key {
        "policy-test.toml"
    } else {
        "policy-default.toml"
    });
    std::fs::write(&p, &o.stdout).unwrap();
    p
}

fn opts(at: u64) -> VerifyOptions {
    VerifyOptions {
        nonce: Some(NONCE.to_vec()),
        at: VerificationTime::from_unix_seconds(at as i64),
    }
}

fn appraise(doc: &[u8], policy: &Path, o: &VerifyOptions) -> evidence::EvidenceAppraisal {
    let policy = Policy::from_file(policy).unwrap();
    evidence::verify_document(doc, &policy, o).unwrap()
}

fn failed(a: &evidence::EvidenceAppraisal) -> Vec<String> {
    a.failures().map(|(_, c)| c.name.to_string()).collect()
}

#[test]
fn software_key_evidence_end_to_end() {
    let f = fixture("e2e");
    let key = EvidenceSigningKey::generate().unwrap();
    let doc = build_evidence(&inputs(&f, &f.bundle), &key).unwrap();
    let policy = predicted_policy(&f, true);

    // Accepted, with the software key and the unknown tenancy as warnings.
    let a = appraise(&doc, &policy, &opts(T + 10));
    assert!(a.is_ok(), "{}", a.to_text());
    assert_eq!(a.check("key-protection").unwrap().result, Outcome::Warning);
    assert_eq!(
        a.check("launch-measurement").unwrap().result,
        Outcome::Passed
    );
    assert_eq!(a.check("launch-image").unwrap().result, Outcome::Passed);
    assert_eq!(a.check("launch-config").unwrap().result, Outcome::Passed);
    let j = a.to_json();
    assert_eq!(j["status"], "warning");
    assert_eq!(j["submods"]["node"]["ear_status"], "warning");
    assert_eq!(
        j["submods"]["vm"]["ear_trustworthiness_vector"]["executables"],
        2
    );
    assert_eq!(
        j["submods"]["node"]["ear_attester_claims"]["key_protection"],
        "software"
    );

    // Another image (one kernel byte differs): its measurement is not allowed.
    let other = build_evidence(&inputs(&f, &f.other_bundle), &key).unwrap();
    assert_eq!(
        failed(&appraise(&other, &policy, &opts(T + 10))),
        ["launch-measurement"]
    );

    // Another signer in the policy.
    let text = std::fs::read_to_string(&policy).unwrap();
    let other_id = bulwark_image::PublicKey::from_pem_file(&f.other_pub)
        .unwrap()
        .id_hex();
    let swapped = f.dir.join("policy-other-signer.toml");
    std::fs::write(&swapped, text.replace(&hex::encode(&f.key_id), &other_id)).unwrap();
    assert_eq!(
        failed(&appraise(&doc, &swapped, &opts(T + 10))),
        ["launch-image"]
    );

    // A wrong nonce.
    let mut o = opts(T + 10);
    o.nonce = Some(vec![0; 32]);
    assert_eq!(failed(&appraise(&doc, &policy, &o)), ["freshness-nonce"]);

    // Too old, and from the future.
    assert_eq!(
        failed(&appraise(&doc, &policy, &opts(T + 301))),
        ["freshness-age"]
    );
    assert_eq!(
        failed(&appraise(&doc, &policy, &opts(T - 3600))),
        ["freshness-age"]
    );

    // A tampered body byte that keeps the CBOR valid (a letter of the node
    // image name): the signature fails.
    let pos = doc.windows(12).position(|w| w == b"bulwark-node").unwrap();
    let mut t = doc.clone();
    t[pos] ^= 0x01;
    assert_eq!(
        failed(&appraise(&t, &policy, &opts(T + 10))),
        ["evidence-signature"]
    );

    // A tampered signature.
    let mut t = doc.clone();
    let last = t.len() - 1;
    t[last] ^= 0x01;
    assert_eq!(
        failed(&appraise(&t, &policy, &opts(T + 10))),
        ["evidence-signature"]
    );

    // The software key under the default policy.
    let strict = predicted_policy(&f, false);
    assert_eq!(
        failed(&appraise(&doc, &strict, &opts(T + 10))),
        ["key-protection"]
    );

    // The policy may also name the signed image and let the verifier predict.
    let from = f.dir.join("policy-predict-from.toml");
    std::fs::write(
        &from,
        format!(
            "allow_software_key = true\n[node]\nimage_signers = [{:?}]\n[vm]\nimage_signers = [{:?}]\n\
             [[vm.predict_from]]\nimage = {:?}\ntrust = [{:?}]\nvm = {:?}\n",
            hex::encode(NODE_SIGNER),
            hex::encode(&f.key_id),
            f.bundle.display().to_string(),
            f.key_pub.display().to_string(),
            "vm.json",
        ),
    )
    .unwrap();
    assert!(appraise(&doc, &from, &opts(T + 10)).is_ok());
    assert_eq!(
        failed(&appraise(&other, &from, &opts(T + 10))),
        ["launch-measurement"]
    );
}

#[test]
fn every_single_byte_flip_is_refused_without_panic() {
    let f = fixture("flip");
    let key = EvidenceSigningKey::generate().unwrap();
    let doc = build_evidence(&inputs(&f, &f.bundle), &key).unwrap();
    let policy = Policy::from_file(&predicted_policy(&f, true)).unwrap();
    let o = opts(T + 10);
    assert!(evidence::verify_document(&doc, &policy, &o)
        .unwrap()
        .is_ok());
    let mut parse_errors = 0;
    for i in 0..doc.len() {
        for mask in [0x01u8, 0x80] {
            let mut t = doc.clone();
            t[i] ^= mask;
            match evidence::verify_document(&t, &policy, &o) {
                Err(_) => parse_errors += 1,
                Ok(a) => assert!(!a.is_ok(), "byte {i} ^ {mask:#x} accepted"),
            }
        }
    }
    assert!(parse_errors > 0);
    // Truncation at every length.
    for len in 0..doc.len() {
        assert!(evidence::verify_document(&doc[..len], &policy, &o).is_err());
    }
}

#[test]
fn tpm_evidence_is_never_accepted_until_the_quote_verifier_is_linked() {
    let f = fixture("tpm");
    let key = EvidenceSigningKey::generate().unwrap();
    let mut i = inputs(&f, &f.bundle);
    i.tpm = Some(Tpm {
        ek_certificate: vec![0x30, 0x00].into(),
        ek_chain: vec![],
        ak_public: vec![0; 8].into(),
        ak_activation: AkActivation {
            enrolled_at: T - 86400,
            ak_name: vec![0; 34].into(),
        },
        quote: Some(TpmQuote {
            attest: vec![0; 8].into(),
            signature: vec![0; 8].into(),
            pcrs: vec![Pcr {
                index: 0,
                sha256: vec![0; 32].into(),
            }],
            event_log: vec![].into(),
        }),
    });
    let doc = build_evidence(&i, &key).unwrap();
    let policy = Policy::permissive();
    let a = evidence::verify_document(&doc, &policy, &opts(T + 10)).unwrap();
    assert!(!a.is_ok());
    let names = failed(&a);
    // A made-up AK public area: the TPM verifier refuses it, and the quote with it.
    assert!(names.contains(&"tpm-ak-public".to_string()), "{names:?}");
    assert!(names.contains(&"tpm-ak-enrolled".to_string()), "{names:?}");
    // The binding hash does not depend on the quote, and the body names TPM mode.
    let body = evidence::parse_document(&doc).unwrap().body;
    assert_eq!(body.node.attestation, document::attestation_kind::TPM);
    let mut no_quote = body.clone();
    no_quote.node.tpm.as_mut().unwrap().quote = None;
    assert_eq!(
        body.binding_hash().unwrap(),
        no_quote.binding_hash().unwrap()
    );
}

#[test]
fn gpu_evidence_goes_through_the_nvidia_verifier_with_the_derived_nonce() {
    let f = fixture("gpu");
    let key = EvidenceSigningKey::generate().unwrap();
    let mut i = inputs(&f, &f.bundle);
    i.isolation.devices.push(document::PciDevice {
        host_bdf: "0000:41:00.0".into(),
        id: "10de:2331".into(),
        serial: None,
        iommu_group: Some(7),
        group_exclusive: Some(true),
        sanitized: None,
    });
    i.gpus.push(Gpu {
        host_bdf: "0000:41:00.0".into(),
        spdm: read("nvidia/hopper-report.hex").into(),
        cert_chain: read("nvidia/hopper-cert-chain.pem").into(),
        rims: vec![],
    });
    let doc = build_evidence(&i, &key).unwrap();
    let mut policy = Policy::permissive();
    policy.gpu.require_cc = true;
    // The real report's nonce is not derived from this challenge: only the
    // nonce check fails, in the gpu0 submodule.
    let at = VerificationTime::parse("2024-06-01T00:00:00Z").unwrap();
    let a = evidence::verify_document(
        &doc,
        &policy,
        &VerifyOptions {
            nonce: Some(NONCE.to_vec()),
            at,
        },
    )
    .unwrap();
    // (The permissive policy allows no image or measurement: those fail too.)
    let fails = |subject: &str| -> Vec<&str> {
        a.failures()
            .filter(|(s, _)| *s == subject)
            .map(|(_, c)| c.name)
            .collect()
    };
    assert_eq!(fails("gpu0"), ["expect-nonce"]);
    let vm = fails("vm");
    assert!(
        !vm.contains(&"gpu-cc-required") && !vm.contains(&"isolation-devices"),
        "{vm:?}"
    );
    assert_eq!(
        a.check("expect-nonce").unwrap().detail,
        format!(
            "expected {}, found 931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb",
            hex::encode(document::gpu_nonce_for(&NONCE))
        )
    );
    let j = a.to_json();
    assert_eq!(
        j["submods"]["gpu0"]["ear_attester_claims"]["driver_version"],
        "550.90.07"
    );
    assert_eq!(
        j["submods"]["gpu0"]["ear_trustworthiness_vector"]["hardware"],
        2
    );
}

#[test]
fn cli_exit_codes() {
    let f = fixture("cli");
    let key = EvidenceSigningKey::generate().unwrap();
    let doc = build_evidence(&inputs(&f, &f.bundle), &key).unwrap();
    let policy = predicted_policy(&f, true);
    let file = f.dir.join("evidence.cose");
    std::fs::write(&file, &doc).unwrap();
    let (file, policy) = (file.display().to_string(), policy.display().to_string());
    let at = (T + 10).to_string() + "000";
    let nonce = hex::encode(NONCE);
    let base = ["evidence", &file, "--policy", &policy, "--at", &at];
    let run = |extra: &[&str]| {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        cli(&args)
    };
    let o = run(&["--nonce", &nonce]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert!(stdout(&o).contains("VERIFIED with warnings"));
    let o = run(&["--nonce", &nonce, "--json"]);
    assert_eq!(code(&o), 0);
    let j = json(&o);
    assert_eq!(j["eat_profile"], bulwark_attestation::ear::EAT_PROFILE);
    assert!(j["submods"]["vm"]["bulwark_checks"].is_array());
    assert_eq!(code(&run(&["--nonce", "00"])), 1);
    assert_eq!(code(&run(&["--nonce", "zz"])), 2);
    // Unparsable evidence, an unknown policy key, a missing policy: 2.
    let junk = TempFile::new("junk.cose", b"\xd2\x84junk");
    assert_eq!(
        code(&cli(&["evidence", &junk.path(), "--policy", &policy])),
        2
    );
    let bad = TempFile::new("bad-policy.toml", b"allow_software_keys = true\n");
    let o = cli(&["evidence", &file, "--policy", &bad.path()]);
    assert_eq!(code(&o), 2);
    assert!(String::from_utf8_lossy(&o.stderr).contains("allow_software_keys"));
    assert_eq!(
        code(&cli(&["evidence", &file, "--policy", "/nonexistent"])),
        2
    );
    // predict: an untrusted key or a missing image is exit 2.
    let (b, other) = (
        f.bundle.display().to_string(),
        f.other_pub.display().to_string(),
    );
    assert_eq!(code(&cli(&["predict", &b, "--trust", &other])), 2);
    assert_eq!(
        code(&cli(&["predict", "/nonexistent", "--trust", &other])),
        2
    );
    let (k, vm) = (
        f.key_pub.display().to_string(),
        f.vm_json.display().to_string(),
    );
    let o = cli(&["predict", &b, "--trust", &k, "--vm", &vm, "--json"]);
    assert_eq!(code(&o), 0);
    assert_eq!(json(&o)["measurement"].as_str().unwrap().len(), 96);
}

#[test]
fn the_testdata_document_verifies_under_the_testdata_policy() {
    let a = appraise(
        &read("evidence/software-key.cose"),
        &testdata("evidence/policy.toml"),
        &VerifyOptions {
            nonce: Some(NONCE.to_vec()),
            at: VerificationTime::parse("2025-06-15T15:06:40Z").unwrap(),
        },
    );
    assert!(a.is_ok(), "{}", a.to_text());
}

/// TPM mode without a TPM: the VM of the testdata document, on a node whose
/// EK chain, AK and quote are made in software (`common/synthetic_tpm.rs`).
struct TpmNode {
    dir: PathBuf,
    inputs: EvidenceInputs,
    key: EvidenceSigningKey,
    pki: synthetic_tpm::EkPki,
    ak: synthetic_tpm::SoftwareAk,
    policy: Policy,
    opts: VerifyOptions,
    /// freshness.timestamp of the document.
    t: i64,
}

/// The EK certificate is valid for a year either side of the document's time.
fn tpm_node(name: &str) -> TpmNode {
    let dir = scratch(name);
    let body = evidence::parse_document(&read("evidence/software-key.cose"))
        .unwrap()
        .body;
    let inputs = synthetic_tpm::inputs_of(&body);
    let t = body.freshness.timestamp as i64;
    let pki = synthetic_tpm::EkPki::generate(t - 365 * 86400, t + 365 * 86400);
    std::fs::write(dir.join("ek-root.pem"), &pki.root_pem).unwrap();
    let text = String::from_utf8(read("evidence/policy.toml"))
        .unwrap()
        .replace("allow_software_key = true", "allow_software_key = false")
        .replace("[node]\n", "[node]\nek_roots = [\"ek-root.pem\"]\n");
    std::fs::write(dir.join("policy.toml"), &text).unwrap();
    TpmNode {
        policy: Policy::from_file(&dir.join("policy.toml")).unwrap(),
        dir,
        inputs,
        key: EvidenceSigningKey::generate().unwrap(),
        pki,
        ak: synthetic_tpm::SoftwareAk::generate(),
        opts: VerifyOptions {
            nonce: Some(NONCE.to_vec()),
            at: VerificationTime::from_unix_seconds(t + 10),
        },
        t,
    }
}

impl TpmNode {
    fn document(&self, pki: &synthetic_tpm::EkPki, enrolled_at: i64) -> Vec<u8> {
        synthetic_tpm::tpm_document(&self.inputs, &self.key, pki, &self.ak, enrolled_at as u64)
    }
}

fn result(a: &evidence::EvidenceAppraisal, name: &str) -> Outcome {
    a.check(name)
        .unwrap_or_else(|| panic!("no check {name}: {}", a.to_text()))
        .result
}

#[test]
fn tpm_evidence_made_in_software_verifies_end_to_end() {
    let n = tpm_node("tpm-sw");
    let doc = n.document(&n.pki, n.t - 86400);
    let a = evidence::verify_document(&doc, &n.policy, &n.opts).unwrap();
    assert!(a.is_ok(), "{}", a.to_text());
    for name in [
        "evidence-signature",
        "key-protection",
        "ek-chain",
        "ek-validity",
        "tpm-ak-public",
        "tpm-quote-signature",
        "tpm-quote-extra-data",
        "tpm-pcr-digest",
        "tpm-event-log-replay",
        "tpm-ak-enrolled",
    ] {
        assert_eq!(result(&a, name), Outcome::Passed, "{name}: {}", a.to_text());
    }
    assert!(a
        .check("ek-chain")
        .unwrap()
        .detail
        .contains("Bulwark Test EK Root CA"));
    let j = a.to_json();
    assert_eq!(
        j["submods"]["node"]["ear_attester_claims"]["key_protection"],
        "tpm"
    );
    assert_eq!(
        j["submods"]["node"]["ear_trustworthiness_vector"]["hardware"],
        2
    );

    // Another EK CA in the policy: the chain fails.
    let other = synthetic_tpm::EkPki::generate(n.t - 86400, n.t + 86400);
    std::fs::write(n.dir.join("ek-root.pem"), &other.root_pem).unwrap();
    let policy = Policy::from_file(&n.dir.join("policy.toml")).unwrap();
    let a = evidence::verify_document(&doc, &policy, &n.opts).unwrap();
    assert_eq!(result(&a, "ek-chain"), Outcome::Failed);
    assert!(!a.is_ok());
}

#[test]
fn chain_cache_gives_the_same_result_and_keeps_only_verified_paths() {
    let n = tpm_node("tpm-cache");
    let doc = n.document(&n.pki, n.t - 86400);
    let cache = ChainCache::new(16);
    let uncached = evidence::verify_document(&doc, &n.policy, &n.opts).unwrap();
    let miss = evidence::verify_document_with(&doc, &n.policy, &n.opts, Some(&cache)).unwrap();
    let s = cache.stats();
    assert_eq!(
        (s.hits, s.misses),
        (0, 2),
        "EK root and EK path both missed"
    );
    assert_eq!(cache.len(), 2);
    let hit = evidence::verify_document_with(&doc, &n.policy, &n.opts, Some(&cache)).unwrap();
    let s = cache.stats();
    assert_eq!((s.hits, s.misses), (2, 2), "both taken from the cache");
    assert!(hit.is_ok(), "{}", hit.to_text());
    // The same appraisal, to the byte, whether cached or not.
    assert_eq!(hit.to_json(), miss.to_json());
    assert_eq!(hit.to_json(), uncached.to_json());

    // One byte changed in the EK certificate's signature: another key, a
    // miss, a chain that fails, and nothing cached for it.
    let mut bad = n.pki.clone();
    let last = bad.ek_der.len() - 1;
    bad.ek_der[last] ^= 0x01;
    let a = evidence::verify_document_with(
        &n.document(&bad, n.t - 86400),
        &n.policy,
        &n.opts,
        Some(&cache),
    )
    .unwrap();
    assert_eq!(result(&a, "ek-chain"), Outcome::Failed, "{}", a.to_text());
    let s = cache.stats();
    assert_eq!((s.hits, s.misses), (3, 3), "EK root hit, EK path missed");
    assert_eq!(cache.len(), 2, "the failed path is not kept");
    // ... and asking again verifies again (still a miss, still a failure).
    let a = evidence::verify_document_with(
        &n.document(&bad, n.t - 86400),
        &n.policy,
        &n.opts,
        Some(&cache),
    )
    .unwrap();
    assert_eq!(result(&a, "ek-chain"), Outcome::Failed);
    assert_eq!(cache.stats().misses, 4);

    // The cached EK chain, enrolled after the EK certificate expired: a hit,
    // and the validity check still fails.
    let late = n.t + 400 * 86400;
    let mut opts = n.opts.clone();
    opts.at = VerificationTime::from_unix_seconds(late + 10);
    let mut inputs = n.inputs.clone();
    inputs.timestamp = late as u64;
    let doc = synthetic_tpm::tpm_document(&inputs, &n.key, &n.pki, &n.ak, late as u64);
    let hits = cache.stats().hits;
    let a = evidence::verify_document_with(&doc, &n.policy, &opts, Some(&cache)).unwrap();
    assert_eq!(
        cache.stats().hits,
        hits + 2,
        "the EK path came from the cache"
    );
    assert_eq!(result(&a, "ek-chain"), Outcome::Passed);
    assert_eq!(
        result(&a, "ek-validity"),
        Outcome::Failed,
        "{}",
        a.to_text()
    );
    assert!(a.check("ek-validity").unwrap().detail.contains("expired"));
    // The same verdict without the cache.
    let b = evidence::verify_document(&doc, &n.policy, &opts).unwrap();
    assert_eq!(a.to_json(), b.to_json());
}

/// The event log a node booted from `signed`'s image would produce (PCRs 4, 9,
/// 11 and 12, as `bulwark-node-image measure` predicts them), and the PCR values
/// 0..=12 it replays to.
fn boot_log_of(signed: &bulwark_node_image::measure::SignedPrediction) -> (Vec<Pcr>, Vec<u8>) {
    use bulwark_attestation::tpm::eventlog::*;
    let mut spec = Vec::new();
    spec.extend_from_slice(b"Spec ID Event03\0");
    spec.extend_from_slice(&0u32.to_le_bytes());
    spec.extend_from_slice(&[0, 2, 0, 2]);
    spec.extend_from_slice(&1u32.to_le_bytes());
    spec.extend_from_slice(&0x000bu16.to_le_bytes());
    spec.extend_from_slice(&32u16.to_le_bytes());
    spec.push(0);
    let mut log = Vec::new();
    log.extend_from_slice(&0u32.to_le_bytes());
    log.extend_from_slice(&EV_NO_ACTION.to_le_bytes());
    log.extend_from_slice(&[0; 20]);
    log.extend_from_slice(&(spec.len() as u32).to_le_bytes());
    log.extend_from_slice(&spec);
    for e in signed.prediction.events.iter().filter(|e| e.pcr != 7) {
        let (t, data): (u32, &[u8]) = match e.event_type.as_str() {
            "EV_EFI_ACTION" => (EV_EFI_ACTION, b"Calling EFI Application from Boot Option"),
            "EV_SEPARATOR" => (EV_SEPARATOR, &[0; 4]),
            "EV_EFI_BOOT_SERVICES_APPLICATION" => (EV_EFI_BOOT_SERVICES_APPLICATION, b"devpath"),
            "EV_EVENT_TAG" => (EV_EVENT_TAG, b"tagged event"),
            "EV_IPL" => (EV_IPL, b"ipl"),
            other => panic!("unexpected predicted event type {other}"),
        };
        log.extend_from_slice(&e.pcr.to_le_bytes());
        log.extend_from_slice(&t.to_le_bytes());
        log.extend_from_slice(&1u32.to_le_bytes());
        log.extend_from_slice(&0x000bu16.to_le_bytes());
        log.extend_from_slice(&hex::decode(&e.digest).unwrap());
        log.extend_from_slice(&(data.len() as u32).to_le_bytes());
        log.extend_from_slice(data);
    }
    let replayed = EventLog::parse(&log).unwrap().replay_sha256();
    let pcrs = (0..=12u32)
        .map(|i| Pcr {
            index: i,
            sha256: replayed[i as usize].to_vec().into(),
        })
        .collect();
    (pcrs, log)
}

#[test]
fn the_quote_and_event_log_show_which_signed_node_image_booted() {
    use bulwark_node_image::build::{build_node_image, NodeBuildSpec};
    const SD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
    const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
    if !Path::new(SD_BOOT).exists() || !Path::new(STUB).exists() {
        eprintln!("\n!!!!!!!! SKIPPED: systemd-boot-efi is not installed (scripts/debian-packages.txt) !!!!!!!!\n");
        return;
    }
    let mut n = tpm_node("node-boot");
    let (key, key_pub, provider) = generate_key_pair(&n.dir.join("provider")).unwrap();
    let key_id = provider.id_hex();
    std::fs::write(n.dir.join("initrd"), vec![7u8; 4096]).unwrap();
    // Two versions of the node image (another command line: another PCR 9, 11, 12).
    let mut images = Vec::new();
    for (version, cmdline) in [(7u64, "console=ttyS0"), (8, "console=ttyS0 quiet")] {
        let out = n.dir.join(format!("node-{version}.bwi"));
        build_node_image(
            &NodeBuildSpec {
                name: "bulwark-node".into(),
                version,
                created: Some(1),
                // A real PE stands in for the kernel (its Authenticode digest is defined).
                kernel: SD_BOOT.into(),
                initrd: n.dir.join("initrd"),
                cmdline: Some(cmdline.into()),
                osrel: None,
                uname: None,
                stub: STUB.into(),
                boot_manager: Some(SD_BOOT.into()),
                secure_boot: false,
                secure_boot_signing: None,
                uki_out: None,
            },
            &out,
        )
        .unwrap();
        sign(&out, &SigningKey::from_pem_file(&key).unwrap(), &|_| {}).unwrap();
        images.push(out);
    }
    let trust = bulwark_image::TrustPolicy {
        keys: vec![bulwark_image::PublicKey::from_pem_file(&key_pub).unwrap()],
        threshold: 1,
        min_version: 0,
    };
    let signed = bulwark_node_image::measure::predict_signed(&images[0], &trust, None).unwrap();
    assert!(signed.mismatches.is_empty(), "{:?}", signed.mismatches);
    let (pcrs, log) = boot_log_of(&signed);
    // The node states the image it booted.
    n.inputs.node_image = document::ImageId {
        name: "bulwark-node".into(),
        version: 7,
        manifest_sha384: signed.manifest_sha384.to_vec().into(),
        signer_key_ids: vec![hex::decode(&key_id).unwrap().into()],
    };
    let doc = synthetic_tpm::tpm_document_with(
        &n.inputs,
        &n.key,
        &n.pki,
        &n.ak,
        (n.t - 86400) as u64,
        pcrs,
        log,
    );
    let policy_with = |images: &[&PathBuf]| {
        let mut text = std::fs::read_to_string(n.dir.join("policy.toml")).unwrap();
        text = text.replace(
            "image_signers = [\"1111111111111111111111111111111111111111111111111111111111111111\"]",
            &format!("image_signers = [\"{key_id}\"]"),
        );
        for i in images {
            text.push_str(&format!(
                "\n[[node.boot_images]]\nimage = {:?}\ntrust = [{:?}]\n",
                i.display().to_string(),
                key_pub.display().to_string()
            ));
        }
        let p = n.dir.join("node-policy.toml");
        std::fs::write(&p, text).unwrap();
        Policy::from_file(&p).unwrap()
    };
    // Both images are candidates: version 7 is recognised.
    let a =
        evidence::verify_document(&doc, &policy_with(&[&images[1], &images[0]]), &n.opts).unwrap();
    assert!(a.is_ok(), "{}", a.to_text());
    assert_eq!(result(&a, "node-boot-image"), Outcome::Passed);
    assert!(a
        .check("node-boot-image")
        .unwrap()
        .detail
        .contains("bulwark-node version 7 booted"));
    assert_eq!(result(&a, "node-boot-stated-image"), Outcome::Passed);
    assert_eq!(result(&a, "node-firmware"), Outcome::Skipped);
    // The same through `bulwark-verify node`: the node submodule alone.
    std::fs::write(n.dir.join("node.cose"), &doc).unwrap();
    let cli = |image: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_bulwark-verify"))
            .arg("node")
            .arg(n.dir.join("node.cose"))
            .arg("--image")
            .arg(image)
            .arg("--trust")
            .arg(&key_pub)
            .arg("--ek-root")
            .arg(n.dir.join("ek-root.pem"))
            .args(["--nonce", &hex::encode(NONCE)])
            .args(["--at", &((n.t + 10) * 1000).to_string()])
            .output()
            .unwrap()
    };
    let out = cli(&images[0]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("node-boot-image") && !text.contains("launch-measurement"),
        "{text}"
    );
    assert_eq!(cli(&images[1]).status.code(), Some(1));
    // Only version 8 allowed: the boot is refused, naming what differs.
    let a = evidence::verify_document(&doc, &policy_with(&[&images[1]]), &n.opts).unwrap();
    assert_eq!(result(&a, "node-boot-image"), Outcome::Failed);
    let detail = &a.check("node-boot-image").unwrap().detail;
    assert!(
        detail.contains("bulwark-node 8: PCR 9 is") && detail.contains("PCR 11 is"),
        "{detail}"
    );
    // A tampered reference image is an error of the policy's image, not a match.
    let mut bytes = std::fs::read(&images[0]).unwrap();
    let at = bytes.len() - 5000;
    bytes[at] ^= 1;
    let tampered = n.dir.join("tampered.bwi");
    std::fs::write(&tampered, bytes).unwrap();
    let a = evidence::verify_document(&doc, &policy_with(&[&tampered]), &n.opts).unwrap();
    assert_eq!(result(&a, "node-boot-image"), Outcome::Failed);
    assert!(
        a.checks().any(
            |(_, c)| c.detail.contains("node.boot_images") && c.detail.contains("tampered.bwi")
        ),
        "{}",
        a.to_text()
    );
}

/// A bzImage as the firmware reads it (protocol 2.15, 64-bit entry, one setup
/// sector) with `pm` bytes of protected-mode code.
fn bzimage(pm: usize) -> Vec<u8> {
    let mut k = vec![0u8; 1024];
    k[0x1f1] = 1;
    k[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
    k[0x200..0x202].copy_from_slice(&[0xeb, 0x66]);
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    k[0x211] = 1;
    k[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
    k[0x236] = 1;
    k.extend((0..pm as u32).map(|i| (i * 13 + 1) as u8));
    k
}

#[test]
fn predict_gives_the_sev_snp_launch_digest_of_a_firmware_boot_as_sev_snp_measure_does() {
    let dir = scratch("snp");
    let (key, key_pub, _) = generate_key_pair(&dir.join("keys")).unwrap();
    let bundle = make_bundle(&dir, &key, "fw", &bzimage(20_000));
    let firmware = bulwark_firmware_abi::build::build_image(
        &Path::new(env!("CARGO_TARGET_TMPDIR")).join("firmware"),
    )
    .unwrap();
    let (b, k) = (bundle.display().to_string(), key_pub.display().to_string());
    for (vcpus, cpu) in [(1u8, "EPYC-Milan"), (4, "EPYC-Genoa")] {
        let vm = dir.join(format!("vm-{vcpus}.json"));
        let cfg = json!({"machine": {"vcpus": vcpus, "mem_mib": 64, "firmware": firmware}});
        std::fs::write(&vm, cfg.to_string()).unwrap();
        let vm = vm.display().to_string();
        let o = cli(&[
            "predict",
            &b,
            "--trust",
            &k,
            "--vm",
            &vm,
            "--json",
            "--snp-vcpu-type",
            cpu,
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let ours = p["snp"]["launch_digest"].as_str().unwrap().to_string();
        let theirs = bulwark_firmware_abi::build::sev_snp_measure(
            &bulwark_firmware_abi::build::SnpMeasureInputs {
                firmware: &firmware,
                kernel: &dir.join("fw.kernel"),
                initrd: None,
                cmdline: "",
                vcpus: u32::from(vcpus),
                vcpu_type: cpu,
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ours, theirs, "{vcpus} x {cpu}");
        // The policy names it for the SNP report check.
        let o = cli(&[
            "predict",
            &b,
            "--trust",
            &k,
            "--vm",
            &vm,
            "--snp-vcpu-type",
            cpu,
        ]);
        assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("# {ours}\n")));
    }
    // Without a firmware boot there is no SNP launch digest to predict.
    let o = cli(&[
        "predict",
        &b,
        "--trust",
        &k,
        "--snp-vcpu-type",
        "EPYC-Milan",
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("no firmware boot (machine.firmware)"));
}
