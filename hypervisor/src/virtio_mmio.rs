//! The virtio devices of a VM (crate `bulwark-virtio`) on the virtio-mmio transport:
//! their configuration, where each sits (MMIO window and GSI, a pure function of the
//! configuration, so `measure` predicts it), the command-line fragments and device-list
//! entries that announce them (both measured), and the running set: each device's
//! `MmioTransport` on [`Buses::mmio`], its interrupt as a KVM irqfd, its queue
//! notifications as KVM ioeventfds (or, without them, MMIO exits forwarded to the
//! transport), and one `IoWorker` thread per device under its own seccomp filter.
//!
//! Order: the `devices.block` disks in configuration order, then rng, then vsock.
//! Device `n` sits at `VIRTIO_MMIO_START + n * 4 KiB` with the `n`th GSI of
//! 5..=15 skipping 9 (`layout.rs`), so at most 10 devices.

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
use crate::config::{BootSource, ConfigError, DevicesConfig, VmConfig};
use crate::control::{Control, ExitReason};
use crate::devices::Buses;
use crate::layout::{
    ACPI_SCI_GSI, VIRTIO_MMIO_FIRST_GSI, VIRTIO_MMIO_LAST_GSI, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START,
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

/// Where one virtio-mmio device sits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Slot {
    /// The device.
    #[serde(flatten)]
    pub kind: SlotKind,
    /// Guest-physical base of its 4 KiB window.
    pub base: u64,
    /// Its IOAPIC pin.
    pub gsi: u32,
    /// Its measured description (`devices` event).
    pub label: String,
}

/// The GSIs virtio-mmio devices take, in order.
fn gsis() -> impl Iterator<Item = u32> {
    (VIRTIO_MMIO_FIRST_GSI..=VIRTIO_MMIO_LAST_GSI).filter(|&g| g != ACPI_SCI_GSI)
}

/// Most virtio-mmio devices (one GSI each).
pub fn max_devices() -> usize {
    gsis().count()
}

/// The slots of the configured devices, in order (a pure function of the config).
/// Devices beyond [`max_devices`] are left out (`validate` refuses such configs).
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
    kinds
        .into_iter()
        .zip(gsis())
        .enumerate()
        .map(|(n, (kind, gsi))| {
            let base = VIRTIO_MMIO_START + n as u64 * MMIO_REGION_SIZE;
            let what = match &kind {
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
            };
            Slot {
                kind,
                base,
                gsi,
                label: format!("{what}@mmio:{base:#x},irq:{gsi}"),
            }
        })
        .collect()
}

/// The virtio-mmio devices as `(window base, GSI)` pairs (for the ACPI DSDT).
pub fn mmio_devices(cfg: &DevicesConfig) -> Vec<(u64, u32)> {
    slots(cfg).iter().map(|s| (s.base, s.gsi)).collect()
}

/// The measured device-list entries of the virtio devices.
pub fn device_list(cfg: &DevicesConfig) -> Vec<String> {
    slots(cfg).into_iter().map(|s| s.label).collect()
}

/// `cmdline` with one `virtio_mmio.device=4K@BASE:GSI` per device appended.
pub fn append_cmdline(cmdline: &str, cfg: &DevicesConfig) -> String {
    let mut out = cmdline.to_string();
    for s in slots(cfg) {
        if !out.is_empty() && !out.ends_with(' ') {
            out.push(' ');
        }
        out.push_str(&MmioTransport::cmdline_fragment(s.base, s.gsi));
    }
    out
}

/// Checks the virtio part of the devices configuration (`boot`: the boot source, when
/// known, for `bundle_rootfs`).
pub fn validate(cfg: &DevicesConfig, boot: Option<&BootSource>) -> Result<(), ConfigError> {
    let n = cfg.block.len() + usize::from(cfg.rng) + usize::from(cfg.vsock.is_some());
    if n > max_devices() {
        return Err(ConfigError::new(
            "devices",
            format!(
                "{n} virtio devices; at most {} fit (one GSI each)",
                max_devices()
            ),
        ));
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
        fn(&VirtioDeviceInfo) -> u64,
    );
    let metrics: [Metric; 7] = [
        (
            "bulwark_virtio_requests_total",
            "counter",
            "Requests (descriptor chains, vsock packets) a virtio device handled.",
            |d| d.counters.requests,
        ),
        (
            "bulwark_virtio_read_bytes_total",
            "counter",
            "Bytes a virtio device moved from its backend into the guest.",
            |d| d.counters.bytes_read,
        ),
        (
            "bulwark_virtio_written_bytes_total",
            "counter",
            "Bytes a virtio device moved from the guest into its backend.",
            |d| d.counters.bytes_written,
        ),
        (
            "bulwark_virtio_errors_total",
            "counter",
            "Failed requests, refused chains and reset packets.",
            |d| d.counters.errors,
        ),
        (
            "bulwark_virtio_needs_reset_total",
            "counter",
            "Times a virtio device entered DEVICE_NEEDS_RESET.",
            |d| d.counters.needs_reset,
        ),
        (
            "bulwark_virtio_guest_faults_total",
            "counter",
            "Guest-caused faults on a virtio device (all counted, logging rate-limited).",
            |d| d.counters.guest_faults,
        ),
        (
            "bulwark_virtio_needs_reset",
            "gauge",
            "1 while a virtio device is in DEVICE_NEEDS_RESET.",
            |d| u64::from(d.needs_reset),
        ),
    ];
    for (name, kind, help, value) in metrics {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for d in devices {
            let kind = match d.slot.kind {
                SlotKind::Block { .. } => "block",
                SlotKind::Rng => "rng",
                SlotKind::Vsock => "vsock",
            };
            let _ = writeln!(
                out,
                "{name}{{device=\"{kind}\",base=\"{:#x}\"}} {}",
                d.slot.base,
                value(d)
            );
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

struct Running {
    slot: Slot,
    transport: Arc<TransportOnBus>,
    counters: Arc<DeviceCounters>,
    notify: NotifyPath,
    worker: Option<IoWorker>,
    worker_done: Arc<std::sync::atomic::AtomicBool>,
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

fn verr(field: impl Into<String>, message: impl std::fmt::Display) -> VirtioError {
    VirtioError {
        field: field.into(),
        message: message.to_string(),
    }
}

impl VirtioDevices {
    /// Creates every configured device, puts its transport on `buses.mmio`, wires its
    /// interrupt (irqfd) and notifications (ioeventfd, or the MMIO-exit fallback) and
    /// starts its worker thread, which installs the worker seccomp filter first.
    pub fn build(
        vm_cfg: &VmConfig,
        inputs: &BootInputs,
        mem: &GuestMemoryMmap,
        kvm: &Kvm,
        vm_fd: &VmFd,
        buses: &Buses,
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
            let irq = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(|e| verr("eventfd", e))?);
            vm_fd
                .register_irqfd(&irq, slot.gsi)
                .map_err(|e| verr("KVM_IRQFD (virtio)", e))?;
            let transport = MmioTransport::new(device.clone(), mem.clone(), irq)
                .map_err(|e| verr("virtio transport", e))?;
            let mut notify = NotifyPath::MmioExit;
            if use_ioeventfd {
                notify = NotifyPath::Ioeventfd;
                for (i, evt) in transport.queue_events().iter().enumerate() {
                    let addr = IoEventAddress::Mmio(slot.base + NOTIFY_OFFSET);
                    if let Err(e) = vm_fd.register_ioevent(evt, &addr, i as u32) {
                        // The transport still signals the same event on an MMIO exit.
                        tracing::warn!(error = %e, base = format_args!("{:#x}", slot.base), "KVM_IOEVENTFD failed; this device's notifications exit to the VMM");
                        notify = NotifyPath::MmioExit;
                    }
                }
            }
            let events = transport
                .queue_events()
                .iter()
                .map(EventFd::try_clone)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| verr("eventfd", e))?;
            let transport = Arc::new(TransportOnBus(Mutex::new(transport)));
            buses
                .mmio
                .insert(slot.base, MMIO_REGION_SIZE, transport.clone())
                .map_err(|e| verr("virtio-mmio window", e))?;
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
                transport,
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
                let status = r
                    .transport
                    .0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .status();
                VirtioDeviceInfo {
                    slot: r.slot.clone(),
                    status,
                    needs_reset: status & bulwark_virtio::mmio::status::DEVICE_NEEDS_RESET != 0,
                    notify: r.notify,
                    worker_alive: r.worker.as_ref().is_some_and(IoWorker::is_running)
                        && !r.worker_done.load(std::sync::atomic::Ordering::SeqCst),
                    counters: r.counters.snapshot().into(),
                }
            })
            .collect()
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
            s.iter().map(|s| (s.base, s.gsi)).collect::<Vec<_>>(),
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
