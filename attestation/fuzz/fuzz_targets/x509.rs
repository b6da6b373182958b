#![no_main]
use bulwark_attestation::x509::{self, Certificate, Crl};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Certificate::from_der_or_pem(data) {
        let _ = c.verify_signed_by(&c);
        let _ = x509::build_path(&c, &[], std::slice::from_ref(&c));
    }
    let _ = x509::parse_pem_certificates(data);
    let _ = Crl::from_der(data);
    let _ = x509::der::items(data);
    let _ = x509::der::oid_string(data);
});
