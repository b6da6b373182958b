//! A vmlinux-style ELF with a PVH entry (Xen ELF note 18): entered in 32-bit protected
//! mode with EBX = hvm_start_info, it checks the magic, prints "pvh ok", checks that
//! `rsdp_paddr` points at "RSD PTR " and exits 0 (1 on a bad magic, 3 without an RSDP
//! pointer, 4 when the pointer does not lead to an RSDP). Entered through the 64-bit
//! Linux entry instead, it exits 2.
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
    // hvm_start_info.rsdp_paddr (offset 32): 0 exits 3, no "RSD PTR " there exits 4.
    "    mov ecx, 3",
    "    mov eax, [ebx + 32]",
    "    test eax, eax",
    "    jz 3f",
    "    mov ecx, 4",
    "    cmp dword ptr [eax], 0x20445352",
    "    jne 3f",
    "    cmp dword ptr [eax + 4], 0x20525450",
    "    jne 3f",
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
