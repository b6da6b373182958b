//! The virtio devices on the virtio-pci transport (`devices.virtio_transport: "pci"`):
//! each device's `bulwark_virtio::PciTransport` as a function on PCI bus 0 (its
//! configuration space through `pci::PciRoot`, its BAR0 on [`Buses::mmio`] at the
//! address the machine plan gives it (`plan::virtio_slots`), which the guest may size but never move), its
//! queue doorbells as KVM ioeventfds (one address each, no data match) with the
//! MMIO-exit fallback, and its MSI-X vectors: one eventfd per vector registered as a
//! KVM irqfd on a GSI from the VM's one [`GsiRouter`] (shared with VFIO), whose MSI
//! route follows what the guest programs, masks and unmasks (the transport holds a
//! masked vector's event pending and sends it on unmask).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bulwark_virtio::mmio::IrqLine;
use bulwark_virtio::msix::MsixMessage;
use bulwark_virtio::pci::{self as vpci, MsixRoutes, PciTransport, NO_VECTOR};
use bulwark_virtio::{GuestMemory, SharedDevice};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use serde::Serialize;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bus::{BusAction, BusDevice};
use crate::devices::Buses;
use crate::irq_routing::{GsiRouter, MsiMessage};
use crate::pci::{PciBus, PciFunction};
use crate::virtio::{doorbells, verr, NotifyPath, Slot, VirtioError};

/// One virtio-pci function: its configuration space (on bus 0) and its BAR0 (on
/// the MMIO bus) reach the same transport, one vCPU at a time.
#[derive(Debug)]
pub struct PciOnBus(Mutex<PciTransport>);

impl PciOnBus {
    fn lock(&self) -> MutexGuard<'_, PciTransport> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl BusDevice for PciOnBus {
    fn read(&self, offset: u64, data: &mut [u8]) {
        self.lock().bar_read(offset, data);
    }
    fn write(&self, offset: u64, data: &[u8]) -> BusAction {
        self.lock().bar_write(offset, data);
        BusAction::Continue
    }
}

impl PciFunction for PciOnBus {
    fn config_read(&self, offset: u16, data: &mut [u8]) {
        self.lock().config_read(u64::from(offset), data);
    }
    fn config_write(&self, offset: u16, data: &[u8]) {
        self.lock().config_write(u64::from(offset), data);
    }
}

/// The transport's MSI-X routes as KVM MSI routes on GSIs `first_gsi..`.
#[derive(Debug)]
struct VirtioRoutes {
    router: Arc<GsiRouter>,
    first_gsi: u32,
    name: String,
    bad_messages: AtomicU64,
    errors: AtomicU64,
}

fn bump(counter: &AtomicU64, name: &str, what: std::fmt::Arguments<'_>) {
    let n = counter.fetch_add(1, Ordering::Relaxed);
    if n < 16 || n.is_multiple_of(65536) {
        tracing::warn!(total = n + 1, "{name}: {what}");
    }
}

impl MsixRoutes for VirtioRoutes {
    fn update(&self, updates: &[(u16, Option<MsixMessage>)]) -> bool {
        let mapped: Vec<(u32, Option<MsiMessage>)> = updates
            .iter()
            .map(|&(v, m)| {
                let msg = m.map(|m| MsiMessage {
                    addr: m.addr,
                    data: m.data,
                });
                if msg.is_some_and(|m| !m.is_valid()) {
                    // A message that is no interrupt would be a DMA write the guest
                    // asks the VMM to forge: the router never installs it.
                    bump(
                        &self.bad_messages,
                        &self.name,
                        format_args!("MSI-X vector {v} has a message address that is not an interrupt message; not routed"),
                    );
                }
                (self.first_gsi + u32::from(v), msg)
            })
            .collect();
        match self.router.update(&mapped) {
            Ok(()) => true,
            Err(e) => {
                bump(&self.errors, &self.name, format_args!("MSI-X routes: {e}"));
                false
            }
        }
    }
}

/// One vector in `GET /vm`.
#[derive(Debug, Clone, Serialize)]
pub struct VectorView {
    /// Table entry.
    pub vector: u16,
    /// The KVM GSI its irqfd and route use.
    pub gsi: u32,
    /// The entry's mask bit.
    pub masked: bool,
    /// Signalled while masked, not sent yet.
    pub pending: bool,
}

/// A virtio-pci function's PCI and MSI-X state in `GET /vm`.
#[derive(Debug, Clone, Serialize)]
pub struct PciView {
    /// `00:SS.0`.
    pub address: String,
    /// Vendor and device ID.
    pub id: String,
    /// BAR0's guest address (also `base`) and size.
    pub bar0: (u64, u64),
    /// Command register: memory decode and bus master as the guest set them.
    pub memory_decode: bool,
    /// Bus mastering enabled by the guest.
    pub bus_master: bool,
    /// BAR moves the guest tried (refused).
    pub bar_moves_refused: u64,
    /// MSI-X enable bit.
    pub msix_enabled: bool,
    /// MSI-X function mask.
    pub msix_function_masked: bool,
    /// The configuration-change vector (`null`: none).
    pub config_vector: Option<u16>,
    /// Each queue's vector (`null`: none).
    pub queue_vectors: Vec<Option<u16>>,
    /// The table.
    pub vectors: Vec<VectorView>,
    /// MSI-X messages sent.
    pub msix_sent: u64,
    /// Events held while their vector was masked.
    pub msix_pended: u64,
    /// Events with MSI-X off or no vector (no INTx: only the ISR bit is set).
    pub msix_undelivered: u64,
    /// Messages not routed (not an x86 interrupt address).
    pub bad_msi_messages: u64,
    /// Failed route updates.
    pub route_errors: u64,
}

/// What the VMM keeps of a running function.
#[derive(Debug)]
pub struct PciWiring {
    function: Arc<PciOnBus>,
    routes: Arc<VirtioRoutes>,
}

impl PciWiring {
    /// The device status register.
    pub fn status(&self) -> u32 {
        self.function.lock().status()
    }

    /// The function's state for `GET /vm`.
    pub fn view(&self, slot: &Slot) -> PciView {
        let t = self.function.lock();
        let m = t.msix();
        let opt = |v: u16| (v != NO_VECTOR).then_some(v);
        PciView {
            address: slot.pci_address().unwrap_or_default(),
            id: format!("{:04x}:{:04x}", vpci::VENDOR_ID, t.pci_device_id()),
            bar0: (t.bar(), vpci::BAR_SIZE),
            memory_decode: t.command() & crate::pci::regs::CMD_MEMORY != 0,
            bus_master: t.command() & crate::pci::regs::CMD_BUS_MASTER != 0,
            bar_moves_refused: t.bar_moves_refused(),
            msix_enabled: m.enabled,
            msix_function_masked: m.function_masked,
            config_vector: opt(m.config_vector),
            queue_vectors: m.queue_vectors.iter().map(|&v| opt(v)).collect(),
            vectors: m
                .vectors
                .iter()
                .enumerate()
                .map(|(v, &(masked, pending))| VectorView {
                    vector: v as u16,
                    gsi: self.routes.first_gsi + v as u32,
                    masked,
                    pending,
                })
                .collect(),
            msix_sent: m.sent,
            msix_pended: m.pended,
            msix_undelivered: m.undelivered,
            bad_msi_messages: self.routes.bad_messages.load(Ordering::Relaxed),
            route_errors: self.routes.errors.load(Ordering::Relaxed),
        }
    }
}

/// Puts `device` on bus 0 at `slot`: MSI-X eventfds as irqfds on GSIs from the
/// router, the transport, its BAR0 on the MMIO bus and its doorbells as ioeventfds
/// (`use_ioeventfd`). Returns the wiring, the notification path and clones of the
/// queue events for the worker.
#[allow(clippy::too_many_arguments)]
pub fn attach(
    slot: &Slot,
    name: &str,
    device: SharedDevice,
    mem: Arc<GuestMemory>,
    pci: &PciBus,
    vm_fd: &VmFd,
    buses: &Buses,
    use_ioeventfd: bool,
) -> Result<(PciWiring, NotifyPath, Vec<EventFd>), VirtioError> {
    let field = "devices.virtio_transport";
    let Some(pci_slot) = slot.pci_slot else {
        return Err(verr(field, "not a virtio-pci slot (a VMM bug)"));
    };
    let n = vpci::vectors_needed(&device);
    let first_gsi = pci.router.allocate(n as u32).map_err(|e| verr(field, e))?;
    let mut lines: Vec<Arc<dyn IrqLine>> = Vec::with_capacity(n);
    for v in 0..n {
        let evt = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(|e| verr("eventfd", e))?);
        vm_fd
            .register_irqfd(&evt, first_gsi + v as u32)
            .map_err(|e| verr("KVM_IRQFD (virtio-pci MSI-X)", e))?;
        lines.push(evt);
    }
    let routes = Arc::new(VirtioRoutes {
        router: pci.router.clone(),
        first_gsi,
        name: format!("{name} ({})", slot.pci_address().unwrap_or_default()),
        bad_messages: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let transport = PciTransport::new(device, mem, slot.base, lines, routes.clone())
        .map_err(|e| verr("virtio-pci transport", e))?;
    // One doorbell address per queue: no data match needed.
    let (notify, events) = doorbells(
        transport.queue_events(),
        slot.base,
        use_ioeventfd,
        |i, evt| {
            let addr = IoEventAddress::Mmio(vpci::notify_address(slot.base, i));
            vm_fd.register_ioevent(evt, &addr, NoDatamatch)
        },
    )?;
    let function = Arc::new(PciOnBus(Mutex::new(transport)));
    buses
        .mmio
        .insert(slot.base, vpci::BAR_SIZE, function.clone())
        .map_err(|e| verr("virtio-pci BAR0", e))?;
    if !pci.root.add(pci_slot, 0, function.clone()) {
        return Err(verr(
            field,
            format!("bus 0 device {pci_slot} is taken (a VMM bug)"),
        ));
    }
    tracing::info!(
        device = name,
        slot = pci_slot,
        bar = format_args!("{:#x}", slot.base),
        first_gsi,
        vectors = n,
        "virtio-pci function"
    );
    Ok((PciWiring { function, routes }, notify, events))
}
