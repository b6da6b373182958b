//! GUIDs in their on-disk (EFI, little-endian first three fields) byte order.

/// A GUID as its 16 bytes in EFI order (`uuid.bytes_le` in Python terms).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// The GUID written `d1-d2-d3-d4[0..2]-d4[2..8]`.
    pub const fn new(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Self {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4],
            d4[5], d4[6], d4[7],
        ])
    }

    /// The 16 bytes as they sit in memory.
    pub const fn bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl core::fmt::Debug for Guid {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u16::from_le_bytes([b[4], b[5]]),
            u16::from_le_bytes([b[6], b[7]]),
            b[8],
            b[9],
            b[10],
            b[11],
            b[12],
            b[13],
            b[14],
            b[15]
        )
    }
}

/// The GUID closing OVMF's footer table (`96b582de-1fb2-45f7-baea-a366c55a082d`).
pub const FOOTER_TABLE: Guid = Guid::new(
    0x96b5_82de,
    0x1fb2,
    0x45f7,
    [0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d],
);
/// Footer entry: where the kernel-hashes table lies (`u32` GPA, `u32` size).
pub const SEV_HASH_TABLE_RV: Guid = Guid::new(
    0x7255_371f,
    0x3a3b,
    0x4b04,
    [0x92, 0x7b, 0x1d, 0xa6, 0xef, 0xa8, 0xd4, 0x54],
);
/// Footer entry: the SEV-ES AP reset block (`u32` AP reset EIP).
pub const SEV_ES_RESET_BLOCK: Guid = Guid::new(
    0x00f7_71de,
    0x1a7e,
    0x4fcb,
    [0x89, 0x0e, 0x68, 0xc7, 0x7e, 0x2f, 0xb4, 0x4e],
);
/// Footer entry: the SEV metadata (`u32` offset of its header from the image's end).
pub const SEV_METADATA: Guid = Guid::new(
    0xdc88_6566,
    0x984a,
    0x4798,
    [0xa7, 0x5e, 0x55, 0x85, 0xa7, 0xbf, 0x67, 0xcc],
);
/// Header of the kernel-hashes table.
pub const HASH_TABLE_HEADER: Guid = Guid::new(
    0x9438_d606,
    0x4f22,
    0x4cc9,
    [0xb4, 0x79, 0xa7, 0x93, 0xd4, 0x11, 0xfd, 0x21],
);
/// Hashes-table entry: the kernel file.
pub const HASH_KERNEL: Guid = Guid::new(
    0x4de7_9437,
    0xabd2,
    0x427f,
    [0xb8, 0x35, 0xd5, 0xb1, 0x72, 0xd2, 0x04, 0x5b],
);
/// Hashes-table entry: the initrd.
pub const HASH_INITRD: Guid = Guid::new(
    0x44ba_f731,
    0x3a2f,
    0x4bd7,
    [0x9a, 0xf1, 0x41, 0xe2, 0x91, 0x69, 0x78, 0x1d],
);
/// Hashes-table entry: the command line, with its terminating NUL.
pub const HASH_CMDLINE: Guid = Guid::new(
    0x97d0_2dd8,
    0xbd20,
    0x4c94,
    [0xaa, 0x78, 0xe7, 0x71, 0x4d, 0x36, 0xab, 0x2a],
);

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;

    #[test]
    fn guids_print_as_written_and_store_little_endian() {
        assert_eq!(
            format!("{FOOTER_TABLE:?}"),
            "96b582de-1fb2-45f7-baea-a366c55a082d"
        );
        assert_eq!(&FOOTER_TABLE.bytes()[..4], &[0xde, 0x82, 0xb5, 0x96]);
        assert_eq!(
            format!("{HASH_CMDLINE:?}"),
            "97d02dd8-bd20-4c94-aa78-e7714d36ab2a"
        );
    }
}
