//! Arbitrary guest memory and queue geometry fed to virtio-rng.
#![no_main]

#[path = "guest.rs"]
mod guest;

use bulwark_virtio::rng::Rng;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(g) = guest::bring_up(guest::shared(Rng::new()), data) {
        guest::run_queue(&g, 0);
    }
});
