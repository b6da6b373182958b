//! placeholder
#![no_std]
#![no_main]

#[no_mangle]
extern "C" fn guest_main(_cpu: u64, _arg: u64) -> ! {
    tiny_guest::exit(1)
}
