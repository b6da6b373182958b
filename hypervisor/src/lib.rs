//! `bulwark-vmm`: the Bulwark microVM monitor on KVM, one process per VM.
//!
//! How a VM is born: [`config::VmConfig`] (from `--config` or the API) →
//! [`boot_source::read_boot_source`] (files, or a verified signed bundle) →
//! [`vm::Vm::build`] (KVM VM, memory per [`layout`], boot payload loaded and measured by
//! [`boot`], vCPUs configured with the [`cpuid`] policy) → [`vm::Vm::start`] (one thread
//! per vCPU, each under [`seccomp`]) → [`vm::Vm::wait`] (the guest or the operator ends it;
//! [`control::ExitReason`] gives the process exit status).

#![deny(unsafe_code)]

pub mod acpi;
pub mod api;
pub mod blob;
pub mod boot;
pub mod boot_source;
pub mod bus;
pub mod config;
pub mod console;
pub mod control;
pub mod cpuid;
pub mod devices;
pub mod firmware_boot;
pub mod initrd_config;
pub mod irq_routing;
pub mod layout;
pub mod measurement;
pub mod memory;
pub mod pci;
pub mod plan;
pub mod seccomp;
pub mod signals;
pub mod stream_load;
#[allow(unsafe_code)]
pub mod sys;
pub mod vcpu;
pub mod vfio;
pub mod virtio;
pub mod virtio_pci;
pub mod vm;
