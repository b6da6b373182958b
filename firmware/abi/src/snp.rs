//! The AMD SEV-SNP launch digest (the `MEASUREMENT` of an attestation report) of a
//! firmware boot, computed the way the PSP computes it during `SNP_LAUNCH_UPDATE` and
//! the way `sev-snp-measure --mode snp` (VMM type QEMU) reproduces it.
//!
//! The digest is a chain of SHA-384 over one [`PAGE_INFO_LEN`]-byte `PAGE_INFO` per
//! page added to the guest (SEV-SNP firmware ABI, "Layout of the PAGE_INFO
//! structure"): the digest so far, the page's contents digest, the structure's length,
//! the page type, `is_imi`, the VMPL permissions and the page's GPA. A launch adds, in
//! order, the firmware image as normal pages ending at 4 GiB, each SEV metadata
//! section of the image ([`crate::footer`]), then one VMSA page per vCPU.
//!
//! `no_std` and allocation-free, like the rest of the crate.

use sha2::{Digest, Sha384};

use crate::footer::{FooterError, FooterTable, Section, SectionKind};
use crate::hashes::{self, HashesTable};

/// Bytes of a launch digest (SHA-384).
pub const DIGEST_LEN: usize = 48;
/// Bytes of a `PAGE_INFO` structure.
pub const PAGE_INFO_LEN: usize = 0x70;
/// Bytes of a guest page.
pub const PAGE_SIZE: usize = 0x1000;
/// The GPA a VMSA page is measured at: `u64::MAX` page-aligned, bits above 51 clear.
pub const VMSA_GPA: u64 = 0xFFFF_FFFF_F000;
/// The bootstrap processor's reset EIP.
pub const BSP_EIP: u32 = 0xffff_fff0;
/// Where the firmware image ends in guest-physical memory.
pub const FOUR_GIB: u64 = 1 << 32;
/// The guest features (`SEV_FEATURES` in the VMSA) `sev-snp-measure` defaults to:
/// `SNPActive` only.
pub const DEFAULT_GUEST_FEATURES: u64 = 0x1;

/// The type of a page added to an SNP guest at launch (`PAGE_INFO.PAGE_TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PageType {
    /// A page of data, measured by the SHA-384 of its contents.
    Normal = 1,
    /// A vCPU's VMSA page, measured at [`VMSA_GPA`].
    Vmsa = 2,
    /// A page of zeros.
    Zero = 3,
    /// A page whose contents are not measured.
    Unmeasured = 4,
    /// The secrets page.
    Secrets = 5,
    /// The CPUID page.
    Cpuid = 6,
}

/// Why a launch digest could not be computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnpError {
    /// The footer table or the SEV metadata was refused.
    Footer(FooterError),
    /// The image's length (given) is zero, not a multiple of 4096, or above 4 GiB.
    ImageSize(usize),
    /// Kernel hashes were given but the metadata has no `KERNEL_HASHES` section.
    NoKernelHashesSection,
    /// Kernel hashes were given but the footer table has no hash-table entry.
    NoHashTableEntry,
    /// More than one vCPU was asked for but the image declares no AP reset EIP.
    NoApResetEip,
    /// A section's GPA or size is not a multiple of 4096, or it ends above 4 GiB.
    UnalignedSection(Section),
    /// The `KERNEL_HASHES` section is not exactly one page (its size given).
    HashesSectionSize(u32),
    /// The hash table (at the GPA given) does not lie inside the `KERNEL_HASHES`
    /// section's page.
    HashTableOutsideSection(u32),
    /// No vCPUs.
    NoVcpus,
    /// Pages were added at a GPA or with a length that is not page-aligned, or that
    /// runs past the end of the guest-physical address space.
    Unaligned {
        /// The GPA.
        gpa: u64,
        /// The length in bytes.
        len: u64,
    },
}

impl From<FooterError> for SnpError {
    fn from(e: FooterError) -> Self {
        SnpError::Footer(e)
    }
}

impl core::fmt::Display for SnpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SnpError::Footer(e) => write!(f, "firmware image: {e}"),
            SnpError::ImageSize(n) => write!(
                f,
                "firmware image is {n} bytes: must be a non-zero multiple of 4096, at most 4 GiB"
            ),
            SnpError::NoKernelHashesSection => write!(
                f,
                "kernel hashes given but the SEV metadata has no KERNEL_HASHES section"
            ),
            SnpError::NoHashTableEntry => write!(
                f,
                "kernel hashes given but the footer table has no hash-table entry"
            ),
            SnpError::NoApResetEip => write!(
                f,
                "more than one vCPU but the footer table has no SEV-ES AP reset EIP"
            ),
            SnpError::UnalignedSection(s) => write!(
                f,
                "SEV metadata section {:?} at {:#x} size {:#x} is not page-aligned below 4 GiB",
                s.kind, s.gpa, s.size
            ),
            SnpError::HashesSectionSize(n) => {
                write!(f, "KERNEL_HASHES section is {n:#x} bytes, not one page")
            }
            SnpError::HashTableOutsideSection(gpa) => write!(
                f,
                "hash table at {gpa:#x} does not lie inside the KERNEL_HASHES page"
            ),
            SnpError::NoVcpus => write!(f, "no vCPUs"),
            SnpError::Unaligned { gpa, len } => {
                write!(f, "pages at {gpa:#x} length {len:#x} are not page-aligned")
            }
        }
    }
}

/// SHA-384 of `bytes`.
pub fn sha384(bytes: &[u8]) -> [u8; DIGEST_LEN] {
    Sha384::digest(bytes).into()
}

/// The `PAGE_INFO` structure hashed for one page: the digest so far, the contents
/// digest, the length `0x70`, the page type, `is_imi` 0, the VMPL3/2/1 permissions 0,
/// a reserved byte, then the GPA.
pub fn page_info(
    current: &[u8; DIGEST_LEN],
    contents: &[u8; DIGEST_LEN],
    page_type: PageType,
    gpa: u64,
) -> [u8; PAGE_INFO_LEN] {
    let mut p = [0u8; PAGE_INFO_LEN];
    p[..48].copy_from_slice(current);
    p[48..96].copy_from_slice(contents);
    p[96..98].copy_from_slice(&(PAGE_INFO_LEN as u16).to_le_bytes());
    p[98] = page_type as u8;
    // 99: is_imi; 100..103: VMPL3, VMPL2, VMPL1 permissions; 103: reserved.
    p[104..112].copy_from_slice(&gpa.to_le_bytes());
    p
}

/// A launch digest being built, page by page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchDigest {
    ld: [u8; DIGEST_LEN],
}

impl Default for LaunchDigest {
    fn default() -> Self {
        Self::new()
    }
}

fn check_range(gpa: u64, len: u64) -> Result<(), SnpError> {
    let page = PAGE_SIZE as u64;
    if !gpa.is_multiple_of(page) || !len.is_multiple_of(page) || gpa.checked_add(len).is_none() {
        return Err(SnpError::Unaligned { gpa, len });
    }
    Ok(())
}

impl LaunchDigest {
    /// A launch's starting digest: all zeros.
    pub const fn new() -> Self {
        LaunchDigest {
            ld: [0; DIGEST_LEN],
        }
    }

    /// Continues from `seed` (e.g. a precomputed digest of the firmware pages).
    pub const fn from_seed(seed: [u8; DIGEST_LEN]) -> Self {
        LaunchDigest { ld: seed }
    }

    /// The digest so far.
    pub const fn digest(&self) -> [u8; DIGEST_LEN] {
        self.ld
    }

    /// Adds one page of type `page_type` at `gpa` whose contents digest is
    /// `contents`.
    pub fn update(&mut self, page_type: PageType, gpa: u64, contents: &[u8; DIGEST_LEN]) {
        self.ld = sha384(&page_info(&self.ld, contents, page_type, gpa));
    }

    /// Adds `data` as normal pages from `gpa`.
    pub fn normal_pages(&mut self, gpa: u64, data: &[u8]) -> Result<(), SnpError> {
        check_range(gpa, data.len() as u64)?;
        for (i, page) in data.chunks_exact(PAGE_SIZE).enumerate() {
            self.update(
                PageType::Normal,
                gpa + (i * PAGE_SIZE) as u64,
                &sha384(page),
            );
        }
        Ok(())
    }

    /// Adds `len` bytes from `gpa` as pages of `page_type` with an all-zero contents
    /// digest (zero and unmeasured pages).
    fn empty_pages(&mut self, page_type: PageType, gpa: u64, len: u64) -> Result<(), SnpError> {
        check_range(gpa, len)?;
        let mut off = 0;
        while off < len {
            self.update(page_type, gpa + off, &[0; DIGEST_LEN]);
            off += PAGE_SIZE as u64;
        }
        Ok(())
    }

    /// Adds `len` bytes from `gpa` as zero pages.
    pub fn zero_pages(&mut self, gpa: u64, len: u64) -> Result<(), SnpError> {
        self.empty_pages(PageType::Zero, gpa, len)
    }

    /// Adds `len` bytes from `gpa` as unmeasured pages.
    pub fn unmeasured_pages(&mut self, gpa: u64, len: u64) -> Result<(), SnpError> {
        self.empty_pages(PageType::Unmeasured, gpa, len)
    }

    /// Adds the secrets page at `gpa`.
    pub fn secrets_page(&mut self, gpa: u64) {
        self.update(PageType::Secrets, gpa, &[0; DIGEST_LEN]);
    }

    /// Adds the CPUID page at `gpa`.
    pub fn cpuid_page(&mut self, gpa: u64) {
        self.update(PageType::Cpuid, gpa, &[0; DIGEST_LEN]);
    }

    /// Adds a vCPU's VMSA page.
    pub fn vmsa_page(&mut self, vmsa: &[u8; PAGE_SIZE]) {
        self.update(PageType::Vmsa, VMSA_GPA, &sha384(vmsa));
    }
}

/// Offsets of the fields [`vmsa_page`] sets in the SEV-ES save area (AMD APM vol. 2,
/// table B-4; the layout of Linux's `struct sev_es_save_area`).
pub mod vmsa {
    /// Bytes of one segment register (`u16` selector, `u16` attributes, `u32` limit,
    /// `u64` base).
    pub const SEG_LEN: usize = 16;
    /// ES segment.
    pub const ES: usize = 0x00;
    /// CS segment.
    pub const CS: usize = 0x10;
    /// SS segment.
    pub const SS: usize = 0x20;
    /// DS segment.
    pub const DS: usize = 0x30;
    /// FS segment.
    pub const FS: usize = 0x40;
    /// GS segment.
    pub const GS: usize = 0x50;
    /// GDTR.
    pub const GDTR: usize = 0x60;
    /// LDTR.
    pub const LDTR: usize = 0x70;
    /// IDTR.
    pub const IDTR: usize = 0x80;
    /// TR.
    pub const TR: usize = 0x90;
    /// EFER.
    pub const EFER: usize = 0xd0;
    /// CR4.
    pub const CR4: usize = 0x148;
    /// CR0.
    pub const CR0: usize = 0x158;
    /// DR7.
    pub const DR7: usize = 0x160;
    /// DR6.
    pub const DR6: usize = 0x168;
    /// RFLAGS.
    pub const RFLAGS: usize = 0x170;
    /// RIP.
    pub const RIP: usize = 0x178;
    /// The guest PAT MSR.
    pub const G_PAT: usize = 0x268;
    /// RDX.
    pub const RDX: usize = 0x310;
    /// `SEV_FEATURES`.
    pub const SEV_FEATURES: usize = 0x3b0;
    /// XCR0.
    pub const XCR0: usize = 0x3e8;
    /// MXCSR.
    pub const MXCSR: usize = 0x408;
    /// The x87 control word.
    pub const X87_FCW: usize = 0x410;
}

fn put(page: &mut [u8; PAGE_SIZE], at: usize, bytes: &[u8]) {
    page[at..at + bytes.len()].copy_from_slice(bytes);
}

fn put_seg(page: &mut [u8; PAGE_SIZE], at: usize, selector: u16, attrib: u16, base: u64) {
    put(page, at, &selector.to_le_bytes());
    put(page, at + 2, &attrib.to_le_bytes());
    put(page, at + 4, &0xffffu32.to_le_bytes());
    put(page, at + 8, &base.to_le_bytes());
}

/// The VMSA page of a vCPU at reset under QEMU/KVM, starting at `eip` (real mode:
/// CS base `eip & 0xffff0000`, RIP `eip & 0xffff`), with RDX = `vcpu_sig` and
/// `SEV_FEATURES` = `sev_features`.
pub fn vmsa_page(eip: u32, vcpu_sig: u32, sev_features: u64) -> [u8; PAGE_SIZE] {
    use vmsa::*;
    let mut p = [0u8; PAGE_SIZE];
    put_seg(&mut p, ES, 0, 0x93, 0);
    put_seg(&mut p, CS, 0xf000, 0x9b, u64::from(eip & 0xffff_0000));
    put_seg(&mut p, SS, 0, 0x93, 0);
    put_seg(&mut p, DS, 0, 0x93, 0);
    put_seg(&mut p, FS, 0, 0x93, 0);
    put_seg(&mut p, GS, 0, 0x93, 0);
    put_seg(&mut p, GDTR, 0, 0, 0);
    put_seg(&mut p, LDTR, 0, 0x82, 0);
    put_seg(&mut p, IDTR, 0, 0, 0);
    put_seg(&mut p, TR, 0, 0x8b, 0);
    // KVM sets EFER.SVME and CR4.MCE; CR0.ET is the reset value.
    put(&mut p, EFER, &0x1000u64.to_le_bytes());
    put(&mut p, CR4, &0x40u64.to_le_bytes());
    put(&mut p, CR0, &0x10u64.to_le_bytes());
    put(&mut p, DR7, &0x400u64.to_le_bytes());
    put(&mut p, DR6, &0xffff_0ff0u64.to_le_bytes());
    put(&mut p, RFLAGS, &0x2u64.to_le_bytes());
    put(&mut p, RIP, &u64::from(eip & 0xffff).to_le_bytes());
    // PAT MSR reset value (AMD APM vol. 2, section A.3).
    put(&mut p, G_PAT, &0x0007_0406_0007_0406u64.to_le_bytes());
    put(&mut p, RDX, &u64::from(vcpu_sig).to_le_bytes());
    put(&mut p, SEV_FEATURES, &sev_features.to_le_bytes());
    put(&mut p, XCR0, &0x1u64.to_le_bytes());
    put(&mut p, MXCSR, &0x1f80u32.to_le_bytes());
    put(&mut p, X87_FCW, &0x37fu16.to_le_bytes());
    p
}

/// The CPUID `Fn0000_0001_EAX` signature of an AMD CPU (AMD CPUID specification
/// #25481): stepping, model, family, extended model, extended family.
pub const fn vcpu_signature(family: u32, model: u32, stepping: u32) -> u32 {
    let (family_low, family_high) = if family > 0xf {
        (0xf, (family - 0xf) & 0xff)
    } else {
        (family, 0)
    };
    (family_high << 20)
        | (((model >> 4) & 0xf) << 16)
        | (family_low << 8)
        | ((model & 0xf) << 4)
        | (stepping & 0xf)
}

/// QEMU's named AMD EPYC CPU models and their signatures (the list `sev-snp-measure`
/// accepts for `--vcpu-type`).
pub const VCPU_TYPES: [(&str, u32); 16] = [
    ("EPYC", vcpu_signature(23, 1, 2)),
    ("EPYC-v1", vcpu_signature(23, 1, 2)),
    ("EPYC-v2", vcpu_signature(23, 1, 2)),
    ("EPYC-IBPB", vcpu_signature(23, 1, 2)),
    ("EPYC-v3", vcpu_signature(23, 1, 2)),
    ("EPYC-v4", vcpu_signature(23, 1, 2)),
    ("EPYC-Rome", vcpu_signature(23, 49, 0)),
    ("EPYC-Rome-v1", vcpu_signature(23, 49, 0)),
    ("EPYC-Rome-v2", vcpu_signature(23, 49, 0)),
    ("EPYC-Rome-v3", vcpu_signature(23, 49, 0)),
    ("EPYC-Milan", vcpu_signature(25, 1, 1)),
    ("EPYC-Milan-v1", vcpu_signature(25, 1, 1)),
    ("EPYC-Milan-v2", vcpu_signature(25, 1, 1)),
    ("EPYC-Genoa", vcpu_signature(25, 17, 0)),
    ("EPYC-Genoa-v1", vcpu_signature(25, 17, 0)),
    ("EPYC-Turin", vcpu_signature(26, 0, 0)),
];

/// The signature of a named CPU model from [`VCPU_TYPES`] (exact name).
pub fn vcpu_type_signature(name: &str) -> Option<u32> {
    VCPU_TYPES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

fn section_checked(s: &Section) -> Result<(), SnpError> {
    let page = PAGE_SIZE as u32;
    if !s.gpa.is_multiple_of(page)
        || !s.size.is_multiple_of(page)
        || u64::from(s.gpa) + u64::from(s.size) > FOUR_GIB
    {
        return Err(SnpError::UnalignedSection(*s));
    }
    Ok(())
}

/// The offset in the `KERNEL_HASHES` page `s` at which the hash table lies (at
/// `table_gpa`), checking that the whole padded table fits in the page.
fn table_offset(s: &Section, table_gpa: u32) -> Result<usize, SnpError> {
    if s.size as usize != PAGE_SIZE {
        return Err(SnpError::HashesSectionSize(s.size));
    }
    match table_gpa.checked_sub(s.gpa) {
        Some(off) if off as usize + hashes::PADDED_LEN <= PAGE_SIZE => Ok(off as usize),
        _ => Err(SnpError::HashTableOutsideSection(table_gpa)),
    }
}

/// The SNP launch digest of booting `firmware` (an OVMF-style image with a footer
/// table and SEV metadata, mapped to end at 4 GiB) with `vcpus` vCPUs of signature
/// `vcpu_sig` and `guest_features` as `SEV_FEATURES` (usually
/// [`DEFAULT_GUEST_FEATURES`]), and with the kernel-hashes table `hashes` in the
/// `KERNEL_HASHES` section when the kernel is measured by hash (QEMU
/// `kernel-hashes=on`). Equals `sev-snp-measure --mode snp` for VMM type QEMU.
pub fn launch_digest(
    firmware: &[u8],
    hashes: Option<&HashesTable>,
    vcpus: u32,
    vcpu_sig: u32,
    guest_features: u64,
) -> Result<[u8; DIGEST_LEN], SnpError> {
    if vcpus == 0 {
        return Err(SnpError::NoVcpus);
    }
    let len = firmware.len();
    if len == 0 || !len.is_multiple_of(PAGE_SIZE) || len as u64 > FOUR_GIB {
        return Err(SnpError::ImageSize(len));
    }
    let table = FooterTable::parse(firmware)?;
    let sections = table.sections(firmware)?;
    // An AP reset EIP of 0 means none (as in `sev-snp-measure`).
    let ap_eip = table.ap_reset_eip()?.filter(|&eip| eip != 0);
    if vcpus > 1 && ap_eip.is_none() {
        return Err(SnpError::NoApResetEip);
    }

    // Check everything before hashing anything.
    let mut table_gpa = None;
    if hashes.is_some() {
        table_gpa = Some(table.hash_table()?.ok_or(SnpError::NoHashTableEntry)?.0);
    }
    let mut have_hashes_section = false;
    for s in sections.iter() {
        section_checked(s)?;
        if s.kind == SectionKind::KernelHashes {
            have_hashes_section = true;
            if let Some(gpa) = table_gpa {
                table_offset(s, gpa)?;
            }
        }
    }
    if hashes.is_some() && !have_hashes_section {
        return Err(SnpError::NoKernelHashesSection);
    }

    let mut ld = LaunchDigest::new();
    ld.normal_pages(FOUR_GIB - len as u64, firmware)?;
    for s in sections.iter() {
        let (gpa, size) = (u64::from(s.gpa), u64::from(s.size));
        match (s.kind, hashes, table_gpa) {
            (SectionKind::SecMem | SectionKind::SvsmCaa, _, _) => ld.zero_pages(gpa, size)?,
            (SectionKind::Secrets, _, _) => ld.secrets_page(gpa),
            (SectionKind::Cpuid, _, _) => ld.cpuid_page(gpa),
            (SectionKind::KernelHashes, Some(h), Some(tgpa)) => {
                let off = table_offset(s, tgpa)?;
                let mut page = [0u8; PAGE_SIZE];
                page[off..off + hashes::PADDED_LEN].copy_from_slice(&h.to_bytes());
                ld.normal_pages(gpa, &page)?;
            }
            (SectionKind::KernelHashes, _, _) => ld.zero_pages(gpa, size)?,
        }
    }
    let bsp = vmsa_page(BSP_EIP, vcpu_sig, guest_features);
    ld.vmsa_page(&bsp);
    if let Some(eip) = ap_eip {
        let ap = vmsa_page(eip, vcpu_sig, guest_features);
        for _ in 1..vcpus {
            ld.vmsa_page(&ap);
        }
    }
    Ok(ld.digest())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::footer::{ENTRY_TRAILER, RESET_AREA};
    use crate::guid::{self, Guid};
    use std::vec::Vec;

    fn hex(b: &[u8]) -> std::string::String {
        b.iter().map(|x| std::format!("{x:02x}")).collect()
    }

    #[test]
    fn page_info_layout() {
        let p = page_info(
            &[0xaa; 48],
            &[0xbb; 48],
            PageType::Cpuid,
            0x1122_3344_5566_7788,
        );
        assert_eq!(&p[..48], &[0xaa; 48]);
        assert_eq!(&p[48..96], &[0xbb; 48]);
        assert_eq!(&p[96..104], &[0x70, 0, 6, 0, 0, 0, 0, 0]);
        assert_eq!(&p[104..], &[0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]);
        // One zero page at 0 from an all-zero digest: SHA-384 of that PAGE_INFO.
        let mut ld = LaunchDigest::new();
        ld.zero_pages(0, 0x1000).unwrap();
        assert_eq!(
            ld.digest(),
            sha384(&page_info(&[0; 48], &[0; 48], PageType::Zero, 0))
        );
        assert_eq!(
            hex(&sha384(b"abc")),
            "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed\
             8086072ba1e7cc2358baeca134c825a7"
        );
        assert_eq!(
            ld.normal_pages(0x1000, &[0; 100]),
            Err(SnpError::Unaligned {
                gpa: 0x1000,
                len: 100
            })
        );
        assert!(ld.zero_pages(0x800, 0x1000).is_err());
        assert!(ld.zero_pages(!0xfff, 0x2000).is_err());
    }

    #[test]
    fn vcpu_signatures_of_named_types() {
        assert_eq!(vcpu_type_signature("EPYC"), Some(0x0080_0f12));
        assert_eq!(vcpu_type_signature("EPYC-v4"), Some(0x0080_0f12));
        assert_eq!(vcpu_type_signature("EPYC-Rome"), Some(0x0083_0f10));
        assert_eq!(vcpu_type_signature("EPYC-Milan"), Some(0x00a0_0f11));
        assert_eq!(vcpu_type_signature("EPYC-Milan-v2"), Some(0x00a0_0f11));
        assert_eq!(vcpu_type_signature("EPYC-Genoa"), Some(0x00a1_0f10));
        assert_eq!(vcpu_type_signature("EPYC-Turin"), Some(0x00b0_0f00));
        assert_eq!(vcpu_type_signature("epyc"), None);
        assert_eq!(vcpu_signature(6, 0x55, 7), 0x0005_0657);
    }

    #[test]
    fn vmsa_fields_at_their_offsets() {
        let p = vmsa_page(0x0080_b004, 0x00a0_0f11, 1);
        assert_eq!(
            &p[0x10..0x20],
            &[0, 0xf0, 0x9b, 0, 0xff, 0xff, 0, 0, 0, 0, 0x80, 0, 0, 0, 0, 0]
        );
        assert_eq!(&p[0x178..0x180], &[0x04, 0xb0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&p[0x310..0x314], &[0x11, 0x0f, 0xa0, 0]);
        assert_eq!(p[0x3b0], 1);
        assert_eq!(&p[0x408..0x40c], &[0x80, 0x1f, 0, 0]);
        assert_eq!(&p[0x410..0x412], &[0x7f, 0x03]);
        assert!(p[0x420..].iter().all(|&b| b == 0));
    }

    fn entry(out: &mut Vec<u8>, data: &[u8], g: Guid) {
        out.extend_from_slice(data);
        out.extend_from_slice(&((data.len() + ENTRY_TRAILER) as u16).to_le_bytes());
        out.extend_from_slice(g.bytes());
    }

    /// A 16 KiB image whose metadata lists `sections` (gpa, size, type), with an AP
    /// reset block when `ap` and a hash-table entry at `table_gpa` when given.
    fn image(sections: &[(u32, u32, u32)], ap: bool, table_gpa: Option<u32>) -> Vec<u8> {
        let len = 0x4000;
        let meta_at = 0x1000;
        let mut img = std::vec![0x5au8; len];
        let mut m = Vec::new();
        m.extend_from_slice(b"ASEV");
        m.extend_from_slice(&((16 + 12 * sections.len()) as u32).to_le_bytes());
        m.extend_from_slice(&1u32.to_le_bytes());
        m.extend_from_slice(&(sections.len() as u32).to_le_bytes());
        for (g, s, t) in sections {
            for v in [g, s, t] {
                m.extend_from_slice(&v.to_le_bytes());
            }
        }
        img[meta_at..meta_at + m.len()].copy_from_slice(&m);
        let mut table = Vec::new();
        if ap {
            entry(
                &mut table,
                &0xffff_f000u32.to_le_bytes(),
                guid::SEV_ES_RESET_BLOCK,
            );
        }
        if let Some(t) = table_gpa {
            let mut d = t.to_le_bytes().to_vec();
            d.extend_from_slice(&0xa8u32.to_le_bytes());
            entry(&mut table, &d, guid::SEV_HASH_TABLE_RV);
        }
        entry(
            &mut table,
            &((len - meta_at) as u32).to_le_bytes(),
            guid::SEV_METADATA,
        );
        let size = (table.len() + ENTRY_TRAILER) as u16;
        let end = len - RESET_AREA;
        let footer = end - ENTRY_TRAILER;
        img[footer - table.len()..footer].copy_from_slice(&table);
        img[footer..footer + 2].copy_from_slice(&size.to_le_bytes());
        img[footer + 2..end].copy_from_slice(guid::FOOTER_TABLE.bytes());
        img
    }

    const GOOD: [(u32, u32, u32); 4] = [
        (0x7000, 0x1000, 1),
        (0x1_8000, 0x1000, 0x10),
        (0x1_9000, 0x1000, 2),
        (0x1_a000, 0x1000, 3),
    ];

    #[test]
    fn error_cases() {
        let h = HashesTable {
            kernel: [1; 32],
            initrd: [2; 32],
            cmdline: [3; 32],
        };
        let good = image(&GOOD, true, Some(0x1_8000));
        let sig = vcpu_signature(25, 1, 1);
        let ld = |img: &[u8], h: Option<&HashesTable>, n| launch_digest(img, h, n, sig, 1);
        assert!(ld(&good, Some(&h), 4).is_ok());
        assert!(ld(&good, None, 1).is_ok());
        assert_ne!(ld(&good, Some(&h), 1), ld(&good, None, 1));
        assert_eq!(ld(&good, None, 0), Err(SnpError::NoVcpus));
        assert_eq!(
            ld(&good[1..], None, 1),
            Err(SnpError::ImageSize(good.len() - 1))
        );
        assert_eq!(ld(&[], None, 1), Err(SnpError::ImageSize(0)));
        assert_eq!(
            ld(&good[0x2000..], None, 1),
            Err(SnpError::Footer(FooterError::BadMetadataOffset))
        );
        assert_eq!(
            ld(&[0; 0x1000], None, 1),
            Err(SnpError::Footer(FooterError::NoFooter))
        );
        let no_ap = image(&GOOD, false, Some(0x1_8000));
        assert!(ld(&no_ap, None, 1).is_ok());
        assert_eq!(ld(&no_ap, None, 2), Err(SnpError::NoApResetEip));
        let no_hs = image(&[GOOD[0], GOOD[2]], true, Some(0x1_8000));
        assert!(ld(&no_hs, None, 2).is_ok());
        assert_eq!(
            ld(&no_hs, Some(&h), 2),
            Err(SnpError::NoKernelHashesSection)
        );
        let no_entry = image(&GOOD, true, None);
        assert!(ld(&no_entry, None, 2).is_ok());
        assert_eq!(ld(&no_entry, Some(&h), 2), Err(SnpError::NoHashTableEntry));
        for bad in [
            (0x7800, 0x1000, 1),
            (0x7000, 0x1800, 1),
            (0xffff_f000, 0x2000, 1),
        ] {
            let img = image(&[bad], true, None);
            assert!(matches!(
                ld(&img, None, 1),
                Err(SnpError::UnalignedSection(_))
            ));
        }
        let big = image(&[(0x1_8000, 0x2000, 0x10)], true, Some(0x1_8000));
        assert!(ld(&big, None, 1).is_ok());
        assert_eq!(
            ld(&big, Some(&h), 1),
            Err(SnpError::HashesSectionSize(0x2000))
        );
        for t in [0x1_7ff0, 0x1_8f80, 0x1_9000] {
            let img = image(&GOOD, true, Some(t));
            assert_eq!(
                ld(&img, Some(&h), 1),
                Err(SnpError::HashTableOutsideSection(t))
            );
        }
        let last = image(&GOOD, true, Some(0x1_8f50));
        assert!(ld(&last, Some(&h), 1).is_ok());
        // Every message renders.
        let e = SnpError::UnalignedSection(Section {
            gpa: 1,
            size: 2,
            kind: SectionKind::SecMem,
        });
        assert!(std::format!("{e}").contains("SecMem"));
    }

    #[test]
    fn truncated_and_garbage_images_never_panic() {
        let h = HashesTable {
            kernel: [1; 32],
            initrd: [2; 32],
            cmdline: [3; 32],
        };
        let good = image(&GOOD, true, Some(0x1_8000));
        let n = good.len();
        for cut in (0..n).step_by(0x1000).chain([1, 17, n - 1]) {
            let _ = launch_digest(&good[cut..], Some(&h), 2, 0, 1);
            let _ = launch_digest(&good[..cut], None, 2, 0, 1);
        }
        // Corrupt the metadata (but not the high bytes of sizes, which would only make
        // valid, huge sections) and the footer table.
        let meta = (0x1000..0x1000 + 16 + 12 * GOOD.len())
            .filter(|&i| i < 0x1010 || (i - 0x1010) % 12 != 7);
        for i in meta.chain(n - 0x80..n) {
            for v in [0u8, 0xff, 0x12, 0x80] {
                let mut b = good.clone();
                b[i] = v;
                let _ = launch_digest(&b, Some(&h), 3, 0, 1);
                let _ = launch_digest(&b, None, 1, 0, 1);
            }
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let garbage: Vec<u8> = (0..0x3000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(launch_digest(&garbage, Some(&h), 2, 0, 1).is_err());
    }
}
