//! The virtio-mmio register block and status state machine under a hostile
//! driver; virtio-rng; two devices side by side; the I/O worker.

mod common;

use std::sync::Arc;

use bulwark_virtio::device::VIRTIO_F_VERSION_1;
use bulwark_virtio::mmio::status::*;
use bulwark_virtio::rng::{Rng, MAX_BYTES_PER_REQUEST};
use bulwark_virtio::{lock_device, IoWorker, MmioTransport};
use common::*;

fn rng() -> FakeDriver {
    FakeDriver::new(Rng::new(), guest_memory(), 0)
}

#[test]
fn identification_registers() {
    let mut d = rng();
    assert_eq!(d.read_reg(0x00), 0x7472_6976);
    assert_eq!(d.read_reg(0x04), 2);
    assert_eq!(d.read_reg(0x08), 4);
    assert_eq!(d.device_features(), VIRTIO_F_VERSION_1);
    d.write_reg(0x30, 0);
    assert_eq!(d.read_reg(0x34), 256);
    d.write_reg(0x30, 7);
    assert_eq!(d.read_reg(0x34), 0, "no such queue");
    assert_eq!(
        MmioTransport::cmdline_fragment(0xd000_0000, 5),
        "virtio_mmio.device=4K@0xd0000000:5"
    );
}

#[test]
fn bad_widths_and_offsets_are_harmless() {
    let mut d = rng();
    let mut b2 = [0xffu8; 2];
    d.transport.read(0x00, &mut b2);
    assert_eq!(b2, [0, 0]);
    let mut b4 = [0xffu8; 4];
    d.transport.read(0x02, &mut b4);
    assert_eq!(b4, [0; 4]);
    d.transport.read(u64::MAX - 3, &mut b4);
    d.transport.write(u64::MAX, &[1, 2, 3]);
    d.transport.write(0x70, &[1, 0]);
    assert_eq!(d.status(), 0, "a 2-byte status write is refused");
    d.transport.write(0x70, &[]);
    let mut empty: [u8; 0] = [];
    d.transport.read(0x70, &mut empty);
    // Read-only registers ignore writes.
    d.write_reg(0x00, 0);
    d.write_reg(0x08, 99);
    assert_eq!(d.read_reg(0x00), 0x7472_6976);
    assert_eq!(d.read_reg(0x08), 4);
}

#[test]
fn status_transitions_must_be_in_order() {
    let mut d = rng();
    // DRIVER before ACKNOWLEDGE.
    d.write_reg(0x70, DRIVER);
    assert_eq!(d.status(), 0);
    d.write_reg(0x70, ACKNOWLEDGE);
    // DRIVER_OK without FEATURES_OK.
    d.write_reg(0x70, ACKNOWLEDGE | DRIVER | DRIVER_OK);
    assert_eq!(d.status(), ACKNOWLEDGE);
    d.write_reg(0x70, ACKNOWLEDGE | DRIVER);
    // Clearing a bit without a reset.
    d.write_reg(0x70, DRIVER);
    assert_eq!(d.status(), ACKNOWLEDGE | DRIVER);
    // The driver cannot set DEVICE_NEEDS_RESET or unknown bits.
    d.write_reg(0x70, ACKNOWLEDGE | DRIVER | 0x20);
    assert_eq!(d.status(), ACKNOWLEDGE | DRIVER);
    d.write_reg(0x70, ACKNOWLEDGE | DRIVER | DEVICE_NEEDS_RESET);
    assert_eq!(d.status() & DEVICE_NEEDS_RESET, 0);
    // FAILED is accepted.
    d.write_reg(0x70, ACKNOWLEDGE | DRIVER | FAILED);
    assert_eq!(d.status(), ACKNOWLEDGE | DRIVER | FAILED);
    d.write_reg(0x70, 0);
    assert_eq!(d.status(), 0);
}

#[test]
fn feature_negotiation_refuses_bad_sets() {
    let mut d = rng();
    // Without VERSION_1 (a legacy driver).
    assert!(!d.negotiate(0));
    // With a bit that was not offered.
    assert!(!d.negotiate(VIRTIO_F_VERSION_1 | 1 << 28));
    // Feature writes before DRIVER or after FEATURES_OK are ignored.
    assert!(d.negotiate(VIRTIO_F_VERSION_1));
    d.write_reg(0x24, 0);
    d.write_reg(0x20, 0xffff_ffff);
    d.setup_queue(0, 8);
    d.driver_ok();
    assert!(lock_device(&d.device).is_active());
    assert_eq!(d.status() & DEVICE_NEEDS_RESET, 0);
}

#[test]
fn queue_setup_outside_window_is_refused() {
    let mut d = rng();
    // Before FEATURES_OK: ignored, so DRIVER_OK finds queue 0 not ready.
    d.write_reg(0x70, ACKNOWLEDGE);
    d.setup_queue(0, 8);
    assert_eq!(d.read_reg(0x44), 0);
    assert!(d.negotiate(VIRTIO_F_VERSION_1));
    d.driver_ok();
    assert!(!lock_device(&d.device).is_active());
    assert_ne!(d.status() & DEVICE_NEEDS_RESET, 0);
}

#[test]
fn invalid_queue_geometry_needs_reset() {
    for (size, desc_off, avail_off) in [(6u16, 0u64, 0u64), (512, 0, 0), (8, 4, 0), (8, 0, 1)] {
        let mut d = rng();
        assert!(d.negotiate(VIRTIO_F_VERSION_1));
        d.queues[0].desc += desc_off;
        d.queues[0].avail += avail_off;
        d.setup_queue(0, size);
        d.driver_ok();
        assert!(!lock_device(&d.device).is_active(), "size {size}");
        assert_ne!(d.status() & DEVICE_NEEDS_RESET, 0);
        // The config-change interrupt told the guest.
        assert_eq!(d.read_reg(0x60) & 2, 2);
    }
    // Rings outside guest memory.
    let mut d = rng();
    assert!(d.negotiate(VIRTIO_F_VERSION_1));
    d.queues[0].used = MEM_END - 8;
    d.setup_queue_no_clear(0, 8);
    d.driver_ok();
    assert!(!lock_device(&d.device).is_active());
}

#[test]
fn queue_address_rewrite_after_driver_ok_is_refused() {
    let mut d = rng();
    d.init(0, 8);
    let before = d.queues[0];
    d.write_reg(0x30, 0);
    d.write_reg(0x80, 0x5000);
    d.write_reg(0xa0, 0x7000);
    d.write_reg(0x38, 4);
    assert_ne!(d.status() & DEVICE_NEEDS_RESET, 0);
    assert!(d.counters().errors >= 1);
    // The device stopped; nothing was written through the new addresses.
    let buf = DATA_START;
    d.write_mem(buf, &[0u8; 64]);
    d.add_chain(0, &[(buf, 64, true)]);
    d.kick(0);
    assert!(d.take_used(0).is_empty());
    assert_eq!(d.read_mem(0x7000, 16), vec![0u8; 16]);
    assert_eq!(d.read_mem(buf, 64), vec![0u8; 64]);
    // A reset and a fresh setup at the original addresses work again.
    d.queues[0] = before;
    d.init(0, 8);
    d.add_chain(0, &[(buf, 64, true)]);
    d.kick(0);
    assert_eq!(d.take_used(0), vec![(0, 64)]);
}

#[test]
fn rng_fills_buffers_and_bounds_requests() {
    let mut d = rng();
    d.init(0, 8);
    let a = DATA_START;
    let b = DATA_START + 0x1000;
    d.write_mem(a, &[0u8; 4096]);
    // Two descriptors, one crossing into a second page.
    d.add_chain(0, &[(a, 100, true), (a + 100, 3996, true)]);
    d.kick(0);
    assert_eq!(d.take_used(0), vec![(0, 4096)]);
    let got = d.read_mem(a, 4096);
    assert!(
        got.iter().filter(|&&x| x == 0).count() < 100,
        "buffer filled"
    );
    // A request for 8 MiB gets at most MAX_BYTES_PER_REQUEST.
    d.add_chain(0, &[(b, 8 << 20, true)]);
    d.kick(0);
    assert_eq!(d.take_used(0), vec![(2, MAX_BYTES_PER_REQUEST as u32)]);
    // A readable-only chain gets nothing.
    d.add_chain(0, &[(a, 16, false)]);
    d.kick(0);
    assert_eq!(d.take_used(0), vec![(3, 0)]);
    let c = d.counters();
    assert_eq!(c.requests, 3);
    assert_eq!(c.bytes_read, 4096 + MAX_BYTES_PER_REQUEST as u64);
}

#[test]
fn broken_device_does_not_disturb_its_neighbour() {
    let mem = guest_memory();
    let mut bad = FakeDriver::new(Rng::new(), mem.clone(), 0);
    let mut good = FakeDriver::new(Rng::new(), mem, 0x10_0000 - 0x8000);
    bad.init(0, 8);
    good.init(0, 8);
    bad.set_avail_idx(0, 500);
    bad.kick(0);
    assert_ne!(bad.status() & DEVICE_NEEDS_RESET, 0);
    let buf = DATA_START + 0x2000;
    good.add_chain(0, &[(buf, 32, true)]);
    good.kick(0);
    assert_eq!(good.take_used(0), vec![(0, 32)]);
    assert_eq!(good.status() & DEVICE_NEEDS_RESET, 0);
}

#[test]
fn io_worker_serves_notifications_and_survives_reset() {
    let mut d = rng();
    d.init(0, 8);
    let events = d
        .transport
        .queue_events()
        .iter()
        .map(|e| e.try_clone().unwrap())
        .collect();
    let worker = IoWorker::spawn("rng-io", d.device.clone(), events).unwrap();
    let buf = DATA_START;
    d.add_chain(0, &[(buf, 64, true)]);
    d.write_reg(0x50, 0);
    // Wait for the used-buffer interrupt (the irq EventFd blocks until the
    // worker raised it).
    wait_irq(&d);
    assert_eq!(d.take_used(0), vec![(0, 64)]);
    // Reset while the worker runs, then set up again.
    d.write_reg(0x70, 0);
    d.init(0, 8);
    d.add_chain(0, &[(buf, 64, true)]);
    d.write_reg(0x50, 0);
    wait_irq(&d);
    assert_eq!(d.take_used(0), vec![(0, 64)]);
    worker.stop();
}

fn wait_irq(d: &FakeDriver) {
    // Bounded wait (up to 20 s) for the worker to raise the interrupt.
    for _ in 0..20_000 {
        if d.irq.read().is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    panic!("no interrupt from the I/O worker");
}

#[test]
fn interrupt_line_failure_is_not_fatal() {
    #[derive(Debug)]
    struct Broken;
    impl bulwark_virtio::mmio::IrqLine for Broken {
        fn trigger(&self) -> std::io::Result<()> {
            Err(std::io::Error::other("line down"))
        }
    }
    let device: bulwark_virtio::SharedDevice = Arc::new(std::sync::Mutex::new(Rng::new()));
    let mut t = MmioTransport::new(device, guest_memory(), Arc::new(Broken)).unwrap();
    t.write(0x70, &ACKNOWLEDGE.to_le_bytes());
    t.write(0x70, &(ACKNOWLEDGE | DRIVER).to_le_bytes());
    t.write(0x24, &1u32.to_le_bytes());
    t.write(0x20, &1u32.to_le_bytes());
    // DRIVER_OK with no queue set up: activation fails, the interrupt for
    // DEVICE_NEEDS_RESET cannot be delivered, and that is only logged.
    t.write(
        0x70,
        &(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK).to_le_bytes(),
    );
    let mut s = [0u8; 4];
    t.read(0x70, &mut s);
    assert_eq!(
        u32::from_le_bytes(s),
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK | DEVICE_NEEDS_RESET
    );
    t.read(0x60, &mut s);
    assert_eq!(u32::from_le_bytes(s), 2);
}

#[test]
fn register_fault_flood_is_counted_but_rate_limited() {
    use bulwark_virtio::counters::{LOG_EVERY, LOG_FIRST};
    let mut d = rng();
    // 10,000 writes to a read-only register: all counted, only the first
    // LOG_FIRST logged.
    for _ in 0..10_000 {
        d.write_reg(0x00, 0);
    }
    let c = d.counters();
    assert_eq!(c.guest_faults, 10_000);
    assert_eq!(c.guest_faults_logged, LOG_FIRST);
    // Past 2 * LOG_EVERY faults of mixed kinds, two periodic lines more.
    let total = 2 * LOG_EVERY + 1;
    let mut b2 = [0u8; 2];
    for i in 10_000..total {
        match i % 3 {
            0 => d.transport.read(0x02, &mut b2),
            1 => d.write_reg(0x50, 99),
            _ => d.write_reg(0x70, DRIVER),
        }
    }
    let c = d.counters();
    assert_eq!(c.guest_faults, total);
    assert_eq!(c.guest_faults_logged, LOG_FIRST + 2);
    // The device still works.
    assert_eq!(d.read_reg(0x00), 0x7472_6976);
}
