//! Errors of the node image tools.

/// Everything that can go wrong building, measuring, installing or updating a
/// node image.
#[derive(Debug, thiserror::Error)]
pub enum NodeImageError {
    /// A node image bundle failed to verify or is malformed.
    #[error(transparent)]
    Image(#[from] bulwark_image::ImageError),
    /// I/O on a named path.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// A malformed or unsupported PE/COFF image.
    #[error("PE image: {0}")]
    Pe(String),
    /// A UKI could not be assembled from the inputs given.
    #[error("UKI: {0}")]
    Uki(String),
    /// A PCR prediction could not be made, or does not match the manifest.
    #[error("measure: {0}")]
    Measure(String),
    /// Bad input to a command (the message names it).
    #[error("{0}")]
    Invalid(String),
    /// The target disk or its contents (install, update, bless).
    #[error(transparent)]
    Disk(#[from] crate::disk::DiskError),
    /// An install or update refused for the reason given.
    #[error("refused: {0}")]
    Refused(String),
    /// A feature that is not built yet; the message says which.
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
}

impl NodeImageError {
    /// Whether this is a refusal (exit status 1: tampered, untrusted, rolled
    /// back, unsuitable disk) rather than a usage or I/O error (2).
    pub fn is_refusal(&self) -> bool {
        match self {
            NodeImageError::Image(e) => e.is_rejection(),
            NodeImageError::Disk(e) => e.is_refusal(),
            NodeImageError::Refused(_) => true,
            NodeImageError::Io { .. }
            | NodeImageError::NotImplemented(_)
            | NodeImageError::Pe(_)
            | NodeImageError::Uki(_)
            | NodeImageError::Measure(_)
            | NodeImageError::Invalid(_) => false,
        }
    }
}
