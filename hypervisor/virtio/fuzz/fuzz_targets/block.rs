//! Arbitrary guest memory and queue geometry fed to virtio-blk: every
//! request must complete or be refused without a panic, and a read-only
//! disk must never change.
#![no_main]

#[path = "guest.rs"]
mod guest;

use std::io::Write;
use std::sync::OnceLock;

use bulwark_virtio::block::{Block, DiskBackend};
use libfuzzer_sys::fuzz_target;

fn disk_path(name: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("bulwark-virtio-fuzz-{}-{name}", std::process::id()));
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(&vec![0x5a; 64 * 1024]).unwrap();
    p
}

fuzz_target!(|data: &[u8]| {
    static RO: OnceLock<std::path::PathBuf> = OnceLock::new();
    static RW: OnceLock<std::path::PathBuf> = OnceLock::new();
    let ro = RO.get_or_init(|| disk_path("ro"));
    let rw = RW.get_or_init(|| disk_path("rw"));
    let read_only = data.first().is_some_and(|b| b & 1 == 1);
    let disk = if read_only {
        DiskBackend::open_range(ro, 4096, 32 * 1024, true).unwrap()
    } else {
        DiskBackend::open_file(rw, false).unwrap()
    };
    let dev = guest::shared(Block::new(disk, "fuzz"));
    if let Some(g) = guest::bring_up(dev, data.get(1..).unwrap_or(&[])) {
        guest::run_queue(&g, 0);
    }
    if read_only {
        let bytes = std::fs::read(ro).unwrap();
        assert!(bytes.iter().all(|&b| b == 0x5a), "read-only disk changed");
    }
});
