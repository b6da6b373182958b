//! Drives QEMU's `edu` device (1234:11e8) passed through by bulwark-vmm (lab
//! scenario `vmm-vfio-edu`): scans bus 0 through ports 0xCF8/0xCFC and the secondary
//! bus of every PCI bridge (root port) on it, checks that the device sits behind a
//! PCIe root port whose memory window holds its BAR0, sizes and reads BAR0, checks
//! the identification and liveness registers, DMAs 2 KiB from its own RAM
//! into the device and back (checking the data), and takes the MSI that the device
//! raises, through its own IDT and the local APIC. Reports each step over COM1 as
//! `EDU-...` lines; exits 0 when everything passed, else 1.
//!
//! With boot argument (RSI) 1 it then keeps the device: halts forever, so the lab can
//! try to take the same device from a second VMM. With RSI 2 it leaves MSI off and
//! takes the interrupts as INTx instead: the IOAPIC pin named by the interrupt line
//! register, level-triggered, acknowledged at the device before the EOI. With RSI 3 it
//! first enables MSI, resets the secondary bus of its root port (Bridge Control bit
//! 6), checks that MSI reads disabled afterwards, and then runs as with RSI 0.
#![no_std]
#![no_main]

use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering};

use tiny_guest::idt::{self, LAPIC};
use tiny_guest::{exit, halt, pci, peek, poke, print};

const EDU_ID: u32 = 0x11e8_1234;
const MSI_VECTOR: u8 = 0x40;
/// DMA buffer in guest RAM (below edu's 28-bit DMA mask, above the guest image).
const DMA_BUF: u64 = 0x20_0000;
/// The device's internal buffer in its DMA address space.
const EDU_BUFFER: u64 = 0x4_0000;
/// At most 2 KiB per transfer (QEMU 7.2's edu aborts at the buffer's end).
const LEN: usize = 2048;

static MSI_COUNT: AtomicU64 = AtomicU64::new(0);
static INTX_COUNT: AtomicU64 = AtomicU64::new(0);
/// BAR0's address, for the INTx handler's acknowledgement.
static BAR0: AtomicU64 = AtomicU64::new(0);
const INTX_VECTOR: u8 = 0x41;
const IOAPIC: u64 = 0xfec0_0000;
static UNEXPECTED: AtomicU64 = AtomicU64::new(0);

global_asm!(
    ".global msi_entry",
    "msi_entry:",
    "    push rax",
    "    lock inc qword ptr [rip + {count}]",
    "    mov rax, 0xfee000b0",
    "    mov dword ptr [rax], 0",
    "    pop rax",
    "    iretq",
    ".global intx_entry",
    "intx_entry:",
    "    push rax",
    "    push rcx",
    "    lock inc qword ptr [rip + {intx}]",
    "    mov rax, qword ptr [rip + {bar0}]",
    "    mov ecx, dword ptr [rax + 0x24]",
    "    mov dword ptr [rax + 0x64], ecx",
    "    mov rax, 0xfee000b0",
    "    mov dword ptr [rax], 0",
    "    pop rcx",
    "    pop rax",
    "    iretq",
    ".global other_entry",
    "other_entry:",
    "    lock inc qword ptr [rip + {other}]",
    "    cli",
    "3:  hlt",
    "    jmp 3b",
    count = sym MSI_COUNT,
    other = sym UNEXPECTED,
    intx = sym INTX_COUNT,
    bar0 = sym BAR0,
);

extern "C" {
    fn msi_entry();
    fn intx_entry();
    fn other_entry();
}

/// A function on the bus: (bus, device), function 0.
#[derive(Clone, Copy)]
struct Pci(u8, u8);

fn cfg_read(d: Pci, reg: u8) -> u32 {
    pci::read32_on(d.0, d.1, u16::from(reg))
}

fn cfg_write(d: Pci, reg: u8, v: u32) {
    pci::write32_on(d.0, d.1, u16::from(reg), v)
}

/// The capability with ID `id` of `d`: its offset and the upper 16 bits of its header.
fn find_cap(d: Pci, id: u32) -> Option<(u8, u32)> {
    pci::capabilities_on(d.0, d.1)
        .map(|c| (c as u8, cfg_read(d, c as u8)))
        .find(|&(_, hdr)| hdr & 0xff == id)
        .map(|(c, hdr)| (c, hdr >> 16))
}

fn rd32(addr: u64) -> u32 {
    // SAFETY: BAR0 and LAPIC pages are identity-mapped device memory.
    unsafe { peek::<u32>(addr) }
}

fn wr32(addr: u64, v: u32) {
    // SAFETY: as for `rd32`.
    unsafe { poke::<u32>(addr, v) }
}

fn wr64(addr: u64, v: u64) {
    // SAFETY: as for `rd32`.
    unsafe { poke::<u64>(addr, v) }
}

fn rd64(addr: u64) -> u64 {
    // SAFETY: as for `rd32`.
    unsafe { peek::<u64>(addr) }
}

fn setup_interrupts() {
    idt::install(
        other_entry,
        &[(MSI_VECTOR, msi_entry), (INTX_VECTOR, intx_entry)],
    );
}

/// Starts one DMA transfer and waits for it; false on timeout.
fn dma(bar: u64, src: u64, dst: u64, to_ram: bool, irq: bool) -> bool {
    wr64(bar + 0x80, src);
    wr64(bar + 0x88, dst);
    wr64(bar + 0x90, LEN as u64);
    wr64(
        bar + 0x98,
        1 | if to_ram { 2 } else { 0 } | if irq { 4 } else { 0 },
    );
    for _ in 0..50_000_000u64 {
        if rd64(bar + 0x98) & 1 == 0 {
            return true;
        }
        core::hint::spin_loop();
    }
    false
}

fn wait_count(counter: &AtomicU64, at_least: u64) -> u64 {
    for _ in 0..200_000_000u64 {
        let n = counter.load(Ordering::SeqCst);
        if n >= at_least {
            return n;
        }
        core::hint::spin_loop();
    }
    counter.load(Ordering::SeqCst)
}

/// Routes IOAPIC pin `gsi` to `INTX_VECTOR` on APIC 0, level-triggered, active high.
fn ioapic_route(gsi: u32) {
    wr32(IOAPIC, 0x10 + 2 * gsi + 1);
    wr32(IOAPIC + 0x10, 0);
    wr32(IOAPIC, 0x10 + 2 * gsi);
    wr32(IOAPIC + 0x10, u32::from(INTX_VECTOR) | 1 << 15);
}

#[no_mangle]
extern "C" fn guest_main(_cpu: u64, arg: u64) -> ! {
    let mut ok = true;
    // 1. Bus 0, and behind each bridge its secondary bus: (device, its bridge).
    let mut found = None;
    for slot in 0..32u8 {
        let d = Pci(0, slot);
        let id = cfg_read(d, 0);
        if id == u32::MAX {
            continue;
        }
        let header = cfg_read(d, 0x0c) >> 16 & 0x7f;
        print!(
            "EDU-SCAN 00:{slot:02x}.0 {:04x}:{:04x} header={header}\n",
            id & 0xffff,
            id >> 16
        );
        if id == EDU_ID {
            found = Some((d, None));
        }
        if header == 1 {
            let secondary = (cfg_read(d, 0x18) >> 8) as u8;
            for sub in 0..32u8 {
                let e = Pci(secondary, sub);
                let id = cfg_read(e, 0);
                if id == u32::MAX {
                    continue;
                }
                print!(
                    "EDU-SCAN {secondary:02x}:{sub:02x}.0 {:04x}:{:04x} behind 00:{slot:02x}.0\n",
                    id & 0xffff,
                    id >> 16
                );
                if id == EDU_ID {
                    found = Some((e, Some(d)));
                }
            }
        }
    }
    let Some((dev, bridge)) = found else {
        print!("EDU-FOUND none\n");
        exit(1)
    };
    print!("EDU-FOUND {:02x}:{:02x}.0\n", dev.0, dev.1);
    // The bridge above it is a PCIe root port (capability 0x10, port type 4).
    let port_window = match bridge {
        Some(b) => {
            let port_type = find_cap(b, 0x10).map(|(_, flags)| flags >> 4 & 0xf);
            let w = cfg_read(b, 0x20);
            let (base, limit) = (
                u64::from(w & 0xfff0) << 16,
                u64::from(w >> 16 & 0xfff0) << 16 | 0xf_ffff,
            );
            let is_root_port = port_type == Some(4);
            print!(
                "EDU-PORT {:02x}:{:02x}.0 root-port={is_root_port} window={base:#x}-{limit:#x}\n",
                b.0, b.1
            );
            ok &= is_root_port;
            Some((base, limit))
        }
        None => {
            print!("EDU-PORT none\n");
            ok = false;
            None
        }
    };

    // 2. BAR0: size it, restore it, read it.
    let bar = cfg_read(dev, 0x10);
    cfg_write(dev, 0x10, u32::MAX);
    let mask = cfg_read(dev, 0x10);
    cfg_write(dev, 0x10, bar);
    let size = !(mask & !0xf) as u64 + 1;
    let addr = u64::from(bar & !0xf);
    let back = cfg_read(dev, 0x10);
    let in_window = port_window.is_some_and(|(b, l)| addr >= b && addr + size - 1 <= l);
    let bar_ok = size == 0x10_0000 && back == bar && addr != 0 && in_window;
    print!(
        "EDU-BAR0 addr={addr:#x} size={size:#x} restored={} in-port-window={in_window} {}\n",
        back == bar,
        if bar_ok { "ok" } else { "bad" }
    );
    ok &= bar_ok;
    // A move is refused: the register keeps its address.
    cfg_write(dev, 0x10, bar.wrapping_add(0x100_0000));
    let after_move = cfg_read(dev, 0x10);
    print!("EDU-BAR-MOVE refused={}\n", after_move == bar);
    ok &= after_move == bar;

    // 3. Memory decode and bus master on.
    let cmd = cfg_read(dev, 0x04);
    cfg_write(dev, 0x04, (cmd & 0xffff & !0x400) | 0x6);
    BAR0.store(addr, Ordering::SeqCst);

    // 4. Identification and liveness (the device inverts what is written).
    let ident = rd32(addr);
    wr32(addr + 4, 0x1234_5678);
    let live = rd32(addr + 4);
    let id_ok = ident & 0xff == 0xed && live == !0x1234_5678u32;
    print!(
        "EDU-IDENT ident={ident:#010x} liveness={live:#010x} {}\n",
        if id_ok { "ok" } else { "bad" }
    );
    ok &= id_ok;

    // 4b. With RSI 3: a secondary bus reset through the root port, with MSI enabled
    // before it; afterwards MSI must read disabled (the device was reset).
    if arg == 3 {
        let (Some(b), Some((cap, ctrl))) = (bridge, find_cap(dev, 5)) else {
            print!("EDU-BUS-RESET no bridge or no MSI\n");
            exit(1)
        };
        cfg_write(dev, cap, (ctrl | 1) << 16 | (cfg_read(dev, cap) & 0xffff));
        let before = cfg_read(dev, cap) >> 16 & 1 == 1;
        let bc = cfg_read(b, 0x3c);
        cfg_write(b, 0x3c, bc | 1 << 22);
        cfg_write(b, 0x3c, bc & !(1 << 22));
        let after = cfg_read(dev, cap) >> 16 & 1 == 1;
        let reset_ok = before && !after;
        print!(
            "EDU-BUS-RESET msi-before={before} msi-after={after} {}\n",
            if reset_ok { "ok" } else { "bad" }
        );
        ok &= reset_ok;
        // A reset device decodes nothing until its driver enables it again.
        let cmd = cfg_read(dev, 0x04);
        cfg_write(dev, 0x04, (cmd & 0xffff & !0x400) | 0x6);
    }

    // 5. MSI (or, with RSI 2, INTx through the IOAPIC).
    setup_interrupts();
    let intx = arg == 2;
    if intx {
        let r = cfg_read(dev, 0x3c);
        let (line, pin) = (r & 0xff, r >> 8 & 0xff);
        let ok_pin = (1..=4).contains(&pin) && (16..=23).contains(&line);
        print!(
            "EDU-INTX-ROUTE pin={pin} line={line} {}\n",
            if ok_pin { "ok" } else { "bad" }
        );
        ok &= ok_pin;
        ioapic_route(line);
    } else {
        let Some((cap, ctrl)) = find_cap(dev, 5) else {
            print!("EDU-MSI no capability\n");
            exit(1)
        };
        let is64 = ctrl & 0x80 != 0;
        cfg_write(dev, cap + 4, LAPIC as u32);
        if is64 {
            cfg_write(dev, cap + 8, 0);
            cfg_write(dev, cap + 12, u32::from(MSI_VECTOR));
        } else {
            cfg_write(dev, cap + 8, u32::from(MSI_VECTOR));
        }
        cfg_write(dev, cap, (ctrl | 1) << 16 | (cfg_read(dev, cap) & 0xffff));
        let enabled = cfg_read(dev, cap) >> 16 & 1 == 1;
        print!("EDU-MSI-ENABLE cap={cap:#x} 64bit={is64} enabled={enabled}\n");
        ok &= enabled;
    }

    // 6. DMA: RAM -> device -> RAM (the second raises the MSI when done).
    for i in 0..LEN as u64 {
        // SAFETY: the DMA buffer is guest RAM that nothing else uses.
        unsafe {
            poke::<u8>(DMA_BUF + i, (i * 7 + 3) as u8);
            poke::<u8>(DMA_BUF + 0x1000 + i, 0);
        }
    }
    let t1 = dma(addr, DMA_BUF, EDU_BUFFER, false, false);
    let t2 = dma(addr, EDU_BUFFER, DMA_BUF + 0x1000, true, true);
    let mut same = 0;
    for i in 0..LEN as u64 {
        // SAFETY: as above.
        if unsafe { peek::<u8>(DMA_BUF + 0x1000 + i) } == (i * 7 + 3) as u8 {
            same += 1;
        }
    }
    let dma_ok = t1 && t2 && same == LEN;
    print!(
        "EDU-DMA {same} of {LEN} bytes back {}\n",
        if dma_ok { "ok" } else { "bad" }
    );
    ok &= dma_ok;
    let counter = if intx { &INTX_COUNT } else { &MSI_COUNT };
    let n = wait_count(counter, 1);
    wr32(addr + 0x64, rd32(addr + 0x24));
    // 7. And once more through the interrupt-raise register.
    wr32(addr + 0x60, 0x1);
    let m = wait_count(counter, n + 1);
    wr32(addr + 0x64, rd32(addr + 0x24));
    let irq_ok = n >= 1 && m > n && UNEXPECTED.load(Ordering::SeqCst) == 0;
    let kind = if intx { "INTX" } else { "MSI" };
    print!(
        "EDU-{kind} after-dma={n} after-raise={m} {}\n",
        if irq_ok { "ok" } else { "bad" }
    );
    ok &= irq_ok;

    print!("EDU-DONE {}\n", if ok { "pass" } else { "fail" });
    if arg == 1 {
        print!("EDU-HOLD\n");
        halt()
    }
    exit(if ok { 0 } else { 1 })
}
