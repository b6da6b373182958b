//! virtio-blk through the fake driver: byte-exact I/O and hostile requests.

mod common;

use std::io::Write;

use bulwark_virtio::block::*;
use bulwark_virtio::mmio::status;
use common::*;

const HDR: u64 = DATA_START + 0x8_0000;
const STATUS: u64 = HDR + 0x100;
const BUF: u64 = DATA_START + 0x10_0000;

fn disk_file(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    f
}

fn header(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = kind.to_le_bytes().to_vec();
    h.extend_from_slice(&[0; 4]);
    h.extend_from_slice(&sector.to_le_bytes());
    h
}

fn driver(disk: DiskBackend) -> FakeDriver {
    let mut d = FakeDriver::new(Block::new(disk, "bulwark-disk-0"), guest_memory(), 0);
    d.init(VIRTIO_BLK_F_FLUSH, 16);
    d
}

/// Submits one request, runs it, returns (status byte, used len).
fn request(d: &mut FakeDriver, kind: u32, sector: u64, data: &[(u64, u32, bool)]) -> (u8, u32) {
    d.write_mem(HDR, &header(kind, sector));
    d.write_mem(STATUS, &[0xff]);
    let mut chain = vec![(HDR, 16, false)];
    chain.extend_from_slice(data);
    chain.push((STATUS, 1, true));
    let head = d.add_chain(0, &chain);
    d.kick(0);
    let used = d.take_used(0);
    assert_eq!(used.len(), 1, "exactly one completion");
    assert_eq!(used[0].0, u32::from(head));
    (d.read_mem(STATUS, 1)[0], used[0].1)
}

#[test]
fn write_read_flush_get_id_byte_exact() {
    let file = disk_file(&vec![0u8; 64 * 1024]);
    let mut d = driver(DiskBackend::open_file(file.path(), false).unwrap());
    let data = pattern(1, 8192);
    d.write_mem(BUF, &data);
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_OUT, 3, &[(BUF, 8192, false)]),
        (VIRTIO_BLK_S_OK, 1)
    );
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_FLUSH, 0, &[]),
        (VIRTIO_BLK_S_OK, 1)
    );
    let on_disk = std::fs::read(file.path()).unwrap();
    assert_eq!(&on_disk[3 * 512..3 * 512 + 8192], &data[..]);
    assert!(on_disk[..3 * 512].iter().all(|&b| b == 0));

    let out = BUF + 0x10000;
    // Read back through two descriptors of odd sizes.
    assert_eq!(
        request(
            &mut d,
            VIRTIO_BLK_T_IN,
            3,
            &[(out, 1000, true), (out + 1000, 7192, true)]
        ),
        (VIRTIO_BLK_S_OK, 8193)
    );
    assert_eq!(d.read_mem(out, 8192), data);

    let (st, len) = request(&mut d, VIRTIO_BLK_T_GET_ID, 0, &[(out, 20, true)]);
    assert_eq!((st, len), (VIRTIO_BLK_S_OK, 21));
    assert_eq!(&d.read_mem(out, 14), b"bulwark-disk-0");

    let c = d.counters();
    assert_eq!(c.requests, 4);
    assert_eq!(c.bytes_written, 8192);
    assert_eq!(c.bytes_read, 8192);
    assert_eq!(c.errors, 0);
    // The device interrupted the guest.
    assert!(d.irq.read().unwrap() >= 1);
    assert_eq!(d.read_reg(0x60) & 1, 1);
    d.write_reg(0x64, 1);
    assert_eq!(d.read_reg(0x60), 0);
}

#[test]
fn config_space_reports_capacity_and_read_only() {
    let file = disk_file(&vec![7u8; 4096]);
    let disk = DiskBackend::open_range(file.path(), 1024, 2048, true).unwrap();
    let mut d = FakeDriver::new(Block::new(disk, "x"), guest_memory(), 0);
    let mut cap = [0u8; 8];
    d.transport.read(0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 4);
    assert_ne!(d.device_features() & VIRTIO_BLK_F_RO, 0);
    assert_eq!(d.device_features() & VIRTIO_BLK_F_DISCARD, 0);
    // Config writes are refused and change nothing.
    d.transport.write(0x100, &[0xff; 8]);
    d.transport.read(0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 4);
    // Reads past the config space are zero, not a panic.
    let mut far = [0xaau8; 8];
    d.transport.read(0xff8, &mut far);
    assert_eq!(far, [0; 8]);
}

#[test]
fn read_only_range_serves_in_place_and_refuses_writes() {
    // A "bundle": 4 KiB of header, 8 KiB rootfs extent, 4 KiB trailer.
    let mut bundle = pattern(2, 16 * 1024);
    bundle[..4096].fill(0xee);
    let file = disk_file(&bundle);
    let disk = DiskBackend::open_range(file.path(), 4096, 8192, true).unwrap();
    let mut d = driver(disk);
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_IN, 0, &[(BUF, 8192, true)]),
        (VIRTIO_BLK_S_OK, 8193)
    );
    assert_eq!(d.read_mem(BUF, 8192), &bundle[4096..12288]);

    d.write_mem(BUF, &[0x55; 512]);
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_OUT, 0, &[(BUF, 512, false)]).0,
        VIRTIO_BLK_S_IOERR
    );
    // Discard was not offered; the request is unsupported.
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_DISCARD, 0, &[(BUF, 16, false)]).0,
        VIRTIO_BLK_S_UNSUPP
    );
    assert_eq!(
        std::fs::read(file.path()).unwrap(),
        bundle,
        "file untouched"
    );
    // Reading past the end of the extent (the trailer) is an error.
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_IN, 15, &[(BUF, 1024, true)]).0,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(d.counters().errors, 3);
}

#[test]
fn bad_requests_get_error_status() {
    let file = disk_file(&vec![1u8; 8192]);
    let mut d = driver(DiskBackend::open_file(file.path(), false).unwrap());
    // Past the end, and a sector whose byte offset overflows u64.
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_IN, 16, &[(BUF, 512, true)]).0,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_IN, u64::MAX, &[(BUF, 512, true)]).0,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        request(
            &mut d,
            VIRTIO_BLK_T_OUT,
            u64::MAX / 512,
            &[(BUF, 512, false)]
        )
        .0,
        VIRTIO_BLK_S_IOERR
    );
    // Not a whole sector.
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_IN, 0, &[(BUF, 100, true)]).0,
        VIRTIO_BLK_S_IOERR
    );
    // Unknown type.
    assert_eq!(request(&mut d, 0xdead, 0, &[]).0, VIRTIO_BLK_S_UNSUPP);
    // Short header: 8 bytes.
    d.write_mem(STATUS, &[0xff]);
    d.add_chain(0, &[(HDR, 8, false), (STATUS, 1, true)]);
    d.kick(0);
    assert_eq!(d.take_used(0).len(), 1);
    assert_eq!(d.read_mem(STATUS, 1)[0], VIRTIO_BLK_S_IOERR);
    // No writable status byte at all: completed with length 0.
    d.add_chain(0, &[(HDR, 16, false)]);
    d.kick(0);
    assert_eq!(d.take_used(0)[0].1, 0);
    assert_eq!(d.counters().errors, 7);
    // The disk is intact and the device still works.
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_IN, 15, &[(BUF, 512, true)]),
        (VIRTIO_BLK_S_OK, 513)
    );
    assert_eq!(d.read_mem(BUF, 512), vec![1u8; 512]);
}

#[test]
fn discard_zeroes_range() {
    let file = disk_file(&vec![9u8; 64 * 1024]);
    let mut d = FakeDriver::new(
        Block::new(DiskBackend::open_file(file.path(), false).unwrap(), "d"),
        guest_memory(),
        0,
    );
    d.init(VIRTIO_BLK_F_DISCARD, 16);
    let mut seg = 8u64.to_le_bytes().to_vec();
    seg.extend_from_slice(&16u32.to_le_bytes());
    seg.extend_from_slice(&0u32.to_le_bytes());
    d.write_mem(BUF, &seg);
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_DISCARD, 0, &[(BUF, 16, false)]).0,
        VIRTIO_BLK_S_OK
    );
    let on_disk = std::fs::read(file.path()).unwrap();
    assert!(on_disk[4096..12288].iter().all(|&b| b == 0));
    assert!(on_disk[..4096].iter().all(|&b| b == 9));
    assert!(on_disk[12288..].iter().all(|&b| b == 9));
    // A discard past the end is refused before anything is punched.
    let mut bad = 8u64.to_le_bytes().to_vec();
    bad.extend_from_slice(&u32::MAX.to_le_bytes());
    bad.extend_from_slice(&0u32.to_le_bytes());
    d.write_mem(BUF, &bad);
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_DISCARD, 0, &[(BUF, 16, false)]).0,
        VIRTIO_BLK_S_IOERR
    );
}

#[test]
fn buffer_across_region_boundary_is_served() {
    let file = disk_file(&pattern(3, 4096));
    let mut d = driver(DiskBackend::open_file(file.path(), true).unwrap());
    let start = REGION_BOUNDARY - 700;
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_IN, 0, &[(start, 4096, true)]),
        (VIRTIO_BLK_S_OK, 4097)
    );
    assert!(d.read_mem(start, 4096) == pattern(3, 4096));
}

#[test]
fn hostile_descriptors_are_refused_and_device_keeps_working() {
    let file = disk_file(&pattern(4, 8192));
    let mut d = driver(DiskBackend::open_file(file.path(), false).unwrap());
    d.write_mem(HDR, &header(VIRTIO_BLK_T_IN, 0));
    let canary = vec![0x5a; 64];
    d.write_mem(MEM_END - 64, &canary);

    // 1. A loop: 0 -> 1 -> 0.
    d.raw_desc(0, 0, HDR, 16, F_NEXT, 1);
    d.raw_desc(0, 1, BUF, 512, F_NEXT | F_WRITE, 0);
    d.push_avail(0, 0);
    // 2. A buffer outside guest memory.
    d.raw_desc(0, 2, HDR, 16, F_NEXT, 3);
    d.raw_desc(0, 3, MEM_END + 4096, 512, F_NEXT | F_WRITE, 4);
    d.raw_desc(0, 4, STATUS, 1, F_WRITE, 0);
    d.push_avail(0, 2);
    // 3. A length near u32::MAX that would run off the end of memory.
    d.raw_desc(0, 5, HDR, 16, F_NEXT, 6);
    d.raw_desc(0, 6, MEM_END - 64, u32::MAX - 15, F_NEXT | F_WRITE, 7);
    d.raw_desc(0, 7, STATUS, 1, F_WRITE, 0);
    d.push_avail(0, 5);
    // 4. A next index past the table.
    d.raw_desc(0, 8, HDR, 16, F_NEXT, 500);
    d.push_avail(0, 8);
    // 5. A head index past the table.
    d.push_avail(0, 999);
    // 6. A readable descriptor after a writable one.
    d.raw_desc(0, 9, HDR, 16, F_NEXT, 10);
    d.raw_desc(0, 10, STATUS, 1, F_WRITE | F_NEXT, 11);
    d.raw_desc(0, 11, BUF, 512, 0, 0);
    d.push_avail(0, 9);
    d.kick(0);

    // Chains 1-4 and 6 are returned unused; the bogus head 999 cannot be
    // returned at all, so the device asks for a reset.
    let used = d.take_used(0);
    assert_eq!(used, vec![(0, 0), (2, 0), (5, 0), (8, 0)]);
    assert_ne!(d.status() & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(d.read_mem(MEM_END - 64, 64), canary);
    let c = d.counters();
    assert_eq!(c.needs_reset, 1);
    assert!(c.errors >= 5);
    assert_eq!(c.requests, 0);

    // After a reset and re-initialisation the device is correct again.
    d.init(0, 16);
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_IN, 0, &[(BUF, 8192, true)]),
        (VIRTIO_BLK_S_OK, 8193)
    );
    assert_eq!(d.read_mem(BUF, 8192), pattern(4, 8192));
}

#[test]
fn available_index_running_ahead_needs_reset() {
    let file = disk_file(&vec![0u8; 4096]);
    let mut d = driver(DiskBackend::open_file(file.path(), false).unwrap());
    d.set_avail_idx(0, 1000);
    d.kick(0);
    assert!(d.take_used(0).is_empty());
    assert_ne!(d.status() & status::DEVICE_NEEDS_RESET, 0);
    // Notifications to a device needing reset are ignored.
    d.kick(0);
    assert_eq!(d.counters().needs_reset, 1);
}

#[test]
fn reset_mid_request_drops_pending_work() {
    let file = disk_file(&vec![3u8; 4096]);
    let mut d = driver(DiskBackend::open_file(file.path(), false).unwrap());
    d.write_mem(HDR, &header(VIRTIO_BLK_T_IN, 0));
    d.write_mem(BUF, &[0xcc; 512]);
    d.add_chain(0, &[(HDR, 16, false), (BUF, 512, true), (STATUS, 1, true)]);
    d.write_reg(0x50, 0);
    // The driver resets before the worker ran the request.
    d.write_reg(0x70, 0);
    d.run(0);
    assert!(d.take_used(0).is_empty());
    assert_eq!(
        d.read_mem(BUF, 512),
        vec![0xcc; 512],
        "no write after reset"
    );
    assert_eq!(d.status(), 0);
    d.init(0, 16);
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_IN, 0, &[(BUF, 512, true)]),
        (VIRTIO_BLK_S_OK, 513)
    );
}

#[test]
fn backend_rejects_bad_ranges() {
    let file = disk_file(&vec![0u8; 4096]);
    assert!(matches!(
        DiskBackend::open_range(file.path(), 0, 100, true),
        Err(BackendError::BadRange { .. })
    ));
    assert!(matches!(
        DiskBackend::open_range(file.path(), 4096, 512, true),
        Err(BackendError::BadRange { .. })
    ));
    assert!(matches!(
        DiskBackend::open_range(file.path(), u64::MAX - 511, 512, true),
        Err(BackendError::BadRange { .. })
    ));
    assert!(matches!(
        DiskBackend::open_file(std::path::Path::new("/nonexistent/disk"), true),
        Err(BackendError::Io { .. })
    ));
}

#[test]
fn hostile_indirect_tables_are_refused() {
    const F_INDIRECT: u16 = 4;
    let file = disk_file(&pattern(5, 4096));
    let mut d = driver(DiskBackend::open_file(file.path(), true).unwrap());
    d.write_mem(HDR, &header(VIRTIO_BLK_T_IN, 0));
    let table = DATA_START + 0x2_0000;
    let write_table = |d: &FakeDriver, at: u64, descs: &[(u64, u32, u16, u16)]| {
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let mut b = addr.to_le_bytes().to_vec();
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(&flags.to_le_bytes());
            b.extend_from_slice(&next.to_le_bytes());
            d.write_mem(at + 16 * i as u64, &b);
        }
    };
    // 1. A table length that is not a whole number of descriptors.
    d.raw_desc(0, 0, table, 20, F_INDIRECT, 0);
    d.push_avail(0, 0);
    // 2. A table that loops on itself.
    write_table(
        &d,
        table + 0x100,
        &[(HDR, 16, F_NEXT, 1), (BUF, 512, F_NEXT | F_WRITE, 0)],
    );
    d.raw_desc(0, 1, table + 0x100, 32, F_INDIRECT, 0);
    d.push_avail(0, 1);
    // 3. An indirect descriptor inside an indirect table.
    write_table(
        &d,
        table + 0x200,
        &[(HDR, 16, F_NEXT, 1), (table, 32, F_INDIRECT, 0)],
    );
    d.raw_desc(0, 2, table + 0x200, 32, F_INDIRECT, 0);
    d.push_avail(0, 2);
    // 4. A table outside guest memory, 4 GiB long.
    d.raw_desc(0, 3, MEM_END, 0xffff_fff0, F_INDIRECT, 0);
    d.push_avail(0, 3);
    d.kick(0);
    assert_eq!(d.take_used(0), vec![(0, 0), (1, 0), (2, 0), (3, 0)]);
    assert_eq!(d.counters().errors, 4);
    assert_eq!(d.status() & status::DEVICE_NEEDS_RESET, 0);
    // A well-formed indirect table is refused too: no device offers
    // VIRTIO_F_INDIRECT_DESC, so no driver may use one.
    write_table(
        &d,
        table + 0x300,
        &[
            (HDR, 16, F_NEXT, 1),
            (BUF, 4096, F_NEXT | F_WRITE, 2),
            (STATUS, 1, F_WRITE, 0),
        ],
    );
    d.write_mem(STATUS, &[0xff]);
    d.raw_desc(0, 4, table + 0x300, 48, F_INDIRECT, 0);
    d.push_avail(0, 4);
    d.kick(0);
    assert_eq!(d.take_used(0), vec![(4, 0)]);
    assert_eq!(d.read_mem(STATUS, 1)[0], 0xff);
    assert_eq!(d.counters().errors, 5);
    assert_eq!(d.status() & status::DEVICE_NEEDS_RESET, 0);
    // The same request through direct descriptors is served.
    d.raw_desc(0, 5, HDR, 16, F_NEXT, 6);
    d.raw_desc(0, 6, BUF, 4096, F_NEXT | F_WRITE, 7);
    d.raw_desc(0, 7, STATUS, 1, F_WRITE, 0);
    d.push_avail(0, 5);
    d.kick(0);
    assert_eq!(d.take_used(0), vec![(5, 4097)]);
    assert_eq!(d.read_mem(STATUS, 1)[0], VIRTIO_BLK_S_OK);
    assert!(d.read_mem(BUF, 4096) == pattern(5, 4096));
}

#[test]
fn bad_request_flood_is_counted_but_rate_limited() {
    use bulwark_virtio::counters::LOG_FIRST;
    let file = disk_file(&vec![1u8; 8192]);
    let mut d = driver(DiskBackend::open_file(file.path(), false).unwrap());
    for _ in 0..10_000 {
        assert_eq!(request(&mut d, 0xdead, 0, &[]).0, VIRTIO_BLK_S_UNSUPP);
    }
    let c = d.counters();
    assert_eq!(c.errors, 10_000, "every bad request is an error");
    assert_eq!(c.guest_faults, 10_000, "every bad request is counted");
    assert_eq!(
        c.guest_faults_logged, LOG_FIRST,
        "only the first are logged"
    );
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_IN, 0, &[(BUF, 512, true)]),
        (VIRTIO_BLK_S_OK, 513)
    );
}
