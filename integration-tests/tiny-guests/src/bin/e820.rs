//! The e820 probe booted as a vmlinux-style ELF (see `tiny_guest::e820`).
#![no_std]
#![no_main]

#[no_mangle]
extern "C" fn guest_main(_cpu: u64, zero_page: u64) -> ! {
    tiny_guest::e820::report(zero_page)
}
