//! virtio interrupts end to end (raw boot, RSI = the rng device's GSI): programs an IDT
//! entry for vector 0x40, enables the local APIC, masks the 8259s and routes IOAPIC pin
//! RSI to vector 0x40 (edge, physical, APIC 0); then asks virtio-rng for bytes and
//! sleeps in `hlt` with interrupts enabled until the used ring has the buffer, so
//! nothing but the device's interrupt (a KVM irqfd on that GSI) can wake it. Checks
//! the device's InterruptStatus says "used buffer" and acknowledges it. Repeats 8
//! times; prints `irq ok: N interrupts` and exits 0 (1 on failure).
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU64, Ordering};

use tiny_guest::virtio::{self, reg, Mmio, Rng, F_WRITE};
use tiny_guest::{exit, outb, poke, print};

const VECTOR: u64 = 0x40;
const IDT: u64 = 0x1f8_0000;
const IOAPIC: u64 = 0xfec0_0000;
const LAPIC: u64 = 0xfee0_0000;
const BUF: u64 = 0x130_0000;

#[no_mangle]
static IRQ_COUNT: AtomicU64 = AtomicU64::new(0);

global_asm!(
    ".global irq_entry",
    "irq_entry:",
    "    push rax",
    "    lock inc qword ptr [rip + IRQ_COUNT]",
    "    mov rax, 0xfee000b0",
    "    mov dword ptr [rax], 0",
    "    pop rax",
    "    iretq",
);

extern "C" {
    fn irq_entry();
}

fn ioapic_write(reg: u32, value: u32) {
    // SAFETY: the IOAPIC's register window (IOREGSEL at +0, IOWIN at +0x10).
    unsafe {
        poke(IOAPIC, reg);
        poke(IOAPIC + 0x10, value);
    }
}

#[no_mangle]
extern "C" fn guest_main(_cpu: u64, gsi: u64) -> ! {
    // IDT: vector VECTOR only (the limit ends right after it).
    let handler = irq_entry as *const () as usize as u64;
    let entry = IDT + VECTOR * 16;
    // SAFETY: free RAM for the IDT; a 64-bit interrupt gate, selector 0x10 (the code
    // segment bulwark-vmm's long-mode entry uses).
    unsafe {
        poke::<u16>(entry, handler as u16);
        poke::<u16>(entry + 2, 0x10);
        poke::<u16>(entry + 4, 0x8e00);
        poke::<u16>(entry + 6, (handler >> 16) as u16);
        poke::<u32>(entry + 8, (handler >> 32) as u32);
        poke::<u32>(entry + 12, 0);
        let idtr: [u16; 5] = [
            (VECTOR * 16 + 15) as u16,
            IDT as u16,
            (IDT >> 16) as u16,
            (IDT >> 32) as u16,
            (IDT >> 48) as u16,
        ];
        asm!("lidt [{}]", in(reg) idtr.as_ptr(), options(nostack));
    }
    // Legacy PICs masked; local APIC on (spurious vector 0xff); IOAPIC pin -> VECTOR.
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    // SAFETY: the local APIC's spurious-interrupt vector register.
    unsafe { poke::<u32>(LAPIC + 0xf0, 0x1ff) };
    ioapic_write(0x10 + 2 * gsi as u32, VECTOR as u32);
    ioapic_write(0x11 + 2 * gsi as u32, 0);

    let Some(mmio) = Mmio::find(virtio::ID_RNG, 0) else {
        print!("FAIL no rng\n");
        exit(1)
    };
    let mut rng = Rng::new(mmio, 0).unwrap_or_else(|| exit(1));
    for round in 0..8 {
        let before = IRQ_COUNT.load(Ordering::SeqCst);
        rng.vq.set_desc(0, BUF, 32, F_WRITE, 0);
        rng.vq.push(0);
        rng.dev.notify(0);
        let mut used = None;
        for _ in 0..1_000_000 {
            // Interrupts off while checking, then `sti; hlt` (no window between them).
            // SAFETY: cli only affects this vCPU.
            unsafe { asm!("cli", options(nomem, nostack)) };
            used = rng.vq.pop_used();
            if used.is_some() {
                break;
            }
            // SAFETY: sleeps until an interrupt; the handler is installed.
            unsafe { asm!("sti", "hlt", options(nomem, nostack)) };
        }
        // The buffer may be seen before its interrupt is delivered: sleep for it.
        for _ in 0..1_000_000 {
            // SAFETY: as above.
            unsafe { asm!("cli", options(nomem, nostack)) };
            if IRQ_COUNT.load(Ordering::SeqCst) > before {
                break;
            }
            // SAFETY: as above.
            unsafe { asm!("sti", "hlt", options(nomem, nostack)) };
        }
        let after = IRQ_COUNT.load(Ordering::SeqCst);
        let status = rng.dev.read(reg::INTERRUPT_STATUS);
        rng.dev.write(reg::INTERRUPT_ACK, status);
        match used {
            Some((0, 32)) if after > before && status & 1 != 0 => {}
            _ => {
                print!("FAIL round {round}: used {used:?}, interrupts {before}->{after}, status {status:#x}\n");
                exit(1)
            }
        }
    }
    print!("irq ok: {} interrupts\n", IRQ_COUNT.load(Ordering::SeqCst));
    exit(0)
}
