//! Bulwark tenant image bundles: one file with everything a guest boots from
//! (kernel, initrd, command line, guest-init config, a dm-verity protected
//! rootfs) and the signatures that vouch for it.
//!
//! The byte layout is specified in `docs/image-format.md`. The flow:
//! [`build`] writes an unsigned bundle, [`sign`] adds a signature in place,
//! [`Bundle::open`] parses one without trusting it and [`Bundle::verify`]
//! checks it against a [`TrustPolicy`], yielding a [`VerifiedBundle`] from
//! which the VMM reads components.

#![forbid(unsafe_code)]

mod atomic;
mod builder;
mod bundle;
mod error;
mod keys;
mod layout;
mod manifest;
mod signature;
mod source;
mod state;
mod verity;

pub use builder::{build, build_node, build_time, sign, BuildSpec, NodeBuildSpec};
pub use bundle::{Bundle, Progress, RootfsExtent, VerifiedBundle};
pub use error::ImageError;
pub use keys::{
    generate_key_pair, KeyId, PublicKey, SigningKey, PRIVATE_KEY_FILE, PUBLIC_KEY_FILE,
};
pub use layout::{MAGIC, PAGE};
pub use manifest::{
    validate_name, Component, ComponentKind, Integrity, Manifest, NodeInfo, FORMAT_ID,
    MAX_MANIFEST_LEN, MAX_PCR_INDEX,
};
pub use signature::{KeyFileError, Signature, TrustPolicy, MAX_SIGNATURES};
pub use source::{BundleSource, BytesSource, FileSource};
pub use state::RollbackState;
pub use verity::{VerityHash, VerityParams};
