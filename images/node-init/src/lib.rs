//! `bulwark-node-init`: PID 1 of a Bulwark node (docs/node-image.md, "The node's init
//! and booting it in the lab").
//!
//! It first leaves the initramfs for a tmpfs root (so that bulwarkd's VM jails can
//! `pivot_root`), mounts the kernel's filesystems, loads the node's kernel modules
//! (through `bulwark-kmod`, shared with the tenant VM's `bulwark-init`), brings up
//! loopback and the configured network interfaces (static IPv4), mounts the state
//! partition on `/var/lib/bulwark` (else a tmpfs, said loudly), refuses an image
//! below the anti-rollback floor on the ESP,
//! starts and supervises `bulwarkd`, prints `bulwark-node: healthy version=N` once
//! bulwarkd answers `GET /health`, then blesses the boot ([`bless::BootBlesser`]),
//! reaps orphans, and powers off on SIGTERM, SIGPWR or ctrl-alt-del.
//!
//! Modules: [`config`] (its JSON config), [`root`] (leaving the initramfs),
//! [`network`] (interfaces and default route), [`bless`] (boot blessing, efivarfs),
//! [`health`] (the health probe), [`rollback`] (the anti-rollback floor at boot), [`measurements`] (PCRs and event log on the console), [`state`] (finding the state partition), [`node`]
//! (the sequence and supervision). `unsafe` lives only in `net_sys` (the interface
//! and route ioctls) and `sys` (a child's signal mask).

#![deny(unsafe_code)]

pub mod bless;
pub mod config;
pub mod health;
pub mod measurements;
mod net_sys;
pub mod network;
pub mod node;
pub mod rollback;
pub mod root;
pub mod state;
mod sys;
