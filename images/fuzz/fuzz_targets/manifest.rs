//! Arbitrary bytes as the signed manifest: decoding must either yield a
//! manifest whose canonical encoding is exactly the input, or a clear error.
#![no_main]

use bulwark_image::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode(data, 3 * 4096) {
        assert_eq!(m.encode(), data, "decoded manifest is not canonical");
    }
});
