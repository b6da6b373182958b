//! Throughput of each verifier on the real fixtures, single-threaded, against
//! a baseline measured in the same run: one bare ECDSA P-384 signature
//! verification (ring), the dominant cost of every kind. Run by `bench/verify`.

use bulwark_attestation::{nitro, nvidia, sevsnp, tdx, VerificationTime};
use ring::signature::{self, KeyPair};
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
    let pk = signature::UnparsedPublicKey::new(
        &signature::ECDSA_P384_SHA384_FIXED,
        kp.public_key().as_ref().to_vec(),
    );
    let baseline = rate(secs, || pk.verify(&msg, sig.as_ref()).is_ok());
    println!("baseline: bare ECDSA P-384 verify: {baseline:.0}/s/core");

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
}

fn report(what: &str, per_sec: f64, baseline: f64) {
    println!(
        "{what}: {per_sec:.0} verifications/s/core ({:.2} bare P-384 verifies per verification)",
        baseline / per_sec
    );
}
