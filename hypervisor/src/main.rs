//! The `bulwark-vmm` binary: boots one microVM from a config file and/or serves the
//! REST API on a Unix socket; `measure` prints the launch measurement without booting.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bulwark_vmm::boot_source::{read_inputs, StateUse};
use bulwark_vmm::config::VmConfig;
use bulwark_vmm::control::{status, ExitReason};
use bulwark_vmm::vm::{measure_offline, Vm};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "bulwark-vmm",
    version,
    about = "Bulwark microVM monitor (one process per VM)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// VM description (JSON, schema in hypervisor/openapi.yaml); the VM boots at once.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Serve the REST API on this Unix socket.
    #[arg(long)]
    api_sock: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the launch measurement for --config without booting (JSON).
    Measure {
        /// Also print the AMD SEV-SNP launch digest of the config's firmware boot
        /// (`machine.firmware`), as `sev-snp-measure --mode snp` computes it.
        #[arg(long)]
        snp: bool,
        /// The guest CPU model for --snp (QEMU's names: EPYC, EPYC-Rome, EPYC-Milan,
        /// EPYC-Genoa, EPYC-Turin, ...): its family/model/stepping is in each VMSA.
        #[arg(long, requires = "snp")]
        vcpu_type: Option<String>,
        /// SEV features for --snp (the VMSA's `sev_features`).
        #[arg(long, requires = "snp", default_value = "0x1", value_parser = parse_hex_u64)]
        guest_features: u64,
    },
}

fn parse_hex_u64(s: &str) -> Result<u64, String> {
    let digits = s.strip_prefix("0x").unwrap_or(s);
    u64::from_str_radix(digits, 16).map_err(|e| format!("{s:?}: {e} (hex, 0x optional)"))
}

/// What `measure --snp` asks for.
struct SnpRequest {
    vcpu_type: String,
    guest_features: u64,
}

fn snp_request(
    snp: bool,
    vcpu_type: Option<&str>,
    guest_features: u64,
) -> anyhow::Result<Option<SnpRequest>> {
    if !snp {
        return Ok(None);
    }
    let name = vcpu_type.ok_or_else(|| {
        anyhow::anyhow!(
            "--snp needs --vcpu-type (one of {})",
            bulwark_vmm::firmware_boot::snp_cpu_names()
        )
    })?;
    Ok(Some(SnpRequest {
        vcpu_type: name.to_string(),
        guest_features,
    }))
}

fn load_config(path: &PathBuf) -> anyhow::Result<VmConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    VmConfig::from_json(&text).with_context(|| format!("in {}", path.display()))
}

fn measure(path: &PathBuf, snp: Option<SnpRequest>) -> anyhow::Result<()> {
    let cfg = load_config(path)?;
    let inputs = read_inputs(&cfg, StateUse::CheckOnly)?;
    let plan = measure_offline(&cfg, &inputs)?;
    let mut out = serde_json::json!({
        "measurement": plan.measurement.value,
        "signed": inputs.origin.is_signed(),
        "boot_source": inputs.origin,
        "events": plan.measurement.events,
    });
    if let Some(req) = snp {
        let d = bulwark_vmm::firmware_boot::snp_launch_digest(
            &inputs,
            &plan,
            cfg.machine.vcpus,
            &req.vcpu_type,
            req.guest_features,
        )
        .map_err(|e| anyhow::anyhow!("--snp: {e}"))?;
        out["snp"] = serde_json::json!({
            "launch_digest": hex::encode(d.launch_digest),
            "vcpus": cfg.machine.vcpus,
            "vcpu_type": req.vcpu_type,
            "vcpu_signature": format!("{:#x}", d.vcpu_signature),
            "guest_features": format!("{:#x}", req.guest_features),
        });
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn boot(path: &PathBuf) -> anyhow::Result<ExitReason> {
    let cfg = load_config(path)?;
    let inputs = read_inputs(&cfg, StateUse::Record)?;
    let mut vm = Vm::build(&cfg, &inputs)?;
    // The kernel, initrd and firmware bytes are in guest memory now: free the copies
    // (tens of MB for a Linux kernel) rather than keep them for the VM's lifetime.
    drop(inputs);
    eprintln!("bulwark-vmm: launch measurement {}", vm.measurement().value);
    let control = vm.control();
    bulwark_vmm::signals::spawn_waiter(cfg.seccomp, move |_| {
        control.request_stop(ExitReason::Stopped)
    })
    .map_err(anyhow::Error::msg)?;
    vm.start()?;
    // From here on this thread only waits, kicks and tears down.
    bulwark_vmm::seccomp::install(
        cfg.seccomp,
        bulwark_vmm::seccomp::control_filter(cfg.seccomp)
            .map_err(anyhow::Error::msg)?
            .as_ref(),
    )
    .map_err(anyhow::Error::msg)?;
    Ok(vm.wait())
}

/// Logs to stderr, filtered by `BULWARK_LOG`: a level (`info`) and/or `target=level`
/// directives separated by commas (`warn,bulwark_vmm::vcpu=debug`); default `warn`.
/// `Targets` parses these without a regex engine (`EnvFilter` links one in, ~250 KiB
/// of code, a tenth of the binary's resident text).
fn init_logging() {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let default = || Targets::new().with_default(LevelFilter::WARN);
    let filter = match std::env::var("BULWARK_LOG") {
        Ok(s) => s.parse::<Targets>().unwrap_or_else(|e| {
            eprintln!("bulwark-vmm: ignoring BULWARK_LOG={s:?} ({e}); logging at warn");
            default()
        }),
        Err(_) => default(),
    };
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .init();
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    if let Err(e) = bulwark_vmm::signals::block_termination() {
        eprintln!("bulwark-vmm: error: {e}");
        return ExitCode::from(status::VMM_ERROR as u8);
    }
    let result = match (&cli.command, &cli.config, &cli.api_sock) {
        (
            Some(Command::Measure {
                snp,
                vcpu_type,
                guest_features,
            }),
            Some(c),
            _,
        ) => snp_request(*snp, vcpu_type.as_deref(), *guest_features)
            .and_then(|req| measure(c, req))
            .map(|()| ExitReason::Stopped),
        (Some(Command::Measure { .. }), None, _) => {
            Err(anyhow::anyhow!("measure needs --config FILE"))
        }
        (None, _, Some(sock)) => bulwark_vmm::api::serve(sock, cli.config.as_deref()),
        (None, Some(c), None) => boot(c),
        (None, None, None) => Err(anyhow::anyhow!("give --config FILE and/or --api-sock PATH")),
    };
    match result {
        Ok(reason) => {
            if reason != ExitReason::Stopped {
                eprintln!("bulwark-vmm: VM ended: {reason:?}");
            }
            ExitCode::from(reason.exit_status() as u8)
        }
        Err(e) => {
            eprintln!("bulwark-vmm: error: {e:#}");
            ExitCode::from(status::VMM_ERROR as u8)
        }
    }
}
