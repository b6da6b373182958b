//! Firmware boot (`machine.firmware`): instead of loading the kernel itself, the VMM
//! places the Bulwark guest firmware at the top of 4 GiB, stages the kernel file,
//! initrd and command line in guest RAM, writes their SHA-256 into the kernel-hashes
//! table and the staging addresses into the boot-info page, and starts the vCPU at the
//! reset vector. The firmware enters the kernel only if all three match the table.
//! The layout and the checks are `bulwark_firmware_abi`'s, the same code the firmware
//! runs, so a staging the firmware would refuse is refused here first. See
//! `docs/firmware.md`.

use bulwark_firmware_abi::boot_info::{BootInfo, Range, E820};
use bulwark_firmware_abi::check::{self, KernelImage};
use bulwark_firmware_abi::hashes::HashesTable;
use bulwark_firmware_abi::map;

use crate::boot::{BootError, EntryMode, EntryState, Writer};
use crate::config::ApStart;

/// Stages `kernel`, `initrd` and `cmdline` for `firmware` and measures every byte
/// written: blobs `firmware`, `firmware-hashes`, `firmware-boot-info`, `cmdline`,
/// `initrd`, `kernel-bzimage`, in that order. The vCPU starts in real mode at the reset
/// vector. Returns the entry state and the hashes table written.
pub(crate) fn stage(
    w: &mut Writer,
    firmware: &[u8],
    kernel: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &str,
    rsdp: Option<u64>,
) -> Result<(EntryState, HashesTable), BootError> {
    if kernel.starts_with(b"\x7fELF") {
        return Err(BootError::Kernel(
            "a firmware boot needs a bzImage (the firmware enters the kernel through the boot protocol's 64-bit entry); this is a vmlinux ELF".into(),
        ));
    }
    let image = KernelImage::parse(kernel)
        .map_err(|r| BootError::Kernel(format!("as the firmware reads it: {r}")))?;
    if cmdline.as_bytes().contains(&0) {
        return Err(BootError::Cmdline("must hold no NUL".into()));
    }
    let mut cl = cmdline.as_bytes().to_vec();
    cl.push(0);

    // The initrd at the top of low RAM (where a direct boot puts it), the kernel file
    // right below it.
    let initrd_bytes = initrd.unwrap_or_default();
    let initrd_len = initrd_bytes.len() as u64;
    let limit = w.boot.linux_initrd_limit;
    let initrd_at = limit
        .checked_sub(initrd_len)
        .map(|a| a & !(map::PAGE - 1))
        .ok_or_else(|| {
            BootError::Initrd(format!("{initrd_len} bytes do not fit below {limit:#x}"))
        })?;
    let kernel_at = initrd_at
        .checked_sub(kernel.len() as u64)
        .map(|a| a & !(map::PAGE - 1))
        .ok_or_else(|| BootError::Kernel("does not fit in guest RAM".into()))?;
    let e820: Vec<E820> = w
        .e820
        .iter()
        .map(|e| E820 {
            addr: e.addr,
            size: e.size,
            kind: e.kind.code(),
        })
        .collect();
    let info = BootInfo::new(
        Range {
            addr: kernel_at,
            len: kernel.len() as u64,
        },
        Range {
            addr: if initrd.is_some() { initrd_at } else { 0 },
            len: initrd_len,
        },
        Range {
            addr: map::CMDLINE_STAGING,
            len: cl.len() as u64,
        },
        rsdp.unwrap_or(0),
        &e820,
    );
    check::check_ranges(&info).map_err(|r| match r {
        check::Refusal::Range(check::Component::Cmdline, _) => BootError::Cmdline(format!(
            "must be shorter than {} bytes for a firmware boot",
            map::CMDLINE_MAX
        )),
        other => BootError::Kernel(format!("staging for the firmware: {other}")),
    })?;
    check::check_load(&info, &image).map_err(|r| {
        BootError::Kernel(format!(
            "guest RAM too small for a firmware boot: the kernel needs {:#x} bytes from {:#x} and the staged kernel and initrd must lie above that ({r})",
            image.init_size,
            map::KERNEL_LOAD
        ))
    })?;
    let table = HashesTable {
        kernel: check::sha256(kernel),
        initrd: check::sha256(initrd_bytes),
        cmdline: check::sha256(&cl),
    };

    w.put_firmware(firmware)?;
    w.put("firmware-hashes", map::HASH_TABLE, &table.to_bytes())?;
    w.put("firmware-boot-info", map::BOOT_INFO, &info.to_bytes())?;
    w.put("cmdline", map::CMDLINE_STAGING, &cl)?;
    if let Some(initrd) = initrd {
        w.put("initrd", initrd_at, initrd)?;
    }
    w.put("kernel-bzimage", kernel_at, kernel)?;
    let entry = EntryState {
        mode: EntryMode::Real,
        rip: map::RESET_VECTOR,
        rsp: 0,
        rsi: 0,
        rbx: 0,
        aps: ApStart::WaitForSipi,
    };
    Ok((entry, table))
}

/// Why the SEV-SNP launch digest of a boot cannot be computed.
#[derive(Debug, thiserror::Error)]
pub enum SnpDigestError {
    /// The guest CPU model is not one `bulwark_firmware_abi::snp::VCPU_TYPES` names.
    #[error("guest CPU model {0:?} is unknown (one of {names})", names = snp_cpu_names())]
    UnknownCpu(String),
    /// The boot does not go through the firmware.
    #[error("the VM configuration has no firmware boot (machine.firmware)")]
    NoFirmwareBoot,
    /// The firmware image or the table is unusable for SNP.
    #[error("SEV-SNP launch digest: {0}")]
    Digest(bulwark_firmware_abi::snp::SnpError),
}

/// The guest CPU models an SNP digest can be computed for, comma-separated.
pub fn snp_cpu_names() -> String {
    bulwark_firmware_abi::snp::VCPU_TYPES
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// An SNP launch digest and the vCPU signature it was computed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnpDigest {
    /// The launch digest (SHA-384).
    pub launch_digest: [u8; 48],
    /// The signature (family/model/stepping) of the CPU model, in each VMSA.
    pub vcpu_signature: u32,
}

/// The AMD SEV-SNP launch digest (the attestation report's `MEASUREMENT`) of this
/// firmware boot on `vcpus` vCPUs of the QEMU CPU model `vcpu_type`: the firmware
/// pages, its SEV metadata sections with the kernel-hashes page the boot wrote, and the
/// VMSAs (`bulwark_firmware_abi::snp`, checked against `sev-snp-measure`). The one
/// place `bulwark-vmm measure --snp` and `bulwark-verify predict --snp-vcpu-type` get it.
pub fn snp_launch_digest(
    inputs: &crate::boot_source::BootInputs,
    plan: &crate::boot::BootPlan,
    vcpus: u8,
    vcpu_type: &str,
    guest_features: u64,
) -> Result<SnpDigest, SnpDigestError> {
    let vcpu_signature = bulwark_firmware_abi::snp::vcpu_type_signature(vcpu_type)
        .ok_or_else(|| SnpDigestError::UnknownCpu(vcpu_type.to_string()))?;
    let (Some(firmware), Some(table)) = (inputs.firmware.as_deref(), plan.firmware_hashes.as_ref())
    else {
        return Err(SnpDigestError::NoFirmwareBoot);
    };
    let launch_digest = bulwark_firmware_abi::snp::launch_digest(
        firmware,
        Some(table),
        u32::from(vcpus),
        vcpu_signature,
        guest_features,
    )
    .map_err(SnpDigestError::Digest)?;
    Ok(SnpDigest {
        launch_digest,
        vcpu_signature,
    })
}
