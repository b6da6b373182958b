//! PCI configuration space through the type-1 mechanism (ports 0xCF8/0xCFC), dword
//! accesses (sub-dword registers are read and written inside their dword), and a
//! walk of a function's capability list. Function 0 only; the plain functions are
//! for bus 0, the `_on` ones take the bus (a device behind a root port).

use core::arch::asm;

use crate::outl;

fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: port I/O has no memory effects on the guest.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack, preserves_flags))
    }
    v
}

fn select(bus: u8, dev: u8, reg: u16) {
    outl(
        0xcf8,
        0x8000_0000 | u32::from(bus) << 16 | u32::from(dev) << 11 | u32::from(reg & 0xfc),
    );
}

/// Reads the dword at `reg` (rounded down to a dword) of `bus`, device `dev`,
/// function 0.
pub fn read32_on(bus: u8, dev: u8, reg: u16) -> u32 {
    select(bus, dev, reg);
    inl(0xcfc)
}

/// Writes the dword at `reg` of `bus`, device `dev`, function 0.
pub fn write32_on(bus: u8, dev: u8, reg: u16, v: u32) {
    select(bus, dev, reg);
    outl(0xcfc, v);
}

/// Reads the dword at `reg` of bus 0, device `dev`, function 0.
pub fn read32(dev: u8, reg: u16) -> u32 {
    read32_on(0, dev, reg)
}

/// Writes the dword at `reg` of bus 0, device `dev`, function 0.
pub fn write32(dev: u8, reg: u16, v: u32) {
    write32_on(0, dev, reg, v)
}

/// The 16 bits at `reg` (2-byte aligned) of bus 0, device `dev`.
pub fn read16(dev: u8, reg: u16) -> u16 {
    (read32(dev, reg) >> (8 * (reg & 2))) as u16
}

/// The byte at `reg` of bus 0, device `dev`.
pub fn read8(dev: u8, reg: u16) -> u8 {
    read8_on(0, dev, reg)
}

/// The byte at `reg` of `bus`, device `dev`.
pub fn read8_on(bus: u8, dev: u8, reg: u16) -> u8 {
    (read32_on(bus, dev, reg) >> (8 * (reg & 3))) as u8
}

/// `(vendor, device)` of bus 0 device `dev`, if one answers.
pub fn id(dev: u8) -> Option<(u16, u16)> {
    let v = read32(dev, 0);
    (v != u32::MAX).then_some((v as u16, (v >> 16) as u16))
}

/// Offsets of the capabilities of bus 0 device `dev` (at most 16, a bounded walk).
pub fn capabilities(dev: u8) -> impl Iterator<Item = u16> {
    capabilities_on(0, dev)
}

/// Offsets of the capabilities of `bus`, device `dev` (at most 16, a bounded walk).
pub fn capabilities_on(bus: u8, dev: u8) -> impl Iterator<Item = u16> {
    let status = read32_on(bus, dev, 0x04) >> 16;
    let mut pos = if status & 0x10 != 0 {
        u16::from(read8_on(bus, dev, 0x34)) & 0xfc
    } else {
        0
    };
    (0..16).map_while(move |_| {
        if pos < 0x40 {
            return None;
        }
        let here = pos;
        pos = u16::from(read8_on(bus, dev, here + 1)) & 0xfc;
        Some(here)
    })
}
