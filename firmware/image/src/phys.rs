//! Guest-physical memory as byte slices. With the first 4 GiB identity-mapped, a
//! physical address is a pointer; these functions are the firmware's only casts from
//! address to slice, and their callers pass ranges that
//! `bulwark_firmware_abi::check` has already accepted (inside RAM, not overlapping the
//! firmware's pages or one another).

use core::arch::asm;

/// The bytes at `[addr, addr + len)`.
///
/// # Safety
/// The range must be RAM inside the identity map, must not start at 0, and no mutable
/// slice from [`bytes_mut`] may overlap it while the result lives.
pub unsafe fn bytes(addr: u64, len: u64) -> &'static [u8] {
    // SAFETY: the caller's contract (identity-mapped RAM, non-null, unaliased by any
    // mutable slice); u64 fits usize on x86-64.
    unsafe { core::slice::from_raw_parts(addr as *const u8, len as usize) }
}

/// The bytes at `[addr, addr + len)`, writable.
///
/// # Safety
/// As [`bytes`], and no other slice may overlap it while the result lives.
pub unsafe fn bytes_mut(addr: u64, len: u64) -> &'static mut [u8] {
    // SAFETY: the caller's contract (identity-mapped RAM, non-null, exclusive).
    unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, len as usize) }
}

/// Enters a Linux kernel at its 64-bit entry with RSI = the zero page, interrupts
/// off, the firmware's GDT (CS 0x10, data 0x18) and identity map still loaded, as the
/// 64-bit boot protocol asks.
///
/// # Safety
/// `entry` must be the verified kernel's 64-bit entry and `zero_page` its boot
/// parameters; nothing of the firmware runs afterwards.
pub unsafe fn enter_kernel(entry: u64, zero_page: u64) -> ! {
    // SAFETY: the caller's contract; the jump never returns.
    unsafe {
        asm!(
            "cli",
            "xor ebp, ebp",
            "xor edi, edi",
            "jmp {entry}",
            entry = in(reg) entry,
            in("rsi") zero_page,
            options(noreturn, nostack)
        )
    }
}
