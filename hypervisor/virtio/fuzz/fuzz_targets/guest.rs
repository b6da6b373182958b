//! Shared by the fuzz targets: a guest whose memory and queue geometry come
//! from the fuzz input, with the device brought up through the real
//! virtio-mmio registers.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use bulwark_virtio::device::VIRTIO_F_VERSION_1;
use bulwark_virtio::mmio::status;
use bulwark_virtio::{lock_device, GuestMemory, MmioTransport, SharedDevice};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Two adjacent 32 KiB regions, then a hole, then 4 KiB at 1 MiB: buffers
/// can straddle a region boundary or fall in the hole.
pub const REGIONS: [(u64, usize); 3] = [(0, 0x8000), (0x8000, 0x8000), (0x10_0000, 0x1000)];
/// Bytes of the input per queue: size (2), desc/avail/used offsets (2 each).
const QUEUE_BYTES: usize = 8;

/// Guest memory laid out as [`REGIONS`].
pub fn memory() -> Arc<GuestMemory> {
    Arc::new(
        GuestMemory::from_ranges(
            &REGIONS
                .iter()
                .map(|&(a, l)| (GuestAddress(a), l))
                .collect::<Vec<_>>(),
        )
        .unwrap(),
    )
}

/// An 8 KiB file of zeros for a read-only disk, created once per process.
pub fn scratch_disk(name: &str) -> &'static std::path::Path {
    static DISK: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DISK.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("bulwark-{name}-fuzz-{}", std::process::id()));
        std::fs::write(&p, [0u8; 8192]).unwrap();
        p
    })
}

pub struct Guest {
    pub transport: MmioTransport,
    pub device: SharedDevice,
}

fn u16_at(data: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([
        data.get(at).copied().unwrap_or(0),
        data.get(at + 1).copied().unwrap_or(0),
    ])
}

/// Sets up `device` from `data`: per queue a size and ring offsets, then
/// the rest of the input as guest memory. `None` if activation was refused
/// (which is itself a valid outcome the target has exercised).
pub fn bring_up(device: SharedDevice, data: &[u8]) -> Option<Guest> {
    let mem = memory();
    let queues = lock_device(&device).queue_max_sizes().len();
    let header = queues * QUEUE_BYTES;
    let contents = data.get(header..).unwrap_or(&[]);
    let n = contents.len().min(0x10000);
    mem.write_slice(&contents[..n], GuestAddress(0)).ok()?;

    let irq = Arc::new(EventFd::new(EFD_NONBLOCK).ok()?);
    let mut t = MmioTransport::new(device.clone(), mem, irq).ok()?;
    let w = |t: &mut MmioTransport, off: u64, v: u32| t.write(off, &v.to_le_bytes());
    w(&mut t, 0x70, status::ACKNOWLEDGE);
    w(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    w(&mut t, 0x24, 1);
    w(&mut t, 0x20, (VIRTIO_F_VERSION_1 >> 32) as u32);
    w(
        &mut t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    for q in 0..queues {
        let at = q * QUEUE_BYTES;
        // Mostly power-of-two sizes, sometimes anything.
        let raw = u16_at(data, at);
        let size = if raw & 0x8000 == 0 {
            1u32 << (raw % 9)
        } else {
            u32::from(raw & 0x7fff)
        };
        w(&mut t, 0x30, q as u32);
        w(&mut t, 0x38, size);
        w(&mut t, 0x80, u32::from(u16_at(data, at + 2)));
        w(&mut t, 0x90, u32::from(u16_at(data, at + 4)));
        w(&mut t, 0xa0, u32::from(u16_at(data, at + 6)));
        w(&mut t, 0x44, 1);
    }
    w(
        &mut t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    );
    if !lock_device(&device).is_active() {
        return None;
    }
    Some(Guest {
        transport: t,
        device,
    })
}

/// Runs queue `q` until the device says it is done (bounded).
pub fn run_queue(g: &Guest, q: usize) {
    for _ in 0..64 {
        if !lock_device(&g.device).process_queue(q) {
            break;
        }
    }
}

/// Wraps a device for [`bring_up`].
pub fn shared<D: bulwark_virtio::VirtioDevice + 'static>(d: D) -> SharedDevice {
    Arc::new(Mutex::new(d))
}
