//! `bulwark-lab`: runs lab scenarios by hand.
//!
//! ```text
//! cargo run -p bulwark-integration-tests --bin bulwark-lab -- list
//! cargo run -p bulwark-integration-tests --bin bulwark-lab -- run vfio-edu [--log]
//! ```

use std::process::ExitCode;

use bulwark_integration_tests::lab::{self, scenario, Lab};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    about = "Run Bulwark's lab scenarios (QEMU TCG machine with KVM, an IOMMU and VFIO devices)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the scenarios.
    List,
    /// Fetch the kernel and busybox into the cache (and check QEMU is there).
    Fetch,
    /// Run scenarios (all of them if none is named).
    Run {
        scenarios: Vec<String>,
        /// Print the whole L1 console log, not only on failure.
        #[arg(long)]
        log: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bulwark-lab: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> lab::Result<bool> {
    match cli.command {
        Command::List => {
            for s in lab::SCENARIOS {
                println!("{:<10} {}", s.name, s.summary);
            }
            for s in scenario::BENCHMARKS {
                println!("{:<10} (run by name only) {}", s.name, s.summary);
            }
            Ok(true)
        }
        Command::Fetch => {
            let start = std::time::Instant::now();
            Lab::open()?;
            println!(
                "lab ready in {:.1} s (cache {})",
                start.elapsed().as_secs_f64(),
                lab::cache_dir()?.display()
            );
            Ok(true)
        }
        Command::Run { scenarios, log } => {
            let selected = if scenarios.is_empty() {
                lab::SCENARIOS.iter().collect()
            } else {
                scenarios
                    .iter()
                    .map(|n| scenario::find(n))
                    .collect::<lab::Result<Vec<_>>>()?
            };
            let start = std::time::Instant::now();
            let lab = Lab::open()?;
            println!("lab ready in {:.1} s", start.elapsed().as_secs_f64());
            let mut all_passed = true;
            for s in selected {
                let run = lab.run(s)?;
                if log || !run.passed() {
                    println!("{}", run.failure_report());
                } else {
                    println!("{}", run.summary());
                }
                all_passed &= run.passed();
            }
            Ok(all_passed)
        }
    }
}
