//! The kernel-hashes table: SHA-256 of the kernel file, the initrd and the command
//! line with its terminating NUL, in OVMF's SEV hashes-table layout (the layout QEMU
//! writes for `kernel-hashes=on` and `sev-snp-measure` reproduces):
//!
//! ```text
//! header GUID (16) | u16 length = 168 | cmdline entry | initrd entry | kernel entry
//! entry = GUID (16) | u16 length = 50 | SHA-256 (32)
//! ```
//! padded with zeros to 176 bytes (a multiple of 16).

use crate::guid::{self, Guid};

/// Bytes of one entry.
pub const ENTRY_LEN: usize = 16 + 2 + 32;
/// Bytes of the table (the header's length field).
pub const TABLE_LEN: usize = 16 + 2 + 3 * ENTRY_LEN;
/// Bytes of the table padded to 16.
pub const PADDED_LEN: usize = TABLE_LEN.div_ceil(16) * 16;

/// Why a hashes table was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashTableError {
    /// Fewer bytes than a table.
    Truncated,
    /// The header GUID is not the hashes-table GUID.
    BadHeaderGuid,
    /// The header's length is not 168.
    BadLength(u16),
    /// Entry `n` (0 cmdline, 1 initrd, 2 kernel) has the wrong GUID.
    BadEntryGuid(usize),
    /// Entry `n` has the wrong length.
    BadEntryLength(usize, u16),
}

impl core::fmt::Display for HashTableError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let name = |n: &usize| {
            ["cmdline", "initrd", "kernel"]
                .get(*n)
                .copied()
                .unwrap_or("?")
        };
        match self {
            HashTableError::Truncated => write!(f, "hashes table truncated"),
            HashTableError::BadHeaderGuid => write!(f, "hashes table header GUID is wrong"),
            HashTableError::BadLength(l) => {
                write!(f, "hashes table length is {l}, not {TABLE_LEN}")
            }
            HashTableError::BadEntryGuid(n) => {
                write!(f, "hashes table {} entry GUID is wrong", name(n))
            }
            HashTableError::BadEntryLength(n, l) => {
                write!(
                    f,
                    "hashes table {} entry length is {l}, not {ENTRY_LEN}",
                    name(n)
                )
            }
        }
    }
}

/// The three digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashesTable {
    /// SHA-256 of the kernel file (the whole bzImage).
    pub kernel: [u8; 32],
    /// SHA-256 of the initrd (of no bytes when there is none).
    pub initrd: [u8; 32],
    /// SHA-256 of the command line followed by one NUL.
    pub cmdline: [u8; 32],
}

const ENTRIES: [Guid; 3] = [guid::HASH_CMDLINE, guid::HASH_INITRD, guid::HASH_KERNEL];

impl HashesTable {
    /// The table's bytes, padded.
    pub fn to_bytes(&self) -> [u8; PADDED_LEN] {
        let mut out = [0u8; PADDED_LEN];
        out[..16].copy_from_slice(guid::HASH_TABLE_HEADER.bytes());
        out[16..18].copy_from_slice(&(TABLE_LEN as u16).to_le_bytes());
        for (i, (g, h)) in ENTRIES
            .iter()
            .zip([&self.cmdline, &self.initrd, &self.kernel])
            .enumerate()
        {
            let at = 18 + i * ENTRY_LEN;
            out[at..at + 16].copy_from_slice(g.bytes());
            out[at + 16..at + 18].copy_from_slice(&(ENTRY_LEN as u16).to_le_bytes());
            out[at + 18..at + ENTRY_LEN].copy_from_slice(h);
        }
        out
    }

    /// Reads and checks a table.
    pub fn parse(b: &[u8]) -> Result<Self, HashTableError> {
        let b = b.get(..TABLE_LEN).ok_or(HashTableError::Truncated)?;
        if b[..16] != guid::HASH_TABLE_HEADER.0 {
            return Err(HashTableError::BadHeaderGuid);
        }
        let len = u16::from_le_bytes([b[16], b[17]]);
        if usize::from(len) != TABLE_LEN {
            return Err(HashTableError::BadLength(len));
        }
        let mut hashes = [[0u8; 32]; 3];
        for (i, g) in ENTRIES.iter().enumerate() {
            let at = 18 + i * ENTRY_LEN;
            if b[at..at + 16] != g.0 {
                return Err(HashTableError::BadEntryGuid(i));
            }
            let l = u16::from_le_bytes([b[at + 16], b[at + 17]]);
            if usize::from(l) != ENTRY_LEN {
                return Err(HashTableError::BadEntryLength(i, l));
            }
            hashes[i].copy_from_slice(&b[at + 18..at + ENTRY_LEN]);
        }
        let [cmdline, initrd, kernel] = hashes;
        Ok(HashesTable {
            kernel,
            initrd,
            cmdline,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_each_bad_field() {
        let t = HashesTable {
            kernel: [1; 32],
            initrd: [2; 32],
            cmdline: [3; 32],
        };
        let b = t.to_bytes();
        assert_eq!((TABLE_LEN, PADDED_LEN), (168, 176));
        assert_eq!(HashesTable::parse(&b), Ok(t));
        assert_eq!(
            HashesTable::parse(&b[..100]),
            Err(HashTableError::Truncated)
        );
        let mut g = b;
        g[3] ^= 1;
        assert_eq!(HashesTable::parse(&g), Err(HashTableError::BadHeaderGuid));
        let mut l = b;
        l[16] = 0xa9;
        assert_eq!(HashesTable::parse(&l), Err(HashTableError::BadLength(0xa9)));
        let mut e = b;
        e[18 + 2 * ENTRY_LEN] ^= 1;
        assert_eq!(HashesTable::parse(&e), Err(HashTableError::BadEntryGuid(2)));
        let mut el = b;
        el[18 + ENTRY_LEN + 16] = 49;
        assert_eq!(
            HashesTable::parse(&el),
            Err(HashTableError::BadEntryLength(1, 49))
        );
    }
}
