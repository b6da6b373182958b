//! Linux boot protocol probe (RSI = zero page): reports the e820 map, command line and
//! initrd as the guest sees them, probes the last bytes of each RAM range below 4 GiB
//! and the first bytes past the end of RAM, then exits 0. Shared by the `e820` (vmlinux
//! ELF) and `e820-bzimage` (linked 0x200 higher, for a bzImage's 64-bit entry) guests.

use crate::{exit, peek, poke, print};

const E820_ENTRIES: u64 = 0x1e8;
const E820_TABLE: u64 = 0x2d0;
const BOOT_FLAG: u64 = 0x1fe;
const RAMDISK_IMAGE: u64 = 0x218;
const RAMDISK_SIZE: u64 = 0x21c;
const CMD_LINE_PTR: u64 = 0x228;

/// Prints the report described in the module docs and exits 0.
pub fn report(zero_page: u64) -> ! {
    // SAFETY: bulwark-vmm put the zero page at RSI; every address read below is one the
    // zero page names, inside identity-mapped RAM below 4 GiB.
    unsafe {
        let flag: u16 = peek(zero_page + BOOT_FLAG);
        let n: u8 = peek(zero_page + E820_ENTRIES);
        print!("boot_flag={flag:04x}\ne820 entries={n}\n");
        let mut ram_end = 0u64;
        for i in 0..u64::from(n) {
            let e = zero_page + E820_TABLE + i * 20;
            let (addr, size, kind): (u64, u64, u32) = (peek(e), peek(e + 8), peek(e + 16));
            print!("e820 {addr:#x} {size:#x} {kind}\n");
            let end = addr + size;
            if kind == 1 && end <= 1 << 32 {
                let probe = end - 8;
                poke(probe, 0x5a5a_1234_5678_a5a5u64 ^ probe);
                let ok = peek::<u64>(probe) == 0x5a5a_1234_5678_a5a5u64 ^ probe;
                print!("probe {probe:#x} {}\n", if ok { "ok" } else { "FAIL" });
                ram_end = ram_end.max(end);
            }
        }
        let beyond: u32 = peek(ram_end);
        print!("beyond-ram {ram_end:#x}={beyond:08x}\n");
        let cmd: u32 = peek(zero_page + CMD_LINE_PTR);
        print!("cmdline=");
        let mut p = u64::from(cmd);
        while cmd != 0 && p < u64::from(cmd) + 4096 {
            let b: u8 = peek(p);
            if b == 0 {
                break;
            }
            crate::outb(crate::COM1, b);
            p += 1;
        }
        print!("\n");
        let (image, size): (u32, u32) = (
            peek(zero_page + RAMDISK_IMAGE),
            peek(zero_page + RAMDISK_SIZE),
        );
        let mut h: u32 = 0x811c_9dc5;
        for a in u64::from(image)..u64::from(image) + u64::from(size) {
            h = (h ^ u32::from(peek::<u8>(a))).wrapping_mul(0x0100_0193);
        }
        print!("initrd {image:#x} {size} fnv1a={h:08x}\ne820 done\n");
    }
    exit(0)
}
