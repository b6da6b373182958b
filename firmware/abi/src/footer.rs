//! The GUIDed footer table that ends an OVMF-style firmware image, and the SEV
//! metadata it points to.
//!
//! Layout (facts from OVMF's reset vector and from `sev-snp-measure`): the last 32
//! bytes of the image hold the reset vector; the 18 bytes before them are the table's
//! closing entry (`u16` size of the whole table including it, then
//! [`guid::FOOTER_TABLE`]). Entries run backwards from there: each is its data followed
//! by `u16` size (data + 18) and its GUID.

use crate::guid::{self, Guid};

/// Bytes of an entry's trailer (`u16` size + GUID).
pub const ENTRY_TRAILER: usize = 18;
/// Bytes at the very end of the image after the table (the reset-vector area).
pub const RESET_AREA: usize = 32;
/// Most entries read from one table.
pub const MAX_ENTRIES: usize = 16;
/// Most SEV metadata sections read.
pub const MAX_SECTIONS: usize = 16;

/// Why a firmware image's table or metadata was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FooterError {
    /// The image is shorter than the table's fixed tail.
    TooShort,
    /// No footer GUID where it must be.
    NoFooter,
    /// The table's size runs outside the image or below its own trailer.
    BadTableSize,
    /// An entry's size is smaller than its trailer or larger than what is left.
    BadEntrySize,
    /// More entries than [`MAX_ENTRIES`].
    TooManyEntries,
    /// An entry is shorter than the fields it must carry.
    ShortEntry(Guid),
    /// The metadata offset points outside the image.
    BadMetadataOffset,
    /// The metadata does not start with `ASEV`, version 1.
    BadMetadataHeader,
    /// The metadata's size or item count runs outside the image.
    BadMetadataSize,
    /// A metadata section has an unknown type.
    UnknownSectionType(u32),
}

impl core::fmt::Display for FooterError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FooterError::TooShort => write!(f, "image too short for a footer table"),
            FooterError::NoFooter => write!(f, "no OVMF footer table GUID 32 bytes before the end"),
            FooterError::BadTableSize => write!(f, "footer table size runs outside the image"),
            FooterError::BadEntrySize => write!(f, "footer table entry size is out of range"),
            FooterError::TooManyEntries => {
                write!(f, "more than {MAX_ENTRIES} footer table entries")
            }
            FooterError::ShortEntry(g) => write!(f, "footer table entry {g:?} is too short"),
            FooterError::BadMetadataOffset => {
                write!(f, "SEV metadata offset points outside the image")
            }
            FooterError::BadMetadataHeader => write!(f, "SEV metadata is not `ASEV` version 1"),
            FooterError::BadMetadataSize => {
                write!(f, "SEV metadata size or item count runs outside the image")
            }
            FooterError::UnknownSectionType(t) => {
                write!(f, "SEV metadata section type {t:#x} is unknown")
            }
        }
    }
}

/// A parsed footer table: its entries' GUIDs and data.
#[derive(Debug, Clone, Copy)]
pub struct FooterTable<'a> {
    entries: [Option<(Guid, &'a [u8])>; MAX_ENTRIES],
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn guid_at(b: &[u8], at: usize) -> Option<Guid> {
    Some(Guid(b.get(at..at.checked_add(16)?)?.try_into().ok()?))
}

impl<'a> FooterTable<'a> {
    /// Reads the table at the end of `image`.
    pub fn parse(image: &'a [u8]) -> Result<Self, FooterError> {
        let footer_at = image
            .len()
            .checked_sub(RESET_AREA + ENTRY_TRAILER)
            .ok_or(FooterError::TooShort)?;
        let size = usize::from(u16_at(image, footer_at).ok_or(FooterError::TooShort)?);
        if guid_at(image, footer_at + 2) != Some(guid::FOOTER_TABLE) {
            return Err(FooterError::NoFooter);
        }
        let table_len = size
            .checked_sub(ENTRY_TRAILER)
            .ok_or(FooterError::BadTableSize)?;
        let start = footer_at
            .checked_sub(table_len)
            .ok_or(FooterError::BadTableSize)?;
        let mut rest = &image[start..footer_at];
        let mut entries = [None; MAX_ENTRIES];
        let mut n = 0;
        while rest.len() >= ENTRY_TRAILER {
            let t = rest.len() - ENTRY_TRAILER;
            let esize = usize::from(u16_at(rest, t).ok_or(FooterError::BadEntrySize)?);
            let g = guid_at(rest, t + 2).ok_or(FooterError::BadEntrySize)?;
            if esize < ENTRY_TRAILER || esize > rest.len() {
                return Err(FooterError::BadEntrySize);
            }
            let slot = entries.get_mut(n).ok_or(FooterError::TooManyEntries)?;
            let begin = rest.len() - esize;
            *slot = Some((g, &rest[begin..t]));
            n += 1;
            rest = &rest[..begin];
        }
        Ok(FooterTable { entries })
    }

    /// The data of the entry with GUID `g`.
    pub fn entry(&self, g: Guid) -> Option<&'a [u8]> {
        self.entries
            .iter()
            .flatten()
            .find(|(eg, _)| *eg == g)
            .map(|(_, d)| *d)
    }

    fn u32_entry(&self, g: Guid) -> Result<Option<u32>, FooterError> {
        match self.entry(g) {
            None => Ok(None),
            Some(d) => u32_at(d, 0).map(Some).ok_or(FooterError::ShortEntry(g)),
        }
    }

    /// The kernel-hashes table's GPA and size, when the image declares one.
    pub fn hash_table(&self) -> Result<Option<(u32, u32)>, FooterError> {
        match self.entry(guid::SEV_HASH_TABLE_RV) {
            None => Ok(None),
            Some(d) => match (u32_at(d, 0), u32_at(d, 4)) {
                (Some(gpa), Some(size)) => Ok(Some((gpa, size))),
                _ => Err(FooterError::ShortEntry(guid::SEV_HASH_TABLE_RV)),
            },
        }
    }

    /// The SEV-ES AP reset EIP, when the image declares one.
    pub fn ap_reset_eip(&self) -> Result<Option<u32>, FooterError> {
        self.u32_entry(guid::SEV_ES_RESET_BLOCK)
    }

    /// The SEV metadata sections (empty when the image has none).
    pub fn sections(&self, image: &[u8]) -> Result<Sections, FooterError> {
        let mut out = Sections {
            items: [None; MAX_SECTIONS],
        };
        let Some(off) = self.u32_entry(guid::SEV_METADATA)? else {
            return Ok(out);
        };
        let start = image
            .len()
            .checked_sub(off as usize)
            .ok_or(FooterError::BadMetadataOffset)?;
        if image.get(start..start + 4) != Some(b"ASEV".as_slice())
            || u32_at(image, start + 8) != Some(1)
        {
            return Err(FooterError::BadMetadataHeader);
        }
        let size = u32_at(image, start + 4).ok_or(FooterError::BadMetadataSize)? as usize;
        let count = u32_at(image, start + 12).ok_or(FooterError::BadMetadataSize)? as usize;
        if count > MAX_SECTIONS
            || size < 16 + 12 * count
            || start.checked_add(size).is_none_or(|e| e > image.len())
        {
            return Err(FooterError::BadMetadataSize);
        }
        for (i, slot) in out.items.iter_mut().take(count).enumerate() {
            let at = start + 16 + 12 * i;
            let (gpa, size, kind) = (
                u32_at(image, at).ok_or(FooterError::BadMetadataSize)?,
                u32_at(image, at + 4).ok_or(FooterError::BadMetadataSize)?,
                u32_at(image, at + 8).ok_or(FooterError::BadMetadataSize)?,
            );
            *slot = Some(Section {
                gpa,
                size,
                kind: SectionKind::from_u32(kind)?,
            });
        }
        Ok(out)
    }
}

/// What an SEV metadata section is (OVMF's `OvmfSevMetadata` types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectionKind {
    /// Memory the firmware uses, zero at launch (SNP: pre-validated zero pages).
    SecMem = 1,
    /// The SNP secrets page.
    Secrets = 2,
    /// The SNP CPUID page.
    Cpuid = 3,
    /// The SVSM calling-area page.
    SvsmCaa = 4,
    /// The page holding the kernel-hashes table.
    KernelHashes = 0x10,
}

impl SectionKind {
    /// The type from its number.
    pub fn from_u32(v: u32) -> Result<Self, FooterError> {
        Ok(match v {
            1 => SectionKind::SecMem,
            2 => SectionKind::Secrets,
            3 => SectionKind::Cpuid,
            4 => SectionKind::SvsmCaa,
            0x10 => SectionKind::KernelHashes,
            other => return Err(FooterError::UnknownSectionType(other)),
        })
    }
}

/// One SEV metadata section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Section {
    /// Guest-physical address.
    pub gpa: u32,
    /// Bytes.
    pub size: u32,
    /// What it is.
    pub kind: SectionKind,
}

/// The SEV metadata sections, in the image's order.
#[derive(Debug, Clone, Copy)]
pub struct Sections {
    items: [Option<Section>; MAX_SECTIONS],
}

impl Sections {
    /// The sections in order.
    pub fn iter(&self) -> impl Iterator<Item = &Section> {
        self.items.iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn entry(out: &mut Vec<u8>, data: &[u8], g: Guid) {
        out.extend_from_slice(data);
        out.extend_from_slice(&((data.len() + ENTRY_TRAILER) as u16).to_le_bytes());
        out.extend_from_slice(g.bytes());
    }

    /// An image of `len` bytes: metadata with one KERNEL_HASHES section at 0x100, a
    /// hash-table entry and a reset block, then the footer and 32 bytes.
    fn image() -> Vec<u8> {
        let mut img = std::vec![0u8; 0x100];
        img[..4].copy_from_slice(b"ASEV");
        img[4..8].copy_from_slice(&28u32.to_le_bytes());
        img[8..12].copy_from_slice(&1u32.to_le_bytes());
        img[12..16].copy_from_slice(&1u32.to_le_bytes());
        img[16..20].copy_from_slice(&0x1_8000u32.to_le_bytes());
        img[20..24].copy_from_slice(&0x1000u32.to_le_bytes());
        img[24..28].copy_from_slice(&0x10u32.to_le_bytes());
        let mut table = Vec::new();
        entry(
            &mut table,
            &0xffff_f000u32.to_le_bytes(),
            guid::SEV_ES_RESET_BLOCK,
        );
        let mut ht = 0x1_8000u32.to_le_bytes().to_vec();
        ht.extend_from_slice(&0xa8u32.to_le_bytes());
        entry(&mut table, &ht, guid::SEV_HASH_TABLE_RV);
        // Metadata offset from the end: computed once the total length is known.
        let tail = table.len() + 4 + ENTRY_TRAILER + ENTRY_TRAILER + RESET_AREA;
        let off = (img.len() + tail) as u32;
        entry(&mut table, &off.to_le_bytes(), guid::SEV_METADATA);
        let size = (table.len() + ENTRY_TRAILER) as u16;
        img.extend_from_slice(&table);
        img.extend_from_slice(&size.to_le_bytes());
        img.extend_from_slice(guid::FOOTER_TABLE.bytes());
        img.extend_from_slice(&[0xf4; RESET_AREA]);
        img
    }

    #[test]
    fn reads_entries_and_metadata() {
        let img = image();
        let t = FooterTable::parse(&img).unwrap();
        assert_eq!(t.hash_table().unwrap(), Some((0x1_8000, 0xa8)));
        assert_eq!(t.ap_reset_eip().unwrap(), Some(0xffff_f000));
        let s: Vec<_> = t.sections(&img).unwrap().iter().copied().collect();
        assert_eq!(
            s,
            [Section {
                gpa: 0x1_8000,
                size: 0x1000,
                kind: SectionKind::KernelHashes
            }]
        );
    }

    #[test]
    fn refuses_bad_tables_without_panicking() {
        let good = image();
        let n = good.len();
        assert_eq!(
            FooterTable::parse(&good[..40]).unwrap_err(),
            FooterError::TooShort
        );
        let mut no_footer = good.clone();
        no_footer[n - 40] ^= 1;
        assert_eq!(
            FooterTable::parse(&no_footer).unwrap_err(),
            FooterError::NoFooter
        );
        let mut huge = good.clone();
        huge[n - 50..n - 48].copy_from_slice(&0xffffu16.to_le_bytes());
        assert_eq!(
            FooterTable::parse(&huge).unwrap_err(),
            FooterError::BadTableSize
        );
        let mut bad_meta = good.clone();
        bad_meta[0] = b'X';
        let t = FooterTable::parse(&bad_meta).unwrap();
        assert_eq!(
            t.sections(&bad_meta).unwrap_err(),
            FooterError::BadMetadataHeader
        );
        let mut bad_kind = good.clone();
        bad_kind[24] = 0x77;
        let t = FooterTable::parse(&bad_kind).unwrap();
        assert_eq!(
            t.sections(&bad_kind).unwrap_err(),
            FooterError::UnknownSectionType(0x77)
        );
        // Every truncation and every single-byte corruption of the tail is an error
        // or a table, never a panic.
        for cut in 0..n {
            let _ = FooterTable::parse(&good[cut..]).map(|t| t.sections(&good[cut..]));
        }
        for i in n - 120..n {
            for v in [0u8, 0xff, 0x12] {
                let mut b = good.clone();
                b[i] = v;
                let _ = FooterTable::parse(&b).map(|t| t.sections(&b));
            }
        }
    }
}
