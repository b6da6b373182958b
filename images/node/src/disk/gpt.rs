//! A GUID Partition Table, written and read by hand (UEFI 2.10 §5): a
//! protective MBR in LBA 0, the primary header in LBA 1 and its 128-entry
//! array in LBAs 2..34, the backup array and header in the last 33 LBAs.
//! Only 512-byte logical sectors.

use std::fmt;

/// Logical sector size this module writes and reads.
pub const SECTOR: u64 = 512;
/// Entries in the partition entry array (the minimum the spec allows).
const ENTRIES: u32 = 128;
/// Bytes per entry.
const ENTRY_LEN: usize = 128;
/// Sectors the entry array takes: 128 * 128 / 512.
const ARRAY_SECTORS: u64 = (ENTRIES as u64 * ENTRY_LEN as u64) / SECTOR;
/// Header size in bytes.
const HEADER_LEN: usize = 92;
const SIGNATURE: &[u8; 8] = b"EFI PART";
const REVISION: u32 = 0x0001_0000;

/// A GUID in its textual order (as printed by sfdisk, blkid).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// Parse `XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX`.
    pub fn parse(s: &str) -> Option<Guid> {
        let hex: String = s.chars().filter(|c| *c != '-').collect();
        if hex.len() != 32 || s.len() != 36 {
            return None;
        }
        let v = hex::decode(hex).ok()?;
        let mut g = [0u8; 16];
        g.copy_from_slice(&v);
        Some(Guid(g))
    }

    /// A random version 4 GUID from the kernel's generator.
    pub fn random() -> std::io::Result<Guid> {
        let mut g = [0u8; 16];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut g)?;
        g[6] = (g[6] & 0x0f) | 0x40;
        g[8] = (g[8] & 0x3f) | 0x80;
        Ok(Guid(g))
    }

    /// The on-disk form: the first three fields little-endian.
    pub fn to_disk(self) -> [u8; 16] {
        let g = self.0;
        let mut d = g;
        d[0..4].copy_from_slice(&[g[3], g[2], g[1], g[0]]);
        d[4..6].copy_from_slice(&[g[5], g[4]]);
        d[6..8].copy_from_slice(&[g[7], g[6]]);
        d
    }

    /// Inverse of [`Guid::to_disk`].
    pub fn from_disk(d: &[u8]) -> Guid {
        let mut g = [0u8; 16];
        g.copy_from_slice(&d[..16]);
        Guid(Guid(g).to_disk())
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = hex::encode_upper(self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// EFI system partition.
pub const ESP_TYPE: Guid = Guid([
    0xC1, 0x2A, 0x73, 0x28, 0xF8, 0x1F, 0x11, 0xD2, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B,
]);
/// Linux filesystem data.
pub const LINUX_FS_TYPE: Guid = Guid([
    0x0F, 0xC6, 0x3D, 0xAF, 0x84, 0x83, 0x47, 0x72, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4,
]);

/// One partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// Partition type.
    pub type_guid: Guid,
    /// Unique partition GUID (`PARTUUID`).
    pub unique_guid: Guid,
    /// First LBA.
    pub first_lba: u64,
    /// Last LBA, inclusive.
    pub last_lba: u64,
    /// Attribute bits.
    pub attributes: u64,
    /// Name (`PARTLABEL`), at most 36 UTF-16 code units.
    pub name: String,
}

impl Partition {
    /// Byte offset of the partition on the disk.
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * SECTOR
    }

    /// Never true for a parsed partition (first <= last).
    pub fn is_empty(&self) -> bool {
        self.last_lba < self.first_lba
    }
}

/// A partition table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gpt {
    /// Disk GUID.
    pub disk_guid: Guid,
    /// Disk size in sectors.
    pub sectors: u64,
    /// The used entries, in entry-array order.
    pub partitions: Vec<Partition>,
}

/// First LBA a partition may use.
pub const FIRST_USABLE: u64 = 2 + ARRAY_SECTORS;

/// Last LBA a partition may use on a disk of `sectors` sectors.
pub fn last_usable(sectors: u64) -> u64 {
    sectors - 2 - ARRAY_SECTORS
}

/// One of the writes that make up a table: bytes at a byte offset.
#[derive(Debug)]
pub struct Write {
    /// Byte offset on the disk.
    pub offset: u64,
    /// What to write there.
    pub bytes: Vec<u8>,
}

impl Gpt {
    /// The protective MBR, primary header + array, backup array + header.
    /// Fails if a partition is outside the usable range or entries overlap.
    pub fn encode(&self) -> Result<Vec<Write>, String> {
        if self.sectors < FIRST_USABLE + ARRAY_SECTORS + 2 {
            return Err(format!(
                "a disk of {} sectors is too small for a GPT",
                self.sectors
            ));
        }
        if self.partitions.len() > ENTRIES as usize {
            return Err("more than 128 partitions".into());
        }
        let last = last_usable(self.sectors);
        let mut sorted: Vec<&Partition> = self.partitions.iter().collect();
        sorted.sort_by_key(|p| p.first_lba);
        for (i, p) in sorted.iter().enumerate() {
            if p.first_lba < FIRST_USABLE || p.last_lba > last || p.first_lba > p.last_lba {
                return Err(format!(
                    "partition {:?} ({}..={}) outside the usable LBAs {}..={}",
                    p.name, p.first_lba, p.last_lba, FIRST_USABLE, last
                ));
            }
            if i > 0 && sorted[i - 1].last_lba >= p.first_lba {
                return Err(format!(
                    "partitions {:?} and {:?} overlap",
                    sorted[i - 1].name,
                    p.name
                ));
            }
        }
        let mut array = vec![0u8; ENTRIES as usize * ENTRY_LEN];
        for (i, p) in self.partitions.iter().enumerate() {
            let e = &mut array[i * ENTRY_LEN..(i + 1) * ENTRY_LEN];
            e[0..16].copy_from_slice(&p.type_guid.to_disk());
            e[16..32].copy_from_slice(&p.unique_guid.to_disk());
            e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
            e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
            e[48..56].copy_from_slice(&p.attributes.to_le_bytes());
            let units: Vec<u16> = p.name.encode_utf16().collect();
            if units.len() > 36 {
                return Err(format!(
                    "partition name {:?} longer than 36 UTF-16 units",
                    p.name
                ));
            }
            for (j, u) in units.iter().enumerate() {
                e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
            }
        }
        let array_crc = crc32fast::hash(&array);
        let backup_lba = self.sectors - 1;
        let backup_array_lba = backup_lba - ARRAY_SECTORS;
        let primary = self.header(1, backup_lba, 2, array_crc);
        let backup = self.header(backup_lba, 1, backup_array_lba, array_crc);

        let mut mbr = vec![0u8; SECTOR as usize];
        let pe = &mut mbr[446..462];
        pe[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
        pe[4] = 0xEE;
        pe[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
        pe[8..12].copy_from_slice(&1u32.to_le_bytes());
        let mbr_len = u32::try_from(self.sectors - 1).unwrap_or(u32::MAX);
        pe[12..16].copy_from_slice(&mbr_len.to_le_bytes());
        mbr[510] = 0x55;
        mbr[511] = 0xAA;

        let mut head = mbr;
        head.extend_from_slice(&primary);
        head.extend_from_slice(&array);
        let mut tail = array;
        tail.extend_from_slice(&backup);
        Ok(vec![
            Write {
                offset: 0,
                bytes: head,
            },
            Write {
                offset: backup_array_lba * SECTOR,
                bytes: tail,
            },
        ])
    }

    fn header(&self, my_lba: u64, alternate: u64, array_lba: u64, array_crc: u32) -> Vec<u8> {
        let mut h = vec![0u8; SECTOR as usize];
        h[0..8].copy_from_slice(SIGNATURE);
        h[8..12].copy_from_slice(&REVISION.to_le_bytes());
        h[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        h[24..32].copy_from_slice(&my_lba.to_le_bytes());
        h[32..40].copy_from_slice(&alternate.to_le_bytes());
        h[40..48].copy_from_slice(&FIRST_USABLE.to_le_bytes());
        h[48..56].copy_from_slice(&last_usable(self.sectors).to_le_bytes());
        h[56..72].copy_from_slice(&self.disk_guid.to_disk());
        h[72..80].copy_from_slice(&array_lba.to_le_bytes());
        h[80..84].copy_from_slice(&ENTRIES.to_le_bytes());
        h[84..88].copy_from_slice(&(ENTRY_LEN as u32).to_le_bytes());
        h[88..92].copy_from_slice(&array_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[..HEADER_LEN]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Parse a table from a disk of `sectors` sectors, reading with
    /// `read(offset, buf)`. The primary header is used if it is valid, else
    /// the backup; any inconsistency is an error naming what is wrong.
    pub fn read(
        sectors: u64,
        read: &mut dyn FnMut(u64, &mut [u8]) -> std::io::Result<()>,
    ) -> Result<Gpt, String> {
        if sectors < FIRST_USABLE + ARRAY_SECTORS + 2 {
            return Err(format!("{sectors} sectors: too small to hold a GPT"));
        }
        let primary = Self::read_at(sectors, 1, read);
        match primary {
            Ok(g) => Ok(g),
            Err(pe) => Self::read_at(sectors, sectors - 1, read)
                .map_err(|be| format!("no valid GPT: primary header: {pe}; backup header: {be}")),
        }
    }

    fn read_at(
        sectors: u64,
        lba: u64,
        read: &mut dyn FnMut(u64, &mut [u8]) -> std::io::Result<()>,
    ) -> Result<Gpt, String> {
        let mut h = vec![0u8; SECTOR as usize];
        read(lba * SECTOR, &mut h).map_err(|e| e.to_string())?;
        if &h[0..8] != SIGNATURE {
            return Err(format!("no \"EFI PART\" signature in LBA {lba}"));
        }
        let u32_at = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |b: &[u8], o: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(x)
        };
        let hlen = u32_at(&h, 12) as usize;
        if !(HEADER_LEN..=SECTOR as usize).contains(&hlen) {
            return Err(format!("header size {hlen} out of range"));
        }
        let stored = u32_at(&h, 16);
        let mut c = h[..hlen].to_vec();
        c[16..20].fill(0);
        if crc32fast::hash(&c) != stored {
            return Err("header CRC32 mismatch".into());
        }
        if u64_at(&h, 24) != lba {
            return Err(format!(
                "header in LBA {lba} says it is at LBA {}",
                u64_at(&h, 24)
            ));
        }
        let first = u64_at(&h, 40);
        let last = u64_at(&h, 48);
        if last >= sectors || first > last {
            return Err(format!(
                "usable LBAs {first}..={last} do not fit a disk of {sectors} sectors"
            ));
        }
        let array_lba = u64_at(&h, 72);
        let n = u32_at(&h, 80);
        let elen = u32_at(&h, 84) as usize;
        if !(128..=4096).contains(&elen) || !elen.is_multiple_of(8) || n == 0 || n > 1024 {
            return Err(format!(
                "entry array of {n} entries of {elen} bytes not supported"
            ));
        }
        let array_len = n as usize * elen;
        if array_lba
            .saturating_mul(SECTOR)
            .saturating_add(array_len as u64)
            > sectors * SECTOR
        {
            return Err("entry array beyond the end of the disk".into());
        }
        let mut array = vec![0u8; array_len];
        read(array_lba * SECTOR, &mut array).map_err(|e| e.to_string())?;
        if crc32fast::hash(&array) != u32_at(&h, 88) {
            return Err("entry array CRC32 mismatch".into());
        }
        let mut partitions = Vec::new();
        for e in array.chunks(elen) {
            if e[0..16].iter().all(|b| *b == 0) {
                continue;
            }
            let p = Partition {
                type_guid: Guid::from_disk(&e[0..16]),
                unique_guid: Guid::from_disk(&e[16..32]),
                first_lba: u64_at(e, 32),
                last_lba: u64_at(e, 40),
                attributes: u64_at(e, 48),
                name: {
                    let units: Vec<u16> = e[56..128]
                        .chunks(2)
                        .map(|c| u16::from_le_bytes([c[0], c[1]]))
                        .take_while(|u| *u != 0)
                        .collect();
                    String::from_utf16_lossy(&units)
                },
            };
            if p.first_lba < first || p.last_lba > last || p.first_lba > p.last_lba {
                return Err(format!(
                    "partition {:?} ({}..={}) outside the usable LBAs {first}..={last}",
                    p.name, p.first_lba, p.last_lba
                ));
            }
            partitions.push(p);
        }
        Ok(Gpt {
            disk_guid: Guid::from_disk(&h[56..72]),
            sectors,
            partitions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(sectors: u64) -> Gpt {
        Gpt {
            disk_guid: Guid::parse("11111111-2222-4333-8444-555555555555").unwrap(),
            sectors,
            partitions: vec![
                Partition {
                    type_guid: ESP_TYPE,
                    unique_guid: Guid::parse("AAAAAAAA-BBBB-4CCC-8DDD-EEEEEEEEEEEE").unwrap(),
                    first_lba: 2048,
                    last_lba: 4095,
                    attributes: 0,
                    name: "ESP".into(),
                },
                Partition {
                    type_guid: LINUX_FS_TYPE,
                    unique_guid: Guid::parse("01234567-89AB-4CDE-8F01-23456789ABCD").unwrap(),
                    first_lba: 4096,
                    last_lba: 6143,
                    attributes: 0,
                    name: "bulwark-state".into(),
                },
            ],
        }
    }

    fn disk_of(g: &Gpt) -> Vec<u8> {
        let mut d = vec![0u8; (g.sectors * SECTOR) as usize];
        for w in g.encode().unwrap() {
            d[w.offset as usize..w.offset as usize + w.bytes.len()].copy_from_slice(&w.bytes);
        }
        d
    }

    fn read(d: &[u8]) -> Result<Gpt, String> {
        Gpt::read(d.len() as u64 / SECTOR, &mut |o, b| {
            b.copy_from_slice(&d[o as usize..o as usize + b.len()]);
            Ok(())
        })
    }

    #[test]
    fn guid_text_and_disk_forms() {
        assert_eq!(ESP_TYPE.to_string(), "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        assert_eq!(
            Guid::parse("0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
            Some(LINUX_FS_TYPE)
        );
        assert_eq!(ESP_TYPE.to_disk()[0..4], [0x28, 0x73, 0x2A, 0xC1]);
        assert_eq!(Guid::from_disk(&ESP_TYPE.to_disk()), ESP_TYPE);
        assert_eq!(Guid::parse("nope"), None);
    }

    #[test]
    fn round_trip_and_backup_fallback() {
        let g = table(8192);
        let mut d = disk_of(&g);
        assert_eq!(read(&d).unwrap(), g);
        // Corrupt the primary header: the backup still reads.
        d[SECTOR as usize + 40] ^= 1;
        assert_eq!(read(&d).unwrap(), g);
        // Corrupt the backup too: a clear error.
        let end = d.len() - SECTOR as usize;
        d[end] ^= 1;
        let e = read(&d).unwrap_err();
        assert!(e.contains("primary header: header CRC32 mismatch"), "{e}");
        assert!(e.contains("backup header: no \"EFI PART\""), "{e}");
    }

    #[test]
    fn corrupt_array_and_garbage_are_errors() {
        let g = table(8192);
        let mut d = disk_of(&g);
        d[2 * SECTOR as usize + 40] ^= 1;
        let last = d.len() - 33 * SECTOR as usize + 40;
        d[last] ^= 1;
        assert!(read(&d).unwrap_err().contains("entry array CRC32 mismatch"));
        assert!(read(&vec![0xA5; 8192 * 512]).is_err());
        assert!(read(&[0u8; 512 * 10]).is_err());
    }

    #[test]
    fn refuses_overlap_and_out_of_range() {
        let mut g = table(8192);
        g.partitions[1].first_lba = 4000;
        assert!(g.encode().unwrap_err().contains("overlap"));
        let mut g = table(8192);
        g.partitions[1].last_lba = 8192 - 33;
        assert!(g.encode().unwrap_err().contains("outside"));
    }
}
