#![no_main]
use bulwark_attestation::sevsnp::{self, AttestationReport, Evidence, Policy};
use bulwark_attestation::VerificationTime;
use libfuzzer_sys::fuzz_target;

const VCEK: &[u8] = include_bytes!("../../testdata/sev-snp/milan-vcek.der");

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = AttestationReport::parse_any(data) {
        let _ = report.signature_p384_fixed();
        if let Ok(ev) = Evidence::parse(&report.raw, VCEK) {
            let v = sevsnp::verify(
                &ev,
                &sevsnp::default_trust(),
                &Policy::default(),
                VerificationTime::from_unix_ms(0),
            );
            let _ = v.to_text();
        }
    }
});
