//! The block checks the `virtio-blk` and `virtio-pci` guests share: the read-only
//! rootfs hashed against `rootfs_sha256=`/`rootfs_len=` on the command line (and its
//! refusals), and a pattern written to, flushed and read back from a scratch disk.
//! Each prints one line when it passed and exits 1 with `FAIL ...` when not.

use sha2::{Digest, Sha256};

use crate::virtio::{self, Blk, Transport, BLK_FLUSH, BLK_GET_ID, BLK_IN, BLK_OUT};
use crate::{exit, peek, print};

/// Data buffers (64 KiB each).
pub const BUF_A: u64 = 0x130_0000;
/// Second data buffer.
pub const BUF_B: u64 = 0x140_0000;
/// Bytes per request.
pub const CHUNK: u32 = 64 * 1024;

/// The pattern written to the scratch disk (64-bit words).
pub fn pattern(i: u64) -> u64 {
    i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5ca1_ab1e
}

/// Prints `FAIL what` and exits 1.
pub fn fail(what: &str) -> ! {
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

/// The disk's id (`GET_ID`) and its length without the NUL padding.
pub fn disk_id<T: Transport>(blk: &mut Blk<T>) -> ([u8; 20], usize) {
    let (st, _) = blk.request(BLK_GET_ID, 0, BUF_A, 20);
    if st != 0 {
        fail("GET_ID");
    }
    // SAFETY: the device wrote 20 bytes at BUF_A.
    let id: [u8; 20] = unsafe { peek(BUF_A) };
    let len = id.iter().position(|&b| b == 0).unwrap_or(20);
    (id, len)
}

/// Hashes the read-only rootfs disk and checks its refusals.
pub fn check_rootfs<T: Transport>(blk: &mut Blk<T>, cmdline: &[u8]) {
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

/// Writes, flushes and reads back a 64 KiB pattern at sector 16.
pub fn check_scratch<T: Transport>(blk: &mut Blk<T>) {
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
