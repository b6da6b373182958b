#![no_main]
//! The attested TLS certificate extension (RFC 9999 `id-pe-cmw`, CBOR
//! record holding Bulwark evidence) and the client's certificate appraisal,
//! on hostile input: each layer is tried on the whole input; the decoders
//! must never panic, and whatever they accept must re-encode to the same bytes.
use bulwark_attestation::atls::extension::{
    decode_extension_value, decode_record, encode_extension_value, encode_record,
    evidence_from_certificate,
};
use bulwark_attestation::atls::AttestedServerVerifier;
use bulwark_attestation::evidence::Policy;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    if let Ok(ev) = decode_extension_value(data) {
        assert_eq!(encode_extension_value(&ev), data);
    }
    if let Ok(ev) = decode_record(data) {
        assert_eq!(encode_record(&ev), data);
    }
    if evidence_from_certificate(data).is_ok() {
        let v = AttestedServerVerifier::new(Arc::new(Policy::permissive()), [0x5a; 32], None);
        let now = rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            1_750_000_000,
        ));
        let _ = v.appraise(data, now);
    }
});
