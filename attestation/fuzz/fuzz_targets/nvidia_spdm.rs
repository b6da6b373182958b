#![no_main]
use bulwark_attestation::nvidia::{spdm, Exchange};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(x) = Exchange::parse_any(data) {
        let _ = spdm::opaque_fields(&x.response.opaque);
    }
});
