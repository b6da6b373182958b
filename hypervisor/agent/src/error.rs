//! The one error type of bulwarkd's operations: what went wrong, which field of the
//! request it concerns, and the HTTP status it maps to.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Malformed or invalid request (400).
    BadRequest,
    /// Not authorized (403).
    Forbidden,
    /// No such object (404).
    NotFound,
    /// Would break exclusivity or is not possible in the current state (409).
    Conflict,
    /// The node cannot do it (e.g. no VFIO here) (422).
    Unprocessable,
    /// Not built yet (501).
    NotImplemented,
    /// Storage or host failure (500).
    Internal,
}

impl Kind {
    pub fn status(self) -> u16 {
        match self {
            Kind::BadRequest => 400,
            Kind::Forbidden => 403,
            Kind::NotFound => 404,
            Kind::Conflict => 409,
            Kind::Unprocessable => 422,
            Kind::NotImplemented => 501,
            Kind::Internal => 500,
        }
    }
}

/// An operation refused or failed; `field` names the request field (or `state`,
/// `storage`, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Error {
    pub kind: Kind,
    pub field: String,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl Error {
    pub fn new(kind: Kind, field: impl Into<String>, message: impl Into<String>) -> Error {
        Error {
            kind,
            field: field.into(),
            message: message.into(),
        }
    }
    pub fn bad(field: impl Into<String>, message: impl Into<String>) -> Error {
        Error::new(Kind::BadRequest, field, message)
    }
    pub fn conflict(field: impl Into<String>, message: impl Into<String>) -> Error {
        Error::new(Kind::Conflict, field, message)
    }
    pub fn not_found(field: impl Into<String>, message: impl Into<String>) -> Error {
        Error::new(Kind::NotFound, field, message)
    }
    pub fn internal(field: impl Into<String>, message: impl Into<String>) -> Error {
        Error::new(Kind::Internal, field, message)
    }
    pub fn not_implemented(field: impl Into<String>, message: impl Into<String>) -> Error {
        Error::new(Kind::NotImplemented, field, message)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Parses JSON into `T`; the error names the offending field by its path
/// (`gpus.count`, `signer_keys[0]`, a missing field by its own name, `body` for the
/// whole document).
pub fn parse_json<T: serde::de::DeserializeOwned>(text: &[u8]) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_slice(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.inner().to_string();
        // serde reports a missing field at its parent: name the field itself.
        let missing = msg
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next());
        let field = match (path.as_str(), missing) {
            (".", Some(m)) => m.to_string(),
            (p, Some(m)) => format!("{p}.{m}"),
            (".", None) => "body".into(),
            (p, None) => p.to_string(),
        };
        Error::bad(field, msg)
    })
}
