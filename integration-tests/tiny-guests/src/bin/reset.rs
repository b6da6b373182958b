//! Asks the i8042 for a CPU reset (command 0xFE on port 0x64).
#![no_std]
#![no_main]

use tiny_guest::{exit, outb, print};

#[no_mangle]
extern "C" fn guest_main(_cpu: u64, _arg: u64) -> ! {
    print!("resetting\n");
    outb(0x64, 0xfe);
    // Still here: the reset was ignored.
    exit(1)
}
