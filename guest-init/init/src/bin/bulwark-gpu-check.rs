//! `bulwark-gpu-check`: the GPU check `bulwark-init` runs inside a tenant VM
//! (step 6 of `docs/guest-init.md`), run on a normal host. It is the crate's own
//! code ([`bring_up_nvidia`]: the NVIDIA backend on `cudarc` and NVML, loaded at
//! run time), so it needs a glibc build to `dlopen` `libcuda.so.1` and
//! `libnvidia-ml.so.1`. See `docs/guest-init.md`, "Checking a host's GPUs".
//!
//! Exit status: 0 the check passed (at least `--min-count` GPUs ready, none
//! failed); 1 a GPU failed the check (or the driver is there but unusable, or
//! fewer GPUs passed than `--min-count`); 2 usage; 3 no NVIDIA GPU or driver on
//! this host: the check did not run.

use std::process::ExitCode;

use bulwark_guest_protocol::{GpuAttestationResult, GpuPresence, GpuStatus};
use bulwark_init::gpu::nvidia::guarded;
use bulwark_init::gpu::{
    bring_up_nvidia, cc_mode_text, CcPolicy, GpuError, GpuOutcome, GpuPolicy, COPY_BENCH_COPIES,
};
use bulwark_init::pid1::CaughtPanics;
use serde::Serialize;

const USAGE: &str = "\
usage: bulwark-gpu-check [--json] [--require-cc] [--min-count N]

Runs bulwark-init's GPU check on this host's NVIDIA GPUs: identity, CC mode and
ready state (a CC GPU's attestation report verified with a fresh nonce), a PTX
kernel whose result the CPU checks, and a device-to-device copy rate.

  --json          print the structured status (JSON) instead of the report
  --require-cc    a GPU not in confidential-computing mode fails the check
  --min-count N   at least N GPUs must pass (default 1)

exit status: 0 passed, 1 a GPU failed the check, 2 usage,
             3 no NVIDIA GPU or driver on this host (the check did not run)";

const EXIT_PASSED: u8 = 0;
const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_NO_GPU: u8 = 3;

#[derive(Debug)]
struct Options {
    json: bool,
    require_cc: bool,
    min_count: u32,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Option<Options>, String> {
    let mut o = Options {
        json: false,
        require_cc: false,
        min_count: 1,
    };
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        match flag.as_str() {
            "-h" | "--help" if inline.is_none() => return Ok(None),
            "--json" if inline.is_none() => o.json = true,
            "--require-cc" if inline.is_none() => o.require_cc = true,
            "--min-count" => {
                let v = inline
                    .or_else(|| args.next())
                    .ok_or("--min-count needs a number")?;
                let n: u32 = v
                    .parse()
                    .map_err(|_| format!("--min-count {v:?}: not a number"))?;
                let max = bulwark_guest_protocol::MAX_LIST;
                if n == 0 || n as usize > max {
                    return Err(format!("--min-count {n}: must be 1 to {max}"));
                }
                o.min_count = n;
            }
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    Ok(Some(o))
}

/// What NVML says beyond the guest protocol's identity (not part of the check).
#[derive(Debug, Default, Serialize)]
struct ExtraIdentity {
    index: u32,
    uuid: Option<String>,
    serial: Option<String>,
}

/// UUID and board serial of each GPU found, by PCI bus id, when NVML answers.
fn extra_identities(gpus: &[GpuStatus]) -> Vec<ExtraIdentity> {
    let nvml = guarded("nvmlInit", || {
        nvml_wrapper::Nvml::init().map_err(|e| GpuError::Driver {
            call: "nvmlInit",
            detail: e.to_string(),
        })
    });
    gpus.iter()
        .map(|g| {
            let mut extra = ExtraIdentity {
                index: g.identity.index,
                ..ExtraIdentity::default()
            };
            if let Ok(nvml) = &nvml {
                let bus = g.identity.pci_bus_id.clone();
                let read = guarded("uuid/serial", || {
                    let d =
                        nvml.device_by_pci_bus_id(bus.as_str())
                            .map_err(|e| GpuError::Driver {
                                call: "nvmlDeviceGetHandleByPciBusId",
                                detail: e.to_string(),
                            })?;
                    Ok((d.uuid().ok(), d.serial().ok()))
                });
                if let Ok((uuid, serial)) = read {
                    extra.uuid = uuid.filter(|s| !s.is_empty());
                    extra.serial = serial.filter(|s| !s.is_empty());
                }
            }
            extra
        })
        .collect()
}

/// The verdict on an outcome: exit status and, unless passed, why.
fn verdict(outcome: &GpuOutcome, min_count: u32) -> (u8, Option<String>) {
    let s = &outcome.summary;
    let ready = outcome.ready_count();
    if s.gpus.is_empty() {
        // A driver that is there but unusable (a CC GPU not ready and no NVML)
        // is a failure, not an absence.
        if let Some(r) = &outcome.refusal {
            return (EXIT_FAILED, Some(r.clone()));
        }
        let reason = match &s.presence {
            GpuPresence::NoDriver { detail } => detail.clone(),
            GpuPresence::NoDevice => "the NVIDIA driver is present but finds no GPU".into(),
            GpuPresence::Present => "no GPU reported".into(),
        };
        return (EXIT_NO_GPU, Some(reason));
    }
    if let Some(r) = &outcome.refusal {
        return (EXIT_FAILED, Some(r.clone()));
    }
    if ready < min_count as usize {
        return (
            EXIT_FAILED,
            Some(format!(
                "{ready} of {} GPU(s) passed, --min-count needs {min_count}",
                s.gpus.len()
            )),
        );
    }
    (EXIT_PASSED, None)
}

fn no_gpu_line(reason: &str) -> String {
    format!("no NVIDIA GPU on this host ({reason}): the GPU check did not run")
}

fn human_report(outcome: &GpuOutcome, extra: &[ExtraIdentity], code: u8, reason: Option<&str>) {
    let s = &outcome.summary;
    if code == EXIT_NO_GPU {
        println!("{}", no_gpu_line(reason.unwrap_or("unknown reason")));
        return;
    }
    match &s.presence {
        GpuPresence::Present => println!(
            "bulwark-gpu-check: {} NVIDIA GPU(s), {} passed",
            s.gpus.len(),
            outcome.ready_count()
        ),
        GpuPresence::NoDriver { detail } => println!("bulwark-gpu-check: {detail}"),
        GpuPresence::NoDevice => println!("bulwark-gpu-check: driver present, no GPU found"),
    }
    for g in &s.gpus {
        let id = &g.identity;
        let x = extra.iter().find(|x| x.index == id.index);
        let known = |v: Option<&String>| v.cloned().unwrap_or_else(|| "unknown".into());
        println!("GPU {}: {}", id.index, id.name);
        println!("  PCI bus id:    {}", id.pci_bus_id);
        println!(
            "  UUID:          {}",
            known(x.and_then(|x| x.uuid.as_ref()))
        );
        println!(
            "  serial:        {}",
            known(x.and_then(|x| x.serial.as_ref()))
        );
        println!(
            "  memory:        {} MiB; compute capability {}; driver {}",
            id.memory_bytes >> 20,
            id.compute_capability,
            id.driver_version
        );
        let ready = match g.cc_ready {
            Some(true) => "ready (accepting work)",
            Some(false) => "not ready",
            None => "not reported",
        };
        println!("  CC mode:       {}", cc_mode_text(&g.cc_mode));
        println!("  CC ready:      {ready}");
        let att = match &g.attestation {
            GpuAttestationResult::NotApplicable => "not applicable (not in CC mode)".to_string(),
            GpuAttestationResult::Verified { detail } => format!("verified ({detail})"),
            GpuAttestationResult::Failed { detail } => format!("FAILED ({detail})"),
        };
        println!("  attestation:   {att}");
        println!(
            "  PTX kernel:    {} ({})",
            if g.self_test_passed {
                "passed"
            } else {
                "NOT passed"
            },
            g.self_test_detail
        );
        match g.copy_gbps {
            Some(r) => println!(
                "  copy (d2d):    {r:.1} GB/s ({} MiB x {COPY_BENCH_COPIES})",
                GpuPolicy::default().copy_bench_mib
            ),
            None => println!("  copy (d2d):    not measured"),
        }
        println!(
            "  result:        {}",
            if g.ready { "PASSED" } else { "FAILED" }
        );
    }
    match (code, reason) {
        (EXIT_PASSED, _) => println!("GPU check passed"),
        (_, Some(r)) => println!("GPU check FAILED: {r}"),
        (_, None) => println!("GPU check FAILED"),
    }
}

#[derive(Serialize)]
struct JsonReport<'a> {
    /// `passed`, `failed` or `no_gpu`.
    result: &'a str,
    exit_code: u8,
    /// Why it did not pass (the no-GPU reason or the failure).
    reason: Option<&'a str>,
    require_cc: bool,
    min_count: u32,
    /// The guest protocol's `GpuSummary`, as bulwark-init reports it.
    status: &'a bulwark_guest_protocol::GpuSummary,
    /// bulwark-init's refusal text, if the check would refuse a workload.
    refusal: Option<&'a str>,
    /// UUID and serial per GPU index, where NVML tells them.
    devices: &'a [ExtraIdentity],
}

fn main() -> ExitCode {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::from(EXIT_PASSED);
        }
        Err(e) => {
            eprintln!("bulwark-gpu-check: {e}\n{USAGE}");
            return ExitCode::from(EXIT_USAGE);
        }
    };

    // Driver calls run inside `guarded`, which turns a panic in a binding into an
    // error; keep such a caught panic to one line instead of the default report.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if CaughtPanics::active() {
            eprintln!("bulwark-gpu-check: driver binding panicked (caught): {info}");
        } else {
            default_hook(info);
        }
    }));

    // The GPU check exactly as bulwark-init runs it, under this policy: GPUs
    // optional at the check itself (absence is told apart below), CC as asked,
    // self-test and the default copy benchmark on.
    let policy = GpuPolicy {
        cc: if opts.require_cc {
            CcPolicy::Required
        } else {
            CcPolicy::Any
        },
        ..GpuPolicy::default()
    };
    let outcome = bring_up_nvidia(&policy);
    let extra = if outcome.summary.gpus.is_empty() {
        Vec::new()
    } else {
        extra_identities(&outcome.summary.gpus)
    };
    let (code, reason) = verdict(&outcome, opts.min_count);

    if opts.json {
        let report = JsonReport {
            result: match code {
                EXIT_PASSED => "passed",
                EXIT_NO_GPU => "no_gpu",
                _ => "failed",
            },
            exit_code: code,
            reason: reason.as_deref(),
            require_cc: opts.require_cc,
            min_count: opts.min_count,
            status: &outcome.summary,
            refusal: outcome.refusal.as_deref(),
            devices: &extra,
        };
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("bulwark-gpu-check: encoding the status: {e}");
                return ExitCode::from(EXIT_FAILED);
            }
        }
        if code == EXIT_NO_GPU {
            eprintln!(
                "{}",
                no_gpu_line(reason.as_deref().unwrap_or("unknown reason"))
            );
        }
    } else {
        human_report(&outcome, &extra, code, reason.as_deref());
    }
    ExitCode::from(code)
}
