//! VFIO device assignment through `vfio-ioctls`, with the legacy container/group
//! interface or iommufd and the device cdev (`interface`): the host checks, the
//! container (or iommufd IOAS) with all guest RAM DMA-mapped (IOVA = GPA), each
//! device reset and placed behind its own PCIe root port on the guest's bus 0
//! (the device on the port's secondary bus) with its BARs as KVM memory slots
//! (only the MSI-X table/PBA pages trap), MSI/MSI-X through irqfd and GSI routing, and
//! the reset at teardown. Design and limits: `docs/vfio.md`.

pub mod function;
pub mod host;

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};
use vfio_bindings::bindings::vfio::{
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_INTX_IRQ_INDEX, VFIO_REGION_INFO_FLAG_MMAP,
};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioDeviceFd, VfioError, VfioIommufd, VfioOps};
use vm_memory::{FileOffset, GuestMemoryMmap, MmapRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::devices::Buses;
use crate::irq_routing::GsiRouter;
use crate::layout::{MemoryLayout, PCI_MMIO32_ALLOC_SIZE, PCI_MMIO32_START};
use crate::pci::{
    allocate_ports, regs, BarKind, BarRequest, Bdf, LinkInfo, PciBus, PciRoot, PortPlacement,
    RootPort,
};
use function::{BarTrap, DeviceIo, GuestBar, MsiInfo, MsixInfo, PassthroughFunction, Vector};
pub use host::{HostDevice, HostError};

/// The GSI (IOAPIC pin) of INTx pin `pin` (1..=4, INTA..INTD) of the device behind
/// the root port in guest slot `slot` of bus 0:
/// `PCI_INTX_FIRST_GSI + (slot + pin - 1) % 8`, so neighbouring ports spread over
/// the eight GSIs 16..=23. The device is
/// device 0 of the port's secondary bus, so the bridge swizzle leaves its pin as is
/// and the root port's `_PRT` entry for (slot, pin) applies. A guest without ACPI
/// reads it from the interrupt line register; the ACPI `_PRT` must say the same,
/// level-triggered and active-high (what KVM's IOAPIC expects from an irqfd).
pub fn intx_gsi(slot: u8, pin: u8) -> u32 {
    crate::layout::PCI_INTX_FIRST_GSI + (u32::from(slot) + u32::from(pin.clamp(1, 4)) - 1) % 8
}

/// One host PCI device assigned to the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VfioDeviceConfig {
    /// Host PCI address, `0000:41:00.0`.
    pub bdf: String,
    /// The VFIO interface to open it through.
    #[serde(default)]
    pub interface: VfioInterface,
    /// Its vendor and device IDs as the config states them (`vvvv:dddd`, hex). With
    /// it, `measure` predicts the device's entry without this host's sysfs (a tenant
    /// predicting on its own machine), and a boot refuses a device whose IDs differ.
    /// Without it, both read sysfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl VfioDeviceConfig {
    /// The stated IDs, parsed (`None` when not stated).
    pub fn stated_id(&self) -> Result<Option<(u16, u16)>, String> {
        let Some(id) = &self.id else {
            return Ok(None);
        };
        let parse = |s: &str| {
            (s.len() == 4)
                .then(|| u16::from_str_radix(s, 16).ok())
                .flatten()
        };
        match id.split_once(':') {
            Some((v, d)) => match (parse(v), parse(d)) {
                (Some(v), Some(d)) => Ok(Some((v, d))),
                _ => Err(format!(
                    "{id:?} is not vvvv:dddd (hex vendor and device IDs)"
                )),
            },
            None => Err(format!(
                "{id:?} is not vvvv:dddd (hex vendor and device IDs)"
            )),
        }
    }
}

/// The VFIO user interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VfioInterface {
    /// Legacy container and group (`/dev/vfio/vfio`, `/dev/vfio/N`).
    #[default]
    Container,
    /// iommufd and the device cdev (`/dev/iommu`, `/dev/vfio/devices/vfioN`; Linux
    /// 6.6 or later): one IOAS holds the DMA mappings, each device cdev is bound to the
    /// iommufd and attached to it. Every device of a VM uses the same interface.
    Iommufd,
}

/// Where sysfs lists PCI devices.
pub const SYSFS_PCI_DEVICES: &str = "/sys/bus/pci/devices";
/// The iommufd character device.
pub const IOMMUFD_DEV: &str = "/dev/iommu";
/// Where the VFIO device cdevs are (`vfioN`).
pub const VFIO_CDEV_DIR: &str = "/dev/vfio/devices";

/// The VFIO user interface the devices of one VM are opened through: the legacy
/// container (type-1 IOMMU) with one group per device, or iommufd with one IOAS that
/// every device cdev is bound and attached to. Either one holds the DMA mappings of
/// guest RAM.
enum Backend {
    Container(Arc<VfioContainer>),
    Iommufd(Arc<VfioIommufd>),
}

impl Backend {
    /// Opens the interface the hosts were checked for (`cdev` set: iommufd), with
    /// KVM's VFIO pseudo-device, which every group or device cdev is added to: it
    /// tells KVM that the VM has assigned devices, so KVM honours the guest's memory
    /// types when a device can do non-coherent (no-snoop) DMA, as GPUs can.
    fn open(hosts: &[HostDevice], vm: &VmFd) -> Result<Backend, VfioSetupError> {
        let mut create = kvm_bindings::kvm_create_device {
            type_: kvm_bindings::kvm_device_type_KVM_DEV_TYPE_VFIO,
            fd: 0,
            flags: 0,
        };
        let kvm_vfio = vm.create_device(&mut create).map_err(|e| {
            VfioSetupError::Device(format!(
                "devices.vfio: KVM_CREATE_DEVICE (KVM's VFIO device): {e}"
            ))
        })?;
        let handle = Some(Arc::new(VfioDeviceFd::new_from_kvm(kvm_vfio)));
        if hosts.iter().any(|h| h.cdev.is_some()) {
            let iommufd = iommufd_ioctls::IommuFd::new().map_err(|e| {
                VfioSetupError::Device(format!("devices.vfio: opening {IOMMUFD_DEV}: {e}"))
            })?;
            let ops = VfioIommufd::new(Arc::new(iommufd), None, handle).map_err(|e| {
                VfioSetupError::Device(format!("devices.vfio: allocating an iommufd IOAS: {e}"))
            })?;
            Ok(Backend::Iommufd(Arc::new(ops)))
        } else {
            let c = VfioContainer::new(handle).map_err(|e| {
                VfioSetupError::Device(format!("devices.vfio: opening the VFIO container: {e}"))
            })?;
            Ok(Backend::Container(Arc::new(c)))
        }
    }

    fn ops(&self) -> Arc<dyn VfioOps> {
        match self {
            Backend::Container(c) => c.clone(),
            Backend::Iommufd(i) => i.clone(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Backend::Container(_) => "container",
            Backend::Iommufd(_) => "iommufd",
        }
    }
}
/// Assigned device `i` sits behind the root port at `00:(FIRST_SLOT + i).0`, as device
/// `0.0` of that port's secondary bus, bus number `FIRST_SLOT + i`.
pub const FIRST_SLOT: u8 = 1;
/// Most devices one VM takes (slots 1..=31 of bus 0).
pub const MAX_DEVICES: usize = 31;
/// KVM memory slots for BARs start here (guest RAM uses the first few).
pub const FIRST_BAR_MEMSLOT: u32 = 16;

/// Why assignment failed.
#[derive(Debug, thiserror::Error)]
pub enum VfioSetupError {
    /// A host check failed.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The host or this build lacks something.
    #[error("{0}")]
    Unsupported(String),
    /// Opening or programming a device failed.
    #[error("{0}")]
    Device(String),
    /// The BARs do not fit the windows.
    #[error("{0}")]
    Config(String),
}

/// Host checks before anything is allocated or opened: interface, locked-memory
/// limit against `guest_ram`, VFIO present, each device and its IOMMU group.
pub fn preflight(
    cfg: &[VfioDeviceConfig],
    guest_ram: u64,
) -> Result<Vec<HostDevice>, VfioSetupError> {
    if cfg.is_empty() {
        return Ok(Vec::new());
    }
    let interface = cfg[0].interface;
    if let Some((i, _)) = cfg
        .iter()
        .enumerate()
        .find(|(_, d)| d.interface != interface)
    {
        return Err(VfioSetupError::Config(format!(
            "devices.vfio[{i}].interface: every device of a VM uses the same VFIO interface (devices.vfio[0] uses {interface:?})"
        )));
    }
    let limit = crate::sys::memlock_limit()
        .map_err(|e| VfioSetupError::Unsupported(format!("getrlimit(RLIMIT_MEMLOCK): {e}")))?;
    // Both interfaces account the pinned pages against RLIMIT_MEMLOCK.
    host::check_memlock(limit, guest_ram)?;
    match interface {
        VfioInterface::Container if !Path::new("/dev/vfio/vfio").exists() => {
            return Err(VfioSetupError::Unsupported(
                "devices.vfio: VFIO is not available on this host (no /dev/vfio/vfio: load vfio-pci and vfio_iommu_type1)".into(),
            ));
        }
        VfioInterface::Iommufd if !Path::new(IOMMUFD_DEV).exists() => {
            return Err(VfioSetupError::Unsupported(format!(
                "devices.vfio: the iommufd interface is not supported on this host (no {IOMMUFD_DEV}: the kernel needs CONFIG_IOMMUFD, 6.2 or later, and the iommufd module); use \"interface\": \"container\""
            )));
        }
        _ => {}
    }
    let assigned: Vec<Bdf> = cfg
        .iter()
        .map(|d| d.bdf.parse())
        .collect::<Result<_, _>>()
        .map_err(|e: String| VfioSetupError::Config(format!("devices.vfio: {e}")))?;
    let root = Path::new(SYSFS_PCI_DEVICES);
    assigned
        .iter()
        .zip(cfg)
        .enumerate()
        .map(|(i, (b, d))| {
            let mut h = host::check_device(root, b, &assigned)?;
            check_stated_id(i, d, &h)?;
            if interface == VfioInterface::Iommufd {
                h.cdev = Some(host::check_cdev(root, Path::new(VFIO_CDEV_DIR), b)?);
            }
            Ok(h)
        })
        .collect()
}

/// The IDs of the configured devices, with no other check (for `bulwark-vmm
/// measure`): as the config states them (`id`), else from this host's sysfs.
pub fn describe_hosts(cfg: &[VfioDeviceConfig]) -> Result<Vec<HostDevice>, VfioSetupError> {
    cfg.iter()
        .enumerate()
        .map(|(i, d)| {
            let b: Bdf = d
                .bdf
                .parse()
                .map_err(|e: String| VfioSetupError::Config(format!("devices.vfio: {e}")))?;
            match d.stated_id() {
                Ok(Some((vendor, device))) => Ok(HostDevice {
                    bdf: b,
                    group: 0,
                    vendor,
                    device,
                    cdev: None,
                }),
                Ok(None) => Ok(host::describe(Path::new(SYSFS_PCI_DEVICES), &b)?),
                Err(e) => Err(VfioSetupError::Config(format!("devices.vfio[{i}].id: {e}"))),
            }
        })
        .collect()
}

/// Refuses a device whose IDs differ from the ones its config states.
fn check_stated_id(i: usize, d: &VfioDeviceConfig, h: &HostDevice) -> Result<(), VfioSetupError> {
    match d.stated_id() {
        Ok(Some((vendor, device))) if (vendor, device) != (h.vendor, h.device) => {
            Err(VfioSetupError::Config(format!(
                "devices.vfio[{i}].id: the config states {vendor:04x}:{device:04x}, but the host's device at {} is {:04x}:{:04x}",
                d.bdf, h.vendor, h.device
            )))
        }
        Ok(_) => Ok(()),
        Err(e) => Err(VfioSetupError::Config(format!("devices.vfio[{i}].id: {e}"))),
    }
}

/// With assigned devices: [`VfioSet::attach`] on the VM's PCI bus (`pci::PciBus`,
/// which exists whenever devices are assigned). Without: nothing.
pub fn attach_to_vm(
    assigned: &[AssignedSlot],
    vm: &Arc<VmFd>,
    pci: Option<&PciBus>,
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    buses: &Buses,
) -> Result<Option<VfioSet>, VfioSetupError> {
    if assigned.is_empty() {
        return Ok(None);
    }
    let pci = pci.ok_or_else(|| {
        VfioSetupError::Device("assigned devices but no PCI bus (a VMM bug)".into())
    })?;
    let mut set = VfioSet::attach(assigned, vm, &pci.router, mem, layout, buses, &pci.root)?;
    set.root = Some(pci.root.clone());
    Ok(Some(set))
}

/// Where one assigned device sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignedSlot {
    /// The host device (address and IDs from sysfs).
    pub host: HostDevice,
    /// The bus 0 device number of its root port, which is also the port's secondary
    /// bus number (the device is `slot:00.0`).
    pub slot: u8,
}

impl AssignedSlot {
    /// Its two measured entries: the root port, then the function behind it.
    pub fn entries(&self) -> [String; 2] {
        let (slot, h) = (self.slot, &self.host);
        [
            format!("pcie-root-port@00:{slot:02x}.0,bus={slot:02x}"),
            format!(
                "vfio-pci@{slot:02x}:00.0,host={},id={:04x}:{:04x}",
                h.bdf, h.vendor, h.device
            ),
        ]
    }
}

/// Appends the passthrough metrics (Prometheus text format) for `v`.
pub fn write_metrics(out: &mut String, v: &VfioReport) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "# HELP bulwark_vfio_dma_map_seconds Time to DMA-map and pin guest RAM for assigned devices.\n# TYPE bulwark_vfio_dma_map_seconds gauge\nbulwark_vfio_dma_map_seconds {:.3}",
        v.dma_map_ms as f64 / 1000.0
    );
    let _ = writeln!(
        out,
        "# HELP bulwark_vfio_dma_mapped_bytes Guest RAM DMA-mapped.\n# TYPE bulwark_vfio_dma_mapped_bytes gauge\nbulwark_vfio_dma_mapped_bytes {}",
        v.dma_mapped_bytes
    );
    let _ = writeln!(
        out,
        "# HELP bulwark_vfio_devices Assigned PCI devices.\n# TYPE bulwark_vfio_devices gauge\nbulwark_vfio_devices {}",
        v.devices.len()
    );
}

/// One BAR in `GET /vm`.
#[derive(Debug, Clone, Serialize)]
pub struct BarReport {
    /// BAR index.
    pub index: u8,
    /// Kind.
    pub kind: BarKind,
    /// The device's BAR size in bytes.
    pub host_size: u64,
    /// Guest-physical address.
    pub guest_addr: u64,
    /// BAR offsets `(offset, len)` that trap (MSI-X table/PBA pages, or the whole BAR
    /// when VFIO does not allow mapping it); the rest is a KVM memory slot.
    pub trapped: Vec<(u64, u64)>,
}

/// The root port above an assigned device in `GET /vm`.
#[derive(Debug, Clone, Serialize)]
pub struct RootPortReport {
    /// Where the port sits (`0000:00:SS.0`).
    pub bdf: String,
    /// Its secondary bus (where the device is).
    pub secondary_bus: u8,
    /// Non-prefetchable window `(base, size)` below 4 GiB.
    pub mem_window: Option<(u64, u64)>,
    /// 64-bit prefetchable window `(base, size)`.
    pub prefetchable_window: Option<(u64, u64)>,
    /// Bus number or window changes the guest tried (refused).
    pub window_writes_refused: u64,
    /// Secondary bus resets the guest did (each resets the device).
    pub bus_resets: u64,
}

/// One assigned device in `GET /vm`.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceReport {
    /// Host PCI address.
    pub bdf: String,
    /// Where the guest sees it (device 0 of its root port's secondary bus).
    pub guest_bdf: String,
    /// The root port above it, on bus 0.
    pub root_port: RootPortReport,
    /// IOMMU group.
    pub group: u32,
    /// `vendor:device`.
    pub id: String,
    /// Whether VFIO could reset it (before the guest and at teardown).
    pub reset_supported: bool,
    /// Memory BARs.
    pub bars: Vec<BarReport>,
    /// Interrupt capabilities wired for the device ("msi", "msi-x", "intx").
    pub interrupt_capabilities: Vec<&'static str>,
    /// What is in effect now: "msi-x", "msi", "intx" or "none".
    pub interrupt_mode: &'static str,
    /// BAR moves the guest tried (refused).
    pub bar_moves_refused: u64,
    /// MSI messages not routed (not an x86 interrupt address).
    pub bad_msi_messages: u64,
    /// VFIO/KVM failures while serving the guest.
    pub errors: u64,
}

/// Passthrough state in `GET /vm`.
#[derive(Debug, Clone, Serialize)]
pub struct VfioReport {
    /// The VFIO interface: "container" (legacy container/group) or "iommufd".
    pub interface: &'static str,
    /// Time to DMA-map all guest RAM into the IOMMU domain (pinning included).
    pub dma_map_ms: u64,
    /// Bytes DMA-mapped.
    pub dma_mapped_bytes: u64,
    /// Malformed guest configuration accesses (bad size or alignment), dropped.
    pub pci_config_malformed: u64,
    /// The devices.
    pub devices: Vec<DeviceReport>,
}

struct Assigned {
    host: HostDevice,
    slot: u8,
    port: Arc<RootPort>,
    dev: Arc<VfioDevice>,
    io: Arc<VfioIo>,
    function: Arc<PassthroughFunction>,
    bars: Vec<BarReport>,
    caps: Vec<&'static str>,
    reset_supported: bool,
}

/// The assigned devices of one VM.
pub struct VfioSet {
    backend: Backend,
    devices: Vec<Assigned>,
    dma_map: Duration,
    dma_bytes: u64,
    torn_down: AtomicBool,
    root: Option<Arc<PciRoot>>,
}

impl std::fmt::Debug for VfioSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioSet")
            .field(
                "devices",
                &self.devices.iter().map(|d| d.host.bdf).collect::<Vec<_>>(),
            )
            .field("dma_map", &self.dma_map)
            .finish()
    }
}

/// One MSI or MSI-X vector's eventfd (VFIO signals it) and GSI. Its KVM irqfd is
/// registered only while the gate is open (the vector enabled and unmasked); while it
/// is closed the eventfd's count keeps what the device raised, which is the vector's
/// pending bit, and KVM delivers it when the irqfd is registered again.
struct GatedVector {
    evt: EventFd,
    gsi: u32,
    /// An interrupt read off the eventfd (by a pending-bit read) and not yet delivered.
    held: AtomicBool,
}

impl GatedVector {
    fn new(gsi: u32) -> Result<GatedVector, VfioSetupError> {
        Ok(GatedVector {
            evt: EventFd::new(EFD_NONBLOCK).map_err(|e| VfioSetupError::Device(e.to_string()))?,
            gsi,
            held: AtomicBool::new(false),
        })
    }

    fn gate(&self, vm: &VmFd, open: bool) -> Result<(), String> {
        if open {
            // KVM injects at once if the eventfd already counts an interrupt.
            vm.register_irqfd(&self.evt, self.gsi)
                .map_err(|e| format!("KVM_IRQFD (GSI {}): {e}", self.gsi))?;
            if self.held.swap(false, Ordering::SeqCst) {
                self.evt
                    .write(1)
                    .map_err(|e| format!("re-raising a held interrupt: {e}"))?;
            }
        } else {
            vm.unregister_irqfd(&self.evt, self.gsi)
                .map_err(|e| format!("KVM_IRQFD deassign (GSI {}): {e}", self.gsi))?;
        }
        Ok(())
    }

    /// Whether an interrupt waits (reads the eventfd, keeping what it finds as held).
    fn pending(&self) -> bool {
        if self.held.load(Ordering::SeqCst) {
            return true;
        }
        let got = self.evt.read().is_ok();
        if got {
            self.held.store(true, Ordering::SeqCst);
        }
        got
    }

    /// Forgets what is held (after a device reset).
    fn drop_held(&self) {
        let _ = self.evt.read();
        self.held.store(false, Ordering::SeqCst);
    }
}

/// [`DeviceIo`] over a VFIO device fd.
struct VfioIo {
    dev: Arc<VfioDevice>,
    vm: Arc<VmFd>,
    config_size: u64,
    bar_sizes: [u64; 6],
    msi: Vec<GatedVector>,
    msix: Vec<GatedVector>,
    /// INTx trigger and resample (unmask) eventfds, when INTx is wired.
    intx: Option<(EventFd, EventFd)>,
}

impl VfioIo {
    /// Turns INTx delivery through VFIO on (trigger eventfd, unmask on resample) or
    /// off. VFIO allows one interrupt type at a time, so INTx is off while MSI or
    /// MSI-X is enabled.
    fn set_intx(&self, enable: bool) -> Result<(), String> {
        let Some((trigger, resample)) = &self.intx else {
            return Ok(());
        };
        if enable {
            self.dev
                .enable_irq(VFIO_PCI_INTX_IRQ_INDEX, vec![trigger])
                .and_then(|()| {
                    self.dev
                        .set_irq_resample_fd(VFIO_PCI_INTX_IRQ_INDEX, vec![resample])
                })
        } else {
            self.dev.disable_irq(VFIO_PCI_INTX_IRQ_INDEX)
        }
        .map_err(|e| format!("INTx: {e}"))
    }
}

impl DeviceIo for VfioIo {
    fn config_read(&self, offset: u64, data: &mut [u8]) {
        if offset + data.len() as u64 <= self.config_size {
            self.dev
                .region_read(VFIO_PCI_CONFIG_REGION_INDEX, data, offset);
        }
    }
    fn config_write(&self, offset: u64, data: &[u8]) {
        if offset + data.len() as u64 <= self.config_size {
            self.dev
                .region_write(VFIO_PCI_CONFIG_REGION_INDEX, data, offset);
        }
    }
    fn bar_read(&self, bar: u8, offset: u64, data: &mut [u8]) {
        if bar < 6 && offset + data.len() as u64 <= self.bar_sizes[usize::from(bar)] {
            self.dev.region_read(u32::from(bar), data, offset);
        }
    }
    fn bar_write(&self, bar: u8, offset: u64, data: &[u8]) {
        if bar < 6 && offset + data.len() as u64 <= self.bar_sizes[usize::from(bar)] {
            self.dev.region_write(u32::from(bar), data, offset);
        }
    }
    fn set_msi(&self, enable: bool) -> Result<(), String> {
        if enable {
            self.set_intx(false)?;
            self.dev
                .enable_msi(self.msi.iter().map(|v| &v.evt).collect())
                .map_err(|e| e.to_string())
        } else {
            self.dev.disable_msi().map_err(|e| e.to_string())?;
            // What was held belongs to the disabled vector.
            self.msi.iter().for_each(GatedVector::drop_held);
            self.set_intx(true)
        }
    }
    fn set_msix(&self, enable: bool) -> Result<(), String> {
        if enable {
            self.set_intx(false)?;
            self.dev
                .enable_msix(self.msix.iter().map(|v| &v.evt).collect())
                .map_err(|e| e.to_string())
        } else {
            self.dev.disable_msix().map_err(|e| e.to_string())?;
            self.msix.iter().for_each(GatedVector::drop_held);
            self.set_intx(true)
        }
    }
    fn reset(&self) -> Result<bool, String> {
        let r = crate::sys::vfio_device_reset(&*self.dev).map_err(|e| e.to_string());
        self.msi
            .iter()
            .chain(&self.msix)
            .for_each(GatedVector::drop_held);
        r
    }
    fn gate(&self, vector: Vector, open: bool) -> Result<(), String> {
        self.vector(vector)?.gate(&self.vm, open)
    }
    fn pending(&self, vector: Vector) -> bool {
        self.vector(vector).is_ok_and(GatedVector::pending)
    }
}

impl VfioIo {
    fn vector(&self, v: Vector) -> Result<&GatedVector, String> {
        match v {
            Vector::Msi => self.msi.first(),
            Vector::Msix(n) => self.msix.get(usize::from(n)),
        }
        .ok_or_else(|| format!("no interrupt vector {v:?}"))
    }
}

fn open_error(e: VfioError, h: &HostDevice) -> VfioSetupError {
    let busy = |s: &vmm_sys_util::errno::Error| s.errno() == libc::EBUSY;
    let msg = match &e {
        VfioError::OpenGroup(io, _) if io.raw_os_error() == Some(libc::EBUSY) => format!(
            "devices.vfio: {} (IOMMU group {}) is already in use by another VM or process (/dev/vfio/{} is busy)",
            h.bdf, h.group, h.group
        ),
        VfioError::OpenDeviceCdev(io) if io.raw_os_error() == Some(libc::EBUSY) => format!(
            "devices.vfio: {} is already in use by another VM or process ({VFIO_CDEV_DIR}/{} is busy)",
            h.bdf,
            h.cdev.as_deref().unwrap_or("?")
        ),
        VfioError::VfioDeviceBindIommufd(s) if busy(s) => format!(
            "devices.vfio: {} is already in use by another VM or process (binding {VFIO_CDEV_DIR}/{} to iommufd: busy)",
            h.bdf,
            h.cdev.as_deref().unwrap_or("?")
        ),
        VfioError::GroupViable => format!(
            "devices.vfio: IOMMU group {} of {} is not viable: a device in it is bound to a host driver",
            h.group, h.bdf
        ),
        _ => format!("devices.vfio: opening {} through VFIO: {e}", h.bdf),
    };
    VfioSetupError::Device(msg)
}

/// What the VMM learned from one device before placing its BARs.
struct Probe {
    bars: Vec<(u8, BarKind, u64, u32, bool)>,
    msi: Option<(u16, bool, bool)>,
    msix: Option<(u16, u16, u8, u64, u8, u64)>,
}

fn read_u32(dev: &VfioDevice, off: u64) -> u32 {
    let mut d = [0xffu8; 4];
    dev.region_read(VFIO_PCI_CONFIG_REGION_INDEX, &mut d, off);
    u32::from_le_bytes(d)
}

fn probe(dev: &VfioDevice, name: &str) -> Probe {
    let mut bars = Vec::new();
    let mut i = 0u8;
    while i < 6 {
        let reg = read_u32(dev, (regs::BAR0 + 4 * usize::from(i)) as u64);
        let size = dev.get_region_size(u32::from(i));
        let mappable = dev.get_region_flags(u32::from(i)) & VFIO_REGION_INFO_FLAG_MMAP != 0;
        let is64 = reg & 1 == 0 && (reg >> 1) & 3 == 2;
        if size == 0 {
        } else if reg & 1 == 1 {
            tracing::warn!("{name}: I/O BAR{i} ({size} bytes) is hidden from the guest: I/O BARs are not implemented");
        } else if !size.is_power_of_two() {
            tracing::warn!("{name}: BAR{i} size {size:#x} is not a power of two; hidden");
        } else {
            let kind = match (is64, reg & 8 != 0) {
                (false, _) => BarKind::Mem32,
                (true, false) => BarKind::Mem64,
                (true, true) => BarKind::Mem64Prefetchable,
            };
            bars.push((i, kind, size, reg & 0xf, mappable));
        }
        i += if is64 { 2 } else { 1 };
    }
    let (mut msi, mut msix) = (None, None);
    let status = read_u32(dev, regs::COMMAND as u64) >> 16;
    if status & u32::from(regs::STATUS_CAP_LIST) != 0 {
        let mut pos = read_u32(dev, regs::CAP_PTR as u64) & 0xfc;
        // A hostile or broken device could loop its list: at most 48 capabilities.
        for _ in 0..48 {
            if !(0x40..=0xfc).contains(&pos) {
                break;
            }
            let hdr = read_u32(dev, u64::from(pos));
            let ctrl = (hdr >> 16) as u16;
            match hdr as u8 {
                regs::CAP_MSI => msi = Some((pos as u16, ctrl & 1 << 7 != 0, ctrl & 1 << 8 != 0)),
                regs::CAP_MSIX => {
                    let table = read_u32(dev, u64::from(pos) + 4);
                    let pba = read_u32(dev, u64::from(pos) + 8);
                    msix = Some((
                        pos as u16,
                        (ctrl & 0x7ff) + 1,
                        (table & 7) as u8,
                        u64::from(table & !7),
                        (pba & 7) as u8,
                        u64::from(pba & !7),
                    ));
                }
                // regs::CAP_VENDOR: NVIDIA's GPUDirect clique capability would be
                // added here as a virtual vendor-specific capability chained into the
                // list; not implemented (docs/vfio.md).
                _ => {}
            }
            pos = (hdr >> 8) & 0xfc;
        }
    }
    Probe { bars, msi, msix }
}

/// One device opened, reset and probed, not yet placed.
struct Opened {
    placed: AssignedSlot,
    dev: Arc<VfioDevice>,
    reset_supported: bool,
    probe: Probe,
}

/// What attaching one device needs from the VM.
struct AttachCtx<'a> {
    vm: &'a Arc<VmFd>,
    router: &'a Arc<GsiRouter>,
    buses: &'a Buses,
    root: &'a PciRoot,
}

/// A device's MSI or MSI-X vectors: eventfds for VFIO, irqfds registered when the
/// guest enables and unmasks them (their gates; see `GatedVector`).
type Vectors<T> = (Option<T>, Vec<GatedVector>);

/// An INTx line: pin, GSI, trigger and resample eventfds.
type Intx = (u8, u32, EventFd, EventFd);

/// A guest BAR to map: index, kind, host size, guest address, whether VFIO can mmap it.
type BarPlace = (u8, BarKind, u64, u64, bool);

/// Opens every device of `assigned` through `backend`, resets and probes it.
fn open_devices(
    assigned: &[AssignedSlot],
    backend: &Backend,
) -> Result<Vec<Opened>, VfioSetupError> {
    let mut opened = Vec::new();
    for a in assigned {
        let h = &a.host;
        let path = host::device_dir(Path::new(SYSFS_PCI_DEVICES), &h.bdf);
        // iommufd: bind the cdev to the iommufd and attach it to the IOAS.
        let attach_ioas = matches!(backend, Backend::Iommufd(_));
        let dev = Arc::new(
            VfioDevice::new(&path, backend.ops(), attach_ioas).map_err(|e| open_error(e, h))?,
        );
        let reset_supported = crate::sys::vfio_device_reset(&*dev).map_err(|e| {
            VfioSetupError::Device(format!("devices.vfio: resetting {}: {e}", h.bdf))
        })?;
        let probe = probe(&dev, &h.bdf.to_string());
        opened.push(Opened {
            placed: a.clone(),
            dev,
            reset_supported,
            probe,
        });
    }
    Ok(opened)
}

/// Places every device's BARs behind its root port (one window of each class per
/// port).
fn place_bars(
    opened: &[Opened],
    layout: &MemoryLayout,
) -> Result<Vec<PortPlacement>, VfioSetupError> {
    let requests: Vec<Vec<BarRequest>> = opened
        .iter()
        .map(|o| {
            o.probe
                .bars
                .iter()
                .map(|&(i, kind, size, _, _)| BarRequest {
                    owner: format!("{} BAR{i}", o.placed.host.bdf),
                    size,
                    kind,
                })
                .collect()
        })
        .collect();
    allocate_ports(
        &requests,
        (PCI_MMIO32_START, PCI_MMIO32_ALLOC_SIZE),
        layout.mmio64,
    )
    .map_err(VfioSetupError::Config)
}

/// DMA-maps guest RAM through `backend`; returns how long it took.
fn map_guest_ram(
    backend: &Backend,
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
) -> Result<Duration, VfioSetupError> {
    let t = Instant::now();
    crate::sys::vfio_map_guest_ram(&*backend.ops(), mem)
        .map_err(|e| VfioSetupError::Device(format!("devices.vfio: DMA-mapping guest RAM: {e}")))?;
    let dma_map = t.elapsed();
    tracing::info!(
        ms = dma_map.as_millis() as u64,
        bytes = layout.mem_size,
        "DMA-mapped guest RAM"
    );
    Ok(dma_map)
}

/// The MSI capability `(cap, is64, per-vector mask)` with one GSI from `router`.
fn msi_vectors(
    msi: Option<(u16, bool, bool)>,
    router: &GsiRouter,
) -> Result<Vectors<MsiInfo>, VfioSetupError> {
    let Some((cap, is64, pvm)) = msi else {
        return Ok((None, Vec::new()));
    };
    let gsi = router.allocate(1).map_err(VfioSetupError::Device)?;
    let evts = vec![GatedVector::new(gsi)?];
    Ok((
        Some(MsiInfo {
            cap,
            is64,
            per_vector_mask: pvm,
            gsi,
        }),
        evts,
    ))
}

/// The MSI-X capability with one GSI from `router` per table entry.
fn msix_vectors(
    msix: Option<(u16, u16, u8, u64, u8, u64)>,
    router: &GsiRouter,
) -> Result<Vectors<MsixInfo>, VfioSetupError> {
    let Some((cap, table_size, table_bar, table_offset, pba_bar, pba_offset)) = msix else {
        return Ok((None, Vec::new()));
    };
    let first_gsi = router
        .allocate(u32::from(table_size))
        .map_err(VfioSetupError::Device)?;
    let mut evts = Vec::new();
    for v in 0..u32::from(table_size) {
        evts.push(GatedVector::new(first_gsi + v)?);
    }
    Ok((
        Some(MsixInfo {
            cap,
            table_size,
            table_bar,
            table_offset,
            pba_bar,
            pba_offset,
            first_gsi,
        }),
        evts,
    ))
}

/// INTx: the device's pin (from its config space) on IOAPIC pin `intx_gsi(slot, pin)`,
/// level-triggered through an irqfd with resample; `None` when it has no INTx.
fn wire_intx(
    dev: &VfioDevice,
    vm: &VmFd,
    slot: u8,
    name: &str,
) -> Result<Option<Intx>, VfioSetupError> {
    let pin = (read_u32(dev, regs::INTERRUPT_LINE as u64) >> 8) as u8;
    let has_intx = dev
        .get_irq_info(VFIO_PCI_INTX_IRQ_INDEX)
        .is_some_and(|i| i.count > 0);
    if !(1..=4).contains(&pin) || !has_intx {
        return Ok(None);
    }
    let gsi = intx_gsi(slot, pin);
    let trigger = EventFd::new(EFD_NONBLOCK).map_err(|e| VfioSetupError::Device(e.to_string()))?;
    let resample = EventFd::new(EFD_NONBLOCK).map_err(|e| VfioSetupError::Device(e.to_string()))?;
    vm.register_irqfd_with_resample(&trigger, &resample, gsi)
        .map_err(|e| VfioSetupError::Device(format!("{name}: KVM_IRQFD (INTx, resample): {e}")))?;
    Ok(Some((pin, gsi, trigger, resample)))
}

/// The guest's view of the probed BARs at their placed addresses: the host sizes by
/// index, the function's BARs, and what to map.
fn guest_bars(
    probe: &Probe,
    placement: &PortPlacement,
) -> ([u64; 6], Vec<GuestBar>, Vec<BarPlace>) {
    let mut bar_sizes = [0u64; 6];
    let mut guest_bars = Vec::new();
    let mut bar_places = Vec::new();
    for (&(i, kind, size, flags, mappable), place) in probe.bars.iter().zip(&placement.bars) {
        bar_sizes[usize::from(i)] = size;
        guest_bars.push(GuestBar {
            index: i,
            kind,
            size,
            addr: place.addr,
            flags,
        });
        bar_places.push((i, kind, size, place.addr, mappable));
    }
    (bar_sizes, guest_bars, bar_places)
}

/// Maps one BAR into the guest (KVM memory slots from `memslot` on) except the pages
/// that must trap (MSI-X table and PBA, or all of a BAR VFIO cannot mmap or smaller
/// than a page), and puts traps for those on the MMIO bus.
fn map_bar(
    ctx: &AttachCtx<'_>,
    dev: &VfioDevice,
    function: &Arc<PassthroughFunction>,
    msix: Option<MsixInfo>,
    (i, kind, size, addr, mappable): BarPlace,
    memslot: &mut u32,
    name: &str,
) -> Result<BarReport, VfioSetupError> {
    let mut trapped = msix.map_or(Vec::new(), |x| x.trapped_pages(i));
    if !mappable || size < 4096 {
        trapped = vec![(0, size)];
    } else {
        let file = crate::sys::duplicate_fd(dev).map_err(|e| {
            VfioSetupError::Device(format!("{name}: duplicating the device fd: {e}"))
        })?;
        let offset = dev.get_region_offset(u32::from(i));
        let map = Arc::new(
            MmapRegion::<()>::from_file(FileOffset::new(file, offset), size as usize)
                .map_err(|e| VfioSetupError::Device(format!("{name}: mmap of BAR{i}: {e}")))?,
        );
        let mut at = 0u64;
        for &(s, l) in trapped.iter().chain(std::iter::once(&(size, 0))) {
            if s > at {
                crate::sys::map_device_memory(
                    ctx.vm,
                    *memslot,
                    addr + at,
                    &map,
                    at as usize,
                    (s - at) as usize,
                )
                .map_err(|e| VfioSetupError::Device(format!("{name}: BAR{i}: {e}")))?;
                *memslot += 1;
            }
            at = at.max(s + l);
        }
    }
    for &(s, l) in &trapped {
        ctx.buses
            .mmio
            .insert(addr + s, l, Arc::new(BarTrap::new(function, i, s)))
            .map_err(|e| VfioSetupError::Device(format!("{name}: BAR{i} trap: {e}")))?;
    }
    Ok(BarReport {
        index: i,
        kind,
        host_size: size,
        guest_addr: addr,
        trapped,
    })
}

/// Puts the root port at `slot` of bus 0 (its windows hold the device's BARs; a
/// secondary bus reset resets the device) and the function behind it.
fn add_root_port(
    ctx: &AttachCtx<'_>,
    dev: &VfioDevice,
    function: &Arc<PassthroughFunction>,
    slot: u8,
    placement: &PortPlacement,
    name: &str,
) -> Result<Arc<RootPort>, VfioSetupError> {
    let link = LinkInfo::from_endpoint(|off| read_u32(dev, u64::from(off)));
    let reset_target = function.clone();
    let port = Arc::new(
        RootPort::new(
            slot,
            slot,
            placement.mem,
            placement.pref,
            link,
            Some(Box::new(move || reset_target.device_reset())),
        )
        .map_err(|e| VfioSetupError::Device(format!("{name}: {e}")))?,
    );
    if !ctx.root.add(slot, 0, port.clone()) || !ctx.root.add_on_bus(slot, 0, 0, function.clone()) {
        return Err(VfioSetupError::Device(format!(
            "{name}: guest slot {slot} is taken"
        )));
    }
    Ok(port)
}

/// Wires one opened device into the VM at its placement: interrupts, BARs, root port.
fn attach_device(
    ctx: &AttachCtx<'_>,
    o: Opened,
    placement: PortPlacement,
    memslot: &mut u32,
) -> Result<Assigned, VfioSetupError> {
    let Opened {
        placed,
        dev,
        reset_supported,
        probe: p,
    } = o;
    let (h, slot) = (placed.host, placed.slot);
    let name = h.bdf.to_string();
    let (msi, msi_evts) = msi_vectors(p.msi, ctx.router)?;
    let (msix, msix_evts) = msix_vectors(p.msix, ctx.router)?;
    let intx = wire_intx(&dev, ctx.vm, slot, &name)?;
    if msi.is_none() && msix.is_none() && intx.is_none() {
        tracing::warn!(
            "{name}: the device has no MSI, MSI-X or INTx; the guest gets no interrupts from it"
        );
    }
    let (bar_sizes, guest_bars, bar_places) = guest_bars(&p, &placement);
    let config_size = dev.get_region_size(VFIO_PCI_CONFIG_REGION_INDEX);
    let intx_pin_gsi = intx.as_ref().map(|(pin, gsi, _, _)| (*pin, *gsi));
    let io = Arc::new(VfioIo {
        dev: dev.clone(),
        vm: ctx.vm.clone(),
        config_size,
        bar_sizes,
        msi: msi_evts,
        msix: msix_evts,
        intx: intx.map(|(_, _, t, r)| (t, r)),
    });
    io.set_intx(true)
        .map_err(|e| VfioSetupError::Device(format!("{name}: {e}")))?;
    let function = Arc::new(PassthroughFunction::with_intx(
        name.clone(),
        io.clone(),
        ctx.router.clone(),
        guest_bars,
        msi,
        msix,
        intx_pin_gsi,
    ));
    let bars = bar_places
        .into_iter()
        .map(|b| map_bar(ctx, &dev, &function, msix, b, memslot, &name))
        .collect::<Result<Vec<_>, _>>()?;
    let port = add_root_port(ctx, &dev, &function, slot, &placement, &name)?;
    let mut caps = Vec::new();
    if msi.is_some() {
        caps.push("msi");
    }
    if msix.is_some() {
        caps.push("msi-x");
    }
    if intx_pin_gsi.is_some() {
        caps.push("intx");
    }
    tracing::info!(device = %name, slot, reset_supported, "assigned");
    Ok(Assigned {
        host: h,
        slot,
        port,
        dev,
        io,
        function,
        bars,
        caps,
        reset_supported,
    })
}

impl VfioSet {
    /// Opens, resets and places every device of `assigned` (the machine plan's
    /// placements of the devices [`preflight`] checked), maps guest RAM for DMA, and
    /// puts the functions on `root` and their traps on `buses`.
    #[allow(clippy::too_many_arguments)]
    pub fn attach(
        assigned: &[AssignedSlot],
        vm: &Arc<VmFd>,
        router: &Arc<GsiRouter>,
        mem: &GuestMemoryMmap,
        layout: &MemoryLayout,
        buses: &Buses,
        root: &PciRoot,
    ) -> Result<VfioSet, VfioSetupError> {
        let hosts: Vec<HostDevice> = assigned.iter().map(|a| a.host.clone()).collect();
        let backend = Backend::open(&hosts, vm)?;
        let opened = open_devices(assigned, &backend)?;
        let ports = place_bars(&opened, layout)?;
        let dma_map = map_guest_ram(&backend, mem, layout)?;
        let ctx = AttachCtx {
            vm,
            router,
            buses,
            root,
        };
        let mut devices = Vec::new();
        let mut memslot = FIRST_BAR_MEMSLOT;
        for (o, placement) in opened.into_iter().zip(ports) {
            devices.push(attach_device(&ctx, o, placement, &mut memslot)?);
        }
        // From here on the devices are never dropped: `VfioDevice`'s drop reads sysfs
        // and unbinds the group through calls that the running VM's seccomp filters do
        // not allow, and the BAR mappings (kept until exit, like guest RAM) hold the
        // devices anyway. Teardown quiesces and resets them; the kernel releases the
        // groups when the process exits. (A failed attach above drops them normally,
        // so a later start can take them again.)
        for d in &devices {
            std::mem::forget(Arc::clone(&d.dev));
        }
        Ok(VfioSet {
            backend,
            devices,
            dma_map,
            dma_bytes: layout.mem_size,
            torn_down: AtomicBool::new(false),
            root: None,
        })
    }

    /// What `GET /vm` shows.
    pub fn report(&self) -> VfioReport {
        VfioReport {
            interface: self.backend.name(),
            dma_map_ms: self.dma_map.as_millis() as u64,
            dma_mapped_bytes: self.dma_bytes,
            pci_config_malformed: self
                .root
                .as_ref()
                .map_or(0, |r| r.counters.malformed.load(Ordering::Relaxed)),
            devices: self
                .devices
                .iter()
                .map(|d| DeviceReport {
                    bdf: d.host.bdf.to_string(),
                    guest_bdf: format!("0000:{:02x}:00.0", d.slot),
                    root_port: RootPortReport {
                        bdf: format!("0000:00:{:02x}.0", d.slot),
                        secondary_bus: d.port.secondary_bus(),
                        mem_window: d.port.windows().0,
                        prefetchable_window: d.port.windows().1,
                        window_writes_refused: d
                            .port
                            .counters
                            .window_writes_refused
                            .load(Ordering::Relaxed),
                        bus_resets: d.port.counters.bus_resets.load(Ordering::Relaxed),
                    },
                    group: d.host.group,
                    id: format!("{:04x}:{:04x}", d.host.vendor, d.host.device),
                    reset_supported: d.reset_supported,
                    bars: d.bars.clone(),
                    interrupt_capabilities: d.caps.clone(),
                    interrupt_mode: d.function.interrupt_mode(),
                    bar_moves_refused: d
                        .function
                        .counters
                        .bar_moves_refused
                        .load(Ordering::Relaxed),
                    bad_msi_messages: d.function.counters.bad_msi_messages.load(Ordering::Relaxed),
                    errors: d.function.counters.errors.load(Ordering::Relaxed),
                })
                .collect(),
        }
    }

    /// After the vCPUs stopped: interrupts off and each device reset, so the next VM
    /// gets it clean (the fds close when the process exits). Runs once.
    pub fn teardown(&self) {
        if self.torn_down.swap(true, Ordering::SeqCst) {
            return;
        }
        for d in &self.devices {
            let _ = d.io.set_msix(false);
            let _ = d.io.set_msi(false);
            let _ = d.io.set_intx(false);
            // Bus master off so the device stops DMA before the reset.
            let mut cmd = [0u8; 2];
            d.io.config_read(regs::COMMAND as u64, &mut cmd);
            let v = u16::from_le_bytes(cmd) & !regs::CMD_BUS_MASTER;
            d.io.config_write(regs::COMMAND as u64, &v.to_le_bytes());
            match crate::sys::vfio_device_reset(&*d.dev) {
                Ok(true) => tracing::info!(device = %d.host.bdf, "reset at teardown"),
                Ok(false) => {
                    tracing::info!(device = %d.host.bdf, "no reset available; bus mastering and interrupts turned off")
                }
                Err(e) => tracing::error!(device = %d.host.bdf, "reset at teardown failed: {e}"),
            }
            let _ = d.dev.as_raw_fd();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(bdf: &str, interface: VfioInterface) -> VfioDeviceConfig {
        VfioDeviceConfig {
            bdf: bdf.into(),
            interface,
            id: None,
        }
    }

    #[test]
    fn stated_ids_stand_in_for_sysfs_offline_and_must_match_at_boot() {
        // A device this host does not have: measure takes the stated IDs.
        let stated = VfioDeviceConfig {
            id: Some("10de:2331".into()),
            ..dev("0000:c1:00.0", VfioInterface::Container)
        };
        let h = describe_hosts(std::slice::from_ref(&stated)).unwrap();
        assert_eq!((h[0].vendor, h[0].device), (0x10de, 0x2331));
        assert_eq!(h[0].bdf.to_string(), "0000:c1:00.0");
        // Without them, sysfs is read, and a missing device is an error.
        assert!(describe_hosts(&[dev("0000:c1:00.0", VfioInterface::Container)]).is_err());
        // At boot, the host's IDs must be the stated ones.
        let host = HostDevice {
            vendor: 0x1234,
            device: 0x11e8,
            ..h[0].clone()
        };
        let e = check_stated_id(0, &stated, &host).unwrap_err().to_string();
        assert!(
            e.contains("devices.vfio[0].id") && e.contains("10de:2331") && e.contains("1234:11e8"),
            "{e}"
        );
        check_stated_id(0, &stated, &h[0]).unwrap();
        check_stated_id(0, &dev("0000:c1:00.0", VfioInterface::Container), &host).unwrap();
        let bad = VfioDeviceConfig {
            id: Some("nvidia".into()),
            ..stated
        };
        assert!(describe_hosts(&[bad]).is_err());
    }

    #[test]
    fn preflight_refuses_mixed_interfaces_naming_the_field() {
        let cfg = [
            dev("0000:00:03.0", VfioInterface::Container),
            dev("0000:00:04.0", VfioInterface::Iommufd),
        ];
        let e = preflight(&cfg, 1 << 20).unwrap_err().to_string();
        assert!(e.starts_with("devices.vfio[1].interface:"), "{e}");
    }

    #[test]
    fn preflight_names_what_the_host_lacks_for_each_interface() {
        // Each half where the host lacks that interface (this machine and CI lack
        // both; the lab has the container one and checks it for real).
        if !Path::new(IOMMUFD_DEV).exists() {
            let e = preflight(&[dev("0000:00:03.0", VfioInterface::Iommufd)], 0)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("no /dev/iommu") && e.contains("CONFIG_IOMMUFD"),
                "{e}"
            );
        }
        if !Path::new("/dev/vfio/vfio").exists() {
            let e = preflight(&[dev("0000:00:03.0", VfioInterface::Container)], 0)
                .unwrap_err()
                .to_string();
            assert!(e.contains("no /dev/vfio/vfio"), "{e}");
        }
    }
}

#[cfg(test)]
mod gate_tests {
    use super::*;

    /// On this machine's own KVM: a gate is an irqfd that is registered while open.
    /// KVM consumes what an open gate's eventfd counts (it injects); a closed gate's
    /// eventfd keeps it, `pending` finds it (and remembers it), and opening the gate
    /// hands it to KVM.
    #[test]
    fn a_closed_gate_holds_the_interrupt_and_opening_gives_it_to_kvm() {
        let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm");
        let vm = kvm.create_vm().expect("KVM_CREATE_VM");
        vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
        let v = GatedVector::new(24).unwrap();
        v.gate(&vm, true).unwrap();
        v.evt.write(1).unwrap();
        assert!(
            v.evt.read().is_err(),
            "an open gate: KVM took the interrupt"
        );
        assert!(!v.pending());
        v.gate(&vm, false).unwrap();
        v.evt.write(1).unwrap();
        assert!(v.pending(), "a closed gate holds it");
        assert!(v.pending(), "and keeps saying so once read off the eventfd");
        v.gate(&vm, true).unwrap();
        assert!(!v.pending(), "opening the gate delivered it");
        assert!(v.evt.read().is_err(), "KVM took the re-raised interrupt");
        v.gate(&vm, false).unwrap();
        v.evt.write(1).unwrap();
        v.drop_held();
        assert!(!v.pending(), "a reset drops what was held");
        v.evt.write(1).unwrap();
        assert!(v.pending());
        v.drop_held();
        assert!(!v.pending());
    }
}
