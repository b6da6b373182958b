//! The boot-info page ([`crate::map::BOOT_INFO`]): where the VMM staged the kernel
//! file, the initrd and the command line, the RSDP, and the memory map. Nothing in it
//! is trusted by the firmware: every range is checked ([`crate::check`]), and what it
//! points to is accepted only when its SHA-256 matches the measured hashes table.
//!
//! ```text
//! 0    magic "BWFWBOOT"          8    u32 version = 1     12  u32 e820 count (<= 128)
//! 16   u64 kernel address        24   u64 kernel bytes
//! 32   u64 initrd address        40   u64 initrd bytes (0: none)
//! 48   u64 cmdline address       56   u64 cmdline bytes, with its NUL
//! 64   u64 RSDP address (0: no ACPI)
//! 128  e820 entries: u64 address, u64 size, u32 type (1 RAM), u32 zero; 24 bytes each
//! ```
//! All little-endian; everything else zero.

/// The page's magic.
pub const MAGIC: [u8; 8] = *b"BWFWBOOT";
/// The layout version.
pub const VERSION: u32 = 1;
/// Most e820 entries (the Linux zero page's limit).
pub const MAX_E820: usize = 128;
/// Where the entries start.
const E820_AT: usize = 128;
/// Bytes of one entry.
const E820_LEN: usize = 24;
/// Bytes of the page.
pub const LEN: usize = 4096;

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;

/// One memory-map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct E820 {
    /// First byte.
    pub addr: u64,
    /// Bytes.
    pub size: u64,
    /// Type (1 RAM, 2 reserved, ...).
    pub kind: u32,
}

/// A guest-physical range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Range {
    /// First byte.
    pub addr: u64,
    /// Bytes.
    pub len: u64,
}

impl Range {
    /// One past the last byte, or `None` when that overflows.
    pub fn end(&self) -> Option<u64> {
        self.addr.checked_add(self.len)
    }

    /// Whether the two ranges share a byte (empty ranges share none).
    pub fn overlaps(&self, other: &Range) -> bool {
        self.len > 0
            && other.len > 0
            && self.addr < other.addr.saturating_add(other.len)
            && other.addr < self.addr.saturating_add(self.len)
    }
}

/// The decoded page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootInfo {
    /// The kernel file (bzImage) as staged.
    pub kernel: Range,
    /// The initrd as staged (`len` 0: none).
    pub initrd: Range,
    /// The command line as staged, with its NUL.
    pub cmdline: Range,
    /// RSDP address (0: none).
    pub acpi_rsdp: u64,
    /// Memory map entries (the first `e820_count`).
    pub e820: [E820; MAX_E820],
    /// How many of `e820` are used.
    pub e820_count: usize,
}

/// Why a boot-info page was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootInfoError {
    /// Fewer than [`LEN`] bytes.
    Truncated,
    /// The magic is wrong.
    BadMagic,
    /// Another version.
    BadVersion(u32),
    /// More e820 entries than fit.
    TooManyE820(u32),
}

impl core::fmt::Display for BootInfoError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BootInfoError::Truncated => write!(f, "boot info truncated"),
            BootInfoError::BadMagic => write!(f, "boot info magic is not BWFWBOOT"),
            BootInfoError::BadVersion(v) => {
                write!(f, "boot info version {v}, this firmware reads {VERSION}")
            }
            BootInfoError::TooManyE820(n) => {
                write!(f, "boot info has {n} e820 entries, at most {MAX_E820}")
            }
        }
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]))
}

impl BootInfo {
    /// A page with these ranges and `e820` (at most [`MAX_E820`] entries are kept).
    pub fn new(
        kernel: Range,
        initrd: Range,
        cmdline: Range,
        acpi_rsdp: u64,
        e820: &[E820],
    ) -> Self {
        let mut table = [E820::default(); MAX_E820];
        let n = e820.len().min(MAX_E820);
        table[..n].copy_from_slice(&e820[..n]);
        BootInfo {
            kernel,
            initrd,
            cmdline,
            acpi_rsdp,
            e820: table,
            e820_count: n,
        }
    }

    /// The used e820 entries.
    pub fn e820(&self) -> &[E820] {
        &self.e820[..self.e820_count]
    }

    /// The page's bytes.
    pub fn to_bytes(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(self.e820_count as u32).to_le_bytes());
        for (i, r) in [self.kernel, self.initrd, self.cmdline].iter().enumerate() {
            b[16 + 16 * i..24 + 16 * i].copy_from_slice(&r.addr.to_le_bytes());
            b[24 + 16 * i..32 + 16 * i].copy_from_slice(&r.len.to_le_bytes());
        }
        b[64..72].copy_from_slice(&self.acpi_rsdp.to_le_bytes());
        for (i, e) in self.e820().iter().enumerate() {
            let at = E820_AT + i * E820_LEN;
            b[at..at + 8].copy_from_slice(&e.addr.to_le_bytes());
            b[at + 8..at + 16].copy_from_slice(&e.size.to_le_bytes());
            b[at + 16..at + 20].copy_from_slice(&e.kind.to_le_bytes());
        }
        b
    }

    /// Decodes a page (its ranges are checked later, against the memory map).
    pub fn parse(b: &[u8]) -> Result<Self, BootInfoError> {
        let b = b.get(..LEN).ok_or(BootInfoError::Truncated)?;
        if b[..8] != MAGIC {
            return Err(BootInfoError::BadMagic);
        }
        let version = u32_at(b, 8);
        if version != VERSION {
            return Err(BootInfoError::BadVersion(version));
        }
        let count = u32_at(b, 12);
        if count as usize > MAX_E820 {
            return Err(BootInfoError::TooManyE820(count));
        }
        let range = |i: usize| Range {
            addr: u64_at(b, 16 + 16 * i),
            len: u64_at(b, 24 + 16 * i),
        };
        let mut e820 = [E820::default(); MAX_E820];
        for (i, e) in e820.iter_mut().take(count as usize).enumerate() {
            let at = E820_AT + i * E820_LEN;
            *e = E820 {
                addr: u64_at(b, at),
                size: u64_at(b, at + 8),
                kind: u32_at(b, at + 16),
            };
        }
        Ok(BootInfo {
            kernel: range(0),
            initrd: range(1),
            cmdline: range(2),
            acpi_rsdp: u64_at(b, 64),
            e820,
            e820_count: count as usize,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_bad_headers() {
        let e = [
            E820 {
                addr: 0,
                size: 0x9fc00,
                kind: 1,
            },
            E820 {
                addr: 0x10_0000,
                size: 0x3f0_0000,
                kind: 1,
            },
        ];
        let r = |addr, len| Range { addr, len };
        let info = BootInfo::new(
            r(0x200_0000, 1000),
            r(0x300_0000, 5),
            r(0x3_0000, 12),
            0xe_0000,
            &e,
        );
        let b = info.to_bytes();
        assert_eq!(BootInfo::parse(&b), Ok(info));
        assert_eq!(BootInfo::parse(&b[..100]), Err(BootInfoError::Truncated));
        let mut m = b;
        m[0] = b'X';
        assert_eq!(BootInfo::parse(&m), Err(BootInfoError::BadMagic));
        let mut v = b;
        v[8] = 2;
        assert_eq!(BootInfo::parse(&v), Err(BootInfoError::BadVersion(2)));
        let mut c = b;
        c[12] = 200;
        assert_eq!(BootInfo::parse(&c), Err(BootInfoError::TooManyE820(200)));
    }
}
