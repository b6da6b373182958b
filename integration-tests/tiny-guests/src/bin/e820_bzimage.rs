//! The e820 probe linked at 0x100200: the test wraps its flat binary into a bzImage
//! whose protected-mode code loads at 1 MiB, so this lands on the 64-bit entry
//! (load address + 0x200). See `tiny_guest::e820`.
#![no_std]
#![no_main]

#[no_mangle]
extern "C" fn guest_main(_cpu: u64, zero_page: u64) -> ! {
    tiny_guest::e820::report(zero_page)
}
