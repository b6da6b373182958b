//! The command line: one module per subcommand.

mod build;
mod measure;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "bulwark-node-image",
    version,
    about = "Build, measure, install and update Bulwark node OS images"
)]
pub struct Cli {
    /// Print machine-readable JSON on stdout instead of human text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Assemble the UKI and build an unsigned node image bundle.
    Build(build::BuildArgs),
    /// Predict the PCRs the image determines, with the expected event log.
    Measure(measure::MeasureArgs),
    /// Verify a signed node image and write it to a disk (slot A).
    Install,
    /// Verify a signed node image and write it to the inactive slot, tried once.
    Update,
}

pub fn run(cli: Cli) -> ExitCode {
    let r: Result<(), bulwark_node_image::NodeImageError> = match cli.command {
        Command::Build(a) => build::run(a, cli.json),
        Command::Measure(a) => measure::run(a, cli.json),
        Command::Install => Err(bulwark_node_image::NodeImageError::NotImplemented(
            "node install",
        )),
        Command::Update => Err(bulwark_node_image::NodeImageError::NotImplemented(
            "node update",
        )),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulwark-node-image: {e}");
            ExitCode::from(2)
        }
    }
}
