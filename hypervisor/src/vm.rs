//! One microVM: KVM set-up, guest memory, devices, vCPU threads, and the operations
//! the control plane uses (start, pause, resume, stop, describe).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use serde::Serialize;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::boot::{prepare_with, BootPlan};
use crate::boot_source::BootInputs;
use crate::config::{SerialOutput, VmConfig};
use crate::control::{Control, ExitReason, RunState};
use crate::cpuid;
use crate::devices::{Buses, COM1_IRQ};
use crate::layout::{KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR};
use crate::memory;
use crate::plan::MachinePlan;
use crate::seccomp;
use crate::vcpu::{self, VcpuStats, VcpuStatsSnapshot};

/// Set-up failures.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A KVM call failed.
    #[error("{what}: {source}")]
    Kvm {
        /// The call.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// The host lacks something the VMM needs.
    #[error("host KVM: {0}")]
    Host(String),
    /// Bad configuration discovered at build time.
    #[error("{0}")]
    Config(String),
    /// Memory.
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    /// Boot.
    #[error(transparent)]
    Boot(#[from] crate::boot::BootError),
    /// vCPU set-up.
    #[error(transparent)]
    Vcpu(#[from] vcpu::SetupError),
    /// Device set-up.
    #[error("devices: {0}")]
    Devices(std::io::Error),
    /// Thread or seccomp set-up.
    #[error("{0}")]
    Thread(String),
    /// The operation is not valid in the VM's current state.
    #[error("the VM is {0:?}")]
    State(RunState),
    /// PCI passthrough (VFIO) set-up.
    #[error(transparent)]
    Vfio(#[from] crate::vfio::VfioSetupError),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// Guest physical address width reported by the host's CPUID (leaf 0x8000_0008).
pub fn guest_phys_bits(supported: &kvm_bindings::CpuId) -> u8 {
    supported
        .as_slice()
        .iter()
        .find(|e| e.function == 0x8000_0008)
        .map_or(36, |e| (e.eax & 0xff) as u8)
}

/// Guest memory statistics.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryStats {
    /// Guest RAM in bytes.
    pub guest_ram_bytes: u64,
    /// Time spent prefaulting, if done.
    pub prefault_ms: Option<u64>,
    /// RAM regions `(guest address, size)`.
    pub regions: Vec<(u64, u64)>,
    /// 64-bit MMIO window `(start, size)`.
    pub mmio64: (u64, u64),
}

/// Everything `describe` reports.
#[derive(Debug, Clone, Serialize)]
pub struct VmDescription {
    /// Run state.
    pub state: RunState,
    /// Why the VM stopped, if it has.
    pub exit: Option<ExitReason>,
    /// Launch measurement (hex SHA-384) and its event log.
    pub measurement: crate::measurement::Measurement,
    /// Whether the boot source was a verified signed bundle.
    pub signed: bool,
    /// The boot source origin.
    pub boot_source: crate::boot_source::Origin,
    /// CPUID policy name.
    pub cpuid_policy: &'static str,
    /// Per-vCPU counters.
    pub vcpus: Vec<VcpuStatsSnapshot>,
    /// Memory.
    pub memory: MemoryStats,
    /// Unowned port accesses so far.
    pub unowned_pio: u64,
    /// Unowned MMIO accesses so far.
    pub unowned_mmio: u64,
    /// Serial bytes dropped past the output cap.
    pub serial_dropped: u64,
    /// Ignored writes to the ACPI power-management registers (unsupported sleep
    /// states, wrong reset values, wider accesses).
    pub acpi_pm_ignored: u64,
    /// The virtio devices: transport, where, state, counters (and PCI/MSI-X state
    /// for virtio-pci functions).
    pub virtio: Vec<crate::virtio::VirtioDeviceInfo>,
    /// PCI bus 0, when the VM has one (assigned devices or virtio-pci).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pci: Option<crate::pci::PciReport>,
    /// Assigned PCI devices and the DMA-map time (absent without passthrough).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vfio: Option<crate::vfio::VfioReport>,
}

/// A built VM.
#[derive(Debug)]
pub struct Vm {
    _kvm: Kvm,
    _vm_fd: Arc<VmFd>,
    mem: GuestMemoryMmap,
    machine: MachinePlan,
    plan: BootPlan,
    origin: crate::boot_source::Origin,
    cfg: VmConfig,
    bus: Arc<Buses>,
    virtio: crate::virtio::VirtioDevices,
    control: Arc<Control>,
    stats: Vec<Arc<VcpuStats>>,
    pending: Vec<VcpuFd>,
    threads: Vec<JoinHandle<()>>,
    prefault: Option<Duration>,
    acpi_pm: Option<Arc<crate::acpi::PowerManagement>>,
    vfio: Option<crate::vfio::VfioSet>,
    pci: Option<crate::pci::PciBus>,
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

impl Vm {
    /// Creates the VM, loads the boot source and configures every vCPU; nothing runs yet.
    pub fn build(cfg: &VmConfig, inputs: &BootInputs) -> Result<Vm, VmError> {
        let build_started = Instant::now();
        cfg.validate().map_err(|e| VmError::Config(e.to_string()))?;
        let kvm = Kvm::new().map_err(kvm_err("opening /dev/kvm"))?;
        for (cap, name) in [
            (Cap::Irqchip, "in-kernel irqchip"),
            (Cap::Irqfd, "irqfd"),
            (Cap::UserMemory, "user memory"),
            (Cap::SetTssAddr, "TSS address"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::Host(format!("missing capability: {name}")));
            }
        }
        let max = kvm.get_max_vcpus();
        if usize::from(cfg.machine.vcpus) > max {
            return Err(VmError::Config(format!(
                "machine.vcpus: this host allows at most {max}"
            )));
        }
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let layout = cfg
            .machine
            .layout(guest_phys_bits(&supported))
            .map_err(|e| VmError::Config(e.to_string()))?;

        // Host checks for passthrough before anything big is allocated.
        let vfio_hosts = crate::vfio::preflight(&cfg.devices.vfio, layout.mem_size)?;
        // Every address, slot, GSI and measured device entry, computed once.
        let machine = MachinePlan::new(cfg, layout, &vfio_hosts);
        let vm_fd = Arc::new(kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?);
        vm_fd
            .set_tss_address(KVM_TSS_ADDR as usize)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        vm_fd
            .set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
            .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
        vm_fd
            .create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        if kvm.check_extension(Cap::Pit2) {
            vm_fd
                .create_pit2(kvm_pit_config {
                    flags: KVM_PIT_SPEAKER_DUMMY,
                    ..Default::default()
                })
                .map_err(kvm_err("KVM_CREATE_PIT2"))?;
        } else {
            tracing::warn!("host offers no in-kernel PIT; the guest has no PIT");
        }

        let created = build_started.elapsed();
        let mem = memory::allocate(&machine.layout, cfg.machine.backing)?;
        let prefault = match cfg.machine.prefault_threads {
            0 => None,
            n => {
                let t = memory::prefault(&mem, cfg.machine.backing, usize::from(n))?;
                tracing::info!(
                    ms = t.as_millis() as u64,
                    threads = n,
                    "prefaulted guest RAM"
                );
                Some(t)
            }
        };
        let allocated = build_started.elapsed();
        let plan = prepare_with(cfg, &machine, inputs, &mem)?;
        let loaded = build_started.elapsed();
        // Every signed component is read and checked now: record its version.
        if let Some(pending) = &inputs.pending_version {
            pending
                .record()
                .map_err(|e| VmError::Config(e.to_string()))?;
        }
        // Guest RAM stays mapped until the process exits (see `sys::register_guest_ram`),
        // so vCPU threads that `stop` gives up on can never touch unmapped memory.
        crate::sys::register_guest_ram(&vm_fd, &mem).map_err(VmError::Host)?;

        let serial_irq = if cfg.devices.serial != SerialOutput::None {
            let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::Devices)?;
            vm_fd
                .register_irqfd(&evt, COM1_IRQ)
                .map_err(kvm_err("KVM_IRQFD (serial)"))?;
            Some(evt)
        } else {
            None
        };
        let devices = &cfg.devices;
        let bus = Arc::new(
            Buses::new(
                &devices.serial,
                devices.i8042,
                devices.debug_exit,
                serial_irq,
            )
            .map_err(VmError::Devices)?,
        );
        let acpi_pm = crate::acpi::attach(machine.acpi.is_some(), &bus.pio)
            .map_err(|e| VmError::Config(format!("machine.acpi: power registers: {e}")))?;
        let control = Arc::new(Control::default());
        let pci = if machine.pci.is_some() {
            Some(crate::pci::PciBus::attach(&vm_fd, &bus).map_err(|e| {
                VmError::Vfio(crate::vfio::VfioSetupError::Device(format!(
                    "PCI host bridge: {e}"
                )))
            })?)
        } else {
            None
        };
        let virtio = crate::virtio::VirtioDevices::build(
            &machine.virtio,
            crate::virtio::Backends {
                block: &devices.block,
                vsock: devices.vsock.as_ref(),
                seccomp: cfg.seccomp,
            },
            inputs,
            &mem,
            &kvm,
            &vm_fd,
            &bus,
            pci.as_ref(),
            &control,
        )
        .map_err(|e| VmError::Config(e.to_string()))?;
        let vfio = crate::vfio::attach_to_vm(
            machine.assigned(),
            &vm_fd,
            pci.as_ref(),
            &mem,
            &machine.layout,
            &bus,
        )?;

        let mut pending = Vec::new();
        for index in 0..cfg.machine.vcpus {
            let fd = vm_fd
                .create_vcpu(u64::from(index))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            let cpuid = cpuid::apply(
                cfg.machine.cpuid_policy,
                &supported,
                index,
                cfg.machine.vcpus,
            );
            vcpu::configure(&fd, index, &cpuid, &plan.entry)?;
            pending.push(fd);
        }
        tracing::info!(measurement = %plan.measurement.value, "VM built");
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let built = build_started.elapsed();
        let r = &inputs.read_timings;
        tracing::info!(
            verify_us = us(r.verify),
            read_us = us(r.read),
            firmware_read_us = us(r.firmware),
            kvm_vm_us = us(created),
            memory_us = us(allocated - created),
            load_and_measure_us = us(loaded - allocated),
            devices_and_vcpus_us = us(built - loaded),
            "boot phases before the guest runs"
        );
        Ok(Vm {
            _kvm: kvm,
            _vm_fd: vm_fd,
            mem,
            machine,
            origin: inputs.origin.clone(),
            plan,
            cfg: cfg.clone(),
            bus,
            virtio,
            control,
            stats: (0..cfg.machine.vcpus).map(|_| Arc::default()).collect(),
            pending,
            threads: Vec::new(),
            prefault,
            acpi_pm,
            vfio,
            pci,
        })
    }

    /// The shared run control.
    pub fn control(&self) -> Arc<Control> {
        Arc::clone(&self.control)
    }

    /// Guest memory (RAM and the firmware region), as loaded and measured. What is
    /// written here after [`Vm::build`] is not in the launch measurement: the tests use
    /// it to play a host that changes the staged boot data behind the measurement.
    pub fn guest_memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The launch measurement.
    pub fn measurement(&self) -> &crate::measurement::Measurement {
        &self.plan.measurement
    }

    /// Starts one thread per vCPU; each installs its seccomp filter before entering the guest.
    pub fn start(&mut self) -> Result<(), VmError> {
        if self.control.state() != RunState::Created || self.pending.is_empty() {
            return Err(VmError::State(self.control.state()));
        }
        register_signal_handler(kick_signal(), kick_handler)
            .map_err(|e| VmError::Thread(format!("installing the vCPU kick handler: {e}")))?;
        let filter =
            seccomp::vcpu_filter_with(self.cfg.seccomp, self.vfio.is_some(), self.virtio.has_pci())
                .map_err(VmError::Thread)?;
        let n = self.pending.len();
        self.control.start(n);
        for (index, fd) in self.pending.drain(..).enumerate() {
            let (bus, control, stats) = (
                Arc::clone(&self.bus),
                Arc::clone(&self.control),
                Arc::clone(&self.stats[index]),
            );
            let filter = filter.clone();
            let mode = self.cfg.seccomp;
            let handle = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || {
                    if let Err(e) = seccomp::install(mode, filter.as_ref()) {
                        control.request_stop(ExitReason::VmmError(format!(
                            "seccomp on vCPU {index}: {e}"
                        )));
                    } else {
                        vcpu::run_loop(fd, index as u8, bus, Arc::clone(&control), stats);
                    }
                    control.vcpu_exited();
                })
                .map_err(|e| VmError::Thread(format!("spawning vCPU thread: {e}")))?;
            self.threads.push(handle);
        }
        if self.cfg.devices.serial == SerialOutput::Stdout {
            crate::console::spawn_stdin_reader(
                Arc::clone(&self.bus),
                Arc::clone(&self.control),
                self.cfg.seccomp,
            )
            .map_err(VmError::Thread)?;
        }
        Ok(())
    }

    /// Sends the kick signal to every vCPU thread still alive.
    fn kick_all(&self) {
        for t in &self.threads {
            if !t.is_finished() {
                let _ = t.kill(kick_signal());
            }
        }
    }

    /// Pauses every vCPU (each parks outside `KVM_RUN`).
    pub fn pause(&self) -> Result<(), VmError> {
        if !self.control.request_pause() {
            return Err(VmError::State(self.control.state()));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            self.kick_all();
            if self
                .control
                .wait_until(Duration::from_millis(5), |parked, live, st| {
                    st != RunState::Paused || parked >= live
                })
            {
                return Ok(());
            }
        }
        Err(VmError::Thread("vCPUs did not pause within 10 s".into()))
    }

    /// Resumes a paused VM.
    pub fn resume(&self) -> Result<(), VmError> {
        if self.control.resume() {
            Ok(())
        } else {
            Err(VmError::State(self.control.state()))
        }
    }

    /// Stops the VM (if it is not already stopped) and joins every vCPU thread. A vCPU
    /// that does not leave `KVM_RUN` within 10 s of kicking is logged and left behind
    /// (the process is about to exit) rather than hanging the teardown; it keeps its
    /// `VcpuFd`, which is memory-safe because guest RAM is never unmapped while the
    /// process lives (`sys::register_guest_ram`).
    pub fn stop(&mut self, reason: ExitReason) -> ExitReason {
        self.control.request_stop(reason);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.kick_all();
            if self
                .control
                .wait_until(Duration::from_millis(5), |_, live, _| live == 0)
            {
                break;
            }
            if Instant::now() > deadline {
                tracing::error!("vCPU threads did not stop within 10 s; not waiting for them");
                self.threads.clear();
                break;
            }
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.virtio.stop();
        if let Some(v) = &self.vfio {
            v.teardown();
        }
        self.control.reason().unwrap_or(ExitReason::Stopped)
    }

    /// Waits until the guest or the control plane stops the VM, then tears it down.
    pub fn wait(&mut self) -> ExitReason {
        let reason = self.control.wait_stopped();
        self.stop(reason)
    }

    /// The state, measurement and statistics.
    pub fn describe(&self) -> VmDescription {
        VmDescription {
            state: self.control.state(),
            exit: self.control.reason(),
            measurement: self.plan.measurement.clone(),
            signed: self.origin.is_signed(),
            boot_source: self.origin.clone(),
            cpuid_policy: self.cfg.machine.cpuid_policy.name(),
            vcpus: self
                .stats
                .iter()
                .enumerate()
                .map(|(i, s)| s.snapshot(i as u8))
                .collect(),
            memory: MemoryStats {
                guest_ram_bytes: self.machine.layout.mem_size,
                prefault_ms: self.prefault.map(|d| d.as_millis() as u64),
                regions: self.machine.layout.ram_regions.clone(),
                mmio64: self.machine.layout.mmio64,
            },
            unowned_pio: self
                .bus
                .unowned
                .pio
                .load(std::sync::atomic::Ordering::Relaxed),
            unowned_mmio: self
                .bus
                .unowned
                .mmio
                .load(std::sync::atomic::Ordering::Relaxed),
            serial_dropped: self.bus.serial_dropped(),
            acpi_pm_ignored: self.acpi_pm.as_ref().map_or(0, |pm| {
                pm.ignored.load(std::sync::atomic::Ordering::Relaxed)
            }),
            virtio: self.virtio.describe(),
            pci: self.pci.as_ref().map(crate::pci::PciBus::report),
            vfio: self.vfio.as_ref().map(crate::vfio::VfioSet::report),
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop(ExitReason::Stopped);
        }
        if let Some(v) = &self.vfio {
            v.teardown();
        }
    }
}

/// Computes the launch measurement for `cfg` without KVM: loads into scratch memory
/// (lazily allocated, never touched beyond what is written) and returns the plan.
/// The 64-bit MMIO window is checked against a 52-bit address width here; at boot the
/// host's real width applies and may reject the config, but never changes the value.
pub fn measure_offline(cfg: &VmConfig, inputs: &BootInputs) -> Result<BootPlan, VmError> {
    cfg.validate().map_err(|e| VmError::Config(e.to_string()))?;
    let layout = cfg
        .machine
        .layout(52)
        .map_err(|e| VmError::Config(e.to_string()))?;
    crate::virtio::check_inputs(&cfg.devices.block, inputs)
        .map_err(|e| VmError::Config(e.to_string()))?;
    let mem = memory::allocate(&layout, memory::Backing::Anonymous)?;
    // The assigned devices' IDs come from this host's sysfs: measure on the host that
    // will boot the VM (or one with the same devices).
    let hosts = crate::vfio::describe_hosts(&cfg.devices.vfio)?;
    let machine = MachinePlan::new(cfg, layout, &hosts);
    Ok(prepare_with(cfg, &machine, inputs, &mem)?)
}
