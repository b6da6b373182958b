//! virtio-pci end to end (Linux 64-bit boot, RSI = zero page, `machine.acpi: false`):
//! scans PCI bus 0 through ports 0xCF8/0xCFC, checks the host bridge at 00.0, and for
//! each modern virtio function found (vendor 0x1af4, device 0x1040 + id): walks its
//! capabilities, sizes BAR0 and sees a move refused, programs its MSI-X table (entry
//! 0, configuration changes, to vector 0x40; entry 1, the queue, to vector 0x41 + k
//! for the k-th function; APIC 0), enables MSI-X and brings the device up with its
//! own virtio-pci driver. Every request then waits in `sti; hlt` for the queue's
//! MSI-X interrupt (its own IDT entry, LAPIC EOI):
//! - disk `rootfs`: SHA-256 of `rootfs_len` bytes against `rootfs_sha256=`, a write
//!   and a read past the end refused; disk `scratch`: 64 KiB written, flushed, read
//!   back (the checks of the `virtio-blk` guest);
//! - rng: 64 bytes, four times; then with the queue's vector masked a request
//!   completes without an interrupt while its PBA bit is set, and unmasking delivers
//!   it (the same with the function mask).
//!
//! Exits 0 when all passed, 1 on a failed check, 3 on an unexpected interrupt; with
//! `hold=1` on the command line it halts instead of exiting after the last line, so
//! the host can read the VMM's state.
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU64, Ordering};

use tiny_guest::blkcheck::{check_rootfs, check_scratch, disk_id, fail, BUF_A};
use tiny_guest::idt::{self, Handler};
use tiny_guest::virtio::{self, Blk, Rng, F_WRITE};
use tiny_guest::virtio_pci::VirtioPci;
use tiny_guest::{exit, pci, print};

const CONFIG_VECTOR: u8 = 0x40;
const QUEUE_VECTOR: u8 = 0x41;
const MAX_FUNCTIONS: usize = 4;

/// Interrupts per vector: config, then the queue of function 0..4.
#[no_mangle]
static IRQS: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

global_asm!(
    ".macro irq_stub name, slot",
    ".global \\name",
    "\\name:",
    "    push rax",
    "    lock inc qword ptr [rip + IRQS + 8 * \\slot]",
    "    mov rax, 0xfee000b0",
    "    mov dword ptr [rax], 0",
    "    pop rax",
    "    iretq",
    ".endm",
    "irq_stub irq_config, 0",
    "irq_stub irq_queue0, 1",
    "irq_stub irq_queue1, 2",
    "irq_stub irq_queue2, 3",
    "irq_stub irq_queue3, 4",
    ".global irq_other",
    "irq_other:",
    "    mov al, 3",
    "    out 0xf4, al",
    "    cli",
    "2:  hlt",
    "    jmp 2b",
);

extern "C" {
    fn irq_config();
    fn irq_queue0();
    fn irq_queue1();
    fn irq_queue2();
    fn irq_queue3();
    fn irq_other();
}

fn setup_interrupts() {
    let queues: [Handler; MAX_FUNCTIONS] = [irq_queue0, irq_queue1, irq_queue2, irq_queue3];
    let mut gates = [(CONFIG_VECTOR, irq_config as Handler); MAX_FUNCTIONS + 1];
    for (k, h) in queues.into_iter().enumerate() {
        gates[k + 1] = (QUEUE_VECTOR + k as u8, h);
    }
    idt::install(irq_other, &gates);
}

fn irqs(slot: usize) -> u64 {
    IRQS[slot].load(Ordering::SeqCst)
}

/// Sleeps in `hlt` until interrupt counter `slot` reaches `at_least` (bounded).
fn await_irqs(slot: usize, at_least: u64) -> u64 {
    for _ in 0..1_000_000 {
        // SAFETY: cli/sti only affect this vCPU; `sti; hlt` leaves no window.
        unsafe { asm!("cli", options(nomem, nostack)) };
        if irqs(slot) >= at_least {
            // SAFETY: as above.
            unsafe { asm!("sti", options(nomem, nostack)) };
            break;
        }
        // SAFETY: as above; the handlers are installed.
        unsafe { asm!("sti", "hlt", options(nomem, nostack)) };
    }
    irqs(slot)
}

/// BAR0 sizing works and a move is refused (the register keeps the address).
fn check_bar(f: &VirtioPci) {
    let addr = pci::read32(f.dev, 0x10);
    pci::write32(f.dev, 0x10, u32::MAX);
    let mask = pci::read32(f.dev, 0x10);
    pci::write32(f.dev, 0x10, addr);
    let size = !(mask & !0xf) + 1;
    pci::write32(f.dev, 0x10, 0xc000_0000);
    if pci::read32(f.dev, 0x10) != addr || size == 0 || !size.is_power_of_two() {
        fail("BAR0 sizing or refused move");
    }
    print!(
        "00:{:02x}.0 bar0 {:#x} size {:#x}, move refused\n",
        f.dev, addr, size
    );
}

fn blk(f: VirtioPci, k: usize, cmdline: &[u8]) {
    let mut blk = Blk::new(f, k as u64 * 4, virtio::DATA_AREA + k as u64 * 64)
        .unwrap_or_else(|| fail("virtio-blk init"));
    blk.halt_wait = true;
    let (raw, len) = disk_id(&mut blk);
    let id = &raw[..len];
    print!(
        "disk 00:{:02x}.0: {} sectors, id {}\n",
        f.dev,
        blk.capacity,
        core::str::from_utf8(id).unwrap_or("?")
    );
    match id {
        b"rootfs" => check_rootfs(&mut blk, cmdline),
        b"scratch" => check_scratch(&mut blk),
        _ => {}
    }
    let n = blk.completions;
    let got = await_irqs(k + 1, n);
    if got < n {
        fail("missing MSI-X interrupts for disk requests");
    }
    print!(
        "disk 00:{:02x}.0: {n} requests, {got} MSI-X interrupts\n",
        f.dev
    );
}

fn rng(f: VirtioPci, k: usize) {
    let slot = k + 1;
    let mut rng = Rng::new(f, k as u64 * 4).unwrap_or_else(|| fail("virtio-rng init"));
    rng.halt_wait = true;
    for _ in 0..4 {
        virtio::fill_words(BUF_A, 64, |_| 0);
        let before = irqs(slot);
        let got = rng.fill(BUF_A, 64).unwrap_or_else(|| fail("rng timeout"));
        if got != 64 || virtio::check_words(BUF_A, 64, |_| 0) {
            fail("rng bytes");
        }
        if await_irqs(slot, before + 1) <= before {
            fail("no MSI-X interrupt for an rng request");
        }
    }
    print!("rng ok (4 x 64 bytes, {} MSI-X interrupts)\n", irqs(slot));
    // Masked: the request completes, the message waits in the PBA until unmask.
    for function_mask in [false, true] {
        let before = irqs(slot);
        if function_mask {
            f.msix_control(true, true);
        } else {
            f.mask(1, true);
        }
        rng.halt_wait = false;
        rng.vq.set_desc(0, BUF_A, 16, F_WRITE, 0);
        rng.vq.push(0);
        tiny_guest::virtio::Transport::notify(&f, 0);
        if rng.vq.wait_used(virtio::SPINS).is_none() {
            fail("masked request did not complete");
        }
        for _ in 0..200_000 {
            core::hint::spin_loop();
        }
        let pending = f.pending();
        if irqs(slot) != before || pending & 2 == 0 {
            print!(
                "FAIL masked: interrupts {before}->{}, PBA {pending:#x}\n",
                irqs(slot)
            );
            exit(1)
        }
        if function_mask {
            f.msix_control(true, false);
        } else {
            f.mask(1, false);
        }
        if await_irqs(slot, before + 1) <= before || f.pending() != 0 {
            fail("pending MSI-X message not delivered on unmask");
        }
        print!(
            "msix {} mask ok: pending while masked, delivered on unmask\n",
            if function_mask { "function" } else { "vector" }
        );
    }
}

#[no_mangle]
extern "C" fn guest_main(_cpu: u64, zero_page: u64) -> ! {
    let cmdline = virtio::cmdline(zero_page);
    setup_interrupts();
    if pci::id(0) != Some((0x1b36, 0x0008)) {
        fail("no host bridge at 00:00.0");
    }
    let mut found = 0usize;
    let (mut disks, mut rngs) = (0, 0);
    for dev in 1..32u8 {
        let Some((vendor, device)) = pci::id(dev) else {
            continue;
        };
        let Some(f) = VirtioPci::probe(dev) else {
            print!("00:{dev:02x}.0 {vendor:04x}:{device:04x} (not virtio)\n");
            continue;
        };
        let k = found;
        found += 1;
        if k >= MAX_FUNCTIONS {
            fail("more virtio functions than this guest handles");
        }
        print!(
            "virtio-pci 00:{dev:02x}.0 {vendor:04x}:{device:04x} id {} msix vectors {}\n",
            f.id, f.vectors
        );
        check_bar(&f);
        f.set_entry(0, CONFIG_VECTOR, false);
        for v in 1..f.vectors {
            f.set_entry(v, QUEUE_VECTOR + k as u8, false);
        }
        f.msix_control(true, false);
        match u32::from(f.id) {
            virtio::ID_BLOCK => {
                blk(f, k, cmdline);
                disks += 1;
            }
            virtio::ID_RNG => {
                rng(f, k);
                rngs += 1;
            }
            _ => {}
        }
    }
    if irqs(0) != 0 {
        fail("unexpected configuration-change interrupt");
    }
    print!("virtio-pci done: {found} functions, {disks} disks, {rngs} rng\n");
    if virtio::cmdline_value(cmdline, b"hold") == Some(b"1") {
        tiny_guest::halt()
    }
    exit(0)
}
