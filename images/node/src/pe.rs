//! PE32+ (UEFI image) reading and the Authenticode SHA-256 digest.
//!
//! Only what the node image needs: the headers, the data directories and the
//! section table of a PE32+ image, parsed with bounds checks on every read, and
//! the Authenticode digest the UEFI firmware extends into PCR 4 when it loads
//! an image (`EV_EFI_BOOT_SERVICES_APPLICATION`). Malformed input gives
//! [`NodeImageError::Pe`], never a panic.

use sha2::{Digest, Sha256};

use crate::error::NodeImageError;

/// `IMAGE_NT_OPTIONAL_HDR64_MAGIC`.
pub const PE32_PLUS_MAGIC: u16 = 0x20b;
/// Size of one section table entry.
pub const SECTION_HEADER_LEN: usize = 40;
/// Size of the COFF file header.
pub const COFF_HEADER_LEN: usize = 20;
/// Most zero fill accepted past a section's file data when reading it as loaded.
pub const MAX_ZERO_FILL: usize = 64 << 20;
/// Index of the certificate table (`IMAGE_DIRECTORY_ENTRY_SECURITY`).
pub const DIR_CERTIFICATE_TABLE: usize = 4;

// Offsets inside the PE32+ optional header.
const OPT_SIZE_OF_INITIALIZED_DATA: usize = 8;
const OPT_SECTION_ALIGNMENT: usize = 32;
const OPT_FILE_ALIGNMENT: usize = 36;
const OPT_SIZE_OF_IMAGE: usize = 56;
const OPT_SIZE_OF_HEADERS: usize = 60;
const OPT_CHECKSUM: usize = 64;
const OPT_NUMBER_OF_RVA_AND_SIZES: usize = 108;
const OPT_DATA_DIRECTORIES: usize = 112;

fn err(msg: impl Into<String>) -> NodeImageError {
    NodeImageError::Pe(msg.into())
}

fn read_u16(b: &[u8], off: usize, what: &str) -> Result<u16, NodeImageError> {
    off.checked_add(2)
        .and_then(|end| b.get(off..end))
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| {
            err(format!(
                "truncated: {what} at offset {off:#x} is past the end"
            ))
        })
}

fn read_u32(b: &[u8], off: usize, what: &str) -> Result<u32, NodeImageError> {
    off.checked_add(4)
        .and_then(|end| b.get(off..end))
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| {
            err(format!(
                "truncated: {what} at offset {off:#x} is past the end"
            ))
        })
}

/// One entry of the section table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    /// The 8 name bytes, NUL-padded.
    pub raw_name: [u8; 8],
    /// Size in memory (`VirtualSize`).
    pub virtual_size: u32,
    /// RVA of the section (`VirtualAddress`).
    pub virtual_address: u32,
    /// Size of the data in the file (`SizeOfRawData`, file-aligned).
    pub size_of_raw_data: u32,
    /// File offset of the data (`PointerToRawData`).
    pub pointer_to_raw_data: u32,
    /// Section flags.
    pub characteristics: u32,
}

impl Section {
    /// The name, up to the first NUL (lossy for non-UTF-8 names).
    pub fn name(&self) -> String {
        let end = self.raw_name.iter().position(|&b| b == 0).unwrap_or(8);
        String::from_utf8_lossy(&self.raw_name[..end]).into_owned()
    }

    /// The bytes of the section as the loader maps them: `VirtualSize` bytes
    /// from its file data, zero-filled where the file holds fewer
    /// (`SizeOfRawData` < `VirtualSize`).
    pub fn loaded_bytes(&self, file: &[u8]) -> Result<Vec<u8>, NodeImageError> {
        let raw = self.raw_data(file)?;
        let vsize = if self.virtual_size == 0 {
            self.size_of_raw_data
        } else {
            self.virtual_size
        } as usize;
        // Zero fill is for .bss-like tails, not for sizes no file backs.
        if vsize > raw.len().saturating_add(MAX_ZERO_FILL) {
            return Err(err(format!(
                "section {} VirtualSize {vsize:#x} is far beyond its {:#x} bytes of file data",
                self.name(),
                raw.len()
            )));
        }
        let mut out = raw[..raw.len().min(vsize)].to_vec();
        out.resize(vsize, 0);
        Ok(out)
    }

    /// The section's data in the file (`SizeOfRawData` bytes).
    pub fn raw_data<'a>(&self, file: &'a [u8]) -> Result<&'a [u8], NodeImageError> {
        let start = self.pointer_to_raw_data as usize;
        let end = start
            .checked_add(self.size_of_raw_data as usize)
            .ok_or_else(|| err(format!("section {} extent overflows", self.name())))?;
        file.get(start..end).ok_or_else(|| {
            err(format!(
                "section {} data {start:#x}..{end:#x} is past the end of the file ({:#x} bytes)",
                self.name(),
                file.len()
            ))
        })
    }

    /// First RVA after the section in memory.
    pub fn virtual_end(&self) -> u64 {
        u64::from(self.virtual_address) + u64::from(self.virtual_size.max(self.size_of_raw_data))
    }

    fn encode(&self) -> [u8; SECTION_HEADER_LEN] {
        let mut h = [0u8; SECTION_HEADER_LEN];
        h[0..8].copy_from_slice(&self.raw_name);
        h[8..12].copy_from_slice(&self.virtual_size.to_le_bytes());
        h[12..16].copy_from_slice(&self.virtual_address.to_le_bytes());
        h[16..20].copy_from_slice(&self.size_of_raw_data.to_le_bytes());
        h[20..24].copy_from_slice(&self.pointer_to_raw_data.to_le_bytes());
        // Relocations and line numbers: none.
        h[36..40].copy_from_slice(&self.characteristics.to_le_bytes());
        h
    }

    /// The 40-byte section table entry.
    pub fn header_bytes(&self) -> [u8; SECTION_HEADER_LEN] {
        self.encode()
    }
}

/// A parsed PE32+ image: header fields and where they are in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeImage {
    /// File offset of the `PE\0\0` signature (`e_lfanew`).
    pub pe_offset: usize,
    /// COFF `Machine`.
    pub machine: u16,
    /// COFF `TimeDateStamp`.
    pub time_date_stamp: u32,
    /// COFF `PointerToSymbolTable`.
    pub pointer_to_symbol_table: u32,
    /// COFF `NumberOfSymbols`.
    pub number_of_symbols: u32,
    /// COFF `Characteristics`.
    pub characteristics: u16,
    /// File offset of the optional header.
    pub optional_header_offset: usize,
    /// `SizeOfOptionalHeader`.
    pub size_of_optional_header: u16,
    /// `SizeOfInitializedData`.
    pub size_of_initialized_data: u32,
    /// `SectionAlignment`.
    pub section_alignment: u32,
    /// `FileAlignment`.
    pub file_alignment: u32,
    /// `SizeOfImage`.
    pub size_of_image: u32,
    /// `SizeOfHeaders`.
    pub size_of_headers: u32,
    /// The data directories (RVA or file offset, size).
    pub data_directories: Vec<(u32, u32)>,
    /// File offset of the section table.
    pub section_table_offset: usize,
    /// The section table, in file order.
    pub sections: Vec<Section>,
}

impl PeImage {
    /// Parse a PE32+ image. Every field read is bounds-checked; a structure
    /// that does not fit the file is an error.
    pub fn parse(b: &[u8]) -> Result<PeImage, NodeImageError> {
        if b.get(0..2) != Some(b"MZ") {
            return Err(err("not a PE image: no MZ signature"));
        }
        let pe_offset = read_u32(b, 0x3c, "e_lfanew")? as usize;
        if b.get(pe_offset..pe_offset.saturating_add(4)) != Some(b"PE\0\0") {
            return Err(err(format!("no PE signature at e_lfanew = {pe_offset:#x}")));
        }
        let coff = pe_offset + 4;
        let machine = read_u16(b, coff, "Machine")?;
        let number_of_sections = read_u16(b, coff + 2, "NumberOfSections")?;
        let time_date_stamp = read_u32(b, coff + 4, "TimeDateStamp")?;
        let pointer_to_symbol_table = read_u32(b, coff + 8, "PointerToSymbolTable")?;
        let number_of_symbols = read_u32(b, coff + 12, "NumberOfSymbols")?;
        let size_of_optional_header = read_u16(b, coff + 16, "SizeOfOptionalHeader")?;
        let characteristics = read_u16(b, coff + 18, "Characteristics")?;
        let opt = coff + COFF_HEADER_LEN;
        let magic = read_u16(b, opt, "optional header magic")?;
        if magic != PE32_PLUS_MAGIC {
            return Err(err(format!(
                "optional header magic {magic:#x} is not PE32+ ({PE32_PLUS_MAGIC:#x})"
            )));
        }
        if (size_of_optional_header as usize) < OPT_DATA_DIRECTORIES {
            return Err(err(format!(
                "SizeOfOptionalHeader {size_of_optional_header} is too small for PE32+"
            )));
        }
        let size_of_initialized_data = read_u32(
            b,
            opt + OPT_SIZE_OF_INITIALIZED_DATA,
            "SizeOfInitializedData",
        )?;
        let section_alignment = read_u32(b, opt + OPT_SECTION_ALIGNMENT, "SectionAlignment")?;
        let file_alignment = read_u32(b, opt + OPT_FILE_ALIGNMENT, "FileAlignment")?;
        let size_of_image = read_u32(b, opt + OPT_SIZE_OF_IMAGE, "SizeOfImage")?;
        let size_of_headers = read_u32(b, opt + OPT_SIZE_OF_HEADERS, "SizeOfHeaders")?;
        read_u32(b, opt + OPT_CHECKSUM, "CheckSum")?;
        let n_dirs = read_u32(b, opt + OPT_NUMBER_OF_RVA_AND_SIZES, "NumberOfRvaAndSizes")?;
        if u64::from(n_dirs) * 8 + OPT_DATA_DIRECTORIES as u64 > u64::from(size_of_optional_header)
        {
            return Err(err(format!(
                "{n_dirs} data directories do not fit the {size_of_optional_header}-byte optional header"
            )));
        }
        let mut data_directories = Vec::with_capacity(n_dirs as usize);
        for i in 0..n_dirs as usize {
            let off = opt + OPT_DATA_DIRECTORIES + i * 8;
            data_directories.push((
                read_u32(b, off, "data directory")?,
                read_u32(b, off + 4, "data directory")?,
            ));
        }
        if !file_alignment.is_power_of_two() || !section_alignment.is_power_of_two() {
            return Err(err(format!(
                "FileAlignment {file_alignment:#x} and SectionAlignment {section_alignment:#x} must be powers of two"
            )));
        }
        let section_table_offset = opt + size_of_optional_header as usize;
        let table_end = section_table_offset + number_of_sections as usize * SECTION_HEADER_LEN;
        if table_end > b.len() {
            return Err(err(format!(
                "truncated: the section table of {number_of_sections} entries ends at {table_end:#x}, past the end of the file ({:#x})",
                b.len()
            )));
        }
        if table_end > size_of_headers as usize {
            return Err(err(format!(
                "the section table ends at {table_end:#x}, past SizeOfHeaders {size_of_headers:#x}"
            )));
        }
        if size_of_headers as usize > b.len() {
            return Err(err(format!(
                "SizeOfHeaders {size_of_headers:#x} is past the end of the file ({:#x})",
                b.len()
            )));
        }
        let mut sections = Vec::with_capacity(number_of_sections as usize);
        for i in 0..number_of_sections as usize {
            let h = section_table_offset + i * SECTION_HEADER_LEN;
            let mut raw_name = [0u8; 8];
            raw_name.copy_from_slice(&b[h..h + 8]);
            let s = Section {
                raw_name,
                virtual_size: read_u32(b, h + 8, "VirtualSize")?,
                virtual_address: read_u32(b, h + 12, "VirtualAddress")?,
                size_of_raw_data: read_u32(b, h + 16, "SizeOfRawData")?,
                pointer_to_raw_data: read_u32(b, h + 20, "PointerToRawData")?,
                characteristics: read_u32(b, h + 36, "Characteristics")?,
            };
            if s.size_of_raw_data > 0 {
                s.raw_data(b)?;
                if (s.pointer_to_raw_data as usize) < size_of_headers as usize {
                    return Err(err(format!(
                        "section {} data at {:#x} overlaps the headers (SizeOfHeaders {size_of_headers:#x})",
                        s.name(),
                        s.pointer_to_raw_data
                    )));
                }
            }
            sections.push(s);
        }
        let img = PeImage {
            pe_offset,
            machine,
            time_date_stamp,
            pointer_to_symbol_table,
            number_of_symbols,
            characteristics,
            optional_header_offset: opt,
            size_of_optional_header,
            size_of_initialized_data,
            section_alignment,
            file_alignment,
            size_of_image,
            size_of_headers,
            data_directories,
            section_table_offset,
            sections,
        };
        if let Some((off, size)) = img.certificate_table() {
            let end = off as u64 + size as u64;
            if end > b.len() as u64 || (off as u64) < u64::from(size_of_headers) {
                return Err(err(format!(
                    "certificate table {off:#x}+{size:#x} is outside the file ({:#x} bytes)",
                    b.len()
                )));
            }
        }
        Ok(img)
    }

    /// File offset of the `CheckSum` field.
    pub fn checksum_offset(&self) -> usize {
        self.optional_header_offset + OPT_CHECKSUM
    }

    /// File offset of the certificate-table data directory entry, if the
    /// image has one.
    pub fn certificate_dir_offset(&self) -> Option<usize> {
        (self.data_directories.len() > DIR_CERTIFICATE_TABLE)
            .then(|| self.optional_header_offset + OPT_DATA_DIRECTORIES + DIR_CERTIFICATE_TABLE * 8)
    }

    /// The attribute certificate table (file offset, size), if non-empty.
    pub fn certificate_table(&self) -> Option<(u32, u32)> {
        self.data_directories
            .get(DIR_CERTIFICATE_TABLE)
            .copied()
            .filter(|&(_, size)| size > 0)
    }

    /// Look a section up by exact name. More than one section of that name
    /// is an error: a loader could pick either.
    pub fn section(&self, name: &str) -> Result<Option<&Section>, NodeImageError> {
        let mut found = self.sections.iter().filter(|s| s.name() == name);
        let first = found.next();
        if found.next().is_some() {
            return Err(err(format!("more than one {name} section")));
        }
        Ok(first)
    }

    /// End of the section data in the file (the largest
    /// `PointerToRawData + SizeOfRawData`), at least `SizeOfHeaders`.
    pub fn raw_data_end(&self) -> u64 {
        self.sections
            .iter()
            .filter(|s| s.size_of_raw_data > 0)
            .map(|s| u64::from(s.pointer_to_raw_data) + u64::from(s.size_of_raw_data))
            .fold(u64::from(self.size_of_headers), u64::max)
    }

    /// Offsets of header fields, for writers.
    pub(crate) fn field_offsets(&self) -> HeaderFields {
        let coff = self.pe_offset + 4;
        let opt = self.optional_header_offset;
        HeaderFields {
            number_of_sections: coff + 2,
            pointer_to_symbol_table: coff + 8,
            number_of_symbols: coff + 12,
            size_of_initialized_data: opt + OPT_SIZE_OF_INITIALIZED_DATA,
            size_of_image: opt + OPT_SIZE_OF_IMAGE,
            checksum: opt + OPT_CHECKSUM,
        }
    }
}

pub(crate) struct HeaderFields {
    pub number_of_sections: usize,
    pub pointer_to_symbol_table: usize,
    pub number_of_symbols: usize,
    pub size_of_initialized_data: usize,
    pub size_of_image: usize,
    pub checksum: usize,
}

/// The Authenticode SHA-256 digest of a PE32+ image, computed the way UEFI
/// firmware (EDK II's measured boot) does for the `EV_EFI_BOOT_SERVICES_APPLICATION`
/// event in PCR 4 and as `sbsign`/`osslsigncode` sign it:
///
/// 1. the headers up to `SizeOfHeaders`, skipping the 4-byte `CheckSum` and
///    the 8-byte certificate-table directory entry;
/// 2. each section's file data (`SizeOfRawData` bytes), sections sorted by
///    `PointerToRawData`, empty ones skipped;
/// 3. whatever follows in the file, from `SizeOfHeaders` + the sum of the
///    section sizes, excluding the attribute certificate table (its size is
///    taken off the end of the file).
pub fn authenticode_sha256(b: &[u8]) -> Result<[u8; 32], NodeImageError> {
    let img = PeImage::parse(b)?;
    let mut h = Sha256::new();
    let checksum = img.checksum_offset();
    let headers_end = img.size_of_headers as usize;
    h.update(&b[..checksum]);
    match img.certificate_dir_offset() {
        Some(dir) => {
            h.update(&b[checksum + 4..dir]);
            h.update(&b[dir + 8..headers_end]);
        }
        None => h.update(&b[checksum + 4..headers_end]),
    }
    let mut sections: Vec<&Section> = img
        .sections
        .iter()
        .filter(|s| s.size_of_raw_data > 0)
        .collect();
    sections.sort_by_key(|s| s.pointer_to_raw_data);
    let mut hashed = headers_end as u64;
    for s in sections {
        h.update(s.raw_data(b)?);
        hashed += u64::from(s.size_of_raw_data);
    }
    let cert_size = img
        .certificate_table()
        .map_or(0, |(_, size)| u64::from(size));
    let file_len = b.len() as u64;
    if file_len > hashed + cert_size {
        // hashed <= file_len here, so the range is inside the file.
        h.update(&b[hashed as usize..(file_len - cert_size) as usize]);
    }
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

    fn stub() -> Option<Vec<u8>> {
        match std::fs::read(STUB) {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("SKIPPED: {STUB} is missing ({e}): install systemd-boot-efi");
                None
            }
        }
    }

    #[test]
    fn parses_the_systemd_stub() {
        let Some(b) = stub() else { return };
        let img = PeImage::parse(&b).unwrap();
        assert_eq!(img.machine, 0x8664);
        assert_eq!(img.section_alignment, 0x200);
        assert_eq!(img.file_alignment, 0x200);
        let names: Vec<String> = img.sections.iter().map(Section::name).collect();
        assert!(names.contains(&".text".to_string()), "{names:?}");
        assert!(names.contains(&".sdmagic".to_string()), "{names:?}");
        assert!(img.certificate_table().is_none());
    }

    #[test]
    fn rejects_non_pe_input_with_a_clear_error() {
        for (input, want) in [
            (&b""[..], "no MZ"),
            (&b"MZ"[..], "e_lfanew"),
            (
                &b"ELF\x7f............................................................"[..],
                "no MZ",
            ),
        ] {
            let e = PeImage::parse(input).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    /// Truncations and random byte flips of the stub: parse and the digest
    /// return Ok or Err, never panic.
    #[test]
    fn fuzzed_stub_never_panics() {
        let Some(b) = stub() else { return };
        let img = PeImage::parse(&b).unwrap();
        let header_end = img.size_of_headers as usize;
        // Every truncation through the headers, then coarser steps.
        for len in (0..header_end + 64).chain((header_end..b.len()).step_by(997)) {
            let t = &b[..len];
            let _ = PeImage::parse(t);
            let _ = authenticode_sha256(t);
        }
        // Deterministic xorshift so failures reproduce.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut ok, mut failed) = (0, 0);
        for _ in 0..3000 {
            let mut m = b.clone();
            for _ in 0..1 + next() % 4 {
                let pos = (next() % header_end as u64) as usize;
                m[pos] ^= 1 << (next() % 8);
            }
            // Sometimes write a large value into a 32-bit field.
            if next() % 3 == 0 {
                let pos = (next() % (header_end as u64 - 4)) as usize;
                m[pos..pos + 4].copy_from_slice(&(next() as u32).to_le_bytes());
            }
            match authenticode_sha256(&m) {
                Ok(_) => ok += 1,
                Err(_) => failed += 1,
            }
            let _ = PeImage::parse(&m);
        }
        // Both outcomes happen: the flips reach the digest code and the checks.
        assert!(ok > 0 && failed > 0, "ok {ok}, failed {failed}");
    }
}
