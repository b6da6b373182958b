//! The Bulwark node OS image (`docs/node-image.md`): what the provider installs
//! on a GPU server's disk and what a TPM proves booted.
//!
//! - `pe`: PE/COFF reading, section placement and the Authenticode digest.
//! - `uki`: Unified Kernel Image assembly on systemd's stub.
//! - `measure`: offline prediction of the PCRs the image determines, with the
//!   expected event log.
//! - `disk`: the GPT disk layout (EFI system partition with slots A and B,
//!   state partition).
//! - `install`: verify a signed node image, then write it to a disk or the
//!   inactive slot, with boot counting and anti-rollback.
//! - `booted`: which signed node image booted, from its slot's manifest kept
//!   on the ESP and systemd-boot's `LoaderEntrySelected`.

pub mod booted;
pub mod build;
pub mod error;
pub mod measure;
pub mod pe;
pub mod uki;
pub use error::NodeImageError;
pub mod disk;
pub mod install;
pub mod provision;
