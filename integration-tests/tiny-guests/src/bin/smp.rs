//! Every vCPU starts here (raw `at_entry` boot, RDI = index, RSI = vCPU count):
//! each checks in with its index and APIC ID; vCPU 0 waits for all, then exits 0.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tiny_guest::{cpuid, exit, halt, print};

static ARRIVED: AtomicU64 = AtomicU64::new(0);
static PRINTING: AtomicBool = AtomicBool::new(false);

#[no_mangle]
extern "C" fn guest_main(cpu: u64, count: u64) -> ! {
    let apic_id = cpuid(1, 0).1 >> 24;
    while PRINTING.swap(true, Ordering::Acquire) {
        core::hint::spin_loop();
    }
    print!("cpu {cpu} up, apic id {apic_id}\n");
    PRINTING.store(false, Ordering::Release);
    ARRIVED.fetch_add(1, Ordering::AcqRel);
    if cpu != 0 {
        halt();
    }
    while ARRIVED.load(Ordering::Acquire) < count {
        core::hint::spin_loop();
    }
    while PRINTING.swap(true, Ordering::Acquire) {
        core::hint::spin_loop();
    }
    print!("all {count} cpus up\n");
    exit(0)
}
