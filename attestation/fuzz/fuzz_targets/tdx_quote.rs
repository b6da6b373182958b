#![no_main]
use bulwark_attestation::tdx::{self, Policy, Quote};
use bulwark_attestation::VerificationTime;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(q) = Quote::parse(data) {
        let v = tdx::verify(
            &q,
            None,
            &tdx::default_trust(),
            &Policy::default(),
            VerificationTime::from_unix_ms(0),
        );
        let _ = v.to_text();
    }
});
