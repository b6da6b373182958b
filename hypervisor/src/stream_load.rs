//! Loading a signed kernel and initrd from the bundle file straight into guest memory,
//! in one pass ([`crate::blob::SignedComponent::stream`]): each chunk is read, hashed
//! against the signed digest and written where the loader would put it, with no
//! buffer the size of the file. The result (guest memory, the loader's result, the
//! measured events) is byte for byte what reading the file whole and handing it to
//! `linux-loader` gives (tests compare both); a kernel whose layout this module does
//! not stream (program headers beyond the first chunk, overlapping segments, several
//! note segments, anything malformed) is read whole, still in one hashing pass, and
//! loaded the in-memory way, which reports what is wrong with it.
//!
//! Until the stream ends with the digest checked, what was written is unverified: an
//! error leaves a guest that never runs.

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::KernelLoaderResult;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use crate::blob::{BlobError, SignedComponent};
use crate::boot::{check_elf_segments, le_u16, le_u32, le_u64, BootError, Writer};
use crate::layout::{MemoryLayout, HIMEM_START};

/// Largest note segment streamed (the PVH note is a few hundred bytes).
const NOTE_MAX: u64 = 64 << 10;
/// Bytes past a note segment's end that a note header straddling it may cover (the
/// 12-byte header, the 4-byte name and the 4-byte entry, as `linux-loader` reads them).
const NOTE_SLACK: u64 = 32;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// `HdrS` at 0x202: a bzImage's boot protocol header.
const BZIMAGE_MAGIC: u32 = 0x5372_6448;
/// Where a bzImage's setup header starts.
const SETUP_HEADER_AT: usize = 0x1f1;

/// How a kernel's chunks are placed, decided from its first chunk.
enum Placement {
    /// Not decided yet (before the first chunk).
    Undecided,
    /// A vmlinux ELF: each chunk's parts that fall in a loaded segment are written at
    /// that segment's physical address.
    Elf(ElfPlan),
    /// A bzImage: everything after the setup sectors goes at `load`.
    BzImage {
        load: u64,
        setup_size: u64,
        header: setup_header,
    },
    /// Read whole, then loaded the in-memory way.
    Whole(Vec<u8>),
}

struct ElfPlan {
    entry: u64,
    /// (file offset, file size, physical address) of each PT_LOAD with bytes.
    segments: Vec<(u64, u64, u64)>,
    kernel_end: u64,
    /// The note segment: its file offset and size, and the bytes captured from it
    /// (with [`NOTE_SLACK`]).
    note: Option<(u64, u64, Vec<u8>)>,
}

/// Loads a signed kernel (vmlinux ELF or bzImage) at its load address from the bundle
/// file, hashing it as it goes, and measures it as the in-memory loader does; returns
/// the loader's result and whether it was an ELF.
pub(crate) fn load_kernel(
    w: &mut Writer,
    kernel: &SignedComponent,
    acpi: bool,
) -> Result<(KernelLoaderResult, bool), BootError> {
    let (mem, layout) = (w.mem, w.layout);
    let len = kernel.len;
    let mut placement = Placement::Undecided;
    let digest = kernel
        .stream(|at, chunk| {
            if at == 0 {
                placement = place(chunk, len, layout, acpi);
                if let Placement::Whole(v) = &mut placement {
                    v.reserve_exact(usize::try_from(len).unwrap_or(0));
                }
            }
            match &mut placement {
                Placement::Undecided => Err("a kernel chunk before the first".into()),
                Placement::Whole(v) => {
                    v.extend_from_slice(chunk);
                    Ok(())
                }
                Placement::Elf(plan) => {
                    for &(offset, size, paddr) in &plan.segments {
                        write_part(mem, chunk, at, offset, size, paddr)?;
                    }
                    if let Some((offset, _, bytes)) = &mut plan.note {
                        copy_part(chunk, at, *offset, bytes);
                    }
                    Ok(())
                }
                Placement::BzImage {
                    load, setup_size, ..
                } => write_part(mem, chunk, at, *setup_size, len - *setup_size, *load),
            }
        })
        .map_err(kernel_error)?;
    let (loaded, is_elf) = match placement {
        Placement::Undecided => {
            return Err(BootError::Kernel("the kernel component is empty".into()))
        }
        Placement::Whole(bytes) => {
            // Verified above: the measurement takes the digest, not a second hash.
            w.add_verified(&bytes, digest);
            return crate::boot::load_kernel(w, &bytes, acpi);
        }
        Placement::Elf(plan) => {
            let pvh_boot_cap = match &plan.note {
                None => PvhBootCapability::default(),
                Some((_, size, bytes)) => pvh_note(bytes, *size)?,
            };
            let loaded = KernelLoaderResult {
                kernel_load: GuestAddress(plan.entry),
                kernel_end: plan.kernel_end,
                setup_header: None,
                pvh_boot_cap,
            };
            (loaded, true)
        }
        Placement::BzImage {
            load,
            setup_size,
            header,
        } => {
            let loaded = KernelLoaderResult {
                kernel_load: GuestAddress(load),
                kernel_end: load + (len - setup_size),
                setup_header: Some(header),
                pvh_boot_cap: PvhBootCapability::default(),
            };
            (loaded, false)
        }
    };
    w.record_blob(
        if is_elf {
            "kernel-elf"
        } else {
            "kernel-bzimage"
        },
        loaded.kernel_load.0,
        len,
        digest,
    );
    Ok((loaded, is_elf))
}

/// Writes a signed initrd (and what the VMM appended to it) at `at`, hashing it as it
/// goes; returns the SHA-384 of everything written.
pub(crate) fn put_initrd(
    w: &mut Writer,
    initrd: &SignedComponent,
    at: u64,
    total: u64,
) -> Result<[u8; 48], BootError> {
    if !w.layout.is_ram(at, total) {
        return Err(BootError::Memory(format!(
            "initrd of {total} bytes at {at:#x} is not inside guest RAM"
        )));
    }
    let mem = w.mem;
    initrd
        .stream(|offset, chunk| write_part(mem, chunk, offset, 0, total, at))
        .map_err(|e| match e {
            BlobError::Sink(m) => BootError::Memory(format!("initrd: {m}")),
            other => BootError::Initrd(other.to_string()),
        })
}

fn kernel_error(e: BlobError) -> BootError {
    match e {
        BlobError::Sink(m) => BootError::Memory(format!("kernel: {m}")),
        other => BootError::Kernel(other.to_string()),
    }
}

/// Writes the part of `chunk` (at file offset `at`) that falls in the file range
/// `[offset, offset + size)` to guest memory at `paddr` plus its offset in the range.
fn write_part(
    mem: &GuestMemoryMmap,
    chunk: &[u8],
    at: u64,
    offset: u64,
    size: u64,
    paddr: u64,
) -> Result<(), String> {
    let Some((from, to)) = overlap(chunk.len(), at, offset, size) else {
        return Ok(());
    };
    let dst = paddr + (at + from as u64 - offset);
    mem.write_slice(&chunk[from..to], GuestAddress(dst))
        .map_err(|e| format!("{} bytes at {dst:#x}: {e}", to - from))
}

/// Copies the part of `chunk` (at file offset `at`) that falls in
/// `[offset, offset + out.len())` into `out`.
fn copy_part(chunk: &[u8], at: u64, offset: u64, out: &mut [u8]) {
    if let Some((from, to)) = overlap(chunk.len(), at, offset, out.len() as u64) {
        let o = (at + from as u64 - offset) as usize;
        out[o..o + (to - from)].copy_from_slice(&chunk[from..to]);
    }
}

/// The index range of a chunk of `n` bytes at file offset `at` that lies in the file
/// range `[offset, offset + size)`, if any.
fn overlap(n: usize, at: u64, offset: u64, size: u64) -> Option<(usize, usize)> {
    let start = at.max(offset);
    let end = (at + n as u64).min(offset.saturating_add(size));
    (start < end).then(|| ((start - at) as usize, (end - at) as usize))
}

/// Decides from the first chunk how the kernel of `len` bytes is placed.
fn place(first: &[u8], len: u64, layout: &MemoryLayout, acpi: bool) -> Placement {
    let planned = if first.starts_with(b"\x7fELF") {
        elf_plan(first, len, layout, acpi).map(Placement::Elf)
    } else {
        bzimage_plan(first, len, layout)
    };
    planned.unwrap_or_else(|| Placement::Whole(Vec::new()))
}

/// The segments of a vmlinux whose header and program headers lie in `first`, with
/// the checks of the in-memory path (`check_elf_segments` and `linux-loader`'s own);
/// `None` for anything this module leaves to the in-memory path.
fn elf_plan(first: &[u8], len: u64, layout: &MemoryLayout, acpi: bool) -> Option<ElfPlan> {
    check_elf_segments(first, layout, acpi).ok()?;
    let entry = le_u64(first, 24)?;
    let phoff = le_u64(first, 32)?;
    let phentsize = le_u16(first, 54)?;
    let phnum = le_u16(first, 56)?;
    if phentsize != 56 || phoff < 64 || entry < HIMEM_START {
        return None;
    }
    let mut segments: Vec<(u64, u64, u64)> = Vec::new();
    let mut notes = Vec::new();
    let mut kernel_end = 0u64;
    for i in 0..phnum {
        let at = usize::try_from(phoff.checked_add(i * phentsize)?).ok()?;
        let p_type = le_u32(first, at)?;
        let offset = le_u64(first, at + 8)?;
        let paddr = le_u64(first, at + 24)?;
        let filesz = le_u64(first, at + 32)?;
        let memsz = le_u64(first, at + 40)?;
        if p_type == PT_LOAD && filesz > 0 {
            if offset.checked_add(filesz)? > len {
                return None;
            }
            let end = paddr.checked_add(filesz)?;
            if segments.iter().any(|&(_, s, p)| paddr < p + s && p < end) {
                return None;
            }
            segments.push((offset, filesz, paddr));
            kernel_end = kernel_end.max(paddr.checked_add(memsz)?);
        } else if p_type == PT_NOTE {
            notes.push((offset, filesz));
        }
    }
    let note = match notes[..] {
        [] => None,
        [(offset, size)] if size <= NOTE_MAX && offset < len => {
            let captured = (size + NOTE_SLACK).min(len - offset);
            Some((offset, size, vec![0u8; captured as usize]))
        }
        _ => return None,
    };
    Some(ElfPlan {
        entry,
        segments,
        kernel_end,
        note,
    })
}

/// A bzImage's setup header and where its protected-mode part goes, as `linux-loader`
/// decides them; `None` for anything it would refuse (left to the in-memory path).
fn bzimage_plan(first: &[u8], len: u64, layout: &MemoryLayout) -> Option<Placement> {
    let mut header = setup_header::default();
    let size = size_of::<setup_header>();
    header
        .as_mut_slice()
        .copy_from_slice(first.get(SETUP_HEADER_AT..SETUP_HEADER_AT + size)?);
    if header.header != BZIMAGE_MAGIC || header.version < 0x0200 || header.loadflags & 1 == 0 {
        return None;
    }
    let sects = if header.setup_sects == 0 {
        4
    } else {
        u64::from(header.setup_sects)
    };
    let setup_size = (sects + 1) * 512;
    let load = u64::from(header.code32_start);
    let kernel_size = len.checked_sub(setup_size)?;
    if load < HIMEM_START || !layout.is_ram(load, kernel_size) {
        return None;
    }
    Some(Placement::BzImage {
        load,
        setup_size,
        header,
    })
}

/// The PVH entry in a note segment of `size` bytes (`bytes` holds it and the slack
/// after it), read as `linux-loader` reads it.
fn pvh_note(bytes: &[u8], size: u64) -> Result<PvhBootCapability, BootError> {
    let bad = |what: &str| BootError::Kernel(format!("vmlinux ELF: the note segment {what}"));
    let size = usize::try_from(size).map_err(|_| bad("is too large"))?;
    let align4 = |n: u32| (u64::from(n) + 3) & !3;
    let mut read = 0usize;
    let mut found = None;
    while read < size {
        let word = |k: usize| le_u32(bytes, read + 4 * k).ok_or_else(|| bad("is truncated"));
        let (namesz, descsz, n_type) = (word(0)?, word(1)?, word(2)?);
        if n_type == XEN_ELFNOTE_PHYS32_ENTRY && namesz == 4 {
            let name = bytes
                .get(read + 12..read + 16)
                .ok_or_else(|| bad("is truncated"))?;
            if name == b"Xen\0" {
                found = Some((read, descsz));
                break;
            }
        }
        if align4(namesz) > u64::from(u32::MAX) || align4(descsz) > u64::from(u32::MAX) {
            return Err(bad("has a note whose name or description overflows"));
        }
        read = read
            .checked_add(12)
            .and_then(|r| r.checked_add(usize::try_from(align4(namesz)).ok()?))
            .and_then(|r| r.checked_add(usize::try_from(align4(descsz)).ok()?))
            .ok_or_else(|| bad("overflows"))?;
    }
    let Some((at, descsz)) = found else {
        return Ok(PvhBootCapability::PvhEntryNotPresent);
    };
    if descsz < 4 {
        return Err(bad("has a PVH entry note shorter than 4 bytes"));
    }
    let entry = le_u32(bytes, at + 16).ok_or_else(|| bad("is truncated"))?;
    Ok(PvhBootCapability::PvhEntryPresent(GuestAddress(
        entry.into(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], n_type: u32, desc: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        out.extend_from_slice(&n_type.to_le_bytes());
        out.extend_from_slice(name);
        out.resize(out.len().next_multiple_of(4), 0);
        out.extend_from_slice(desc);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    #[test]
    fn the_pvh_note_is_found_after_other_notes() {
        let mut seg = note(b"GNU\0", 3, &[1, 2, 3, 4, 5, 6, 7, 8]);
        seg.extend(note(b"Xen\0", 18, &0x0100_0abcu32.to_le_bytes()));
        let size = seg.len() as u64;
        seg.resize(seg.len() + NOTE_SLACK as usize, 0);
        assert_eq!(
            pvh_note(&seg, size).unwrap(),
            PvhBootCapability::PvhEntryPresent(GuestAddress(0x0100_0abc))
        );
        let other = note(b"Xen\0", 17, &[0; 4]);
        assert_eq!(
            pvh_note(&other, other.len() as u64).unwrap(),
            PvhBootCapability::PvhEntryNotPresent
        );
    }

    #[test]
    fn a_bad_note_segment_is_an_error_not_a_panic() {
        let short = note(b"Xen\0", 18, &[1, 2]);
        assert!(pvh_note(&short, short.len() as u64).is_err());
        let mut huge = note(b"ABC\0", 1, &[]);
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(pvh_note(&huge, 64).is_err());
        assert!(pvh_note(&[1, 2, 3], 3).is_err());
    }

    fn layout() -> MemoryLayout {
        MemoryLayout::new(64 << 20, 1 << 30, 52).unwrap()
    }

    /// An ELF64 header with `phnum` program headers at `phoff`, entry 2 MiB.
    fn elf_header(phoff: u64, phnum: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        h[24..32].copy_from_slice(&0x20_0000u64.to_le_bytes());
        h[32..40].copy_from_slice(&phoff.to_le_bytes());
        h[54..56].copy_from_slice(&56u16.to_le_bytes());
        h[56..58].copy_from_slice(&phnum.to_le_bytes());
        h
    }

    fn phdr(p_type: u32, offset: u64, paddr: u64, size: u64) -> Vec<u8> {
        let mut p = vec![0u8; 56];
        p[..4].copy_from_slice(&p_type.to_le_bytes());
        p[8..16].copy_from_slice(&offset.to_le_bytes());
        p[24..32].copy_from_slice(&paddr.to_le_bytes());
        p[32..40].copy_from_slice(&size.to_le_bytes());
        p[40..48].copy_from_slice(&size.to_le_bytes());
        p
    }

    #[test]
    fn an_ordinary_vmlinux_layout_streams() {
        let mut h = elf_header(64, 2);
        h.extend(phdr(PT_LOAD, 0x1000, 0x20_0000, 0x30_0000));
        h.extend(phdr(PT_NOTE, 0x2000, 0x20_1000, 0x40));
        let Placement::Elf(plan) = place(&h, 0x40_0000, &layout(), true) else {
            panic!("not streamed");
        };
        assert_eq!(plan.segments, [(0x1000, 0x30_0000, 0x20_0000)]);
        assert_eq!(plan.kernel_end, 0x50_0000);
        assert_eq!(
            plan.note.as_ref().map(|n| (n.0, n.1, n.2.len())),
            Some((0x2000, 0x40, 0x60))
        );
    }

    /// What the streaming path leaves to the in-memory loader (which then names what
    /// is wrong, or loads it): each of these is read whole.
    #[test]
    fn unusual_or_malformed_kernels_are_read_whole() {
        let whole = |first: &[u8], len: u64| {
            matches!(place(first, len, &layout(), true), Placement::Whole(_))
        };
        // Program headers beyond the first chunk.
        assert!(whole(&elf_header(2 << 20, 1), 3 << 20));
        // Overlapping segments in guest memory.
        let mut h = elf_header(64, 2);
        h.extend(phdr(PT_LOAD, 0x1000, 0x20_0000, 0x1000));
        h.extend(phdr(PT_LOAD, 0x3000, 0x20_0800, 0x1000));
        assert!(whole(&h, 0x10_000));
        // Two note segments.
        let mut h = elf_header(64, 2);
        h.extend(phdr(PT_NOTE, 0x1000, 0, 0x10));
        h.extend(phdr(PT_NOTE, 0x2000, 0, 0x10));
        assert!(whole(&h, 0x10_000));
        // A segment past the end of the file.
        let mut h = elf_header(64, 1);
        h.extend(phdr(PT_LOAD, 0x1000, 0x20_0000, 0x10_0000));
        assert!(whole(&h, 0x2000));
        // An entry below 1 MiB, a wrong program header size.
        let mut h = elf_header(64, 0);
        h[24..32].copy_from_slice(&0x1000u64.to_le_bytes());
        assert!(whole(&h, 64));
        let mut h = elf_header(64, 0);
        h[54] = 32;
        assert!(whole(&h, 64));
        // Not a bzImage either: too short, no HdrS.
        assert!(whole(&[0u8; 100], 100));
        assert!(whole(&vec![0u8; 4096], 4096));
    }

    #[test]
    fn overlap_is_the_intersection_in_chunk_indices() {
        assert_eq!(overlap(100, 0, 10, 20), Some((10, 30)));
        assert_eq!(overlap(100, 50, 10, 20), None);
        assert_eq!(overlap(100, 50, 10, 60), Some((0, 20)));
        assert_eq!(overlap(100, 50, 120, 1000), Some((70, 100)));
        assert_eq!(overlap(0, 5, 0, 10), None);
        assert_eq!(overlap(10, 0, u64::MAX - 1, 10), None);
    }
}
