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
    /// A feature that is not built yet; the message says which.
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
}
