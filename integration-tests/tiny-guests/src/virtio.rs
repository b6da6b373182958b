//! A minimal virtio-mmio (version 2) driver for the tiny guests: device discovery (by
//! probing the windows bulwark-vmm places from `0xd000_0000`, or from the
//! `virtio_mmio.device=` command-line fragments), the status handshake, split
//! virtqueues laid out in fixed guest-physical pages, and polling of the used ring
//! (interrupts stay masked). Deliberately also able to do what a hostile driver does:
//! raw descriptor writes, register writes in any state. The block and rng drivers
//! work over any [`Transport`]: [`Mmio`] here, `virtio_pci::VirtioPci` too.
//!
//! Memory plan (identity-mapped RAM, free for the guests' use): queue pages from
//! [`QUEUE_AREA`], 4 KiB each; data buffers from [`DATA_AREA`].

use crate::{peek, poke};
use core::sync::atomic::{fence, Ordering};

/// First virtio-mmio window bulwark-vmm places (`layout::VIRTIO_MMIO_START`).
pub const MMIO_START: u64 = 0xd000_0000;
/// Size of one window.
pub const WINDOW: u64 = 0x1000;
/// Most windows probed.
pub const MAX_DEVICES: u64 = 10;
/// Queue pages (one 4 KiB page per queue).
pub const QUEUE_AREA: u64 = 0x100_0000;
/// Data buffers.
pub const DATA_AREA: u64 = 0x120_0000;

/// Device ids.
pub const ID_BLOCK: u32 = 2;
/// virtio-rng.
pub const ID_RNG: u32 = 4;
/// virtio-vsock.
pub const ID_VSOCK: u32 = 19;

/// Status bits.
pub const ACKNOWLEDGE: u32 = 1;
/// The driver is there.
pub const DRIVER: u32 = 2;
/// The driver is ready.
pub const DRIVER_OK: u32 = 4;
/// Features negotiated.
pub const FEATURES_OK: u32 = 8;
/// The device needs a reset.
pub const NEEDS_RESET: u32 = 0x40;

/// Descriptor flags.
pub const F_NEXT: u16 = 1;
/// Device-writable buffer.
pub const F_WRITE: u16 = 2;
/// Indirect table.
pub const F_INDIRECT: u16 = 4;

/// Register offsets (virtio 1.2, 4.2.2).
pub mod reg {
    /// Magic "virt".
    pub const MAGIC: u64 = 0x00;
    /// Version.
    pub const VERSION: u64 = 0x04;
    /// Device id.
    pub const DEVICE_ID: u64 = 0x08;
    /// Device features (32 bits at a time).
    pub const DEVICE_FEATURES: u64 = 0x10;
    /// Device features selector.
    pub const DEVICE_FEATURES_SEL: u64 = 0x14;
    /// Driver features.
    pub const DRIVER_FEATURES: u64 = 0x20;
    /// Driver features selector.
    pub const DRIVER_FEATURES_SEL: u64 = 0x24;
    /// Queue selector.
    pub const QUEUE_SEL: u64 = 0x30;
    /// Largest queue size.
    pub const QUEUE_NUM_MAX: u64 = 0x34;
    /// Queue size.
    pub const QUEUE_NUM: u64 = 0x38;
    /// Queue ready.
    pub const QUEUE_READY: u64 = 0x44;
    /// Queue notify.
    pub const QUEUE_NOTIFY: u64 = 0x50;
    /// Interrupt status.
    pub const INTERRUPT_STATUS: u64 = 0x60;
    /// Interrupt acknowledge.
    pub const INTERRUPT_ACK: u64 = 0x64;
    /// Device status.
    pub const STATUS: u64 = 0x70;
    /// Descriptor table, low 32 bits.
    pub const QUEUE_DESC_LOW: u64 = 0x80;
    /// Descriptor table, high 32 bits.
    pub const QUEUE_DESC_HIGH: u64 = 0x84;
    /// Available ring, low.
    pub const QUEUE_AVAIL_LOW: u64 = 0x90;
    /// Available ring, high.
    pub const QUEUE_AVAIL_HIGH: u64 = 0x94;
    /// Used ring, low.
    pub const QUEUE_USED_LOW: u64 = 0xa0;
    /// Used ring, high.
    pub const QUEUE_USED_HIGH: u64 = 0xa4;
    /// Config space.
    pub const CONFIG: u64 = 0x100;
}

/// `VIRTIO_F_VERSION_1` (bit 32).
pub const F_VERSION_1_HI: u32 = 1;

/// One device window.
#[derive(Debug, Clone, Copy)]
pub struct Mmio {
    /// Guest-physical base of the window.
    pub base: u64,
}

impl Mmio {
    /// Reads a 32-bit register.
    pub fn read(&self, off: u64) -> u32 {
        // SAFETY: MMIO inside the identity-mapped 32-bit hole; the VMM emulates it.
        unsafe { peek(self.base + off) }
    }

    /// Writes a 32-bit register.
    pub fn write(&self, off: u64, v: u32) {
        // SAFETY: as for `read`.
        unsafe { poke(self.base + off, v) }
    }

    /// The device at `base`, if a virtio-mmio v2 device answers there.
    pub fn probe(base: u64) -> Option<Mmio> {
        let m = Mmio { base };
        (m.read(reg::MAGIC) == 0x7472_6976 && m.read(reg::VERSION) == 2 && m.device_id() != 0)
            .then_some(m)
    }

    /// The `n`th device of type `id` among the windows bulwark-vmm places.
    pub fn find(id: u32, n: usize) -> Option<Mmio> {
        (0..MAX_DEVICES)
            .filter_map(|i| Mmio::probe(MMIO_START + i * WINDOW))
            .filter(|m| m.device_id() == id)
            .nth(n)
    }

    /// The device id.
    pub fn device_id(&self) -> u32 {
        self.read(reg::DEVICE_ID)
    }

    /// The status register.
    pub fn status(&self) -> u32 {
        self.read(reg::STATUS)
    }

    /// 64-bit device features.
    pub fn features(&self) -> u64 {
        self.write(reg::DEVICE_FEATURES_SEL, 0);
        let lo = self.read(reg::DEVICE_FEATURES);
        self.write(reg::DEVICE_FEATURES_SEL, 1);
        let hi = self.read(reg::DEVICE_FEATURES);
        u64::from(lo) | u64::from(hi) << 32
    }

    /// Reads a little-endian config field of up to 8 bytes, 32 bits at a time.
    pub fn config_u64(&self, off: u64) -> u64 {
        u64::from(self.read(reg::CONFIG + off)) | u64::from(self.read(reg::CONFIG + off + 4)) << 32
    }

    /// Resets the device and negotiates `features` (VERSION_1 is added); returns false
    /// when the device refuses FEATURES_OK.
    pub fn begin(&self, features_lo: u32) -> bool {
        self.write(reg::STATUS, 0);
        self.write(reg::STATUS, ACKNOWLEDGE);
        self.write(reg::STATUS, ACKNOWLEDGE | DRIVER);
        self.write(reg::DRIVER_FEATURES_SEL, 0);
        self.write(reg::DRIVER_FEATURES, features_lo);
        self.write(reg::DRIVER_FEATURES_SEL, 1);
        self.write(reg::DRIVER_FEATURES, F_VERSION_1_HI);
        self.write(reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        self.status() & FEATURES_OK != 0
    }

    /// Programs queue `index` with `vq`'s rings and marks it ready.
    pub fn set_queue(&self, index: u32, vq: &Vq) {
        self.write(reg::QUEUE_SEL, index);
        self.write(reg::QUEUE_NUM, u32::from(vq.size));
        for (lo, addr) in [
            (reg::QUEUE_DESC_LOW, vq.desc_addr()),
            (reg::QUEUE_AVAIL_LOW, vq.avail_addr()),
            (reg::QUEUE_USED_LOW, vq.used_addr()),
        ] {
            self.write(lo, addr as u32);
            self.write(lo + 4, (addr >> 32) as u32);
        }
        self.write(reg::QUEUE_READY, 1);
    }

    /// Sets DRIVER_OK; returns the status read back.
    pub fn driver_ok(&self) -> u32 {
        self.write(reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        self.status()
    }

    /// Notifies queue `index`.
    pub fn notify(&self, index: u32) {
        self.write(reg::QUEUE_NOTIFY, index);
    }

    /// Acknowledges whatever interrupt is pending.
    pub fn ack_interrupt(&self) {
        let s = self.read(reg::INTERRUPT_STATUS);
        if s != 0 {
            self.write(reg::INTERRUPT_ACK, s);
        }
    }
}

/// What the block and rng drivers need from a transport.
pub trait Transport: Copy {
    /// 64-bit device features.
    fn features(&self) -> u64;
    /// Resets the device and negotiates `features_lo` (VERSION_1 is added); false
    /// when the device refuses FEATURES_OK.
    fn begin(&self, features_lo: u32) -> bool;
    /// Programs queue `index` with `vq`'s rings and enables it.
    fn set_queue(&self, index: u32, vq: &Vq);
    /// Sets DRIVER_OK; returns the status read back.
    fn driver_ok(&self) -> u32;
    /// Notifies queue `index`.
    fn notify(&self, index: u32);
    /// A little-endian device config field of up to 8 bytes.
    fn config_u64(&self, off: u64) -> u64;
}

impl Transport for Mmio {
    fn features(&self) -> u64 {
        Mmio::features(self)
    }
    fn begin(&self, features_lo: u32) -> bool {
        Mmio::begin(self, features_lo)
    }
    fn set_queue(&self, index: u32, vq: &Vq) {
        Mmio::set_queue(self, index, vq)
    }
    fn driver_ok(&self) -> u32 {
        Mmio::driver_ok(self)
    }
    fn notify(&self, index: u32) {
        Mmio::notify(self, index)
    }
    fn config_u64(&self, off: u64) -> u64 {
        Mmio::config_u64(self, off)
    }
}

/// A split virtqueue in one 4 KiB page: descriptors at +0, available ring at +0x400,
/// used ring at +0x800 (room for up to 64 entries).
#[derive(Debug)]
pub struct Vq {
    /// The page.
    pub page: u64,
    /// Number of entries (a power of two, at most 64).
    pub size: u16,
    /// Next available index the driver publishes.
    pub avail_idx: u16,
    /// Next used index the driver has not consumed.
    pub last_used: u16,
}

impl Vq {
    /// A queue in page `n` of the queue area, zeroed.
    pub fn new(n: u64, size: u16) -> Vq {
        let page = QUEUE_AREA + n * 0x1000;
        for off in (0..0x1000).step_by(8) {
            // SAFETY: the queue area is RAM reserved for queues by the memory plan.
            unsafe { poke::<u64>(page + off, 0) }
        }
        Vq {
            page,
            size,
            avail_idx: 0,
            last_used: 0,
        }
    }

    /// Guest-physical address of the descriptor table.
    pub fn desc_addr(&self) -> u64 {
        self.page
    }

    /// Guest-physical address of the available ring.
    pub fn avail_addr(&self) -> u64 {
        self.page + 0x400
    }

    /// Guest-physical address of the used ring.
    pub fn used_addr(&self) -> u64 {
        self.page + 0x800
    }

    /// Writes descriptor `i`.
    pub fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.page + u64::from(i) * 16;
        // SAFETY: inside this queue's page.
        unsafe {
            poke(d, addr);
            poke(d + 8, len);
            poke(d + 12, flags);
            poke(d + 14, next);
        }
    }

    /// Publishes chain `head` in the available ring (no notification).
    pub fn push(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        // SAFETY: inside this queue's page.
        unsafe { poke(self.avail_addr() + 4 + slot * 2, head) };
        self.avail_idx = self.avail_idx.wrapping_add(1);
        fence(Ordering::SeqCst);
        self.set_avail_idx(self.avail_idx);
    }

    /// Writes the available ring's index as is (a hostile driver may lie).
    pub fn set_avail_idx(&self, idx: u16) {
        // SAFETY: inside this queue's page.
        unsafe { poke(self.avail_addr() + 2, idx) };
        fence(Ordering::SeqCst);
    }

    /// The next used element `(id, len)`, if the device returned one.
    pub fn pop_used(&mut self) -> Option<(u32, u32)> {
        fence(Ordering::SeqCst);
        // SAFETY: inside this queue's page.
        let idx: u16 = unsafe { peek(self.used_addr() + 2) };
        if idx == self.last_used {
            return None;
        }
        fence(Ordering::SeqCst);
        let slot = u64::from(self.last_used % self.size);
        // SAFETY: inside this queue's page.
        let e: (u32, u32) = unsafe {
            (
                peek(self.used_addr() + 4 + slot * 8),
                peek(self.used_addr() + 8 + slot * 8),
            )
        };
        self.last_used = self.last_used.wrapping_add(1);
        Some(e)
    }

    /// Waits (spinning) for the next used element; `None` after `spins` polls.
    pub fn wait_used(&mut self, spins: u64) -> Option<(u32, u32)> {
        for _ in 0..spins {
            if let Some(e) = self.pop_used() {
                return Some(e);
            }
            core::hint::spin_loop();
        }
        None
    }

    /// Waits for the next used element sleeping in `hlt` with interrupts on
    /// (checked with them off, then `sti; hlt` with no window between), so only an
    /// interrupt wakes the vCPU; `None` after `rounds` wake-ups. The guest must have
    /// an IDT and an interrupt source set up.
    pub fn wait_used_halting(&mut self, rounds: u64) -> Option<(u32, u32)> {
        for _ in 0..rounds {
            // SAFETY: cli only affects this vCPU.
            unsafe { core::arch::asm!("cli", options(nomem, nostack)) };
            if let Some(e) = self.pop_used() {
                // SAFETY: re-enables interrupts the caller had on.
                unsafe { core::arch::asm!("sti", options(nomem, nostack)) };
                return Some(e);
            }
            // SAFETY: sleeps until an interrupt; the caller installed the handlers.
            unsafe { core::arch::asm!("sti", "hlt", options(nomem, nostack)) };
        }
        None
    }
}

/// How long drivers poll a used ring before giving up (tens of seconds here).
pub const SPINS: u64 = 2_000_000;

/// Fills `[addr, addr + len)` (8-byte multiples) with `f(word index)`.
pub fn fill_words(addr: u64, len: u64, f: impl Fn(u64) -> u64) {
    for i in 0..len / 8 {
        // SAFETY: callers pass buffers in the data area.
        unsafe { poke(addr + i * 8, f(i)) }
    }
}

/// Whether `[addr, addr + len)` holds `f(word index)` in every word.
pub fn check_words(addr: u64, len: u64, f: impl Fn(u64) -> u64) -> bool {
    // SAFETY: callers pass buffers in the data area.
    (0..len / 8).all(|i| unsafe { peek::<u64>(addr + i * 8) } == f(i))
}

/// The kernel command line from a Linux zero page (RSI at entry), as bytes.
pub fn cmdline(zero_page: u64) -> &'static [u8] {
    // SAFETY: bulwark-vmm put the zero page at RSI and the command line where
    // cmd_line_ptr (offset 0x228) points, NUL-terminated, below 4 GiB.
    unsafe {
        let p = u64::from(peek::<u32>(zero_page + 0x228));
        if p == 0 {
            return &[];
        }
        let mut n = 0;
        while n < 4096 && peek::<u8>(p + n) != 0 {
            n += 1;
        }
        core::slice::from_raw_parts(p as *const u8, n as usize)
    }
}

/// The value of `key=` on the command line.
pub fn cmdline_value<'a>(cmdline: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    cmdline.split(|&b| b == b' ').find_map(|w| {
        (w.len() > key.len() && w.starts_with(key) && w[key.len()] == b'=')
            .then(|| &w[key.len() + 1..])
    })
}

/// Parses a decimal or `0x` hexadecimal number.
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    let (digits, radix) = match s.strip_prefix(b"0x") {
        Some(h) => (h, 16),
        None => (s, 10),
    };
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &c| {
        let d = (c as char).to_digit(radix)?;
        acc.checked_mul(u64::from(radix))?.checked_add(u64::from(d))
    })
}

/// The windows announced by `virtio_mmio.device=4K@BASE:GSI` fragments, in order.
pub fn cmdline_devices(cmdline: &[u8]) -> impl Iterator<Item = (u64, u32)> + '_ {
    cmdline.split(|&b| b == b' ').filter_map(|w| {
        let rest = w.strip_prefix(b"virtio_mmio.device=4K@")?;
        let colon = rest.iter().position(|&b| b == b':')?;
        let base = parse_u64(&rest[..colon])?;
        let gsi = parse_u64(&rest[colon + 1..])?;
        Some((base, gsi as u32))
    })
}

/// A virtio-blk driver doing one request at a time on queue 0.
#[derive(Debug)]
pub struct Blk<T: Transport = Mmio> {
    /// The transport.
    pub dev: T,
    /// Its request queue.
    pub vq: Vq,
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    /// Offered features.
    pub features: u64,
    /// Header (16 bytes) and status byte area.
    pub hdr: u64,
    /// Wait for completions in `hlt` (interrupts set up) instead of spinning.
    pub halt_wait: bool,
    /// Requests completed.
    pub completions: u64,
}

/// virtio-blk request types.
pub const BLK_IN: u32 = 0;
/// Write.
pub const BLK_OUT: u32 = 1;
/// Flush.
pub const BLK_FLUSH: u32 = 4;
/// Get id.
pub const BLK_GET_ID: u32 = 8;

impl<T: Transport> Blk<T> {
    /// Brings the device up with queue page `page` and header area `hdr`.
    pub fn new(dev: T, page: u64, hdr: u64) -> Option<Blk<T>> {
        let features = dev.features();
        // SEG_MAX, RO, FLUSH as offered (no DISCARD).
        let want = (features as u32) & ((1 << 2) | (1 << 5) | (1 << 9));
        if !dev.begin(want) {
            return None;
        }
        let vq = Vq::new(page, 16);
        dev.set_queue(0, &vq);
        if dev.driver_ok() & NEEDS_RESET != 0 {
            return None;
        }
        Some(Blk {
            dev,
            vq,
            capacity: dev.config_u64(0),
            features,
            hdr,
            halt_wait: false,
            completions: 0,
        })
    }

    /// One request: header, optional data buffer, status byte. Returns the status
    /// byte (0xff if the device returned the chain without writing it, 0xfe on timeout)
    /// and the used length.
    pub fn request(&mut self, kind: u32, sector: u64, data: u64, len: u32) -> (u8, u32) {
        // SAFETY: the header area is reserved for this device.
        unsafe {
            poke(self.hdr, kind);
            poke(self.hdr + 4, 0u32);
            poke(self.hdr + 8, sector);
            poke::<u8>(self.hdr + 16, 0xff);
        }
        let data_flags = if kind == BLK_OUT { 0 } else { F_WRITE };
        self.vq.set_desc(0, self.hdr, 16, F_NEXT, 1);
        let status_desc = if len > 0 {
            self.vq.set_desc(1, data, len, data_flags | F_NEXT, 2);
            2
        } else {
            1
        };
        self.vq.set_desc(status_desc, self.hdr + 16, 1, F_WRITE, 0);
        self.vq.push(0);
        self.dev.notify(0);
        let done = if self.halt_wait {
            self.vq.wait_used_halting(SPINS)
        } else {
            self.vq.wait_used(SPINS)
        };
        match done {
            Some((_, used)) => {
                self.completions += 1;
                // SAFETY: as above.
                (unsafe { peek::<u8>(self.hdr + 16) }, used)
            }
            None => (0xfe, 0),
        }
    }
}

/// A virtio-rng driver.
#[derive(Debug)]
pub struct Rng<T: Transport = Mmio> {
    /// The transport.
    pub dev: T,
    /// Its queue.
    pub vq: Vq,
    /// Wait for completions in `hlt` (interrupts set up) instead of spinning.
    pub halt_wait: bool,
}

impl<T: Transport> Rng<T> {
    /// Brings the device up with queue page `page`.
    pub fn new(dev: T, page: u64) -> Option<Rng<T>> {
        if !dev.begin(0) {
            return None;
        }
        let vq = Vq::new(page, 16);
        dev.set_queue(0, &vq);
        if dev.driver_ok() & NEEDS_RESET != 0 {
            return None;
        }
        Some(Rng {
            dev,
            vq,
            halt_wait: false,
        })
    }

    /// Asks for `len` random bytes at `buf`; returns how many the device wrote.
    pub fn fill(&mut self, buf: u64, len: u32) -> Option<u32> {
        self.vq.set_desc(0, buf, len, F_WRITE, 0);
        self.vq.push(0);
        self.dev.notify(0);
        let done = if self.halt_wait {
            self.vq.wait_used_halting(SPINS)
        } else {
            self.vq.wait_used(SPINS)
        };
        done.map(|(_, n)| n)
    }
}
