//! Bulwark's node agent (`bulwarkd`) and its CLI (`bulwarkctl`): the one privileged
//! service of a node. It owns the node's accelerators (inventory from sysfs, VFIO
//! enrolment of whole IOMMU groups), keeps them exclusive to one tenant at a time,
//! sanitizes them between uses, and provisions VMs by running one jailed
//! `bulwark-vmm` per VM, driven through that VMM's API socket. State lives in one
//! redb database and survives SIGKILL at any instant. See docs/agent.md.

pub mod agent;
pub mod api;
pub mod client;
pub mod config;
pub mod crash;
pub mod db;
pub mod error;
pub mod inventory;
mod jail_sys;
pub mod lifecycle;
pub mod metrics;
pub mod model;
mod pidfd_sys;
pub mod sanitize;
mod vfio_sys;
pub mod vmm;
