//! Where the firmware and the pages it owns live in guest-physical memory. Fixed
//! addresses, the same on every boot: the launch measurement covers the firmware and
//! the hashes page at these places, and the SEV metadata in the firmware image
//! declares the same pages (so `sev-snp-measure` measures them where the VMM puts them).

/// Size of the firmware image: exactly 64 KiB, padded.
pub const FIRMWARE_SIZE: u64 = 0x1_0000;
/// Where the image ends: 4 GiB, like OVMF (the reset vector is its last 16 bytes).
pub const FIRMWARE_END: u64 = 1 << 32;
/// Where the image starts.
pub const FIRMWARE_BASE: u64 = FIRMWARE_END - FIRMWARE_SIZE;
/// The x86 reset vector, inside the image.
pub const RESET_VECTOR: u64 = FIRMWARE_END - 16;

/// One page.
pub const PAGE: u64 = 0x1000;

/// The Linux zero page (`boot_params`) the firmware builds for the kernel.
pub const ZERO_PAGE: u64 = 0x7000;
/// The firmware's identity page tables: PML4, PDPT and four page directories mapping
/// the first 4 GiB with 2 MiB pages (the kernel is entered with them).
pub const PAGE_TABLES: u64 = 0x9000;
/// Bytes of page tables.
pub const PAGE_TABLES_SIZE: u64 = 6 * PAGE;
/// The firmware's stack, growing down from `STACK + STACK_SIZE`.
pub const STACK: u64 = 0x1_0000;
/// Bytes of stack.
pub const STACK_SIZE: u64 = 0x8000;
/// The page holding the kernel-hashes table (the SNP `KERNEL_HASHES` section).
pub const HASHES_PAGE: u64 = 0x1_8000;
/// The kernel-hashes table itself, at the start of its page.
pub const HASH_TABLE: u64 = HASHES_PAGE;
/// The SNP secrets page (declared for SNP; unused without it).
pub const SECRETS_PAGE: u64 = 0x1_9000;
/// The SNP CPUID page (declared for SNP; unused without it).
pub const CPUID_PAGE: u64 = 0x1_a000;
/// The boot-info page the VMM writes ([`crate::boot_info`]).
pub const BOOT_INFO: u64 = 0x1_b000;
/// The command line the kernel gets: the firmware copies the staged one here.
pub const CMDLINE: u64 = 0x2_0000;
/// Largest command line, with its NUL.
pub const CMDLINE_MAX: u64 = 0x1_0000;
/// Where the VMM stages the command line (the firmware copies it to [`CMDLINE`]).
pub const CMDLINE_STAGING: u64 = 0x3_0000;
/// Where the protected-mode kernel runs (the setup header's `code32_start`; the kernel
/// is entered at this address + 0x200, its 64-bit entry).
pub const KERNEL_LOAD: u64 = 0x10_0000;
/// Everything below this is the firmware's or the VMM's boot area; staged kernel and
/// initrd must lie above it.
pub const LOW_AREA_END: u64 = 0x4_0000;

/// The pages the firmware owns (written by it, zero at launch): the SNP `SEC_MEM`
/// sections, in the order the SEV metadata lists them.
pub const SCRATCH: [(u64, u64); 4] = [
    (ZERO_PAGE, PAGE),
    (PAGE_TABLES, PAGE_TABLES_SIZE),
    (STACK, STACK_SIZE),
    (CMDLINE, CMDLINE_MAX),
];
