//! The confidential-inference service (`docs/confidential-inference.md`). It runs
//! inside the tenant's VM as bulwark-init's workload, unprivileged, from the read-only,
//! dm-verity-checked rootfs, and is reached only through bulwark-init's attested-TLS
//! bridge.
//!
//! ```text
//! demo-inference serve --weights PATH --listen 127.0.0.1:PORT [--connections N]
//!                      [--journal DEVICE]
//! ```
//!
//! Loads the sealed weights (ciphertext only; the header is checked, nothing is
//! decrypted), then for each TCP connection reads one JSON request to EOF (at most
//! 1 MiB, within 30 s), opens the weights with the request's key, answers one JSON
//! line, closes, and drops (zeroizes) the key and the plaintext weights. One log line
//! per connection on stderr, never a secret. With `--connections N` it exits 0 after
//! N connections; without, it serves until killed. With `--journal DEVICE` (in the
//! VM, `/dev/scratch`: the scratch disk bulwark-init encrypts with a key made at boot)
//! it keeps each request and its answer there (`ScratchJournal`). Exit 2 on usage or
//! I/O errors.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;

use bulwark_integration_tests::inference::{parse_header, serve, ScratchJournal, MAX_DIM};

const USAGE: &str = "usage: demo-inference serve --weights PATH --listen 127.0.0.1:PORT [--connections N] [--journal DEVICE]";

struct Args {
    weights: String,
    listen: SocketAddr,
    connections: Option<u64>,
    journal: Option<String>,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let (cmd, rest) = args.split_first().ok_or("missing command")?;
    if cmd != "serve" {
        return Err(format!("unknown command {cmd:?}"));
    }
    let (mut weights, mut listen, mut connections, mut journal) = (None, None, None, None);
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--weights" => weights = Some(value.clone()),
            "--journal" => journal = Some(value.clone()),
            "--listen" => {
                listen = Some(
                    value
                        .parse::<SocketAddr>()
                        .map_err(|e| format!("--listen {value:?}: {e}"))?,
                )
            }
            "--connections" => {
                connections = Some(
                    value
                        .parse::<u64>()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| format!("--connections {value:?}: a positive integer"))?,
                )
            }
            _ => return Err(format!("unknown option {flag:?}")),
        }
    }
    Ok(Args {
        weights: weights.ok_or("--weights is required")?,
        listen: listen.ok_or("--listen is required")?,
        connections,
        journal,
    })
}

/// Reads the sealed weights, bounded (a model of MAX_DIM inputs is about 8 KiB).
fn read_weights(path: &str) -> Result<Vec<u8>, String> {
    let limit = (MAX_DIM as u64 + 64) * 8;
    let mut file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let mut bytes = Vec::new();
    file.by_ref()
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{path}: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(format!("{path}: larger than {limit} bytes"));
    }
    parse_header(&bytes).map_err(|e| format!("{path}: {e}"))?;
    Ok(bytes)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("demo-inference: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let weights = match read_weights(&args.weights) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("demo-inference: {e}");
            return ExitCode::from(2);
        }
    };
    let mut journal = match args
        .journal
        .as_deref()
        .map(|p| ScratchJournal::open(p.as_ref()))
    {
        None => None,
        Some(Ok(j)) => {
            eprintln!(
                "demo-inference: journal on {}",
                args.journal.as_deref().unwrap_or_default()
            );
            Some(j)
        }
        Some(Err(e)) => {
            eprintln!("demo-inference: journal {:?}: {e}", args.journal);
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(args.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("demo-inference: listen on {}: {e}", args.listen);
            return ExitCode::from(2);
        }
    };
    // `parse_header` succeeded in `read_weights`; the width is unauthenticated until a
    // request's key opens the file.
    let inputs = parse_header(&weights).map(|h| h.inputs).unwrap_or_default();
    eprintln!(
        "demo-inference: serving {} ({} bytes of ciphertext, {inputs} inputs; no key held) on {}{}",
        args.weights,
        weights.len(),
        listener.local_addr().unwrap_or(args.listen),
        args.connections
            .map(|n| format!(" for {n} connections"))
            .unwrap_or_default(),
    );
    let result = serve(
        &listener,
        &weights,
        args.connections,
        journal.as_mut(),
        |line| {
            eprintln!("demo-inference: {line}");
        },
    );
    match result {
        Ok(()) => {
            eprintln!("demo-inference: done");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("demo-inference: accept: {e}");
            ExitCode::from(2)
        }
    }
}
