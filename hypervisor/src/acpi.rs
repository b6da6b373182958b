//! ACPI: the tables the VMM writes into guest memory, and the power-management
//! registers they describe.
//!
//! The VM is *hardware-reduced* ACPI (no PM1 blocks, no GPEs, no SMI, no FACS): power-off
//! and reset go through two I/O registers named by the FADT. The tables are a pure
//! function of the configuration ([`AcpiPlatform`] and the [`MemoryLayout`]), laid out
//! back to back from [`ACPI_TABLES_START`] (RSDP first), written by the boot loader as one
//! measured blob (`acpi-tables`, `docs/measurement.md`), so `bulwark-vmm measure` predicts
//! them byte for byte.
//!
//! ```text
//! RSDP (rev 2) -> XSDT -> FACP (FADT: HW_REDUCED_ACPI, sleep control/status, reset reg)
//!                   |       '-> DSDT: \_S5, \_SB.COM1, \_SB.VRnn (virtio-mmio),
//!                   |                 \_SB.PCI0 + \_SB.ECFG (PCI host bridge)
//!                   +-> APIC (MADT: one local APIC per vCPU, IOAPIC, overrides)
//!                   '-> MCFG (only with a PCI host bridge)
//! ```
//!
//! Table and AML encoding comes from the `acpi_tables` crate (rust-vmm); the MADT is
//! encoded here because the crate has no interrupt source override structure.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use acpi_tables::aml::{self, AddressSpaceCacheable};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;

use crate::bus::{Bus, BusAction, BusDevice, BusError};
use crate::config::VmConfig;
use crate::layout::{
    MemoryLayout, ACPI_SCI_GSI, ACPI_SLEEP_PORT, ACPI_TABLES_START, IOAPIC_START, LAPIC_START,
    PCI_ECAM_SIZE, PCI_ECAM_START, PCI_INTX_FIRST_GSI, PCI_MMIO32_SIZE, PCI_MMIO32_START,
    VIRTIO_MMIO_FIRST_GSI, VIRTIO_MMIO_LAST_GSI, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START,
};

/// OEM ID in every table header.
pub const OEM_ID: [u8; 6] = *b"BLWARK";
/// OEM table ID in every table header.
pub const OEM_TABLE_ID: [u8; 8] = *b"BULWARKV";
/// OEM revision in every table header.
pub const OEM_REVISION: u32 = 1;

/// Sleep control register (FADT `SLEEP_CONTROL_REG`), one byte.
pub const SLEEP_CONTROL_PORT: u16 = ACPI_SLEEP_PORT;
/// Sleep status register (FADT `SLEEP_STATUS_REG`), one byte.
pub const SLEEP_STATUS_PORT: u16 = ACPI_SLEEP_PORT + 1;
/// Reset register (FADT `RESET_REG`), one byte.
pub const RESET_PORT: u16 = ACPI_SLEEP_PORT + 2;
/// Number of ports the power-management device owns from [`ACPI_SLEEP_PORT`].
pub const PM_PORTS: u64 = 3;
/// The value the guest writes to [`RESET_PORT`] to reset (FADT `RESET_VALUE`).
pub const RESET_VALUE: u8 = 0x0f;
/// SLP_TYP of S5 in the `\_S5` package.
pub const S5_SLEEP_TYPE: u8 = 5;
/// SLP_EN in the sleep control register (ACPI 6.5, 4.8.3.7).
pub const SLP_EN: u8 = 1 << 5;
/// SLP_TYP field of the sleep control register: bits 2..=4.
pub const SLP_TYP_SHIFT: u8 = 2;

/// The x86 reset vector, F000:FFF0. Linux jumps there to reboot when it chooses the
/// BIOS method, which it does on hardware-reduced ACPI without EFI (its EFI reboot
/// falls through to `machine_real_restart`); without firmware the VMM puts
/// [`RESET_VECTOR_CODE`] there so that reboot ends the VM instead of running zeros.
pub const RESET_VECTOR: u64 = 0xf_fff0;
/// 16-bit code at [`RESET_VECTOR`]: `mov al, RESET_VALUE; mov dx, RESET_PORT;
/// out dx, al; cli; hlt; jmp $-2`, padded to 16 bytes with `hlt`.
pub const RESET_VECTOR_CODE: [u8; 16] = [
    0xb0,
    RESET_VALUE,
    0xba,
    RESET_PORT as u8,
    (RESET_PORT >> 8) as u8,
    0xee,
    0xfa,
    0xf4,
    0xeb,
    0xfd,
    0xf4,
    0xf4,
    0xf4,
    0xf4,
    0xf4,
    0xf4,
];

/// Every device slot of bus 0 gets a `_PRT` entry for each of INTA..INTD.
pub const PCI_SLOTS: u32 = 32;
/// Number of IOAPIC pins PCI INTx is swizzled over (GSIs 16..=23).
pub const PCI_INTX_GSIS: u32 = 8;
/// I/O ports of PCI configuration mechanism #1.
pub const PCI_CONFIG_IO: u16 = 0xcf8;

/// What the guest learns from the tables beyond the fixed machine (CPUs, IOAPIC,
/// power registers): the devices other modules put on the buses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcpiPlatform {
    /// Number of vCPUs (APIC IDs 0..vcpus).
    pub vcpus: u8,
    /// COM1 (16550 at 0x3f8, IRQ 4) exists: described as `\_SB.COM1` (`PNP0501`).
    pub serial: bool,
    /// virtio-mmio devices `(window base, GSI)`, each a `\_SB.VRnn` device
    /// (`_HID "LNRO0005"`, a 4 KiB `Memory32Fixed`, an edge-triggered active-high
    /// interrupt), so Linux's virtio-mmio driver finds them without command-line
    /// arguments. Bases must be 4 KiB windows of the virtio-mmio area, GSIs in
    /// 5..=15 except the SCI.
    pub virtio_mmio: Vec<(u64, u32)>,
    /// The PCI host bridge, if there is one.
    pub pci: Option<PciHostAcpi>,
}

/// The PCI host bridge as the tables describe it (segment 0, ECAM at
/// `PCI_ECAM_START`, the 32-bit BAR window `PCI_MMIO32_START/SIZE` and the 64-bit
/// window of the memory layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciHostAcpi {
    /// Highest bus number decoded (buses 0..=last_bus; ECAM covers
    /// `(last_bus + 1)` MiB).
    pub last_bus: u8,
    /// An I/O port window `(base, size)` for I/O BARs, if the bridge has one.
    pub io_window: Option<(u16, u16)>,
}

/// A platform the tables cannot describe (a VMM bug or an impossible configuration).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("machine.acpi: {0}")]
pub struct AcpiError(String);

/// The tables, ready to be copied to [`ACPI_TABLES_START`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiTables {
    /// Every table, back to back, RSDP first.
    pub bytes: Vec<u8>,
    /// Guest-physical address of each table by signature (`RSD PTR` is the RSDP).
    pub tables: Vec<([u8; 4], u64)>,
}

impl AcpiTables {
    /// Guest-physical address of the RSDP.
    pub fn rsdp_addr(&self) -> u64 {
        ACPI_TABLES_START
    }
}

fn to_bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// The standard 36-byte header plus `body`, with the checksum set.
fn sdt(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let len = 36 + body.len();
    let mut t = Vec::with_capacity(len);
    t.extend_from_slice(signature);
    t.extend_from_slice(&(len as u32).to_le_bytes());
    t.push(revision);
    t.push(0);
    t.extend_from_slice(&OEM_ID);
    t.extend_from_slice(&OEM_TABLE_ID);
    t.extend_from_slice(&OEM_REVISION.to_le_bytes());
    t.extend_from_slice(&acpi_tables::CREATOR_ID);
    t.extend_from_slice(&acpi_tables::CREATOR_REVISION);
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

/// The byte that makes `data` sum to zero (mod 256), given a zero checksum field.
pub fn checksum(data: &[u8]) -> u8 {
    data.iter().fold(0u8, |a, b| a.wrapping_sub(*b))
}

/// MADT flags: PCAT_COMPAT (KVM's in-kernel irqchip has the two 8259s).
const MADT_PCAT_COMPAT: u32 = 1;
/// MPS INTI flags for the SCI: active high (01), level-triggered (11 << 2).
const SCI_INTI_FLAGS: u16 = 0x000d;

fn madt(vcpus: u8) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(LAPIC_START as u32).to_le_bytes());
    b.extend_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    for i in 0..vcpus {
        // Processor local APIC: UID = APIC ID = vCPU index, enabled.
        b.extend_from_slice(&[0, 8, i, i]);
        b.extend_from_slice(&1u32.to_le_bytes());
    }
    // I/O APIC 0 at IOAPIC_START, GSI base 0.
    b.extend_from_slice(&[1, 12, 0, 0]);
    b.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    // Interrupt source overrides: ISA IRQ 0 (PIT) -> GSI 2, conforming; the SCI.
    for (irq, gsi, flags) in [
        (0u8, 2u32, 0u16),
        (ACPI_SCI_GSI as u8, ACPI_SCI_GSI, SCI_INTI_FLAGS),
    ] {
        b.extend_from_slice(&[2, 10, 0, irq]);
        b.extend_from_slice(&gsi.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
    }
    // Local APIC NMI: every processor (UID 0xff), LINT1, conforming (what the vCPU
    // set-up programs).
    b.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]);
    sdt(b"APIC", 5, &b)
}

fn io_gas(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

/// IA-PC boot architecture flags: no VGA (bit 2), no CMOS RTC (bit 5); the 8042 bit
/// (1) is clear because the i8042 only has its reset line (Linux then does not probe
/// it); MSI is supported (bit 3 clear); no legacy ISA devices list (bit 0 clear).
pub const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 5);

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    f.sci_int = (ACPI_SCI_GSI as u16).into();
    f.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    f.reset_reg = io_gas(RESET_PORT);
    f.reset_value = RESET_VALUE;
    f.sleep_control_reg = io_gas(SLEEP_CONTROL_PORT);
    f.sleep_status_reg = io_gas(SLEEP_STATUS_PORT);
    to_bytes(&f.finalize())
}

fn com1(sink: &mut Vec<u8>) {
    aml::Device::new(
        "COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &0u8),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::IO::new(0x3f8, 0x3f8, 1, 8),
                    &aml::Interrupt::new(true, true, false, false, 4),
                ]),
            ),
        ],
    )
    .to_aml_bytes(sink);
}

fn virtio_mmio(sink: &mut Vec<u8>, index: usize, base: u64, gsi: u32) {
    aml::Device::new(
        format!("VR{index:02X}").as_str().into(),
        vec![
            &aml::Name::new("_HID".into(), &"LNRO0005"),
            &aml::Name::new("_UID".into(), &(index as u32)),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::Memory32Fixed::new(true, base as u32, 0x1000),
                    &aml::Interrupt::new(true, true, false, false, gsi),
                ]),
            ),
        ],
    )
    .to_aml_bytes(sink);
}

/// The PCI firmware `_OSC` UUID (PCI Firmware Specification 3.3, 4.5.1).
pub const PCI_OSC_UUID: &str = "33DB4D5B-1FF7-401C-9657-7441C03DD766";

/// GSI of pin `pin` (0 = INTA) of device `slot` on bus 0: the usual swizzle over
/// GSIs 16..=23.
pub fn pci_intx_gsi(slot: u32, pin: u32) -> u32 {
    PCI_INTX_FIRST_GSI + (slot + pin) % PCI_INTX_GSIS
}

fn pci0(sink: &mut Vec<u8>, pci: &PciHostAcpi, layout: &MemoryLayout) {
    let bus = aml::AddressSpace::<u16>::new_bus_number(0, u16::from(pci.last_bus));
    let cfg_io = aml::IO::new(PCI_CONFIG_IO, PCI_CONFIG_IO, 1, 8);
    let io_window = pci
        .io_window
        .map(|(base, size)| aml::AddressSpace::<u16>::new_io(base, base + (size - 1), None));
    let mem32 = aml::AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        PCI_MMIO32_START as u32,
        (PCI_MMIO32_START + PCI_MMIO32_SIZE - 1) as u32,
        None,
    );
    let (m64_start, m64_size) = layout.mmio64;
    let mem64 = (m64_size > 0).then(|| {
        aml::AddressSpace::<u64>::new_memory(
            AddressSpaceCacheable::NotCacheable,
            true,
            m64_start,
            m64_start + (m64_size - 1),
            None,
        )
    });
    let mut resources: Vec<&dyn Aml> = vec![&bus, &cfg_io];
    if let Some(w) = &io_window {
        resources.push(w);
    }
    resources.push(&mem32);
    if let Some(w) = &mem64 {
        resources.push(w);
    }
    let crs = aml::ResourceTemplate::new(resources);

    let routes: Vec<(u32, u32, u32)> = (0..PCI_SLOTS)
        .flat_map(|slot| {
            (0..4).map(move |pin| ((slot << 16) | 0xffff, pin, pci_intx_gsi(slot, pin)))
        })
        .collect();
    let entries: Vec<aml::Package> = routes
        .iter()
        .map(|(addr, pin, gsi)| aml::Package::new(vec![addr, pin, &0u8, gsi]))
        .collect();
    let prt = aml::Package::new(entries.iter().map(|e| e as &dyn Aml).collect());

    // _OSC: for the PCI host bridge UUID grant what the OS asks for (the VMM keeps no
    // PCIe feature for itself); any other UUID: "unrecognized UUID" (CDW1 bit 2).
    let cdw1 = aml::Path::new("CDW1");
    let uuid = aml::Uuid::new(PCI_OSC_UUID);
    let is_pci = aml::Equal::new(&aml::Arg(0), &uuid);
    let ret = aml::Return::new(&aml::Arg(3));
    let field = aml::CreateDWordField::new(&cdw1, &aml::Arg(3), &0u8);
    let granted = aml::If::new(&is_pci, vec![&ret]);
    let unrecognized = aml::Or::new(&cdw1, &cdw1, &4u8);
    let osc = aml::Method::new(
        "_OSC".into(),
        4,
        false,
        vec![&field, &granted, &unrecognized, &ret],
    );
    aml::Device::new(
        "PCI0".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A08")),
            &aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A03")),
            &aml::Name::new("_SEG".into(), &0u8),
            &aml::Name::new("_UID".into(), &0u8),
            &aml::Name::new("_BBN".into(), &0u8),
            &aml::Name::new("_CRS".into(), &crs),
            &aml::Name::new("_PRT".into(), &prt),
            &osc,
        ],
    )
    .to_aml_bytes(sink);

    // Linux uses MMCONFIG only if the ECAM range is reserved by a motherboard
    // resource (PNP0C02) or e820; the range is in no e820 entry, so reserve it here.
    let ecam_range = aml::Memory32Fixed::new(false, PCI_ECAM_START as u32, ecam_size(pci) as u32);
    let ecam = aml::ResourceTemplate::new(vec![&ecam_range]);
    aml::Device::new(
        "ECFG".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C02")),
            &aml::Name::new("_UID".into(), &1u8),
            &aml::Name::new("_CRS".into(), &ecam),
        ],
    )
    .to_aml_bytes(sink);
}

fn ecam_size(pci: &PciHostAcpi) -> u64 {
    (u64::from(pci.last_bus) + 1) << 20
}

fn dsdt(p: &AcpiPlatform, layout: &MemoryLayout) -> Vec<u8> {
    let mut body = Vec::new();
    let s5 = aml::Package::new(vec![&S5_SLEEP_TYPE, &S5_SLEEP_TYPE, &0u8, &0u8]);
    aml::Name::new("_S5_".into(), &s5).to_aml_bytes(&mut body);
    let mut sb = Vec::new();
    if p.serial {
        com1(&mut sb);
    }
    for (i, &(base, gsi)) in p.virtio_mmio.iter().enumerate() {
        virtio_mmio(&mut sb, i, base, gsi);
    }
    if let Some(pci) = &p.pci {
        pci0(&mut sb, pci, layout);
    }
    if !sb.is_empty() {
        body.extend(aml::Scope::raw("\\_SB_".into(), sb));
    }
    let mut t = Sdt::new(*b"DSDT", 36, 2, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    t.append_slice(&body);
    t.as_slice().to_vec()
}

fn mcfg(pci: &PciHostAcpi) -> Vec<u8> {
    let mut m = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    m.add_ecam(PCI_ECAM_START, 0, 0, pci.last_bus);
    to_bytes(&m)
}

/// The platform `cfg` describes, or `None` when `machine.acpi` is off. Boot and
/// `bulwark-vmm measure` both build the tables from the machine plan's copy of it
/// ([`crate::plan::MachinePlan::acpi`]), so they agree; this computes the same for
/// `cfg` alone.
///
/// Devices that other modules put on the buses are added when configured:
/// virtio-mmio windows to `virtio_mmio`, the PCI host bridge to `pci`.
pub fn platform(cfg: &VmConfig) -> Option<AcpiPlatform> {
    crate::plan::acpi_platform_of(cfg)
}

/// Puts the power-management registers on the port bus when the VM has ACPI
/// (`enabled`); returns the device (for its counter).
pub fn attach(enabled: bool, pio: &Bus) -> Result<Option<Arc<PowerManagement>>, BusError> {
    if !enabled {
        return Ok(None);
    }
    let pm = Arc::new(PowerManagement::default());
    pio.insert(u64::from(ACPI_SLEEP_PORT), PM_PORTS, pm.clone())?;
    Ok(Some(pm))
}

impl AcpiPlatform {
    /// Checks what the other modules asked to describe.
    pub fn validate(&self) -> Result<(), AcpiError> {
        if self.vcpus == 0 || self.vcpus > crate::config::MAX_VCPUS {
            return Err(AcpiError(format!(
                "{} vCPUs cannot be described",
                self.vcpus
            )));
        }
        let mut gsis = Vec::new();
        for &(base, gsi) in &self.virtio_mmio {
            let in_window = (VIRTIO_MMIO_START..VIRTIO_MMIO_START + VIRTIO_MMIO_SIZE)
                .contains(&base)
                && base.is_multiple_of(0x1000);
            if !in_window {
                return Err(AcpiError(format!(
                    "virtio-mmio window {base:#x} is not a 4 KiB window of {VIRTIO_MMIO_START:#x}+{VIRTIO_MMIO_SIZE:#x}"
                )));
            }
            if !(VIRTIO_MMIO_FIRST_GSI..=VIRTIO_MMIO_LAST_GSI).contains(&gsi)
                || gsi == ACPI_SCI_GSI
                || gsis.contains(&gsi)
            {
                return Err(AcpiError(format!(
                    "virtio-mmio GSI {gsi} is not a free GSI in {VIRTIO_MMIO_FIRST_GSI}..={VIRTIO_MMIO_LAST_GSI} (the SCI {ACPI_SCI_GSI} excluded)"
                )));
            }
            gsis.push(gsi);
        }
        if let Some(pci) = &self.pci {
            if ecam_size(pci) > PCI_ECAM_SIZE {
                return Err(AcpiError("ECAM larger than its window".into()));
            }
            if let Some((base, size)) = pci.io_window {
                let end = u32::from(base) + u32::from(size);
                let cfg = u32::from(PCI_CONFIG_IO)..u32::from(PCI_CONFIG_IO) + 8;
                let pm = u32::from(ACPI_SLEEP_PORT)..u32::from(ACPI_SLEEP_PORT) + PM_PORTS as u32;
                let overlaps = |r: &std::ops::Range<u32>| u32::from(base) < r.end && r.start < end;
                if size == 0 || end > 0x1_0000 || overlaps(&cfg) || overlaps(&pm) {
                    return Err(AcpiError(format!(
                        "PCI I/O window {base:#x}+{size:#x} is empty, wraps, or overlaps 0xcf8..0xcff or the ACPI registers"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Builds every table for this platform and `layout`.
    pub fn build(&self, layout: &MemoryLayout) -> Result<AcpiTables, AcpiError> {
        self.validate()?;
        let dsdt = dsdt(self, layout);
        let madt = madt(self.vcpus);
        let mcfg = self.pci.as_ref().map(mcfg);
        let align = |n: usize| n.next_multiple_of(16) as u64;
        let xsdt_entries = 2 + usize::from(mcfg.is_some());
        let rsdp_at = ACPI_TABLES_START;
        let xsdt_at = rsdp_at + align(Rsdp::len());
        let fadt_at = xsdt_at + align(36 + 8 * xsdt_entries);
        let dsdt_at = fadt_at + align(acpi_tables::fadt::FADT::len());
        let fadt = fadt(dsdt_at);
        let madt_at = dsdt_at + align(dsdt.len());
        let mcfg_at = madt_at + align(madt.len());
        let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
        xsdt.add_entry(fadt_at);
        xsdt.add_entry(madt_at);
        if mcfg.is_some() {
            xsdt.add_entry(mcfg_at);
        }
        let mut placed: Vec<([u8; 4], u64, Vec<u8>)> = vec![
            (*b"RSD ", rsdp_at, to_bytes(&Rsdp::new(OEM_ID, xsdt_at))),
            (*b"XSDT", xsdt_at, to_bytes(&xsdt)),
            (*b"FACP", fadt_at, fadt),
            (*b"DSDT", dsdt_at, dsdt),
            (*b"APIC", madt_at, madt),
        ];
        if let Some(m) = mcfg {
            placed.push((*b"MCFG", mcfg_at, m));
        }
        let mut bytes = Vec::new();
        let mut tables = Vec::new();
        for (sig, at, data) in placed {
            let off = (at - ACPI_TABLES_START) as usize;
            if bytes.len() > off {
                return Err(AcpiError(format!("table layout overlap at {at:#x}")));
            }
            bytes.resize(off, 0);
            bytes.extend_from_slice(&data);
            tables.push((sig, at));
        }
        let room = RESET_VECTOR - ACPI_TABLES_START;
        if bytes.len() as u64 > room {
            return Err(AcpiError(format!(
                "{} bytes of tables exceed the {room:#x} bytes below the reset vector",
                bytes.len()
            )));
        }
        Ok(AcpiTables { bytes, tables })
    }
}

/// How many ignored accesses to the power-management registers are logged one by one.
const LOG_FIRST: u64 = 16;

/// The hardware-reduced power-management registers at [`ACPI_SLEEP_PORT`]: sleep
/// control (+0), sleep status (+1), reset (+2), one byte each. Writing SLP_EN with
/// SLP_TYP = S5 powers off; writing [`RESET_VALUE`] to the reset register resets.
/// Everything else (other sleep states, wider accesses, other reset values) is
/// ignored, counted and logged; reads return 0 (no wake status).
#[derive(Debug, Default)]
pub struct PowerManagement {
    /// Accesses that did nothing.
    pub ignored: AtomicU64,
}

impl PowerManagement {
    fn ignore(&self, what: &str, offset: u64, data: &[u8]) -> BusAction {
        let n = self.ignored.fetch_add(1, Ordering::Relaxed);
        if n < LOG_FIRST || n.is_multiple_of(65536) {
            tracing::warn!(
                port = format_args!("{:#x}", u64::from(ACPI_SLEEP_PORT) + offset),
                len = data.len(),
                first = data.first().copied().unwrap_or(0),
                total = n + 1,
                "ignored ACPI power-management access: {what}"
            );
        }
        BusAction::Continue
    }
}

impl BusDevice for PowerManagement {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&self, offset: u64, data: &[u8]) -> BusAction {
        let [value] = data else {
            return self.ignore("not a one-byte access", offset, data);
        };
        match offset {
            0 if value & SLP_EN == 0 => BusAction::Continue,
            0 if (value >> SLP_TYP_SHIFT) & 7 == S5_SLEEP_TYPE => {
                tracing::info!("guest entered S5 through the ACPI sleep control register");
                BusAction::PowerOff
            }
            0 => self.ignore("sleep state other than S5", offset, data),
            // Writing WAK_STS (bit 7) clears wake status, which is always clear.
            1 => BusAction::Continue,
            2 if *value == RESET_VALUE => {
                tracing::info!("guest wrote the ACPI reset register");
                BusAction::Reset
            }
            _ => self.ignore("unknown register or reset value", offset, data),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{GIB, MIB};

    fn layout() -> MemoryLayout {
        MemoryLayout::new(64 * MIB, 64 * GIB, 46).unwrap()
    }

    fn table<'a>(t: &'a AcpiTables, sig: &[u8; 4]) -> &'a [u8] {
        let at = t.tables.iter().find(|(s, _)| s == sig).unwrap().1;
        let off = (at - ACPI_TABLES_START) as usize;
        let len = if sig == b"RSD " {
            36
        } else {
            u32::from_le_bytes(t.bytes[off + 4..off + 8].try_into().unwrap()) as usize
        };
        &t.bytes[off..off + len]
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    fn platform() -> AcpiPlatform {
        AcpiPlatform {
            vcpus: 2,
            serial: true,
            ..Default::default()
        }
    }

    #[test]
    fn rsdp_xsdt_and_every_table_are_linked_and_checksummed() {
        let t = platform().build(&layout()).unwrap();
        let rsdp = table(&t, b"RSD ");
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(sum(rsdp), 0, "extended checksum");
        assert_eq!(rsdp[15], 2, "revision");
        assert_eq!(u32_at(rsdp, 16), 0, "no RSDT");
        assert_eq!(u32_at(rsdp, 20), 36);
        let xsdt_at = u64_at(rsdp, 24);
        let xsdt = table(&t, b"XSDT");
        assert_eq!(t.tables[1], (*b"XSDT", xsdt_at));
        assert_eq!(&xsdt[..4], b"XSDT");
        let entries: Vec<u64> = (36..xsdt.len())
            .step_by(8)
            .map(|o| u64_at(xsdt, o))
            .collect();
        let at = |sig: &[u8; 4]| t.tables.iter().find(|(s, _)| s == sig).unwrap().1;
        assert_eq!(
            entries,
            vec![at(b"FACP"), at(b"APIC")],
            "no MCFG without PCI"
        );
        for sig in [b"XSDT", b"FACP", b"DSDT", b"APIC"] {
            let tb = table(&t, sig);
            assert_eq!(&tb[..4], sig);
            assert_eq!(sum(tb), 0, "{}", String::from_utf8_lossy(sig));
            assert_eq!(&tb[10..16], &OEM_ID);
        }
        assert_eq!(
            t.bytes.len() as u64,
            at(b"APIC") - ACPI_TABLES_START + table(&t, b"APIC").len() as u64
        );
    }

    #[test]
    fn fadt_is_hardware_reduced_with_the_sleep_and_reset_registers() {
        let t = platform().build(&layout()).unwrap();
        let f = table(&t, b"FACP");
        assert_eq!(f.len(), 276);
        assert_eq!((f[8], f[131]), (6, 5), "FADT 6.5");
        assert_eq!(u16::from_le_bytes([f[46], f[47]]), 9, "SCI_INT");
        let flags = u32_at(f, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        assert_eq!(u16::from_le_bytes([f[109], f[110]]), IAPC_BOOT_ARCH);
        // GAS: space 1 (I/O), 8 bits, offset 0, byte access, address.
        let gas = |o: usize| (f[o], f[o + 1], f[o + 2], f[o + 3], u64_at(f, o + 4));
        assert_eq!(gas(116), (1, 8, 0, 1, 0x602), "RESET_REG");
        assert_eq!(f[128], RESET_VALUE);
        assert_eq!(gas(244), (1, 8, 0, 1, 0x600), "SLEEP_CONTROL_REG");
        assert_eq!(gas(256), (1, 8, 0, 1, 0x601), "SLEEP_STATUS_REG");
        let at = |sig: &[u8; 4]| t.tables.iter().find(|(s, _)| s == sig).unwrap().1;
        assert_eq!(u64_at(f, 140), at(b"DSDT"), "X_DSDT");
        assert_eq!(u32_at(f, 40), 0, "32-bit DSDT unused");
        assert_eq!(u32_at(f, 36), 0, "no FACS (hardware-reduced)");
    }

    #[test]
    fn madt_has_one_enabled_lapic_per_vcpu_the_ioapic_and_the_overrides() {
        let t = AcpiPlatform {
            vcpus: 3,
            ..Default::default()
        }
        .build(&layout())
        .unwrap();
        let m = table(&t, b"APIC");
        assert_eq!(u32_at(m, 36), 0xfee0_0000);
        let mut o = 44;
        let mut lapics = Vec::new();
        let mut rest = Vec::new();
        while o < m.len() {
            let (ty, len) = (m[o], m[o + 1] as usize);
            assert!(len >= 2 && o + len <= m.len());
            if ty == 0 {
                assert_eq!(u32_at(m, o + 4), 1, "enabled");
                lapics.push((m[o + 2], m[o + 3]));
            } else {
                rest.push(m[o..o + len].to_vec());
            }
            o += len;
        }
        assert_eq!(lapics, vec![(0, 0), (1, 1), (2, 2)]);
        assert_eq!(
            rest,
            vec![
                vec![1, 12, 0, 0, 0x00, 0x00, 0xc0, 0xfe, 0, 0, 0, 0],
                vec![2, 10, 0, 0, 2, 0, 0, 0, 0, 0],
                vec![2, 10, 0, 9, 9, 0, 0, 0, 0x0d, 0],
                vec![4, 6, 0xff, 0, 0, 1],
            ]
        );
    }

    #[test]
    fn dsdt_has_s5_com1_and_virtio_mmio_devices() {
        let mut p = platform();
        p.virtio_mmio = vec![(0xd000_0000, 5), (0xd000_1000, 6)];
        let t = p.build(&layout()).unwrap();
        let d = table(&t, b"DSDT");
        assert_eq!(d[8], 2, "revision 2: 64-bit integers");
        // Name(_S5_, Package(4) {5, 5, 0, 0})
        let s5 = [
            0x08, b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0x00, 0x00,
        ];
        assert!(find(d, &s5).is_some(), "{d:02x?}");
        assert!(find(d, b"\\_SB_").is_some());
        // COM1: _HID EISAID("PNP0501") = 0x0105d041, IO 0x3f8 len 8, IRQ 4.
        assert!(find(d, &[b'_', b'H', b'I', b'D', 0x0c, 0x41, 0xd0, 0x05, 0x01]).is_some());
        assert!(find(d, &[0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08]).is_some());
        for (i, (base, gsi)) in [(0xd000_0000u32, 5u8), (0xd000_1000, 6)]
            .into_iter()
            .enumerate()
        {
            let name = format!("VR{i:02X}");
            let at = find(d, name.as_bytes()).expect("device");
            let dev = &d[at..];
            assert_eq!(find(dev, b"_HID\x0dLNRO0005\x00"), Some(5));
            let mut mem = vec![0x86, 9, 0, 1];
            mem.extend_from_slice(&base.to_le_bytes());
            mem.extend_from_slice(&0x1000u32.to_le_bytes());
            assert!(find(dev, &mem).is_some(), "{name} Memory32Fixed");
            // Extended interrupt: consumer, edge, active high, exclusive.
            assert!(
                find(dev, &[0x89, 6, 0, 0x03, 1, gsi, 0, 0, 0]).is_some(),
                "{name} IRQ"
            );
        }
        assert!(find(d, b"PCI0").is_none());
        assert_eq!(t.tables.len(), 5, "no MCFG");
    }

    #[test]
    fn pci_host_bridge_has_what_linux_needs_and_an_mcfg() {
        let mut p = platform();
        p.pci = Some(PciHostAcpi {
            last_bus: 0,
            io_window: Some((0x1000, 0x1000)),
        });
        let l = layout();
        let t = p.build(&l).unwrap();
        let m = table(&t, b"MCFG");
        assert_eq!(sum(m), 0);
        assert_eq!(m.len(), 36 + 8 + 16);
        assert_eq!(u64_at(m, 44), PCI_ECAM_START);
        assert_eq!(&m[52..56], &[0, 0, 0, 0], "segment 0, buses 0..=0");
        let at = |sig: &[u8; 4]| t.tables.iter().find(|(s, _)| s == sig).unwrap().1;
        let xsdt = table(&t, b"XSDT");
        assert_eq!(u64_at(xsdt, 36 + 16), at(b"MCFG"));

        let d = table(&t, b"DSDT");
        let pci = &d[find(d, b"PCI0").unwrap()..];
        // PNP0A08 = 0x080ad041, PNP0A03 = 0x030ad041.
        assert!(find(pci, &[b'_', b'H', b'I', b'D', 0x0c, 0x41, 0xd0, 0x0a, 0x08]).is_some());
        assert!(find(pci, &[b'_', b'C', b'I', b'D', 0x0c, 0x41, 0xd0, 0x0a, 0x03]).is_some());
        for name in [b"_SEG", b"_BBN", b"_UID"] {
            let mut want = name.to_vec();
            want.push(0x00);
            assert!(
                find(pci, &want).is_some(),
                "{}",
                String::from_utf8_lossy(name)
            );
        }
        // Word bus number 0..=0 (length 1), fixed min/max.
        assert!(find(
            pci,
            &[0x88, 0x0d, 0, 2, 0x0c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]
        )
        .is_some());
        // Config ports, the I/O window 0x1000..=0x1fff.
        assert!(find(pci, &[0x47, 0x01, 0xf8, 0x0c, 0xf8, 0x0c, 0x01, 0x08]).is_some());
        assert!(find(
            pci,
            &[0x88, 0x0d, 0, 1, 0x0c, 3, 0, 0, 0x00, 0x10, 0xff, 0x1f, 0, 0, 0x00, 0x10]
        )
        .is_some());
        // DWord memory 0xc0000000..=0xcfffffff, QWord memory = the 64-bit window.
        let mut mem32 = vec![0x87, 0x17, 0, 0, 0x0c, 1, 0, 0, 0, 0];
        for v in [0xc000_0000u32, 0xcfff_ffff, 0, 0x1000_0000] {
            mem32.extend_from_slice(&v.to_le_bytes());
        }
        assert!(find(pci, &mem32).is_some(), "32-bit window");
        let mut mem64 = vec![0x8a, 0x2b, 0, 0, 0x0c, 1];
        for v in [0, l.mmio64.0, l.mmio64.0 + l.mmio64.1 - 1, 0, l.mmio64.1] {
            mem64.extend_from_slice(&v.to_le_bytes());
        }
        assert!(find(pci, &mem64).is_some(), "64-bit window");
        // _PRT: 128 entries; slot 3 INTB -> GSI 16 + (3 + 1) % 8 = 20.
        let prt = &pci[find(pci, b"_PRT").unwrap()..];
        assert_eq!(prt[4], 0x12);
        let count_at = 5 + usize::from(prt[5] >> 6) + 1;
        assert_eq!(prt[count_at], 128);
        assert!(find(
            prt,
            &[0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, 0x03, 0x00, 0x01, 0x00, 0x0a, 20]
        )
        .is_some());
        assert_eq!(pci_intx_gsi(31, 3), 18);
        // _OSC with four arguments checks the PCI UUID.
        let osc = &pci[find(pci, b"_OSC").unwrap()..];
        assert_eq!(osc[4], 4, "4 arguments");
        assert!(find(osc, &[0x5b, 0x4d, 0xdb, 0x33, 0xf7, 0x1f, 0x1c, 0x40]).is_some());
        // The ECAM range is reserved by a PNP0C02 device.
        let res = &d[find(d, b"ECFG").unwrap()..];
        assert!(find(res, &[0x0c, 0x41, 0xd0, 0x0c, 0x02]).is_some());
        assert!(find(res, &[0x86, 9, 0, 0, 0, 0, 0, 0xe0, 0, 0, 0x10, 0]).is_some());
    }

    #[test]
    fn impossible_platforms_are_refused() {
        let l = layout();
        let mut p = platform();
        p.virtio_mmio = vec![(0xd000_0800, 5)];
        assert!(p
            .build(&l)
            .unwrap_err()
            .to_string()
            .starts_with("machine.acpi: virtio-mmio window"));
        p.virtio_mmio = vec![(0xd000_0000, 9)];
        assert!(p.build(&l).is_err(), "SCI");
        p.virtio_mmio = vec![(0xd000_0000, 5), (0xd000_1000, 5)];
        assert!(p.build(&l).is_err(), "shared GSI");
        p.virtio_mmio.clear();
        for w in [(0xcf0, 0x10), (0x5f0, 0x20), (0xf000, 0x1001), (0x1000, 0)] {
            p.pci = Some(PciHostAcpi {
                last_bus: 3,
                io_window: Some(w),
            });
            assert!(p.build(&l).is_err(), "{w:x?}");
        }
        p.pci = Some(PciHostAcpi {
            last_bus: 255,
            io_window: None,
        });
        assert!(p.build(&l).is_ok());
        p.vcpus = 0;
        assert!(p.build(&l).is_err());
    }

    #[test]
    fn tables_are_a_pure_function_of_the_platform() {
        let a = platform().build(&layout()).unwrap();
        assert_eq!(a, platform().build(&layout()).unwrap());
        let mut p = platform();
        p.vcpus = 3;
        assert_ne!(a.bytes, p.build(&layout()).unwrap().bytes);
    }

    #[test]
    fn power_registers_power_off_reset_and_ignore_the_rest() {
        let pm = PowerManagement::default();
        // What Linux writes: WAK_STS to the status register, then SLP_TYP=5 | SLP_EN.
        assert_eq!(pm.write(1, &[0x80]), BusAction::Continue);
        assert_eq!(pm.write(0, &[5 << 2]), BusAction::Continue, "no SLP_EN");
        assert_eq!(pm.write(0, &[(3 << 2) | SLP_EN]), BusAction::Continue, "S3");
        assert_eq!(pm.write(0, &[0x34]), BusAction::PowerOff);
        assert_eq!(pm.write(0, &[0xff]), BusAction::Continue, "SLP_TYP 7");
        assert_eq!(pm.write(2, &[RESET_VALUE]), BusAction::Reset);
        assert_eq!(pm.write(2, &[0x45]), BusAction::Continue);
        assert_eq!(pm.write(0, &[0x34, 0]), BusAction::Continue, "two bytes");
        assert_eq!(pm.write(0, &[]), BusAction::Continue);
        assert_eq!(pm.write(7, &[RESET_VALUE]), BusAction::Continue);
        assert_eq!(pm.ignored.load(Ordering::Relaxed), 6);
        let mut b = [0xaa; 2];
        pm.read(1, &mut b);
        assert_eq!(b, [0, 0]);
    }
}
