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
    /// A feature that is not built yet; the message says which.
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
}
