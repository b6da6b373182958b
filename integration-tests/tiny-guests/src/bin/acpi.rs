//! ACPI probe, booted through the Linux 64-bit entry (RSI = zero page): finds the RSDP
//! through the zero page's `acpi_rsdp_addr` and by scanning 0xe0000..0xfffff on 16-byte
//! boundaries, validates every checksum on the way, walks XSDT -> MADT and reports the
//! number of enabled local APICs, walks XSDT -> FADT -> DSDT for `\_S5`'s SLP_TYP and
//! the sleep control register, and powers off by writing SLP_TYP | SLP_EN there. If the
//! VM is still running afterwards it exits 1; no RSDP at all exits 2, a bad table 3.
#![no_std]
#![no_main]

use tiny_guest::{exit, outb, peek, print};

const ZP_ACPI_RSDP_ADDR: u64 = 0x70;

/// Reads `len` bytes at `addr` and returns their 8-bit sum.
fn sum(addr: u64, len: u64) -> u8 {
    let mut s = 0u8;
    for a in addr..addr + len {
        // SAFETY: callers pass ranges inside the ACPI area below 1 MiB (identity-mapped
        // RAM), bounded by the table lengths checked against that area.
        s = s.wrapping_add(unsafe { peek::<u8>(a) });
    }
    s
}

fn u32_at(addr: u64) -> u32 {
    // SAFETY: as for `sum`.
    unsafe { peek(addr) }
}

fn u64_at(addr: u64) -> u64 {
    // SAFETY: as for `sum`.
    unsafe { peek(addr) }
}

fn u8_at(addr: u64) -> u8 {
    // SAFETY: as for `sum`.
    unsafe { peek(addr) }
}

/// Only tables inside the legacy BIOS area are trusted by this probe.
fn in_area(addr: u64, len: u64) -> bool {
    addr >= 0xe_0000 && len >= 36 && addr + len <= 0x10_0000
}

fn is_rsdp(addr: u64) -> bool {
    u64_at(addr) == u64::from_le_bytes(*b"RSD PTR ")
        && sum(addr, 20) == 0
        && u8_at(addr + 15) >= 2
        && u32_at(addr + 20) == 36
        && sum(addr, 36) == 0
}

/// Checks a table's signature, bounds and checksum; returns its length.
fn table(addr: u64, sig: &[u8; 4]) -> u64 {
    let len = if (0xe_0000..0x10_0000).contains(&addr) {
        u64::from(u32_at(addr + 4))
    } else {
        0
    };
    if !in_area(addr, len) || u32_at(addr) != u32::from_le_bytes(*sig) || sum(addr, len) != 0 {
        print!(
            "bad table {} at {addr:#x}\n",
            core::str::from_utf8(sig).unwrap_or("?")
        );
        exit(3)
    }
    len
}

#[no_mangle]
extern "C" fn guest_main(_cpu: u64, zero_page: u64) -> ! {
    // SAFETY: bulwark-vmm put the zero page at RSI (identity-mapped RAM).
    let from_zp: u64 = unsafe { peek(zero_page + ZP_ACPI_RSDP_ADDR) };
    print!("rsdp zero-page={from_zp:#x}\n");
    let mut scanned = 0;
    let mut a = 0xe_0000;
    while a < 0x10_0000 {
        if is_rsdp(a) {
            scanned = a;
            break;
        }
        a += 16;
    }
    print!("rsdp scan={scanned:#x}\n");
    if scanned == 0 || from_zp != scanned {
        exit(2)
    }
    let xsdt = u64_at(scanned + 24);
    let xlen = table(xsdt, b"XSDT");
    let entries = (xlen - 36) / 8;
    print!("xsdt entries={entries}\n");
    let (mut lapics, mut sleep_port, mut slp_typ) = (0u32, 0u64, 0xffu8);
    for i in 0..entries {
        let t = u64_at(xsdt + 36 + 8 * i);
        let sig = u32_at(t);
        if sig == u32::from_le_bytes(*b"APIC") {
            let len = table(t, b"APIC");
            let mut o = 44;
            while o + 2 <= len {
                let (ty, l) = (u8_at(t + o), u64::from(u8_at(t + o + 1)));
                if l < 2 {
                    exit(3)
                }
                if ty == 0 && u32_at(t + o + 4) & 1 == 1 {
                    lapics += 1;
                }
                o += l;
            }
            print!("madt lapics={lapics}\n");
        } else if sig == u32::from_le_bytes(*b"FACP") {
            let len = table(t, b"FACP");
            if len < 268 || u32_at(t + 112) & (1 << 20) == 0 || u8_at(t + 244) != 1 {
                print!("fadt: not hardware-reduced with an I/O sleep register\n");
                exit(3)
            }
            sleep_port = u64_at(t + 248);
            let dsdt = u64_at(t + 140);
            let dlen = table(dsdt, b"DSDT");
            // Name(_S5_, Package(n) {SLP_TYP, ...}): 08 '_S5_' 12 len n elem...
            let mut p = dsdt + 36;
            while p + 10 < dsdt + dlen {
                if u32_at(p) == u32::from_le_bytes(*b"_S5_") && u8_at(p + 4) == 0x12 {
                    // PkgLength: the lead byte's top two bits count the bytes after it.
                    let elem = p + 7 + u64::from(u8_at(p + 5) >> 6);
                    slp_typ = match u8_at(elem) {
                        0x0a => u8_at(elem + 1),
                        0x01 => 1,
                        _ => 0,
                    };
                    break;
                }
                p += 1;
            }
            print!("fadt sleep-control={sleep_port:#x} s5={slp_typ}\n");
        }
    }
    if sleep_port == 0 || sleep_port > 0xffff || slp_typ > 7 {
        exit(3)
    }
    print!("powering off\n");
    outb(sleep_port as u16, (slp_typ << 2) | (1 << 5));
    print!("still running\n");
    exit(1)
}
