//! Everything the firmware and the VMM parse from memory a host (or a guest) could
//! write: pseudo-random and mutated pages through every parser and check, which must
//! answer with a value or a refusal and never panic.

use bulwark_firmware_abi::boot_info::{BootInfo, Range, E820};
use bulwark_firmware_abi::check::{self, Component, KernelImage};
use bulwark_firmware_abi::footer::FooterTable;
use bulwark_firmware_abi::hashes::HashesTable;
use bulwark_firmware_abi::snp;

/// xorshift64: reproducible bytes without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fill(&mut self, b: &mut [u8]) {
        for x in b.iter_mut() {
            *x = self.next() as u8;
        }
    }
}

#[test]
fn random_and_mutated_boot_info_pages_are_refused_or_checked_without_panics() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let good = BootInfo::new(
        Range {
            addr: 40 << 20,
            len: 1 << 20,
        },
        Range {
            addr: 50 << 20,
            len: 4096,
        },
        Range {
            addr: 0x3_0000,
            len: 16,
        },
        0xe_0000,
        &[
            E820 {
                addr: 0,
                size: 0x9_fc00,
                kind: 1,
            },
            E820 {
                addr: 1 << 20,
                size: 63 << 20,
                kind: 1,
            },
        ],
    )
    .to_bytes();
    let mut accepted = 0;
    for round in 0..20_000 {
        let mut page = good;
        if round % 2 == 0 {
            // A few random bytes in the header, ranges and e820 area.
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() % 256) as usize;
                page[at] = rng.next() as u8;
            }
        } else {
            rng.fill(&mut page);
            page[..8].copy_from_slice(b"BWFWBOOT");
            page[8..12].copy_from_slice(&1u32.to_le_bytes());
            page[12] %= 130;
            page[13..16].fill(0);
        }
        if let Ok(info) = BootInfo::parse(&page) {
            if check::check_ranges(&info).is_ok() {
                accepted += 1;
                // Whatever passed must be inside RAM and apart, as promised.
                for r in [info.kernel, info.cmdline] {
                    assert!(r.len > 0 && r.end().is_some());
                }
                assert!(
                    !info.kernel.overlaps(&info.initrd) && !info.kernel.overlaps(&info.cmdline)
                );
            }
        }
    }
    assert!(
        accepted > 0,
        "the unmutated fields must still pass sometimes"
    );
}

#[test]
fn random_hashes_tables_kernels_and_firmware_images_never_panic() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let table = HashesTable {
        kernel: [1; 32],
        initrd: [2; 32],
        cmdline: [3; 32],
    }
    .to_bytes();
    for _ in 0..20_000 {
        let mut t = table;
        let at = (rng.next() % t.len() as u64) as usize;
        t[at] = rng.next() as u8;
        let _ = HashesTable::parse(&t);
        let _ = HashesTable::parse(&t[..(rng.next() % t.len() as u64) as usize]);
    }
    let mut kernel = vec![0u8; 2048];
    for _ in 0..5_000 {
        rng.fill(&mut kernel);
        kernel[0x202..0x206].copy_from_slice(b"HdrS");
        let cut = (rng.next() % kernel.len() as u64) as usize;
        if let Ok(img) = KernelImage::parse(&kernel[..cut]) {
            assert!(img.setup_len + img.pm_len == cut as u64 && img.init_size >= img.pm_len);
            let mut zp = [0u8; 4096];
            let info = BootInfo::new(Range::default(), Range::default(), Range::default(), 0, &[]);
            check::zero_page(&kernel[..cut], &img, &info, &mut zp);
        }
        let t = HashesTable {
            kernel: [0; 32],
            initrd: [0; 32],
            cmdline: [0; 32],
        };
        let _ = check::check_digest(Component::Cmdline, &kernel[..cut], &t);
    }
    let mut image = vec![0u8; 16 * 4096];
    for round in 0..300 {
        let tail = image.len() - 512;
        rng.fill(&mut image[tail..]);
        if round % 3 == 0 {
            // A footer GUID in place, the rest random.
            let n = image.len();
            image[n - 48..n - 32].copy_from_slice(bulwark_firmware_abi::guid::FOOTER_TABLE.bytes());
        }
        if let Ok(t) = FooterTable::parse(&image) {
            let _ = t.sections(&image);
            let _ = t.hash_table();
        }
        let _ = snp::launch_digest(&image, None, 1 + (round % 4), 0x00a0_0f11, 1);
    }
}
