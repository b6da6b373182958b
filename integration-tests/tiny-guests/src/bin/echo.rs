//! Serial input probe (raw boot): prints "ready", then polls COM1's line status
//! register and reads received bytes until a newline (at most 64), prints
//! `got <line>` and exits 0. Bytes the VMM queues in the receive FIFO are what the
//! host wrote to bulwark-vmm's standard input.
#![no_std]
#![no_main]

use tiny_guest::{exit, inb, print, COM1};

/// Line status register: bit 0 = data ready.
const LSR: u16 = COM1 + 5;

#[no_mangle]
extern "C" fn guest_main(_cpu: u64, _arg: u64) -> ! {
    print!("ready\n");
    let mut line = [0u8; 64];
    let mut n = 0;
    while n < line.len() {
        if inb(LSR) & 1 == 0 {
            continue;
        }
        let b = inb(COM1);
        if b == b'\n' {
            break;
        }
        line[n] = b;
        n += 1;
    }
    print!(
        "got {}\n",
        core::str::from_utf8(&line[..n]).unwrap_or("<not utf-8>")
    );
    exit(0)
}
