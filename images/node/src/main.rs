//! `bulwark-node-image`: build, measure, install and update Bulwark node OS
//! images. Exit status: 0 success, 1 refused (tampered, untrusted, rolled
//! back, unsuitable disk), 2 usage or I/O errors.

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    cli::run(cli::Cli::parse())
}
