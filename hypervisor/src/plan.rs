//! The machine plan: every address, slot, GSI, window and measured device-list entry
//! of a VM, computed once from the validated configuration (plus, for assigned
//! devices, the host facts [`crate::vfio::preflight`] or
//! [`crate::vfio::describe_hosts`] read from sysfs before the build).
//!
//! [`MachinePlan::new`] is a pure function: `Vm::build` and `measure_offline` both call
//! it once, and everything after reads the plan and never recomputes it: the measured
//! `machine`, `memory-map` and `devices` events and the loaders' e820 tables
//! (`boot::prepare_with`), the ACPI tables ([`MachinePlan::acpi`]), the
//! `virtio_mmio.device=` command-line fragments ([`MachinePlan::linux_cmdline`]), the
//! PCI bus and the virtio and VFIO attach steps.
//!
//! Placement rules (unchanged, see `docs/vmm.md`): the virtio devices are the
//! `devices.block` disks in configuration order, then rng, then vsock. On virtio-mmio
//! device `n` sits at `VIRTIO_MMIO_START + n * 4 KiB` with the `n`th GSI of 5..=15
//! skipping the SCI; on virtio-pci it is function `00:(FIRST_SLOT + vfio devices +
//! n).0` with BAR0 at `VIRTIO_PCI_START + n * 32 KiB`. Assigned device `i` sits behind
//! the root port at `00:(FIRST_SLOT + i).0`, as device `0.0` of that port's secondary
//! bus, bus number `FIRST_SLOT + i`.

use bulwark_virtio::{MmioTransport, MMIO_REGION_SIZE};

use crate::acpi::{AcpiPlatform, PciHostAcpi};
use crate::config::{DevicesConfig, SerialOutput, VirtioTransport, VmConfig};
use crate::devices::{COM1_BASE, COM1_IRQ, DEBUG_EXIT_PORT, I8042_BASE};
use crate::layout::{
    E820Entry, MemoryLayout, ACPI_TABLES_START, BOOT_GDT_ADDR, BOOT_STACK_POINTER, CMDLINE_ADDR,
    PCI_ECAM_START, PML4_ADDR, PVH_INFO_ADDR, PVH_MEMMAP_ADDR, VIRTIO_MMIO_START, VIRTIO_PCI_START,
    ZERO_PAGE_ADDR,
};
use crate::vfio::{AssignedSlot, HostDevice, FIRST_SLOT};
use crate::virtio::{Slot, SlotKind};

/// Everything about a VM's machine that follows from its configuration: computed once
/// ([`MachinePlan::new`]) and read by the loaders, the ACPI tables, the command line
/// and the attach steps.
#[derive(Debug, Clone)]
pub struct MachinePlan {
    /// The guest-physical memory layout (RAM regions, MMIO windows).
    pub layout: MemoryLayout,
    /// The guest's e820 map (measured, and written by the loaders).
    pub e820: Vec<E820Entry>,
    /// The virtio devices in order: transport, window or BAR0, GSI or bus 0 device
    /// number, measured label.
    pub virtio: Vec<Slot>,
    /// PCI bus 0, when the VM has one (assigned devices or virtio-pci).
    pub pci: Option<PciPlan>,
    /// The measured device list (`devices` event): the port-I/O devices, the
    /// virtio-mmio windows, then the PCI bus's entries.
    pub devices: Vec<String>,
    /// One `virtio_mmio.device=4K@BASE:GSI` per virtio-mmio device (appended to a
    /// Linux command line when there are no ACPI tables).
    pub mmio_cmdline: Vec<String>,
    /// What the ACPI tables describe, or `None` when `machine.acpi` is off.
    pub acpi: Option<AcpiPlatform>,
    /// Where the loaders put the boot structures.
    pub boot: BootPlacements,
}

/// Where the loaders write the boot structures (guest-physical addresses, from
/// `layout.rs` and the memory layout). Only the initrd's and a raw image's own
/// placement depend on the boot payload, and the loaders decide those.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootPlacements {
    /// The ACPI tables (RSDP first), with `machine.acpi`.
    pub acpi_tables: u64,
    /// The reset-vector stub (F000:FFF0), with `machine.acpi`.
    pub reset_vector: u64,
    /// The boot GDT.
    pub gdt: u64,
    /// The boot identity map's PML4 (its PDPT and page directories follow).
    pub page_tables: u64,
    /// The Linux command line, NUL-terminated.
    pub cmdline: u64,
    /// The Linux zero page (`struct boot_params`).
    pub zero_page: u64,
    /// The PVH `hvm_start_info`.
    pub pvh_start_info: u64,
    /// The PVH memory map, right after the start info (the module list follows it).
    pub pvh_memmap: u64,
    /// The 64-bit Linux entry's stack pointer.
    pub stack_pointer: u64,
    /// A direct Linux boot's initrd ends below this: the top of low RAM, at most
    /// 896 MiB (old kernels' `initrd_addr_max`).
    pub linux_initrd_limit: u64,
}

impl BootPlacements {
    /// The placements on `layout`.
    pub fn new(layout: &MemoryLayout) -> BootPlacements {
        BootPlacements {
            acpi_tables: ACPI_TABLES_START,
            reset_vector: crate::acpi::RESET_VECTOR,
            gdt: BOOT_GDT_ADDR,
            page_tables: PML4_ADDR,
            cmdline: CMDLINE_ADDR,
            zero_page: ZERO_PAGE_ADDR,
            pvh_start_info: PVH_INFO_ADDR,
            pvh_memmap: PVH_MEMMAP_ADDR,
            stack_pointer: BOOT_STACK_POINTER,
            linux_initrd_limit: layout.low_ram_end().min(LINUX_INITRD_MAX),
        }
    }
}

/// Old kernels' `initrd_addr_max` (896 MiB).
const LINUX_INITRD_MAX: u64 = 0x3800_0000;

/// PCI bus 0 of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciPlan {
    /// The assigned devices, each behind its root port.
    pub assigned: Vec<AssignedSlot>,
    /// The bus's measured device-list entries: the host bridge, each assigned device's
    /// root port and function, then the virtio-pci functions in slot order.
    pub entries: Vec<String>,
    /// The highest bus number (bus 0 and one secondary bus per assigned device).
    pub last_bus: u8,
}

impl MachinePlan {
    /// The plan of `cfg` (validated) on `layout`, with `hosts` the assigned devices'
    /// host facts in `devices.vfio` order.
    pub fn new(cfg: &VmConfig, layout: MemoryLayout, hosts: &[HostDevice]) -> MachinePlan {
        let virtio = virtio_slots(&cfg.devices);
        let pci = pci_plan(&cfg.devices, hosts, &virtio);
        let mut devices = port_io_devices(&cfg.devices);
        devices.extend(
            virtio
                .iter()
                .filter(|s| s.transport == VirtioTransport::Mmio)
                .map(|s| s.label.clone()),
        );
        if let Some(p) = &pci {
            devices.extend(p.entries.iter().cloned());
        }
        let mmio = mmio_devices(&virtio);
        let mmio_cmdline = mmio
            .iter()
            .map(|&(base, gsi)| MmioTransport::cmdline_fragment(base, gsi))
            .collect();
        let acpi = acpi_platform(cfg, mmio, pci.as_ref().map(|p| p.last_bus));
        MachinePlan {
            e820: layout.e820(),
            boot: BootPlacements::new(&layout),
            layout,
            virtio,
            pci,
            devices,
            mmio_cmdline,
            acpi,
        }
    }

    /// The command line a Linux guest gets: `cmdline` as given with ACPI (the DSDT
    /// describes the virtio-mmio devices, and announcing them twice would make a
    /// kernel that reads both register each device twice), else with the
    /// [`MachinePlan::mmio_cmdline`] fragments appended.
    pub fn linux_cmdline(&self, cmdline: &str) -> String {
        let mut out = cmdline.to_string();
        if self.acpi.is_some() {
            return out;
        }
        for fragment in &self.mmio_cmdline {
            if !out.is_empty() && !out.ends_with(' ') {
                out.push(' ');
            }
            out.push_str(fragment);
        }
        out
    }

    /// The assigned devices' placements (none without a PCI bus).
    pub fn assigned(&self) -> &[AssignedSlot] {
        self.pci.as_ref().map_or(&[], |p| &p.assigned)
    }
}

/// Whether the VM has PCI bus 0: with assigned devices, or with virtio on PCI.
pub fn bus_exists(cfg: &DevicesConfig) -> bool {
    !cfg.vfio.is_empty() || cfg.virtio_transport == VirtioTransport::Pci
}

/// The measured entries of the port-I/O devices the VMM emulates itself.
fn port_io_devices(cfg: &DevicesConfig) -> Vec<String> {
    let mut v = Vec::new();
    if cfg.debug_exit {
        v.push(format!("debug-exit@io:{DEBUG_EXIT_PORT:#x}"));
    }
    if cfg.i8042 {
        v.push(format!(
            "i8042-reset@io:{I8042_BASE:#x}-{:#x}",
            I8042_BASE + 4
        ));
    }
    if cfg.serial != SerialOutput::None {
        v.push(format!(
            "serial-16550@io:{COM1_BASE:#x}-{:#x},irq:{COM1_IRQ}",
            COM1_BASE + 7
        ));
    }
    v
}

/// The bus 0 device number of virtio-pci device `n` (after the assigned devices).
fn virtio_pci_slot(n_vfio: usize, n: usize) -> u8 {
    (usize::from(FIRST_SLOT) + n_vfio + n) as u8
}

fn describe_kind(cfg: &DevicesConfig, kind: &SlotKind) -> String {
    match kind {
        SlotKind::Block { index } => cfg.block[*index].label(),
        SlotKind::Rng => "virtio-rng".to_string(),
        SlotKind::Vsock => cfg
            .vsock
            .as_ref()
            .map_or_else(|| "virtio-vsock,cid:0".to_string(), |v| v.label()),
    }
}

/// The slots of the configured virtio devices, in order (a pure function of the
/// config). Devices beyond what the transport has room for are left out (`validate`
/// refuses such configs).
pub fn virtio_slots(cfg: &DevicesConfig) -> Vec<Slot> {
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
            .zip(crate::virtio::gsis())
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
                .take(crate::virtio::max_pci_devices(n_vfio))
                .enumerate()
                .map(|(n, kind)| {
                    let base = VIRTIO_PCI_START + n as u64 * bulwark_virtio::pci::BAR_SIZE;
                    let slot = virtio_pci_slot(n_vfio, n);
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

/// The virtio-mmio devices of `slots` as `(window base, GSI)` pairs.
fn mmio_devices(slots: &[Slot]) -> Vec<(u64, u32)> {
    slots
        .iter()
        .filter_map(|s| s.gsi.map(|g| (s.base, g)))
        .collect()
}

/// PCI bus 0, when `cfg` has one: the assigned devices behind their root ports and the
/// measured entries (host bridge, assigned devices, virtio-pci functions of `virtio`).
fn pci_plan(cfg: &DevicesConfig, hosts: &[HostDevice], virtio: &[Slot]) -> Option<PciPlan> {
    if !bus_exists(cfg) {
        return None;
    }
    let assigned: Vec<AssignedSlot> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| AssignedSlot {
            host: h.clone(),
            slot: FIRST_SLOT + i as u8,
        })
        .collect();
    let mut entries = vec![format!("pci-host@io:0xcf8-0xcff,ecam:{PCI_ECAM_START:#x}")];
    entries.extend(assigned.iter().flat_map(AssignedSlot::entries));
    entries.extend(
        virtio
            .iter()
            .filter(|s| s.transport == VirtioTransport::Pci)
            .map(|s| s.label.clone()),
    );
    Some(PciPlan {
        assigned,
        entries,
        last_bus: cfg.vfio.len() as u8,
    })
}

/// The platform the ACPI tables describe, or `None` when `machine.acpi` is off:
/// the virtio-mmio windows `mmio` and, with a PCI bus (`last_bus`), the host bridge.
fn acpi_platform(
    cfg: &VmConfig,
    mmio: Vec<(u64, u32)>,
    last_bus: Option<u8>,
) -> Option<AcpiPlatform> {
    cfg.machine.acpi.then(|| AcpiPlatform {
        vcpus: cfg.machine.vcpus,
        serial: cfg.devices.serial != SerialOutput::None,
        virtio_mmio: mmio,
        // Bus 0 and one secondary bus per assigned device (behind its root port), no
        // I/O window (no I/O BARs are offered).
        pci: last_bus.map(|last_bus| PciHostAcpi {
            last_bus,
            io_window: None,
        }),
    })
}

/// The ACPI platform of `cfg` alone (what [`MachinePlan::acpi`] holds; the host facts
/// of assigned devices do not change it).
pub fn acpi_platform_of(cfg: &VmConfig) -> Option<AcpiPlatform> {
    let virtio = virtio_slots(&cfg.devices);
    acpi_platform(
        cfg,
        mmio_devices(&virtio),
        bus_exists(&cfg.devices).then_some(cfg.devices.vfio.len() as u8),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigError;
    use crate::layout::VIRTIO_PCI_SIZE;
    use crate::virtio::max_pci_devices;

    /// The plan of `c` on its layout at a 52-bit address width, with `hosts`.
    fn plan(c: &VmConfig, hosts: &[HostDevice]) -> MachinePlan {
        MachinePlan::new(c, c.machine.layout(52).unwrap(), hosts)
    }

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
        let s = virtio_slots(&c.devices);
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
        // The command-line fragments are for a guest without ACPI tables.
        let mut no_acpi = c.clone();
        no_acpi.machine.acpi = false;
        assert_eq!(
            plan(&no_acpi, &[])
                .linux_cmdline("console=ttyS0")
                .split(' ')
                .nth(1),
            Some("virtio_mmio.device=4K@0xd0000000:5")
        );
        assert_eq!(
            plan(&c, &[]).linux_cmdline("console=ttyS0"),
            "console=ttyS0"
        );
        assert_eq!(mmio_devices(&s).len(), 7);
        assert_eq!(plan(&c, &[]).acpi.unwrap().virtio_mmio.len(), 7);
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
        let s = virtio_slots(&c.devices);
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
        let mut no_acpi = c.clone();
        no_acpi.machine.acpi = false;
        let p = plan(&no_acpi, &[]);
        assert!(mmio_devices(&s).is_empty());
        assert!(p.mmio_cmdline.is_empty());
        assert_eq!(p.linux_cmdline("console=ttyS0"), "console=ttyS0");
        // The measured PCI list: host bridge, assigned devices, virtio functions.
        let entries = &p.pci.as_ref().unwrap().entries;
        assert_eq!(entries[0], "pci-host@io:0xcf8-0xcff,ecam:0xe0000000");
        let labels: Vec<String> = s.iter().map(|s| s.label.clone()).collect();
        assert_eq!(&entries[1..], &labels[..]);
        assert_eq!(&p.devices[p.devices.len() - 3..], &labels[..]);
        // The window holds a BAR0 for every free device number of bus 0.
        let last = VIRTIO_PCI_START + max_pci_devices(0) as u64 * bulwark_virtio::pci::BAR_SIZE;
        assert!(last <= VIRTIO_PCI_START + VIRTIO_PCI_SIZE);
        assert_eq!(
            VIRTIO_PCI_START + VIRTIO_PCI_SIZE,
            crate::layout::PCI_MMIO32_START + crate::layout::PCI_MMIO32_SIZE
        );
        // Without virtio-pci or assigned devices there is no PCI bus at all.
        let m = parse(r#"{"rng":true}"#).unwrap();
        assert!(plan(&m, &[]).pci.is_none());
        assert!(!bus_exists(&m.devices));
        let bare = parse(r#"{"virtio_transport":"pci"}"#).unwrap();
        assert_eq!(plan(&bare, &[]).pci.unwrap().entries.len(), 1);
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
        assert_eq!(virtio_slots(&c.devices).len(), 11);
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
            virtio_slots(&ok.devices)
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

    #[test]
    fn measured_entries_put_each_device_behind_its_root_port() {
        let h = |b: &str, d: u16| HostDevice {
            bdf: b.parse().unwrap(),
            group: 1,
            vendor: 0x10de,
            device: d,
            cdev: None,
        };
        let c = parse(r#"{"vfio":[{"bdf":"0000:41:00.0"},{"bdf":"0000:c1:00.0"}]}"#).unwrap();
        let p = plan(&c, &[h("0000:41:00.0", 0x2330), h("0000:c1:00.0", 0x2331)]);
        let pci = p.pci.as_ref().unwrap();
        assert_eq!(pci.last_bus, 2);
        assert_eq!(
            pci.assigned.iter().map(|a| a.slot).collect::<Vec<_>>(),
            [1, 2]
        );
        let v = &pci.entries[1..];
        assert_eq!(
            v,
            [
                "pcie-root-port@00:01.0,bus=01",
                "vfio-pci@01:00.0,host=0000:41:00.0,id=10de:2330",
                "pcie-root-port@00:02.0,bus=02",
                "vfio-pci@02:00.0,host=0000:c1:00.0,id=10de:2331",
            ]
        );
    }

    #[test]
    fn the_device_list_is_stable_and_reflects_config() {
        let mut cfg = parse("{}").unwrap();
        cfg.devices.serial = SerialOutput::Sink;
        assert_eq!(plan(&cfg, &[]).devices.len(), 2);
        cfg.devices.debug_exit = true;
        assert!(plan(&cfg, &[]).devices[0].starts_with("debug-exit"));
    }
}
