//! The fixed parts of the bundle file: the header page and where everything
//! else sits. See `docs/image-format.md` for the byte layout.
//!
//! ```text
//! 0x0000  header page        (4096 bytes)
//! 0x1000  signature page     (4096 bytes)
//! 0x2000  manifest           (manifest_len bytes, zero-padded to 4 KiB)
//! ....    components, each 4 KiB aligned and zero-padded, in manifest order;
//!         the rootfs is followed by its dm-verity hash tree
//! ```

use crate::error::ImageError;
use crate::manifest::MAX_MANIFEST_LEN;

/// Alignment of every region in the file.
pub const PAGE: u64 = 4096;
/// Magic bytes at offset 0.
pub const MAGIC: [u8; 8] = *b"BWKIMG\r\n";
/// The format version this code reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Offset of the signature page.
pub const SIGNATURE_PAGE_OFFSET: u64 = PAGE;
/// Offset of the manifest.
pub const MANIFEST_OFFSET: u64 = 2 * PAGE;

/// Round `n` up to a multiple of [`PAGE`] (saturating at the largest multiple).
pub fn align_up(n: u64) -> u64 {
    n.checked_add(PAGE - 1)
        .map_or(u64::MAX - (PAGE - 1), |v| v & !(PAGE - 1))
}

/// The decoded header page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Length of the manifest in bytes.
    pub manifest_len: u64,
    /// Length of the whole file in bytes.
    pub file_len: u64,
}

impl Header {
    /// Where the first component starts.
    pub fn data_start(&self) -> u64 {
        MANIFEST_OFFSET + align_up(self.manifest_len)
    }

    /// The 4096-byte header page.
    pub fn encode(&self) -> [u8; PAGE as usize] {
        let mut page = [0u8; PAGE as usize];
        page[0..8].copy_from_slice(&MAGIC);
        page[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        // 12..16: flags, zero.
        page[16..24].copy_from_slice(&self.manifest_len.to_le_bytes());
        page[24..32].copy_from_slice(&self.file_len.to_le_bytes());
        page
    }

    /// Parse and check a header page.
    pub fn decode(page: &[u8; PAGE as usize]) -> Result<Header, ImageError> {
        if page[0..8] != MAGIC {
            return Err(ImageError::Format(
                "not a Bulwark image bundle (bad magic)".into(),
            ));
        }
        let version = u32::from_le_bytes([page[8], page[9], page[10], page[11]]);
        if version != FORMAT_VERSION {
            return Err(ImageError::Format(format!(
                "format version {version} is not supported (expected {FORMAT_VERSION})"
            )));
        }
        let flags = u32::from_le_bytes([page[12], page[13], page[14], page[15]]);
        if flags != 0 {
            return Err(ImageError::Format(format!(
                "unknown header flags {flags:#x}"
            )));
        }
        let manifest_len = read_u64(&page[16..24]);
        let file_len = read_u64(&page[24..32]);
        if let Some(pos) = page[32..].iter().position(|&b| b != 0) {
            return Err(ImageError::Format(format!(
                "header byte {} is reserved and must be zero",
                32 + pos
            )));
        }
        if manifest_len == 0 {
            return Err(ImageError::Format("manifest length is zero".into()));
        }
        if manifest_len > MAX_MANIFEST_LEN {
            return Err(ImageError::ManifestTooLarge {
                len: manifest_len,
                max: MAX_MANIFEST_LEN,
            });
        }
        Ok(Header {
            manifest_len,
            file_len,
        })
    }
}

pub(crate) fn read_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn align_up_rounds_and_saturates() {
        assert_eq!(align_up(0), 0);
        assert_eq!(align_up(1), PAGE);
        assert_eq!(align_up(PAGE), PAGE);
        assert_eq!(align_up(PAGE + 1), 2 * PAGE);
        assert_eq!(align_up(u64::MAX), u64::MAX - (PAGE - 1));
    }

    #[test]
    fn header_round_trips_and_rejects_reserved_bytes() {
        let h = Header {
            manifest_len: 300,
            file_len: 5 * PAGE,
        };
        let mut page = h.encode();
        assert_eq!(Header::decode(&page).unwrap(), h);
        page[4000] = 1;
        assert!(matches!(Header::decode(&page), Err(ImageError::Format(_))));
    }
}
