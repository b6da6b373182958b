//! Port I/O: COM1 for messages, the debug-exit port for the exit code. The only
//! instructions here are `out` to those two ports.

use core::arch::asm;

/// COM1's transmit register.
const COM1: u16 = 0x3f8;
/// `bulwark-vmm`'s debug-exit port (the VMM exits with 16 + the value written).
const DEBUG_EXIT: u16 = 0xf4;

fn outb(port: u16, value: u8) {
    // SAFETY: `out` to COM1 or the debug-exit port touches no memory; both ports are
    // the VMM's devices (or ignored when absent).
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// The time-stamp counter (to report how long the checks took).
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: `rdtsc` reads a counter into EDX:EAX and touches no memory.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Text to COM1 (the VMM's 16550 needs no set-up to transmit).
#[derive(Debug)]
pub struct Serial;

impl core::fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for b in s.bytes() {
            outb(COM1, b);
        }
        Ok(())
    }
}

/// Ends the VM: the exit code to the debug-exit port; when that device is absent, a
/// triple fault (an empty IDT and a breakpoint), which the VMM also reports.
pub fn exit(code: u8) -> ! {
    outb(DEBUG_EXIT, code);
    let idt = [0u16; 5];
    // SAFETY: loading an empty IDT and raising #BP triple-faults the vCPU on purpose;
    // nothing runs after it.
    unsafe {
        asm!("lidt [{}]", "int3", in(reg) idt.as_ptr(), options(noreturn, nostack));
    }
}
