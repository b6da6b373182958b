//! Arbitrary configuration-space and BAR0 accesses to a virtio-pci function (over
//! virtio-rng, virtio-blk or virtio-vsock), interleaved with queue processing and
//! device interrupts: no access sequence may panic, the status register must only
//! ever hold valid bits, the vector registers must only ever name a table entry or
//! NO_VECTOR, and BAR0 must stay where it was put.
#![no_main]

#[path = "guest.rs"]
mod guest;

use std::sync::Arc;

use bulwark_virtio::block::{Block, DiskBackend};
use bulwark_virtio::msix::MsixMessage;
use bulwark_virtio::pci::{self, MsixRoutes, NO_VECTOR};
use bulwark_virtio::rng::Rng;
use bulwark_virtio::transport::IrqLine;
use bulwark_virtio::vsock::Vsock;
use bulwark_virtio::{lock_device, PciTransport};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const BAR: u64 = 0xcff0_0000;

/// Routes are only counted: the target checks the transport, not a VMM.
#[derive(Debug, Default)]
struct Routes;

impl MsixRoutes for Routes {
    fn update(&self, updates: &[(u16, Option<MsixMessage>)]) -> bool {
        assert!(!updates.is_empty(), "empty route update");
        true
    }
}

fuzz_target!(|data: &[u8]| {
    let disk = guest::scratch_disk("pci");
    let mem = guest::memory();
    let dir;
    let device = match data.first().map(|b| b % 3) {
        Some(1) => guest::shared(Block::new(DiskBackend::open_file(disk, true).unwrap(), "p")),
        Some(2) => {
            dir = std::env::temp_dir().join(format!(
                "bulwark-pci-fuzz-vsock-{}-{}",
                std::process::id(),
                data.len()
            ));
            let _ = std::fs::remove_file(&dir);
            match Vsock::new(3, &dir) {
                Ok(v) => guest::shared(v),
                Err(_) => return,
            }
        }
        _ => guest::shared(Rng::new()),
    };
    let n = pci::vectors_needed(&device);
    let lines: Vec<Arc<dyn IrqLine>> = (0..n)
        .map(|_| Arc::new(EventFd::new(EFD_NONBLOCK).unwrap()) as Arc<dyn IrqLine>)
        .collect();
    let mut t = PciTransport::new(device.clone(), mem, BAR, lines, Arc::new(Routes)).unwrap();
    let queues = n - 1;
    // Each access: kind (1 byte), offset (2 bytes), width (1), value (4).
    for op in data.get(1..).unwrap_or(&[]).chunks_exact(8) {
        let width = [1usize, 2, 4, 8][usize::from(op[3] & 3)];
        let value = [op[4], op[5], op[6], op[7], op[4], op[5], op[6], op[7]];
        let raw = u64::from(u16::from_le_bytes([op[1], op[2]]));
        match op[0] % 6 {
            0 => t.config_write(raw & 0x1ff, &value[..width]),
            1 => {
                let mut buf = [0u8; 8];
                t.config_read(raw & 0x1ff, &mut buf[..width]);
            }
            // BAR offsets: mostly inside the regions (the low 9 bits of the
            // offset inside one of the 4 KiB regions picked by bits 9..12).
            2 => t.bar_write(((raw >> 9) & 7) << 12 | (raw & 0x1ff), &value[..width]),
            3 => {
                let mut buf = [0u8; 8];
                t.bar_read(((raw >> 9) & 7) << 12 | (raw & 0x1ff), &mut buf[..width]);
            }
            4 => {
                let q = usize::from(op[4]) % queues.max(1);
                lock_device(&device).process_queue(q);
            }
            _ => {
                let mut buf = [0u8; 8];
                t.bar_read(raw, &mut buf[..width]);
            }
        }
        let known = 0x01 | 0x02 | 0x04 | 0x08 | 0x40 | 0x80;
        assert_eq!(t.status() & !known, 0, "status holds unknown bits");
        let m = t.msix();
        let ok = |v: u16| v == NO_VECTOR || usize::from(v) < n;
        assert!(ok(m.config_vector), "config vector {}", m.config_vector);
        assert!(
            m.queue_vectors.iter().all(|&v| ok(v)),
            "{:?}",
            m.queue_vectors
        );
        assert_eq!(t.bar(), BAR);
        let mut bar = [0u8; 4];
        t.config_read(0x10, &mut bar);
        let reg = u32::from_le_bytes(bar);
        assert!(
            u64::from(reg) == BAR || reg == !(pci::BAR_SIZE as u32 - 1),
            "BAR0 reads {reg:#x}"
        );
    }
});
