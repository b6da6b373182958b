//! Every way an image bundle, a key or a state file can be refused.
//!
//! Each variant is a distinct, named reason so that callers (the CLI, the VMM,
//! tests) can tell "tampered" from "untrusted" from "rolled back" without
//! parsing strings.

use std::path::PathBuf;

use crate::manifest::ComponentKind;

/// Why an image operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The file is not a Bulwark image bundle, or its fixed-layout parts
    /// (header, signature page, padding) are malformed.
    #[error("malformed bundle: {0}")]
    Format(String),

    /// The file is shorter or longer than its own layout says.
    #[error("bundle is {actual} bytes long but its layout needs exactly {expected} bytes (truncated or extended)")]
    Length {
        /// Length the header and manifest imply.
        expected: u64,
        /// Length of the file.
        actual: u64,
    },

    /// The manifest is larger than the format allows.
    #[error("manifest is {len} bytes, over the limit of {max} bytes")]
    ManifestTooLarge {
        /// Declared manifest length.
        len: u64,
        /// The limit.
        max: u64,
    },

    /// The signed manifest names a field the format does not define.
    #[error("manifest has an unknown field: {0}")]
    UnknownField(String),

    /// The signed manifest repeats a field.
    #[error("manifest repeats a field: {0}")]
    DuplicateField(String),

    /// The manifest lists the same component twice.
    #[error("manifest lists the {0} component more than once")]
    DuplicateComponent(ComponentKind),

    /// The manifest is not valid (syntax, types, ranges, layout).
    #[error("invalid manifest: {0}")]
    Manifest(String),

    /// The manifest bytes are valid JSON but not in canonical form, so the
    /// signed bytes could be read two ways.
    #[error("manifest is not in canonical encoding (see docs/image-format.md)")]
    NonCanonical,

    /// A trusted key's signature does not verify over the manifest.
    #[error(
        "signature by trusted key {key_id} does not verify: the manifest or signature was altered"
    )]
    BadSignature {
        /// Hex key id of the key whose signature failed.
        key_id: String,
    },

    /// Fewer trusted keys signed than the threshold requires.
    #[error("{valid} valid signature(s) from trusted keys, {required} required{}", untrusted_note(.untrusted))]
    ThresholdNotMet {
        /// Valid signatures by distinct trusted keys.
        valid: usize,
        /// The threshold.
        required: usize,
        /// Key ids of signatures by keys that are not trusted.
        untrusted: Vec<String>,
    },

    /// A verification policy that can never be met or is unsafe.
    #[error("invalid trust policy: {0}")]
    Policy(String),

    /// A component's bytes do not match its signed SHA-384.
    #[error("{component} component does not match its signed SHA-384 digest")]
    DigestMismatch {
        /// Which component.
        component: ComponentKind,
    },

    /// The rootfs or its stored dm-verity tree does not match the signed root hash.
    #[error("rootfs dm-verity check failed: {0}")]
    Verity(String),

    /// The image is older than the policy or the state file allows.
    #[error("image {name:?} version {version} is older than the minimum {minimum} ({why}): rollback refused")]
    Rollback {
        /// Image name.
        name: String,
        /// Version in the bundle.
        version: u64,
        /// Lowest acceptable version.
        minimum: u64,
        /// Where the minimum came from.
        why: &'static str,
    },

    /// A key file could not be used.
    #[error("key {path}: {reason}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The rollback state file is malformed.
    #[error("state file {path}: {reason}")]
    State {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// Input for building a bundle is unacceptable.
    #[error("cannot build bundle: {0}")]
    Build(String),

    /// Signing failed.
    #[error("cannot sign: {0}")]
    Sign(String),
}

fn untrusted_note(untrusted: &[String]) -> String {
    if untrusted.is_empty() {
        String::new()
    } else {
        format!(
            "; signatures by untrusted key(s) ignored: {}",
            untrusted.join(", ")
        )
    }
}

impl ImageError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ImageError::Io {
            path: path.into(),
            source,
        }
    }

    /// Whether this error means the bundle itself was refused (tampered,
    /// untrusted, rolled back), as opposed to an I/O or usage problem.
    pub fn is_rejection(&self) -> bool {
        !matches!(
            self,
            ImageError::Io { .. }
                | ImageError::Key { .. }
                | ImageError::State { .. }
                | ImageError::Build(_)
                | ImageError::Sign(_)
                | ImageError::Policy(_)
        )
    }
}
