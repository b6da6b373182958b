//! Hostile-guest smoke test: writes garbage to every I/O port bulwark-vmm does not
//! own and reads each back, then writes and reads unowned MMIO addresses (every
//! 16 MiB from the end of RAM to 3 GiB, every 1 MiB in the 32-bit hole, skipping the
//! in-kernel IOAPIC and LAPIC pages). RSI = guest RAM size. Exits 0 if it survives.
#![no_std]
#![no_main]

use tiny_guest::{exit, inb, outb, outl, peek, poke, print};

fn owned(port: u16) -> bool {
    matches!(port, 0x3f8..=0x3ff | 0x60..=0x64 | 0xf4 | 0x600..=0x602)
}

#[no_mangle]
extern "C" fn guest_main(_cpu: u64, ram_size: u64) -> ! {
    let mut ff = 0u32;
    for port in 0..=u16::MAX {
        if owned(port) {
            continue;
        }
        let garbage = (port as u8).wrapping_mul(31).wrapping_add(7);
        outb(port, garbage);
        if inb(port) == 0xff {
            ff += 1;
        }
        if port & 0xff == 0x55 {
            outl(port, 0xdead_beef ^ u32::from(port));
        }
    }
    print!("port fuzz done, {ff} reads saw 0xff\n");
    let mut nonff = 0u32;
    let mut addr = ram_size.min(3 << 30);
    while addr < 1 << 32 {
        let in_hole = addr >= 3 << 30;
        if addr != 0xfec0_0000 && addr != 0xfee0_0000 {
            // SAFETY: the address is outside guest RAM (identity-mapped, not RAM): the
            // access exits to the VMM as MMIO; nothing in the guest is touched.
            unsafe {
                poke::<u32>(addr, 0xbad0_0000 | (addr >> 20) as u32);
                if peek::<u32>(addr) != u32::MAX {
                    nonff += 1;
                }
            }
        }
        addr += if in_hole { 1 << 20 } else { 16 << 20 };
    }
    print!("mmio fuzz done, {nonff} reads not all-ones\nsurvived\n");
    exit(0)
}
