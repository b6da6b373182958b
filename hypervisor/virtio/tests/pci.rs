//! The virtio-pci transport under a fake driver: identity and capabilities, BAR
//! sizing and refused moves, bring-up and I/O with MSI-X, masking with pending
//! delivery on unmask, vector registers, and a hostile driver on every region.

mod common;

use bulwark_virtio::block::{Block, DiskBackend, VIRTIO_BLK_F_FLUSH};
use bulwark_virtio::device::VIRTIO_F_VERSION_1;
use bulwark_virtio::mmio::status::*;
use bulwark_virtio::pci::{self, NO_VECTOR};
use bulwark_virtio::rng::Rng;
use bulwark_virtio::vsock::Vsock;
use bulwark_virtio::{lock_device, IoWorker};
use common::*;

fn rng() -> PciDriver {
    PciDriver::new(Rng::new(), guest_memory(), 0)
}

fn block(read_only: bool) -> (tempfile::NamedTempFile, PciDriver) {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), vec![0u8; 64 * 1024]).unwrap();
    let disk = DiskBackend::open_file(f.path(), read_only).unwrap();
    let d = PciDriver::new(Block::new(disk, "pci-disk"), guest_memory(), 0);
    (f, d)
}

fn faults(d: &PciDriver) -> u64 {
    d.counters().guest_faults
}

#[test]
fn identity_and_capabilities_follow_the_spec_layout() {
    let mut d = rng();
    assert_eq!(d.cfg_read(0x00, 2), 0x1af4);
    assert_eq!(d.cfg_read(0x02, 2), 0x1044, "0x1040 + virtio-rng's id 4");
    assert_eq!(d.cfg_read(0x08, 1), 1, "revision 1 (modern)");
    assert_eq!(d.cfg_read(0x08, 4) >> 8, 0xff_0000, "rng: class ff/00/00");
    assert_eq!(d.cfg_read(0x0e, 1), 0, "type-0 header, single function");
    assert_eq!(d.cfg_read(0x06, 2) & 0x10, 0x10, "capability list");
    assert_eq!(d.cfg_read(0x2c, 2), 0x1af4);
    assert_eq!(d.cfg_read(0x2e, 2), 4, "subsystem id = virtio id");
    assert_eq!(d.cfg_read(0x3d, 1), 0, "no INTx pin");
    assert_eq!(d.cfg_read(0x10, 4), PCI_BAR as u32, "BAR0: 32-bit memory");
    for bar in 1..6 {
        assert_eq!(d.cfg_read(0x10 + 4 * bar, 4), 0, "BAR{bar} absent");
    }
    assert_eq!(d.cfg_read(0x30, 4), 0, "no expansion ROM");
    assert_eq!(d.cfg_read(0x100, 4), 0, "no extended capabilities");
    assert_eq!(d.cfg_read(0xffc, 4), 0);
    let c = d.caps;
    assert_eq!((c.common, c.isr, c.notify), (0, 0x1000, 0x3000));
    assert_eq!(c.notify_multiplier, 4, "one doorbell address per queue");
    assert!(c.device.is_none(), "rng has no device config");
    assert_ne!(c.pci_cfg, 0, "the PCI configuration access capability");
    assert_eq!((c.table, c.pba), (0x4000, 0x5000));
    assert_eq!(
        d.cfg_read(c.msix + 2, 2) & 0x7ff,
        1,
        "two vectors: queue + config"
    );
    assert_eq!(d.common(cc::NUM_QUEUES, 2), 1);
    // Every region lies inside the BAR.
    for off in [c.common + 0x38, c.isr + 1, c.table + 32, c.pba + 8] {
        assert!(off <= pci::BAR_SIZE);
    }

    let (_f, mut b) = block(true);
    assert_eq!(b.cfg_read(0x02, 2), 0x1042);
    assert_eq!(b.cfg_read(0x08, 4) >> 8, 0x01_0000, "mass storage");
    let (off, len) = b.caps.device.expect("block has device config");
    assert_eq!((off, len), (0x2000, 60));
    // capacity: 64 KiB = 128 sectors, through the device config region.
    assert_eq!(b.bar_read(off, 8), 128);
    assert_eq!(b.bar_read(off + 4, 4), 0);

    let dir = tempfile::tempdir().unwrap();
    let v = PciDriver::new(
        Vsock::new(9, &dir.path().join("v.sock")).unwrap(),
        guest_memory(),
        0,
    );
    let mut v = v;
    assert_eq!(v.cfg_read(0x02, 2), 0x1053, "0x1040 + 19");
    assert_eq!(v.cfg_read(0x08, 4) >> 8, 0x07_8000);
    assert_eq!(v.common(cc::NUM_QUEUES, 2), 3);
    assert_eq!(v.cfg_read(v.caps.msix + 2, 2) & 0x7ff, 3, "four vectors");
    let (off, len) = v.caps.device.unwrap();
    assert_eq!(len, 8);
    assert_eq!(v.bar_read(off, 8), 9, "guest cid");
    assert_eq!(v.cfg_read(0x3d, 1), 0);
}

#[test]
fn bar_sizing_works_and_moves_are_refused() {
    let mut d = rng();
    d.cfg_write(0x10, 4, u32::MAX);
    assert_eq!(d.cfg_read(0x10, 4), !(pci::BAR_SIZE as u32 - 1));
    d.cfg_write(0x10, 4, PCI_BAR as u32);
    assert_eq!(d.cfg_read(0x10, 4), PCI_BAR as u32);
    assert_eq!(d.transport.bar_moves_refused(), 0);
    d.cfg_write(0x10, 4, 0xc000_0000);
    d.cfg_write(0x13, 1, 0xd0);
    assert_eq!(d.cfg_read(0x10, 4), PCI_BAR as u32, "the BAR stays");
    assert_eq!(d.transport.bar_moves_refused(), 2);
    // Command: memory decode and bus master stick; I/O decode never does.
    d.cfg_write(0x04, 2, 0xffff);
    assert_eq!(d.cfg_read(0x04, 2), 0x0546);
    // Read-only registers ignore writes.
    d.cfg_write(0x00, 4, 0);
    d.cfg_write(0x08, 4, 0);
    d.cfg_write(0x3d, 1, 1);
    assert_eq!(d.cfg_read(0x00, 2), 0x1af4);
    assert_eq!(d.cfg_read(0x08, 1), 1);
    assert_eq!(d.cfg_read(0x3d, 1), 0);
    d.cfg_write(0x3c, 1, 0x0b);
    assert_eq!(d.cfg_read(0x3c, 1), 0x0b, "interrupt line is scratch");
    // The capability registers do not change either.
    let before: Vec<u32> = (0x40..0xa0).step_by(4).map(|o| d.cfg_read(o, 4)).collect();
    for o in (0x40..0x90).step_by(4) {
        if o != d.caps.msix {
            d.cfg_write(o, 4, 0xdead_beef);
        }
    }
    let after: Vec<u32> = (0x40..0xa0).step_by(4).map(|o| d.cfg_read(o, 4)).collect();
    assert_eq!(before, after);
    // Any shape and offset, even far outside, is harmless.
    let mut big = [0u8; 64];
    d.transport.config_read(u64::MAX - 3, &mut big);
    d.transport.config_write(u64::MAX, &[1, 2, 3]);
    d.transport.config_write(0xfe, &[0xff; 16]);
    assert_eq!(d.cfg_read(0x10, 4), PCI_BAR as u32);
}

#[test]
fn rng_io_with_msix_routes_each_vector_to_its_eventfd() {
    let mut d = rng();
    d.enable_msix();
    d.init(0, 8);
    // Config vector 0, queue 0 on vector 1, both routed with their messages.
    assert_eq!(d.common(cc::CONFIG_MSIX_VECTOR, 2), 0);
    d.set_common(cc::QUEUE_SELECT, 2, 0);
    assert_eq!(d.common(cc::QUEUE_MSIX_VECTOR, 2), 1);
    {
        let r = d.routes.routes.lock().unwrap();
        assert_eq!(r.get(&0), Some(&msi_message(0)));
        assert_eq!(r.get(&1), Some(&msi_message(1)));
    }
    let buf = DATA_START;
    d.write_mem(buf, &[0u8; 256]);
    d.add_chain(0, &[(buf, 256, true)]);
    d.kick(0);
    assert_eq!(d.take_used(0), vec![(0, 256)]);
    assert!(d.read_mem(buf, 256).iter().filter(|&&b| b != 0).count() > 200);
    assert_eq!(d.interrupts(1), 1, "the queue's vector fired");
    assert_eq!(d.interrupts(0), 0, "not the config vector");
    let m = d.transport.msix();
    assert!(m.enabled && !m.function_masked);
    assert_eq!((m.sent, m.pended, m.undelivered), (1, 0, 0));
    assert_eq!(m.queue_vectors, vec![1]);
    // A second round: one more message.
    d.add_chain(0, &[(buf, 16, true)]);
    d.kick(0);
    assert_eq!(d.interrupts(1), 1);
}

#[test]
fn block_io_byte_exact_over_pci() {
    let (f, mut d) = block(false);
    d.enable_msix();
    d.init(VIRTIO_BLK_F_FLUSH, 16);
    let (hdr, st, buf) = (
        DATA_START + 0x8_0000,
        DATA_START + 0x8_0100,
        DATA_START + 0x10_0000,
    );
    let request = |d: &mut PciDriver, kind: u32, sector: u64, data: (u64, u32, bool)| {
        let mut h = kind.to_le_bytes().to_vec();
        h.extend_from_slice(&[0; 4]);
        h.extend_from_slice(&sector.to_le_bytes());
        d.write_mem(hdr, &h);
        d.write_mem(st, &[0xff]);
        d.add_chain(0, &[(hdr, 16, false), data, (st, 1, true)]);
        d.kick(0);
        assert_eq!(d.take_used(0).len(), 1);
        d.read_mem(st, 1)[0]
    };
    let data = pattern(7, 16 * 1024);
    d.write_mem(buf, &data);
    assert_eq!(request(&mut d, 1, 5, (buf, 16 * 1024, false)), 0);
    let on_disk = std::fs::read(f.path()).unwrap();
    assert_eq!(&on_disk[5 * 512..5 * 512 + data.len()], &data[..]);
    let out = buf + 0x8000;
    assert_eq!(request(&mut d, 0, 5, (out, 16 * 1024, true)), 0);
    assert_eq!(d.read_mem(out, data.len()), data);
    assert_eq!(d.interrupts(1), 2, "two completions, two messages");
    assert_eq!(d.counters().bytes_read, 16 * 1024);
    assert_eq!(d.counters().bytes_written, 16 * 1024);
}

#[test]
fn a_masked_vector_is_pending_and_delivered_on_unmask() {
    let mut d = rng();
    d.enable_msix();
    d.init(0, 8);
    let buf = DATA_START;
    // Entry mask: the route goes, the event is held in the PBA.
    d.mask_vector(1, true);
    assert!(!d.routes.routes.lock().unwrap().contains_key(&1));
    d.add_chain(0, &[(buf, 32, true)]);
    d.kick(0);
    assert_eq!(d.take_used(0).len(), 1, "the request completed");
    assert_eq!(d.interrupts(1), 0, "but no message while masked");
    assert_eq!(d.pba(), 0b10, "vector 1 pending");
    assert_eq!(d.transport.msix().pended, 1);
    d.mask_vector(1, false);
    assert_eq!(d.interrupts(1), 1, "sent on unmask");
    assert_eq!(d.pba(), 0);
    assert_eq!(
        d.routes.routes.lock().unwrap().get(&1),
        Some(&msi_message(1)),
        "routed again before it was sent"
    );
    // Function mask: the same for every vector.
    d.set_msix_control(true, true);
    assert!(d.routes.routes.lock().unwrap().is_empty());
    d.add_chain(0, &[(buf, 32, true)]);
    d.kick(0);
    assert_eq!(d.interrupts(1), 0);
    assert_eq!(d.pba(), 0b10);
    assert_eq!(d.cfg_read(d.caps.msix + 2, 2) & 0xc000, 0xc000);
    d.set_msix_control(true, false);
    assert_eq!(d.interrupts(1), 1);
    assert_eq!(d.pba(), 0);
    // Unmasking with nothing pending sends nothing.
    d.mask_vector(1, true);
    d.mask_vector(1, false);
    assert_eq!(d.interrupts(1), 0);
    // MSI-X disabled: nothing is sent (there is no INTx); the ISR says why.
    d.set_msix_control(false, false);
    assert!(d.routes.routes.lock().unwrap().is_empty());
    let isr = d.caps.isr;
    let _ = d.bar_read(isr, 1);
    d.add_chain(0, &[(buf, 32, true)]);
    d.kick(0);
    assert_eq!(d.interrupts(1), 0);
    assert_eq!(d.transport.msix().undelivered, 1);
    assert_eq!(d.cfg_read(0x06, 2) & 0x08, 0x08, "PCI status: interrupt");
    assert_eq!(d.bar_read(isr, 1), 1, "ISR: queue interrupt");
    assert_eq!(d.bar_read(isr, 1), 0, "reading the ISR cleared it");
    let m = d.transport.msix();
    assert_eq!((m.sent, m.pended), (2, 2));
}

#[test]
fn vector_registers_read_back_no_vector_when_the_table_lacks_the_entry() {
    let mut d = rng();
    assert!(d.negotiate(VIRTIO_F_VERSION_1));
    d.set_common(cc::CONFIG_MSIX_VECTOR, 2, 7);
    assert_eq!(d.common(cc::CONFIG_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    d.set_common(cc::CONFIG_MSIX_VECTOR, 2, 1);
    assert_eq!(d.common(cc::CONFIG_MSIX_VECTOR, 2), 1);
    d.set_common(cc::QUEUE_SELECT, 2, 0);
    for (write, read) in [
        (2u64, NO_VECTOR),
        (0xfffe, NO_VECTOR),
        (0, 0),
        (0xffff, NO_VECTOR),
    ] {
        d.set_common(cc::QUEUE_MSIX_VECTOR, 2, write);
        assert_eq!(
            d.common(cc::QUEUE_MSIX_VECTOR, 2),
            u64::from(read),
            "{write:#x}"
        );
    }
    // A reset returns every vector to NO_VECTOR; unmapping after a reset (what
    // Linux does when it deletes its queues) is accepted without a fault.
    d.set_common(cc::QUEUE_MSIX_VECTOR, 2, 1);
    d.set_common(cc::DEVICE_STATUS, 1, 0);
    assert_eq!(d.common(cc::CONFIG_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    assert_eq!(d.common(cc::QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    let before = faults(&d);
    d.set_common(cc::QUEUE_MSIX_VECTOR, 2, u64::from(NO_VECTOR));
    d.set_common(cc::CONFIG_MSIX_VECTOR, 2, u64::from(NO_VECTOR));
    assert_eq!(faults(&d), before);
    // An event with no vector is not delivered.
    d.enable_msix();
    assert!(d.negotiate(VIRTIO_F_VERSION_1));
    d.setup_queue(0, 8);
    d.set_common(cc::QUEUE_MSIX_VECTOR, 2, u64::from(NO_VECTOR));
    d.driver_ok();
    d.add_chain(0, &[(DATA_START, 8, true)]);
    d.kick(0);
    assert_eq!(d.take_used(0).len(), 1);
    assert_eq!((d.interrupts(0), d.interrupts(1)), (0, 0));
    assert_eq!(d.transport.msix().undelivered, 1);
}

#[test]
fn queue_registers_after_driver_ok_need_reset_and_the_config_vector_says_so() {
    let fields: [(u64, usize, u64); 7] = [
        (cc::QUEUE_SIZE, 2, 4),
        (cc::QUEUE_DESC, 4, 0x5000),
        (cc::QUEUE_DESC + 4, 4, 1),
        (cc::QUEUE_DRIVER, 8, 0x6000),
        (cc::QUEUE_DEVICE, 8, 0x7000),
        (cc::QUEUE_MSIX_VECTOR, 2, 0),
        (cc::QUEUE_ENABLE, 2, 0),
    ];
    for (field, len, value) in fields {
        let mut d = rng();
        d.enable_msix();
        d.init(0, 8);
        let errors = d.counters().errors;
        d.set_common(cc::QUEUE_SELECT, 2, 0);
        d.set_common(field, len, value);
        assert_ne!(d.status() & DEVICE_NEEDS_RESET, 0, "field {field:#x}");
        assert_eq!(d.counters().errors, errors + 1);
        assert_eq!(d.interrupts(0), 1, "config vector told the driver");
        // The device keeps its rings and stops; nothing reaches the new ones.
        d.set_common(cc::QUEUE_SELECT, 2, 0);
        assert_eq!(d.common(cc::QUEUE_DESC, 8), d.queues[0].desc);
        assert_eq!(d.common(cc::QUEUE_MSIX_VECTOR, 2), 1);
        d.add_chain(0, &[(DATA_START, 16, true)]);
        d.kick(0);
        assert!(d.take_used(0).is_empty());
        // Reset and bring-up work again.
        d.init(0, 8);
        d.add_chain(0, &[(DATA_START, 16, true)]);
        d.kick(0);
        assert_eq!(d.take_used(0), vec![(0, 16)]);
    }
}

#[test]
fn queue_select_out_of_range_reads_absent_and_refuses_writes() {
    let mut d = rng();
    assert!(d.negotiate(VIRTIO_F_VERSION_1));
    d.set_common(cc::QUEUE_SELECT, 2, 5);
    assert_eq!(d.common(cc::QUEUE_SELECT, 2), 5);
    assert_eq!(d.common(cc::QUEUE_SIZE, 2), 0, "queue unavailable");
    assert_eq!(d.common(cc::QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    assert_eq!(d.common(cc::QUEUE_ENABLE, 2), 0);
    assert_eq!(d.common(cc::QUEUE_DESC, 8), 0);
    let before = faults(&d);
    d.set_common(cc::QUEUE_SIZE, 2, 8);
    d.set_common(cc::QUEUE_DESC, 8, 0x1000);
    d.set_common(cc::QUEUE_MSIX_VECTOR, 2, 0);
    d.set_common(cc::QUEUE_ENABLE, 2, 1);
    d.set_common(cc::QUEUE_SELECT, 2, 0xffff);
    d.set_common(cc::QUEUE_ENABLE, 2, 1);
    assert_eq!(faults(&d), before + 5);
    // Queue 0 is untouched and works.
    d.setup_queue(0, 8);
    d.driver_ok();
    d.add_chain(0, &[(DATA_START, 16, true)]);
    d.kick(0);
    assert_eq!(d.take_used(0), vec![(0, 16)]);
}

#[test]
fn feature_and_status_misuse_is_refused() {
    let mut d = rng();
    assert!(!d.negotiate(0), "legacy driver (no VERSION_1)");
    assert!(
        !d.negotiate(VIRTIO_F_VERSION_1 | 1 << 28),
        "feature not offered"
    );
    assert!(d.negotiate(VIRTIO_F_VERSION_1));
    // driver_feature reads back what was acked; writes after FEATURES_OK are ignored.
    d.set_common(cc::DRIVER_FEATURE_SELECT, 4, 1);
    assert_eq!(d.common(cc::DRIVER_FEATURE, 4), 1);
    d.set_common(cc::DRIVER_FEATURE, 4, 0xffff_ffff);
    assert_eq!(d.common(cc::DRIVER_FEATURE, 4), 1);
    d.set_common(cc::DEVICE_FEATURE_SELECT, 4, 1);
    assert_eq!(d.common(cc::DEVICE_FEATURE, 4), 1, "VERSION_1 only");
    d.set_common(cc::DEVICE_FEATURE_SELECT, 4, 9);
    assert_eq!(d.common(cc::DEVICE_FEATURE, 4), 0);
    // Status: no clearing bits, no skipping, no DEVICE_NEEDS_RESET, no unknown bits.
    let s = ACKNOWLEDGE | DRIVER | FEATURES_OK;
    for bad in [ACKNOWLEDGE, s | 0x20, s | DEVICE_NEEDS_RESET | 0x10] {
        d.set_common(cc::DEVICE_STATUS, 1, u64::from(bad));
        assert_eq!(d.status(), s, "{bad:#x}");
    }
    d.set_common(cc::DEVICE_STATUS, 1, 0);
    d.set_common(
        cc::DEVICE_STATUS,
        1,
        u64::from(ACKNOWLEDGE | DRIVER | DRIVER_OK),
    );
    assert_eq!(d.status(), 0, "DRIVER_OK without FEATURES_OK");
    // DRIVER_OK with no queue ready: activation refused, DEVICE_NEEDS_RESET.
    assert!(d.negotiate(VIRTIO_F_VERSION_1));
    d.driver_ok();
    assert_ne!(d.status() & DEVICE_NEEDS_RESET, 0);
    assert!(!lock_device(&d.device).is_active());
    // queue_enable may only be written with 1.
    assert!(d.negotiate(VIRTIO_F_VERSION_1));
    d.set_common(cc::QUEUE_SELECT, 2, 0);
    d.set_common(cc::QUEUE_ENABLE, 2, 1);
    let before = faults(&d);
    d.set_common(cc::QUEUE_ENABLE, 2, 0);
    assert_eq!(d.common(cc::QUEUE_ENABLE, 2), 1);
    assert_eq!(faults(&d), before + 1);
}

#[test]
fn common_config_takes_only_natural_widths() {
    let mut d = rng();
    assert!(d.negotiate(VIRTIO_F_VERSION_1));
    let s = d.status();
    let before = faults(&d);
    let bad_reads: [(u64, usize); 10] = [
        (cc::DEVICE_STATUS, 4),
        (cc::DEVICE_STATUS, 2),
        (cc::DEVICE_FEATURE, 2),
        (0x01, 1),
        (0x02, 4),
        (cc::QUEUE_SELECT, 4),
        (cc::QUEUE_DESC + 2, 4),
        (cc::QUEUE_DESC + 4, 8),
        (cc::NUM_QUEUES, 8),
        (0x38, 4),
    ];
    for (off, len) in bad_reads {
        assert_eq!(d.common(off, len), 0, "{off:#x}/{len}");
    }
    assert_eq!(faults(&d), before + bad_reads.len() as u64);
    // Wrong-width writes change nothing.
    d.set_common(cc::DEVICE_STATUS, 2, 0);
    d.set_common(cc::DEVICE_STATUS, 4, 0);
    assert_eq!(d.status(), s, "status not reset by a 2- or 4-byte write");
    d.set_common(cc::QUEUE_SELECT, 4, 3);
    d.set_common(cc::QUEUE_SELECT, 1, 3);
    assert_eq!(d.common(cc::QUEUE_SELECT, 2), 0);
    // Read-only fields refuse writes.
    d.set_common(cc::NUM_QUEUES, 2, 9);
    d.set_common(cc::CONFIG_GENERATION, 1, 9);
    d.set_common(cc::QUEUE_NOTIFY_OFF, 2, 9);
    d.set_common(cc::DEVICE_FEATURE, 4, 9);
    assert_eq!(d.common(cc::NUM_QUEUES, 2), 1);
    assert_eq!(d.common(cc::QUEUE_NOTIFY_OFF, 2), 0);
    assert_eq!(faults(&d), before + bad_reads.len() as u64 + 8);
    // The 64-bit fields take whole or half accesses.
    d.set_common(cc::QUEUE_DESC, 8, 0x1234_5678_9abc_d000);
    assert_eq!(d.common(cc::QUEUE_DESC, 4), 0x9abc_d000);
    assert_eq!(d.common(cc::QUEUE_DESC + 4, 4), 0x1234_5678);
    d.set_common(cc::QUEUE_DESC + 4, 4, 0);
    assert_eq!(d.common(cc::QUEUE_DESC, 8), 0x9abc_d000);
}

#[test]
fn isr_notify_device_msix_and_gaps_refuse_malformed_accesses() {
    let (_f, mut d) = block(true);
    d.enable_msix();
    d.init(0, 8);
    let c = d.caps;
    let (dev, dev_len) = c.device.unwrap();
    let mut before = faults(&d);
    let mut expect = |d: &PciDriver, n: u64, what: &str| {
        before += n;
        assert_eq!(faults(d), before, "{what}");
    };
    // ISR: one byte only; never written.
    assert_eq!(d.bar_read(c.isr, 2), 0);
    assert_eq!(d.bar_read(c.isr, 4), 0);
    d.bar_write(c.isr, 1, 1);
    expect(&d, 3, "ISR");
    // Notifications: 2 or 4 bytes at a queue's address; the region is write-only.
    let evt = &d.transport.queue_events()[0];
    let _ = evt.read();
    d.bar_write(c.notify, 1, 0);
    d.bar_write(c.notify, 8, 0);
    d.bar_write(c.notify + 2, 2, 0);
    d.bar_write(c.notify + 4, 2, 1);
    let _ = d.bar_read(c.notify, 2);
    expect(&d, 5, "notify");
    assert!(
        d.transport.queue_events()[0].read().is_err(),
        "no notification got through"
    );
    d.bar_write(c.notify, 4, 0);
    assert_eq!(d.transport.queue_events()[0].read().unwrap(), 1);
    // Device config: natural alignment, inside its length; writes are refused.
    assert_eq!(d.bar_read(dev + 2, 4), 0);
    assert_eq!(d.bar_read(dev + 1, 2), 0);
    assert_eq!(d.bar_read(dev + u64::from(dev_len) - 4, 8), 0);
    assert_eq!(d.bar_read(dev + u64::from(dev_len), 4), 0);
    d.bar_write(dev, 8, 0);
    expect(&d, 5, "device config");
    assert_eq!(d.bar_read(dev, 8), 128, "capacity unchanged");
    // MSI-X table: 4/8 bytes aligned; the PBA is read-only.
    d.bar_write(c.table + 2, 4, 0);
    d.bar_write(c.table, 2, 0);
    d.bar_write(c.table + 4, 8, 0);
    d.bar_write(c.table + 0x20, 4, 0);
    let _ = d.bar_read(c.table + 1, 1);
    d.bar_write(c.pba, 8, u64::MAX);
    let _ = d.bar_read(c.pba + 1, 4);
    expect(&d, 7, "MSI-X");
    assert_eq!(d.pba(), 0);
    assert_eq!(d.bar_read(c.table, 8), 0xfee0_0000, "entry 0 unchanged");
    // Gaps and the end of the BAR, and absurd offsets.
    let _ = d.bar_read(0x0800, 4);
    d.bar_write(0x7ffc, 4, 1);
    let _ = d.bar_read(pci::BAR_SIZE, 4);
    let mut wide = [0u8; 32];
    d.transport.bar_read(u64::MAX - 8, &mut wide);
    d.transport.bar_write(u64::MAX, &[1; 3]);
    d.transport.bar_write(0x14, &[]);
    expect(&d, 6, "gaps");
    // Still working.
    assert_eq!(d.status() & DEVICE_NEEDS_RESET, 0);
    let (hdr, st) = (DATA_START, DATA_START + 0x100);
    d.write_mem(hdr, &[8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    d.add_chain(
        0,
        &[(hdr, 16, false), (hdr + 0x200, 20, true), (st, 1, true)],
    );
    d.kick(0);
    assert_eq!(d.take_used(0).len(), 1);
    assert_eq!(&d.read_mem(hdr + 0x200, 8), b"pci-disk");
}

#[test]
fn the_pci_configuration_window_reaches_the_bar_through_the_same_checks() {
    let mut d = rng();
    let cap = d.caps.pci_cfg;
    let data = cap + 16;
    // num_queues (2 bytes at common + 0x12).
    d.cfg_write(cap + 4, 1, 0);
    d.cfg_write(cap + 8, 4, cc::NUM_QUEUES as u32);
    d.cfg_write(cap + 12, 4, 2);
    assert_eq!(d.cfg_read(data, 4) & 0xffff, 1);
    // A status write through the window.
    d.cfg_write(cap + 8, 4, cc::DEVICE_STATUS as u32);
    d.cfg_write(cap + 12, 4, 1);
    d.cfg_write(data, 4, ACKNOWLEDGE);
    assert_eq!(d.status(), ACKNOWLEDGE);
    // Bad length, misaligned offset, another BAR, an offset past the BAR: refused.
    let before = faults(&d);
    for (bar, off, len) in [
        (0u32, 0x14u32, 3u32),
        (0, 0x13, 2),
        (1, 0x14, 1),
        (0, 0x8000, 4),
    ] {
        d.cfg_write(cap + 4, 1, bar);
        d.cfg_write(cap + 8, 4, off);
        d.cfg_write(cap + 12, 4, len);
        d.cfg_write(data, 4, 0);
    }
    assert_eq!(faults(&d), before + 4);
    assert_eq!(
        d.status(),
        ACKNOWLEDGE,
        "no refused write reached the status"
    );
}

#[test]
fn the_io_worker_serves_doorbells_and_its_interrupts_arrive_on_the_vector() {
    let mut d = rng();
    d.enable_msix();
    d.init(0, 8);
    let events = d
        .transport
        .queue_events()
        .iter()
        .map(|e| e.try_clone().unwrap())
        .collect();
    let worker = IoWorker::spawn("rng-pci", d.device.clone(), events).unwrap();
    let vector = d.vectors[1].clone();
    for round in 0..3 {
        d.add_chain(0, &[(DATA_START + round * 64, 64, true)]);
        d.notify(0);
        // Bounded wait (up to 20 s) for the worker's message on vector 1.
        let got = (0..20_000).any(|_| {
            if vector.read().is_ok() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
            false
        });
        assert!(got, "no MSI-X message in round {round}");
        assert_eq!(d.take_used(0).len(), 1);
    }
    worker.stop();
    assert_eq!(d.transport.msix().sent, 3);
}

#[test]
fn register_fault_flood_is_counted_but_rate_limited() {
    use bulwark_virtio::counters::LOG_FIRST;
    let mut d = rng();
    for i in 0..10_000u64 {
        match i % 4 {
            0 => d.bar_write(0x7000, 4, i),
            1 => {
                let _ = d.common(cc::DEVICE_STATUS, 4);
            }
            2 => d.set_common(cc::NUM_QUEUES, 2, i),
            _ => d.bar_write(d.caps.table + 1, 4, i),
        }
    }
    let c = d.counters();
    assert_eq!(c.guest_faults, 10_000);
    assert_eq!(c.guest_faults_logged, LOG_FIRST);
    assert_eq!(d.cfg_read(0x00, 2), 0x1af4);
}
