//! A fake virtio driver: it lays out split rings in a `GuestMemoryMmap`,
//! drives the virtio-mmio registers and runs the device synchronously (the
//! I/O worker is exercised in its own test).
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use bulwark_virtio::device::VIRTIO_F_VERSION_1;
use bulwark_virtio::mmio::{status, IrqLine};
use bulwark_virtio::{lock_device, GuestMemory, MmioTransport, SharedDevice, VirtioDevice};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Rings live in [0, 1 MiB); data in [1 MiB, 17 MiB), a second region right
/// after the first, so buffers can straddle the region boundary.
pub const REGION_BOUNDARY: u64 = 1 << 20;
pub const MEM_END: u64 = 17 << 20;
pub const DATA_START: u64 = REGION_BOUNDARY;

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;

pub fn guest_memory() -> Arc<GuestMemory> {
    Arc::new(
        GuestMemory::from_ranges(&[
            (GuestAddress(0), REGION_BOUNDARY as usize),
            (
                GuestAddress(REGION_BOUNDARY),
                (MEM_END - REGION_BOUNDARY) as usize,
            ),
        ])
        .unwrap(),
    )
}

#[derive(Debug, Clone, Copy)]
pub struct DriverQueue {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

pub struct FakeDriver {
    pub mem: Arc<GuestMemory>,
    pub transport: MmioTransport,
    pub device: SharedDevice,
    pub irq: Arc<EventFd>,
    pub queues: Vec<DriverQueue>,
}

impl FakeDriver {
    /// A driver for `device` with rings at `ring_base` (so several devices
    /// can share one memory).
    pub fn new<D: VirtioDevice + 'static>(
        device: D,
        mem: Arc<GuestMemory>,
        ring_base: u64,
    ) -> Self {
        Self::with_shared(Arc::new(Mutex::new(device)), mem, ring_base)
    }

    /// A driver for a device the test also holds by its concrete type.
    pub fn with_shared(device: SharedDevice, mem: Arc<GuestMemory>, ring_base: u64) -> Self {
        let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let line: Arc<dyn IrqLine> = irq.clone();
        let transport = MmioTransport::new(device.clone(), mem.clone(), line).unwrap();
        let nq = lock_device(&device).queue_max_sizes().len();
        let queues = (0..nq)
            .map(|i| {
                let base = ring_base + i as u64 * 0x4000;
                DriverQueue {
                    size: 0,
                    desc: base,
                    avail: base + 0x1000,
                    used: base + 0x2000,
                    next_desc: 0,
                    avail_idx: 0,
                    used_seen: 0,
                }
            })
            .collect();
        Self {
            mem,
            transport,
            device,
            irq,
            queues,
        }
    }

    pub fn read_reg(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.transport.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn write_reg(&mut self, offset: u64, value: u32) {
        self.transport.write(offset, &value.to_le_bytes());
    }

    pub fn status(&mut self) -> u32 {
        self.read_reg(0x70)
    }

    pub fn device_features(&mut self) -> u64 {
        self.write_reg(0x14, 0);
        let lo = self.read_reg(0x10);
        self.write_reg(0x14, 1);
        let hi = self.read_reg(0x10);
        u64::from(lo) | (u64::from(hi) << 32)
    }

    pub fn negotiate(&mut self, features: u64) -> bool {
        self.write_reg(0x70, 0);
        self.write_reg(0x70, status::ACKNOWLEDGE);
        self.write_reg(0x70, status::ACKNOWLEDGE | status::DRIVER);
        self.write_reg(0x24, 0);
        self.write_reg(0x20, features as u32);
        self.write_reg(0x24, 1);
        self.write_reg(0x20, (features >> 32) as u32);
        self.write_reg(
            0x70,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        self.status() & status::FEATURES_OK != 0
    }

    pub fn setup_queue(&mut self, index: usize, size: u16) {
        let q = self.queues[index];
        self.mem
            .write_slice(&[0u8; 0x3000], GuestAddress(q.desc))
            .unwrap();
        self.setup_queue_no_clear(index, size);
    }

    /// Programs the queue registers without touching guest memory.
    pub fn setup_queue_no_clear(&mut self, index: usize, size: u16) {
        let q = &mut self.queues[index];
        q.size = size;
        q.next_desc = 0;
        q.avail_idx = 0;
        q.used_seen = 0;
        let q = *q;
        // Clear the rings.
        self.mem
            .write_slice(&[0u8; 0x3000], GuestAddress(q.desc))
            .unwrap();
        self.write_reg(0x30, index as u32);
        self.write_reg(0x38, u32::from(size));
        self.write_reg(0x80, q.desc as u32);
        self.write_reg(0x84, (q.desc >> 32) as u32);
        self.write_reg(0x90, q.avail as u32);
        self.write_reg(0x94, (q.avail >> 32) as u32);
        self.write_reg(0xa0, q.used as u32);
        self.write_reg(0xa4, (q.used >> 32) as u32);
        self.write_reg(0x44, 1);
    }

    pub fn driver_ok(&mut self) {
        self.write_reg(
            0x70,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
    }

    /// Full initialisation with `VERSION_1 | extra` and every queue of `size`.
    pub fn init(&mut self, extra: u64, size: u16) {
        assert!(self.negotiate(VIRTIO_F_VERSION_1 | extra));
        for i in 0..self.queues.len() {
            self.write_reg(0x30, i as u32);
            let max = self.read_reg(0x34) as u16;
            self.setup_queue(i, size.min(max));
        }
        self.driver_ok();
        assert_eq!(self.status() & status::DEVICE_NEEDS_RESET, 0);
        assert!(lock_device(&self.device).is_active());
    }

    /// Writes descriptor `idx` of queue `q` verbatim.
    pub fn raw_desc(&self, q: usize, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let base = self.queues[q].desc + u64::from(idx) * 16;
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&d, GuestAddress(base)).unwrap();
    }

    /// Puts `head` in the available ring and publishes it.
    pub fn push_avail(&mut self, q: usize, head: u16) {
        let dq = &mut self.queues[q];
        let slot = dq.avail + 4 + u64::from(dq.avail_idx % dq.size) * 2;
        dq.avail_idx = dq.avail_idx.wrapping_add(1);
        let (avail, idx) = (dq.avail, dq.avail_idx);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.mem.write_obj(idx, GuestAddress(avail + 2)).unwrap();
    }

    /// Writes the available index verbatim.
    pub fn set_avail_idx(&mut self, q: usize, idx: u16) {
        let avail = self.queues[q].avail;
        self.mem.write_obj(idx, GuestAddress(avail + 2)).unwrap();
    }

    /// Adds a chain of `(addr, len, device_writable)` buffers; returns head.
    pub fn add_chain(&mut self, q: usize, bufs: &[(u64, u32, bool)]) -> u16 {
        let size = self.queues[q].size;
        let head = self.queues[q].next_desc;
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let idx = (head + i as u16) % size;
            let last = i + 1 == bufs.len();
            let mut flags = if write { F_WRITE } else { 0 };
            if !last {
                flags |= F_NEXT;
            }
            self.raw_desc(q, idx, addr, len, flags, (idx + 1) % size);
        }
        self.queues[q].next_desc = (head + bufs.len() as u16) % size;
        self.push_avail(q, head);
        head
    }

    /// Notifies queue `q` through the MMIO register and runs the device
    /// until it has nothing more to do.
    pub fn kick(&mut self, q: usize) {
        self.write_reg(0x50, q as u32);
        let evt = &self.transport.queue_events()[q];
        let _ = evt.read();
        self.run(q);
    }

    pub fn run(&mut self, q: usize) {
        for _ in 0..10_000 {
            if !lock_device(&self.device).process_queue(q) {
                return;
            }
        }
        panic!("device never finished");
    }

    /// Used elements returned since the last call.
    pub fn take_used(&mut self, q: usize) -> Vec<(u32, u32)> {
        let dq = self.queues[q];
        let idx: u16 = self.mem.read_obj(GuestAddress(dq.used + 2)).unwrap();
        let mut out = Vec::new();
        let mut seen = dq.used_seen;
        while seen != idx {
            let slot = dq.used + 4 + u64::from(seen % dq.size) * 8;
            let id: u32 = self.mem.read_obj(GuestAddress(slot)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(slot + 4)).unwrap();
            out.push((id, len));
            seen = seen.wrapping_add(1);
        }
        self.queues[q].used_seen = seen;
        out
    }

    pub fn write_mem(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
    }

    pub fn read_mem(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    pub fn counters(&self) -> bulwark_virtio::CounterSnapshot {
        lock_device(&self.device).counters().snapshot()
    }
}

/// A deterministic byte pattern.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
