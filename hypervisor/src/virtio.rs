//! The virtio devices of a VM (crate `bulwark-virtio`), on either transport
//! (`devices.virtio_transport`): their configuration types, the slot types the machine
//! plan places them in (`plan::virtio_slots`, a pure function of the configuration, so
//! `measure` predicts it; the plan also holds the command-line fragments and
//! device-list entries that announce them), and the running set: the devices, their
//! transports (virtio-mmio here, virtio-pci in `virtio_pci`), queue notifications as
//! KVM ioeventfds (or, without them, MMIO exits forwarded to the transport), and one
//! `IoWorker` thread per device under its own seccomp filter.
//!
//! Order: the `devices.block` disks in configuration order, then rng, then vsock.
//! virtio-mmio: device `n` sits at `VIRTIO_MMIO_START + n * 4 KiB` with the `n`th GSI
//! of 5..=15 skipping 9 (`layout.rs`), so at most 10 devices. virtio-pci: device `n` is
//! function `00:(1 + vfio devices + n).0` with BAR0 at `VIRTIO_PCI_START + n * 32 KiB`
//! and MSI-X vectors on GSIs from the VM's router.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bulwark_virtio::block::{Block, DiskBackend};
use bulwark_virtio::mmio::NOTIFY_OFFSET;
use bulwark_virtio::rng::Rng;
use bulwark_virtio::vsock::Vsock;
use bulwark_virtio::{
    CounterSnapshot, DeviceCounters, IoWorker, MmioTransport, SharedDevice, MMIO_REGION_SIZE,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VmFd};
use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::boot_source::BootInputs;
use crate::bus::{BusAction, BusDevice};
use crate::control::{Control, ExitReason};
use crate::devices::Buses;
use crate::layout::{ACPI_SCI_GSI, VIRTIO_MMIO_FIRST_GSI, VIRTIO_MMIO_LAST_GSI, VIRTIO_PCI_SIZE};
use crate::seccomp::{self, SeccompMode};

/// One virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockConfig {
    /// The disk's id (what `GET_ID` returns): 1..=20 bytes of `[A-Za-z0-9._-]`, unique.
    pub id: String,
    /// A raw disk image (its size a multiple of 512 bytes). Exactly one of `path` and
    /// `bundle_rootfs`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Serve the rootfs (and its dm-verity tree) of the verified signed bundle being
    /// booted, in place and read-only.
    #[serde(default)]
    pub bundle_rootfs: bool,
    /// Refuse guest writes (default: `true` for the bundle rootfs, which is always
    /// read-only, `false` for a file).
    #[serde(default)]
    pub read_only: Option<bool>,
}

impl BlockConfig {
    /// Whether the guest gets a read-only disk.
    pub fn is_read_only(&self) -> bool {
        self.bundle_rootfs || self.read_only.unwrap_or(false)
    }
}

/// virtio-vsock with the host side on Unix sockets (Firecracker's convention).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context id, 3..=4294967294.
    pub guest_cid: u64,
    /// Unix socket the VMM listens on for host-initiated connections (`CONNECT
    /// <port>\n`); guest connections to host port `P` go to `<uds_path>_P`. Must not
    /// exist yet; removed when the VMM ends.
    pub uds_path: PathBuf,
}

/// How the guest reaches the virtio devices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VirtioTransport {
    /// virtio-mmio v2 windows from 0xd0000000, one GSI each (described by the DSDT,
    /// or by `virtio_mmio.device=` without ACPI).
    #[default]
    Mmio,
    /// Modern virtio-pci functions on PCI bus 0 with MSI-X; the bus exists and ACPI
    /// describes it.
    Pci,
}

impl VirtioTransport {
    /// Whether this is the default, virtio-mmio.
    pub fn is_mmio(&self) -> bool {
        *self == VirtioTransport::Mmio
    }
}

/// Longest disk id (the `GET_ID` answer is 20 bytes).
pub const MAX_ID_LEN: usize = 20;

/// What kind of device a slot holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SlotKind {
    /// virtio-blk: index into `devices.block`.
    Block {
        /// Index in `devices.block`.
        index: usize,
    },
    /// virtio-rng.
    Rng,
    /// virtio-vsock.
    Vsock,
}

/// Where one virtio device sits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Slot {
    /// The device.
    #[serde(flatten)]
    pub kind: SlotKind,
    /// Its transport.
    pub transport: VirtioTransport,
    /// Guest-physical base of its 4 KiB virtio-mmio window, or of its virtio-pci BAR0.
    pub base: u64,
    /// virtio-mmio: its IOAPIC pin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gsi: Option<u32>,
    /// virtio-pci: its device number on bus 0 (function 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pci_slot: Option<u8>,
    /// Its measured description (`devices` event).
    pub label: String,
}

impl Slot {
    /// `00:SS.0` for a virtio-pci function.
    pub fn pci_address(&self) -> Option<String> {
        self.pci_slot.map(|s| format!("00:{s:02x}.0"))
    }
}

/// The GSIs virtio-mmio devices take, in order.
pub fn gsis() -> impl Iterator<Item = u32> {
    (VIRTIO_MMIO_FIRST_GSI..=VIRTIO_MMIO_LAST_GSI).filter(|&g| g != ACPI_SCI_GSI)
}

/// Most virtio-mmio devices (one GSI each).
pub fn max_devices() -> usize {
    gsis().count()
}

/// Most virtio-pci devices beside `n_vfio` assigned ones: the free device numbers of
/// bus 0 (1..=31 after the assigned devices), and BAR0s that fit the reserved window.
pub fn max_pci_devices(n_vfio: usize) -> usize {
    let bars = (VIRTIO_PCI_SIZE / bulwark_virtio::pci::BAR_SIZE) as usize;
    31usize.saturating_sub(n_vfio).min(bars)
}

impl BlockConfig {
    /// The disk's measured description, before its placement:
    /// `virtio-blk,id:ID,ro|rw,file|bundle-rootfs`.
    pub fn label(&self) -> String {
        format!(
            "virtio-blk,id:{},{},{}",
            self.id,
            if self.is_read_only() { "ro" } else { "rw" },
            if self.bundle_rootfs {
                "bundle-rootfs"
            } else {
                "file"
            }
        )
    }
}

impl VsockConfig {
    /// The device's measured description, before its placement: `virtio-vsock,cid:N`.
    pub fn label(&self) -> String {
        format!("virtio-vsock,cid:{}", self.guest_cid)
    }
}

/// Checks what the devices need from the boot source (the bundle's rootfs).
pub fn check_inputs(block: &[BlockConfig], inputs: &BootInputs) -> Result<(), VirtioError> {
    for (i, b) in block.iter().enumerate() {
        if b.bundle_rootfs && inputs.rootfs.is_none() {
            return Err(verr(
                format!("devices.block[{i}].bundle_rootfs"),
                "the boot source has no rootfs component",
            ));
        }
    }
    Ok(())
}

/// Test knob: with this set (to anything), queue notifications are not registered as
/// KVM ioeventfds and take the MMIO-exit path, as on a host without ioeventfd.
pub const NO_IOEVENTFD_ENV: &str = "BULWARK_VMM_NO_IOEVENTFD";

/// What the running devices need from the configuration beyond their slots (which
/// come from the machine plan): the disks' and vsock's host sides, and the seccomp
/// mode of the worker threads.
#[derive(Debug, Clone, Copy)]
pub struct Backends<'a> {
    /// `devices.block`, indexed by [`SlotKind::Block`].
    pub block: &'a [BlockConfig],
    /// `devices.vsock`.
    pub vsock: Option<&'a VsockConfig>,
    /// The seccomp mode of the worker threads.
    pub seccomp: SeccompMode,
}

/// A transport on the MMIO bus. One vCPU at a time drives it (the mutex).
struct TransportOnBus(Mutex<MmioTransport>);

/// Appends the virtio devices' Prometheus metrics to `out`.
pub fn write_metrics(out: &mut String, devices: &[VirtioDeviceInfo]) {
    use std::fmt::Write as _;
    if devices.is_empty() {
        return;
    }
    type Metric = (
        &'static str,
        &'static str,
        &'static str,
        fn(&VirtioDeviceInfo) -> Option<u64>,
    );
    let metrics: [Metric; 12] = [
        (
            "bulwark_virtio_requests_total",
            "counter",
            "Requests (descriptor chains, vsock packets) a virtio device handled.",
            |d| Some(d.counters.requests),
        ),
        (
            "bulwark_virtio_read_bytes_total",
            "counter",
            "Bytes a virtio device moved from its backend into the guest.",
            |d| Some(d.counters.bytes_read),
        ),
        (
            "bulwark_virtio_written_bytes_total",
            "counter",
            "Bytes a virtio device moved from the guest into its backend.",
            |d| Some(d.counters.bytes_written),
        ),
        (
            "bulwark_virtio_errors_total",
            "counter",
            "Failed requests, refused chains and reset packets.",
            |d| Some(d.counters.errors),
        ),
        (
            "bulwark_virtio_needs_reset_total",
            "counter",
            "Times a virtio device entered DEVICE_NEEDS_RESET.",
            |d| Some(d.counters.needs_reset),
        ),
        (
            "bulwark_virtio_guest_faults_total",
            "counter",
            "Guest-caused faults on a virtio device (all counted, logging rate-limited).",
            |d| Some(d.counters.guest_faults),
        ),
        (
            "bulwark_virtio_needs_reset",
            "gauge",
            "1 while a virtio device is in DEVICE_NEEDS_RESET.",
            |d| Some(u64::from(d.needs_reset)),
        ),
        (
            "bulwark_virtio_pci_msix_enabled",
            "gauge",
            "1 while the guest has MSI-X enabled on a virtio-pci function.",
            |d| d.pci.as_ref().map(|p| u64::from(p.msix_enabled)),
        ),
        (
            "bulwark_virtio_pci_msix_messages_total",
            "counter",
            "MSI-X messages a virtio-pci function sent.",
            |d| d.pci.as_ref().map(|p| p.msix_sent),
        ),
        (
            "bulwark_virtio_pci_msix_pended_total",
            "counter",
            "Interrupts held because their MSI-X vector was masked (sent on unmask).",
            |d| d.pci.as_ref().map(|p| p.msix_pended),
        ),
        (
            "bulwark_virtio_pci_msix_undelivered_total",
            "counter",
            "Interrupts with MSI-X disabled or no vector (no INTx: only the ISR bit set).",
            |d| d.pci.as_ref().map(|p| p.msix_undelivered),
        ),
        (
            "bulwark_virtio_pci_msix_pending_vectors",
            "gauge",
            "MSI-X vectors of a virtio-pci function with their pending bit set.",
            |d| {
                d.pci
                    .as_ref()
                    .map(|p| p.vectors.iter().filter(|v| v.pending).count() as u64)
            },
        ),
    ];
    let labels = |d: &VirtioDeviceInfo| {
        let kind = match d.slot.kind {
            SlotKind::Block { .. } => "block",
            SlotKind::Rng => "rng",
            SlotKind::Vsock => "vsock",
        };
        match d.slot.pci_address() {
            None => format!("device=\"{kind}\",base=\"{:#x}\"", d.slot.base),
            Some(a) => format!(
                "device=\"{kind}\",base=\"{:#x}\",transport=\"pci\",slot=\"{a}\"",
                d.slot.base
            ),
        }
    };
    // A family is written when some device has it (the PCI ones only virtio-pci
    // functions).
    for (name, kind, help, value) in metrics {
        if devices.iter().all(|d| value(d).is_none()) {
            continue;
        }
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for d in devices {
            if let Some(v) = value(d) {
                let _ = writeln!(out, "{name}{{{}}} {v}", labels(d));
            }
        }
    }
}

impl BusDevice for TransportOnBus {
    fn read(&self, offset: u64, data: &mut [u8]) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .read(offset, data);
    }
    fn write(&self, offset: u64, data: &[u8]) -> BusAction {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write(offset, data);
        BusAction::Continue
    }
}

/// How queue notifications reach the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyPath {
    /// KVM signals the worker's eventfd directly (no exit to the VMM).
    Ioeventfd,
    /// The write exits to the VMM, which forwards it to the transport.
    MmioExit,
}

/// What `GET /vm` reports per virtio device.
#[derive(Debug, Clone, Serialize)]
pub struct VirtioDeviceInfo {
    /// Where it sits and what it is.
    #[serde(flatten)]
    pub slot: Slot,
    /// The device status register as the driver reads it.
    pub status: u32,
    /// Whether the device is in `DEVICE_NEEDS_RESET`.
    pub needs_reset: bool,
    /// How notifications arrive.
    pub notify: NotifyPath,
    /// Whether its worker thread is still serving it.
    pub worker_alive: bool,
    /// Requests, bytes, errors, needs-reset entries, guest faults.
    pub counters: CounterView,
    /// virtio-pci: the function's PCI and MSI-X state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pci: Option<crate::virtio_pci::PciView>,
}

/// [`CounterSnapshot`] as serialised.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CounterView {
    /// Requests (chains, or vsock packets) handled.
    pub requests: u64,
    /// Bytes moved from the backend into the guest.
    pub bytes_read: u64,
    /// Bytes moved from the guest into the backend.
    pub bytes_written: u64,
    /// Failed requests, refused chains, reset packets.
    pub errors: u64,
    /// Entries into `DEVICE_NEEDS_RESET`.
    pub needs_reset: u64,
    /// Guest-caused faults (all counted).
    pub guest_faults: u64,
    /// Guest faults logged (rate-limited).
    pub guest_faults_logged: u64,
}

impl From<CounterSnapshot> for CounterView {
    fn from(c: CounterSnapshot) -> Self {
        CounterView {
            requests: c.requests,
            bytes_read: c.bytes_read,
            bytes_written: c.bytes_written,
            errors: c.errors,
            needs_reset: c.needs_reset,
            guest_faults: c.guest_faults,
            guest_faults_logged: c.guest_faults_logged,
        }
    }
}

/// How a running device is wired.
enum Wiring {
    Mmio(Arc<TransportOnBus>),
    Pci(crate::virtio_pci::PciWiring),
}

struct Running {
    slot: Slot,
    wiring: Wiring,
    counters: Arc<DeviceCounters>,
    notify: NotifyPath,
    worker: Option<IoWorker>,
    worker_done: Arc<std::sync::atomic::AtomicBool>,
}

/// Registers each queue's notification event (`events[i]`) as a KVM ioeventfd through
/// `register` when `use_ioeventfd` (a failure leaves that device on MMIO exits, which
/// the transport turns into the same event), and clones the events for the worker.
pub(crate) fn doorbells(
    events: &[EventFd],
    base: u64,
    use_ioeventfd: bool,
    register: impl Fn(usize, &EventFd) -> Result<(), kvm_ioctls::Error>,
) -> Result<(NotifyPath, Vec<EventFd>), VirtioError> {
    let mut notify = NotifyPath::MmioExit;
    if use_ioeventfd {
        notify = NotifyPath::Ioeventfd;
        for (i, evt) in events.iter().enumerate() {
            if let Err(e) = register(i, evt) {
                tracing::warn!(error = %e, base = format_args!("{base:#x}"), "KVM_IOEVENTFD failed; this device's notifications exit to the VMM");
                notify = NotifyPath::MmioExit;
            }
        }
    }
    let clones = events
        .iter()
        .map(EventFd::try_clone)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| verr("eventfd", e))?;
    Ok((notify, clones))
}

/// A virtio-mmio window: its interrupt as an irqfd on `gsi`, the transport on
/// `buses.mmio`, its queue notifications as ioeventfds on `base + 0x50` (data match
/// = queue index) when `use_ioeventfd`.
fn attach_mmio(
    slot: &Slot,
    gsi: u32,
    device: SharedDevice,
    mem: Arc<GuestMemoryMmap>,
    vm_fd: &VmFd,
    buses: &Buses,
    use_ioeventfd: bool,
) -> Result<(Arc<TransportOnBus>, NotifyPath, Vec<EventFd>), VirtioError> {
    let irq = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(|e| verr("eventfd", e))?);
    vm_fd
        .register_irqfd(&irq, gsi)
        .map_err(|e| verr("KVM_IRQFD (virtio)", e))?;
    let transport =
        MmioTransport::new(device, mem, irq).map_err(|e| verr("virtio transport", e))?;
    let (notify, events) = doorbells(
        transport.queue_events(),
        slot.base,
        use_ioeventfd,
        |i, evt| {
            let addr = IoEventAddress::Mmio(slot.base + NOTIFY_OFFSET);
            vm_fd.register_ioevent(evt, &addr, i as u32)
        },
    )?;
    let transport = Arc::new(TransportOnBus(Mutex::new(transport)));
    buses
        .mmio
        .insert(slot.base, MMIO_REGION_SIZE, transport.clone())
        .map_err(|e| verr("virtio-mmio window", e))?;
    Ok((transport, notify, events))
}

/// The running virtio devices of a VM.
#[derive(Default)]
pub struct VirtioDevices {
    running: Vec<Running>,
}

impl std::fmt::Debug for VirtioDevices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.running.iter().map(|r| &r.slot))
            .finish()
    }
}

/// Set-up failures (they name the config field where one is to blame).
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct VirtioError {
    /// The config field or the KVM call.
    pub field: String,
    /// What failed.
    pub message: String,
}

pub(crate) fn verr(field: impl Into<String>, message: impl std::fmt::Display) -> VirtioError {
    VirtioError {
        field: field.into(),
        message: message.to_string(),
    }
}

impl VirtioDevices {
    /// Creates every configured device, puts its transport on `buses.mmio` (virtio-mmio)
    /// or on `pci`'s bus 0 (virtio-pci), wires its interrupts (irqfds) and
    /// notifications (ioeventfds, or the MMIO-exit fallback) and starts its worker
    /// thread, which installs the worker seccomp filter first.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        slots: &[Slot],
        cfg: Backends<'_>,
        inputs: &BootInputs,
        mem: &GuestMemoryMmap,
        kvm: &Kvm,
        vm_fd: &VmFd,
        buses: &Buses,
        pci: Option<&crate::pci::PciBus>,
        control: &Arc<Control>,
    ) -> Result<Self, VirtioError> {
        let mode = cfg.seccomp;
        check_inputs(cfg.block, inputs)?;
        if slots.is_empty() {
            return Ok(Self::default());
        }
        let mem = Arc::new(mem.clone());
        let use_ioeventfd =
            kvm.check_extension(Cap::Ioeventfd) && std::env::var_os(NO_IOEVENTFD_ENV).is_none();
        if !use_ioeventfd {
            tracing::info!("virtio: no KVM ioeventfd; queue notifications exit to the VMM");
        }
        let mut running = Vec::with_capacity(slots.len());
        for slot in slots.iter().cloned() {
            let (device, name): (SharedDevice, String) = match &slot.kind {
                SlotKind::Block { index } => {
                    let b = &cfg.block[*index];
                    let field = format!("devices.block[{index}]");
                    let disk = match (&b.path, &inputs.rootfs) {
                        (Some(p), _) => DiskBackend::open_file(p, b.is_read_only())
                            .map_err(|e| verr(format!("{field}.path"), e))?,
                        (None, Some(r)) => r
                            .file
                            .try_clone()
                            .map_err(|e| bulwark_virtio::block::BackendError::Io {
                                path: r.path.display().to_string(),
                                source: e,
                            })
                            .and_then(|f| DiskBackend::from_range(f, r.offset, r.len, true))
                            .map_err(|e| verr(format!("{field}.bundle_rootfs"), e))?,
                        (None, None) => {
                            return Err(verr(
                                format!("{field}.bundle_rootfs"),
                                "the boot source has no rootfs component",
                            ))
                        }
                    };
                    (
                        Arc::new(Mutex::new(Block::new(disk, &b.id))),
                        format!("virtio-blk{index}"),
                    )
                }
                SlotKind::Rng => (Arc::new(Mutex::new(Rng::new())), "virtio-rng".into()),
                SlotKind::Vsock => {
                    let v = cfg.vsock.ok_or_else(|| verr("devices.vsock", "missing"))?;
                    let dev = Vsock::new(v.guest_cid, &v.uds_path)
                        .map_err(|e| verr("devices.vsock", e))?;
                    (Arc::new(Mutex::new(dev)), "virtio-vsock".into())
                }
            };
            let worker_kind = match slot.kind {
                SlotKind::Block { .. } => seccomp::VirtioWorker::Block,
                SlotKind::Rng => seccomp::VirtioWorker::Rng,
                SlotKind::Vsock => seccomp::VirtioWorker::Vsock,
            };
            let filter =
                seccomp::virtio_worker_filter(mode, worker_kind).map_err(|e| verr("seccomp", e))?;
            let counters = bulwark_virtio::lock_device(&device).counters();
            let (wiring, notify, events) = match (slot.gsi, pci) {
                (Some(gsi), _) => {
                    let (t, notify, events) = attach_mmio(
                        &slot,
                        gsi,
                        device.clone(),
                        mem.clone(),
                        vm_fd,
                        buses,
                        use_ioeventfd,
                    )?;
                    (Wiring::Mmio(t), notify, events)
                }
                (None, Some(pci)) => {
                    let (w, notify, events) = crate::virtio_pci::attach(
                        &slot,
                        &name,
                        device.clone(),
                        mem.clone(),
                        pci,
                        vm_fd,
                        buses,
                        use_ioeventfd,
                    )?;
                    (Wiring::Pci(w), notify, events)
                }
                (None, None) => {
                    return Err(verr(
                        "devices.virtio_transport",
                        "virtio-pci without a PCI bus (a VMM bug)",
                    ))
                }
            };
            let worker_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let (done, control) = (worker_done.clone(), control.clone());
            let worker_name = name.clone();
            let worker = IoWorker::spawn_with_setup(&name, device, events, move || {
                let r = seccomp::install(mode, filter.as_ref()).map_err(|e| {
                    let msg = format!("seccomp on {worker_name}: {e}");
                    control.request_stop(ExitReason::VmmError(msg.clone()));
                    done.store(true, std::sync::atomic::Ordering::SeqCst);
                    msg
                });
                r
            })
            .map_err(|e| verr("virtio worker thread", e))?;
            running.push(Running {
                slot,
                wiring,
                counters,
                notify,
                worker: Some(worker),
                worker_done,
            });
        }
        Ok(Self { running })
    }

    /// State and counters of every device.
    pub fn describe(&self) -> Vec<VirtioDeviceInfo> {
        self.running
            .iter()
            .map(|r| {
                let (status, pci) = match &r.wiring {
                    Wiring::Mmio(t) => {
                        (t.0.lock().unwrap_or_else(|p| p.into_inner()).status(), None)
                    }
                    Wiring::Pci(w) => (w.status(), Some(w.view(&r.slot))),
                };
                VirtioDeviceInfo {
                    slot: r.slot.clone(),
                    status,
                    needs_reset: status & bulwark_virtio::mmio::status::DEVICE_NEEDS_RESET != 0,
                    notify: r.notify,
                    worker_alive: r.worker.as_ref().is_some_and(IoWorker::is_running)
                        && !r.worker_done.load(std::sync::atomic::Ordering::SeqCst),
                    counters: r.counters.snapshot().into(),
                    pci,
                }
            })
            .collect()
    }

    /// Whether any device is on virtio-pci (the vCPUs then program MSI routes).
    pub fn has_pci(&self) -> bool {
        self.running
            .iter()
            .any(|r| matches!(r.wiring, Wiring::Pci(_)))
    }

    /// Stops and joins every worker thread (after the vCPUs are stopped).
    pub fn stop(&mut self) {
        for r in &mut self.running {
            if let Some(w) = r.worker.take() {
                w.stop();
            }
        }
    }
}

impl Drop for VirtioDevices {
    fn drop(&mut self) {
        self.stop();
    }
}
