#![no_main]
use bulwark_attestation::evidence::appraise::VerifyOptions;
use bulwark_attestation::evidence::{verify_document, EvidenceBody, Policy};
use bulwark_attestation::VerificationTime;
use libfuzzer_sys::fuzz_target;

// The evidence decoder (COSE_Sign1 envelope and the canonical CBOR body)
// and the whole appraisal under a permissive policy.
fuzz_target!(|data: &[u8]| {
    let _ = EvidenceBody::from_cbor(data);
    let opts = VerifyOptions {
        nonce: Some(vec![0; 32]),
        at: VerificationTime::from_unix_seconds(1_750_000_000),
    };
    if let Ok(a) = verify_document(data, &Policy::permissive(), &opts) {
        let _ = a.to_json();
        let _ = a.to_text();
    }
});
