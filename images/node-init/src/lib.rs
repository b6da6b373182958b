//! `bulwark-node-init`: PID 1 of a Bulwark node (docs/node-image.md, "The node's init
//! and booting it in the lab").
//!
//! It mounts the kernel's filesystems, loads the node's kernel modules (through
//! `bulwark-kmod`, shared with the tenant VM's `bulwark-init`), brings up loopback,
//! mounts the state partition on `/var/lib/bulwark` (else a tmpfs, said loudly),
//! starts and supervises `bulwarkd`, prints `bulwark-node: healthy version=N` once
//! bulwarkd answers `GET /health`, then blesses the boot ([`bless::BootBlesser`]),
//! reaps orphans, and powers off on SIGTERM, SIGPWR or ctrl-alt-del.
//!
//! Modules: [`config`] (its JSON config), [`bless`] (boot blessing, efivarfs),
//! [`health`] (the health probe), [`measurements`] (PCRs and event log on the console), [`state`] (finding the state partition), [`node`]
//! (the sequence and supervision). `unsafe` lives only in `sys` (one ioctl).

#![deny(unsafe_code)]

pub mod bless;
pub mod config;
pub mod health;
pub mod measurements;
pub mod node;
pub mod state;
mod sys;
