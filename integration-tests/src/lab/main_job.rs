//! The main job, end to end, in the lab (`main-job`): the node image boots as the lab
//! machine (OVMF, swtpm, the IOMMU, an ivshmem device standing in for a GPU (its BAR 2 is the memory the scrub clears), a NIC whose
//! ports QEMU forwards from this host), and this host then plays the three people of
//! the product over the network, with the product's own tools:
//!
//! - the **operator** (`bulwarkctl --tls`, mutual TLS to bulwarkd): enrols the device
//!   (its group bound to vfio-pci and scrubbed), registers the tenant and its key,
//!   uploads the tenant's signed image, creates the VM with the device and an exposed
//!   port, starts it, and at the end deletes it (the device is scrubbed again);
//! - the **tenant's security engineer** (`bulwark-verify predict`): writes the policy
//!   from the signed workload image, the VM's machine (`bulwarkctl vms vmm-config`)
//!   and the signed node image, before the VM runs;
//! - the **customer** (`bulwark-verify connect`): appraises the TPM-quoted evidence
//!   inside the attested TLS handshake and only then sends the weights' key and an
//!   inference request (`demo-tenant`, `docs/confidential-inference.md`).
//!
//! Refusals (each with the check that fails): a policy trusting another workload
//! signer; a policy demanding a newer node image; evidence replayed for another
//! nonce; a second VM asking for the device the first holds. After the power-off the
//! node's disk is searched for the plaintext weights and request.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bulwark_image::{build, generate_key_pair, sign, BuildSpec, SigningKey};

use super::error::{LabError, Result};
use super::host_command::find_program;
use super::initramfs::Initramfs;
use super::l2_bundle::{image_error, make_ext4, write};
use super::machine::{self, ConsoleAction, Driver, MachineSpec, UefiBoot};
use super::node_disk::{self, NodeDiskInputs};
use super::programs;
use super::scenario::{GuestProgram, NodeBoot, Scenario};
use super::verdict::{MachineEnd, Verdict};
use super::{Lab, ScenarioRun};
use crate::result_line::{check_line, PREFIX};

/// The node's address on QEMU's user network, and the ports forwarded to it.
const NODE_ADDR: &str = "10.0.2.15";
/// bulwarkd's API over mutual TLS (`tls.listen` in `lab/node/bulwarkd-main-job.json`).
const API_PORT: u16 = 7443;
/// The VM's attested-TLS port, exposed by bulwarkd on the node.
const SERVICE_PORT: u16 = 8443;
/// The vsock port bulwark-init serves attested TLS on, bridged to the service.
const ATLS_VSOCK: u32 = 7002;
/// The service's TCP port inside the VM.
const SERVICE_TCP: u16 = 7000;
/// The name bulwarkd's API certificate carries.
const API_NAME: &str = "bulwark-node";
/// The GPU's stand-in QEMU gives the node (ivshmem-plain, vendor:device).
const DEVICE_ID: &str = "1af4:1110";
/// Where the node keeps the guest firmware (in its initramfs).
const NODE_FIRMWARE: &str = "/lib/bulwark/firmware.bin";

/// The programs the VM's image holds.
const WORKLOAD_PROGRAMS: &[GuestProgram] = &[
    GuestProgram {
        package: "bulwark-init",
        bin: "bulwark-init",
    },
    GuestProgram {
        package: "bulwark-integration-tests",
        bin: "demo-inference",
    },
];
/// The host-side tools of the operator, the tenant and the customer.
const HOST_TOOLS: &[GuestProgram] = &[
    GuestProgram {
        package: "bulwark-agent",
        bin: "bulwarkctl",
    },
    GuestProgram {
        package: "bulwark-attestation",
        bin: "bulwark-verify",
    },
    GuestProgram {
        package: "bulwark-integration-tests",
        bin: "demo-tenant",
    },
];
/// Modules of the VM's kernel: bulwark-init loads them from its initramfs.
const WORKLOAD_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "virtio_rng",
    "vmw_vsock_virtio_transport",
    "dm_verity",
    "dm_crypt",
    "xts",
    "ecb",
];
/// MiB of each VM's scratch disk (bulwarkd's `scratch.img`, dm-crypt in the guest).
const SCRATCH_MIB: u64 = 16;
/// Size of the node's state partition.
const STATE_MIB: u64 = 256;

/// What the host side found, step by step.
struct Steps {
    lines: Vec<String>,
    log: Vec<String>,
    start: Instant,
}

impl Steps {
    fn check(&mut self, name: &str, passed: bool, detail: impl AsRef<str>) -> bool {
        let detail = detail.as_ref();
        let line = format!(
            "{:>7.1} s  {} {name}: {detail}",
            self.start.elapsed().as_secs_f64(),
            if passed { "PASS" } else { "FAIL" }
        );
        // Live, for whoever watches (scripts/demo); the log keeps it too.
        eprintln!("main-job: {line}");
        self.log.push(line);
        self.lines.push(check_line(name, passed, detail));
        passed
    }
}

/// One command's outcome.
struct Ran {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn text(&self) -> String {
        // JSON on one line, so that each step stays one line of the log.
        let mut t = serde_json::from_str::<serde_json::Value>(&self.stdout)
            .map(|v| v.to_string())
            .unwrap_or_else(|_| self.stdout.trim().to_owned());
        if !self.stderr.trim().is_empty() {
            t.push_str(" | ");
            t.push_str(self.stderr.trim());
        }
        t.chars().take(20_000).collect()
    }
    /// bulwark-verify's verdict: its `VERIFIED`/`REJECTED` line and the lines of the
    /// checks that failed, else the error it printed.
    fn verdict(&self) -> String {
        let lines: Vec<&str> = self
            .stdout
            .lines()
            .filter(|l| {
                l.starts_with("verdict:") || l.starts_with("REJECTED") || l.starts_with("FAILED")
            })
            .collect();
        if lines.is_empty() {
            self.text()
        } else {
            lines.join("; ")
        }
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or(serde_json::Value::Null)
    }
}

fn ran(cmd: &mut Command, log: &mut Vec<String>) -> Ran {
    let line = super::host_command::describe(cmd);
    let out = cmd.output();
    let r = match out {
        Ok(o) => Ran {
            ok: o.status.success(),
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        },
        Err(e) => Ran {
            ok: false,
            code: None,
            stdout: String::new(),
            stderr: format!("could not run: {e}"),
        },
    };
    log.push(format!("$ {line}\n{}", r.text()));
    r
}

/// Everything the host side needs, prepared before the boot.
#[derive(Debug, Clone)]
struct Plan {
    dir: PathBuf,
    ctl: PathBuf,
    verify: PathBuf,
    tenant_tool: PathBuf,
    api_port: u16,
    service_port: u16,
    api: ApiFiles,
    /// The tenant's signed workload image and key.
    workload: PathBuf,
    tenant_pub: PathBuf,
    /// A key the customer's refusal policy trusts instead, and the workload image
    /// signed by it alone.
    other_pub: PathBuf,
    other_signed: PathBuf,
    /// The tenant's encrypted weights' directory (`demo-tenant train`).
    secrets: PathBuf,
    /// The guest firmware on this host (the same bytes as the node's).
    firmware: PathBuf,
    /// The signed node image that boots, and the provider's key.
    node_image: PathBuf,
    provider_pub: PathBuf,
    node_version: u64,
    /// The TPM EK CA root (swtpm's local CA).
    ek_root: PathBuf,
    /// When the scenario started: every step's time counts from it.
    start: Instant,
}

#[derive(Debug, Clone)]
struct ApiFiles {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Plan {
    /// The customer: `bulwark-verify connect` to the VM's exposed port under `policy`,
    /// sending the bytes of `file` once the evidence is affirmed (`--send-file`:
    /// the request holds the weights' key, which must not show in a process list).
    fn connect(&self, policy: &Path, file: &Path) -> Command {
        let mut c = Command::new(&self.verify);
        c.arg("connect")
            .arg(format!("127.0.0.1:{}", self.service_port))
            .arg("--policy")
            .arg(policy)
            .arg("--send-file")
            .arg(file);
        c
    }

    /// The operator fetches `vm`'s evidence for `nonce`, and the tenant appraises it
    /// under `policy` for `expected` (in JSON with `json`).
    fn attest_and_appraise(
        &self,
        vm: &str,
        (nonce, expected): (&str, &str),
        policy: &Path,
        json: bool,
        log: &mut Vec<String>,
    ) -> (Ran, Ran) {
        let out = self.dir.join(format!("evidence-{vm}.cose"));
        let attest = ran(
            self.ctl()
                .args(["vms", "attest", vm, "--nonce", nonce, "--out"])
                .arg(&out),
            log,
        );
        let mut verify = Command::new(&self.verify);
        verify
            .arg("evidence")
            .arg(&out)
            .arg("--policy")
            .arg(policy)
            .args(["--nonce", expected]);
        if json {
            verify.arg("--json");
        }
        let appraised = ran(&mut verify, log);
        (attest, appraised)
    }

    /// Asks bulwarkd what VM `vm`'s guest reported (`vms guest`) until the workload's
    /// stderr holds `needle`, `tries` times a second apart: whether it did, and the
    /// last report.
    fn guest_said(
        &self,
        vm: &str,
        needle: &str,
        tries: u32,
        log: &mut Vec<String>,
    ) -> (bool, serde_json::Value) {
        let mut g = serde_json::Value::Null;
        for i in 0..tries {
            if i > 0 {
                std::thread::sleep(Duration::from_secs(1));
            }
            g = ran(self.ctl().args(["vms", "guest", vm]), log).json();
            if g["stderr"]["tail"]
                .as_str()
                .is_some_and(|t| t.contains(needle))
            {
                return (true, g);
            }
        }
        (false, g)
    }

    /// `bulwarkctl vms create ID --tenant TENANT --image IMAGE`, more arguments to add.
    fn vm_create(&self, id: &str, tenant: &str, image: &str) -> Command {
        let mut c = self.ctl();
        c.args(["vms", "create", id, "--tenant", tenant, "--image", image]);
        c
    }

    fn ctl(&self) -> Command {
        let mut c = Command::new(&self.ctl);
        c.arg("--json")
            .arg("--tls")
            .arg(format!("127.0.0.1:{}", self.api_port))
            .arg("--tls-ca")
            .arg(&self.api.ca)
            .arg("--tls-cert")
            .arg(&self.api.cert)
            .arg("--tls-key")
            .arg(&self.api.key)
            .arg("--server-name")
            .arg(API_NAME);
        c
    }
}

impl Lab {
    /// Prepares the node, the tenant's image and the host tools, boots the node and
    /// drives the main job against it.
    pub(super) fn run_main_job(&self, scenario: &Scenario, node: &NodeBoot) -> Result<ScenarioRun> {
        let start = Instant::now();
        let dir = self.target_dir.join("runs").join(scenario.name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(LabError::io(format!("creating {}", dir.display())))?;

        // The node: its initramfs holds the firmware VMs boot through, and the TPM
        // library bulwarkd loads at run time.
        let firmware = programs::build_firmware(&self.target_dir)?;
        let mut image = self.node_initramfs(scenario, node, &dir)?;
        image.host_file(NODE_FIRMWARE, &firmware, 0o644);
        for lib in tcti_libraries()? {
            image.host_file(&lib.to_string_lossy(), &lib, 0o755);
        }
        let initramfs = dir.join("node-initramfs.cpio.zst");
        super::node_boot::compress(&image, &dir.join("node-initramfs.cpio"), &initramfs)?;
        let _ = fs::remove_file(dir.join("node-initramfs.cpio"));

        // Provisioning: the API's TLS files and the TPM's EK chain on the state
        // partition.
        let ek = swtpm_local_ca()?;
        let seed = dir.join("state-seed");
        let api = api_pki(&dir.join("api"), &seed.join("tls"))?;
        fs::create_dir_all(seed.join("tpm")).map_err(LabError::io("creating the state seed"))?;
        fs::copy(&ek.issuer, seed.join("tpm/ek-issuer.pem"))
            .map_err(LabError::io("copying the EK issuer certificate"))?;
        let inputs = NodeDiskInputs {
            kernel: self.kernel.clone(),
            initramfs: initramfs.clone(),
            update_initramfs: None,
            cmdline: "console=ttyS0 intel_iommu=on panic=-1 quiet".into(),
            base_version: node.version - 1,
            update_version: node.version,
            state_mib: STATE_MIB,
            state_seed: Some(seed),
            secure_boot_signing: None,
        };
        let made = node_disk::node_disk(&dir, &inputs)?;
        eprintln!(
            "main-job: {:>7.1} s  provider: node image versions {} and {} built and signed (bulwark-node-image), {} installed on the lab server's disk and {} written as the update on trial; the API's TLS files and the TPM's EK chain on its state partition",
            start.elapsed().as_secs_f64(),
            node.version - 1,
            node.version,
            node.version - 1,
            node.version
        );

        // The tenant: a signed image of bulwark-init and the inference service with
        // encrypted weights; another key for the refusal.
        let tools = programs::build_host_programs(&self.workspace, &self.target_dir, HOST_TOOLS)?;
        let secrets = dir.join("tenant-secrets");
        let mut log = Vec::new();
        let trained = ran(
            Command::new(&tools[2])
                .arg("train")
                .arg("--out")
                .arg(&secrets),
            &mut log,
        );
        if !trained.ok {
            return Err(LabError::UnexpectedOutput {
                command: "demo-tenant train".into(),
                reason: trained.text(),
            });
        }
        let other = dir.join("other-keys");
        let (other_key, other_pub, _) = generate_key_pair(&other).map_err(image_error("keygen"))?;
        let (workload, tenant_pub, other_signed) =
            self.workload_image(&dir.join("tenant"), &secrets, &other_key)?;
        eprintln!(
            "main-job: {:>7.1} s  tenant: {}; weights sealed (ChaCha20-Poly1305, key kept by the tenant); image {} signed (bulwark-init, kernel, the inference service, the sealed weights)",
            start.elapsed().as_secs_f64(),
            trained.stdout.trim(),
            workload.display()
        );
        let plan = Plan {
            dir: dir.clone(),
            ctl: tools[0].clone(),
            verify: tools[1].clone(),
            tenant_tool: tools[2].clone(),
            api_port: free_port()?,
            service_port: free_port()?,
            api,
            workload,
            tenant_pub,
            other_pub,
            other_signed,
            secrets,
            firmware,
            node_image: made.image.clone(),
            provider_pub: made.trust.clone(),
            node_version: node.version,
            ek_root: ek.root,
            start,
        };
        let prepare = start.elapsed();
        let mut notes = vec![format!(
            "prepared in {:.1} s (node initramfs {} B)",
            prepare.as_secs_f64(),
            fs::metadata(&initramfs).map_or(0, |m| m.len())
        )];

        let healthy = format!("bulwark-node: healthy version={}", node.version);
        let spec = MachineSpec {
            kernel: self.kernel.clone(),
            initramfs,
            memory_mib: scenario.memory_mib,
            devices: scenario.devices.iter().map(|d| d.to_string()).collect(),
            objects: scenario.objects.iter().map(|o| o.to_string()).collect(),
            netdev: Some(format!(
                "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{}-{NODE_ADDR}:{API_PORT},hostfwd=tcp:127.0.0.1:{}-{NODE_ADDR}:{SERVICE_PORT}",
                plan.api_port, plan.service_port
            )),
            timeout: Duration::from_secs(scenario.timeout_secs),
            uefi: Some(UefiBoot::new(&dir, &made.disk, true)?),
            console_actions: vec![ConsoleAction {
                marker: "bulwark-node: starting".into(),
                monitor: None,
            }],
            exit_after_actions: None,
        };
        let driver_plan = plan.clone();
        let (machine, steps) = machine::boot_driven(
            &self.qemu,
            &spec,
            Some(Driver {
                marker: healthy.clone(),
                run: Box::new(move || drive(&driver_plan)),
            }),
        )?;
        for (marker, at) in &machine.marks {
            notes.push(format!(
                "{:>6.1} s after QEMU start: {marker:?}",
                at.as_secs_f64()
            ));
        }
        let mut lines = Vec::new();
        lines.push(check_line(
            "mj-node-healthy",
            machine.marks.iter().any(|(m, _)| *m == healthy),
            &format!("{healthy:?} on the console"),
        ));
        match steps {
            Some(steps) => {
                log.extend(steps.log);
                lines.extend(steps.lines);
            }
            None => lines.push(check_line(
                "mj-driver",
                false,
                "the host side never ran, or panicked",
            )),
        }
        // What the node kept on its disk: the encrypted weights (inside the uploaded
        // image) but never the plaintext weights or the request.
        let leaked = plaintext_on_disk(&made.disk, &plan.secrets);
        lines.push(check_line(
            "mj-no-plaintext",
            leaked.as_ref().is_ok_and(|l| l.is_empty()),
            &match &leaked {
                Ok(l) if l.is_empty() => format!(
                    "{} searched after the power-off: no plaintext weights, key or request",
                    made.disk.display()
                ),
                Ok(l) => format!("found on the node's disk: {}", l.join(", ")),
                Err(e) => e.clone(),
            },
        ));
        // The scratch disk of the VM still on the node (vm-b, stopped): a file of
        // ciphertext. Its service wrote the journal's header at start; in the clear
        // it would be there.
        let scratch = scratch_is_ciphertext(&made.disk, made.state_offset, &dir);
        lines.push(check_line(
            "mj-scratch-encrypted",
            scratch.is_ok(),
            &scratch.unwrap_or_else(|e| e),
        ));
        lines.push(check_line(
            "node-shutdown",
            machine
                .console
                .contains("bulwark-node: powering off: the ACPI power button")
                && matches!(machine.end, MachineEnd::Exited(_)),
            &format!("QEMU {:?}", machine.end),
        ));
        lines.push(format!("{PREFIX} done"));
        write(&dir.join("host-side.log"), log.join("\n"))?;
        notes.push(format!(
            "host side: {}",
            dir.join("host-side.log").display()
        ));
        let verdict = Verdict::judge(&lines.join("\n"), scenario.expected_checks, &machine.end);
        let run = ScenarioRun {
            scenario: scenario.name,
            verdict,
            machine,
            log_path: dir.join("console.log"),
            prepare,
            notes,
        };
        fs::write(&run.log_path, run.failure_report())
            .map_err(LabError::io(format!("writing {}", run.log_path.display())))?;
        Ok(run)
    }

    /// The tenant's signed image: the lab's kernel, an initramfs with bulwark-init and
    /// its modules, a guest-init config that serves the inference service behind
    /// attested TLS, and an ext4 rootfs with the service and the encrypted weights.
    /// Also returns the same image signed by another key (`other_key`, PEM) only.
    fn workload_image(
        &self,
        dir: &Path,
        secrets: &Path,
        other_key: &Path,
    ) -> Result<(PathBuf, PathBuf, PathBuf)> {
        fs::create_dir_all(dir).map_err(LabError::io(format!("creating {}", dir.display())))?;
        let built =
            programs::build_guest_programs(&self.workspace, &self.target_dir, WORKLOAD_PROGRAMS)?;
        let strip = dir.join("bin");
        let init = programs::strip_debug(&built[0], &strip)?;
        let service = programs::strip_debug(&built[1], &strip)?;
        let mut image = Initramfs::new();
        image
            .char_device("/dev/console", 5, 1)
            .host_file("/init", &init, 0o755)
            .dir("/lib/modules");
        for m in self.modules.load_order(WORKLOAD_MODULES)? {
            let name = m
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            image.host_file(&format!("/lib/modules/{name}"), &m, 0o644);
        }
        let initrd = dir.join("initramfs.cpio");
        image.write_to(&initrd)?;
        let tree = dir.join("rootfs-tree");
        let _ = fs::remove_dir_all(&tree);
        for d in ["bin", "proc", "dev", "tmp", "etc/model"] {
            fs::create_dir_all(tree.join(d)).map_err(LabError::io("creating the rootfs tree"))?;
        }
        fs::copy(&service, tree.join("bin/demo-inference"))
            .map_err(LabError::io("copying demo-inference"))?;
        fs::copy(
            secrets.join("weights.enc"),
            tree.join("etc/model/weights.enc"),
        )
        .map_err(LabError::io("copying the encrypted weights"))?;
        let rootfs = dir.join("rootfs.ext4");
        make_ext4(&tree, &rootfs, 16 << 20)?;
        let config = serde_json::json!({
            "format": "bulwark.init.v1",
            "modules": ["virtio_blk", "dm_verity", "virtio_rng", "dm_crypt", "xts", "ecb"],
            "rootfs": {"disk": "rootfs", "fs": "ext4", "verify": "full"},
            "scratch": {"disk": "scratch"},
            "devices": [{"id": DEVICE_ID}],
            "workload": {
                "argv": ["/bin/demo-inference", "serve", "--weights", "/etc/model/weights.enc",
                         "--listen", format!("127.0.0.1:{SERVICE_TCP}"),
                         "--journal", "/dev/scratch"],
                "env": {},
                "uid": 1000,
                "gid": 1000,
                "cwd": "/",
                "tmp_mib": 8
            },
            "ports": [{"vsock": ATLS_VSOCK, "tcp": SERVICE_TCP, "tls": "attested"}],
            "gpu": {"required": false}
        });
        let config_path = dir.join("guest-init.json");
        write(
            &config_path,
            serde_json::to_vec_pretty(&config).unwrap_or_default(),
        )?;
        let keys = dir.join("keys");
        let _ = fs::remove_dir_all(&keys);
        let (key, key_pub, _) = generate_key_pair(&keys).map_err(image_error("keygen"))?;
        let key = SigningKey::from_pem_file(&key).map_err(image_error("reading the key"))?;
        let bundle = dir.join("inference.bwi");
        let spec = BuildSpec {
            name: "tenant-inference".into(),
            version: 1,
            created: 0,
            kernel: self.kernel.clone(),
            initrd: Some(initrd),
            cmdline: Some("console=ttyS0 panic=-1 quiet".into()),
            config: Some(config_path),
            rootfs: Some(rootfs),
        };
        build(&spec, &bundle, &|_| {}).map_err(image_error("build"))?;
        let other = dir.join("inference-other-signer.bwi");
        fs::copy(&bundle, &other).map_err(LabError::io("copying the unsigned image"))?;
        sign(&bundle, &key, &|_| {}).map_err(image_error("sign"))?;
        let other_key =
            SigningKey::from_pem_file(other_key).map_err(image_error("reading the other key"))?;
        sign(&other, &other_key, &|_| {}).map_err(image_error("sign"))?;
        Ok((bundle, key_pub, other))
    }
}

/// The host side, from a healthy node to the VM's deletion. Every step is a check;
/// a failed step that later steps need ends the run early.
fn drive(p: &Plan) -> Steps {
    let mut s = Steps {
        lines: Vec::new(),
        log: Vec::new(),
        start: p.start,
    };
    let _ = drive_steps(p, &mut s);
    s
}

/// `None` when a step failed that the rest needs.
fn drive_steps(p: &Plan, s: &mut Steps) -> Option<()> {
    // Operator: bulwarkd over mutual TLS, through QEMU's port forward.
    let mut health = None;
    for _ in 0..60 {
        let r = ran(p.ctl().args(["node", "health"]), &mut s.log);
        if r.ok {
            health = Some(r);
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let ok = health.is_some();
    s.check(
        "mj-api-tls",
        ok,
        health.map_or("no answer over mutual TLS within 60 s".into(), |r| r.text()),
    )
    .then_some(())?;

    let devices = ran(p.ctl().args(["devices", "list"]), &mut s.log);
    let gpu = devices.json().as_array().and_then(|a| {
        a.iter()
            .find(|d| {
                d["id"] == DEVICE_ID && !d["address"].as_str().unwrap_or("").starts_with("0000:00:")
            })
            .and_then(|d| d["address"].as_str().map(str::to_owned))
    });
    let Some(gpu) = gpu else {
        s.check(
            "mj-enroll",
            false,
            format!("no {DEVICE_ID} behind a root port: {}", devices.text()),
        );
        return None;
    };
    let tenant = ran(
        p.ctl()
            .args(["tenants", "create", "tenant-a", "--key"])
            .arg(&p.tenant_pub),
        &mut s.log,
    );
    let upload = ran(
        p.ctl()
            .args(["images", "upload"])
            .arg(&p.workload)
            .args(["--name", "inference"]),
        &mut s.log,
    );
    s.check(
        "mj-upload",
        tenant.ok && upload.ok,
        format!("tenant: {}; image: {}", tenant.text(), upload.text()),
    )
    .then_some(())?;

    // Refusal: a VM asking for the device before bulwarkd ever scrubbed it (as found
    // on the machine: whatever its last user left in it).
    let unscrubbed = ran(
        p.vm_create("vm-x", "tenant-a", "inference")
            .args(["--gpu", &gpu]),
        &mut s.log,
    );
    s.check(
        "mj-refuse-unscrubbed-device",
        !unscrubbed.ok
            && unscrubbed.text().contains("409")
            && unscrubbed.text().contains("never scrubbed"),
        unscrubbed.text(),
    );

    let enrolled = ran(
        p.ctl().args(["devices", "enroll", &gpu, "--wait"]),
        &mut s.log,
    );
    let e = enrolled.json();
    let first_scrub = e["last_scrub"].clone();
    s.check(
        "mj-enroll",
        e["state"] == "available" && !first_scrub.is_null(),
        format!("{gpu}: state {}, last scrub {first_scrub}", e["state"]),
    )
    .then_some(())?;

    // Refusal: the same workload signed by another key is not the tenant's image;
    // bulwarkd verifies it against the tenant's keys at create.
    let other_upload = ran(
        p.ctl()
            .args(["images", "upload"])
            .arg(&p.other_signed)
            .args(["--name", "other-signer"]),
        &mut s.log,
    );
    let other_create = ran(
        &mut p.vm_create("vm-x", "tenant-a", "other-signer"),
        &mut s.log,
    );
    s.check(
        "mj-refuse-other-signer-image",
        other_upload.ok && !other_create.ok && other_create.text().contains("422"),
        other_create.text(),
    );

    let create = ran(
        p.vm_create("vm-a", "tenant-a", "inference").args([
            "--gpu",
            &gpu,
            "--port",
            &format!("{ATLS_VSOCK}:{SERVICE_PORT}"),
            "--scratch-mib",
            &SCRATCH_MIB.to_string(),
        ]),
        &mut s.log,
    );
    s.check("mj-vm-created", create.ok, create.text())
        .then_some(())?;

    // Tenant's security engineer: the policy, from the signed images alone plus the
    // machine the operator will start.
    let vmm_config = p.dir.join("vm-a.vmm.json");
    let got = ran(
        p.ctl()
            .args(["vms", "vmm-config", "vm-a", "--out"])
            .arg(&vmm_config),
        &mut s.log,
    );
    let policy = p.dir.join("policy.toml");
    let predicted = got.ok && write_policy(p, &vmm_config, &policy, &mut s.log, &[]).is_ok();
    s.check(
        "mj-predict",
        predicted,
        format!(
            "{} from bulwark-verify predict (workload image, VM machine with firmware {}), the signed node image version {} and the TPM's EK CA",
            policy.display(),
            p.firmware.display(),
            p.node_version
        ),
    )
    .then_some(())?;

    let started = ran(p.ctl().args(["vms", "start", "vm-a"]), &mut s.log);
    let jail = &started.json()["jail"];
    s.check(
        "mj-vm-running",
        started.ok && started.json()["state"] == "running" && jail["cgroup"].is_string(),
        if !started.ok {
            started.text()
        } else {
            format!(
                "state {}; its VMM jailed: uid {}, gid {}, cgroup {}, notes {}",
                started.json()["state"],
                jail["uid"],
                jail["gid"],
                jail["cgroup"],
                jail["notes"]
            )
        },
    )
    .then_some(())?;

    // Refusal: a second VM asking for the device the first one holds.
    let busy = ran(
        p.vm_create("vm-b", "tenant-a", "inference")
            .args(["--gpu", &gpu]),
        &mut s.log,
    );
    s.check(
        "mj-refuse-busy-device",
        !busy.ok && busy.text().contains("409"),
        busy.text(),
    );

    // Customer: attested TLS, then the key and the request.
    let request = p.secrets.join("request.json");
    let mut connect = None;
    for _ in 0..30 {
        let r = ran(&mut p.connect(&policy, &request), &mut s.log);
        // Until the guest's service is up the bridge has nothing to serve (exit 2).
        let retry = r.code == Some(2);
        connect = Some(r);
        if !retry {
            break;
        }
        std::thread::sleep(Duration::from_secs(3));
    }
    let connect = connect?;
    // What the guest reported to bulwarkd (stages, evidence served), for the record.
    let guest = ran(p.ctl().args(["vms", "guest", "vm-a"]), &mut s.log);
    let g = guest.json();
    let stages: Vec<&str> = g["progress"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["stage"].as_str()).collect())
        .unwrap_or_default();
    s.log.push(format!(
        "guest: stages {}, evidence served {}, refused {}, last evidence error {}",
        stages.join(" → "),
        g["evidence_served"],
        g["evidence_refused"],
        g["last_evidence_error"]
    ));
    s.check(
        "mj-attested",
        connect.ok && connect.stdout.contains("VERIFIED"),
        connect.verdict(),
    );
    let answer = p.dir.join("answer.json");
    let _ = fs::write(&answer, answer_of(&connect.stdout));
    let checked = ran(
        Command::new(&p.tenant_tool)
            .arg("check-answer")
            .arg(&answer),
        &mut s.log,
    );
    s.check("mj-inference", connect.ok && checked.ok, checked.text());

    // The guest's scratch disk: bulwark-init mapped it through dm-crypt with a key
    // made at boot, and the service kept the request there (what the node holds of
    // it is checked after the power-off: mj-no-plaintext, mj-scratch-encrypted).
    let (_, g) = p.guest_said("vm-a", "kept on scratch", 10, &mut s.log);
    // bulwark-init's `root_mounted` line: the devices it found, the scratch disk.
    let mounted = g["progress"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["stage"] == "root_mounted"))
        .and_then(|p| p["detail"].as_str())
        .unwrap_or("")
        .to_owned();
    let part = |key: &str| {
        mounted
            .split("; ")
            .find_map(|p| p.strip_prefix(key))
            .map(str::to_owned)
    };
    let device = part("devices: ");
    s.check(
        "mj-guest-device",
        device
            .as_ref()
            .is_some_and(|d| d.starts_with(&format!("{DEVICE_ID} at "))),
        format!(
            "bulwark-init found the passed-through device on the VM's PCI bus: {}",
            device.as_deref().unwrap_or("nothing reported")
        ),
    );
    let mapped = part("scratch: ");
    let kept = g["stderr"]["tail"].as_str().and_then(|t| {
        t.lines()
            .find(|l| l.contains("kept on scratch"))
            .map(|l| l.trim().to_owned())
    });
    s.check(
        "mj-guest-scratch",
        mapped.as_ref().is_some_and(|m| m.contains("dm-crypt")) && kept.is_some(),
        format!(
            "bulwark-init: {}; the service: {}",
            mapped.as_deref().unwrap_or("no scratch disk reported"),
            kept.as_deref().unwrap_or("kept nothing on scratch")
        ),
    );

    // Refusals by the customer's verifier.
    let refuse = |s: &mut Steps, name: &str, extra: &[(&str, &str)], expect: &str| {
        let pol = p.dir.join(format!("policy-{name}.toml"));
        if write_policy(p, &vmm_config, &pol, &mut s.log, extra).is_err() {
            s.check(name, false, "could not write the policy");
            return;
        }
        let r = ran(&mut p.connect(&pol, &request), &mut s.log);
        s.check(
            name,
            r.code == Some(1) && r.verdict().contains(expect),
            r.verdict(),
        );
    };
    let other = p.other_pub.display().to_string();
    refuse(
        s,
        "mj-refuse-signer",
        &[("workload_trust", &other)],
        "launch-image",
    );
    let newer = (p.node_version + 1).to_string();
    refuse(
        s,
        "mj-refuse-node-version",
        &[("node_min_version", &newer)],
        "node-image",
    );

    // Replay: evidence made for one nonce, presented for another.
    let (made_for, presented_for) = ("11".repeat(32), "22".repeat(32));
    let (attest, replay) = p.attest_and_appraise(
        "vm-a",
        (&made_for, &presented_for),
        &policy,
        false,
        &mut s.log,
    );
    s.check(
        "mj-refuse-replay",
        attest.ok && replay.code == Some(1) && replay.verdict().contains("freshness-nonce"),
        replay.verdict(),
    );

    // Teardown: the VM goes, the device is scrubbed again before anyone else gets it.
    let stop = ran(p.ctl().args(["vms", "stop", "vm-a"]), &mut s.log);
    let delete = ran(p.ctl().args(["vms", "delete", "vm-a"]), &mut s.log);
    let mut after = serde_json::Value::Null;
    for _ in 0..60 {
        after = ran(p.ctl().args(["devices", "show", &gpu]), &mut s.log).json();
        if after["state"] == "available" && after["last_scrub"] != first_scrub {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let scrubbed =
        stop.ok && delete.ok && after["state"] == "available" && after["last_scrub"] != first_scrub;
    s.check(
        "mj-teardown-scrub",
        scrubbed,
        format!(
            "{gpu}: state {}, last scrub {} (before: {first_scrub})",
            after["state"], after["last_scrub"]
        ),
    )
    .then_some(())?;

    // The next tenant: its VM gets the device, and its evidence carries the scrub
    // made after the previous tenant's VM (its time, and "scrubbed": memory cleared
    // and read back zero).
    let scrubs = ran(p.ctl().args(["devices", "scrubs", &gpu]), &mut s.log).json();
    let last = scrubs
        .as_array()
        .and_then(|a| a.iter().find(|r| r["id"] == after["last_scrub"]))
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    let tenant_b = ran(
        p.ctl()
            .args(["tenants", "create", "tenant-b", "--key"])
            .arg(&p.tenant_pub),
        &mut s.log,
    );
    let create_b = ran(
        p.vm_create("vm-b", "tenant-b", "inference").args([
            "--gpu",
            &gpu,
            "--scratch-mib",
            &SCRATCH_MIB.to_string(),
        ]),
        &mut s.log,
    );
    let start_b = ran(p.ctl().args(["vms", "start", "vm-b"]), &mut s.log);
    // Its service up (journal open on the encrypted scratch disk) before anything else.
    let journal_b = start_b.ok
        && p.guest_said("vm-b", "journal on /dev/scratch", 60, &mut s.log)
            .0;
    s.log
        .push(format!("vm-b: journal open on /dev/scratch: {journal_b}"));
    let nonce = "33".repeat(32);
    let (attest_b, appraised) =
        p.attest_and_appraise("vm-b", (&nonce, &nonce), &policy, true, &mut s.log);
    let stated = sanitized_claim(&appraised.json(), &gpu);
    let at_ms = last["finished_at_ms"].as_u64();
    let matches = stated.as_ref().is_some_and(|z| {
        z["result"] == "scrubbed" && at_ms.is_some_and(|ms| z["at"].as_u64() == Some(ms / 1000))
    });
    s.check(
        "mj-next-tenant-sanitized",
        tenant_b.ok && create_b.ok && start_b.ok && attest_b.ok && appraised.ok && matches,
        format!(
            "vm-b of tenant-b: evidence {} under the same policy; it states {} for {gpu}; the scrub after vm-a: {last}",
            if appraised.ok { "affirmed" } else { "REFUSED" },
            stated.map_or("no sanitization".into(), |z| z.to_string()),
        ),
    );
    let _ = ran(p.ctl().args(["vms", "stop", "vm-b"]), &mut s.log);
    Some(())
}

/// The `sanitized` claim of device `bdf` in an appraisal's JSON (EAR-shaped), found
/// wherever the appraisal lists the evidence's isolation devices.
fn sanitized_claim(appraisal: &serde_json::Value, bdf: &str) -> Option<serde_json::Value> {
    fn walk(v: &serde_json::Value, bdf: &str) -> Option<serde_json::Value> {
        match v {
            serde_json::Value::Object(m) => {
                if m.get("host_bdf").and_then(|b| b.as_str()) == Some(bdf) {
                    if let Some(z) = m.get("sanitized").filter(|z| !z.is_null()) {
                        return Some(z.clone());
                    }
                }
                m.values().find_map(|x| walk(x, bdf))
            }
            serde_json::Value::Array(a) => a.iter().find_map(|x| walk(x, bdf)),
            _ => None,
        }
    }
    walk(appraisal, bdf)
}

/// What `connect --send` printed back from the service (the line after the
/// appraisal that parses as JSON).
fn answer_of(stdout: &str) -> String {
    stdout
        .lines()
        .rev()
        .find(|l| serde_json::from_str::<serde_json::Value>(l.trim()).is_ok_and(|v| v.is_object()))
        .unwrap_or("")
        .to_owned()
}

/// The customer's policy: `bulwark-verify predict`'s (the workload image and the
/// VM's machine, its firmware path replaced by this host's copy of the same bytes),
/// with the node's signed image, the TPM's EK CA and sanitization required.
/// `extra` changes it for a refusal: `workload_trust` (another key),
/// `node_min_version`.
fn write_policy(
    p: &Plan,
    vmm_config: &Path,
    out: &Path,
    log: &mut Vec<String>,
    extra: &[(&str, &str)],
) -> std::result::Result<(), String> {
    let get = |k: &str| extra.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
    let mut vm: serde_json::Value = fs::read(vmm_config)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("unreadable vmm config")?;
    if vm["machine"]["firmware"].is_string() {
        vm["machine"]["firmware"] = serde_json::json!(p.firmware);
    }
    let local = out.with_extension("vm.json");
    fs::write(&local, vm.to_string()).map_err(|e| e.to_string())?;
    let node_signer = key_id(&p.provider_pub)?;
    let trust = get("workload_trust").map_or(p.tenant_pub.clone(), PathBuf::from);
    let r = ran(
        Command::new(&p.verify)
            .arg("predict")
            .arg(&p.workload)
            .arg("--trust")
            .arg(&p.tenant_pub)
            .arg("--vm")
            .arg(&local)
            .args(["--node-signer", &node_signer]),
        log,
    );
    if !r.ok {
        return Err(r.text());
    }
    let mut policy = r.stdout;
    // Another trusted workload signer: the predicted measurement stays, the signer
    // list names only the other key.
    if trust != p.tenant_pub {
        let other = key_id(&trust)?;
        let tenant = key_id(&p.tenant_pub)?;
        policy = policy.replace(&tenant, &other);
    }
    let node = format!(
        "image_signers = [{node_signer:?}]\nimage_names = [\"bulwark-node\"]\nmin_image_version = {}\nek_roots = [{:?}]\n\n[[node.boot_images]]\nimage = {:?}\ntrust = [{:?}]\n",
        get("node_min_version").unwrap_or("0"),
        p.ek_root.display().to_string(),
        p.node_image.display().to_string(),
        p.provider_pub.display().to_string(),
    );
    policy = policy.replacen(&format!("image_signers = [{node_signer:?}]\n"), &node, 1);
    policy.push_str("\n[isolation]\nrequire_single_tenant = true\nrequire_exclusive_groups = true\nmax_since_sanitize_seconds = 3600\n");
    fs::write(out, policy).map_err(|e| e.to_string())
}

/// Reads vm-b's `scratch.img` off the node's state partition (`debugfs`, from
/// e2fsprogs) and checks it is what an encrypted scratch disk looks like from the
/// node: the size bulwarkd was asked for, written to (its first block not zero), and
/// without the plaintext its service wrote there (the journal's header).
fn scratch_is_ciphertext(
    disk: &Path,
    state_offset: u64,
    dir: &Path,
) -> std::result::Result<String, String> {
    use std::io::{Read, Seek};
    let state = dir.join("state-partition.ext4");
    let mut bytes = vec![0u8; (STATE_MIB << 20) as usize];
    fs::File::open(disk)
        .and_then(|mut f| {
            f.seek(std::io::SeekFrom::Start(state_offset))?;
            f.read_exact(&mut bytes)
        })
        .and_then(|()| fs::write(&state, &bytes))
        .map_err(|e| format!("copying the state partition out of {}: {e}", disk.display()))?;
    drop(bytes);
    let file = "/vms/vm-b/scratch.img";
    let out = dir.join("vm-b-scratch.img");
    let _ = fs::remove_file(&out);
    let dumped = Command::new("debugfs")
        .arg("-R")
        .arg(format!("dump {file} {}", out.display()))
        .arg(&state)
        .output()
        .map_err(|e| format!("debugfs: {e}"))?;
    let _ = fs::remove_file(&state);
    let kept = fs::read(&out).map_err(|e| {
        format!(
            "{file} not dumped from the state partition ({e}): {}",
            String::from_utf8_lossy(&dumped.stderr).trim()
        )
    })?;
    let _ = fs::remove_file(&out);
    let header = crate::inference::ScratchJournal::HEADER;
    let written = kept.iter().take(4096).any(|&b| b != 0);
    let clear = kept.windows(header.len()).any(|w| w == header);
    let detail = format!(
        "{file} on the node: {} bytes (asked {} MiB), first block {}, journal header {}",
        kept.len(),
        SCRATCH_MIB,
        if written { "written" } else { "never written" },
        if clear {
            "IN THE CLEAR"
        } else {
            "not in the clear"
        },
    );
    if kept.len() as u64 == SCRATCH_MIB << 20 && written && !clear {
        Ok(detail)
    } else {
        Err(detail)
    }
}

/// The hex key id (SHA-256 of the SPKI) of a PEM public key.
fn key_id(pem: &Path) -> std::result::Result<String, String> {
    bulwark_image::PublicKey::from_pem_file(pem)
        .map(|k| k.id_hex())
        .map_err(|e| format!("{}: {e}", pem.display()))
}

/// The TPM library bulwarkd opens at run time (`dlopen`, so `ldd` does not list it),
/// with what it links.
fn tcti_libraries() -> Result<Vec<PathBuf>> {
    let lib = ["/usr/lib/x86_64-linux-gnu/libtss2-tcti-device.so.0"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| LabError::Prerequisite {
            what: "libtss2-tcti-device.so.0 (bulwarkd's TPM access on the node)".into(),
            hint: "install Debian's libtss2-dev: run scripts/setup".into(),
        })?;
    programs::with_shared_libraries(&lib)
}

/// swtpm's local CA (`/etc/swtpm-localca.conf`), made by a throw-away `swtpm_setup`
/// if this host has not made it yet: the root that issues the lab TPMs' EK
/// certificates, and its intermediate.
struct EkCa {
    root: PathBuf,
    issuer: PathBuf,
}

fn swtpm_local_ca() -> Result<EkCa> {
    let dir = Path::new("/var/lib/swtpm-localca");
    let ca = EkCa {
        root: dir.join("swtpm-localca-rootca-cert.pem"),
        issuer: dir.join("issuercert.pem"),
    };
    if !ca.root.exists() || !ca.issuer.exists() {
        let setup = find_program("swtpm_setup").ok_or_else(|| LabError::Prerequisite {
            what: "swtpm_setup".into(),
            hint: "install Debian's swtpm-tools: run scripts/setup".into(),
        })?;
        let tmp = std::env::temp_dir().join(format!("bulwark-lab-ekca-{}", std::process::id()));
        fs::create_dir_all(&tmp).map_err(LabError::io("creating a TPM directory"))?;
        let r = super::host_command::run(
            Command::new(setup)
                .args(["--tpm2", "--create-ek-cert", "--overwrite", "--tpmstate"])
                .arg(&tmp),
        );
        let _ = fs::remove_dir_all(&tmp);
        r?;
    }
    Ok(ca)
}

/// A CA for bulwarkd's API, the node's server certificate (name [`API_NAME`]) and
/// an operator's client certificate: the operator's files in `dir`, the node's in
/// `node` (`server.pem`, `server.key`, `operators-ca.pem`).
fn api_pki(dir: &Path, node: &Path) -> Result<ApiFiles> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };
    let err = |e: rcgen::Error| LabError::UnexpectedOutput {
        command: "making the API certificates".into(),
        reason: e.to_string(),
    };
    for d in [dir, node] {
        fs::create_dir_all(d).map_err(LabError::io(format!("creating {}", d.display())))?;
    }
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "lab provider operations CA");
    let ca = ca_params.self_signed(&ca_key).map_err(err)?;
    let server_key = KeyPair::generate().map_err(err)?;
    let mut sp = CertificateParams::new(vec![API_NAME.to_string()]).map_err(err)?;
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = sp.signed_by(&server_key, &ca, &ca_key).map_err(err)?;
    let client_key = KeyPair::generate().map_err(err)?;
    let mut cp = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    cp.distinguished_name
        .push(DnType::CommonName, "lab operator");
    cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = cp.signed_by(&client_key, &ca, &ca_key).map_err(err)?;
    write(&node.join("server.pem"), server.pem())?;
    write(&node.join("server.key"), server_key.serialize_pem())?;
    write(&node.join("operators-ca.pem"), ca.pem())?;
    let files = ApiFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("operator.pem"),
        key: dir.join("operator.key"),
    };
    write(&files.ca, ca.pem())?;
    write(&files.cert, client.pem())?;
    write(&files.key, client_key.serialize_pem())?;
    Ok(files)
}

fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(LabError::io("finding a free port"))
}

/// Byte strings of the tenant's secrets found in `disk` (the node's disk image after
/// the power-off): the plaintext weights, the key, the request.
fn plaintext_on_disk(disk: &Path, secrets: &Path) -> std::result::Result<Vec<String>, String> {
    let image = fs::read(disk).map_err(|e| format!("reading {}: {e}", disk.display()))?;
    let mut found = Vec::new();
    for name in ["weights.plain", "weights.key", "request.json"] {
        let Ok(bytes) = fs::read(secrets.join(name)) else {
            continue;
        };
        // A distinctive stretch (whole files can straddle an ext4 block boundary).
        let needle: Vec<u8> = bytes.iter().copied().take(48).collect();
        if needle.len() >= 16 && image.windows(needle.len()).any(|w| w == needle.as_slice()) {
            found.push(name.to_owned());
        }
    }
    Ok(found)
}
