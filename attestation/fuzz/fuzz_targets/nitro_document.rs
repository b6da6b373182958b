#![no_main]
use bulwark_attestation::nitro::{self, Document, Policy};
use bulwark_attestation::VerificationTime;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = Document::parse_any(data) {
        let _ = d.cose.to_be_signed();
        let _ = nitro::verify(
            &d,
            &nitro::default_trust(),
            &Policy::default(),
            VerificationTime::from_unix_ms(0),
        );
    }
});
