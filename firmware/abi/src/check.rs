//! What the firmware checks before it boots a kernel, as pure functions over numbers
//! and byte slices: the firmware calls them on guest memory, the host tests on
//! vectors. Order (see `docs/firmware.md`): [`check_ranges`] on the boot-info page,
//! then the hashes table ([`crate::hashes::HashesTable::parse`]), then
//! [`check_digest`] for the command line, the initrd and the kernel, then
//! [`KernelImage::parse`] and [`check_load`] on the now-verified kernel, then
//! [`zero_page`].

use sha2::{Digest, Sha256};

use crate::boot_info::{BootInfo, BootInfoError, Range, E820_RAM};
use crate::hashes::{HashTableError, HashesTable};
use crate::map;

/// Which staged component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The command line (with its NUL).
    Cmdline,
    /// The initrd.
    Initrd,
    /// The kernel file.
    Kernel,
}

impl Component {
    /// Its name in messages.
    pub const fn name(self) -> &'static str {
        match self {
            Component::Cmdline => "command line",
            Component::Initrd => "initrd",
            Component::Kernel => "kernel",
        }
    }
}

/// Why the firmware refuses to boot. Each kind has its own exit code, written to the
/// debug-exit port (`bulwark-vmm` exits with 16 + the code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The boot-info page is malformed.
    BootInfo(BootInfoError),
    /// A staged range is impossible: the component and what is wrong.
    Range(Component, &'static str),
    /// The hashes table is malformed.
    HashTable(HashTableError),
    /// A component's SHA-256 differs from the table's.
    Mismatch(Component),
    /// The kernel is not a bzImage this firmware can enter.
    KernelFormat(&'static str),
}

impl Refusal {
    /// The debug-exit code.
    pub const fn exit_code(&self) -> u8 {
        match self {
            Refusal::BootInfo(_) | Refusal::Range(..) => EXIT_BOOT_INFO,
            Refusal::HashTable(_) => EXIT_HASH_TABLE,
            Refusal::Mismatch(Component::Cmdline) => EXIT_CMDLINE_MISMATCH,
            Refusal::Mismatch(Component::Initrd) => EXIT_INITRD_MISMATCH,
            Refusal::Mismatch(Component::Kernel) => EXIT_KERNEL_MISMATCH,
            Refusal::KernelFormat(_) => EXIT_KERNEL_FORMAT,
        }
    }
}

impl core::fmt::Display for Refusal {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Refusal::BootInfo(e) => write!(f, "{e}"),
            Refusal::Range(c, why) => write!(f, "staged {}: {why}", c.name()),
            Refusal::HashTable(e) => write!(f, "{e}"),
            Refusal::Mismatch(c) => write!(
                f,
                "{} SHA-256 does not match the measured hashes table",
                c.name()
            ),
            Refusal::KernelFormat(why) => write!(f, "kernel: {why}"),
        }
    }
}

/// Exit code: the boot-info page or a staged range is bad.
pub const EXIT_BOOT_INFO: u8 = 0x30;
/// Exit code: the hashes table is bad.
pub const EXIT_HASH_TABLE: u8 = 0x31;
/// Exit code: the command line does not match.
pub const EXIT_CMDLINE_MISMATCH: u8 = 0x32;
/// Exit code: the initrd does not match.
pub const EXIT_INITRD_MISMATCH: u8 = 0x33;
/// Exit code: the kernel does not match.
pub const EXIT_KERNEL_MISMATCH: u8 = 0x34;
/// Exit code: the kernel is not an enterable bzImage.
pub const EXIT_KERNEL_FORMAT: u8 = 0x35;

/// Pages no staged component may touch: the firmware's own and the VMM's boot area.
const FIRMWARE_PAGES: [Range; 3] = [
    Range {
        addr: 0,
        len: map::LOW_AREA_END,
    },
    Range {
        addr: map::FIRMWARE_BASE,
        len: map::FIRMWARE_SIZE,
    },
    Range {
        addr: 0xe_0000,
        len: 0x2_0000,
    },
];

/// Whether `r` lies wholly inside one RAM entry of the memory map.
fn in_ram(info: &BootInfo, r: &Range) -> bool {
    let Some(end) = r.end() else { return false };
    info.e820().iter().any(|e| {
        e.kind == E820_RAM
            && e.addr <= r.addr
            && e.addr.checked_add(e.size).is_some_and(|ee| end <= ee)
    })
}

/// Checks the staged ranges: each inside RAM, none overlapping another or the
/// firmware's pages (the command line may sit in its staging window, below
/// [`map::LOW_AREA_END`]), the command line between 1 byte and [`map::CMDLINE_MAX`].
pub fn check_ranges(info: &BootInfo) -> Result<(), Refusal> {
    use Component::*;
    let staged = [
        (Kernel, info.kernel),
        (Initrd, info.initrd),
        (Cmdline, info.cmdline),
    ];
    if info.kernel.len == 0 {
        return Err(Refusal::Range(Kernel, "no kernel was staged"));
    }
    if info.cmdline.len == 0 || info.cmdline.len > map::CMDLINE_MAX {
        return Err(Refusal::Range(
            Cmdline,
            "length must be 1 to 65536 bytes (with its NUL)",
        ));
    }
    for (c, r) in staged {
        if r.len == 0 {
            continue;
        }
        if r.end().is_none() {
            return Err(Refusal::Range(c, "address + length overflows"));
        }
        if !in_ram(info, &r) {
            return Err(Refusal::Range(
                c,
                "not inside one RAM entry of the memory map",
            ));
        }
        let window = Range {
            addr: map::CMDLINE_STAGING,
            len: map::CMDLINE_MAX,
        };
        let allowed_low = c == Cmdline && window.addr <= r.addr && r.end() <= window.end();
        if !allowed_low && FIRMWARE_PAGES.iter().any(|f| f.overlaps(&r)) {
            return Err(Refusal::Range(
                c,
                "overlaps the firmware's pages or the boot area",
            ));
        }
    }
    for (i, (c, a)) in staged.iter().enumerate() {
        if staged[i + 1..].iter().any(|(_, b)| a.overlaps(b)) {
            return Err(Refusal::Range(*c, "overlaps another staged component"));
        }
    }
    Ok(())
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Compares `bytes` (as staged) with the table's digest for `c`. The command line
/// must also end in its one NUL.
pub fn check_digest(c: Component, bytes: &[u8], table: &HashesTable) -> Result<(), Refusal> {
    if c == Component::Cmdline {
        match bytes.iter().position(|&b| b == 0) {
            Some(p) if p + 1 == bytes.len() => {}
            _ => return Err(Refusal::Range(c, "must end in its only NUL byte")),
        }
    }
    let want = match c {
        Component::Cmdline => &table.cmdline,
        Component::Initrd => &table.initrd,
        Component::Kernel => &table.kernel,
    };
    if sha256(bytes) == *want {
        Ok(())
    } else {
        Err(Refusal::Mismatch(c))
    }
}

/// What the firmware needs of a bzImage's setup header (Linux boot protocol 2.12+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelImage {
    /// Bytes of the real-mode part (boot sector + setup sectors): the protected-mode
    /// part starts here in the file.
    pub setup_len: u64,
    /// Bytes of the protected-mode part.
    pub pm_len: u64,
    /// Bytes the kernel needs from its load address while it decompresses.
    pub init_size: u64,
    /// Bytes of setup header to copy into the zero page (from 0x1f1).
    pub header_len: usize,
}

/// Offset of the setup header in the file and in the zero page.
const HDR: usize = 0x1f1;
/// Where the setup header's slot in the zero page ends (`edd_mbr_sig_buffer` follows).
const ZERO_PAGE_HDR_END: usize = 0x290;

impl KernelImage {
    /// Reads the setup header of `kernel` (the whole verified file).
    pub fn parse(kernel: &[u8]) -> Result<Self, Refusal> {
        let bad = Refusal::KernelFormat;
        let get = |at: usize, n: usize| {
            kernel
                .get(at..at + n)
                .ok_or(bad("file shorter than its setup header"))
        };
        let u16_at = |at| get(at, 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        let u32_at = |at| get(at, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        if get(0x202, 4)? != b"HdrS" {
            return Err(bad("no HdrS setup header magic: not a bzImage"));
        }
        if u16_at(0x206)? < 0x020c {
            return Err(bad("boot protocol older than 2.12 has no 64-bit entry"));
        }
        if u16_at(0x236)? & 1 == 0 {
            return Err(bad("xloadflags lacks XLF_KERNEL_64 (no 64-bit entry)"));
        }
        if get(0x211, 1)?[0] & 1 == 0 {
            return Err(bad("loadflags lacks LOADED_HIGH"));
        }
        let sects = match get(HDR, 1)?[0] {
            0 => 4,
            n => u64::from(n),
        };
        let setup_len = (sects + 1) * 512;
        let pm_len = (kernel.len() as u64)
            .checked_sub(setup_len)
            .filter(|&l| l > 0)
            .ok_or(bad("file ends inside its setup sectors"))?;
        // The header runs to the end of the jump at 0x200 (0x202 + its offset byte)
        // and must fit its slot in the zero page, [0x1f1, 0x290).
        let header_len = 0x202 + usize::from(get(0x201, 1)?[0]) - HDR;
        if header_len > ZERO_PAGE_HDR_END - HDR {
            return Err(bad(
                "setup header runs past 0x290, its slot in the zero page",
            ));
        }
        get(HDR, header_len)?;
        let init_size = u64::from(u32_at(0x260)?).max(pm_len);
        Ok(KernelImage {
            setup_len,
            pm_len,
            init_size,
            header_len,
        })
    }

    /// Where the protected-mode part runs, with room to decompress.
    pub fn load_range(&self) -> Range {
        Range {
            addr: map::KERNEL_LOAD,
            len: self.init_size,
        }
    }

    /// The 64-bit entry point.
    pub const fn entry(&self) -> u64 {
        map::KERNEL_LOAD + 0x200
    }
}

/// Checks that the kernel's load range is RAM and touches no staged component (the
/// copy into it would otherwise overwrite what was verified).
pub fn check_load(info: &BootInfo, img: &KernelImage) -> Result<(), Refusal> {
    let load = img.load_range();
    if !in_ram(info, &load) {
        return Err(Refusal::KernelFormat(
            "load range is not inside one RAM entry",
        ));
    }
    if [info.kernel, info.initrd, info.cmdline]
        .iter()
        .any(|r| r.overlaps(&load))
    {
        return Err(Refusal::Range(
            Component::Kernel,
            "a staged component overlaps the kernel's load range (1 MiB + init_size)",
        ));
    }
    Ok(())
}

/// Builds the Linux zero page into `out` (boot protocol fields set by the loader).
pub fn zero_page(kernel: &[u8], img: &KernelImage, info: &BootInfo, out: &mut [u8; 4096]) {
    out.fill(0);
    out[HDR..HDR + img.header_len].copy_from_slice(&kernel[HDR..HDR + img.header_len]);
    let put32 =
        |out: &mut [u8; 4096], at: usize, v: u32| out[at..at + 4].copy_from_slice(&v.to_le_bytes());
    out[0x210] = 0xff; // type_of_loader: undefined
    put32(out, 0x214, map::KERNEL_LOAD as u32); // code32_start
    put32(out, 0x218, info.initrd.addr as u32); // ramdisk_image
    put32(out, 0x21c, info.initrd.len as u32); // ramdisk_size
    put32(out, 0x228, map::CMDLINE as u32); // cmd_line_ptr
    put32(out, 0x0c0, (info.initrd.addr >> 32) as u32); // ext_ramdisk_image
    put32(out, 0x0c4, (info.initrd.len >> 32) as u32); // ext_ramdisk_size
    out[0x070..0x078].copy_from_slice(&info.acpi_rsdp.to_le_bytes()); // acpi_rsdp_addr
    out[0x1e8] = info.e820_count as u8; // e820_entries
    for (i, e) in info.e820().iter().enumerate() {
        let at = 0x2d0 + 20 * i;
        out[at..at + 8].copy_from_slice(&e.addr.to_le_bytes());
        out[at + 8..at + 16].copy_from_slice(&e.size.to_le_bytes());
        put32(out, at + 16, e.kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot_info::E820;
    use std::vec::Vec;

    const MIB: u64 = 1 << 20;

    fn info(kernel: Range, initrd: Range, cmdline: Range) -> BootInfo {
        let e = [
            E820 {
                addr: 0,
                size: 0x9fc00,
                kind: 1,
            },
            E820 {
                addr: 0x9fc00,
                size: 0x6_0400,
                kind: 2,
            },
            E820 {
                addr: MIB,
                size: 63 * MIB,
                kind: 1,
            },
        ];
        BootInfo::new(kernel, initrd, cmdline, 0xe_0000, &e)
    }

    fn r(addr: u64, len: u64) -> Range {
        Range { addr, len }
    }

    fn good() -> BootInfo {
        info(
            r(40 * MIB, 2 * MIB),
            r(50 * MIB, MIB),
            r(map::CMDLINE_STAGING, 10),
        )
    }

    #[test]
    fn ranges_inside_ram_and_apart_are_accepted_and_others_refused() {
        assert_eq!(check_ranges(&good()), Ok(()));
        let cases = [
            (
                r(40 * MIB, 0),
                r(50 * MIB, 1),
                r(map::CMDLINE_STAGING, 1),
                "no kernel was staged",
            ),
            (
                r(40 * MIB, 1),
                r(0, 0),
                r(map::CMDLINE_STAGING, 0),
                "length must be 1",
            ),
            (
                r(u64::MAX - 5, 10),
                r(0, 0),
                r(map::CMDLINE_STAGING, 1),
                "overflows",
            ),
            (
                r(63 * MIB, 2 * MIB),
                r(0, 0),
                r(map::CMDLINE_STAGING, 1),
                "not inside one RAM",
            ),
            (
                r(0x9f000, 0x2000),
                r(0, 0),
                r(map::CMDLINE_STAGING, 1),
                "not inside one RAM",
            ),
            (
                r(0x5000, 0x1000),
                r(0, 0),
                r(map::CMDLINE_STAGING, 1),
                "overlaps the firmware",
            ),
            (
                r(40 * MIB, MIB),
                r(0, 0),
                r(map::HASHES_PAGE, 8),
                "overlaps the firmware",
            ),
            (
                r(40 * MIB, 2 * MIB),
                r(41 * MIB, MIB),
                r(map::CMDLINE_STAGING, 1),
                "overlaps another",
            ),
        ];
        for (k, i, c, want) in cases {
            match check_ranges(&info(k, i, c)) {
                Err(Refusal::Range(_, why)) => assert!(why.contains(want), "{why} vs {want}"),
                other => panic!("{k:?} {i:?} {c:?}: {other:?}"),
            }
        }
    }

    fn table(kernel: &[u8], initrd: &[u8], cmdline: &[u8]) -> HashesTable {
        HashesTable {
            kernel: sha256(kernel),
            initrd: sha256(initrd),
            cmdline: sha256(cmdline),
        }
    }

    #[test]
    fn digests_match_and_one_flipped_byte_is_refused_by_component() {
        let (k, i, c) = (
            std::vec![7u8; 5000],
            std::vec![9u8; 300],
            b"console=ttyS0\0".to_vec(),
        );
        let t = table(&k, &i, &c);
        for (comp, bytes) in [
            (Component::Kernel, &k),
            (Component::Initrd, &i),
            (Component::Cmdline, &c),
        ] {
            assert_eq!(check_digest(comp, bytes, &t), Ok(()));
            let mut bad = bytes.clone();
            bad[3] ^= 1;
            assert_eq!(check_digest(comp, &bad, &t), Err(Refusal::Mismatch(comp)));
            assert_eq!(
                Refusal::Mismatch(comp).exit_code(),
                match comp {
                    Component::Cmdline => 0x32,
                    Component::Initrd => 0x33,
                    Component::Kernel => 0x34,
                }
            );
        }
        assert!(matches!(
            check_digest(Component::Cmdline, b"a\0b\0", &t),
            Err(Refusal::Range(..))
        ));
        assert!(matches!(
            check_digest(Component::Cmdline, b"ab", &t),
            Err(Refusal::Range(..))
        ));
    }

    #[test]
    fn sha256_known_answers() {
        // FIPS 180-2 examples.
        let hex = |b: [u8; 32]| {
            b.iter()
                .map(|x| std::format!("{x:02x}"))
                .collect::<std::string::String>()
        };
        assert_eq!(
            hex(sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(sha256(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        let million_a = std::vec![b'a'; 1_000_000];
        assert_eq!(
            hex(sha256(&million_a)),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
    }

    /// A bzImage like the tiny guests' wrapper: one setup sector, protocol 2.15.
    fn bzimage(pm: usize) -> Vec<u8> {
        let mut k = std::vec![0u8; 1024];
        k[0x1f1] = 1;
        k[0x201] = 0x6a; // header runs to 0x26c
        k[0x202..0x206].copy_from_slice(b"HdrS");
        k[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        k[0x211] = 1;
        k[0x236] = 1;
        k[0x260..0x264].copy_from_slice(&(3 * MIB as u32).to_le_bytes());
        k.extend(std::iter::repeat_n(0x90, pm));
        k
    }

    #[test]
    fn bzimage_header_is_read_and_bad_ones_refused() {
        let k = bzimage(4096);
        let img = KernelImage::parse(&k).unwrap();
        assert_eq!(
            (img.setup_len, img.pm_len, img.init_size),
            (1024, 4096, 3 * MIB)
        );
        assert_eq!(img.entry(), 0x10_0200);
        for (at, v, want) in [
            (0x202, b'X', "HdrS"),
            (0x207, 0x01, "older than 2.12"),
            (0x236, 0, "XLF_KERNEL_64"),
            (0x211, 0, "LOADED_HIGH"),
        ] {
            let mut b = k.clone();
            b[at] = v;
            match KernelImage::parse(&b) {
                Err(Refusal::KernelFormat(why)) => assert!(why.contains(want), "{why}"),
                other => panic!("{other:?}"),
            }
        }
        let mut long = k.clone();
        long[0x201] = 0xa0;
        assert_eq!(
            KernelImage::parse(&long),
            Err(Refusal::KernelFormat(
                "setup header runs past 0x290, its slot in the zero page"
            ))
        );
        assert!(KernelImage::parse(&k[..1024]).is_err());
        assert!(KernelImage::parse(&k[..0x210]).is_err());
        for cut in 0..k.len() {
            let _ = KernelImage::parse(&k[..cut]);
        }
    }

    #[test]
    fn load_range_must_be_ram_and_clear_of_staged_components() {
        let img = KernelImage::parse(&bzimage(4096)).unwrap();
        assert_eq!(check_load(&good(), &img), Ok(()));
        let low = info(
            r(2 * MIB, 2 * MIB),
            r(50 * MIB, MIB),
            r(map::CMDLINE_STAGING, 10),
        );
        assert!(matches!(
            check_load(&low, &img),
            Err(Refusal::Range(Component::Kernel, _))
        ));
        let huge = KernelImage {
            init_size: 100 * MIB,
            ..img
        };
        assert!(matches!(
            check_load(&good(), &huge),
            Err(Refusal::KernelFormat(_))
        ));
    }

    #[test]
    fn zero_page_carries_header_cmdline_initrd_rsdp_and_e820() {
        let k = bzimage(4096);
        let img = KernelImage::parse(&k).unwrap();
        let mut zp = [0u8; 4096];
        zero_page(&k, &img, &good(), &mut zp);
        assert_eq!(&zp[0x202..0x206], b"HdrS");
        assert_eq!(zp[0x210], 0xff);
        assert_eq!(
            u32::from_le_bytes(zp[0x228..0x22c].try_into().unwrap()),
            0x2_0000
        );
        assert_eq!(
            u32::from_le_bytes(zp[0x218..0x21c].try_into().unwrap()),
            50 * MIB as u32
        );
        assert_eq!(
            u32::from_le_bytes(zp[0x21c..0x220].try_into().unwrap()),
            MIB as u32
        );
        assert_eq!(
            u64::from_le_bytes(zp[0x70..0x78].try_into().unwrap()),
            0xe_0000
        );
        assert_eq!(zp[0x1e8], 3);
        assert_eq!(
            u64::from_le_bytes(zp[0x2d0 + 40..0x2d0 + 48].try_into().unwrap()),
            MIB
        );
        assert_eq!(
            u32::from_le_bytes(zp[0x2d0 + 20 + 16..0x2d0 + 40].try_into().unwrap()),
            2
        );
    }
}
