//! Bulwark's integration-test bench.
//!
//! - [`lab`]: the host side. Fetches a Debian kernel and busybox, builds an L1
//!   initramfs, boots the lab machine (QEMU TCG with KVM, an IOMMU and VFIO devices)
//!   and turns a scenario's result lines into a verdict.
//! - [`probe`]: the programs that run inside the lab machine (L1), built statically
//!   for `x86_64-unknown-linux-musl`.
//! - [`guest_workload`]: what the `vmm-guest-init` workload writes and echoes, known
//!   to both the workload (in L2) and the host side (in L1).
//! - [`guest_atls`]: the host side of attested TLS for that workload's guest
//!   (evidence, a TCP relay, `bulwark-verify connect`), run in L1.
//! - [`result_line`]: the machine-readable lines a scenario prints on the serial
//!   console, shared by both sides.
//! - [`vmm_api`]: GET over bulwark-vmm's API socket, for the L1 programs.

pub mod guest_atls;
pub mod guest_workload;
pub mod inference;
pub mod lab;
pub mod probe;
pub mod result_line;
pub mod vmm_api;
