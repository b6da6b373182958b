//! The command line: one module per subcommand.

mod build;
mod install;
mod measure;
mod update;

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
    Install(install::InstallArgs),
    /// Verify a signed node image and write it to the inactive slot, tried once.
    Update(update::UpdateArgs),
    /// Mark a slot good after it booted healthy (what the node's init does).
    Bless(update::BlessArgs),
    /// Show the slots, the next boot and the fallback, and the anti-rollback floor.
    Status(update::StatusArgs),
}

pub fn run(cli: Cli) -> ExitCode {
    let r: Result<(), bulwark_node_image::NodeImageError> = match cli.command {
        Command::Build(a) => build::run(a, cli.json),
        Command::Measure(a) => measure::run(a, cli.json),
        Command::Install(a) => install::run(&a, cli.json),
        Command::Update(a) => update::run(&a, cli.json),
        Command::Bless(a) => update::run_bless(&a, cli.json),
        Command::Status(a) => update::run_status(&a, cli.json),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = if e.is_refusal() { 1 } else { 2 };
            if cli.json {
                let out =
                    serde_json::json!({"ok": false, "refused": code == 1, "error": e.to_string()});
                println!("{out}");
            } else if code == 1 && !matches!(e, bulwark_node_image::NodeImageError::Refused(_)) {
                eprintln!("bulwark-node-image: refused: {e}");
            } else {
                eprintln!("bulwark-node-image: {e}");
            }
            ExitCode::from(code)
        }
    }
}
