//! Loading what the guest boots into guest memory, and recording every byte written
//! as a measured event. `bulwark-vmm measure` runs exactly this code against scratch
//! memory, which is why its prediction equals the booted value.

use std::io::Cursor;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{BzImage, KernelLoader, KernelLoaderResult};
use serde::Serialize;
use sha2::Digest;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use crate::blob::Blob;
use crate::boot_source::{BootInputs, BootPayload};
use crate::config::{ApStart, LinuxEntry, RawEntry, RawMode, VmConfig};
use crate::layout::*;
use crate::measurement::{sha384_field, text, Event, Field, Measurement};
use crate::plan::{BootPlacements, MachinePlan};

/// CPU mode the vCPUs start in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryMode {
    /// 64-bit long mode, identity-mapped first 4 GiB (Linux 64-bit boot protocol and raw `long64`).
    Long64,
    /// 32-bit flat protected mode, paging off (PVH).
    Protected32,
    /// 16-bit real mode.
    Real,
}

impl EntryMode {
    fn name(self) -> &'static str {
        match self {
            EntryMode::Long64 => "long64",
            EntryMode::Protected32 => "protected32",
            EntryMode::Real => "real",
        }
    }
}

/// The register state the vCPUs start with (everything not listed is zero or the
/// architectural reset value; see `docs/measurement.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EntryState {
    /// CPU mode.
    pub mode: EntryMode,
    /// Instruction pointer (for `real`: the linear address; CS base = rip & !0xffff).
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// RSI (Linux: zero page).
    pub rsi: u64,
    /// RBX (PVH: start info).
    pub rbx: u64,
    /// How vCPUs other than 0 start; with `at_entry` each gets RDI = its index.
    pub aps: ApStart,
}

/// Boot failures, each naming what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel could not be parsed or loaded.
    #[error("boot_source.kernel: {0}")]
    Kernel(String),
    /// The initrd does not fit.
    #[error("boot_source.initrd: {0}")]
    Initrd(String),
    /// Bad command line.
    #[error("boot_source.cmdline: {0}")]
    Cmdline(String),
    /// The raw image does not fit where it was asked to go.
    #[error("boot_source.load_addr: {0}")]
    Raw(String),
    /// Entry point choice is impossible for this kernel.
    #[error("boot_source.entry: {0}")]
    Entry(String),
    /// Writing guest memory failed (a layout bug).
    #[error("writing guest memory: {0}")]
    Memory(String),
    /// The ACPI tables could not be built or do not fit with the payload.
    #[error(transparent)]
    Acpi(#[from] crate::acpi::AcpiError),
}

/// The result of loading: how to start the vCPUs and what was measured.
#[derive(Debug, Clone)]
pub struct BootPlan {
    /// vCPU entry state.
    pub entry: EntryState,
    /// Measured events (without the domain event).
    pub events: Vec<Event>,
    /// The measurement.
    pub measurement: Measurement,
    /// A firmware boot's kernel-hashes table (what the firmware checks; the SNP launch
    /// digest covers it).
    pub firmware_hashes: Option<bulwark_firmware_abi::hashes::HashesTable>,
}

/// Writes boot data into guest memory and records each write as a measured blob.
pub(crate) struct Writer<'a> {
    pub(crate) mem: &'a GuestMemoryMmap,
    pub(crate) layout: &'a MemoryLayout,
    /// The guest's e820 map, from the machine plan.
    pub(crate) e820: &'a [E820Entry],
    /// Where the boot structures go, from the machine plan.
    pub(crate) boot: &'a BootPlacements,
    events: Vec<Event>,
    /// Buffers whose SHA-384 the bundle verification already computed, by address
    /// and length (the payload's kernel and initrd): measuring exactly one of them
    /// reuses the digest instead of hashing the bytes again.
    verified: Vec<(usize, usize, [u8; 48])>,
}

impl Writer<'_> {
    /// Writes the firmware image into the layout's firmware region (which it must fill
    /// exactly) and measures it as `firmware`.
    pub(crate) fn put_firmware(&mut self, image: &[u8]) -> Result<(), BootError> {
        let Some((addr, size)) = self.layout.firmware else {
            return Err(BootError::Memory(
                "the layout has no firmware region".into(),
            ));
        };
        if image.len() as u64 != size {
            return Err(BootError::Memory(format!(
                "firmware of {} bytes for a {size}-byte region",
                image.len()
            )));
        }
        self.mem
            .write_slice(image, GuestAddress(addr))
            .map_err(|e| BootError::Memory(format!("firmware: {e}")))?;
        self.measure_blob("firmware", addr, image);
        Ok(())
    }

    /// Writes `bytes` at `addr` (must be RAM) and measures them as `kind`.
    pub(crate) fn put(
        &mut self,
        kind: &'static str,
        addr: u64,
        bytes: &[u8],
    ) -> Result<(), BootError> {
        if !self.layout.is_ram(addr, bytes.len() as u64) {
            return Err(BootError::Memory(format!(
                "{kind} of {} bytes at {addr:#x} is not inside guest RAM",
                bytes.len()
            )));
        }
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .map_err(|e| BootError::Memory(format!("{kind}: {e}")))?;
        self.measure_blob(kind, addr, bytes);
        Ok(())
    }

    /// Notes that `bytes` (which must not move or be freed until they are measured,
    /// which uses the note up) have the SHA-384 `digest`, checked when they were read.
    pub(crate) fn add_verified(&mut self, bytes: &[u8], digest: [u8; 48]) {
        self.verified
            .push((bytes.as_ptr() as usize, bytes.len(), digest));
    }

    fn measure_blob(&mut self, kind: &'static str, addr: u64, bytes: &[u8]) {
        // An entry serves once: its buffer may be freed after this, and another one
        // allocated at the same address must not inherit the digest.
        let known = self
            .verified
            .iter()
            .position(|(p, l, _)| *p == bytes.as_ptr() as usize && *l == bytes.len())
            .map(|i| self.verified.swap_remove(i).2);
        let digest = match known {
            Some(d) => {
                debug_assert_eq!(
                    sha384_field(bytes),
                    Field::Bytes(d.to_vec()),
                    "a verified digest must be the digest of exactly these bytes"
                );
                d
            }
            None => sha2::Sha384::digest(bytes).into(),
        };
        self.record_blob(kind, addr, bytes.len() as u64, digest);
    }

    /// Records the `blob` event of `len` bytes written at `addr` whose SHA-384 is
    /// `digest` (computed as they were written).
    pub(crate) fn record_blob(
        &mut self,
        kind: &'static str,
        addr: u64,
        len: u64,
        digest: [u8; 48],
    ) {
        self.events.push(Event::new(
            "blob",
            vec![
                text(kind),
                Field::U64(addr),
                Field::U64(len),
                Field::Bytes(digest.to_vec()),
            ],
            format!("{kind} at {addr:#x}, {len} bytes"),
        ));
    }
}

/// The payload buffers whose SHA-384 the bundle verification computed:
/// `(address, length, digest)` (a raw image read from a bundle; signed Linux blobs
/// carry their digests).
fn verified_buffers(inputs: &BootInputs) -> Vec<(usize, usize, [u8; 48])> {
    match (&inputs.payload, inputs.verified_raw_sha384) {
        (BootPayload::Raw { image, .. }, Some(d)) => {
            vec![(image.as_ptr() as usize, image.len(), d)]
        }
        _ => Vec::new(),
    }
}

/// GDT for the boot: null, null, 64-bit code (0x10), data (0x18), TSS (0x20); the
/// 32-bit code descriptor replaces the 64-bit one for PVH. The vCPU set-up loads the
/// segment registers from the same values.
pub fn gdt_entries(mode: EntryMode) -> [u64; 5] {
    let code = match mode {
        EntryMode::Protected32 => 0x00cf_9b00_0000_ffff,
        _ => 0x00af_9b00_0000_ffff,
    };
    [0, 0, code, 0x00cf_9300_0000_ffff, 0x0000_8b00_0000_0067]
}

/// Identity map of 0..4 GiB: PML4[0] -> PDPT, PDPT[0..4] -> four PDs of 2 MiB pages.
fn page_tables() -> Vec<u8> {
    let mut t = vec![0u64; 6 * 512];
    t[0] = PDPT_ADDR | 0x3;
    for i in 0..4u64 {
        t[512 + i as usize] = (PD_ADDR + i * 0x1000) | 0x3;
    }
    for i in 0..2048u64 {
        t[1024 + i as usize] = (i << 21) | 0x83;
    }
    t.iter().flat_map(|e| e.to_le_bytes()).collect()
}

fn write_long_mode_structures(w: &mut Writer, mode: EntryMode) -> Result<(), BootError> {
    let g: Vec<u8> = gdt_entries(mode)
        .iter()
        .flat_map(|e| e.to_le_bytes())
        .collect();
    w.put("boot-gdt", w.boot.gdt, &g)?;
    if mode == EntryMode::Long64 {
        w.put("boot-page-tables", w.boot.page_tables, &page_tables())?;
    }
    Ok(())
}

fn machine_events(
    cfg: &VmConfig,
    machine: &MachinePlan,
    signed: &crate::boot_source::Origin,
) -> Vec<Event> {
    let (layout, e820, devices) = (&machine.layout, &machine.e820, &machine.devices);
    let mut map = vec![Field::U32(e820.len() as u32)];
    for e in e820 {
        map.extend([
            Field::U64(e.addr),
            Field::U64(e.size),
            Field::U32(e.kind.code()),
        ]);
    }
    let mut dev = vec![Field::U32(devices.len() as u32)];
    dev.extend(devices.iter().map(|d| text(d)));
    vec![
        Event::new(
            "machine",
            vec![
                Field::U32(u32::from(cfg.machine.vcpus)),
                Field::U64(layout.mem_size),
                Field::U64(layout.mmio32.0),
                Field::U64(layout.mmio32.1),
                Field::U64(layout.mmio64.0),
                Field::U64(layout.mmio64.1),
            ],
            format!(
                "{} vCPUs, {} MiB RAM, 64-bit MMIO window {} GiB at {:#x}",
                cfg.machine.vcpus,
                layout.mem_size / MIB,
                layout.mmio64.1 / GIB,
                layout.mmio64.0
            ),
        ),
        Event::new("memory-map", map, format!("{} e820 entries", e820.len())),
        Event::new(
            "cpuid-policy",
            vec![text(cfg.machine.cpuid_policy.name())],
            cfg.machine.cpuid_policy.name(),
        ),
        Event::new("devices", dev, devices.join(", ")),
        signed.event(),
    ]
}

/// Loads `inputs` into `mem` for `cfg` at the placements of `machine` (its plan,
/// [`MachinePlan::new`]) and returns the entry state and measurement.
pub fn prepare_with(
    cfg: &VmConfig,
    machine: &MachinePlan,
    inputs: &BootInputs,
    mem: &GuestMemoryMmap,
) -> Result<BootPlan, BootError> {
    let layout = &machine.layout;
    let mut w = Writer {
        mem,
        layout,
        e820: &machine.e820,
        boot: &machine.boot,
        events: machine_events(cfg, machine, &inputs.origin),
        verified: verified_buffers(inputs),
    };
    // ACPI tables first (the first blob), so a payload that would overlap them is
    // refused by the loaders below rather than silently overwriting them.
    let rsdp = match &machine.acpi {
        Some(p) => {
            let tables = p.build(layout)?;
            w.put("acpi-tables", machine.boot.acpi_tables, &tables.bytes)?;
            w.put(
                "reset-vector",
                machine.boot.reset_vector,
                &crate::acpi::RESET_VECTOR_CODE,
            )?;
            Some(tables.rsdp_addr())
        }
        None => None,
    };
    let mut firmware_hashes = None;
    let entry = match &inputs.payload {
        BootPayload::Raw {
            image,
            load_addr,
            entry,
        } => load_raw(&mut w, image, *load_addr, entry, rsdp.is_some())?,
        BootPayload::Linux {
            kernel,
            initrd,
            cmdline,
            entry,
        } => {
            // Without ACPI the virtio-mmio devices are announced on the command line
            // (measured with it, as written into guest memory); with ACPI the DSDT
            // describes them (`LNRO0005`).
            let cmdline = machine.linux_cmdline(cmdline);
            match &inputs.firmware {
                Some(firmware) => {
                    // The firmware boot stages whole files: read (and check) them whole.
                    let kernel_bytes = read_blob(&mut w, kernel, BootError::Kernel)?;
                    let initrd_bytes = initrd
                        .as_ref()
                        .map(|i| read_blob(&mut w, i, BootError::Initrd))
                        .transpose()?;
                    let (entry, table) = crate::firmware_boot::stage(
                        &mut w,
                        firmware,
                        &kernel_bytes,
                        initrd_bytes.as_deref(),
                        &cmdline,
                        rsdp,
                    )?;
                    firmware_hashes = Some(table);
                    entry
                }
                None => load_linux(&mut w, kernel, initrd.as_ref(), &cmdline, *entry, rsdp)?,
            }
        }
    };
    w.events.push(Event::new(
        "entry",
        vec![
            text(entry.mode.name()),
            Field::U64(entry.rip),
            Field::U64(entry.rsp),
            Field::U64(entry.rsi),
            Field::U64(entry.rbx),
            text(match entry.aps {
                ApStart::WaitForSipi => "wait_for_sipi",
                ApStart::AtEntry => "at_entry",
            }),
        ],
        format!(
            "{} rip={:#x} rsp={:#x} rsi={:#x} rbx={:#x}",
            entry.mode.name(),
            entry.rip,
            entry.rsp,
            entry.rsi,
            entry.rbx
        ),
    ));
    let measurement = Measurement::compute(&w.events);
    Ok(BootPlan {
        entry,
        events: w.events,
        measurement,
        firmware_hashes,
    })
}

/// Whether `[addr, addr + len)` overlaps the ACPI table area.
fn overlaps_acpi(addr: u64, len: u64) -> bool {
    len > 0
        && addr < ACPI_TABLES_START + ACPI_TABLES_SIZE
        && ACPI_TABLES_START < addr.saturating_add(len)
}

fn load_raw(
    w: &mut Writer,
    image: &[u8],
    load_addr: u64,
    entry: &RawEntry,
    acpi: bool,
) -> Result<EntryState, BootError> {
    if !w.layout.is_ram(load_addr, image.len() as u64) {
        return Err(BootError::Raw(format!(
            "image of {} bytes at {load_addr:#x} does not fit in guest RAM",
            image.len()
        )));
    }
    if acpi && overlaps_acpi(load_addr, image.len() as u64) {
        return Err(BootError::Raw(format!(
            "image of {} bytes at {load_addr:#x} overlaps the ACPI tables at {ACPI_TABLES_START:#x}..{HIMEM_START:#x} (load it elsewhere or set machine.acpi to false)",
            image.len()
        )));
    }
    let mode = match entry.mode {
        RawMode::Long64 => EntryMode::Long64,
        RawMode::Real => EntryMode::Real,
    };
    if mode == EntryMode::Long64 && load_addr < BOOT_AREA_END {
        return Err(BootError::Raw(format!(
            "a long64 image must load at or above {BOOT_AREA_END:#x} (boot structures live below)"
        )));
    }
    if mode == EntryMode::Real && entry.rip >= 1 << 32 {
        return Err(BootError::Entry("real-mode rip must be below 4 GiB".into()));
    }
    if mode == EntryMode::Long64 {
        write_long_mode_structures(w, mode)?;
    }
    w.put("raw-image", load_addr, image)?;
    Ok(EntryState {
        mode,
        rip: entry.rip,
        rsp: entry.rsp,
        rsi: entry.rsi,
        rbx: 0,
        aps: entry.aps,
    })
}

/// The little-endian `u16` (widened), `u32` and `u64` at byte `at` of `b`; `None`
/// past its end (offsets checked, never a panic). ELF headers and notes are read
/// through these.
pub(crate) fn le_u16(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    )))
}

/// See [`le_u16`].
pub(crate) fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// See [`le_u16`].
pub(crate) fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Refuses a vmlinux whose PT_LOAD segments would not land wholly in guest RAM at or
/// above `BOOT_AREA_END` (the loader places each at its `p_paddr`; the boot structures
/// live below), like the raw path. Parses the ELF64 program headers with checked
/// arithmetic; anything malformed is an error, never a panic.
pub(crate) fn check_elf_segments(
    kernel: &[u8],
    layout: &MemoryLayout,
    acpi: bool,
) -> Result<(), BootError> {
    const PT_LOAD: u32 = 1;
    const PHDR_MIN: usize = 56;
    let bad = |what: String| BootError::Kernel(format!("vmlinux ELF: {what}"));
    let u16_at = |off: usize| le_u16(kernel, off);
    let u32_at = |off: usize| le_u32(kernel, off);
    let u64_at = |off: usize| le_u64(kernel, off);
    if kernel.len() < 64 || kernel[4] != 2 || kernel[5] != 1 {
        return Err(bad("not a little-endian ELF64 file".into()));
    }
    let truncated = || bad("truncated ELF header".into());
    let phoff = u64_at(32).ok_or_else(truncated)?;
    let phentsize = u16_at(54).ok_or_else(truncated)?;
    let phnum = u16_at(56).ok_or_else(truncated)?;
    if phentsize < PHDR_MIN as u64 {
        return Err(bad(format!("program header size {phentsize} is too small")));
    }
    for i in 0..phnum {
        let at = i
            .checked_mul(phentsize)
            .and_then(|o| o.checked_add(phoff))
            .and_then(|o| usize::try_from(o).ok())
            .filter(|&o| o.checked_add(PHDR_MIN).is_some_and(|e| e <= kernel.len()))
            .ok_or_else(|| bad(format!("program header {i} lies outside the file")))?;
        let field = |off: usize| u64_at(at + off).ok_or_else(truncated);
        let p_type = u32_at(at).ok_or_else(truncated)?;
        if p_type != PT_LOAD {
            continue;
        }
        let paddr = field(24)?;
        let filesz = field(32)?;
        let memsz = field(40)?.max(filesz);
        if paddr < BOOT_AREA_END {
            return Err(bad(format!(
                "segment {i} at {paddr:#x} would overwrite the boot structures (it must load at or above {BOOT_AREA_END:#x})"
            )));
        }
        if !layout.is_ram(paddr, memsz) {
            return Err(bad(format!(
                "segment {i} of {memsz} bytes at {paddr:#x} does not fit in guest RAM"
            )));
        }
        if acpi && overlaps_acpi(paddr, memsz) {
            return Err(bad(format!(
                "segment {i} at {paddr:#x} would overwrite the ACPI tables at {ACPI_TABLES_START:#x}"
            )));
        }
    }
    Ok(())
}

/// A blob's bytes in one buffer (a signed one read and checked now), noted as verified
/// when its digest is known so that measuring it does not hash it again.
fn read_blob<'b>(
    w: &mut Writer,
    blob: &'b Blob,
    err: fn(String) -> BootError,
) -> Result<std::borrow::Cow<'b, [u8]>, BootError> {
    let bytes = blob.read().map_err(|e| err(e.to_string()))?;
    if let Some(d) = blob.known_sha384() {
        w.add_verified(&bytes, d);
    }
    Ok(bytes)
}

fn load_linux(
    w: &mut Writer,
    kernel: &Blob,
    initrd: Option<&Blob>,
    cmdline: &str,
    want: LinuxEntry,
    rsdp: Option<u64>,
) -> Result<EntryState, BootError> {
    check_cmdline(cmdline)?;
    let (loaded, is_elf) = match kernel {
        Blob::Bytes(bytes) => load_kernel(w, bytes, rsdp.is_some())?,
        Blob::Signed(c) => crate::stream_load::load_kernel(w, c, rsdp.is_some())?,
    };
    let pvh = pvh_entry(want, &loaded, is_elf)?;
    let cl = put_cmdline(w, cmdline)?;
    let initrd_at = put_initrd(w, initrd, loaded.kernel_end)?;
    match pvh {
        Some(entry) => put_pvh_start_info(w, entry, rsdp, initrd_at),
        None => put_zero_page(w, &loaded, is_elf, cl.len(), rsdp, initrd_at),
    }
}

/// A Linux command line must fit its area with its NUL and hold no NUL itself.
fn check_cmdline(cmdline: &str) -> Result<(), BootError> {
    if cmdline.len() as u64 >= CMDLINE_MAX_SIZE || cmdline.as_bytes().contains(&0) {
        return Err(BootError::Cmdline(format!(
            "must be shorter than {CMDLINE_MAX_SIZE} bytes and hold no NUL"
        )));
    }
    Ok(())
}

/// Loads a vmlinux ELF (its segments checked first) or a bzImage above `HIMEM_START`
/// and measures the file where it was loaded; returns the loader's result and
/// whether it was an ELF.
pub(crate) fn load_kernel(
    w: &mut Writer,
    kernel: &[u8],
    acpi: bool,
) -> Result<(KernelLoaderResult, bool), BootError> {
    let is_elf = kernel.starts_with(b"\x7fELF");
    let himem = Some(GuestAddress(HIMEM_START));
    let loaded: KernelLoaderResult = if is_elf {
        check_elf_segments(kernel, w.layout, acpi)?;
        Elf::load(w.mem, None, &mut Cursor::new(kernel), himem)
            .map_err(|e| BootError::Kernel(format!("vmlinux ELF: {e}")))?
    } else {
        BzImage::load(w.mem, None, &mut Cursor::new(kernel), himem)
            .map_err(|e| BootError::Kernel(format!("not an x86-64 ELF; as bzImage: {e}")))?
    };
    w.measure_blob(
        if is_elf {
            "kernel-elf"
        } else {
            "kernel-bzimage"
        },
        loaded.kernel_load.0,
        kernel,
    );
    Ok((loaded, is_elf))
}

/// The PVH entry point to use, if any: `auto` takes a vmlinux's PVH note when there
/// is one, `pvh` requires it.
fn pvh_entry(
    want: LinuxEntry,
    loaded: &KernelLoaderResult,
    is_elf: bool,
) -> Result<Option<u64>, BootError> {
    Ok(match (want, loaded.pvh_boot_cap) {
        (LinuxEntry::Linux64, _) => None,
        (LinuxEntry::Auto | LinuxEntry::Pvh, PvhBootCapability::PvhEntryPresent(a)) if is_elf => {
            Some(a.0)
        }
        (LinuxEntry::Pvh, _) => {
            return Err(BootError::Entry(
                "pvh requested but the kernel has no PVH note".into(),
            ))
        }
        (LinuxEntry::Auto, _) => None,
    })
}

/// Writes the command line, NUL-terminated, at its placement; returns its bytes.
fn put_cmdline(w: &mut Writer, cmdline: &str) -> Result<Vec<u8>, BootError> {
    let mut cl = cmdline.as_bytes().to_vec();
    cl.push(0);
    w.put("cmdline", w.boot.cmdline, &cl)?;
    Ok(cl)
}

/// Writes the initrd at the top of low RAM (below 896 MiB for old kernels'
/// `initrd_addr_max`), above the kernel; returns `(address, length)`.
fn put_initrd(
    w: &mut Writer,
    initrd: Option<&Blob>,
    kernel_end: u64,
) -> Result<Option<(u64, u64)>, BootError> {
    let Some(data) = initrd else {
        return Ok(None);
    };
    let limit = w.boot.linux_initrd_limit;
    let len = data.len();
    let at = limit
        .checked_sub(len)
        .map(|a| a & !0xfff)
        .filter(|&a| a >= kernel_end && a >= BOOT_AREA_END)
        .ok_or_else(|| {
            BootError::Initrd(format!(
                "{len} bytes do not fit between the kernel and {limit:#x}"
            ))
        })?;
    match data {
        Blob::Bytes(bytes) => w.put("initrd", at, bytes)?,
        Blob::Signed(c) => {
            let digest = crate::stream_load::put_initrd(w, c, at, len)?;
            w.record_blob("initrd", at, len, digest);
        }
    }
    Ok(Some((at, len)))
}

/// The PVH boot: the 32-bit GDT, then the start info with the memory map and the
/// initrd module after it; the vCPUs enter `entry` in protected mode.
fn put_pvh_start_info(
    w: &mut Writer,
    entry: u64,
    rsdp: Option<u64>,
    initrd_at: Option<(u64, u64)>,
) -> Result<EntryState, BootError> {
    write_long_mode_structures(w, EntryMode::Protected32)?;
    let (e820, place) = (w.e820, *w.boot);
    let mut start = hvm_start_info {
        magic: 0x336e_c578,
        version: 1,
        cmdline_paddr: place.cmdline,
        memmap_paddr: place.pvh_memmap,
        memmap_entries: e820.len() as u32,
        rsdp_paddr: rsdp.unwrap_or(0),
        ..Default::default()
    };
    let mut blob = Vec::new();
    let mut map = Vec::new();
    for e in e820 {
        let m = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind.code(),
            reserved: 0,
        };
        map.extend_from_slice(m.as_slice());
    }
    let mut modules = Vec::new();
    if let Some((at, len)) = initrd_at {
        let modlist_at = place.pvh_memmap + map.len() as u64;
        start.nr_modules = 1;
        start.modlist_paddr = modlist_at;
        let m = hvm_modlist_entry {
            paddr: at,
            size: len,
            ..Default::default()
        };
        modules.extend_from_slice(m.as_slice());
    }
    blob.extend_from_slice(start.as_slice());
    blob.resize((place.pvh_memmap - place.pvh_start_info) as usize, 0);
    blob.extend_from_slice(&map);
    blob.extend_from_slice(&modules);
    if place.pvh_start_info + blob.len() as u64 > place.zero_page {
        return Err(BootError::Memory(
            "PVH start info overflows its area".into(),
        ));
    }
    w.put("pvh-start-info", place.pvh_start_info, &blob)?;
    Ok(EntryState {
        mode: EntryMode::Protected32,
        rip: entry,
        rsp: 0,
        rsi: 0,
        rbx: place.pvh_start_info,
        aps: ApStart::WaitForSipi,
    })
}

/// The Linux 64-bit boot protocol: GDT and page tables, then the zero page (the
/// kernel's setup header with the command line, initrd, RSDP and e820 map filled in);
/// the vCPUs enter the 64-bit entry in long mode with RSI at the zero page.
fn put_zero_page(
    w: &mut Writer,
    loaded: &KernelLoaderResult,
    is_elf: bool,
    cmdline_size: usize,
    rsdp: Option<u64>,
    initrd_at: Option<(u64, u64)>,
) -> Result<EntryState, BootError> {
    write_long_mode_structures(w, EntryMode::Long64)?;
    let (e820, place) = (w.e820, *w.boot);
    let mut params = boot_params {
        hdr: loaded.setup_header.unwrap_or(setup_header {
            boot_flag: 0xaa55,
            header: 0x5372_6448,
            kernel_alignment: 0x0100_0000,
            ..Default::default()
        }),
        ..Default::default()
    };
    params.hdr.type_of_loader = 0xff;
    params.acpi_rsdp_addr = rsdp.unwrap_or(0);
    params.hdr.cmd_line_ptr = place.cmdline as u32;
    params.hdr.cmdline_size = cmdline_size as u32;
    if let Some((at, len)) = initrd_at {
        params.hdr.ramdisk_image = at as u32;
        params.hdr.ramdisk_size = len as u32;
    }
    if e820.len() > params.e820_table.len() {
        return Err(BootError::Memory("e820 table too long".into()));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind.code(),
        };
    }
    params.e820_entries = e820.len() as u8;
    w.put("linux-zero-page", place.zero_page, params.as_slice())?;
    let entry = if is_elf {
        loaded.kernel_load.0
    } else {
        // bzImage: the 64-bit entry is 0x200 past the protected-mode code.
        loaded.kernel_load.0 + 0x200
    };
    Ok(EntryState {
        mode: EntryMode::Long64,
        rip: entry,
        rsp: place.stack_pointer,
        rsi: place.zero_page,
        rbx: 0,
        aps: ApStart::WaitForSipi,
    })
}
