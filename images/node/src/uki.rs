//! Unified Kernel Image assembly on systemd's stub (`linuxx64.efi.stub`).
//!
//! The stub's own sections stay where they are; the payload sections are
//! appended: `.osrel`, `.cmdline`, `.uname` (when given), `.linux`, `.initrd`,
//! each at the end of the previous section in memory rounded up to 4 KiB, with
//! its file data at the end of the file rounded up to `FileAlignment`. The
//! stub's COFF symbol table (trailing debug data no loader reads) is dropped so
//! that the image has no gaps or trailing data, and the output is a pure
//! function of the inputs.

use crate::error::NodeImageError;
use crate::pe::{PeImage, Section, SECTION_HEADER_LEN};

/// Where Debian's `systemd-boot-efi` installs the x86-64 stub.
pub const DEFAULT_STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
/// Where Debian's `systemd-boot-efi` installs systemd-boot.
pub const DEFAULT_BOOT_MANAGER: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
/// Alignment of the payload sections in memory.
pub const SECTION_VMA_ALIGN: u64 = 4096;
/// `IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ`: read-only data.
pub const DATA_SECTION_FLAGS: u32 = 0x0000_0040 | 0x4000_0000;

/// The payload sections systemd's stub reads, in the order they are added.
pub const PAYLOAD_SECTIONS: [&str; 5] = [".osrel", ".cmdline", ".uname", ".linux", ".initrd"];

/// What goes into a UKI.
#[derive(Clone, Copy, Debug)]
pub struct UkiInputs<'a> {
    /// The systemd stub PE image.
    pub stub: &'a [u8],
    /// The kernel (an EFI-stub bzImage).
    pub linux: &'a [u8],
    /// The initramfs.
    pub initrd: &'a [u8],
    /// The kernel command line, as stored (no terminator is added).
    pub cmdline: &'a [u8],
    /// The os-release file.
    pub osrel: &'a [u8],
    /// `uname -r` of the kernel, if the `.uname` section is wanted.
    pub uname: Option<&'a [u8]>,
}

/// One section placed by [`plan`]: its name, RVA and data length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Section name.
    pub name: &'static str,
    /// RVA (VMA, the stub's ImageBase being 0).
    pub vma: u64,
    /// Length of the data.
    pub len: u64,
}

fn align(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

fn uki_err(msg: impl Into<String>) -> NodeImageError {
    NodeImageError::Uki(msg.into())
}

/// The payload sections of `inputs`, in order, with their contents.
fn payload<'a>(inputs: &UkiInputs<'a>) -> Vec<(&'static str, &'a [u8])> {
    let mut v = vec![(".osrel", inputs.osrel), (".cmdline", inputs.cmdline)];
    if let Some(u) = inputs.uname {
        v.push((".uname", u));
    }
    v.push((".linux", inputs.linux));
    v.push((".initrd", inputs.initrd));
    v
}

/// The VMAs [`assemble`] gives the payload sections (for `objcopy
/// --change-section-vma` and for display).
pub fn plan(inputs: &UkiInputs<'_>) -> Result<Vec<Placement>, NodeImageError> {
    let stub = PeImage::parse(inputs.stub)?;
    let mut end = stub
        .sections
        .iter()
        .map(Section::virtual_end)
        .max()
        .unwrap_or(u64::from(stub.size_of_headers));
    let mut out = Vec::new();
    for (name, data) in payload(inputs) {
        let vma = align(end, SECTION_VMA_ALIGN);
        out.push(Placement {
            name,
            vma,
            len: data.len() as u64,
        });
        end = vma + data.len() as u64;
    }
    Ok(out)
}

/// Build the UKI. Deterministic: the same inputs give the same bytes.
pub fn assemble(inputs: &UkiInputs<'_>) -> Result<Vec<u8>, NodeImageError> {
    let stub = PeImage::parse(inputs.stub)?;
    if stub.machine != 0x8664 {
        return Err(uki_err(format!(
            "the stub is for machine {:#x}, not x86-64 (0x8664)",
            stub.machine
        )));
    }
    if stub.certificate_table().is_some() {
        return Err(uki_err(
            "the stub carries an Authenticode signature; use the unsigned stub (sign the UKI afterwards)",
        ));
    }
    for name in PAYLOAD_SECTIONS {
        if stub.section(name)?.is_some() {
            return Err(uki_err(format!(
                "the stub already has a {name} section (is it a UKI already?)"
            )));
        }
    }
    let sections = payload(inputs);
    for (name, data) in &sections {
        if data.is_empty() {
            return Err(uki_err(format!("the {name} section would be empty")));
        }
        if data.len() as u64 > u64::from(u32::MAX) / 2 {
            return Err(uki_err(format!(
                "{name} is {} bytes, too large",
                data.len()
            )));
        }
    }
    if inputs.cmdline.contains(&0) {
        return Err(uki_err("the command line contains a NUL byte"));
    }

    // Room in the section table: new entries must fit before SizeOfHeaders
    // and before the first section's data, over bytes that are zero.
    let table_end = stub.section_table_offset + stub.sections.len() * SECTION_HEADER_LEN;
    let new_end = table_end + sections.len() * SECTION_HEADER_LEN;
    let first_data = stub
        .sections
        .iter()
        .filter(|s| s.size_of_raw_data > 0)
        .map(|s| s.pointer_to_raw_data as usize)
        .min()
        .unwrap_or(stub.size_of_headers as usize);
    let room = (stub.size_of_headers as usize).min(first_data);
    if new_end > room {
        return Err(uki_err(format!(
            "no room in the stub's section table for {} more sections: it would end at {new_end:#x}, the headers end at {room:#x}",
            sections.len()
        )));
    }
    if inputs.stub[table_end..new_end].iter().any(|&b| b != 0) {
        return Err(uki_err(format!(
            "the space after the stub's section table ({table_end:#x}..{new_end:#x}) is not free"
        )));
    }

    let file_align = u64::from(stub.file_alignment);
    let section_align = u64::from(stub.section_alignment);
    // The stub up to the end of its section data; the symbol table and
    // anything else after it is dropped.
    let stub_end = stub.raw_data_end() as usize;
    if stub.pointer_to_symbol_table != 0 && (stub.pointer_to_symbol_table as usize) < stub_end {
        return Err(uki_err(
            "the stub's COFF symbol table lies inside its section data",
        ));
    }
    let mut out = inputs.stub[..stub_end].to_vec();
    out.resize(align(out.len() as u64, file_align) as usize, 0);

    let placements = plan(inputs)?;
    let mut headers = Vec::with_capacity(sections.len());
    let mut init_data = u64::from(stub.size_of_initialized_data);
    let mut image_end = 0u64;
    for ((name, data), p) in sections.iter().zip(&placements) {
        let raw_size = align(data.len() as u64, file_align);
        let ptr = out.len() as u64;
        let too_big = |what: &str| uki_err(format!("{what} overflows 32 bits at section {name}"));
        let mut raw_name = [0u8; 8];
        raw_name[..name.len()].copy_from_slice(name.as_bytes());
        headers.push(Section {
            raw_name,
            virtual_size: u32::try_from(data.len()).map_err(|_| too_big("VirtualSize"))?,
            virtual_address: u32::try_from(p.vma).map_err(|_| too_big("VirtualAddress"))?,
            size_of_raw_data: u32::try_from(raw_size).map_err(|_| too_big("SizeOfRawData"))?,
            pointer_to_raw_data: u32::try_from(ptr).map_err(|_| too_big("PointerToRawData"))?,
            characteristics: DATA_SECTION_FLAGS,
        });
        out.extend_from_slice(data);
        out.resize((ptr + raw_size) as usize, 0);
        init_data += raw_size;
        image_end = p.vma + data.len() as u64;
    }
    let size_of_image = u32::try_from(align(image_end, section_align))
        .map_err(|_| uki_err("SizeOfImage overflows 32 bits"))?;
    let init_data =
        u32::try_from(init_data).map_err(|_| uki_err("SizeOfInitializedData overflows 32 bits"))?;

    for (i, h) in headers.iter().enumerate() {
        let off = table_end + i * SECTION_HEADER_LEN;
        out[off..off + SECTION_HEADER_LEN].copy_from_slice(&h.header_bytes());
    }
    let f = stub.field_offsets();
    let n = u16::try_from(stub.sections.len() + headers.len())
        .map_err(|_| uki_err("too many sections"))?;
    out[f.number_of_sections..f.number_of_sections + 2].copy_from_slice(&n.to_le_bytes());
    out[f.pointer_to_symbol_table..f.pointer_to_symbol_table + 4].fill(0);
    out[f.number_of_symbols..f.number_of_symbols + 4].fill(0);
    out[f.size_of_initialized_data..f.size_of_initialized_data + 4]
        .copy_from_slice(&init_data.to_le_bytes());
    out[f.size_of_image..f.size_of_image + 4].copy_from_slice(&size_of_image.to_le_bytes());
    let checksum = pe_checksum(&out, f.checksum);
    out[f.checksum..f.checksum + 4].copy_from_slice(&checksum.to_le_bytes());

    // What we wrote must read back as a PE image with those sections.
    let check = PeImage::parse(&out)?;
    if check.sections.len() != n as usize {
        return Err(uki_err("the assembled image does not read back"));
    }
    Ok(out)
}

/// The PE `CheckSum`: 16-bit one's-complement-style sum of the file (the
/// checksum field counted as zero) plus the file length.
pub fn pe_checksum(b: &[u8], checksum_offset: usize) -> u32 {
    let mut sum: u64 = 0;
    for (i, chunk) in b.chunks(2).enumerate() {
        let off = i * 2;
        let word = if off >= checksum_offset && off < checksum_offset + 4 {
            0
        } else if chunk.len() == 2 {
            u64::from(u16::from_le_bytes([chunk[0], chunk[1]]))
        } else {
            u64::from(chunk[0])
        };
        sum += word;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(b.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stub() -> Option<Vec<u8>> {
        match std::fs::read(DEFAULT_STUB) {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("SKIPPED: {DEFAULT_STUB} is missing ({e}): install systemd-boot-efi");
                None
            }
        }
    }

    #[test]
    fn stub_checksum_matches_its_header() {
        let Some(b) = stub() else { return };
        let img = PeImage::parse(&b).unwrap();
        let off = img.checksum_offset();
        let stored = u32::from_le_bytes(b[off..off + 4].try_into().unwrap());
        assert_eq!(pe_checksum(&b, off), stored);
    }

    #[test]
    fn places_sections_on_4k_boundaries_and_reads_back() {
        let Some(stub) = stub() else { return };
        let linux = vec![0xAAu8; 10_000];
        let initrd = vec![0x55u8; 5000];
        let inputs = UkiInputs {
            stub: &stub,
            linux: &linux,
            initrd: &initrd,
            cmdline: b"console=ttyS0",
            osrel: b"ID=bulwark\n",
            uname: Some(b"6.1.0-57-cloud-amd64"),
        };
        let uki = assemble(&inputs).unwrap();
        assert_eq!(uki, assemble(&inputs).unwrap(), "deterministic");
        let img = PeImage::parse(&uki).unwrap();
        let p = plan(&inputs).unwrap();
        // The lab's facts: the stub ends at 0x19134, so .osrel is at 0x1a000.
        assert_eq!(p[0].vma, 0x1a000);
        assert_eq!(p[1].vma, 0x1b000);
        for pl in &p {
            let s = img.section(pl.name).unwrap().unwrap();
            assert_eq!(u64::from(s.virtual_address), pl.vma);
            assert_eq!(s.virtual_address % 4096, 0);
            assert_eq!(s.pointer_to_raw_data % img.file_alignment, 0);
        }
        let l = img.section(".linux").unwrap().unwrap();
        assert_eq!(l.loaded_bytes(&uki).unwrap(), linux);
        let last = img.section(".initrd").unwrap().unwrap();
        assert_eq!(
            img.size_of_image as u64,
            align(last.virtual_end(), u64::from(img.section_alignment))
        );
        assert_eq!(uki.len() as u64, img.raw_data_end());
        assert_eq!(img.pointer_to_symbol_table, 0);
    }

    #[test]
    fn refuses_bad_inputs() {
        let Some(stub) = stub() else { return };
        let ok = UkiInputs {
            stub: &stub,
            linux: b"k",
            initrd: b"i",
            cmdline: b"c",
            osrel: b"o",
            uname: None,
        };
        let uki = assemble(&ok).unwrap();
        let e = assemble(&UkiInputs { stub: &uki, ..ok })
            .unwrap_err()
            .to_string();
        assert!(e.contains("already has a .osrel"), "{e}");
        let e = assemble(&UkiInputs { initrd: b"", ..ok })
            .unwrap_err()
            .to_string();
        assert!(e.contains(".initrd section would be empty"), "{e}");
        let e = assemble(&UkiInputs {
            stub: b"MZnope",
            ..ok
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("PE image"), "{e}");
        // A stub whose headers have no room: shrink SizeOfHeaders to the table end.
        let img = PeImage::parse(&stub).unwrap();
        let mut tight = stub.clone();
        let table_end = (img.section_table_offset + img.sections.len() * 40) as u32;
        let off = img.optional_header_offset + 60;
        tight[off..off + 4].copy_from_slice(&table_end.to_le_bytes());
        let e = assemble(&UkiInputs { stub: &tight, ..ok })
            .unwrap_err()
            .to_string();
        assert!(e.contains("no room in the stub's section table"), "{e}");
    }
}
