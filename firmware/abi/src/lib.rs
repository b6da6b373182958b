//! The contract between `bulwark-vmm` and the Bulwark guest firmware
//! (`firmware/`), shared by both so that neither re-derives the other's layout.
//!
//! - [`map`]: where the firmware and its pages live in guest-physical memory.
//! - [`footer`]: the OVMF-compatible GUIDed footer table at the end of the firmware
//!   image and the SEV metadata it points to, the way `sev-snp-measure` and
//!   hypervisors read them.
//! - [`hashes`]: the kernel-hashes table (OVMF's SEV hashes-table layout: SHA-256 of
//!   the kernel, the initrd and the NUL-terminated command line).
//! - [`boot_info`]: the page in which the VMM tells the firmware where it staged the
//!   kernel, initrd and command line, and the memory map.
//! - [`check`]: what the firmware checks before it boots anything, as pure functions
//!   over byte slices, with the refusal codes it exits with.
//!
//! `no_std` and allocation-free: the firmware links this crate, and the host tests
//! run the very same functions. See `docs/firmware.md`.
#![no_std]

pub mod boot_info;
#[cfg(feature = "build")]
pub mod build;
pub mod check;
pub mod footer;
pub mod guid;
pub mod hashes;
pub mod map;
pub mod snp;

#[cfg(any(test, feature = "build"))]
extern crate std;
