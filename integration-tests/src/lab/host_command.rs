//! Running host commands with errors that say what ran and what it printed.

use std::process::{Command, Output};

use super::error::{LabError, Result};

/// The command line of `cmd`, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs `cmd` to completion and returns its output; a failure to start or a
/// non-zero exit is an error carrying the command line and everything it printed.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let output = cmd.output().map_err(|e| LabError::Command {
        command: describe(cmd),
        status: "could not start".into(),
        output: e.to_string(),
    })?;
    if output.status.success() {
        Ok(output)
    } else {
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        Err(LabError::Command {
            command: describe(cmd),
            status: output.status.to_string(),
            output: text,
        })
    }
}

/// Runs `cmd` and returns its standard output as text.
pub fn stdout_of(cmd: &mut Command) -> Result<String> {
    let output = run(cmd)?;
    String::from_utf8(output.stdout).map_err(|_| LabError::UnexpectedOutput {
        command: describe(cmd),
        reason: "output is not UTF-8".into(),
    })
}

/// Whether `program` is an executable file on `PATH` (or, with a slash, at that path).
pub fn find_program(program: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.contains('/') {
        let p = std::path::PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}
