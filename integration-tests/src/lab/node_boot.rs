//! Scenarios whose L1 machine is a node: the node image (UKI with bulwark-node-init
//! as `/init`, bulwarkd, bulwark-vmm and the modules; no shell) on a GPT disk, booted
//! by OVMF with a TPM. The node cannot run a scenario script, so the runner judges
//! the console itself and writes the result lines the verdict reads.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::error::{LabError, Result};
use super::host_command::{find_program, run};
use super::initramfs::Initramfs;
use super::machine::{self, ConsoleAction, MachineSpec, UefiBoot};
use super::node_disk::{self, NodeDiskInputs};
use super::programs;
use super::scenario::{NodeBoot, Scenario};
use super::verdict::{MachineEnd, Verdict};
use super::{Lab, ScenarioRun};
use crate::result_line::{check_line, PREFIX};

/// bulwark-node-init's markers (images/node-init/src/node.rs, measurements.rs).
const HEALTHY: &str = "bulwark-node: healthy version=";
const BOOT_COMPLETE: &str = "bulwark-node: boot complete";
const PCR_PREFIX: &str = "bulwark-node: pcr sha256 ";
const EVENT_LOG_BEGIN: &str = "bulwark-node: event-log begin ";
const EVENT_LOG_END: &str = "bulwark-node: event-log end";
/// systemd's PCR 11 predictor (package `systemd`).
const SYSTEMD_MEASURE: &str = "/usr/lib/systemd/systemd-measure";

impl Lab {
    /// Builds the node image for `scenario`, boots it under OVMF + swtpm and judges
    /// the console.
    pub(super) fn run_node(&self, scenario: &Scenario, node: &NodeBoot) -> Result<ScenarioRun> {
        if node.main_job {
            return self.run_main_job(scenario, node);
        }
        let start = Instant::now();
        let dir = self.target_dir.join("runs").join(scenario.name);
        fs::create_dir_all(&dir).map_err(LabError::io(format!("creating {}", dir.display())))?;
        let image = self.node_initramfs(scenario, node, &dir)?;
        let cpio = dir.join("node-initramfs.cpio");
        let initramfs = dir.join("node-initramfs.cpio.zst");
        compress(&image, &cpio, &initramfs)?;
        let update_initramfs = match node.update_bulwarkd_config {
            Some(config) => {
                let update = NodeBoot {
                    bulwarkd_config: config,
                    ..*node
                };
                let image = self.node_initramfs(scenario, &update, &dir)?;
                let zst = dir.join("node-initramfs-update.cpio.zst");
                compress(&image, &dir.join("node-initramfs-update.cpio"), &zst)?;
                let _ = fs::remove_file(dir.join("node-initramfs-update.cpio"));
                Some(zst)
            }
            None => None,
        };
        let inputs = NodeDiskInputs {
            kernel: self.kernel.clone(),
            initramfs: initramfs.clone(),
            update_initramfs,
            cmdline: "console=ttyS0 intel_iommu=on panic=-1 quiet".into(),
            base_version: node.version - 1,
            update_version: node.version,
            state_mib: 64,
            state_seed: None,
            secure_boot_signing: if node.secure_boot {
                Some(snakeoil_db_key(&dir)?)
            } else {
                None
            },
        };
        let made = node_disk::node_disk(&dir, &inputs)?;
        let disk = made.disk.clone();
        let size = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let uki = made.uki.clone();
        let prepare = start.elapsed();
        let mut notes = vec![format!(
            "initramfs {} B ({} B uncompressed), UKI {} B, disk image {} B; built in {:.1} s",
            size(&initramfs),
            size(&cpio),
            size(&uki),
            size(&disk),
            prepare.as_secs_f64()
        )];
        let _ = fs::remove_file(&cpio);
        if node.update_bulwarkd_config.is_some() {
            return self.run_node_fallback(scenario, node, &dir, &image, &made, notes, start);
        }
        if node.secure_boot {
            return self.run_node_secure_boot(scenario, node, &dir, &image, &made, notes, start);
        }

        let healthy_marker = format!("{HEALTHY}{}", node.version);
        let console_actions = match node.expect_fatal {
            // A node that must refuse to start: the fatal line, then its own power-off.
            Some(_) => vec![ConsoleAction {
                marker: "bulwark-node: FATAL: this node cannot start".into(),
                monitor: None,
            }],
            None => vec![
                ConsoleAction {
                    marker: "BdsDxe".into(),
                    monitor: None,
                },
                ConsoleAction {
                    marker: "bulwark-node: starting".into(),
                    monitor: None,
                },
                ConsoleAction {
                    marker: healthy_marker.clone(),
                    monitor: None,
                },
                // Then the node is asked to shut down the way a BMC's soft power-off
                // does: the ACPI power button.
                ConsoleAction {
                    marker: BOOT_COMPLETE.into(),
                    monitor: Some("system_powerdown".into()),
                },
            ],
        };
        let spec = MachineSpec {
            kernel: self.kernel.clone(),
            initramfs,
            memory_mib: scenario.memory_mib,
            devices: scenario.devices.iter().map(|d| d.to_string()).collect(),
            objects: scenario.objects.iter().map(|o| o.to_string()).collect(),
            netdev: None,
            timeout: Duration::from_secs(scenario.timeout_secs),
            uefi: Some(UefiBoot::new(&dir, &disk, true)?),
            console_actions,
            exit_after_actions: Some(Duration::from_secs(60)),
        };
        let machine = machine::boot(&self.qemu, &spec)?;
        for (marker, at) in &machine.marks {
            notes.push(format!(
                "{:>6.1} s after QEMU start: {marker:?}",
                at.as_secs_f64()
            ));
        }
        let mut lines = Vec::new();
        let mut check = |name: &str, passed: bool, detail: String| {
            lines.push(check_line(name, passed, &detail));
        };
        let console = &machine.console;
        check(
            "node-no-shell",
            has_no_shell(&image),
            "the node initramfs has no shell".into(),
        );
        if let Some(expected) = node.expect_fatal {
            let fatal = line_with(console, "bulwark-node: FATAL:");
            check(
                "node-fatal-reported",
                fatal.contains(expected) && !console.contains(HEALTHY),
                fatal,
            );
            let off = line_with(console, "bulwark-node: powering off:");
            check(
                "node-fatal-poweroff",
                off.contains("powering off: fatal error")
                    && matches!(machine.end, MachineEnd::Exited(_)),
                format!("{off}; QEMU {:?}", machine.end),
            );
        } else {
            let healthy_at = machine
                .marks
                .iter()
                .find(|(m, _)| *m == healthy_marker)
                .map(|(_, at)| *at);
            check(
                "node-healthy",
                healthy_at.is_some() && !console.contains("FATAL"),
                match healthy_at {
                    Some(at) => format!(
                        "{healthy_marker:?} {:.1} s after QEMU start",
                        at.as_secs_f64()
                    ),
                    None => format!("{healthy_marker:?} never shown"),
                },
            );
            check(
                "node-modules",
                console.contains("bulwark-node: modules loaded in")
                    && !console.contains("no /dev/kvm"),
                line_with(console, "modules loaded in"),
            );
            check(
                "node-tpm",
                console.contains("TPM: /dev/tpm0 present"),
                line_with(console, "bulwark-node: TPM:"),
            );
            check(
                "node-state-persistent",
                console.contains("bulwark-node: state: /dev/nvme0n1p2 mounted on /var/lib/bulwark")
                    && !console.contains("STATE IS NOT PERSISTENT"),
                line_with(console, "bulwark-node: state:"),
            );
            // systemd-boot booted the update on trial (its counter in the file name, named
            // in LoaderBootCountPath); once bulwarkd was healthy, bulwark-node-init
            // renamed it to its good name on the ESP and raised the anti-rollback floor.
            // The disk, read back after the power-off, must say the same.
            let counted = format!("\\EFI\\Linux\\bulwark-node-{}+", node.version);
            let blessed = format!("\\EFI\\Linux\\bulwark-node-{}.efi", node.version);
            let bless = line_with(console, "boot blessed");
            let after = bulwark_node_image::install::boot_state(&disk);
            let slots = after
                .as_ref()
                .map(|b| {
                    b.slots
                        .iter()
                        .map(|s| format!("{} {:?}", s.file, s.state))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_else(|e| e.to_string());
            check(
                "node-bless",
                bless.contains(&counted)
                    && bless.contains(&format!("-> {blessed}"))
                    && after.as_ref().is_ok_and(|b| {
                        b.floor == node.version
                            && b.slots.first().is_some_and(|s| {
                                s.version == node.version
                                    && s.state == bulwark_node_image::install::SlotState::Blessed
                            })
                    }),
                format!("{bless}; the disk after the power-off: {slots}"),
            );
            let pcrs = parse_pcrs(console);
            let pcr_text: String = pcrs.iter().map(|(i, v)| format!("{i} {v}\n")).collect();
            fs::write(dir.join("pcrs-sha256.txt"), &pcr_text)
                .map_err(LabError::io("writing pcrs-sha256.txt"))?;
            let pcr = |i: u32| pcrs.iter().find(|(n, _)| *n == i).map(|(_, v)| v.as_str());
            let zero = "0".repeat(64);
            check(
                "node-pcrs",
                pcrs.len() == 24
                    && [0, 4, 7, 9, 11]
                        .iter()
                        .all(|&i| pcr(i).is_some_and(|v| v != zero)),
                format!(
                    "{} sha256 PCRs in {}; PCR 4 {}, PCR 11 {}",
                    pcrs.len(),
                    dir.join("pcrs-sha256.txt").display(),
                    pcr(4).unwrap_or("-"),
                    pcr(11).unwrap_or("-")
                ),
            );
            let predicted = predict_pcr11(&dir, &inputs);
            check(
                "node-pcr11-predicted",
                matches!((&predicted, pcr(11)), (Ok(p), Some(v)) if p == v),
                match &predicted {
                    Ok(p) => format!(
                        "systemd-measure calculate: {p}, the node: {}",
                        pcr(11).unwrap_or("-")
                    ),
                    Err(e) => e.clone(),
                },
            );
            // Every PCR the image determines, as `bulwark-node-image measure` predicts it
            // (PCR 4 depends on the boot options the firmware tried: the verifier's check
            // below judges it by its events).
            let predicted = &made.prediction.prediction.pcrs;
            let differ: Vec<String> = [7u32, 9, 11, 12]
                .iter()
                .filter(|i| predicted.get(i).map(|p| p.sha256.as_str()) != pcr(**i))
                .map(|i| {
                    format!(
                        "PCR {i}: predicted {}, the node {}",
                        predicted.get(i).map_or("-", |p| p.sha256.as_str()),
                        pcr(*i).unwrap_or("-")
                    )
                })
                .collect();
            check(
                "node-pcrs-predicted",
                differ.is_empty(),
                if differ.is_empty() {
                    format!(
                        "PCRs 7, 9, 11, 12 as bulwark-node-image predicted for version {} (PCR 4 predicted {}, the node {})",
                        node.version,
                        predicted.get(&4).map_or("-", |p| p.sha256.as_str()),
                        pcr(4).unwrap_or("-")
                    )
                } else {
                    differ.join("; ")
                },
            );
            let log = event_log(console);
            if let Ok(bytes) = &log {
                fs::write(dir.join("binary_bios_measurements"), bytes)
                    .map_err(LabError::io("writing binary_bios_measurements"))?;
            }
            // The verifier's own judgement (bulwark-attestation's node_boot) on the
            // node's PCRs and event log: the booted image is the signed one.
            let recognised = match &log {
                Ok(bytes) => recognise_boot(&pcrs, bytes, &made.prediction),
                Err(e) => Err(e.clone()),
            };
            check(
                "node-boot-recognised",
                recognised.is_ok(),
                recognised.unwrap_or_else(|e| e),
            );
            check(
                "node-event-log",
                log.as_ref().is_ok_and(|b| b.len() > 1000),
                match &log {
                    Ok(b) => format!(
                        "{} B in {}",
                        b.len(),
                        dir.join("binary_bios_measurements").display()
                    ),
                    Err(e) => e.clone(),
                },
            );
            let replay = match &log {
                Ok(_) => replay_event_log(&dir.join("binary_bios_measurements")),
                Err(e) => Err(e.clone()),
            };
            check(
                "node-event-log-replays",
                replay.as_ref().is_ok_and(|r| {
                    !r.is_empty() && r.iter().all(|(i, v)| pcr(*i) == Some(v.as_str()))
                }),
                match &replay {
                    Ok(r) => {
                        let differ: Vec<String> = r
                            .iter()
                            .filter(|(i, v)| pcr(*i) != Some(v.as_str()))
                            .map(|(i, v)| {
                                format!("PCR {i}: log {v}, node {}", pcr(*i).unwrap_or("-"))
                            })
                            .collect();
                        if differ.is_empty() {
                            format!(
                                "tpm2_eventlog replays PCRs {} to the values the node read",
                                r.iter()
                                    .map(|(i, _)| i.to_string())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        } else {
                            differ.join("; ")
                        }
                    }
                    Err(e) => e.clone(),
                },
            );
            check(
                "node-shutdown",
                console.contains("bulwark-node: powering off: the ACPI power button")
                    && console.contains("bulwarkd stopped")
                    && matches!(machine.end, MachineEnd::Exited(_)),
                format!(
                    "{}; {}",
                    line_with(console, "bulwarkd stopped"),
                    line_with(console, "powering off:")
                ),
            );
        }
        lines.push(format!("{PREFIX} done"));
        let verdict = Verdict::judge(&lines.join("\n"), scenario.expected_checks, &machine.end);
        let log_path = dir.join("console.log");
        let run = ScenarioRun {
            scenario: scenario.name,
            verdict,
            machine,
            log_path,
            prepare,
            notes,
        };
        fs::write(&run.log_path, run.failure_report())
            .map_err(LabError::io(format!("writing {}", run.log_path.display())))?;
        Ok(run)
    }

    /// The node's initramfs: bulwark-node-init as `/init`, bulwarkd (host-built, with
    /// its shared libraries), the guest programs, the modules and the configs.
    pub(super) fn node_initramfs(
        &self,
        scenario: &Scenario,
        node: &NodeBoot,
        dir: &Path,
    ) -> Result<Initramfs> {
        let mut image = Initramfs::new();
        image.char_device("/dev/console", 5, 1);
        let built = programs::build_guest_programs(
            &self.workspace,
            &self.target_dir,
            scenario.guest_programs,
        )?;
        for (program, path) in scenario.guest_programs.iter().zip(built) {
            if program.bin == "bulwark-node-init" {
                image.host_file("/init", &path, 0o755);
            } else {
                image.host_file(&format!("/bin/{}", program.bin), &path, 0o755);
            }
        }
        if !image.contains("/init") {
            return Err(LabError::UnexpectedOutput {
                command: "scenario definition".into(),
                reason: "a node scenario's guest programs must include bulwark-node-init".into(),
            });
        }
        self.add_host_built_programs(&mut image, scenario, dir)?;
        for module in self.modules.load_order(scenario.modules)? {
            let name = module
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            image.host_file(&format!("/lib/modules/{name}"), &module, 0o644);
        }
        image
            .file("/etc/bulwark/node-init.json", node.init_config, 0o644)
            .file("/etc/bulwark/bulwarkd.json", node.bulwarkd_config, 0o644);
        for d in ["/proc", "/sys", "/run", "/tmp", "/var/lib/bulwark"] {
            image.dir(d);
        }
        Ok(image)
    }
}

/// Whether the node initramfs holds no shell (a node has no login of any kind).
fn has_no_shell(image: &Initramfs) -> bool {
    !["/bin/sh", "/bin/busybox", "/usr/bin/sh"]
        .iter()
        .any(|p| image.contains(p))
}

/// Writes `image` as a newc cpio to `cpio` and zstd-compresses it to `zst`.
pub(super) fn compress(image: &Initramfs, cpio: &Path, zst: &Path) -> Result<()> {
    image.write_to(cpio)?;
    let mut zstd = Command::new("zstd");
    zstd.args(["-q", "-f", "-T0", "-12", "-o"])
        .arg(zst)
        .arg(cpio);
    run(&mut zstd).map(drop)
}

impl Lab {
    /// `node-update-fallback`: the update's trial boot must fail and reboot, the
    /// next power-on boot the base version by itself.
    #[allow(clippy::too_many_arguments)]
    fn run_node_fallback(
        &self,
        scenario: &Scenario,
        node: &NodeBoot,
        dir: &Path,
        image: &Initramfs,
        made: &node_disk::NodeDisk,
        mut notes: Vec<String>,
        start: Instant,
    ) -> Result<ScenarioRun> {
        let prepare = start.elapsed();
        let base = node.version - 1;
        let mut boot = |n: u32, actions: Vec<ConsoleAction>| {
            let uefi = UefiBoot::new(dir, &made.disk, true)?;
            self.power_on(scenario, made, uefi, actions, 120, n, &mut notes)
        };
        // Power-on 1: the update on trial; its bulwarkd is refused its config and never
        // becomes healthy, so the node reboots at the trial's deadline (-no-reboot: QEMU
        // exits).
        let trial = boot(
            1,
            vec![ConsoleAction {
                marker: "bulwark-node: rebooting:".into(),
                monitor: None,
            }],
        )?;
        // Power-on 2: systemd-boot finds the trial's tries used up and boots the base.
        let healthy_marker = format!("{HEALTHY}{base}");
        let fallback = boot(
            2,
            vec![
                ConsoleAction {
                    marker: healthy_marker.clone(),
                    monitor: None,
                },
                ConsoleAction {
                    marker: BOOT_COMPLETE.into(),
                    monitor: Some("system_powerdown".into()),
                },
            ],
        )?;
        // What the disk says after the fallback, before power-on 3 changes it.
        let after = bulwark_node_image::install::boot_state(&made.disk);
        // Power-on 3: version 2 is taken to have run healthy (blessed: the floor rises
        // to 2), then set aside on the ESP by hand, so that systemd-boot starts version
        // 1 again: bulwark-node-init must refuse that rolled-back image by itself.
        let set_aside = set_aside_newest(&made.disk, node.version);
        let rolled_back = boot(
            3,
            vec![ConsoleAction {
                marker: ROLLBACK_REFUSED.into(),
                monitor: None,
            }],
        )?;
        let mut lines = Vec::new();
        let mut check = |name: &str, passed: bool, detail: String| {
            lines.push(check_line(name, passed, &detail));
        };
        check(
            "node-no-shell",
            has_no_shell(image),
            "the node initramfs has no shell".into(),
        );
        let counted = format!("\\EFI\\Linux\\bulwark-node-{}+0-1.efi", node.version);
        let t = &trial.console;
        check(
            "node-trial-failed",
            t.contains(&format!("this boot is a trial of {counted}"))
                && t.contains("bulwark-node: rebooting: the trial of")
                && !t.contains(HEALTHY)
                && matches!(trial.end, MachineEnd::Exited(_)),
            format!(
                "{}; {}; QEMU {:?}",
                line_with(t, "this boot is a trial of"),
                line_with(t, "rebooting:"),
                trial.end
            ),
        );
        let f = &fallback.console;
        let healthy_at = fallback
            .marks
            .iter()
            .find(|(m, _)| *m == healthy_marker)
            .map(|(_, at)| *at);
        check(
            "node-fallback-healthy",
            healthy_at.is_some()
                && f.contains(&format!(
                    "anti-rollback: version {base} is at or above the floor {base}"
                ))
                && !f.contains("this boot is a trial")
                && f.contains("nothing to bless")
                && f.contains("bulwark-node: powering off: the ACPI power button"),
            format!(
                "{healthy_marker:?} {}; {}",
                healthy_at.map_or("never shown".to_string(), |a| format!(
                    "{:.1} s after QEMU start",
                    a.as_secs_f64()
                )),
                line_with(f, "boot blessing")
            ),
        );
        let detail = match &after {
            Ok(b) => format!(
                "slots: {}; next boot {}; anti-rollback floor {}",
                b.slots
                    .iter()
                    .map(|s| format!("{} {:?}", s.file, s.state))
                    .collect::<Vec<_>>()
                    .join(", "),
                b.next_boot.as_ref().map_or("none", |s| s.file.as_str()),
                b.floor
            ),
            Err(e) => e.to_string(),
        };
        check(
            "node-fallback-disk",
            after.as_ref().is_ok_and(|b| {
                b.floor == base
                    && b.next_boot.as_ref().is_some_and(|s| s.version == base)
                    && b.slots.iter().any(|s| {
                        s.version == node.version
                            && matches!(s.state, bulwark_node_image::install::SlotState::Bad { .. })
                    })
            }),
            detail,
        );
        let r = &rolled_back.console;
        let refusal = format!(
            "{ROLLBACK_REFUSED}: this is version {base}, but version {} already ran healthy",
            node.version
        );
        check(
            "node-rollback-refused",
            set_aside.is_ok()
                && r.contains(&refusal)
                && !r.contains(HEALTHY)
                && r.contains("powering off in")
                && matches!(rolled_back.end, MachineEnd::Exited(_)),
            match &set_aside {
                Ok(done) => format!(
                    "{done}; power-on 3: {}; QEMU {:?}",
                    line_with(r, ROLLBACK_REFUSED),
                    rolled_back.end
                ),
                Err(e) => format!("setting version {} aside: {e}", node.version),
            },
        );
        let rolled_back_label = format!(
            "power-on 3 (version {} set aside, version {base} rolled back to)",
            node.version
        );
        power_ons_run(
            scenario,
            dir,
            lines,
            (fallback, "power-on 2 (the fallback)"),
            &[
                ("power-on 1 (the trial)", &trial.console),
                (&rolled_back_label, &rolled_back.console),
            ],
            prepare,
            notes,
        )
    }

    /// `node-secure-boot`: the signed node image boots with Secure Boot enforced;
    /// then its UKI, one byte flipped on the ESP, must not load.
    #[allow(clippy::too_many_arguments)]
    fn run_node_secure_boot(
        &self,
        scenario: &Scenario,
        node: &NodeBoot,
        dir: &Path,
        image: &Initramfs,
        made: &node_disk::NodeDisk,
        mut notes: Vec<String>,
        start: Instant,
    ) -> Result<ScenarioRun> {
        let prepare = start.elapsed();
        let mut boot = |n: u32, actions: Vec<ConsoleAction>| {
            let uefi = UefiBoot::secure_boot(dir, &made.disk, true)?;
            self.power_on(scenario, made, uefi, actions, 60, n, &mut notes)
        };
        // Power-on 1: the signed update on trial, to healthy; then the power button.
        let healthy_marker = format!("{HEALTHY}{}", node.version);
        let signed = boot(
            1,
            vec![
                ConsoleAction {
                    marker: healthy_marker.clone(),
                    monitor: None,
                },
                ConsoleAction {
                    marker: BOOT_COMPLETE.into(),
                    monitor: Some("system_powerdown".into()),
                },
            ],
        )?;
        // One byte of the (now blessed) UKI flipped on the ESP, in place.
        let tampered = flip_uki_byte(&made.disk, node.version);
        // Power-on 2: systemd-boot asks the firmware to load it; the firmware refuses
        // (systemd-boot then waits at its menu: QEMU is stopped there).
        let refused = boot(
            2,
            vec![ConsoleAction {
                marker: "Error loading".into(),
                monitor: Some("quit".into()),
            }],
        )?;
        let mut lines = Vec::new();
        let mut check = |name: &str, passed: bool, detail: String| {
            lines.push(check_line(name, passed, &detail));
        };
        check(
            "node-no-shell",
            has_no_shell(image),
            "the node initramfs has no shell".into(),
        );
        let s = &signed.console;
        check(
            "node-sb-healthy",
            s.contains(&healthy_marker)
                && s.contains("bulwark-node: UEFI Secure Boot: enforced")
                && s.contains("bulwark-node: powering off: the ACPI power button"),
            format!(
                "{}; {}; {}",
                line_with(s, "UEFI Secure Boot"),
                line_with(s, &healthy_marker),
                line_with(s, "boot blessing")
            ),
        );
        let r = &refused.console;
        check(
            "node-sb-tampered-refused",
            tampered.is_ok()
                && (r.contains("Access Denied") || r.contains("Security Violation"))
                && !r.contains("bulwark-node:")
                && !r.contains("Linux version"),
            format!(
                "{}; power-on 2: {}",
                tampered.as_ref().map_or_else(|e| e.clone(), |t| t.clone()),
                line_with(r, "Error loading")
            ),
        );
        power_ons_run(
            scenario,
            dir,
            lines,
            (signed, "power-on 1 (signed, Secure Boot enforced)"),
            &[("power-on 2 (the tampered UKI)", &refused.console)],
            prepare,
            notes,
        )
    }

    /// Power-on `n` of a node scenario's disk with `uefi`'s firmware: each console
    /// marker of `actions` is noted in `notes` with its time; QEMU is given
    /// `exit_after_s` to end by itself once the actions are done.
    #[allow(clippy::too_many_arguments)]
    fn power_on(
        &self,
        scenario: &Scenario,
        made: &node_disk::NodeDisk,
        uefi: UefiBoot,
        actions: Vec<ConsoleAction>,
        exit_after_s: u64,
        n: u32,
        notes: &mut Vec<String>,
    ) -> Result<machine::MachineRun> {
        let spec = MachineSpec {
            kernel: self.kernel.clone(),
            initramfs: made.disk.clone(),
            memory_mib: scenario.memory_mib,
            devices: scenario.devices.iter().map(|d| d.to_string()).collect(),
            objects: scenario.objects.iter().map(|o| o.to_string()).collect(),
            netdev: None,
            timeout: Duration::from_secs(scenario.timeout_secs),
            uefi: Some(uefi),
            console_actions: actions,
            exit_after_actions: Some(Duration::from_secs(exit_after_s)),
        };
        let run = machine::boot(&self.qemu, &spec)?;
        for (marker, at) in &run.marks {
            notes.push(format!(
                "power-on {n}: {:>6.1} s after QEMU start: {marker:?}",
                at.as_secs_f64()
            ));
        }
        Ok(run)
    }
}

/// The end of a node scenario of several power-ons: the check `lines` judged with
/// `main`'s end (the power-on whose clean end the scenario needs), and the log
/// holding each of the `others`' console, then `main`'s failure report.
fn power_ons_run(
    scenario: &Scenario,
    dir: &Path,
    mut lines: Vec<String>,
    (main, main_label): (machine::MachineRun, &str),
    others: &[(&str, &str)],
    prepare: Duration,
    notes: Vec<String>,
) -> Result<ScenarioRun> {
    lines.push(format!("{PREFIX} done"));
    let verdict = Verdict::judge(&lines.join("\n"), scenario.expected_checks, &main.end);
    let run = ScenarioRun {
        scenario: scenario.name,
        verdict,
        machine: main,
        log_path: dir.join("console.log"),
        prepare,
        notes,
    };
    let mut report = String::new();
    for (label, console) in others {
        report.push_str(&format!("=== {label} ===\n{console}\n"));
    }
    report.push_str(&format!("=== {main_label} ===\n{}", run.failure_report()));
    fs::write(&run.log_path, report)
        .map_err(LabError::io(format!("writing {}", run.log_path.display())))?;
    Ok(run)
}

/// Debian's snakeoil key without its passphrase (sbsign reads no encrypted keys),
/// in `dir`, with its certificate: the lab's provider db key.
fn snakeoil_db_key(dir: &Path) -> Result<bulwark_node_image::build::SecureBootSigning> {
    let key = dir.join("snakeoil-db.key");
    let mut openssl = Command::new("openssl");
    openssl
        .args([
            "rsa",
            "-in",
            machine::SNAKEOIL_KEY,
            "-passin",
            "pass:snakeoil",
            "-out",
        ])
        .arg(&key);
    run(&mut openssl)?;
    Ok(bulwark_node_image::build::SecureBootSigning {
        key,
        cert: machine::SNAKEOIL_CERT.into(),
    })
}

/// Flips one byte in the middle of `version`'s blessed UKI on `disk`'s ESP, in
/// place: what was done, or why not.
fn flip_uki_byte(disk: &Path, version: u64) -> std::result::Result<String, String> {
    use bulwark_node_image::install::{Slot, LINUX_DIR};
    let (esp, _) = bulwark_node_image::disk::esp::Esp::open(disk).map_err(|e| e.to_string())?;
    let path = format!("{LINUX_DIR}/{}", Slot::blessed_name(version));
    let mut uki = esp
        .read_file(&path, 1 << 30)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{path} is not on the ESP (was version {version} blessed?)"))?;
    let at = uki.len() / 2;
    uki[at] ^= 0x01;
    esp.overwrite_in_place(&path, &uki)
        .map_err(|e| e.to_string())?;
    esp.close().map_err(|e| e.to_string())?;
    Ok(format!("byte {at} of {path} ({} bytes) flipped", uki.len()))
}

/// bulwark-node-init's refusal of an image below the anti-rollback floor
/// (images/node-init/src/rollback.rs).
const ROLLBACK_REFUSED: &str = "FATAL: refusing to run a rolled-back node image";

/// Blesses `version`'s slot on `disk` (the floor rises to it, as after a healthy
/// boot of it) and renames its UKI out of systemd-boot's sight, as a hand that wants
/// the older image back would: what was done, or why not.
fn set_aside_newest(disk: &Path, version: u64) -> std::result::Result<String, String> {
    use bulwark_node_image::install::{bless, Slot, LINUX_DIR};
    let blessed = bless(disk, version).map_err(|e| e.to_string())?;
    let (esp, _) = bulwark_node_image::disk::esp::Esp::open(disk).map_err(|e| e.to_string())?;
    let from = format!("{LINUX_DIR}/{}", Slot::blessed_name(version));
    let to = format!("{LINUX_DIR}/set-aside-{}.bak", Slot::blessed_name(version));
    esp.rename(&from, &to).map_err(|e| e.to_string())?;
    esp.close().map_err(|e| e.to_string())?;
    Ok(format!(
        "version {version} blessed (floor {}), then {from} renamed {to}",
        blessed.floor
    ))
}

/// The first console line containing `needle`, trimmed (or a note that none does).
fn line_with(console: &str, needle: &str) -> String {
    console
        .lines()
        .find(|l| l.contains(needle))
        .map(|l| l.trim().to_owned())
        .unwrap_or_else(|| format!("no console line with {needle:?}"))
}

/// The `bulwark-node: pcr sha256 N HEX` lines, by index.
fn parse_pcrs(console: &str) -> Vec<(u32, String)> {
    let mut pcrs: Vec<(u32, String)> = console
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find(PCR_PREFIX)? + PCR_PREFIX.len()..];
            let (index, value) = rest.trim().split_once(' ')?;
            let value = value.trim().to_ascii_lowercase();
            (value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()))
                .then_some((index.parse().ok()?, value))
        })
        .collect();
    pcrs.sort();
    pcrs.dedup_by_key(|(i, _)| *i);
    pcrs
}

/// The event log printed between the markers, checked against its announced size.
fn event_log(console: &str) -> std::result::Result<Vec<u8>, String> {
    let mut lines = console.lines();
    let size: usize = lines
        .by_ref()
        .find_map(|l| {
            l.find(EVENT_LOG_BEGIN)
                .map(|i| l[i + EVENT_LOG_BEGIN.len()..].trim().to_owned())
        })
        .ok_or("no event log on the console")?
        .parse()
        .map_err(|e| format!("event log size: {e}"))?;
    let mut text = String::new();
    for line in lines {
        if line.contains(EVENT_LOG_END) {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map_err(|e| format!("event log base64: {e}"))?;
            return if bytes.len() == size {
                Ok(bytes)
            } else {
                Err(format!(
                    "event log: {} B decoded, {size} B announced",
                    bytes.len()
                ))
            };
        }
        text.push_str(line.trim());
    }
    Err("the event log has no end marker".into())
}

/// The sha256 PCRs that replaying the event log at `path` gives (`tpm2_eventlog`,
/// package `tpm2-tools`).
fn replay_event_log(path: &Path) -> std::result::Result<Vec<(u32, String)>, String> {
    if find_program("tpm2_eventlog").is_none() {
        return Err("tpm2_eventlog not found (Debian's tpm2-tools)".into());
    }
    let mut cmd = Command::new("tpm2_eventlog");
    cmd.arg(path);
    let out = run(&mut cmd).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(parse_replay(&text))
}

/// The `pcrs: sha256:` block at the end of `tpm2_eventlog`'s output
/// (`    11 : 0xHEX`).
fn parse_replay(text: &str) -> Vec<(u32, String)> {
    let Some(block) = text.rsplit_once("\npcrs:") else {
        return Vec::new();
    };
    block
        .1
        .lines()
        .skip_while(|l| l.trim() != "sha256:")
        .skip(1)
        .map_while(|l| {
            let (index, value) = l.split_once(':')?;
            let value = value.trim().strip_prefix("0x")?.to_ascii_lowercase();
            Some((index.trim().parse().ok()?, value))
        })
        .collect()
}

/// `bulwark_attestation::evidence::node_boot::appraise` on the node's PCRs and event
/// log, with the signed image's prediction as the one reference: the detail of the
/// passed check, or why it did not pass.
fn recognise_boot(
    pcrs: &[(u32, String)],
    log: &[u8],
    signed: &bulwark_node_image::measure::SignedPrediction,
) -> std::result::Result<String, String> {
    use bulwark_attestation::checks::Outcome;
    use bulwark_attestation::evidence::node_boot::{self, NodeReference};
    let quoted = pcrs
        .iter()
        .filter_map(|(i, v)| Some((*i, hex::decode(v).ok()?.try_into().ok()?)))
        .collect();
    let reference = NodeReference {
        name: signed.name.clone(),
        version: signed.version,
        manifest_sha384: signed.manifest_sha384,
        pcrs: node_boot::IMAGE_PCRS
            .iter()
            .filter_map(|p| Some((*p, *signed.signed_pcrs.get(p)?)))
            .collect(),
        boot_applications: signed.boot_applications(),
    };
    let references = [reference];
    let a = node_boot::appraise(&quoted, log, &references, &[], &signed.manifest_sha384);
    let c = a
        .checks
        .iter()
        .find(|c| c.name == node_boot::NODE_BOOT)
        .ok_or("no node-boot-image check")?;
    if c.result == Outcome::Passed {
        Ok(c.detail.clone())
    } else {
        Err(c.detail.clone())
    }
}

/// PCR 11 as systemd predicts it for the UKI's sections (UEFI-TPM.md: with
/// `--phase=''` it equals the value a node without systemd-pcrphase reads).
fn predict_pcr11(dir: &Path, inputs: &NodeDiskInputs) -> std::result::Result<String, String> {
    if find_program(SYSTEMD_MEASURE).is_none() {
        return Err(format!("{SYSTEMD_MEASURE} not found (Debian's systemd)"));
    }
    let [(_, cmdline), (_, osrel)] = node_disk::section_paths(dir);
    let mut cmd = Command::new(SYSTEMD_MEASURE);
    cmd.arg("calculate")
        .arg(format!("--linux={}", inputs.kernel.display()))
        .arg(format!("--initrd={}", inputs.initramfs.display()))
        .arg(format!("--cmdline={}", cmdline.display()))
        .arg(format!("--osrel={}", osrel.display()))
        .args(["--bank=sha256", "--phase="]);
    let out = run(&mut cmd).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // "11:sha256=HEX"
    text.lines()
        .find_map(|l| l.trim().strip_prefix("11:sha256="))
        .map(|v| v.trim().to_ascii_lowercase())
        .ok_or_else(|| format!("systemd-measure printed no PCR 11: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcrs_and_the_event_log_are_read_from_the_console() {
        let h = "ab".repeat(32);
        let console = format!(
            "noise\r\n[ 1.0] x {PCR_PREFIX}11 {h}\r\n{PCR_PREFIX}0 {}\n{PCR_PREFIX}3 short\n\
             {EVENT_LOG_BEGIN}5\nAQID\nBAU=\n{EVENT_LOG_END}\n",
            "CD".repeat(32)
        );
        let pcrs = parse_pcrs(&console);
        assert_eq!(pcrs, vec![(0, "cd".repeat(32)), (11, h)]);
        assert_eq!(event_log(&console).unwrap(), vec![1, 2, 3, 4, 5]);
        let wrong = console.replace("begin 5", "begin 6");
        assert!(event_log(&wrong).unwrap_err().contains("6 B announced"));
        assert!(event_log("nothing").unwrap_err().contains("no event log"));
        let replay =
            "- EventNum: 1\n  PCRIndex: 0\npcrs:\n  sha256:\n    0  : 0xAB\n    11 : 0xcd\n";
        assert_eq!(
            parse_replay(replay),
            vec![(0, "ab".into()), (11, "cd".into())]
        );
        assert!(parse_replay("no block").is_empty());
    }
}
