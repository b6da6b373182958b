//! Arbitrary register accesses to a virtio-mmio window (over virtio-rng and
//! virtio-blk), interleaved with queue processing: no access sequence may
//! panic, and the status register must only ever hold valid bits.
#![no_main]

#[path = "guest.rs"]
mod guest;

use std::sync::Arc;

use bulwark_virtio::block::{Block, DiskBackend};
use bulwark_virtio::rng::Rng;
use bulwark_virtio::{lock_device, MmioTransport};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

fuzz_target!(|data: &[u8]| {
    let disk = guest::scratch_disk("mmio");
    let mem = guest::memory();
    let device = if data.first().is_some_and(|b| b & 1 == 1) {
        guest::shared(Block::new(DiskBackend::open_file(disk, true).unwrap(), "m"))
    } else {
        guest::shared(Rng::new())
    };
    let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let mut t = MmioTransport::new(device.clone(), mem, irq).unwrap();
    // Each access: kind (1 byte), offset (2 bytes), width (1), value (4).
    for op in data.get(1..).unwrap_or(&[]).chunks_exact(8) {
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]])) & 0x1ff;
        let width = [1usize, 2, 4, 8][usize::from(op[3] & 3)];
        let value = [op[4], op[5], op[6], op[7], op[4], op[5], op[6], op[7]];
        match op[0] % 3 {
            0 => t.write(offset, &value[..width]),
            1 => {
                let mut buf = [0u8; 8];
                t.read(offset, &mut buf[..width]);
            }
            _ => {
                let q = usize::from(op[4] % 2);
                lock_device(&device).process_queue(q);
            }
        }
        let known = 0x01 | 0x02 | 0x04 | 0x08 | 0x40 | 0x80;
        assert_eq!(t.status() & !known, 0, "status holds unknown bits");
    }
});
