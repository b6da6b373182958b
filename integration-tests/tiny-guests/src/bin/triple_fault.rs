//! Raises #UD with no IDT (limit 0): #UD -> #GP -> #DF -> triple fault.
#![no_std]
#![no_main]

use tiny_guest::{exit, print};

#[no_mangle]
extern "C" fn guest_main(_cpu: u64, _arg: u64) -> ! {
    print!("faulting\n");
    let idt = [0u8; 10];
    // SAFETY: deliberately loads an empty IDT and faults; the VM is meant to die here.
    unsafe { core::arch::asm!("lidt [{}]", "ud2", in(reg) idt.as_ptr(), options(nostack)) }
    exit(1)
}
