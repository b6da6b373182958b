//! One vCPU: its architectural set-up (CPUID, MSRs, FPU, LAPIC, registers) and the
//! run loop that handles every exit reason.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kvm_bindings::{
    kvm_fpu, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_segment, CpuId, Msrs,
    KVM_MP_STATE_RUNNABLE, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use serde::Serialize;

use crate::boot::{gdt_entries, EntryMode, EntryState};
use crate::config::ApStart;
use crate::control::{Control, ExitReason};
use crate::devices::{BusAction, Buses};
use crate::layout::{BOOT_GDT_ADDR, PML4_ADDR};

/// Per-vCPU exit counters.
#[derive(Debug, Default)]
pub struct VcpuStats {
    /// All exits to the VMM.
    pub exits: AtomicU64,
    /// Port I/O exits.
    pub pio: AtomicU64,
    /// MMIO exits.
    pub mmio: AtomicU64,
}

/// A snapshot of [`VcpuStats`].
#[derive(Debug, Clone, Serialize)]
pub struct VcpuStatsSnapshot {
    /// vCPU index.
    pub index: u8,
    /// All exits.
    pub exits: u64,
    /// Port I/O exits.
    pub pio_exits: u64,
    /// MMIO exits.
    pub mmio_exits: u64,
}

impl VcpuStats {
    /// Reads the counters.
    pub fn snapshot(&self, index: u8) -> VcpuStatsSnapshot {
        VcpuStatsSnapshot {
            index,
            exits: self.exits.load(Ordering::Relaxed),
            pio_exits: self.pio.load(Ordering::Relaxed),
            mmio_exits: self.mmio.load(Ordering::Relaxed),
        }
    }
}

/// Architectural set-up failures.
#[derive(Debug, thiserror::Error)]
#[error("vCPU {index}: {what}: {source}")]
pub struct SetupError {
    index: u8,
    what: &'static str,
    source: kvm_ioctls::Error,
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// The MSRs every vCPU starts with: SYSCALL/SYSENTER targets cleared, TSC 0, fast
/// strings enabled, MTRRs enabled with write-back default type.
fn boot_msrs() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, 1),
        (MSR_MTRR_DEF_TYPE, (1 << 11) | 6),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24);
    let limit = (entry & 0xffff) | (((entry >> 48) & 0xf) << 16);
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base,
        limit: if g == 1 {
            ((limit << 12) | 0xfff) as u32
        } else {
            limit as u32
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Configures vCPU `index` of `count` for `entry`.
pub fn configure(
    vcpu: &VcpuFd,
    index: u8,
    cpuid: &CpuId,
    entry: &EntryState,
) -> Result<(), SetupError> {
    let err = |what: &'static str| {
        move |source| SetupError {
            index,
            what,
            source,
        }
    };
    vcpu.set_cpuid2(cpuid).map_err(err("KVM_SET_CPUID2"))?;
    let msrs = boot_msrs();
    let list = Msrs::from_entries(&msrs).map_err(|_| SetupError {
        index,
        what: "building MSR list",
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })?;
    let written = vcpu.set_msrs(&list).map_err(err("KVM_SET_MSRS"))?;
    if written != msrs.len() {
        return Err(SetupError {
            index,
            what: "KVM_SET_MSRS rejected an MSR",
            source: kvm_ioctls::Error::new(libc::EINVAL),
        })
        .inspect_err(|_| {
            tracing::error!(
                msr = format_args!("{:#x}", msrs[written].index),
                "MSR refused"
            )
        });
    }
    vcpu.set_fpu(&kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    })
    .map_err(err("KVM_SET_FPU"))?;

    // LAPIC: LINT0 in ExtINT mode (legacy PIC), LINT1 in NMI mode.
    let mut lapic = vcpu.get_lapic().map_err(err("KVM_GET_LAPIC"))?;
    for (off, mode) in [(0x350usize, 7u32), (0x360, 4)] {
        let mut b = [0u8; 4];
        for (i, v) in b.iter_mut().enumerate() {
            *v = lapic.regs[off + i] as u8;
        }
        let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
        for (i, v) in v.to_le_bytes().into_iter().enumerate() {
            lapic.regs[off + i] = v as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(err("KVM_SET_LAPIC"))?;

    let starts_at_entry = index == 0 || entry.aps == ApStart::AtEntry;
    if !starts_at_entry {
        // Left in KVM's wait-for-SIPI state; the BSP's INIT/SIPI starts it.
        return Ok(());
    }
    if index != 0 {
        vcpu.set_mp_state(kvm_mp_state {
            mp_state: KVM_MP_STATE_RUNNABLE,
        })
        .map_err(err("KVM_SET_MP_STATE"))?;
    }

    let mut sregs = vcpu.get_sregs().map_err(err("KVM_GET_SREGS"))?;
    let mut rip = entry.rip;
    match entry.mode {
        EntryMode::Long64 | EntryMode::Protected32 => {
            let gdt = gdt_entries(entry.mode);
            sregs.gdt.base = BOOT_GDT_ADDR;
            sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
            sregs.idt.base = 0;
            sregs.idt.limit = 0;
            sregs.cs = segment_from_gdt(gdt[2], 0x10);
            let data = segment_from_gdt(gdt[3], 0x18);
            sregs.ds = data;
            sregs.es = data;
            sregs.fs = data;
            sregs.gs = data;
            sregs.ss = data;
            sregs.tr = segment_from_gdt(gdt[4], 0x20);
            if entry.mode == EntryMode::Long64 {
                sregs.cr3 = PML4_ADDR;
                sregs.cr4 = 0x20; // PAE
                sregs.cr0 = 0x8000_0031; // PG | NE | ET | PE
                sregs.efer = 0x500; // LMA | LME
            } else {
                sregs.cr0 = 0x31; // NE | ET | PE
                sregs.cr4 = 0;
                sregs.efer = 0;
            }
        }
        EntryMode::Real => {
            let base = entry.rip & !0xffff;
            sregs.cs.base = base;
            sregs.cs.selector = (base >> 4) as u16;
            rip = entry.rip & 0xffff;
        }
    }
    vcpu.set_sregs(&sregs).map_err(err("KVM_SET_SREGS"))?;
    let regs = kvm_regs {
        rflags: 2,
        rip,
        rsp: entry.rsp,
        rbp: entry.rsp,
        rsi: entry.rsi,
        rbx: entry.rbx,
        rdi: if entry.aps == ApStart::AtEntry {
            u64::from(index)
        } else {
            0
        },
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(err("KVM_SET_REGS"))?;
    Ok(())
}

/// Why the VM stops after a device access, if it does.
fn action_stop(action: BusAction) -> Option<ExitReason> {
    match action {
        BusAction::Continue => None,
        BusAction::Reset => Some(ExitReason::Reset),
        BusAction::PowerOff => Some(ExitReason::PowerOff),
        BusAction::DebugExit(code) => Some(ExitReason::DebugExit(code)),
    }
}

/// Runs vCPU `index` until the VM stops. Never panics on guest behaviour: every exit
/// reason either continues or records why the VM stopped.
pub fn run_loop(
    mut vcpu: VcpuFd,
    index: u8,
    bus: Arc<Buses>,
    control: Arc<Control>,
    stats: Arc<VcpuStats>,
) {
    let span = tracing::info_span!("vcpu", index);
    let _g = span.enter();
    loop {
        if !control.vcpu_checkpoint() {
            return;
        }
        let exit = vcpu.run();
        stats.exits.fetch_add(1, Ordering::Relaxed);
        let stop = match exit {
            Ok(VcpuExit::IoOut(port, data)) => {
                stats.pio.fetch_add(1, Ordering::Relaxed);
                action_stop(bus.write(port, data))
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                stats.pio.fetch_add(1, Ordering::Relaxed);
                bus.read(port, data);
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                stats.mmio.fetch_add(1, Ordering::Relaxed);
                bus.mmio_read(addr, data);
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                stats.mmio.fetch_add(1, Ordering::Relaxed);
                action_stop(bus.mmio_write(addr, data))
            }
            Ok(VcpuExit::Intr) => None,
            Ok(VcpuExit::Shutdown) => Some(ExitReason::TripleFault),
            Ok(VcpuExit::SystemEvent(kind, _)) => Some(match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                KVM_SYSTEM_EVENT_RESET => ExitReason::Reset,
                KVM_SYSTEM_EVENT_CRASH => ExitReason::GuestCrash("guest reported a crash".into()),
                other => ExitReason::GuestCrash(format!("unknown system event {other}")),
            }),
            Ok(VcpuExit::InternalError) => Some(ExitReason::GuestCrash(
                "KVM internal error (often an instruction the host cannot emulate)".into(),
            )),
            Ok(VcpuExit::FailEntry(reason, cpu)) => Some(ExitReason::GuestCrash(format!(
                "VM entry failed: hardware reason {reason:#x} on host CPU {cpu}"
            ))),
            Ok(VcpuExit::Hlt) => Some(ExitReason::GuestCrash(
                "vCPU halted without an in-kernel irqchip".into(),
            )),
            Ok(other) => Some(ExitReason::GuestCrash(format!("unhandled exit {other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
                None
            }
            Err(e) => Some(ExitReason::VmmError(format!("KVM_RUN failed: {e}"))),
        };
        if let Some(reason) = stop {
            if let ExitReason::GuestCrash(why) | ExitReason::VmmError(why) = &reason {
                let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(u64::MAX);
                tracing::error!(rip = format_args!("{rip:#x}"), "{why}; stopping the VM");
            } else {
                tracing::info!(?reason, "guest ended the VM");
            }
            control.request_stop(reason);
            return;
        }
    }
}
