//! Bulwark's node agent (`bulwarkd`) and its CLI (`bulwarkctl`): the one privileged
//! service of a node. It owns the node's accelerators (inventory from sysfs, VFIO
//! enrolment of whole IOMMU groups), keeps them exclusive to one tenant at a time,
//! sanitizes them between uses, and provisions VMs by running one jailed
//! `bulwark-vmm` per VM, driven through that VMM's API socket. State lives in one
//! redb database and survives SIGKILL at any instant. See docs/agent.md.
//!
//! `unsafe` lives only in `jail_sys` (the VMM child's pre-exec jail), `pidfd_sys`
//! (registering a pidfd with the reactor) and `vfio_sys` (`VFIO_DEVICE_RESET`).

#![deny(unsafe_code)]

pub mod agent;
pub mod api;
pub mod client;
pub mod config;
pub mod crash;
pub mod db;
pub mod error;
pub mod guest;
pub mod images;
pub mod inventory;
#[allow(unsafe_code)]
pub mod jail_sys;
pub mod lifecycle;
pub mod metrics;
pub mod model;
pub mod node_update;
#[allow(unsafe_code)]
mod pidfd_sys;
pub mod ports;
pub mod sanitize;
pub mod tls;
#[allow(unsafe_code)]
mod vfio_sys;
pub mod vmm;
