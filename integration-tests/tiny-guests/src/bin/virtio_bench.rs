//! The guest of `bench/virtio`: bootable by bulwark-vmm and by `qemu-system-x86_64 -M
//! microvm` alike, through the PVH entry (Xen ELF note 18). In 32-bit protected mode
//! with EBX = hvm_start_info it switches to long mode (its own identity map of the
//! first 4 GiB, 2 MiB pages, built at link time) and enters the usual `_start` with
//! RSI = the start info. It reads its command line from the start info: the first
//! virtio-blk device announced by a `virtio_mmio.device=<size>@<base>:<irq>` fragment
//! (bulwark-vmm: `4K@0xd0000000:5`), or else by probing QEMU microvm's virtio-mmio
//! transports (QEMU does not announce them on a PVH kernel's command line), then
//! - `bench-read start` / `bench-read done`: reads `read_mib=` MiB (default 64) in
//!   64 KiB requests, sequentially, wrapping around the disk;
//! - `bench-lat start` / `bench-lat done`: `lat_reqs=` (default 2000) 512-byte reads
//!   of sector 0, one at a time.
//!
//! The host times the lines. Ends through the debug-exit port (0; 1 on failure).
#![no_std]
#![no_main]

use core::arch::global_asm;

use tiny_guest::virtio::{self, Blk, Mmio, BLK_IN};
use tiny_guest::{exit, peek, print};

global_asm!(
    ".pushsection .note.Xen, \"a\", @note",
    ".balign 4",
    ".long 4",
    ".long 4",
    ".long 18",
    ".asciz \"Xen\"",
    ".long pvh_bench_start",
    ".popsection",
    ".pushsection .text.pvh, \"ax\"",
    ".code32",
    ".global pvh_bench_start",
    "pvh_bench_start:",
    "    movl %ebx, %esi",
    "    lgdt bench_gdt_ptr",
    "    movl %cr4, %eax",
    "    orl $0x20, %eax",
    "    movl %eax, %cr4",
    "    movl $bench_pml4, %eax",
    "    movl %eax, %cr3",
    "    movl $0xc0000080, %ecx",
    "    rdmsr",
    "    orl $0x100, %eax",
    "    wrmsr",
    "    movl %cr0, %eax",
    "    orl $0x80000001, %eax",
    "    movl %eax, %cr0",
    "    ljmp $0x08, $bench_long",
    ".code64",
    "bench_long:",
    "    movw $0x10, %ax",
    "    movw %ax, %ds",
    "    movw %ax, %es",
    "    movw %ax, %ss",
    "    xorl %edi, %edi",
    "    jmp _start",
    ".popsection",
    ".pushsection .data.bench, \"aw\"",
    ".balign 8",
    "bench_gdt:",
    "    .quad 0",
    "    .quad 0x00af9a000000ffff",
    "    .quad 0x00cf92000000ffff",
    "bench_gdt_ptr:",
    "    .word 23",
    "    .long bench_gdt",
    ".balign 4096",
    "bench_pml4:",
    "    .quad bench_pdpt + 3",
    "    .fill 511, 8, 0",
    "bench_pdpt:",
    "    .quad bench_pd + 3",
    "    .quad bench_pd + 0x1003",
    "    .quad bench_pd + 0x2003",
    "    .quad bench_pd + 0x3003",
    "    .fill 508, 8, 0",
    "bench_pd:",
    "    .set bench_i, 0",
    "    .rept 2048",
    "    .quad (bench_i << 21) | 0x83",
    "    .set bench_i, bench_i + 1",
    "    .endr",
    ".popsection",
    options(att_syntax)
);

const BUF: u64 = 0x130_0000;
const CHUNK: u32 = 64 * 1024;

fn start_info_cmdline(start_info: u64) -> &'static [u8] {
    // SAFETY: the VMM put hvm_start_info at `start_info` (EBX at the PVH entry) and
    // the NUL-terminated command line where its cmdline_paddr (offset 24) points.
    unsafe {
        let p: u64 = peek(start_info + 24);
        if p == 0 {
            return &[];
        }
        let mut n = 0;
        while n < 4096 && peek::<u8>(p + n) != 0 {
            n += 1;
        }
        core::slice::from_raw_parts(p as *const u8, n as usize)
    }
}

/// `virtio_mmio.device=<size>@<base>:<irq>` fragments, any size.
fn devices(cmdline: &[u8]) -> impl Iterator<Item = u64> + '_ {
    cmdline.split(|&b| b == b' ').filter_map(|w| {
        let rest = w.strip_prefix(b"virtio_mmio.device=")?;
        let at = rest.iter().position(|&b| b == b'@')?;
        let rest = &rest[at + 1..];
        let colon = rest.iter().position(|&b| b == b':')?;
        virtio::parse_u64(&rest[..colon])
    })
}

#[no_mangle]
extern "C" fn guest_main(_cpu: u64, start_info: u64) -> ! {
    // SAFETY: the start info's first word is its magic.
    if unsafe { peek::<u32>(start_info) } != 0x336e_c578 {
        print!("FAIL not entered through PVH\n");
        exit(1)
    }
    let cmdline = start_info_cmdline(start_info);
    let read_mib = virtio::cmdline_value(cmdline, b"read_mib")
        .and_then(virtio::parse_u64)
        .unwrap_or(64);
    let lat_reqs = virtio::cmdline_value(cmdline, b"lat_reqs")
        .and_then(virtio::parse_u64)
        .unwrap_or(2000);
    // QEMU does not put the fragments on a PVH kernel's command line: then probe
    // microvm's transports (0xfeb00000, 512 bytes apart).
    let Some(mmio) = devices(cmdline)
        .chain((0..32).map(|i| 0xfeb0_0000 + i * 0x200))
        .filter_map(Mmio::probe)
        .find(|m| m.device_id() == virtio::ID_BLOCK)
    else {
        print!("FAIL no virtio-blk device on the command line: ");
        for &b in cmdline {
            tiny_guest::outb(tiny_guest::COM1, b);
        }
        print!("\n");
        exit(1)
    };
    let mut blk = Blk::new(mmio, 0, virtio::DATA_AREA).unwrap_or_else(|| {
        print!("FAIL virtio-blk init\n");
        exit(1)
    });
    let chunk_sectors = u64::from(CHUNK / 512);
    if blk.capacity < chunk_sectors {
        print!("FAIL disk smaller than 64 KiB\n");
        exit(1)
    }
    let chunks = read_mib * 16;
    print!("bench-read start\n");
    let mut sector = 0;
    for _ in 0..chunks {
        if sector + chunk_sectors > blk.capacity {
            sector = 0;
        }
        if blk.request(BLK_IN, sector, BUF, CHUNK).0 != 0 {
            print!("FAIL read at sector {sector}\n");
            exit(1)
        }
        sector += chunk_sectors;
    }
    print!("bench-read done\n");
    print!("bench-lat start\n");
    for _ in 0..lat_reqs {
        if blk.request(BLK_IN, 0, BUF, 512).0 != 0 {
            print!("FAIL small read\n");
            exit(1)
        }
    }
    print!("bench-lat done\n");
    exit(0)
}
