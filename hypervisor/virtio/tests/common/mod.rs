//! A fake virtio driver: it lays out split rings in a `GuestMemoryMmap`,
//! drives the virtio-mmio registers ([`FakeDriver`]) or a virtio-pci function's
//! configuration space and BAR ([`PciDriver`]) and runs the device synchronously
//! (the I/O worker is exercised in its own test).
#![allow(dead_code)]

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use bulwark_virtio::device::VIRTIO_F_VERSION_1;
use bulwark_virtio::mmio::{status, IrqLine};
use bulwark_virtio::msix::MsixMessage;
use bulwark_virtio::pci::{self, MsixRoutes};
use bulwark_virtio::{
    lock_device, GuestMemory, MmioTransport, PciTransport, SharedDevice, VirtioDevice,
};
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

/// The driver's side of the rings, independent of the transport: guest memory,
/// the device (run synchronously) and where each queue's rings are.
pub struct Rings {
    pub mem: Arc<GuestMemory>,
    pub device: SharedDevice,
    pub queues: Vec<DriverQueue>,
}

impl Rings {
    fn new(device: &SharedDevice, mem: Arc<GuestMemory>, ring_base: u64) -> Self {
        let nq = lock_device(device).queue_max_sizes().len();
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
            device: device.clone(),
            queues,
        }
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

/// What a fake driver does through its transport's registers; the ring
/// handling ([`Rings`]) and the bring-up sequence are shared.
pub trait Driver: Deref<Target = Rings> + DerefMut {
    /// Resets and negotiates `features`; whether FEATURES_OK stuck.
    fn negotiate(&mut self, features: u64) -> bool;
    /// The device's maximum size of queue `index`.
    fn queue_max(&mut self, index: usize) -> u16;
    /// Programs queue `index`'s registers from `self.queues[index]` and enables it.
    fn program_queue(&mut self, index: usize);
    /// Sets DRIVER_OK.
    fn driver_ok(&mut self);
    /// The device status register.
    fn status(&mut self) -> u32;
    /// Notifies queue `index` through the transport's register.
    fn notify(&mut self, index: usize);
    /// The transport's queue notification events.
    fn queue_events(&self) -> &[EventFd];
    /// Writes 0 to the device status (a device reset).
    fn reset_device(&mut self);

    fn setup_queue(&mut self, index: usize, size: u16) {
        let q = self.queues[index];
        self.mem
            .write_slice(&[0u8; 0x3000], GuestAddress(q.desc))
            .unwrap();
        self.setup_queue_no_clear(index, size);
    }

    /// Programs the queue registers (the rings are cleared at the descriptor
    /// table's address only).
    fn setup_queue_no_clear(&mut self, index: usize, size: u16) {
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
        self.program_queue(index);
    }

    /// Full initialisation with `VERSION_1 | extra` and every queue of `size`.
    fn init(&mut self, extra: u64, size: u16) {
        assert!(self.negotiate(VIRTIO_F_VERSION_1 | extra));
        for i in 0..self.queues.len() {
            let max = self.queue_max(i);
            self.setup_queue(i, size.min(max));
        }
        self.driver_ok();
        assert_eq!(self.status() & status::DEVICE_NEEDS_RESET, 0);
        assert!(lock_device(&self.device).is_active());
    }

    /// Notifies queue `q` through the transport and runs the device until it
    /// has nothing more to do.
    fn kick(&mut self, q: usize) {
        self.notify(q);
        let evt = &self.queue_events()[q];
        let _ = evt.read();
        self.run(q);
    }
}

/// `Deref` to the driver's [`Rings`] (its `rings` field).
macro_rules! rings_deref {
    ($t:ty) => {
        impl Deref for $t {
            type Target = Rings;
            fn deref(&self) -> &Rings {
                &self.rings
            }
        }

        impl DerefMut for $t {
            fn deref_mut(&mut self) -> &mut Rings {
                &mut self.rings
            }
        }
    };
}

/// A fake driver on the virtio-mmio transport.
pub struct FakeDriver {
    pub rings: Rings,
    pub transport: MmioTransport,
    pub irq: Arc<EventFd>,
}

rings_deref!(FakeDriver);

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
        Self {
            rings: Rings::new(&device, mem, ring_base),
            transport,
            irq,
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

    pub fn device_features(&mut self) -> u64 {
        self.write_reg(0x14, 0);
        let lo = self.read_reg(0x10);
        self.write_reg(0x14, 1);
        let hi = self.read_reg(0x10);
        u64::from(lo) | (u64::from(hi) << 32)
    }
}

impl Driver for FakeDriver {
    fn negotiate(&mut self, features: u64) -> bool {
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
        Driver::status(self) & status::FEATURES_OK != 0
    }

    fn queue_max(&mut self, index: usize) -> u16 {
        self.write_reg(0x30, index as u32);
        self.read_reg(0x34) as u16
    }

    fn program_queue(&mut self, index: usize) {
        let q = self.queues[index];
        self.write_reg(0x30, index as u32);
        self.write_reg(0x38, u32::from(q.size));
        self.write_reg(0x80, q.desc as u32);
        self.write_reg(0x84, (q.desc >> 32) as u32);
        self.write_reg(0x90, q.avail as u32);
        self.write_reg(0x94, (q.avail >> 32) as u32);
        self.write_reg(0xa0, q.used as u32);
        self.write_reg(0xa4, (q.used >> 32) as u32);
        self.write_reg(0x44, 1);
    }

    fn driver_ok(&mut self) {
        self.write_reg(
            0x70,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
    }

    fn status(&mut self) -> u32 {
        self.read_reg(0x70)
    }

    fn notify(&mut self, index: usize) {
        self.write_reg(0x50, index as u32);
    }

    fn reset_device(&mut self) {
        self.write_reg(0x70, 0);
    }

    fn queue_events(&self) -> &[EventFd] {
        self.transport.queue_events()
    }
}

/// Where the fake PCI driver's function has its BAR0 (the VMM's first virtio-pci
/// BAR address).
pub const PCI_BAR: u64 = 0xcff0_0000;

/// Common configuration field offsets (virtio 1.2, 4.1.4.3).
pub mod cc {
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    pub const DEVICE_FEATURE: u64 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    pub const DRIVER_FEATURE: u64 = 0x0c;
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    pub const NUM_QUEUES: u64 = 0x12;
    pub const DEVICE_STATUS: u64 = 0x14;
    pub const CONFIG_GENERATION: u64 = 0x15;
    pub const QUEUE_SELECT: u64 = 0x16;
    pub const QUEUE_SIZE: u64 = 0x18;
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    pub const QUEUE_ENABLE: u64 = 0x1c;
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    pub const QUEUE_DESC: u64 = 0x20;
    pub const QUEUE_DRIVER: u64 = 0x28;
    pub const QUEUE_DEVICE: u64 = 0x30;
}

/// The MSI-X routes a transport programmed, as the VMM's GSI router would hold them.
#[derive(Debug, Default)]
pub struct RecordingRoutes {
    pub routes: Mutex<std::collections::BTreeMap<u16, MsixMessage>>,
    pub calls: std::sync::atomic::AtomicUsize,
}

impl MsixRoutes for RecordingRoutes {
    fn update(&self, updates: &[(u16, Option<MsixMessage>)]) -> bool {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut r = self.routes.lock().unwrap();
        for &(v, m) in updates {
            match m {
                Some(m) => r.insert(v, m),
                None => r.remove(&v),
            };
        }
        true
    }
}

/// What the fake PCI driver found in the capability list (BAR offsets).
#[derive(Debug, Clone, Copy, Default)]
pub struct PciCaps {
    pub msix: u64,
    pub table: u64,
    pub pba: u64,
    pub common: u64,
    pub notify: u64,
    pub notify_multiplier: u32,
    pub isr: u64,
    pub device: Option<(u64, u32)>,
    pub pci_cfg: u64,
}

/// The MSI-X message the fake driver programs for vector `v`: APIC 0, vector 0x40 + v.
pub fn msi_message(v: u16) -> MsixMessage {
    MsixMessage {
        addr: 0xfee0_0000,
        data: 0x40 + u32::from(v),
    }
}

/// A fake driver on a virtio-pci function: it walks the capabilities in
/// configuration space and drives the common configuration, notification, ISR
/// and MSI-X regions of BAR0.
pub struct PciDriver {
    pub rings: Rings,
    pub transport: PciTransport,
    /// One eventfd per MSI-X vector (the irqfds).
    pub vectors: Vec<Arc<EventFd>>,
    pub routes: Arc<RecordingRoutes>,
    pub caps: PciCaps,
}

rings_deref!(PciDriver);

impl PciDriver {
    pub fn new<D: VirtioDevice + 'static>(
        device: D,
        mem: Arc<GuestMemory>,
        ring_base: u64,
    ) -> Self {
        Self::with_shared(Arc::new(Mutex::new(device)), mem, ring_base)
    }

    pub fn with_shared(device: SharedDevice, mem: Arc<GuestMemory>, ring_base: u64) -> Self {
        let n = pci::vectors_needed(&device);
        let vectors: Vec<Arc<EventFd>> = (0..n)
            .map(|_| Arc::new(EventFd::new(EFD_NONBLOCK).unwrap()))
            .collect();
        let lines: Vec<Arc<dyn IrqLine>> = vectors
            .iter()
            .map(|e| e.clone() as Arc<dyn IrqLine>)
            .collect();
        let routes = Arc::new(RecordingRoutes::default());
        let transport =
            PciTransport::new(device.clone(), mem.clone(), PCI_BAR, lines, routes.clone()).unwrap();
        let mut d = Self {
            rings: Rings::new(&device, mem, ring_base),
            transport,
            vectors,
            routes,
            caps: PciCaps::default(),
        };
        d.caps = d.find_caps();
        d
    }

    pub fn cfg_read(&mut self, offset: u64, len: usize) -> u32 {
        let mut b = [0u8; 4];
        self.transport.config_read(offset, &mut b[..len]);
        u32::from_le_bytes(b)
    }

    pub fn cfg_write(&mut self, offset: u64, len: usize, value: u32) {
        self.transport
            .config_write(offset, &value.to_le_bytes()[..len]);
    }

    /// Walks the capability list (bounded) and records where everything is.
    fn find_caps(&mut self) -> PciCaps {
        let mut caps = PciCaps::default();
        let mut pos = u64::from(self.cfg_read(0x34, 1) as u8);
        for _ in 0..48 {
            if pos < 0x40 {
                break;
            }
            let id = self.cfg_read(pos, 1) as u8;
            let next = u64::from(self.cfg_read(pos + 1, 1) as u8);
            match id {
                0x11 => {
                    caps.msix = pos;
                    caps.table = u64::from(self.cfg_read(pos + 4, 4) & !7);
                    caps.pba = u64::from(self.cfg_read(pos + 8, 4) & !7);
                }
                0x09 => {
                    let off = u64::from(self.cfg_read(pos + 8, 4));
                    let len = self.cfg_read(pos + 12, 4);
                    match self.cfg_read(pos + 3, 1) {
                        1 => caps.common = off,
                        2 => {
                            caps.notify = off;
                            caps.notify_multiplier = self.cfg_read(pos + 16, 4);
                        }
                        3 => caps.isr = off,
                        4 => caps.device = Some((off, len)),
                        5 => caps.pci_cfg = pos,
                        _ => {}
                    }
                }
                _ => {}
            }
            pos = next;
        }
        caps
    }

    pub fn bar_read(&mut self, offset: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.transport.bar_read(offset, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    pub fn bar_write(&mut self, offset: u64, len: usize, value: u64) {
        self.transport
            .bar_write(offset, &value.to_le_bytes()[..len]);
    }

    /// A common configuration field of `len` bytes.
    pub fn common(&mut self, field: u64, len: usize) -> u64 {
        let at = self.caps.common + field;
        self.bar_read(at, len)
    }

    pub fn set_common(&mut self, field: u64, len: usize, value: u64) {
        let at = self.caps.common + field;
        self.bar_write(at, len, value);
    }

    /// Programs every MSI-X entry ([`msi_message`]), unmasks them and enables
    /// MSI-X (function unmasked).
    pub fn enable_msix(&mut self) {
        for v in 0..self.vectors.len() as u64 {
            let e = self.caps.table + v * 16;
            let m = msi_message(v as u16);
            self.bar_write(e, 8, m.addr);
            self.bar_write(e + 8, 4, u64::from(m.data));
            self.bar_write(e + 12, 4, 0);
        }
        self.set_msix_control(true, false);
    }

    /// Writes the MSI-X enable and function-mask bits (byte 3 of the capability).
    pub fn set_msix_control(&mut self, enable: bool, function_mask: bool) {
        let byte = u32::from(enable) << 7 | u32::from(function_mask) << 6;
        self.cfg_write(self.caps.msix + 3, 1, byte);
    }

    /// Sets or clears vector `v`'s mask bit in the table.
    pub fn mask_vector(&mut self, v: u16, masked: bool) {
        let at = self.caps.table + u64::from(v) * 16 + 12;
        self.bar_write(at, 4, u64::from(masked));
    }

    /// The PBA's first qword.
    pub fn pba(&mut self) -> u64 {
        let at = self.caps.pba;
        self.bar_read(at, 8)
    }

    /// Messages sent on vector `v` since the last call.
    pub fn interrupts(&self, v: u16) -> u64 {
        self.vectors[usize::from(v)].read().unwrap_or(0)
    }
}

impl Driver for PciDriver {
    /// Like Linux: reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK, then the
    /// configuration vector 0.
    fn negotiate(&mut self, features: u64) -> bool {
        use cc::*;
        self.set_common(DEVICE_STATUS, 1, 0);
        self.set_common(DEVICE_STATUS, 1, u64::from(status::ACKNOWLEDGE));
        self.set_common(
            DEVICE_STATUS,
            1,
            u64::from(status::ACKNOWLEDGE | status::DRIVER),
        );
        self.set_common(DRIVER_FEATURE_SELECT, 4, 0);
        self.set_common(DRIVER_FEATURE, 4, features & 0xffff_ffff);
        self.set_common(DRIVER_FEATURE_SELECT, 4, 1);
        self.set_common(DRIVER_FEATURE, 4, features >> 32);
        self.set_common(
            DEVICE_STATUS,
            1,
            u64::from(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK),
        );
        let ok = Driver::status(self) & status::FEATURES_OK != 0;
        if ok {
            self.set_common(CONFIG_MSIX_VECTOR, 2, 0);
        }
        ok
    }

    fn queue_max(&mut self, index: usize) -> u16 {
        self.set_common(cc::QUEUE_SELECT, 2, index as u64);
        self.common(cc::QUEUE_SIZE, 2) as u16
    }

    /// Size, the descriptor table as two 32-bit halves, the rings as 64-bit
    /// writes, vector `index + 1`, enable.
    fn program_queue(&mut self, index: usize) {
        use cc::*;
        let q = self.queues[index];
        self.set_common(QUEUE_SELECT, 2, index as u64);
        self.set_common(QUEUE_SIZE, 2, u64::from(q.size));
        self.set_common(QUEUE_DESC, 4, q.desc & 0xffff_ffff);
        self.set_common(QUEUE_DESC + 4, 4, q.desc >> 32);
        self.set_common(QUEUE_DRIVER, 8, q.avail);
        self.set_common(QUEUE_DEVICE, 8, q.used);
        self.set_common(QUEUE_MSIX_VECTOR, 2, index as u64 + 1);
        self.set_common(QUEUE_ENABLE, 2, 1);
    }

    fn driver_ok(&mut self) {
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
        self.set_common(cc::DEVICE_STATUS, 1, u64::from(s));
    }

    fn status(&mut self) -> u32 {
        self.common(cc::DEVICE_STATUS, 1) as u32
    }

    /// A 16-bit write of the queue index at the queue's notification address.
    fn notify(&mut self, index: usize) {
        self.set_common(cc::QUEUE_SELECT, 2, index as u64);
        let off = self.common(cc::QUEUE_NOTIFY_OFF, 2);
        let at = self.caps.notify + off * u64::from(self.caps.notify_multiplier);
        self.bar_write(at, 2, index as u64);
    }

    fn reset_device(&mut self) {
        self.set_common(cc::DEVICE_STATUS, 1, 0);
    }

    fn queue_events(&self) -> &[EventFd] {
        self.transport.queue_events()
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
