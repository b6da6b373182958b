//! A hostile virtio driver (raw boot, RSI = flood packets): attacks each device the
//! way a malicious guest kernel would and checks after every attack that the VMM
//! still serves the other devices (and the attacked one after a reset). Devices, found
//! by probing: disk `ro` (read-only, the first), disk `rw` (the second), rng, vsock.
//!
//! Prints `ok <attack>` per attack; at the end prints `hostile done` and halts (the
//! host reads `GET /vm` and stops the VM). A failed check prints `FAIL ...` and exits 1.
#![no_std]
#![no_main]

use tiny_guest::virtio::{
    self, reg, Blk, Mmio, Rng, BLK_IN, BLK_OUT, F_INDIRECT, F_NEXT, F_WRITE, NEEDS_RESET,
};
use tiny_guest::vsock::{Event, Vsock, OP_REQUEST, OP_RST, OP_RW};
use tiny_guest::{exit, halt, peek, poke, print};

const BUF: u64 = 0x130_0000;
const BIG: u64 = 0x140_0000;
const RAM_END: u64 = 64 << 20;

fn fail(what: &str) -> ! {
    print!("FAIL {what}\n");
    exit(1)
}

/// The pattern the host wrote to the `ro` disk (64-bit words).
fn pattern(i: u64) -> u64 {
    i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5ca1_ab1e
}

struct Devs {
    ro: Blk,
    rw: Blk,
    rng: Rng,
}

/// The other devices still work: rng gives bytes, the read-only disk reads right.
fn healthy(d: &mut Devs, after: &str) {
    virtio::fill_words(BUF, 64, |_| 0);
    if d.rng.fill(BUF, 64) != Some(64) || virtio::check_words(BUF, 64, |_| 0) {
        print!("FAIL rng after {after}\n");
        exit(1)
    }
    let (st, _) = d.ro.request(BLK_IN, 1, BUF, 512);
    if st != 0 || !virtio::check_words(BUF, 512, |i| pattern(64 + i)) {
        print!("FAIL ro disk after {after}\n");
        exit(1)
    }
    print!("ok {after}\n");
}

/// Submits a hand-made chain on `blk`'s queue and waits for it to come back;
/// returns the used length.
fn submit_raw(blk: &mut Blk, descs: &[(u64, u32, u16, u16)]) -> u32 {
    for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
        blk.vq.set_desc(i as u16, addr, len, flags, next);
    }
    // SAFETY: the header area belongs to this device.
    unsafe {
        poke(blk.hdr, BLK_IN);
        poke(blk.hdr + 4, 0u32);
        poke(blk.hdr + 8, 0u64);
        poke::<u8>(blk.hdr + 16, 0xff);
    }
    blk.vq.push(0);
    blk.dev.notify(0);
    match blk.vq.wait_used(virtio::SPINS) {
        Some((_, len)) => len,
        None => fail("a refused chain never came back"),
    }
}

fn refused_chain(d: &mut Devs, what: &str, descs: &[(u64, u32, u16, u16)]) {
    let len = submit_raw(&mut d.rw, descs);
    // SAFETY: the status byte lives in the header area.
    let status: u8 = unsafe { peek(d.rw.hdr + 16) };
    if len != 0 || status != 0xff {
        print!("FAIL {what}: used len {len}, status {status}\n");
        exit(1)
    }
    // The attacked device itself keeps serving good requests.
    if d.rw.request(BLK_IN, 0, BUF, 512).0 != 0 {
        print!("FAIL rw disk after {what}\n");
        exit(1)
    }
    healthy(d, what);
}

fn wait_needs_reset(m: &Mmio) -> bool {
    (0..virtio::SPINS).any(|_| m.status() & NEEDS_RESET != 0)
}

fn blk_attacks(d: &mut Devs) {
    let h = d.rw.hdr;
    let st = h + 16;
    // A chain that loops back on itself.
    refused_chain(
        d,
        "looping chain",
        &[
            (h, 16, F_NEXT, 1),
            (BUF, 512, F_WRITE | F_NEXT, 2),
            (st, 1, F_WRITE | F_NEXT, 1),
        ],
    );
    // A buffer far outside guest memory.
    refused_chain(
        d,
        "buffer outside guest memory",
        &[
            (h, 16, F_NEXT, 1),
            (0x10_0000_0000, 512, F_WRITE | F_NEXT, 2),
            (st, 1, F_WRITE, 0),
        ],
    );
    // A buffer that starts in RAM and runs past its end (into the MMIO hole).
    refused_chain(
        d,
        "buffer across the end of RAM",
        &[
            (h, 16, F_NEXT, 1),
            (RAM_END - 256, 512, F_WRITE | F_NEXT, 2),
            (st, 1, F_WRITE, 0),
        ],
    );
    // A length near u32::MAX.
    refused_chain(
        d,
        "length near u32::MAX",
        &[
            (h, 16, F_NEXT, 1),
            (BUF, 0xffff_fe00, F_WRITE | F_NEXT, 2),
            (st, 1, F_WRITE, 0),
        ],
    );
    // A next index beyond the queue.
    refused_chain(
        d,
        "next index out of range",
        &[(h, 16, F_NEXT, 1), (BUF, 512, F_WRITE | F_NEXT, 999)],
    );
    // A well-formed indirect table, but VIRTIO_F_INDIRECT_DESC was never offered.
    let table = BIG + 0x10_0000;
    for (i, (addr, len, flags, next)) in [
        (h, 16u32, F_NEXT, 1u16),
        (BUF, 512, F_WRITE | F_NEXT, 2),
        (st, 1, F_WRITE, 0),
    ]
    .into_iter()
    .enumerate()
    {
        let d = table + i as u64 * 16;
        // SAFETY: free RAM in the data area.
        unsafe {
            poke(d, addr);
            poke(d + 8, len);
            poke(d + 12, flags);
            poke(d + 14, next);
        }
    }
    refused_chain(
        d,
        "unnegotiated indirect table",
        &[(table, 48, F_INDIRECT, 0)],
    );

    // Writes to the read-only disk; reads past the end, straddling it, overflowing.
    let cap = d.ro.capacity;
    for (what, kind, sector, len) in [
        ("write to the read-only disk", BLK_OUT, 0, 512),
        ("read past the end", BLK_IN, cap, 512),
        ("read straddling the end", BLK_IN, cap - 1, 1024),
        ("read at sector u64::MAX", BLK_IN, u64::MAX, 512),
    ] {
        let (status, _) = d.ro.request(kind, sector, BUF, len);
        if status != 1 {
            print!("FAIL {what}: status {status}\n");
            exit(1)
        }
        healthy(d, what);
    }

    // The available index jumps far ahead: the ring is corrupt.
    let idx = d.rw.vq.avail_idx.wrapping_add(1000);
    d.rw.vq.set_avail_idx(idx);
    d.rw.dev.notify(0);
    if !wait_needs_reset(&d.rw.dev) {
        fail("a corrupt available index did not set DEVICE_NEEDS_RESET");
    }
    healthy(d, "corrupt available index (needs reset)");
    d.rw = Blk::new(d.rw.dev, 4, d.rw.hdr).unwrap_or_else(|| fail("rw re-init"));
    if d.rw.request(BLK_IN, 0, BUF, 512).0 != 0 {
        fail("rw disk after reset");
    }
    print!("ok rw disk works again after reset\n");

    // Reset in the middle of a large request.
    d.rw.vq.set_desc(0, h, 16, F_NEXT, 1);
    d.rw.vq.set_desc(1, BIG, 1 << 20, F_WRITE | F_NEXT, 2);
    d.rw.vq.set_desc(2, st, 1, F_WRITE, 0);
    // SAFETY: the header area belongs to this device.
    unsafe {
        poke(h, BLK_IN);
        poke(h + 8, 0u64);
    }
    d.rw.vq.push(0);
    d.rw.dev.notify(0);
    d.rw.dev.write(reg::STATUS, 0);
    d.rw = Blk::new(d.rw.dev, 4, d.rw.hdr).unwrap_or_else(|| fail("rw re-init"));
    if d.rw.request(BLK_IN, 0, BUF, 512).0 != 0 {
        fail("rw disk after a reset mid-request");
    }
    healthy(d, "reset mid-request");
}

fn rng_attacks(d: &mut Devs) {
    // Queue addresses rewritten after DRIVER_OK.
    let m = d.rng.dev;
    m.write(reg::QUEUE_SEL, 0);
    m.write(reg::QUEUE_DESC_LOW, 0x1000);
    if m.status() & NEEDS_RESET == 0 {
        fail("rewriting a queue address after DRIVER_OK did not set DEVICE_NEEDS_RESET");
    }
    // The disk keeps working while the rng is broken.
    let (st, _) = d.ro.request(BLK_IN, 1, BUF, 512);
    if st != 0 {
        fail("ro disk while the rng needs reset");
    }
    d.rng = Rng::new(m, 8).unwrap_or_else(|| fail("rng re-init"));
    healthy(d, "queue address rewritten after DRIVER_OK");
}

fn vsock_attacks(d: &mut Devs, v: &mut Vsock, flood: u64) {
    // A header cut short (10 bytes): dropped.
    v.local = 1030;
    v.peer = 7000;
    v.header(OP_RW, 0, 0).write(BUF);
    if !v.send_bytes(BUF, 10) {
        fail("vsock send");
    }
    // An unknown operation for no connection: the device answers RST.
    let mut bogus = v.header(99, 0, 0);
    bogus.dst_port = 7000;
    if !v.send(&bogus, &[]) {
        fail("vsock send");
    }
    match v.wait_event() {
        Some(Event::Rst(_)) => {}
        e => {
            print!("FAIL unknown op answered with {e:?}\n");
            exit(1)
        }
    }
    healthy(d, "vsock bogus packets");

    // Flood without credit: connect to a host listener that never reads and send
    // `flood` 64 KiB packets ignoring the device's credit.
    v.local = 1031;
    v.send_ctl(OP_REQUEST, 0);
    match v.wait_event() {
        Some(Event::Response) => {}
        e => {
            print!("FAIL connect for the flood: {e:?}\n");
            exit(1)
        }
    }
    let mut reset = false;
    for _ in 0..flood {
        let h = v.header(OP_RW, 64 * 1024, 0);
        if !v.send(&h, &[(BIG, 64 * 1024)]) {
            fail("vsock flood send");
        }
        if let Some(Event::Rst(_)) = v.poll() {
            reset = true;
        }
    }
    while v.busy() {
        if let Some(Event::Rst(_)) = v.poll() {
            reset = true;
        }
    }
    if !reset {
        match v.wait_event() {
            Some(Event::Rst(_)) => {}
            e => {
                print!("FAIL the flood was not reset: {e:?}\n");
                exit(1)
            }
        }
    }
    print!("ok vsock flood without credit was reset\n");
    // The device still accepts connections.
    v.local = 1032;
    v.tx_cnt = 0;
    v.send_ctl(OP_REQUEST, 0);
    loop {
        match v.wait_event() {
            Some(Event::Response) => break,
            // RSTs still queued for the flood's packets.
            Some(Event::Rst(port)) if port != v.local => {}
            e => {
                print!("FAIL connect after the flood: {e:?}\n");
                exit(1)
            }
        }
    }
    v.send_ctl(OP_RST, 0);
    healthy(d, "vsock after the flood");
}

#[no_mangle]
extern "C" fn guest_main(_cpu: u64, flood: u64) -> ! {
    let find = |id, n| Mmio::find(id, n).unwrap_or_else(|| fail("device missing"));
    let ro = Blk::new(find(virtio::ID_BLOCK, 0), 0, virtio::DATA_AREA)
        .unwrap_or_else(|| fail("ro init"));
    let rw = Blk::new(find(virtio::ID_BLOCK, 1), 4, virtio::DATA_AREA + 64)
        .unwrap_or_else(|| fail("rw init"));
    let rng = Rng::new(find(virtio::ID_RNG, 0), 8).unwrap_or_else(|| fail("rng init"));
    let mut d = Devs { ro, rw, rng };
    healthy(&mut d, "start");
    let mut v = Vsock::new(find(virtio::ID_VSOCK, 0), 12).unwrap_or_else(|| fail("vsock init"));
    blk_attacks(&mut d);
    rng_attacks(&mut d);
    vsock_attacks(&mut d, &mut v, flood);
    print!("hostile done\n");
    halt()
}
