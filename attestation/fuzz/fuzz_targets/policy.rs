#![no_main]
use bulwark_attestation::evidence::Policy;
use libfuzzer_sys::fuzz_target;

// The TOML policy parser (unknown keys refused, values validated).
fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Policy::parse(text, std::path::Path::new("/nonexistent"));
    }
});
