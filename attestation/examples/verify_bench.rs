//! Throughput of each verifier on the real fixtures, single-threaded, against
//! a baseline measured in the same run: one bare ECDSA P-384 signature
//! verification by the library the verifiers use for it (`crypto`: aws-lc-rs
//! in this build), the dominant cost of most kinds. Also `ring` against
//! `aws-lc-rs` for ECDSA P-256 and P-384 verification (same keys, same
//! message, same run), and Bulwark evidence (software-key and TPM-mode
//! documents) cold (no cache) and warm (a `ChainCache` holding the node's
//! verified EK chain). Run by `bench/verify`.
//!
//! `verify_bench [SECONDS] [DIR]`: with DIR, the TPM-mode document, its
//! policy and EK root are written there for the cold CLI runs.

#[path = "../tests/common/synthetic_tpm.rs"]
mod synthetic_tpm;

use bulwark_attestation::cache::ChainCache;
use bulwark_attestation::crypto;
use bulwark_attestation::evidence::appraise::VerifyOptions;
use bulwark_attestation::evidence::{self, parse_document, EvidenceSigningKey, Policy};
use bulwark_attestation::{nitro, nvidia, sevsnp, tdx, VerificationTime};
use ring::signature::{self, KeyPair};
use std::path::Path;
use std::time::{Duration, Instant};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/");

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(format!("{DATA}{rel}")).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Runs of `f` per second over about `secs` seconds.
fn rate(secs: f64, mut f: impl FnMut() -> bool) -> f64 {
    let budget = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        assert!(f(), "verification unexpectedly failed");
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let out_dir = std::env::args().nth(2);

    let rng = ring::rand::SystemRandom::new();
    let pkcs8 =
        signature::EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
            .unwrap();
    let kp = signature::EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        pkcs8.as_ref(),
        &rng,
    )
    .unwrap();
    let msg = [0x5a_u8; 1024];
    let sig = kp.sign(&rng, &msg).unwrap();
    let pk = kp.public_key().as_ref().to_vec();
    let baseline = rate(secs, || {
        crypto::verify_ecdsa(
            crypto::Ecdsa::P384Sha384,
            crypto::SigEncoding::Fixed,
            &pk,
            &msg,
            sig.as_ref(),
        )
        .is_ok()
    });
    println!(
        "baseline: bare ECDSA P-384 verify as the verifiers do it ({}): {baseline:.0}/s/core",
        crypto::ECDSA_BACKEND
    );

    let sev_report = read("sev-snp/milan-report.hex");
    let sev_vcek = read("sev-snp/milan-vcek.der");
    let sev_trust = sevsnp::default_trust();
    let t = VerificationTime::parse("2024-06-01T00:00:00Z").unwrap();
    let r = rate(secs, || {
        let ev = sevsnp::Evidence::parse(&sev_report, &sev_vcek).unwrap();
        sevsnp::verify(&ev, &sev_trust, &sevsnp::Policy::default(), t).is_ok()
    });
    report("sev-snp (parse + 2 RSA-4096 + 1 P-384)", r, baseline);

    let quote = read("tdx/quote-v4-spr.dat");
    let tdx_trust = tdx::default_trust();
    let t = VerificationTime::parse("2026-06-01T00:00:00Z").unwrap();
    let r = rate(secs, || {
        tdx::verify_bytes(&quote, None, &tdx_trust, &tdx::Policy::default(), t)
            .unwrap()
            .is_ok()
    });
    report("tdx, no collateral (parse + 4 P-256)", r, baseline);

    let quote = read("tdx/quote-v4-uptodate.dat");
    let coll = read("tdx/quote-v4-uptodate.collateral.json");
    let t = VerificationTime::parse("2025-06-25T00:00:00Z").unwrap();
    let r = rate(secs, || {
        tdx::verify_bytes(&quote, Some(&coll), &tdx_trust, &tdx::Policy::default(), t)
            .unwrap()
            .is_ok()
    });
    report("tdx with collateral (parse + 13 P-256)", r, baseline);

    let doc = read("nitro/doc-beta-production.cbor");
    let nitro_trust = nitro::default_trust();
    let t = VerificationTime::from_unix_ms(1665651482136);
    let r = rate(secs, || {
        nitro::verify_bytes(&doc, &nitro_trust, &nitro::Policy::default(), t)
            .unwrap()
            .is_ok()
    });
    report("nitro (parse + 5 P-384)", r, baseline);

    let spdm = read("nvidia/hopper-report.hex");
    let chain = read("nvidia/hopper-cert-chain.pem");
    let nv_trust = nvidia::default_trust();
    let t = VerificationTime::parse("2024-06-01T00:00:00Z").unwrap();
    let r = rate(secs, || {
        nvidia::verify_bytes(&spdm, &chain, &[], &nv_trust, &nvidia::Policy::default(), t)
            .unwrap()
            .is_ok()
    });
    report("nvidia (parse + 5 P-384)", r, baseline);

    ecdsa_libraries(secs);
    bulwark_evidence(secs, baseline, out_dir.as_deref().map(Path::new));
}

/// ring against aws-lc-rs: one key pair per curve (made by ring), one
/// signature over one message, verified by each library in turn.
fn ecdsa_libraries(secs: f64) {
    println!("ECDSA verification, ring vs aws-lc-rs (same key, message and signature); this build verifies with {}:", crypto::ECDSA_BACKEND);
    let rng = ring::rand::SystemRandom::new();
    let msg = [0xa5_u8; 1024];
    for (name, signing, ring_alg, aws_alg) in [
        (
            "P-256 SHA-256",
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &signature::ECDSA_P256_SHA256_FIXED,
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
        ),
        (
            "P-384 SHA-384",
            &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            &signature::ECDSA_P384_SHA384_FIXED,
            &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED,
        ),
    ] {
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(signing, &rng).unwrap();
        let kp = signature::EcdsaKeyPair::from_pkcs8(signing, pkcs8.as_ref(), &rng).unwrap();
        let sig = kp.sign(&rng, &msg).unwrap();
        let pk = kp.public_key().as_ref().to_vec();
        let ring_pk = signature::UnparsedPublicKey::new(ring_alg, &pk);
        let aws_pk = aws_lc_rs::signature::UnparsedPublicKey::new(aws_alg, &pk);
        // Interleaved slices, so both see the same machine load.
        let (mut r, mut a) = (Vec::new(), Vec::new());
        for _ in 0..10 {
            r.push(rate(secs / 10.0, || {
                ring_pk.verify(&msg, sig.as_ref()).is_ok()
            }));
            a.push(rate(secs / 10.0, || {
                aws_pk.verify(&msg, sig.as_ref()).is_ok()
            }));
        }
        let (r, a) = (median(r), median(a));
        println!(
            "  ECDSA {name} verify: ring {r:.0}/s/core, aws-lc-rs {a:.0}/s/core: aws-lc-rs {:.2}x ring",
            a / r
        );
    }
}

fn bulwark_evidence(secs: f64, baseline: f64, out_dir: Option<&Path>) {
    // The software-key fixture, verified as its policy says.
    let doc = std::fs::read(format!("{DATA}evidence/software-key.cose")).unwrap();
    let policy = Policy::from_file(Path::new(&format!("{DATA}evidence/policy.toml"))).unwrap();
    let opts = VerifyOptions {
        nonce: Some(vec![0x5a; 32]),
        at: VerificationTime::parse("2025-06-15T15:06:40Z").unwrap(),
    };
    let ok = |a: Result<evidence::EvidenceAppraisal, _>| a.map(|a| a.is_ok()).unwrap_or(false);
    let r = rate(secs, || ok(evidence::verify_document(&doc, &policy, &opts)));
    report(
        "bulwark evidence, software key, ES384 fixture (parse + 1 P-384)",
        r,
        baseline,
    );
    // The same body signed as nodes sign today: ES256 by a P-256 key.
    let es256 = {
        let mut body = parse_document(&doc).unwrap().body;
        let key = EvidenceSigningKey::generate().unwrap();
        body.node.evidence_key = key.public_key().into();
        evidence::sign_body(&body, &key).unwrap()
    };
    let r = rate(secs, || {
        ok(evidence::verify_document(&es256, &policy, &opts))
    });
    report(
        "bulwark evidence, software key, ES256 (parse + 1 P-256)",
        r,
        baseline,
    );

    // A TPM-mode document of the same VM, made in software: EK root CA ->
    // intermediate -> EK certificate (P-384 CAs), AK (P-256) quote.
    let body = parse_document(&doc).unwrap().body;
    let inputs = synthetic_tpm::inputs_of(&body);
    let t = body.freshness.timestamp as i64;
    let pki = synthetic_tpm::EkPki::generate(t - 365 * 86400, t + 365 * 86400);
    let ak = synthetic_tpm::SoftwareAk::generate();
    let key = EvidenceSigningKey::generate().unwrap();
    let tpm_doc = synthetic_tpm::tpm_document(&inputs, &key, &pki, &ak, t as u64 - 86400);
    let dir = match out_dir {
        Some(d) => d.to_path_buf(),
        None => std::env::temp_dir().join(format!("bulwark-verify-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ek-root.pem"), &pki.root_pem).unwrap();
    std::fs::write(dir.join("tpm.cose"), &tpm_doc).unwrap();
    let text = std::fs::read_to_string(format!("{DATA}evidence/policy.toml"))
        .unwrap()
        .replace("allow_software_key = true", "allow_software_key = false")
        .replace("[node]\n", "[node]\nek_roots = [\"ek-root.pem\"]\n");
    std::fs::write(dir.join("tpm-policy.toml"), &text).unwrap();
    let tpm_policy = Policy::from_file(&dir.join("tpm-policy.toml")).unwrap();
    let a = evidence::verify_document(&tpm_doc, &tpm_policy, &opts).unwrap();
    assert!(a.is_ok(), "{}", a.to_text());
    assert_eq!(
        a.check("key-protection").map(|c| c.result),
        Some(bulwark_attestation::checks::Outcome::Passed)
    );

    let cold = rate(secs, || {
        ok(evidence::verify_document(&tpm_doc, &tpm_policy, &opts))
    });
    report(
        "bulwark evidence, TPM, cold (EK root self-signature + EK chain: 3 P-384; document: 1 P-256; quote: 1 P-256)",
        cold,
        baseline,
    );
    let cache = ChainCache::default();
    let warm = rate(secs, || {
        ok(evidence::verify_document_with(
            &tpm_doc,
            &tpm_policy,
            &opts,
            Some(&cache),
        ))
    });
    let stats = cache.stats();
    assert_eq!(
        stats.misses, 2,
        "EK root and EK chain verified once: {stats:?}"
    );
    report(
        "bulwark evidence, TPM, warm chain cache (document: 1 P-256; quote: 1 P-256)",
        warm,
        baseline,
    );
    println!("  warm/cold: {:.2}x", warm / cold);
    if out_dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn report(what: &str, per_sec: f64, baseline: f64) {
    println!(
        "{what}: {per_sec:.0} verifications/s/core ({:.2} bare P-384 verifies per verification)",
        baseline / per_sec
    );
}
