//! Runtime shared by the tiny guests: entry stub, COM1 output, the debug-exit port,
//! CPUID and a panic handler. Guest kernel-mode code is emulated at ~1.6 µs per
//! instruction on the development host, so everything here is minimal.
//!
//! Entry contract (set by bulwark-vmm): 64-bit long mode, first 4 GiB identity-mapped,
//! RDI = vCPU index (raw `at_entry` boot, else 0), RSI = boot argument (raw: from the
//! config; Linux boot: the zero page). `_start` gives each vCPU a 4 KiB stack and calls
//! `guest_main(cpu, arg)`, which each binary defines.
#![no_std]

pub mod blkcheck;
pub mod e820;
pub mod idt;
pub mod pci;
pub mod virtio;
pub mod virtio_pci;
pub mod vsock;

use core::arch::{asm, global_asm};
use core::fmt::{self, Write};

/// COM1 transmit register.
pub const COM1: u16 = 0x3f8;
/// bulwark-vmm's debug-exit port.
pub const DEBUG_EXIT: u16 = 0xf4;
/// Exit code used by the panic handler.
pub const PANIC_CODE: u8 = 99;
/// Most vCPUs the entry stub has stacks for.
pub const MAX_CPUS: u64 = 16;

global_asm!(
    ".section .text.entry, \"ax\"",
    ".global _start",
    "_start:",
    "    cmp rdi, {max}",
    "    jae 2f",
    "    lea rsp, [rip + {stacks}]",
    "    mov rax, rdi",
    "    inc rax",
    "    shl rax, 12",
    "    add rsp, rax",
    "    call guest_main",
    "2:  cli",
    "    hlt",
    "    jmp 2b",
    max = const MAX_CPUS,
    stacks = sym STACKS,
);

#[repr(C, align(4096))]
struct Stacks([u8; 4096 * MAX_CPUS as usize]);

#[used]
static mut STACKS: Stacks = Stacks([0; 4096 * MAX_CPUS as usize]);

/// Writes one byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects on the guest; the VMM decides what it does.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads one byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
    }
    v
}

/// Writes four bytes to an I/O port.
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Ends the VM through the debug-exit port with `code`.
pub fn exit(code: u8) -> ! {
    outb(DEBUG_EXIT, code);
    halt()
}

/// Stops this vCPU for good.
pub fn halt() -> ! {
    loop {
        // SAFETY: cli; hlt only stops this vCPU.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}

/// Executes CPUID; returns (eax, ebx, ecx, edx).
pub fn cpuid(leaf: u32, subleaf: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// COM1 as a `fmt::Write` sink.
#[derive(Debug)]
pub struct Serial;

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            outb(COM1, b);
        }
        Ok(())
    }
}

/// `print!` to COM1.
#[macro_export]
macro_rules! print {
    ($($t:tt)*) => {{ let _ = core::fmt::Write::write_fmt(&mut $crate::Serial, format_args!($($t)*)); }};
}

/// Reads a `T` from guest-physical (identity-mapped) `addr`.
///
/// # Safety
/// `addr` must be mapped and hold a `T`.
pub unsafe fn peek<T: Copy>(addr: u64) -> T {
    // SAFETY: the caller promises `addr` is mapped RAM; unaligned reads are fine on x86.
    unsafe { core::ptr::read_volatile(addr as *const T) }
}

/// Writes a `T` to guest-physical `addr`.
///
/// # Safety
/// `addr` must be mapped and writable without harming the guest.
pub unsafe fn poke<T: Copy>(addr: u64, v: T) {
    // SAFETY: as promised by the caller.
    unsafe { core::ptr::write_volatile(addr as *mut T, v) }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    print!("PANIC\n");
    exit(PANIC_CODE)
}
