//! Prints a greeting and exits with the low byte of its boot argument (RSI).
#![no_std]
#![no_main]

use tiny_guest::{exit, print};

#[no_mangle]
extern "C" fn guest_main(_cpu: u64, arg: u64) -> ! {
    print!("hello from tiny guest\n");
    exit(arg as u8)
}
