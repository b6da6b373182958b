//! The lab runner: boots the lab machine (L1, QEMU TCG with an Intel IOMMU, the
//! scenario's PCI devices and KVM inside) on a Debian cloud kernel, runs a scenario
//! script there and judges its result lines.
//!
//! Downloads (the kernel package and `busybox-static`) are cached, unpacked, under
//! `$BULWARK_LAB_CACHE`, else `$XDG_CACHE_HOME/bulwark/lab`, else `~/.cache/bulwark/lab`.
//! Build outputs and run logs go under `target/lab/` of the workspace.

pub mod debian;
pub mod error;
pub mod guest_init_bundles;
mod host_command;
pub mod initramfs;
pub mod l2_bundle;
pub mod machine;
mod main_job;
pub mod modules;
mod node_boot;
pub mod node_disk;
pub mod programs;
pub mod scenario;
pub mod verdict;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use error::{LabError, Result};
use initramfs::Initramfs;
use machine::{MachineRun, MachineSpec};
use modules::ModuleTree;
pub use scenario::{Scenario, SCENARIOS};
use verdict::Verdict;

/// Environment variable overriding where downloaded packages are cached.
pub const CACHE_ENV: &str = "BULWARK_LAB_CACHE";

const L1_INIT: &str = include_str!("../../lab/l1-init.sh");
const L1_LIB: &str = include_str!("../../lab/l1-lib.sh");
/// The check the L1 init reports after loading the scenario's modules.
const MODULES_CHECK: &str = "modules-loaded";

/// A lab ready to run scenarios: QEMU found, kernel and busybox fetched.
#[derive(Debug)]
pub struct Lab {
    qemu: PathBuf,
    workspace: PathBuf,
    target_dir: PathBuf,
    kernel: PathBuf,
    modules: ModuleTree,
    busybox: PathBuf,
}

/// The outcome of one scenario run.
#[derive(Debug)]
pub struct ScenarioRun {
    pub scenario: &'static str,
    pub verdict: Verdict,
    pub machine: MachineRun,
    /// Where the full L1 console log was written.
    pub log_path: PathBuf,
    /// Time spent building programs and the initramfs before booting.
    pub prepare: Duration,
    /// Measurements worth reporting (sizes, times to markers).
    pub notes: Vec<String>,
}

impl ScenarioRun {
    /// Whether every expected check passed.
    pub fn passed(&self) -> bool {
        self.verdict.passed()
    }

    /// A summary: the checks, the problems, the timings and where the log is.
    pub fn summary(&self) -> String {
        let mut text = format!(
            "lab scenario {}: {} (prepare {:.1} s, L1 {:.1} s, {:?})\n{}",
            self.scenario,
            if self.passed() { "passed" } else { "FAILED" },
            self.prepare.as_secs_f64(),
            self.machine.elapsed.as_secs_f64(),
            self.machine.end,
            self.verdict
        );
        for note in &self.notes {
            let _ = writeln!(text, "  {note}");
        }
        let _ = writeln!(text, "  L1 log: {}", self.log_path.display());
        text
    }

    /// The summary followed by the whole L1 log, for a failing test's message.
    pub fn failure_report(&self) -> String {
        format!(
            "{}\n--- L1 command ---\n{}\n--- L1 console ---\n{}",
            self.summary(),
            self.machine.command,
            self.machine.console
        )
    }
}

/// The cache directory for downloaded packages.
pub fn cache_dir() -> Result<PathBuf> {
    let from_env = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = from_env(CACHE_ENV) {
        return Ok(dir);
    }
    if let Some(dir) = from_env("XDG_CACHE_HOME") {
        return Ok(dir.join("bulwark/lab"));
    }
    from_env("HOME")
        .map(|home| home.join(".cache/bulwark/lab"))
        .ok_or_else(|| LabError::Prerequisite {
            what:
                "no cache directory: neither $BULWARK_LAB_CACHE, $XDG_CACHE_HOME nor $HOME is set"
                    .into(),
            hint: "set BULWARK_LAB_CACHE to a directory outside the repository".into(),
        })
}

impl Lab {
    /// Builds the scenario's host-built programs and puts each into `image` as
    /// `/bin/NAME`, without debug information (over 150 MB each in a debug build,
    /// more than L1's memory holds in its initramfs), with its shared libraries.
    fn add_host_built_programs(
        &self,
        image: &mut Initramfs,
        scenario: &Scenario,
        dir: &Path,
    ) -> Result<()> {
        let host_built = programs::build_host_programs(
            &self.workspace,
            &self.target_dir,
            scenario.host_built_programs,
        )?;
        for (program, path) in scenario.host_built_programs.iter().zip(host_built) {
            let files = programs::with_shared_libraries(&path)?;
            let stripped = programs::strip_debug(&path, &dir.join("host-bin"))?;
            image.host_file(&format!("/bin/{}", program.bin), &stripped, 0o755);
            for lib in files.iter().skip(1) {
                image.host_file(&lib.to_string_lossy(), lib, 0o755);
            }
        }
        Ok(())
    }

    /// Finds QEMU and fetches (or finds in the cache) the kernel and busybox.
    pub fn open() -> Result<Lab> {
        let qemu = machine::qemu_binary()?;
        let cache = debian::PackageCache::new(cache_dir()?);
        let kernel_package = debian::kernel_package()?;
        let release = kernel_package.trim_start_matches("linux-image-");
        let kernel_root = cache.unpacked(&kernel_package)?;
        let kernel = kernel_root.join("boot").join(format!("vmlinuz-{release}"));
        let busybox = cache.unpacked("busybox-static")?.join("bin/busybox");
        for file in [&kernel, &busybox] {
            if !file.is_file() {
                return Err(LabError::UnexpectedOutput {
                    command: "dpkg -x".into(),
                    reason: format!("{} is missing from the unpacked package", file.display()),
                });
            }
        }
        let modules = ModuleTree::open(&kernel_root.join("lib/modules").join(release))?;
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the crate lives in a workspace directory")
            .to_owned();
        let target_dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("target"))
            .join("lab");
        Ok(Lab {
            qemu,
            workspace,
            target_dir,
            kernel,
            modules,
            busybox,
        })
    }

    /// Builds what `scenario` needs, boots L1 and judges the run. An `Err` means the
    /// lab could not run the scenario at all; a run whose checks fail is an `Ok`
    /// with a failing verdict.
    pub fn run(&self, scenario: &Scenario) -> Result<ScenarioRun> {
        if let Some(node) = &scenario.node {
            return self.run_node(scenario, node);
        }
        let start = Instant::now();
        let dir = self.target_dir.join("runs").join(scenario.name);
        fs::create_dir_all(&dir).map_err(LabError::io(format!("creating {}", dir.display())))?;
        let initramfs_path = dir.join("l1-initramfs.cpio");
        self.l1_initramfs(scenario, &dir)?
            .write_to(&initramfs_path)?;
        let prepare = start.elapsed();

        let spec = MachineSpec {
            kernel: self.kernel.clone(),
            initramfs: initramfs_path,
            memory_mib: scenario.memory_mib,
            devices: scenario.devices.iter().map(|d| d.to_string()).collect(),
            objects: scenario.objects.iter().map(|o| o.to_string()).collect(),
            netdev: None,
            timeout: Duration::from_secs(scenario.timeout_secs),
            uefi: None,
            console_actions: Vec::new(),
            exit_after_actions: None,
        };
        let machine = machine::boot(&self.qemu, &spec)?;
        let mut expected = vec![MODULES_CHECK];
        expected.extend_from_slice(scenario.expected_checks);
        let verdict = Verdict::judge(&machine.console, &expected, &machine.end);
        let log_path = dir.join("console.log");
        let run = ScenarioRun {
            scenario: scenario.name,
            verdict,
            machine,
            log_path,
            prepare,
            notes: Vec::new(),
        };
        fs::write(&run.log_path, run.failure_report())
            .map_err(LabError::io(format!("writing {}", run.log_path.display())))?;
        Ok(run)
    }

    fn l1_initramfs(&self, scenario: &Scenario, dir: &Path) -> Result<Initramfs> {
        let mut image = self.busybox_image(L1_INIT);
        image.file("/lab/lib.sh", L1_LIB, 0o644);
        image.file("/lab/scenario.sh", scenario.script, 0o644);
        for (i, module) in self
            .modules
            .load_order(scenario.modules)?
            .iter()
            .enumerate()
        {
            let name = module
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            image.host_file(&format!("/lab/modules/{i:02}-{name}"), module, 0o644);
        }
        // The L1 programs and the L2 guest's programs, in one build.
        let l2_programs = scenario.l2.map_or(&[][..], |l2| l2.programs);
        let all: Vec<_> = scenario
            .guest_programs
            .iter()
            .chain(l2_programs)
            .copied()
            .collect();
        let mut built = programs::build_guest_programs(&self.workspace, &self.target_dir, &all)?;
        let l2_built = built.split_off(scenario.guest_programs.len());
        for (program, path) in scenario.guest_programs.iter().zip(built) {
            image.host_file(&format!("/bin/{}", program.bin), &path, 0o755);
        }
        self.add_host_built_programs(&mut image, scenario, dir)?;
        for program in scenario.host_programs {
            for file in programs::with_shared_libraries(Path::new(program))? {
                image.host_file(&file.to_string_lossy(), &file, 0o755);
            }
        }
        for file in scenario.host_files {
            if !Path::new(file).is_file() {
                return Err(LabError::Prerequisite {
                    what: format!(
                        "{file} not found (scenario {} copies it into L1)",
                        scenario.name
                    ),
                    hint: "run scripts/setup".into(),
                });
            }
            image.host_file(file, Path::new(file), 0o644);
        }
        let release = programs::build_release_guest_programs(
            &self.workspace,
            &self.target_dir,
            scenario.release_programs,
        )?;
        for (program, path) in scenario.release_programs.iter().zip(release) {
            image.host_file(&format!("/bin/{}-release", program.bin), &path, 0o755);
        }
        for (var, l1_path) in scenario.env_programs {
            let Some(host) = std::env::var_os(var) else {
                continue;
            };
            let host = PathBuf::from(host);
            if !host.is_file() {
                return Err(LabError::Prerequisite {
                    what: format!("{} (${var}, for {l1_path} in L1) not found", host.display()),
                    hint: format!("set {var} to an existing file or unset it"),
                });
            }
            image.host_file(l1_path, &host, 0o755);
        }
        let tiny =
            programs::build_tiny_guests(&self.workspace, &self.target_dir, scenario.tiny_guests)?;
        for (name, elf) in &tiny {
            image.host_file(&format!("/lab/tiny/{name}"), elf, 0o644);
            image.host_file(
                &format!("/lab/tiny/{name}.bin"),
                &elf.with_extension("bin"),
                0o644,
            );
        }
        if scenario.signed_tiny_guests {
            let guests: Vec<(&str, PathBuf)> = tiny.iter().map(|(n, p)| (*n, p.clone())).collect();
            for (l1_path, host) in l2_bundle::prepare_tiny(&dir.join("tiny"), &guests)? {
                image.host_file(&l1_path, &host, 0o644);
            }
        }
        if let Some(l2) = scenario.l2.as_ref().filter(|l2| l2.guest_init) {
            // bulwark-init is /init of signed tenant images (its programs: bulwark-init,
            // then the workload for the rootfs); no busybox in L2.
            let (Some(init), Some(workload)) = (l2_built.first(), l2_built.get(1)) else {
                return Err(LabError::UnexpectedOutput {
                    command: "scenario definition".into(),
                    reason: "a guest_init L2 needs the programs bulwark-init and the workload"
                        .into(),
                });
            };
            let modules = self.modules.load_order(l2.modules)?;
            let firmware = programs::build_firmware(&self.target_dir)?;
            let files = guest_init_bundles::prepare(
                &dir.join("gi"),
                &self.kernel,
                init,
                workload,
                &modules,
                &firmware,
            )?;
            for (l1_path, host) in files {
                image.host_file(&l1_path, &host, 0o644);
            }
        } else if let Some(l2) = &scenario.l2 {
            let mut l2_image = Vec::new();
            let mut l2_files = self.busybox_image(l2.init);
            for (program, path) in l2.programs.iter().zip(&l2_built) {
                l2_files.host_file(&format!("/bin/{}", program.bin), path, 0o755);
            }
            for (i, module) in self.modules.load_order(l2.modules)?.iter().enumerate() {
                let name = module
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                l2_files.host_file(&format!("/lab/modules/{i:02}-{name}"), module, 0o644);
            }
            l2_files.write_archive(&mut l2_image)?;
            if l2.signed_bundles {
                let prepare = if l2.virtio_bundle {
                    l2_bundle::prepare_virtio
                } else {
                    l2_bundle::prepare
                };
                for (l1_path, host) in prepare(&dir.join("l2"), &self.kernel, &l2_image)? {
                    image.host_file(&l1_path, &host, 0o644);
                }
            }
            if scenario.l2_vmlinux {
                let vmlinux_dir = dir.join("l2");
                fs::create_dir_all(&vmlinux_dir)
                    .map_err(LabError::io(format!("creating {}", vmlinux_dir.display())))?;
                let vmlinux = vmlinux_dir.join("vmlinux");
                l2_bundle::extract_vmlinux(&self.kernel, &vmlinux)?;
                image.host_file("/lab/l2/vmlinux", &vmlinux, 0o644);
            }
            image.file("/lab/l2/initramfs.cpio", l2_image, 0o644);
            image.host_file("/lab/l2/vmlinuz", &self.kernel, 0o644);
        }
        Ok(image)
    }

    /// An image with busybox, a console device node and `init` as `/init`.
    fn busybox_image(&self, init: &str) -> Initramfs {
        let mut image = Initramfs::new();
        image
            .host_file("/bin/busybox", &self.busybox, 0o755)
            .symlink("/bin/sh", "busybox")
            .char_device("/dev/console", 5, 1)
            .file("/init", init, 0o755);
        image
    }
}
