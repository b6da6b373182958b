//! `bulwark-init`: PID 1 of a Bulwark tenant VM (`docs/guest-init.md`).
//!
//! It turns a freshly booted kernel into a verified, GPU-ready environment, runs the
//! tenant's workload, connects it to the outside only through the host channel
//! (virtio-vsock, `bulwark-guest-protocol`), and powers the VM off when the workload
//! ends. Every step's outcome is reported on the serial console and the host channel.
//!
//! Modules, one concern each: [`run`] (the sequence), [`pid1`] (mounts, reaping,
//! power-off), [`config`] (command line and config component), [`modules`] (loading
//! without kmod), [`verity`] (dm-verity through the device-mapper ioctls), [`scratch`] (the
//! dm-crypt scratch disk with a key made at boot), [`view`]
//! (the workload's filesystem view), [`devices`] (the passthrough devices
//! the config requires), [`gpu`] (GPU bring-up behind a trait),
//! [`channel`] (the host channel), [`stop`] (the stop request), [`bridge`] (vsock → TCP), [`workload`] (start,
//! output, end). `unsafe` lives only in [`sys`].

#![deny(unsafe_code)]

pub mod bridge;
pub mod channel;
pub mod config;
pub mod devices;
pub mod gpu;
/// The module loader, shared with the node's init (`bulwark-kmod`).
pub use bulwark_kmod as modules;
pub mod pid1;
pub mod run;
pub mod scratch;
pub mod stop;
#[allow(unsafe_code)]
pub mod sys;
pub mod verity;
pub mod view;
pub mod workload;
