//! Taking interrupts in a tiny guest: a 256-entry IDT of 64-bit interrupt gates (a
//! static), the legacy PICs masked and the local APIC enabled, so MSI, MSI-X and
//! IOAPIC interrupts reach handlers written in assembly (which end with a LAPIC EOI:
//! a write of 0 to `LAPIC + 0xb0`).

use core::arch::asm;

use crate::{outb, poke};

/// The local APIC's MMIO base (its default; the VMM does not move it).
pub const LAPIC: u64 = 0xfee0_0000;

#[repr(C, align(16))]
struct Idt([u64; 512]);

static mut IDT: Idt = Idt([0; 512]);

/// An interrupt handler: an assembly routine that ends with `iretq`.
pub type Handler = unsafe extern "C" fn();

fn set_gate(vector: usize, handler: Handler, cs: u16) {
    let h = handler as usize as u64;
    let low = (h & 0xffff) | u64::from(cs) << 16 | 0x8e00u64 << 32 | (h >> 16 & 0xffff) << 48;
    // SAFETY: one vCPU, before interrupts are enabled; the IDT is a static.
    unsafe {
        let idt = &raw mut IDT;
        (*idt).0[vector * 2] = low;
        (*idt).0[vector * 2 + 1] = h >> 32;
    }
}

/// Points every vector at `default`, then each `(vector, handler)` of `gates`, loads
/// the IDT, masks both legacy PICs, software-enables the local APIC (spurious vector
/// 0xff, task priority 0: every priority accepted) and enables interrupts.
pub fn install(default: Handler, gates: &[(u8, Handler)]) {
    let cs: u16;
    // SAFETY: reads CS only.
    unsafe { asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) }
    for v in 0..256 {
        set_gate(v, default, cs);
    }
    for &(v, h) in gates {
        set_gate(usize::from(v), h, cs);
    }
    #[repr(C, packed)]
    struct Ptr {
        limit: u16,
        base: u64,
    }
    let ptr = Ptr {
        limit: 256 * 16 - 1,
        base: &raw const IDT as u64,
    };
    // SAFETY: the IDT is a static with a valid gate for every vector.
    unsafe { asm!("lidt [{0}]", in(reg) &ptr, options(readonly, nostack, preserves_flags)) }
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    // SAFETY: the local APIC's spurious-interrupt vector and task priority registers;
    // then interrupts on, with every gate valid.
    unsafe {
        poke::<u32>(LAPIC + 0xf0, 0x1ff);
        poke::<u32>(LAPIC + 0x80, 0);
        asm!("sti", options(nomem, nostack));
    }
}
