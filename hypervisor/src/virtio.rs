//! The virtio devices of a VM (crate `bulwark-virtio`), on either transport
//! (`devices.virtio_transport`): their configuration, where each sits (a pure function
//! of the configuration, so `measure` predicts it), the command-line fragments and
//! device-list entries that announce them (both measured), and the running set: the
//! devices, their transports (virtio-mmio here, virtio-pci in `virtio_pci`), queue
//! notifications as KVM ioeventfds (or, without them, MMIO exits forwarded to the
//! transport), and one `IoWorker` thread per device under its own seccomp filter.
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
use crate::config::{BootSource, ConfigError, DevicesConfig, VirtioTransport, VmConfig};
use crate::control::{Control, ExitReason};
use crate::devices::Buses;
use crate::layout::{
    ACPI_SCI_GSI, VIRTIO_MMIO_FIRST_GSI, VIRTIO_MMIO_LAST_GSI, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START,
    VIRTIO_PCI_SIZE, VIRTIO_PCI_START,
};
use crate::seccomp;

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
fn gsis() -> impl Iterator<Item = u32> {
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

/// The bus 0 device number of virtio-pci device `n` (after the assigned devices).
pub fn pci_slot(n_vfio: usize, n: usize) -> u8 {
    (usize::from(crate::vfio::FIRST_SLOT) + n_vfio + n) as u8
}

fn describe_kind(cfg: &DevicesConfig, kind: &SlotKind) -> String {
    match kind {
        SlotKind::Block { index } => {
            let b = &cfg.block[*index];
            format!(
                "virtio-blk,id:{},{},{}",
                b.id,
                if b.is_read_only() { "ro" } else { "rw" },
                if b.bundle_rootfs {
                    "bundle-rootfs"
                } else {
                    "file"
                }
            )
        }
        SlotKind::Rng => "virtio-rng".to_string(),
        SlotKind::Vsock => format!(
            "virtio-vsock,cid:{}",
            cfg.vsock.as_ref().map_or(0, |v| v.guest_cid)
        ),
    }
}

/// The slots of the configured devices, in order (a pure function of the config).
/// Devices beyond what the transport has room for are left out (`validate` refuses
/// such configs).
pub fn slots(cfg: &DevicesConfig) -> Vec<Slot> {
    let mut kinds: Vec<SlotKind> = (0..cfg.block.len())
        .map(|index| SlotKind::Block { index })
        .collect();
    if cfg.rng {
        kinds.push(SlotKind::Rng);
    }
    if cfg.vsock.is_some() {
        kinds.push(SlotKind::Vsock);
    }
    match cfg.virtio_transport {
        VirtioTransport::Mmio => kinds
            .into_iter()
            .zip(gsis())
            .enumerate()
            .map(|(n, (kind, gsi))| {
                let base = VIRTIO_MMIO_START + n as u64 * MMIO_REGION_SIZE;
                let what = describe_kind(cfg, &kind);
                Slot {
                    kind,
                    transport: VirtioTransport::Mmio,
                    base,
                    gsi: Some(gsi),
                    pci_slot: None,
                    label: format!("{what}@mmio:{base:#x},irq:{gsi}"),
                }
            })
            .collect(),
        VirtioTransport::Pci => {
            let n_vfio = cfg.vfio.len();
            kinds
                .into_iter()
                .take(max_pci_devices(n_vfio))
                .enumerate()
                .map(|(n, kind)| {
                    let base = VIRTIO_PCI_START + n as u64 * bulwark_virtio::pci::BAR_SIZE;
                    let slot = pci_slot(n_vfio, n);
                    let what = describe_kind(cfg, &kind);
                    Slot {
                        kind,
                        transport: VirtioTransport::Pci,
                        base,
                        gsi: None,
                        pci_slot: Some(slot),
                        label: format!("{what}@pci:00:{slot:02x}.0,bar0:{base:#x}"),
                    }
                })
                .collect()
        }
    }
}

/// The virtio-mmio devices as `(window base, GSI)` pairs (for the ACPI DSDT; none
/// with virtio-pci).
pub fn mmio_devices(cfg: &DevicesConfig) -> Vec<(u64, u32)> {
    slots(cfg)
        .iter()
        .filter_map(|s| s.gsi.map(|g| (s.base, g)))
        .collect()
}

/// The measured device-list entries of the virtio-mmio devices (the virtio-pci ones
/// are on the PCI bus's list, [`pci_device_list`]).
pub fn device_list(cfg: &DevicesConfig) -> Vec<String> {
    slots(cfg)
        .into_iter()
        .filter(|s| s.transport == VirtioTransport::Mmio)
        .map(|s| s.label)
        .collect()
}

/// The measured device-list entries of the virtio-pci functions, in slot order.
pub fn pci_device_list(cfg: &DevicesConfig) -> Vec<String> {
    slots(cfg)
        .into_iter()
        .filter(|s| s.transport == VirtioTransport::Pci)
        .map(|s| s.label)
        .collect()
}

/// `cmdline` with one `virtio_mmio.device=4K@BASE:GSI` per virtio-mmio device appended.
pub fn append_cmdline(cmdline: &str, cfg: &DevicesConfig) -> String {
    let mut out = cmdline.to_string();
    for (base, gsi) in mmio_devices(cfg) {
        if !out.is_empty() && !out.ends_with(' ') {
            out.push(' ');
        }
        out.push_str(&MmioTransport::cmdline_fragment(base, gsi));
    }
    out
}

/// Checks the virtio part of the devices configuration (`boot`: the boot source, when
/// known, for `bundle_rootfs`).
pub fn validate(cfg: &DevicesConfig, boot: Option<&BootSource>) -> Result<(), ConfigError> {
    let n = cfg.block.len() + usize::from(cfg.rng) + usize::from(cfg.vsock.is_some());
    match cfg.virtio_transport {
        VirtioTransport::Mmio if n > max_devices() => {
            return Err(ConfigError::new(
                "devices",
                format!(
                    "{n} virtio devices; at most {} fit on virtio-mmio (one GSI each); devices.virtio_transport \"pci\" takes more",
                    max_devices()
                ),
            ));
        }
        VirtioTransport::Pci if n > max_pci_devices(cfg.vfio.len()) => {
            return Err(ConfigError::new(
                "devices",
                format!(
                    "{n} virtio-pci devices; beside {} assigned devices bus 0 has room for {}",
                    cfg.vfio.len(),
                    max_pci_devices(cfg.vfio.len())
                ),
            ));
        }
        _ => {}
    }
    // The windows must fit the space the layout reserves for them.
    debug_assert!(max_devices() as u64 * MMIO_REGION_SIZE <= VIRTIO_MMIO_SIZE);
    let mut seen_rootfs = false;
    for (i, b) in cfg.block.iter().enumerate() {
        let field = |f: &str| format!("devices.block[{i}].{f}");
        if b.id.is_empty()
            || b.id.len() > MAX_ID_LEN
            || !b
                .id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
        {
            return Err(ConfigError::new(
                field("id"),
                format!("must be 1..={MAX_ID_LEN} characters of [A-Za-z0-9._-]"),
            ));
        }
        if cfg.block[..i].iter().any(|o| o.id == b.id) {
            return Err(ConfigError::new(
                field("id"),
                format!("duplicate id {:?}", b.id),
            ));
        }
        match (&b.path, b.bundle_rootfs) {
            (Some(_), true) | (None, false) => {
                return Err(ConfigError::new(
                    format!("devices.block[{i}]"),
                    "give exactly one of `path` and `bundle_rootfs: true`",
                ));
            }
            (Some(p), false) if p.as_os_str().is_empty() => {
                return Err(ConfigError::new(field("path"), "must not be empty"));
            }
            (None, true) => {
                if boot.is_some_and(|b| !matches!(b, BootSource::Bundle { .. })) {
                    return Err(ConfigError::new(
                        field("bundle_rootfs"),
                        "needs a signed bundle boot source (boot_source.kind: bundle)",
                    ));
                }
                if seen_rootfs {
                    return Err(ConfigError::new(
                        field("bundle_rootfs"),
                        "only one disk can serve the bundle rootfs",
                    ));
                }
                seen_rootfs = true;
                if b.read_only == Some(false) {
                    return Err(ConfigError::new(
                        field("read_only"),
                        "the bundle rootfs is always read-only",
                    ));
                }
            }
            (Some(_), false) => {}
        }
    }
    if let Some(v) = &cfg.vsock {
        if v.guest_cid < 3 || v.guest_cid >= u64::from(u32::MAX) {
            return Err(ConfigError::new(
                "devices.vsock.guest_cid",
                "must be between 3 and 4294967294",
            ));
        }
        if v.uds_path.as_os_str().is_empty() {
            return Err(ConfigError::new(
                "devices.vsock.uds_path",
                "must not be empty",
            ));
        }
    }
    Ok(())
}

/// Checks what the devices need from the boot source (the bundle's rootfs).
pub fn check_inputs(cfg: &DevicesConfig, inputs: &BootInputs) -> Result<(), ConfigError> {
    for (i, b) in cfg.block.iter().enumerate() {
        if b.bundle_rootfs && inputs.rootfs.is_none() {
            return Err(ConfigError::new(
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
        vm_cfg: &VmConfig,
        inputs: &BootInputs,
        mem: &GuestMemoryMmap,
        kvm: &Kvm,
        vm_fd: &VmFd,
        buses: &Buses,
        pci: Option<&crate::pci::PciBus>,
        control: &Arc<Control>,
    ) -> Result<Self, VirtioError> {
        let (cfg, mode) = (&vm_cfg.devices, vm_cfg.seccomp);
        check_inputs(cfg, inputs).map_err(|e| verr(e.field, e.message))?;
        let slots = slots(cfg);
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
        for slot in slots {
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
                    let v = cfg
                        .vsock
                        .as_ref()
                        .ok_or_else(|| verr("devices.vsock", "missing"))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"{"machine":{"vcpus":1,"mem_mib":64},
        "boot_source":{"kind":"linux","kernel":"k"},
        "devices":DEV}"#;

    fn parse(dev: &str) -> Result<VmConfig, ConfigError> {
        VmConfig::from_json(&BASE.replace("DEV", dev))
    }

    #[test]
    fn slots_follow_the_layout_plan_and_skip_the_sci() {
        let c = parse(
            r#"{"block":[{"id":"a","path":"a.img"},{"id":"b","path":"b.img","read_only":true},
                {"id":"c","path":"c"},{"id":"d","path":"d"},{"id":"e","path":"e"}],
                "rng":true,"vsock":{"guest_cid":3,"uds_path":"/tmp/v.sock"}}"#,
        )
        .unwrap();
        let s = slots(&c.devices);
        assert_eq!(
            s.iter()
                .map(|s| (s.base, s.gsi.unwrap()))
                .collect::<Vec<_>>(),
            vec![
                (0xd000_0000, 5),
                (0xd000_1000, 6),
                (0xd000_2000, 7),
                (0xd000_3000, 8),
                (0xd000_4000, 10),
                (0xd000_5000, 11),
                (0xd000_6000, 12)
            ]
        );
        assert_eq!(s[1].label, "virtio-blk,id:b,ro,file@mmio:0xd0001000,irq:6");
        assert_eq!(s[5].label, "virtio-rng@mmio:0xd0005000,irq:11");
        assert_eq!(s[6].label, "virtio-vsock,cid:3@mmio:0xd0006000,irq:12");
        assert_eq!(
            append_cmdline("console=ttyS0", &c.devices)
                .split(' ')
                .nth(1),
            Some("virtio_mmio.device=4K@0xd0000000:5")
        );
        assert_eq!(mmio_devices(&c.devices).len(), 7);
    }

    #[test]
    fn pci_slots_follow_the_vfio_devices_and_bars_sit_in_the_reserved_window() {
        let c = parse(
            r#"{"virtio_transport":"pci",
                "vfio":[{"bdf":"0000:41:00.0"},{"bdf":"0000:42:00.0"}],
                "block":[{"id":"a","path":"a.img","read_only":true}],
                "rng":true,"vsock":{"guest_cid":3,"uds_path":"/tmp/v.sock"}}"#,
        )
        .unwrap();
        let s = slots(&c.devices);
        assert_eq!(
            s.iter()
                .map(|s| (s.pci_slot, s.base, s.gsi))
                .collect::<Vec<_>>(),
            vec![
                (Some(3), 0xcff0_0000, None),
                (Some(4), 0xcff0_8000, None),
                (Some(5), 0xcff1_0000, None)
            ]
        );
        assert_eq!(
            s[0].label,
            "virtio-blk,id:a,ro,file@pci:00:03.0,bar0:0xcff00000"
        );
        assert_eq!(s[1].label, "virtio-rng@pci:00:04.0,bar0:0xcff08000");
        assert_eq!(s[2].label, "virtio-vsock,cid:3@pci:00:05.0,bar0:0xcff10000");
        assert_eq!(s[2].pci_address().as_deref(), Some("00:05.0"));
        // Nothing on the virtio-mmio side: no windows, no DSDT entries, no fragments.
        assert!(mmio_devices(&c.devices).is_empty());
        assert!(device_list(&c.devices).is_empty());
        assert_eq!(append_cmdline("console=ttyS0", &c.devices), "console=ttyS0");
        assert_eq!(pci_device_list(&c.devices).len(), 3);
        // The measured PCI list: host bridge, assigned devices, virtio functions.
        let hosts: Vec<crate::vfio::HostDevice> = Vec::new();
        let entries = crate::pci::measured_entries(&c.devices, &hosts);
        assert_eq!(entries[0], "pci-host@io:0xcf8-0xcff,ecam:0xe0000000");
        assert_eq!(&entries[1..], &pci_device_list(&c.devices)[..]);
        // The window holds a BAR0 for every free device number of bus 0.
        let last = VIRTIO_PCI_START + max_pci_devices(0) as u64 * bulwark_virtio::pci::BAR_SIZE;
        assert!(last <= VIRTIO_PCI_START + VIRTIO_PCI_SIZE);
        assert_eq!(
            VIRTIO_PCI_START + VIRTIO_PCI_SIZE,
            crate::layout::PCI_MMIO32_START + crate::layout::PCI_MMIO32_SIZE
        );
        // Without virtio-pci or assigned devices there is no PCI bus at all.
        let m = parse(r#"{"rng":true}"#).unwrap();
        assert!(crate::pci::measured_entries(&m.devices, &hosts).is_empty());
        assert!(!crate::pci::bus_exists(&m.devices));
        let bare = parse(r#"{"virtio_transport":"pci"}"#).unwrap();
        assert_eq!(crate::pci::measured_entries(&bare.devices, &hosts).len(), 1);
    }

    #[test]
    fn the_transport_is_validated_and_pci_takes_more_devices_than_mmio() {
        let field = |dev: &str| parse(dev).unwrap_err();
        let e = field(r#"{"virtio_transport":"isa"}"#);
        assert_eq!(e.field, "devices.virtio_transport");
        assert!(
            e.message.contains("mmio") && e.message.contains("pci"),
            "{e}"
        );
        let many: Vec<String> = (0..11)
            .map(|i| format!(r#"{{"id":"d{i}","path":"x"}}"#))
            .collect();
        let blocks = many.join(",");
        let e = field(&format!(r#"{{"block":[{blocks}]}}"#));
        assert!(e.message.contains("virtio_transport"), "{e}");
        let c = parse(&format!(
            r#"{{"virtio_transport":"pci","block":[{blocks}]}}"#
        ))
        .unwrap();
        assert_eq!(slots(&c.devices).len(), 11);
        // 29 assigned devices leave two device numbers of bus 0.
        let vfio: Vec<String> = (0..29)
            .map(|i| format!(r#"{{"bdf":"0000:{:02x}:00.0"}}"#, i + 1))
            .collect();
        let vfio = vfio.join(",");
        let e = field(&format!(
            r#"{{"virtio_transport":"pci","vfio":[{vfio}],"rng":true,"block":[{{"id":"a","path":"x"}},{{"id":"b","path":"y"}}]}}"#
        ));
        assert_eq!(e.field, "devices");
        assert!(e.message.contains("room for 2"), "{e}");
        let ok = parse(&format!(
            r#"{{"virtio_transport":"pci","vfio":[{vfio}],"rng":true,"block":[{{"id":"a","path":"x"}}]}}"#
        ))
        .unwrap();
        assert_eq!(
            slots(&ok.devices)
                .iter()
                .map(|s| s.pci_slot)
                .collect::<Vec<_>>(),
            vec![Some(30), Some(31)]
        );
        // The default stays virtio-mmio and is not written back out.
        let d = parse(r#"{"rng":true}"#).unwrap();
        assert_eq!(d.devices.virtio_transport, VirtioTransport::Mmio);
        assert!(!serde_json::to_string(&d.devices)
            .unwrap()
            .contains("virtio_transport"));
    }

    #[test]
    fn bad_devices_are_refused_naming_the_field() {
        let field = |dev: &str| parse(dev).unwrap_err().field;
        assert_eq!(
            field(r#"{"block":[{"id":"","path":"x"}]}"#),
            "devices.block[0].id"
        );
        assert_eq!(
            field(r#"{"block":[{"id":"a","path":"x"},{"id":"a","path":"y"}]}"#),
            "devices.block[1].id"
        );
        assert_eq!(field(r#"{"block":[{"id":"a"}]}"#), "devices.block[0]");
        assert_eq!(
            field(r#"{"block":[{"id":"a","bundle_rootfs":true}]}"#),
            "devices.block[0].bundle_rootfs"
        );
        assert_eq!(
            field(r#"{"block":[{"id":"a","path":"x","bogus":1}]}"#),
            "devices.block[0].bogus"
        );
        assert_eq!(
            field(r#"{"vsock":{"guest_cid":2,"uds_path":"/x"}}"#),
            "devices.vsock.guest_cid"
        );
        assert_eq!(
            field(r#"{"vsock":{"guest_cid":"x","uds_path":"/x"}}"#),
            "devices.vsock.guest_cid"
        );
        let many: Vec<String> = (0..11)
            .map(|i| format!(r#"{{"id":"d{i}","path":"x"}}"#))
            .collect();
        assert_eq!(
            field(&format!(r#"{{"block":[{}]}}"#, many.join(","))),
            "devices"
        );
    }
}
