//! The last page of the image (`.boot`, at 0xfffff000): from the x86 reset vector in
//! 16-bit real mode through 32-bit protected mode to 64-bit long mode with the first
//! 4 GiB identity-mapped, then `firmware_main`; plus the GDT, the SEV metadata and
//! the OVMF-style GUIDed footer table that `sev-snp-measure` and hypervisors read.
//! Offsets inside the page are fixed with `.org`, so every address below is an
//! assembler constant: `0xfffff000 + (label - boot_base)`.
//!
//! Memory it touches: the page tables at 0x9000 (PML4, PDPT, 4 page directories of
//! 2 MiB pages: the same tables `bulwark-vmm` builds for a direct boot) and the stack
//! below 0x18000 (`bulwark_firmware_abi::map`). GUIDs are written as their EFI byte
//! order (`bytes_le`); the host tests parse the built image with
//! `bulwark_firmware_abi::footer` and with `sev-snp-measure`.

core::arch::global_asm!(
    r#"
    .section .boot, "ax"
    .code16
boot_base:
start16:
    cli
    cld
    lgdtl %cs:(0xf000 + (gdt_ptr - boot_base))
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $(0xfffff000 + (start32 - boot_base))

    .code32
start32:
    movw $0x18, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    # PML4 and PDPT: zero, then one entry each chain to the page directories.
    movl $0x9000, %edi
    xorl %eax, %eax
    movl $2048, %ecx
    rep stosl
    movl $0xa003, 0x9000
    movl $0xb003, 0xa000
    movl $0xc003, 0xa008
    movl $0xd003, 0xa010
    movl $0xe003, 0xa018
    # 2048 directory entries: entry i maps 2 MiB at i << 21 (present, writable, large).
    movl $0xb000, %edi
    movl $0x83, %eax
    movl $2048, %ecx
1:
    movl %eax, (%edi)
    movl $0, 4(%edi)
    addl $0x200000, %eax
    addl $8, %edi
    loop 1b
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $0x9000, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax
    movl %eax, %cr0
    ljmpl $0x10, $(0xfffff000 + (start64 - boot_base))

    .code64
start64:
    movw $0x18, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movq $0x18000, %rsp
    xorl %ebp, %ebp
    call firmware_main
2:
    cli
    hlt
    jmp 2b

    .code16
    # Application processors under SEV-ES/SNP start here (the footer's reset block);
    # without SEV they wait for INIT-SIPI from the kernel and never come here. The
    # firmware does not run APs: they halt.
ap_reset:
    cli
3:
    hlt
    jmp 3b

    .balign 8
gdt:
    .quad 0
    .quad 0x00cf9b000000ffff    # 0x08: 32-bit code
    .quad 0x00af9b000000ffff    # 0x10: 64-bit code (the kernel's __BOOT_CS)
    .quad 0x00cf93000000ffff    # 0x18: data (__BOOT_DS)
gdt_end:
gdt_ptr:
    .word gdt_end - gdt - 1
    .long 0xfffff000 + (gdt - boot_base)

    # SEV metadata (OVMF's OvmfSevMetadata layout): "ASEV", size, version 1, count,
    # then (u32 GPA, u32 size, u32 type) per section; types 1 SEC_MEM, 2 SECRETS,
    # 3 CPUID, 0x10 KERNEL_HASHES. Addresses: bulwark_firmware_abi::map.
    .balign 16
sev_meta:
    .ascii "ASEV"
    .long sev_meta_end - sev_meta
    .long 1
    .long 7
    .long 0x7000, 0x1000, 1       # zero page
    .long 0x9000, 0x6000, 1       # page tables
    .long 0x10000, 0x8000, 1      # stack
    .long 0x20000, 0x10000, 1     # command line
    .long 0x18000, 0x1000, 0x10   # kernel hashes
    .long 0x19000, 0x1000, 2      # secrets
    .long 0x1a000, 0x1000, 3      # CPUID
sev_meta_end:

    # The GUIDed footer table, ending 32 bytes before the image's end; each entry is
    # its data, u16 size (data + 18), GUID.
    .org 0xf88
    # SEV metadata: offset of its header from the end of the image.
    .long 0x1000 - (sev_meta - boot_base)
    .word 22
    .byte 0x66, 0x65, 0x88, 0xdc, 0x4a, 0x98, 0x98, 0x47, 0xa7, 0x5e, 0x55, 0x85, 0xa7, 0xbf, 0x67, 0xcc
    # Kernel-hashes table: GPA and size of the area the VMM writes it in.
    .long 0x18000, 0x1000
    .word 26
    .byte 0x1f, 0x37, 0x55, 0x72, 0x3b, 0x3a, 0x04, 0x4b, 0x92, 0x7b, 0x1d, 0xa6, 0xef, 0xa8, 0xd4, 0x54
    # SEV-ES reset block: the APs' reset EIP.
    .long 0xfffff000 + (ap_reset - boot_base)
    .word 22
    .byte 0xde, 0x71, 0xf7, 0x00, 0x7e, 0x1a, 0xcb, 0x4f, 0x89, 0x0e, 0x68, 0xc7, 0x7e, 0x2f, 0xb4, 0x4e
    # The table's own footer: its total size.
    .word 88
    .byte 0xde, 0x82, 0xb5, 0x96, 0xb2, 0x1f, 0xf7, 0x45, 0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d

    .org 0xfe0
    .fill 16, 1, 0xf4

    # The reset vector, 0xfffffff0 (CS base 0xffff0000, IP 0xfff0).
    .org 0xff0
    .globl reset_vector
reset_vector:
    jmp start16
    .org 0x1000, 0xf4
"#,
    options(att_syntax)
);
