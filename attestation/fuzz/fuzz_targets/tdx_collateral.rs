#![no_main]
use bulwark_attestation::tdx::{self, collateral::Collateral, Policy, Quote};
use bulwark_attestation::VerificationTime;
use libfuzzer_sys::fuzz_target;

const QUOTE: &[u8] = include_bytes!("../../testdata/tdx/quote-v4-uptodate.dat");

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Collateral::parse(data) {
        if let Ok(q) = Quote::parse(QUOTE) {
            let t = VerificationTime::from_unix_ms(1_750_809_600_000);
            let _ = tdx::verify(&q, Some(&c), &tdx::default_trust(), &Policy::default(), t);
        }
    }
});
