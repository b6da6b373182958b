//! Errors that stop a verification before any check can run: unreadable or
//! malformed input, bad arguments, paths that are not implemented. A check
//! that runs and fails is not an error: it is a failed [`crate::Check`].

/// Why evidence could not be verified at all (CLI exit status 2).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The input is malformed: truncated, wrong length, bad encoding.
    #[error("parse error: {0}")]
    Parse(String),
    /// An argument (policy value, time, trust anchor) is unusable.
    #[error("invalid argument: {0}")]
    Argument(String),
    /// The evidence uses a feature this verifier does not implement.
    #[error("not implemented: {0}")]
    NotImplemented(String),
}

impl Error {
    pub(crate) fn parse(msg: impl Into<String>) -> Self {
        Error::Parse(msg.into())
    }
}
