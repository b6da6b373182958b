//! The guest-physical address map of a Bulwark microVM.
//!
//! ```text
//! 0x0000_0000 ┬ low RAM ........................ usable (e820 RAM) up to 0x9_fc00
//!             │   0x0500  GDT (boot)            0x6000  PVH start info + memmap
//!             │   0x7000  zero page (boot_params) 0x8ff0 initial stack (Linux entry)
//!             │   0x9000  PML4  0xa000 PDPT  0xb000..0xf000 four PDs (identity map, 4 GiB)
//!             │   0x2_0000 kernel command line (at most 64 KiB)
//! 0x0009_fc00 ┼ EBDA/VGA/BIOS hole ............... e820 reserved up to 1 MiB
//! 0x0010_0000 ┼ low RAM continues ................ kernel / raw image / initrd
//! 0xc000_0000 ┼ 32-bit MMIO hole (1 GiB):
//!             │   0xc000_0000 PCI 32-bit BAR window (256 MiB): VFIO BARs below
//!             │               0xcff0_0000, virtio-pci BAR0s in its top 1 MiB
//!             │   0xd000_0000 virtio-mmio windows, 4 KiB each (up to 256)
//!             │   0xe000_0000 PCI ECAM / MMCONFIG (256 MiB: buses 0..=255)
//!             │   0xfec0_0000 IOAPIC     0xfee0_0000 LAPIC
//!             │   0xfffb_c000 KVM identity map + TSS
//! 0x1_0000_0000 high RAM (whatever did not fit below 3 GiB)
//! align_up(end of RAM, 1 GiB): 64-bit MMIO window (default 1 TiB) for PCI BARs of
//!             passed-through GPUs; it is in no e820 entry (the guest discovers it from
//!             the PCI host bridge of a later issue).
//! ```
//!
//! Everything here is a pure function of the configured RAM size and window size, so
//! the offline measurement tool computes exactly what the VMM will build.

use serde::Serialize;

/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// One gibibyte.
pub const GIB: u64 = 1 << 30;

/// Start of the 32-bit MMIO hole; RAM below 4 GiB ends here at the latest.
pub const MMIO32_START: u64 = 3 * GIB;
/// Size of the 32-bit MMIO hole (up to 4 GiB).
pub const MMIO32_SIZE: u64 = GIB;
/// Where RAM resumes above the 32-bit hole.
pub const HIGH_RAM_START: u64 = 4 * GIB;
/// End of the usable RAM below the legacy hole (EBDA starts here).
pub const EBDA_START: u64 = 0x9_fc00;
/// Start of RAM above the legacy hole: kernels and raw images load from here.
pub const HIMEM_START: u64 = 0x10_0000;
/// Alignment of the 64-bit MMIO window.
pub const MMIO64_ALIGN: u64 = GIB;
/// The PCI host bridge's 32-bit BAR window.
pub const PCI_MMIO32_START: u64 = 0xc000_0000;
/// Size of [`PCI_MMIO32_START`]'s window.
pub const PCI_MMIO32_SIZE: u64 = 256 * MIB;
/// The top of the 32-bit window holds the virtio-pci functions' BAR0s, virtio-pci
/// device `n` at `VIRTIO_PCI_START + n * bulwark_virtio::pci::BAR_SIZE` (a pure
/// function of the config, like the virtio-mmio windows).
pub const VIRTIO_PCI_START: u64 = PCI_MMIO32_START + PCI_MMIO32_SIZE - VIRTIO_PCI_SIZE;
/// Room for virtio-pci BARs.
pub const VIRTIO_PCI_SIZE: u64 = MIB;
/// The part of the 32-bit window the VFIO BAR allocator places BARs in (below the
/// virtio-pci BARs).
pub const PCI_MMIO32_ALLOC_SIZE: u64 = PCI_MMIO32_SIZE - VIRTIO_PCI_SIZE;
/// First virtio-mmio window; device `n` sits at `VIRTIO_MMIO_START + n * 4 KiB`.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Room for virtio-mmio windows.
pub const VIRTIO_MMIO_SIZE: u64 = MIB;
/// PCI ECAM (MMCONFIG): 1 MiB per bus, buses 0..=255.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
/// Size of the ECAM region.
pub const PCI_ECAM_SIZE: u64 = 256 * MIB;
/// Where the VMM writes the ACPI tables (RSDP first); inside the e820-reserved
/// legacy hole, where Linux also searches for the RSDP.
pub const ACPI_TABLES_START: u64 = 0xe_0000;
/// Room for the ACPI tables (up to 1 MiB).
pub const ACPI_TABLES_SIZE: u64 = HIMEM_START - ACPI_TABLES_START;
/// I/O port of the ACPI hardware-reduced sleep control register (status at +1, the
/// reset register at +2; `acpi.rs`).
pub const ACPI_SLEEP_PORT: u16 = 0x600;

/// IOAPIC pins (GSIs): 4 is COM1; 9 is the ACPI SCI (the VM is hardware-reduced
/// and never raises it); virtio-mmio devices take 5..=15 except 9, in order (at
/// most 10 devices); PCI INTx uses 16..=23; MSI routes start at 24.
pub const ACPI_SCI_GSI: u32 = 9;
/// First GSI for virtio-mmio devices.
pub const VIRTIO_MMIO_FIRST_GSI: u32 = 5;
/// Last GSI for virtio-mmio devices.
pub const VIRTIO_MMIO_LAST_GSI: u32 = 15;
/// First GSI for PCI INTx.
pub const PCI_INTX_FIRST_GSI: u32 = 16;
/// Interrupt-remapped MSI routes (KVM GSI routing) start above the IOAPIC pins.
pub const MSI_FIRST_GSI: u32 = 24;

/// The in-kernel IOAPIC's MMIO page.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The in-kernel local APIC's MMIO page.
pub const LAPIC_START: u64 = 0xfee0_0000;
/// KVM's TSS (three pages) and identity map page live at the top of the 32-bit hole.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// See [`KVM_TSS_ADDR`].
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

/// Boot-time structures the VMM writes into low RAM.
pub const BOOT_GDT_ADDR: u64 = 0x500;
/// PVH `hvm_start_info` and its memory map.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// PVH memory map entries, right after the start info.
pub const PVH_MEMMAP_ADDR: u64 = 0x6040;
/// Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer for the 64-bit Linux entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page-map level 4 of the boot identity map.
pub const PML4_ADDR: u64 = 0x9000;
/// Page-directory-pointer table of the boot identity map.
pub const PDPT_ADDR: u64 = 0xa000;
/// First of four page directories (2 MiB pages) covering 0..4 GiB.
pub const PD_ADDR: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Largest command line accepted (NUL included).
pub const CMDLINE_MAX_SIZE: u64 = 0x1_0000;
/// Everything below this address may hold VMM-written boot structures.
pub const BOOT_AREA_END: u64 = CMDLINE_ADDR + CMDLINE_MAX_SIZE;

/// Smallest guest RAM accepted.
pub const MIN_MEM_SIZE: u64 = 4 * MIB;
/// RAM sizes must be a multiple of this (the 2 MiB huge page size).
pub const MEM_ALIGN: u64 = 2 * MIB;

/// e820 entry types as the Linux boot protocol defines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum E820Kind {
    /// Usable RAM (type 1).
    Ram,
    /// Reserved (type 2).
    Reserved,
}

impl E820Kind {
    /// The numeric type the boot protocol uses.
    pub fn code(self) -> u32 {
        match self {
            E820Kind::Ram => 1,
            E820Kind::Reserved => 2,
        }
    }
}

/// One entry of the guest's e820 map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct E820Entry {
    /// Guest-physical start.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the range is.
    pub kind: E820Kind,
}

/// Errors in the requested memory shape.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// RAM size outside what the layout supports.
    #[error("machine.mem_mib: {0}")]
    MemSize(String),
    /// 64-bit MMIO window that does not fit the guest's physical address width.
    #[error("machine.mmio64_gib: {0}")]
    Mmio64(String),
}

/// The computed address map for one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryLayout {
    /// Total guest RAM in bytes.
    pub mem_size: u64,
    /// RAM regions `(guest address, size)`; one or two (below 3 GiB and above 4 GiB).
    pub ram_regions: Vec<(u64, u64)>,
    /// The 32-bit MMIO hole `(start, size)`.
    pub mmio32: (u64, u64),
    /// The 64-bit MMIO window `(start, size)`; size 0 means none.
    pub mmio64: (u64, u64),
    /// The guest firmware's region `(start, size)` just below 4 GiB, with
    /// `machine.firmware` (not RAM: not in the e820 map, written only by the firmware
    /// loader).
    pub firmware: Option<(u64, u64)>,
}

impl MemoryLayout {
    /// Computes the layout for `mem_size` bytes of RAM and a 64-bit MMIO window of
    /// `mmio64_size` bytes, checked against a guest physical address width of
    /// `phys_bits`.
    pub fn new(mem_size: u64, mmio64_size: u64, phys_bits: u8) -> Result<Self, LayoutError> {
        if mem_size < MIN_MEM_SIZE || !mem_size.is_multiple_of(MEM_ALIGN) {
            return Err(LayoutError::MemSize(format!(
                "{} MiB is not a multiple of 2 MiB of at least {} MiB",
                mem_size / MIB,
                MIN_MEM_SIZE / MIB
            )));
        }
        let addr_limit = 1u64
            .checked_shl(u32::from(phys_bits))
            .filter(|_| phys_bits <= 52)
            .ok_or_else(|| {
                LayoutError::Mmio64(format!("bad physical address width {phys_bits}"))
            })?;
        let low = mem_size.min(MMIO32_START);
        let mut ram_regions = vec![(0, low)];
        let ram_end = if mem_size > low {
            let high = mem_size - low;
            ram_regions.push((HIGH_RAM_START, high));
            HIGH_RAM_START
                .checked_add(high)
                .ok_or_else(|| LayoutError::MemSize("too large".into()))?
        } else {
            HIGH_RAM_START
        };
        let mmio64_start = ram_end.div_ceil(MMIO64_ALIGN) * MMIO64_ALIGN;
        let mmio64_end = mmio64_start.checked_add(mmio64_size);
        if ram_end > addr_limit {
            return Err(LayoutError::MemSize(format!(
                "RAM ends at {ram_end:#x}, beyond the {phys_bits}-bit guest physical address space"
            )));
        }
        match mmio64_end {
            Some(end) if end <= addr_limit => {}
            _ => {
                return Err(LayoutError::Mmio64(format!(
                    "window of {} GiB at {mmio64_start:#x} exceeds the {phys_bits}-bit guest physical address space",
                    mmio64_size / GIB
                )))
            }
        }
        Ok(MemoryLayout {
            mem_size,
            ram_regions,
            mmio32: (MMIO32_START, MMIO32_SIZE),
            mmio64: (mmio64_start, mmio64_size),
            firmware: None,
        })
    }

    /// The same layout with the firmware region (`bulwark_firmware_abi::map`).
    pub fn with_firmware(mut self) -> Self {
        use bulwark_firmware_abi::map;
        self.firmware = Some((map::FIRMWARE_BASE, map::FIRMWARE_SIZE));
        self
    }

    /// End of RAM below 4 GiB.
    pub fn low_ram_end(&self) -> u64 {
        self.ram_regions[0].1
    }

    /// The e820 map the guest is given.
    pub fn e820(&self) -> Vec<E820Entry> {
        let mut map = vec![
            E820Entry {
                addr: 0,
                size: EBDA_START,
                kind: E820Kind::Ram,
            },
            E820Entry {
                addr: EBDA_START,
                size: HIMEM_START - EBDA_START,
                kind: E820Kind::Reserved,
            },
            E820Entry {
                addr: HIMEM_START,
                size: self.low_ram_end() - HIMEM_START,
                kind: E820Kind::Ram,
            },
        ];
        if let Some(&(addr, size)) = self.ram_regions.get(1) {
            map.push(E820Entry {
                addr,
                size,
                kind: E820Kind::Ram,
            });
        }
        map
    }

    /// Whether `[addr, addr + len)` lies entirely inside one RAM region.
    pub fn is_ram(&self, addr: u64, len: u64) -> bool {
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        self.ram_regions
            .iter()
            .any(|&(start, size)| addr >= start && end <= start + size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_vm_has_no_high_ram() {
        let l = MemoryLayout::new(128 * MIB, GIB, 46).unwrap();
        assert_eq!(l.ram_regions, vec![(0, 128 * MIB)]);
        assert_eq!(l.mmio64, (4 * GIB, GIB));
        let e = l.e820();
        assert_eq!(e.len(), 3);
        assert_eq!(
            e[2],
            E820Entry {
                addr: HIMEM_START,
                size: 127 * MIB,
                kind: E820Kind::Ram
            }
        );
    }

    #[test]
    fn large_vm_splits_around_the_hole_and_window_sits_above() {
        let l = MemoryLayout::new(8 * GIB + 2 * MIB, 512 * GIB, 46).unwrap();
        assert_eq!(
            l.ram_regions,
            vec![(0, 3 * GIB), (4 * GIB, 5 * GIB + 2 * MIB)]
        );
        assert_eq!(l.mmio64.0, 10 * GIB);
        assert_eq!(l.e820().last().unwrap().size, 5 * GIB + 2 * MIB);
        assert!(l.is_ram(4 * GIB, 4096));
        assert!(!l.is_ram(3 * GIB, 1));
        assert!(!l.is_ram(u64::MAX, 2));
    }

    #[test]
    fn bad_sizes_are_rejected_with_the_field_name() {
        let e = MemoryLayout::new(3 * MIB, 0, 46).unwrap_err();
        assert!(e.to_string().starts_with("machine.mem_mib"));
        assert!(MemoryLayout::new(5 * MIB, 0, 46).is_err());
        let e = MemoryLayout::new(64 * MIB, 1 << 46, 46).unwrap_err();
        assert!(e.to_string().starts_with("machine.mmio64_gib"));
    }
}
