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

use tiny_guest::blkcheck::{check_rootfs, check_scratch, disk_id, fail, BUF_A};
use tiny_guest::virtio::{self, Blk, Mmio, Rng};
use tiny_guest::{exit, print};

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
                let (raw, len) = disk_id(&mut blk);
                let id = &raw[..len];
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
