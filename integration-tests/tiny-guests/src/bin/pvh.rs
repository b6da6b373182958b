//! A vmlinux-style ELF with a PVH entry (Xen ELF note 18): entered in 32-bit protected
//! mode with EBX = hvm_start_info, it checks the magic, prints "pvh ok", and exits 0
//! (1 on a bad magic). Entered through the 64-bit Linux entry instead, it exits 2.
#![no_std]
#![no_main]

use core::arch::global_asm;

use tiny_guest::{exit, print};

global_asm!(
    ".pushsection .note.Xen, \"a\", @note",
    ".balign 4",
    ".long 4",
    ".long 4",
    ".long 18",
    ".asciz \"Xen\"",
    ".long pvh_start",
    ".popsection",
    ".pushsection .text.pvh, \"ax\"",
    ".code32",
    ".global pvh_start",
    "pvh_start:",
    "    mov edx, 0x3f8",
    "    mov ecx, 1",
    "    cmp dword ptr [ebx], 0x336ec578",
    "    jne 3f",
    "    mov al, 'p'",
    "    out dx, al",
    "    mov al, 'v'",
    "    out dx, al",
    "    mov al, 'h'",
    "    out dx, al",
    "    mov al, ' '",
    "    out dx, al",
    "    mov al, 'o'",
    "    out dx, al",
    "    mov al, 'k'",
    "    out dx, al",
    "    mov al, 10",
    "    out dx, al",
    "    xor ecx, ecx",
    "3:  mov eax, ecx",
    "    mov edx, 0xf4",
    "    out dx, al",
    "4:  cli",
    "    hlt",
    "    jmp 4b",
    ".code64",
    ".popsection",
);

#[no_mangle]
extern "C" fn guest_main(_cpu: u64, _arg: u64) -> ! {
    print!("entered through the 64-bit entry\n");
    exit(2)
}
