//! virtio-blk and virtio-rng end to end (Linux 64-bit boot, RSI = zero page): finds the
//! devices from the `virtio_mmio.device=` fragments bulwark-vmm appends to the command
//! line, then
//! - on the disk whose id is `rootfs` (read-only): hashes the first `rootfs_len` bytes
//!   with SHA-256 and compares with `rootfs_sha256` from the command line; checks that
//!   a write and a read past the end get `VIRTIO_BLK_S_IOERR`;
//! - on the disk whose id is `scratch`: writes a 64 KiB pattern, flushes, reads it
//!   back into another buffer and compares;
//! - on virtio-rng: asks for 64 bytes and checks they arrived (not all zero).
//!
//! Prints one line per check and exits 0 when all passed, else 1.
#![no_std]
#![no_main]

use sha2::{Digest, Sha256};
use tiny_guest::virtio::{self, Blk, Mmio, Rng, BLK_FLUSH, BLK_GET_ID, BLK_IN, BLK_OUT};
use tiny_guest::{exit, peek, print};

const BUF_A: u64 = 0x130_0000;
const BUF_B: u64 = 0x140_0000;
const CHUNK: u32 = 64 * 1024;

fn pattern(i: u64) -> u64 {
    i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5ca1_ab1e
}

fn fail(what: &str) -> ! {
    print!("FAIL {what}\n");
    exit(1)
}

fn hex_eq(digest: &[u8], hex: &[u8]) -> bool {
    const H: &[u8; 16] = b"0123456789abcdef";
    hex.len() == digest.len() * 2
        && digest.iter().enumerate().all(|(i, b)| {
            hex[2 * i] == H[usize::from(b >> 4)] && hex[2 * i + 1] == H[usize::from(b & 15)]
        })
}

fn check_rootfs(blk: &mut Blk, cmdline: &[u8]) {
    if blk.features & (1 << 5) == 0 {
        fail("rootfs disk does not offer VIRTIO_BLK_F_RO");
    }
    let len = virtio::cmdline_value(cmdline, b"rootfs_len")
        .and_then(virtio::parse_u64)
        .unwrap_or_else(|| fail("no rootfs_len= on the command line"));
    let want = virtio::cmdline_value(cmdline, b"rootfs_sha256")
        .unwrap_or_else(|| fail("no rootfs_sha256= on the command line"));
    if len > blk.capacity * 512 {
        fail("rootfs_len beyond the disk");
    }
    let mut h = Sha256::new();
    let mut pos = 0u64;
    while pos < len {
        let n = (len - pos).min(u64::from(CHUNK));
        let req = n.div_ceil(512) * 512;
        let (st, _) = blk.request(BLK_IN, pos / 512, BUF_A, req as u32);
        if st != 0 {
            fail("rootfs read");
        }
        // SAFETY: BUF_A is a 64 KiB buffer in the data area the device just filled.
        let bytes = unsafe { core::slice::from_raw_parts(BUF_A as *const u8, n as usize) };
        h.update(bytes);
        pos += n;
    }
    if !hex_eq(&h.finalize(), want) {
        fail("rootfs sha256 mismatch");
    }
    print!("rootfs sha256 ok ({len} bytes)\n");
    let (st, _) = blk.request(BLK_OUT, 0, BUF_A, 512);
    if st != 1 {
        fail("write to the read-only rootfs was not refused");
    }
    let (st, _) = blk.request(BLK_IN, blk.capacity, BUF_A, 512);
    if st != 1 {
        fail("read past the end was not refused");
    }
    print!("rootfs refuses writes and reads past the end\n");
}

fn check_scratch(blk: &mut Blk) {
    virtio::fill_words(BUF_A, u64::from(CHUNK), pattern);
    virtio::fill_words(BUF_B, u64::from(CHUNK), |_| 0);
    let (st, _) = blk.request(BLK_OUT, 16, BUF_A, CHUNK);
    if st != 0 {
        fail("scratch write");
    }
    if blk.request(BLK_FLUSH, 0, 0, 0).0 != 0 {
        fail("scratch flush");
    }
    let (st, _) = blk.request(BLK_IN, 16, BUF_B, CHUNK);
    if st != 0 || !virtio::check_words(BUF_B, u64::from(CHUNK), pattern) {
        fail("scratch read-back");
    }
    print!("scratch write/flush/read-back ok ({CHUNK} bytes)\n");
}

#[no_mangle]
extern "C" fn guest_main(_cpu: u64, zero_page: u64) -> ! {
    let cmdline = virtio::cmdline(zero_page);
    let mut disks = 0;
    let mut rng_ok = false;
    for (n, (base, _gsi)) in virtio::cmdline_devices(cmdline).enumerate() {
        let n = n as u64;
        let Some(mmio) = Mmio::probe(base) else {
            fail("no virtio-mmio device where the command line says")
        };
        match mmio.device_id() {
            virtio::ID_BLOCK => {
                let mut blk = Blk::new(mmio, n * 4, virtio::DATA_AREA + n * 64)
                    .unwrap_or_else(|| fail("virtio-blk init"));
                let (st, _) = blk.request(BLK_GET_ID, 0, BUF_A, 20);
                if st != 0 {
                    fail("GET_ID");
                }
                // SAFETY: the device wrote 20 bytes at BUF_A.
                let id: [u8; 20] = unsafe { peek(BUF_A) };
                let id = &id[..id.iter().position(|&b| b == 0).unwrap_or(20)];
                print!(
                    "disk {base:#x}: {} sectors, id {}\n",
                    blk.capacity,
                    core::str::from_utf8(id).unwrap_or("?")
                );
                match id {
                    b"rootfs" => check_rootfs(&mut blk, cmdline),
                    b"scratch" => check_scratch(&mut blk),
                    _ => {}
                }
                disks += 1;
            }
            virtio::ID_RNG => {
                let mut rng = Rng::new(mmio, n * 4).unwrap_or_else(|| fail("virtio-rng init"));
                virtio::fill_words(BUF_A, 64, |_| 0);
                let got = rng.fill(BUF_A, 64).unwrap_or_else(|| fail("rng timeout"));
                if got != 64 || virtio::check_words(BUF_A, 64, |_| 0) {
                    fail("rng bytes");
                }
                print!("rng ok ({got} bytes)\n");
                rng_ok = true;
            }
            _ => {}
        }
    }
    print!(
        "virtio-blk done: {disks} disks, rng {}\n",
        if rng_ok { "yes" } else { "no" }
    );
    exit(0)
}
