//! Arbitrary bytes as a whole bundle: parse the layout and manifest, then run
//! the full verification (signatures, padding, digests, dm-verity tree)
//! against a fixed trusted key. Must never panic, hang or allocate without
//! bound. Seed the corpus with real signed bundles (see README.md here).
#![no_main]

use bulwark_image::{Bundle, BytesSource, PublicKey, TrustPolicy};
use libfuzzer_sys::fuzz_target;

const TRUSTED: &str = include_str!("../seed-key.pub");

fuzz_target!(|data: &[u8]| {
    let Ok(bundle) = Bundle::from_source(BytesSource(data)) else {
        return;
    };
    let _ = bundle.check_contents(&|_| {});
    if let Ok(key) = PublicKey::from_pem(TRUSTED) {
        let _ = bundle.verify(&TrustPolicy::single(key));
    }
});
