#![no_main]
use bulwark_attestation::nvidia::rim::Rim;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(rim) = Rim::parse(data) {
        let _ = rim.verify_signature();
    }
});
