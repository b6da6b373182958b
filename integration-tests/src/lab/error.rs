//! Errors of the lab runner: everything that stops a scenario from producing a verdict.

use std::io;
use std::path::PathBuf;

/// Why the lab could not run a scenario to a verdict.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Something the lab needs from the host is missing; `hint` says how to get it.
    #[error("lab prerequisite missing: {what}; {hint}")]
    Prerequisite { what: String, hint: String },
    /// A setting (an environment variable or a name given to the lab) is not valid.
    #[error("invalid {setting}: {reason}")]
    InvalidSetting { setting: String, reason: String },
    /// No scenario of that name exists.
    #[error("unknown lab scenario {name:?}; known scenarios: {known}")]
    UnknownScenario { name: String, known: String },
    /// A host command the lab runs failed.
    #[error("`{command}` failed ({status}):\n{output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
    /// A host command's output was not what the lab expected.
    #[error("unexpected output from `{command}`: {reason}")]
    UnexpectedOutput { command: String, reason: String },
    /// A kernel module the scenario needs is not in the kernel package.
    #[error("kernel module {module:?} (needed by {needed_by}) is neither a file under {tree} nor built in")]
    MissingModule {
        module: String,
        needed_by: String,
        tree: PathBuf,
    },
    /// A kernel module file is not a readable ELF object with a `.modinfo` section.
    #[error("cannot read module information from {path}: {reason}")]
    BadModule { path: PathBuf, reason: String },
    /// Module dependencies form a cycle (a broken kernel package).
    #[error("kernel module dependency cycle through {0:?}")]
    ModuleCycle(String),
    /// A file system operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl LabError {
    /// Wraps an I/O error with what the lab was doing.
    pub fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> LabError {
        let context = context.into();
        move |source| LabError::Io { context, source }
    }
}

/// Result of lab operations.
pub type Result<T, E = LabError> = std::result::Result<T, E>;
