//! `bulwarkd --state-dir DIR --api-sock PATH [--config FILE]`: the node agent, in the
//! foreground. `GET /health` answers 200 once the state is reconciled and the API is
//! up. SIGTERM/SIGINT stop it; running VMMs are left running and re-adopted at the
//! next start.

use std::path::PathBuf;
use std::process::ExitCode;

use bulwark_agent::agent::Agent;
use bulwark_agent::config::Config;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "bulwarkd", version, about = "Bulwark node agent")]
struct Cli {
    /// Directory of the state database (bulwarkd.db) and the VMs' files.
    #[arg(long)]
    state_dir: PathBuf,
    /// Unix socket of the REST API.
    #[arg(long)]
    api_sock: PathBuf,
    /// Configuration file (JSON; docs/agent.md).
    #[arg(long)]
    config: Option<PathBuf>,
    /// sysfs root (overrides the config; tests use a fake tree).
    #[arg(long)]
    sysfs_root: Option<PathBuf>,
    /// The bulwark-vmm binary (overrides the config).
    #[arg(long)]
    vmm_bin: Option<PathBuf>,
}

/// Logs to stderr, filtered by `BULWARK_LOG` (`info` by default).
fn init_logging() {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let default = || Targets::new().with_default(LevelFilter::INFO);
    let filter = match std::env::var("BULWARK_LOG") {
        Ok(s) => s.parse::<Targets>().unwrap_or_else(|e| {
            eprintln!("bulwarkd: ignoring BULWARK_LOG={s:?} ({e}); logging at info");
            default()
        }),
        Err(_) => default(),
    };
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .init();
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut cfg = match &cli.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(r) = cli.sysfs_root {
        cfg.sysfs_root = r;
    }
    if let Some(b) = cli.vmm_bin {
        cfg.vmm_bin = Some(b);
    }
    let operator_gid = cfg.operator_gid;
    // TLS files are checked before anything else starts.
    let tls = match &cfg.tls {
        Some(t) => Some((t.clone(), bulwark_agent::tls::server_config(t)?)),
        None => None,
    };
    let agent = Agent::open(&cli.state_dir, cfg)?;
    agent.reconcile().await?;
    let listener = bulwark_agent::api::bind(&cli.api_sock, operator_gid)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let tls_task = match tls {
        Some((t, server_cfg)) => {
            let tcp = bulwark_agent::tls::bind(&t).await?;
            tracing::info!(listen = %t.listen, "API over mutual TLS");
            let router = bulwark_agent::api::router(agent.clone());
            Some(tokio::spawn(bulwark_agent::tls::serve(
                tcp,
                server_cfg,
                router,
                stopped(stop_rx.clone()),
            )))
        }
        None => None,
    };
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut t), Ok(mut i)) => {
                tokio::select! {
                    _ = t.recv() => {}
                    _ = i.recv() => {}
                }
            }
            _ => std::future::pending::<()>().await,
        }
        tracing::info!("stopping; running VMMs are left running");
        let _ = stop_tx.send(true);
    });
    tracing::info!(sock = %cli.api_sock.display(), "bulwarkd ready");
    bulwark_agent::api::serve(listener, agent, stopped(stop_rx)).await?;
    if let Some(t) = tls_task {
        let _ = t.await;
    }
    let _ = std::fs::remove_file(&cli.api_sock);
    Ok(())
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bulwarkd: error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulwarkd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
