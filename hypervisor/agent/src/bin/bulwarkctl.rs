//! `bulwarkctl [--api-sock PATH] [--json] NOUN VERB ...`: the operator CLI of bulwarkd.
//! Exit status: 0 done, 1 refused by bulwarkd (its error is printed), 2 usage or
//! transport error.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bulwark_agent::client;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

#[derive(Debug, Parser)]
#[command(
    name = "bulwarkctl",
    version,
    about = "Control a Bulwark node agent (bulwarkd)"
)]
struct Cli {
    /// bulwarkd's API socket.
    #[arg(long, global = true, default_value = "/run/bulwark/bulwarkd.sock")]
    api_sock: PathBuf,
    /// Print bulwarkd's JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Talk to bulwarkd over TCP with mutual TLS at ADDR:PORT instead of the socket.
    #[arg(long, global = true, requires_all = ["tls_ca", "tls_cert", "tls_key"])]
    tls: Option<String>,
    /// With --tls: the CA that issued bulwarkd's certificate (PEM).
    #[arg(long, global = true)]
    tls_ca: Option<PathBuf>,
    /// With --tls: this operator's client certificate (PEM).
    #[arg(long, global = true)]
    tls_cert: Option<PathBuf>,
    /// With --tls: this operator's private key (PEM).
    #[arg(long, global = true)]
    tls_key: Option<PathBuf>,
    /// With --tls: the name bulwarkd's certificate must carry (default: the host of --tls).
    #[arg(long, global = true)]
    server_name: Option<String>,
    #[command(subcommand)]
    noun: Noun,
}

/// Where bulwarkd is.
enum Target {
    Unix(PathBuf),
    Tls {
        addr: String,
        name: String,
        cfg: std::sync::Arc<rustls::ClientConfig>,
    },
}

impl Target {
    fn from_cli(cli: &Cli) -> Result<Target, Fail> {
        let Some(addr) = &cli.tls else {
            return Ok(Target::Unix(cli.api_sock.clone()));
        };
        let (Some(ca), Some(cert), Some(key)) = (&cli.tls_ca, &cli.tls_cert, &cli.tls_key) else {
            return Err(Fail(
                2,
                "--tls needs --tls-ca, --tls-cert and --tls-key".into(),
            ));
        };
        let cfg =
            bulwark_agent::tls::client_config(ca, cert, key).map_err(|e| Fail(2, e.to_string()))?;
        let host = addr
            .rsplit_once(':')
            .map_or(addr.as_str(), |(h, _)| h)
            .trim_matches(['[', ']']);
        Ok(Target::Tls {
            addr: addr.clone(),
            name: cli.server_name.clone().unwrap_or_else(|| host.to_string()),
            cfg,
        })
    }

    fn upload(
        &self,
        path: &str,
        file: &std::path::Path,
        show: bool,
    ) -> Result<client::Response, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("starting a runtime: {e}"))?;
        let t0 = Instant::now();
        let progress = move |sent: u64, total: u64| {
            if show {
                eprint!(
                    "\ruploading: {:.1} / {:.1} MiB ({:.0} s)",
                    sent as f64 / 1048576.0,
                    total as f64 / 1048576.0,
                    t0.elapsed().as_secs_f64()
                );
                let _ = std::io::stderr().flush();
            }
        };
        let r = match self {
            Target::Unix(sock) => rt.block_on(client::upload(sock, path, file, progress)),
            Target::Tls { addr, name, cfg } => rt.block_on(async {
                let io = bulwark_agent::tls::connect(addr, name, cfg.clone()).await?;
                client::upload_on(io, addr, path, file, progress).await
            }),
        };
        if show {
            eprintln!();
        }
        r
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<client::Response, String> {
        match self {
            Target::Unix(sock) => client::blocking(sock, method, path, body),
            Target::Tls { addr, name, cfg } => {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("starting a runtime: {e}"))?;
                rt.block_on(bulwark_agent::tls::request(
                    addr,
                    name,
                    cfg.clone(),
                    method,
                    path,
                    body,
                ))
            }
        }
    }
}

#[derive(Debug, Subcommand)]
enum Noun {
    /// The node: owner tenant, device counts, events.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Accelerators and their group members.
    #[command(subcommand)]
    Devices(DeviceCmd),
    /// Tenants: trusted image signers and minimum versions.
    #[command(subcommand)]
    Tenants(TenantCmd),
    /// Signed images uploaded to the node.
    #[command(subcommand)]
    Images(ImageCmd),
    /// VMs.
    #[command(subcommand)]
    Vms(VmCmd),
}

#[derive(Debug, Subcommand)]
enum NodeCmd {
    Show,
    /// Lifecycle events after sequence number SINCE.
    Events {
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// Keep printing events as they happen (blocking queries of 30 s, each
        /// asking for what follows the last event seen), until interrupted; with
        /// --json, one JSON object per line.
        #[arg(long)]
        follow: bool,
    },
    /// Whether bulwarkd is ready.
    Health,
    /// Send a signed node OS image (.bwi): bulwarkd verifies it against the
    /// provider's keys and writes it to the inactive boot slot, tried once.
    Update {
        file: PathBuf,
    },
    /// The node's boot slots: versions, boot counting, next boot, fallback.
    Boot,
}

#[derive(Debug, Subcommand)]
enum DeviceCmd {
    List,
    Show {
        address: String,
    },
    /// Scan sysfs again.
    Rescan,
    /// Bind the device's IOMMU group to vfio-pci; it is then scrubbed.
    Enroll {
        address: String,
        /// Wait for the scrub to finish, showing progress.
        #[arg(long)]
        wait: bool,
    },
    /// Release a quarantined device (operator action): it is scrubbed again.
    Release {
        address: String,
        #[arg(long)]
        wait: bool,
    },
    /// Give the device's whole IOMMU group back to the host's own drivers
    /// (available or quarantined only); enrolling it again scrubs it again.
    Unenroll {
        address: String,
    },
    /// The device's scrub records.
    Scrubs {
        address: String,
    },
}

#[derive(Debug, Subcommand)]
enum TenantCmd {
    List,
    Show {
        id: String,
    },
    Create {
        id: String,
        /// Trusted image signer public key (PEM file); repeat for several.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        #[arg(long, default_value_t = 0)]
        min_version: u64,
    },
    Delete {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum ImageCmd {
    List,
    /// Upload a signed image (.bwi), showing progress; verified when a VM uses it.
    Upload {
        file: PathBuf,
        /// Its name on the node (default: the file name without .bwi).
        #[arg(long)]
        name: Option<String>,
    },
    Delete {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum VmCmd {
    List,
    Show {
        id: String,
    },
    Create {
        id: String,
        #[arg(long)]
        tenant: String,
        /// Signed image (.bwi) on the node.
        #[arg(long)]
        image: String,
        #[arg(long, default_value_t = 1)]
        vcpus: u8,
        #[arg(long, default_value_t = 256)]
        mem_mib: u32,
        /// This many GPUs (or of --model).
        #[arg(long)]
        gpus: Option<u32>,
        /// vendor:device of the GPUs.
        #[arg(long)]
        model: Option<String>,
        /// Exactly this device; repeat for several.
        #[arg(long = "gpu")]
        addresses: Vec<String>,
        /// Serve guest vsock port VSOCK on node TCP port TCP (`VSOCK:TCP`); repeatable.
        #[arg(long = "port")]
        ports: Vec<String>,
        /// MiB of scratch disk (virtio-blk `scratch`, encrypted by the guest with a
        /// key made at each boot); 0: none.
        #[arg(long, default_value_t = 0)]
        scratch_mib: u32,
    },
    Start {
        id: String,
    },
    Stop {
        id: String,
    },
    Delete {
        id: String,
    },
    /// What the VM's bulwark-init reported on the host channel: hello, stages,
    /// status, exit, evidence served and refused.
    Guest {
        id: String,
    },
    /// Ping the VM's bulwark-init over the host channel (round trip).
    Ping {
        id: String,
    },
    /// Have the guest's attestation key sign NONCE (hex, 16 to 64 bytes).
    Challenge {
        id: String,
        #[arg(long)]
        nonce: String,
    },
    /// Ask the guest to stop its workload and power off (`stop` is the hard stop).
    Shutdown {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Write the bulwark-vmm config the VM starts with to FILE (JSON): the machine a
    /// tenant predicts the launch measurement from (`bulwark-verify predict --vm`).
    VmmConfig {
        id: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write the VM's attestation evidence for NONCE to FILE.
    Attest {
        id: String,
        #[arg(long)]
        nonce: String,
        #[arg(long)]
        out: PathBuf,
    },
}

/// A failure: exit status and message.
struct Fail(u8, String);

/// A success's body, or the refusal as a `Fail`.
fn check(r: client::Response) -> Result<Vec<u8>, Fail> {
    if r.status >= 300 {
        let v = r.json();
        let msg = match (v["error"]["field"].as_str(), v["error"]["message"].as_str()) {
            (Some(f), Some(m)) => format!("{f}: {m}"),
            _ => String::from_utf8_lossy(&r.body).into_owned(),
        };
        return Err(Fail(1, format!("refused ({}): {msg}", r.status)));
    }
    Ok(r.body)
}

/// A success's body as JSON.
fn answer(r: client::Response) -> Result<Value, Fail> {
    let body = check(r)?;
    if body.is_empty() {
        return Ok(Value::Null);
    }
    Ok(serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned())))
}

/// One request; the raw body of a success, or the refusal as a `Fail`.
fn call_raw(sock: &Target, method: &str, path: &str, body: Option<Value>) -> Result<Vec<u8>, Fail> {
    check(
        sock.request(method, path, body.map(|b| b.to_string()))
            .map_err(|e| Fail(2, e))?,
    )
}

fn call(sock: &Target, method: &str, path: &str, body: Option<Value>) -> Result<Value, Fail> {
    answer(
        sock.request(method, path, body.map(|b| b.to_string()))
            .map_err(|e| Fail(2, e))?,
    )
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn table(rows: &[Vec<String>]) {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(x, w)| format!("{x:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

fn print_devices(v: &Value) {
    let mut rows = vec![[
        "ADDRESS", "ID", "KIND", "GROUP", "NUMA", "STATE", "VM", "REASON",
    ]
    .map(String::from)
    .to_vec()];
    for d in v.as_array().into_iter().flatten() {
        rows.push(vec![
            s(&d["address"]),
            s(&d["id"]),
            s(&d["kind"]),
            s(&d["iommu_group"]),
            s(&d["numa_node"]),
            s(&d["state"]),
            s(&d["owner_vm"]),
            s(&d["reason"]),
        ]);
    }
    table(&rows);
}

fn print_vms(v: &Value) {
    let mut rows = vec![["ID", "TENANT", "STATE", "DEVICES", "PID", "REASON"]
        .map(String::from)
        .to_vec()];
    for d in v.as_array().into_iter().flatten() {
        let devs = d["devices"]
            .as_array()
            .map(|a| a.iter().map(s).collect::<Vec<_>>().join(","))
            .unwrap_or_default();
        rows.push(vec![
            s(&d["id"]),
            s(&d["tenant"]),
            s(&d["state"]),
            if devs.is_empty() { "-".into() } else { devs },
            s(&d["pid"]),
            s(&d["reason"]),
        ]);
    }
    table(&rows);
}

fn print_event(e: &Value) {
    println!(
        "{} {} {} {}: {}",
        s(&e["seq"]),
        s(&e["at_ms"]),
        s(&e["object"]),
        s(&e["id"]),
        s(&e["what"])
    );
}

fn print_kv(v: &Value) {
    if let Some(o) = v.as_object() {
        for (k, x) in o {
            println!("{k}: {}", s(x));
        }
    }
}

/// Polls the device until it leaves sanitizing, with progress on stderr.
fn wait_scrub(sock: &Target, addr: &str, json_out: bool) -> Result<Value, Fail> {
    let t0 = Instant::now();
    loop {
        let d = call(sock, "GET", &format!("/devices/{addr}"), None)?;
        if d["state"] != "sanitizing" {
            if !json_out {
                eprintln!(
                    "\r{addr}: {} after {:.1} s",
                    s(&d["state"]),
                    t0.elapsed().as_secs_f64()
                );
            }
            return Ok(d);
        }
        if !json_out {
            eprint!("\r{addr}: scrubbing... {:.0} s", t0.elapsed().as_secs_f64());
            let _ = std::io::stderr().flush();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn run(cli: Cli) -> Result<(), Fail> {
    let target = Target::from_cli(&cli)?;
    let sock = &target;
    let j = cli.json;
    let out = |v: &Value, human: &dyn Fn(&Value)| {
        if j {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            human(v);
        }
    };
    match cli.noun {
        Noun::Node(NodeCmd::Show) => out(&call(sock, "GET", "/node", None)?, &print_kv),
        Noun::Node(NodeCmd::Health) => out(&call(sock, "GET", "/health", None)?, &print_kv),
        Noun::Node(NodeCmd::Update { file }) => {
            let r = sock
                .upload("/node/image", &file, !j)
                .map_err(|e| Fail(2, e))?;
            out(&answer(r)?, &print_kv)
        }
        Noun::Node(NodeCmd::Boot) => out(&call(sock, "GET", "/node/boot", None)?, &print_kv),
        Noun::Node(NodeCmd::Events {
            since,
            follow: false,
        }) => out(
            &call(sock, "GET", &format!("/events?since={since}"), None)?,
            &|v| {
                for e in v.as_array().into_iter().flatten() {
                    print_event(e);
                }
            },
        ),
        Noun::Node(NodeCmd::Events {
            mut since,
            follow: true,
        }) => loop {
            let v = call(
                sock,
                "GET",
                &format!("/events?since={since}&wait_ms=30000"),
                None,
            )?;
            for e in v.as_array().into_iter().flatten() {
                if j {
                    println!("{e}");
                } else {
                    print_event(e);
                }
                since = since.max(e["seq"].as_u64().unwrap_or(since));
            }
            let _ = std::io::stdout().flush();
        },
        Noun::Devices(c) => match c {
            DeviceCmd::List => out(&call(sock, "GET", "/devices", None)?, &print_devices),
            DeviceCmd::Show { address } => out(
                &call(sock, "GET", &format!("/devices/{address}"), None)?,
                &print_kv,
            ),
            DeviceCmd::Rescan => out(&call(sock, "POST", "/devices/rescan", None)?, &print_kv),
            DeviceCmd::Enroll { address, wait } => {
                let mut d = call(sock, "POST", &format!("/devices/{address}/enroll"), None)?;
                if wait {
                    d = wait_scrub(sock, &address, j)?;
                }
                out(&d, &print_kv)
            }
            DeviceCmd::Unenroll { address } => out(
                &call(sock, "POST", &format!("/devices/{address}/unenroll"), None)?,
                &|v| {
                    for m in v["members"].as_array().into_iter().flatten() {
                        println!(
                            "{}: unenrolled, now on {}",
                            s(&m["address"]),
                            m["driver"].as_str().unwrap_or("no driver")
                        );
                    }
                },
            ),
            DeviceCmd::Release { address, wait } => {
                let mut d = call(sock, "POST", &format!("/devices/{address}/release"), None)?;
                if wait {
                    d = wait_scrub(sock, &address, j)?;
                }
                out(&d, &print_kv)
            }
            DeviceCmd::Scrubs { address } => out(
                &call(sock, "GET", &format!("/devices/{address}/scrubs"), None)?,
                &|v| {
                    for r in v.as_array().into_iter().flatten() {
                        println!(
                            "scrub {} {}: {}",
                            s(&r["id"]),
                            s(&r["outcome"]),
                            s(&r["reason"])
                        );
                        for st in r["steps"].as_array().into_iter().flatten() {
                            println!(
                                "  {} via {} ok={} ({} ms): {}",
                                s(&st["step"]),
                                s(&st["method"]),
                                s(&st["ok"]),
                                st["finished_at_ms"]
                                    .as_u64()
                                    .unwrap_or(0)
                                    .saturating_sub(st["started_at_ms"].as_u64().unwrap_or(0)),
                                s(&st["detail"])
                            );
                        }
                    }
                },
            ),
        },
        Noun::Tenants(c) => match c {
            TenantCmd::List => out(&call(sock, "GET", "/tenants", None)?, &|v| {
                let mut rows = vec![["ID", "KEYS", "MIN_VERSION"].map(String::from).to_vec()];
                for t in v.as_array().into_iter().flatten() {
                    rows.push(vec![
                        s(&t["id"]),
                        t["signer_keys"].as_array().map_or(0, Vec::len).to_string(),
                        s(&t["min_version"]),
                    ]);
                }
                table(&rows);
            }),
            TenantCmd::Show { id } => out(
                &call(sock, "GET", &format!("/tenants/{id}"), None)?,
                &print_kv,
            ),
            TenantCmd::Create {
                id,
                keys,
                min_version,
            } => {
                let mut pems = Vec::new();
                for k in &keys {
                    pems.push(
                        std::fs::read_to_string(k)
                            .map_err(|e| Fail(2, format!("reading {}: {e}", k.display())))?,
                    );
                }
                let v = call(
                    sock,
                    "POST",
                    "/tenants",
                    Some(json!({ "id": id, "signer_keys": pems, "min_version": min_version })),
                )?;
                out(&v, &|_| println!("tenant {id} created"))
            }
            TenantCmd::Delete { id } => {
                call(sock, "DELETE", &format!("/tenants/{id}"), None)?;
                out(&json!({ "deleted": id }), &|_| {
                    println!("tenant {id} deleted")
                })
            }
        },
        Noun::Images(c) => match c {
            ImageCmd::List => out(&call(sock, "GET", "/images", None)?, &|v| {
                let mut rows = vec![["NAME", "BYTES", "MANIFEST", "VERSION"]
                    .map(String::from)
                    .to_vec()];
                for i in v.as_array().into_iter().flatten() {
                    rows.push(vec![
                        s(&i["name"]),
                        s(&i["bytes"]),
                        s(&i["manifest_name"]),
                        s(&i["manifest_version"]),
                    ]);
                }
                table(&rows);
            }),
            ImageCmd::Upload { file, name } => {
                let name = match name {
                    Some(n) => n,
                    None => file
                        .file_name()
                        .and_then(|f| f.to_str())
                        .map(|f| f.trim_end_matches(".bwi").to_string())
                        .ok_or_else(|| Fail(2, format!("{}: give --name", file.display())))?,
                };
                let r = sock
                    .upload(&format!("/images/{name}"), &file, !j)
                    .map_err(|e| Fail(2, e))?;
                let v = answer(r)?;
                out(&v, &print_kv)
            }
            ImageCmd::Delete { name } => {
                call(sock, "DELETE", &format!("/images/{name}"), None)?;
                out(&json!({ "deleted": name }), &|_| {
                    println!("image {name} deleted")
                })
            }
        },
        Noun::Vms(c) => match c {
            VmCmd::List => out(&call(sock, "GET", "/vms", None)?, &print_vms),
            VmCmd::Show { id } => out(&call(sock, "GET", &format!("/vms/{id}"), None)?, &print_kv),
            VmCmd::Create {
                id,
                tenant,
                image,
                vcpus,
                mem_mib,
                gpus,
                model,
                addresses,
                ports,
                scratch_mib,
            } => {
                let mut g = serde_json::Map::new();
                if let Some(n) = gpus {
                    g.insert("count".into(), n.into());
                }
                if let Some(m) = model {
                    g.insert("model".into(), m.into());
                }
                if !addresses.is_empty() {
                    g.insert("addresses".into(), addresses.into());
                }
                let mut port_maps = Vec::new();
                for p in &ports {
                    let parsed = p
                        .split_once(':')
                        .and_then(|(v, t)| Some((v.parse::<u32>().ok()?, t.parse::<u16>().ok()?)));
                    let Some((v, t)) = parsed else {
                        return Err(Fail(2, format!("--port {p}: expected VSOCK:TCP")));
                    };
                    port_maps.push(json!({ "vsock": v, "tcp": t }));
                }
                let body = json!({ "id": id, "tenant": tenant, "image": image, "vcpus": vcpus, "mem_mib": mem_mib, "gpus": g, "ports": port_maps, "scratch_mib": scratch_mib });
                out(&call(sock, "POST", "/vms", Some(body))?, &print_kv)
            }
            VmCmd::Start { id } => out(
                &call(sock, "POST", &format!("/vms/{id}/start"), None)?,
                &print_kv,
            ),
            VmCmd::Stop { id } => out(
                &call(sock, "POST", &format!("/vms/{id}/stop"), None)?,
                &print_kv,
            ),
            VmCmd::Delete { id } => {
                call(sock, "DELETE", &format!("/vms/{id}"), None)?;
                out(&json!({ "deleted": id }), &|_| println!("VM {id} deleted"))
            }
            VmCmd::Guest { id } => out(
                &call(sock, "GET", &format!("/vms/{id}/guest"), None)?,
                &print_kv,
            ),
            VmCmd::Ping { id } => out(
                &call(sock, "POST", &format!("/vms/{id}/guest/ping"), None)?,
                &print_kv,
            ),
            VmCmd::Challenge { id, nonce } => out(
                &call(
                    sock,
                    "POST",
                    &format!("/vms/{id}/guest/challenge"),
                    Some(json!({ "nonce": nonce })),
                )?,
                &print_kv,
            ),
            VmCmd::Shutdown { id, reason } => out(
                &call(
                    sock,
                    "POST",
                    &format!("/vms/{id}/guest/shutdown"),
                    Some(json!({ "reason": reason })),
                )?,
                &print_kv,
            ),
            VmCmd::VmmConfig { id, out: file } => {
                let config = call(sock, "GET", &format!("/vms/{id}/vmm-config"), None)?;
                let text = serde_json::to_string_pretty(&config)
                    .map_err(|e| Fail(2, format!("encoding the config: {e}")))?;
                std::fs::write(&file, text)
                    .map_err(|e| Fail(2, format!("writing {}: {e}", file.display())))?;
                out(&json!({ "written": file }), &|_| {
                    println!("VM {id}'s bulwark-vmm config written to {}", file.display())
                })
            }
            VmCmd::Attest {
                id,
                nonce,
                out: file,
            } => {
                let doc = call_raw(
                    sock,
                    "POST",
                    &format!("/vms/{id}/attest"),
                    Some(json!({ "nonce": nonce })),
                )?;
                std::fs::write(&file, &doc)
                    .map_err(|e| Fail(2, format!("writing {}: {e}", file.display())))?;
                out(&json!({ "written": file, "bytes": doc.len() }), &|_| {
                    println!(
                        "evidence ({} bytes, COSE_Sign1) written to {}",
                        doc.len(),
                        file.display()
                    )
                })
            }
        },
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, msg)) => {
            eprintln!("bulwarkctl: {msg}");
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    /// clap's own consistency checks (unique option names across global and
    /// subcommand options, ...), which otherwise only fire at run time.
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
