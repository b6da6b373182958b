//! One `bulwark-vmm` process per VM, jailed, driven only through its API socket.
//!
//! Jail (what is built): its own uid (allocated per VM from `jail.uid_base`), the
//! configured gid (one with access to /dev/kvm), no supplementary groups,
//! `no_new_privs`, its own mount namespace pivoted into a root holding only its files
//! (`jail_root`), a cgroup v2 with `cpu.max`, `memory.max` and `pids.max` joined
//! before exec, and bulwark-vmm's own seccomp filters.

use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::client;
use crate::config::JailConfig;
use crate::error::{Error, Kind, Result};
use crate::model::{NumaPlacement, Tenant, Vm};

/// Where a VM's files live: `<state-dir>/vms/<id>/`.
#[derive(Debug, Clone)]
pub struct VmPaths {
    pub dir: PathBuf,
    pub api_sock: PathBuf,
    /// The VMM's vsock Unix socket (`devices.vsock.uds_path`).
    pub vsock: PathBuf,
    pub log: PathBuf,
    pub serial: PathBuf,
    /// The VM's scratch disk (virtio-blk id [`SCRATCH_DISK_ID`]) when it has one.
    pub scratch: PathBuf,
    pub keys: Vec<PathBuf>,
}

/// The virtio-blk id of a VM's scratch disk (what bulwark-init looks for).
pub const SCRATCH_DISK_ID: &str = "scratch";

impl VmPaths {
    pub fn new(state_dir: &Path, id: &str) -> VmPaths {
        let dir = state_dir.join("vms").join(id);
        VmPaths {
            api_sock: dir.join("api.sock"),
            vsock: dir.join("vsock.sock"),
            log: dir.join("vmm.log"),
            serial: dir.join("serial.log"),
            scratch: dir.join("scratch.img"),
            keys: Vec::new(),
            dir,
        }
    }
}

fn host(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(Kind::Unprocessable, "jail", format!("{what}: {e}"))
}

/// Gives `gid` (the VMMs' group) read-write access to `kvm` (`/dev/kvm`), as udev's
/// kvm rule does on a distribution; a node has no udev, and devtmpfs makes the node
/// root's alone. Nothing changes when the group already has it.
pub fn grant_kvm(kvm: &Path, gid: u32) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(kvm).map_err(|e| host(&format!("{}", kvm.display()), e))?;
    if meta.gid() == gid && meta.mode() & 0o060 == 0o060 {
        return Ok(());
    }
    std::os::unix::fs::chown(kvm, None, Some(gid))
        .map_err(|e| host(&format!("chown {} to gid {gid}", kvm.display()), e))?;
    std::fs::set_permissions(kvm, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| host(&format!("chmod {}", kvm.display()), e))
}

/// Creates the VM's directory for the VMM's uid, writes the tenant's keys and, when
/// `vm` has one, creates its scratch disk afresh.
pub fn prepare(paths: &mut VmPaths, vm: &Vm, tenant: &Tenant, uid: u32, gid: u32) -> Result<()> {
    let _ = std::fs::remove_dir_all(&paths.dir);
    std::fs::create_dir_all(&paths.dir)
        .map_err(|e| host(&format!("creating {}", paths.dir.display()), e))?;
    paths.keys.clear();
    for (i, k) in tenant.signer_keys.iter().enumerate() {
        let p = paths.dir.join(format!("signer-{i}.pem"));
        std::fs::write(&p, k).map_err(|e| host(&format!("writing {}", p.display()), e))?;
        paths.keys.push(p);
    }
    if vm.scratch_mib > 0 {
        create_scratch(&paths.scratch, vm.scratch_mib, uid, gid)?;
    }
    for p in std::iter::once(&paths.dir).chain(&paths.keys) {
        std::os::unix::fs::chown(p, Some(uid), Some(gid))
            .map_err(|e| host(&format!("chown {}", p.display()), e))?;
    }
    std::fs::set_permissions(&paths.dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| host("chmod", e))?;
    Ok(())
}

/// Creates `path` as a file of `mib` MiB of zeros with its blocks reserved
/// (`fallocate`: nothing is written, reads give zeros), the VMM's (`uid`, `gid`),
/// mode 0600. Reserved, not sparse: a guest filling its disk can never fill the state
/// partition under bulwarkd's database, and a node without the room fails the start
/// here, with the reason, instead of the guest's writes failing later. Always a new
/// file: the guest encrypts the disk with a key made at each boot, so what an earlier
/// run wrote could not be read anyway. A leftover at `path` (a symlink included) is
/// removed first and never opened; the mode is set again after the open because the
/// umask may have taken bits from it.
fn create_scratch(path: &Path, mib: u32, uid: u32, gid: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let what = |step: &str| format!("scratch disk {}: {step}", path.display());
    let _ = std::fs::remove_file(path);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| host(&what("creating"), e))?;
    rustix::fs::fallocate(
        &file,
        rustix::fs::FallocateFlags::empty(),
        0,
        u64::from(mib) << 20,
    )
    .map_err(|e| host(&what(&format!("reserving {mib} MiB")), e))?;
    std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
        .map_err(|e| host(&what(&format!("chown to {uid}:{gid}")), e))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| host(&what("chmod 0600"), e))
}

/// What bulwarkd decides about a VM's machine beyond the VM record.
#[derive(Debug, Clone, Default)]
pub struct LaunchShape {
    /// The assigned functions (bridges left out): host address and `vendor:device`,
    /// stated in the config so that a tenant can predict the measurement offline.
    pub vfio: Vec<(String, String)>,
    /// The 64-bit PCI window (config `vmm_mmio64_gib`), else the VMM's default.
    pub mmio64_gib: Option<u32>,
    /// The guest firmware every VM boots through (config `vm_firmware`).
    pub firmware: Option<PathBuf>,
    /// The image carries a rootfs: it becomes the VM's read-only disk `rootfs`.
    pub rootfs: bool,
}

/// RLIMIT_MEMLOCK for a VMM that passes devices through: all guest RAM is pinned for
/// DMA, plus room for the VMM's own locked pages; `None` without devices.
pub fn memlock_bytes(vm: &Vm, shape: &LaunchShape) -> Option<u64> {
    (!shape.vfio.is_empty()).then(|| (u64::from(vm.mem_mib) + 64) << 20)
}

/// The bulwark-vmm configuration for `vm` (schema: hypervisor/openapi.yaml). Every VM
/// gets virtio-rng and the vsock channel; the image's rootfs, when it has one, is the
/// read-only disk `rootfs` (dm-verity checked in the guest); a scratch disk, when the
/// VM has one, is the writable disk `scratch` after it (dm-crypt in the guest, with a
/// key made at boot).
pub fn vmm_config(
    vm: &Vm,
    tenant: &Tenant,
    paths: &VmPaths,
    shape: &LaunchShape,
) -> serde_json::Value {
    let mut machine = json!({ "vcpus": vm.vcpus, "mem_mib": vm.mem_mib });
    if let Some(g) = shape.mmio64_gib {
        machine["mmio64_gib"] = g.into();
    }
    if let Some(f) = &shape.firmware {
        machine["firmware"] = json!(f);
    }
    let mut devices = json!({
        "serial": { "file": paths.serial },
        "rng": true,
        // The guest's channel to bulwarkd (host port 1024, docs/guest-protocol.md).
        "vsock": { "guest_cid": 3, "uds_path": paths.vsock },
        "vfio": shape.vfio.iter().map(|(a, id)| json!({ "bdf": a, "id": id })).collect::<Vec<_>>(),
    });
    let mut disks = Vec::new();
    if shape.rootfs {
        disks.push(json!({ "id": "rootfs", "bundle_rootfs": true }));
    }
    if vm.scratch_mib > 0 {
        disks.push(json!({ "id": SCRATCH_DISK_ID, "path": paths.scratch, "read_only": false }));
    }
    if !disks.is_empty() {
        devices["block"] = disks.into();
    }
    json!({
        "machine": machine,
        "boot_source": {
            "kind": "bundle",
            "path": vm.image,
            "trusted_keys": paths.keys,
            "min_version": tenant.min_version,
        },
        "devices": devices,
    })
}

/// Where VM `vm`'s VMM runs: the NUMA node of all its assigned devices (`devices`:
/// each one's address and the node the kernel reports), with that node's CPUs from
/// `sysfs_root/devices/system/node/nodeN/cpulist`, so that its vCPUs and guest memory
/// sit next to its GPUs. `Ok(None)` for a VM without devices; `Err(why)` when there is
/// no single node to place it on or `cgroup_controllers` (the cgroup parent's) lacks
/// `cpuset`.
pub fn numa_placement(
    sysfs_root: &Path,
    devices: &[(String, Option<i32>)],
    cgroup_controllers: &str,
) -> std::result::Result<Option<NumaPlacement>, String> {
    let mut nodes = std::collections::BTreeSet::new();
    for (addr, node) in devices {
        match node {
            Some(n) if *n >= 0 => {
                nodes.insert(*n as u32);
            }
            _ => return Err(format!("the kernel reports no NUMA node for {addr}")),
        }
    }
    let node = match nodes.len() {
        0 => return Ok(None),
        1 => *nodes.first().unwrap_or(&0),
        _ => {
            let list: Vec<String> = nodes.iter().map(u32::to_string).collect();
            return Err(format!(
                "the VM's devices are on NUMA nodes {}",
                list.join(" and ")
            ));
        }
    };
    if !cgroup_controllers.split_whitespace().any(|c| c == "cpuset") {
        return Err(format!(
            "cgroup v2 controller cpuset is not enabled in the cgroup parent (controllers: {:?})",
            cgroup_controllers.trim()
        ));
    }
    let path = sysfs_root.join(format!("devices/system/node/node{node}/cpulist"));
    let cpus = std::fs::read_to_string(&path)
        .map_err(|e| format!("reading {}: {e}", path.display()))?
        .trim()
        .to_string();
    if cpus.is_empty()
        || !cpus
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'-' || b == b',')
    {
        return Err(format!("{} holds {cpus:?}, not a CPU list", path.display()));
    }
    Ok(Some(NumaPlacement { node, cpus }))
}

/// A cgroup v2 for one VM: created with its limits; the VMM joins it before exec.
#[derive(Debug)]
pub struct Cgroup {
    pub dir: PathBuf,
    procs: std::fs::File,
}

impl Cgroup {
    pub fn create(parent: &Path, vm: &Vm, pids_max: u32) -> Result<Cgroup> {
        let err = |what: String, e: std::io::Error| host(&what, e);
        let controllers =
            std::fs::read_to_string(parent.join("cgroup.controllers")).map_err(|e| {
                err(
                    format!(
                        "{} is not a cgroup v2 directory (cgroup.controllers)",
                        parent.display()
                    ),
                    e,
                )
            })?;
        for c in ["cpu", "memory", "pids"] {
            if !controllers.split_whitespace().any(|x| x == c) {
                return Err(Error::new(
                    Kind::Unprocessable,
                    "jail",
                    format!("cgroup v2 controller {c} is not enabled in {} (controllers: {:?}); enable it in the parent's cgroup.subtree_control", parent.display(), controllers.trim()),
                ));
            }
        }
        let numa = vm.jail.as_ref().and_then(|j| j.numa.as_ref());
        let _ = std::fs::write(
            parent.join("cgroup.subtree_control"),
            if numa.is_some() {
                "+cpu +memory +pids +cpuset"
            } else {
                "+cpu +memory +pids"
            },
        );
        let dir = parent.join(&vm.id);
        // A leftover from an earlier run is removed; a busy one (processes in it) refuses.
        if dir.exists() {
            std::fs::remove_dir(&dir).map_err(|e| {
                err(
                    format!(
                        "cgroup {} exists and cannot be removed (a VMM of this VM still in it?)",
                        dir.display()
                    ),
                    e,
                )
            })?;
        }
        std::fs::create_dir(&dir)
            .map_err(|e| err(format!("creating cgroup {}", dir.display()), e))?;
        let mem = (u64::from(vm.mem_mib) + 256) << 20;
        let mut limits = vec![
            (
                "cpu.max",
                format!("{} 100000", u64::from(vm.vcpus) * 100_000),
            ),
            ("memory.max", mem.to_string()),
            ("pids.max", pids_max.to_string()),
        ];
        if let Some(p) = numa {
            limits.push(("cpuset.cpus", p.cpus.clone()));
            limits.push(("cpuset.mems", p.node.to_string()));
        }
        for (f, v) in limits {
            std::fs::write(dir.join(f), v)
                .map_err(|e| err(format!("writing {}/{f}", dir.display()), e))?;
        }
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("cgroup.procs"))
            .map_err(|e| err(format!("opening {}/cgroup.procs", dir.display()), e))?;
        Ok(Cgroup { dir, procs })
    }

    /// Removes the (empty) cgroup of an ended VM.
    pub fn remove(parent: &Path, id: &str) {
        let _ = std::fs::remove_dir(parent.join(id));
    }
}

/// Where VM `id`'s mount-namespace root lives (`<state-dir>/jail/<id>/root`).
pub fn jail_dir(state_dir: &Path, id: &str) -> PathBuf {
    state_dir.join("jail").join(id)
}

/// Prepares the root of the VMM's mount namespace: every host path it needs appears
/// at its own absolute path (so configs and sockets keep their paths): its VM
/// directory (read-write), the image, the VMM binary, the dynamic loader's library
/// directories and `/etc/ld.so.cache`, `/sys`, `extra_ro` (read-only), `/dev/kvm` and
/// the VM's VFIO nodes. Nothing else: not the state database, not other VMs' files.
pub fn jail_root(
    state_dir: &Path,
    id: &str,
    vm_dir: &Path,
    image: &Path,
    bin: &Path,
    vfio_groups: &[u32],
    extra_ro: &[PathBuf],
) -> Result<crate::jail_sys::RootPlan> {
    use std::os::unix::ffi::OsStrExt;
    let base = jail_dir(state_dir, id);
    let _ = std::fs::remove_dir_all(&base);
    let root = base.join("root");
    std::fs::create_dir_all(&root).map_err(|e| host(&format!("creating {}", root.display()), e))?;
    // (source, read-only, recursive)
    let mut binds: Vec<(PathBuf, bool, bool)> = vec![
        (vm_dir.to_path_buf(), false, false),
        (image.to_path_buf(), true, false),
        (bin.to_path_buf(), true, false),
        (PathBuf::from("/dev/kvm"), false, false),
    ];
    for lib in [
        "/lib",
        "/lib64",
        "/usr/lib",
        "/usr/lib64",
        "/etc/ld.so.cache",
    ] {
        if Path::new(lib).exists() {
            binds.push((PathBuf::from(lib), true, true));
        }
    }
    binds.push((PathBuf::from("/sys"), true, true));
    if !vfio_groups.is_empty() {
        binds.push((PathBuf::from("/dev/vfio/vfio"), false, false));
        for g in vfio_groups {
            binds.push((Path::new("/dev/vfio").join(g.to_string()), false, false));
        }
    }
    for p in extra_ro {
        binds.push((p.clone(), true, true));
    }
    let cstr = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| host("jail path", format!("{} contains a NUL byte", p.display())))
    };
    let mut plan = crate::jail_sys::RootPlan {
        root: cstr(&root)?,
        binds: Vec::new(),
        cwd: cstr(vm_dir)?,
    };
    for (src, ro, rec) in binds {
        if !src.is_absolute() {
            return Err(host(
                "jail path",
                format!("{} is not absolute", src.display()),
            ));
        }
        let meta =
            std::fs::metadata(&src).map_err(|e| host(&format!("jail: {}", src.display()), e))?;
        let target = root.join(src.strip_prefix("/").unwrap_or(&src));
        let made = if meta.is_dir() {
            std::fs::create_dir_all(&target)
        } else {
            target
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::File::create(&target).map(drop))
        };
        made.map_err(|e| host(&format!("jail: creating {}", target.display()), e))?;
        plan.binds.push((cstr(&src)?, cstr(&target)?, ro, rec));
    }
    Ok(plan)
}

/// A spawned VMM.
#[derive(Debug)]
pub struct Spawned {
    pub child: tokio::process::Child,
    pub pid: i32,
    pub pidfd: OwnedFd,
}

/// Spawns `bulwark-vmm --api-sock` under the jail.
pub fn spawn(
    bin: &Path,
    paths: &VmPaths,
    jail: &JailConfig,
    uid: u32,
    cgroup: Option<Cgroup>,
    root: Option<crate::jail_sys::RootPlan>,
    memlock: Option<u64>,
) -> Result<Spawned> {
    let log = std::fs::File::create(&paths.log)
        .map_err(|e| host(&format!("creating {}", paths.log.display()), e))?;
    let log2 = log.try_clone().map_err(|e| host("log", e))?;
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("--api-sock")
        .arg(&paths.api_sock)
        .current_dir(&paths.dir)
        .env_clear()
        .env("BULWARK_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2);
    // Privileged steps first (cgroup, mount namespace), then uid/gid: in `arm`.
    crate::jail_sys::arm(
        &mut cmd,
        cgroup.map(|c| c.procs),
        root,
        uid,
        jail.gid,
        memlock,
    );
    let child = tokio::process::Command::from(cmd)
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| {
            Error::new(
                Kind::Unprocessable,
                "vmm_bin",
                format!("spawning {}: {e}", bin.display()),
            )
        })?;
    let pid = child
        .id()
        .ok_or_else(|| Error::internal("vmm", "spawned VMM has no pid"))? as i32;
    let pidfd =
        pidfd(pid).map_err(|e| Error::internal("vmm", format!("pidfd_open({pid}): {e}")))?;
    Ok(Spawned { child, pid, pidfd })
}

/// A pidfd for `pid`.
pub fn pidfd(pid: i32) -> std::io::Result<OwnedFd> {
    let p = rustix::process::Pid::from_raw(pid).ok_or_else(|| std::io::Error::other("pid 0"))?;
    Ok(rustix::process::pidfd_open(
        p,
        rustix::process::PidfdFlags::empty(),
    )?)
}

/// Waits (bounded) for the VMM's socket, then configures and starts the VM through
/// it. Errors carry the VMM's own message.
pub async fn configure_and_start(
    paths: &VmPaths,
    config: &serde_json::Value,
    child: &mut tokio::process::Child,
) -> Result<()> {
    // The socket file appears at bind(), before listen(): wait until it accepts.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Error::new(
                Kind::Unprocessable,
                "vmm",
                format!("the VMM exited before its API socket appeared ({status})"),
            ));
        }
        match tokio::net::UnixStream::connect(&paths.api_sock).await {
            Ok(_) => break,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) => {}
            Err(e) => {
                return Err(Error::new(
                    Kind::Unprocessable,
                    "vmm",
                    format!("connecting to {}: {e}", paths.api_sock.display()),
                ))
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::new(
                Kind::Unprocessable,
                "vmm",
                "the VMM's API socket did not accept connections within 20 s",
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let call = |method: &'static str, path: &'static str, body: Option<String>| async move {
        let r = tokio::time::timeout(
            Duration::from_secs(120),
            client::request(&paths.api_sock, method, path, body),
        )
        .await
        .map_err(|_| {
            Error::new(
                Kind::Unprocessable,
                "vmm",
                format!("{method} {path}: the VMM did not answer within 120 s"),
            )
        })?
        .map_err(|e| Error::new(Kind::Unprocessable, "vmm", format!("{method} {path}: {e}")))?;
        if r.status >= 300 {
            return Err(Error::new(
                Kind::Unprocessable,
                "vmm",
                format!(
                    "{method} {path}: VMM answered {}: {}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                ),
            ));
        }
        Ok(())
    };
    call("PUT", "/vm/config", Some(config.to_string())).await?;
    call("POST", "/vm/start", None).await
}

/// Asks the VMM to stop.
pub async fn request_stop(api_sock: &Path) -> Result<()> {
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        client::request(api_sock, "POST", "/vm/stop", None),
    )
    .await
    .map_err(|_| Error::internal("vmm", "POST /vm/stop: no answer within 10 s"))?
    .map_err(|e| Error::internal("vmm", format!("POST /vm/stop: {e}")))?;
    if r.status >= 300 {
        return Err(Error::internal(
            "vmm",
            format!(
                "POST /vm/stop: {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ),
        ));
    }
    Ok(())
}

/// SIGKILL through the pidfd (never a recycled pid).
pub fn kill(pidfd: &OwnedFd) {
    let _ = rustix::process::pidfd_send_signal(pidfd, rustix::process::Signal::KILL);
}

/// Waits until the process behind `pidfd` has exited.
pub async fn exited(pidfd: OwnedFd) {
    let waited = match pidfd.try_clone() {
        Ok(dup) => crate::pidfd_sys::exited(dup).await,
        Err(e) => Err(e),
    };
    if let Err(e) = waited {
        // The pidfd cannot be waited on: the VMM is killed (its devices then go to
        // sanitizing), never left running unwatched.
        tracing::error!(error = %e, "cannot wait on a VMM's pidfd; killing it");
        kill(&pidfd);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Whether process `pid`'s command line names `api_sock` (our VMM, not a recycled pid).
pub fn names_socket(pid: i32, api_sock: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let want = api_sock.as_os_str().as_encoded_bytes();
    cmdline.split(|&b| b == 0).any(|a| a == want)
}

/// Whether `pid` is still a bulwark-vmm serving `api_sock` (re-adoption after a
/// restart): its command line names the socket and the socket answers.
pub async fn still_ours(pid: i32, api_sock: &Path) -> bool {
    if !names_socket(pid, api_sock) {
        return false;
    }
    matches!(
        tokio::time::timeout(Duration::from_secs(5), client::request(api_sock, "GET", "/vm", None)).await,
        Ok(Ok(r)) if r.status == 200
    )
}

/// The last lines of the VMM's log, for a failure reason.
pub fn log_tail(paths: &VmPaths) -> String {
    let text = std::fs::read_to_string(&paths.log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::VmState;

    fn vm(mem_mib: u32) -> Vm {
        Vm {
            id: "v1".into(),
            tenant: "t".into(),
            image: "/state/images/app.bwi".into(),
            vcpus: 2,
            mem_mib,
            devices: vec!["0000:01:00.0".into()],
            state: VmState::Created,
            pid: None,
            api_sock: None,
            reason: None,
            created_at_ms: 0,
            jail: None,
            image_signers: Vec::new(),
            ports: Vec::new(),
            scratch_mib: 0,
        }
    }

    #[test]
    fn a_vm_is_placed_on_the_numa_node_of_its_devices() {
        let sys = tempfile::tempdir().unwrap();
        let node1 = sys.path().join("devices/system/node/node1");
        std::fs::create_dir_all(&node1).unwrap();
        std::fs::write(node1.join("cpulist"), "16-31,48-63\n").unwrap();
        let all = "cpuset cpu io memory pids";
        let dev = |a: &str, n: Option<i32>| (a.to_string(), n);
        let placed = numa_placement(
            sys.path(),
            &[dev("0000:41:00.0", Some(1)), dev("0000:41:00.1", Some(1))],
            all,
        );
        assert_eq!(
            placed,
            Ok(Some(NumaPlacement {
                node: 1,
                cpus: "16-31,48-63".into()
            }))
        );
        assert_eq!(numa_placement(sys.path(), &[], all), Ok(None), "no devices");
        let why =
            |d: &[(String, Option<i32>)], c: &str| numa_placement(sys.path(), d, c).unwrap_err();
        assert!(why(
            &[dev("0000:01:00.0", Some(0)), dev("0000:41:00.0", Some(1))],
            all
        )
        .contains("NUMA nodes 0 and 1"));
        for unknown in [None, Some(-1)] {
            assert!(
                why(&[dev("0000:01:00.0", unknown)], all).contains("no NUMA node for 0000:01:00.0")
            );
        }
        assert!(why(&[dev("0000:01:00.0", Some(1))], "cpu io memory pids")
            .contains("cpuset is not enabled"));
        assert!(why(&[dev("0000:01:00.0", Some(2))], all).contains("node2/cpulist"));
        std::fs::write(node1.join("cpulist"), "0-3; rm -rf /\n").unwrap();
        assert!(why(&[dev("0000:41:00.0", Some(1))], all).contains("not a CPU list"));
    }

    #[test]
    fn the_cgroup_confines_a_placed_vm_to_its_node() {
        let parent = tempfile::tempdir().unwrap();
        std::fs::write(
            parent.path().join("cgroup.controllers"),
            "cpuset cpu memory pids\n",
        )
        .unwrap();
        let mut placed = vm(256);
        placed.jail = Some(crate::model::JailRecord {
            uid: 1,
            gid: 1,
            cgroup: None,
            notes: Vec::new(),
            numa: Some(NumaPlacement {
                node: 1,
                cpus: "16-31".into(),
            }),
        });
        let cg = Cgroup::create(parent.path(), &placed, 64).unwrap();
        let read = |f: &str| std::fs::read_to_string(cg.dir.join(f)).unwrap();
        assert_eq!(read("cpuset.cpus"), "16-31");
        assert_eq!(read("cpuset.mems"), "1");
        assert_eq!(read("cpu.max"), "200000 100000");
        assert_eq!(
            std::fs::read_to_string(parent.path().join("cgroup.subtree_control")).unwrap(),
            "+cpu +memory +pids +cpuset"
        );
        // Unplaced: no cpuset written.
        drop(cg);
        Cgroup::remove(parent.path(), "v1");
        for f in [
            "cpu.max",
            "memory.max",
            "pids.max",
            "cpuset.cpus",
            "cpuset.mems",
            "cgroup.procs",
        ] {
            let _ = std::fs::remove_file(parent.path().join("v1").join(f));
        }
        Cgroup::remove(parent.path(), "v1");
        let cg = Cgroup::create(parent.path(), &vm(256), 64).unwrap();
        assert!(!cg.dir.join("cpuset.cpus").exists());
    }

    fn tenant() -> Tenant {
        Tenant {
            id: "t".into(),
            signer_keys: vec!["-----BEGIN PUBLIC KEY-----\n".into()],
            min_version: 3,
        }
    }

    #[test]
    fn the_vmm_config_is_a_valid_config_with_the_launch_shape() {
        let tenant = Tenant {
            id: "t".into(),
            signer_keys: Vec::new(),
            min_version: 3,
        };
        let mut paths = VmPaths::new(Path::new("/state"), "v1");
        paths.keys = vec![paths.dir.join("signer-0.pem")];
        let shape = LaunchShape {
            vfio: vec![("0000:01:00.0".into(), "10de:2331".into())],
            mmio64_gib: Some(64),
            firmware: Some(PathBuf::from("/lib/bulwark/firmware.bin")),
            rootfs: true,
        };
        let json = vmm_config(&vm(256), &tenant, &paths, &shape);
        let cfg = bulwark_vmm::config::VmConfig::from_json(&json.to_string()).unwrap();
        assert_eq!(cfg.machine.vcpus, 2);
        assert_eq!(
            cfg.machine.firmware.as_deref(),
            Some(Path::new("/lib/bulwark/firmware.bin"))
        );
        assert!(cfg.devices.rng);
        assert!(cfg.devices.block[0].bundle_rootfs && cfg.devices.block[0].id == "rootfs");
        assert_eq!(cfg.devices.vfio[0].stated_id(), Ok(Some((0x10de, 0x2331))));
        // Without a rootfs, firmware or devices: none of them.
        let bare = vmm_config(&vm(256), &tenant, &paths, &LaunchShape::default());
        let cfg = bulwark_vmm::config::VmConfig::from_json(&bare.to_string()).unwrap();
        assert!(cfg.devices.block.is_empty() && cfg.devices.vfio.is_empty());
        assert_eq!(cfg.machine.firmware, None);
    }

    #[test]
    fn a_scratch_disk_is_a_writable_block_device_after_the_rootfs() {
        let mut paths = VmPaths::new(Path::new("/state"), "v1");
        paths.keys = vec![paths.dir.join("signer-0.pem")];
        let with_scratch = Vm {
            scratch_mib: 16,
            ..vm(256)
        };
        let rootfs = LaunchShape {
            rootfs: true,
            ..LaunchShape::default()
        };
        let json = vmm_config(&with_scratch, &tenant(), &paths, &rootfs);
        assert_eq!(
            json["devices"]["block"][1],
            json!({ "id": "scratch", "path": "/state/vms/v1/scratch.img", "read_only": false })
        );
        let cfg = bulwark_vmm::config::VmConfig::from_json(&json.to_string()).unwrap();
        let ids: Vec<&str> = cfg.devices.block.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(ids, ["rootfs", "scratch"]);
        let scratch = &cfg.devices.block[1];
        assert_eq!(scratch.path.as_deref(), Some(paths.scratch.as_path()));
        assert!(!scratch.bundle_rootfs && !scratch.is_read_only());
        // Without a rootfs the scratch disk is the only one.
        let json = vmm_config(&with_scratch, &tenant(), &paths, &LaunchShape::default());
        let cfg = bulwark_vmm::config::VmConfig::from_json(&json.to_string()).unwrap();
        assert_eq!(cfg.devices.block.len(), 1);
        assert_eq!(cfg.devices.block[0].id, "scratch");
        // scratch_mib 0: no scratch disk.
        let json = vmm_config(&vm(256), &tenant(), &paths, &rootfs);
        let cfg = bulwark_vmm::config::VmConfig::from_json(&json.to_string()).unwrap();
        assert!(cfg.devices.block.iter().all(|b| b.id != "scratch"));
        assert_eq!(cfg.devices.block.len(), 1);
    }

    #[test]
    fn prepare_creates_a_fresh_reserved_scratch_disk_for_the_vmm() {
        use std::os::unix::fs::MetadataExt;
        let state = tempfile::tempdir().unwrap();
        let (uid, gid) = (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        );
        let mut paths = VmPaths::new(state.path(), "v1");
        let with_scratch = Vm {
            scratch_mib: 16,
            ..vm(256)
        };
        prepare(&mut paths, &with_scratch, &tenant(), uid, gid).unwrap();
        let m = std::fs::metadata(&paths.scratch).unwrap();
        assert_eq!(m.len(), 16 << 20);
        // Reserved: every block allocated (st_blocks counts 512-byte units), all zero.
        assert!(m.blocks() * 512 >= m.len(), "{} blocks", m.blocks());
        assert!(std::fs::read(&paths.scratch)
            .unwrap()
            .iter()
            .all(|&b| b == 0));
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (uid, gid, 0o600));
        assert_eq!(paths.keys, [paths.dir.join("signer-0.pem")]);
        // What a run wrote is gone at the next start, and a symlink planted in its
        // place is replaced, never followed.
        std::fs::write(&paths.scratch, b"old ciphertext").unwrap();
        prepare(&mut paths, &with_scratch, &tenant(), uid, gid).unwrap();
        let m = std::fs::metadata(&paths.scratch).unwrap();
        assert_eq!(m.len(), 16 << 20);
        assert!(std::fs::read(&paths.scratch)
            .unwrap()
            .iter()
            .all(|&b| b == 0));
        let victim = state.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::fs::remove_file(&paths.scratch).unwrap();
        std::os::unix::fs::symlink(&victim, &paths.scratch).unwrap();
        create_scratch(&paths.scratch, 16, uid, gid).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(std::fs::symlink_metadata(&paths.scratch).unwrap().is_file());
        // scratch_mib 0: no file.
        prepare(&mut paths, &vm(256), &tenant(), uid, gid).unwrap();
        assert!(!paths.scratch.exists());
    }

    #[test]
    fn memlock_covers_guest_ram_only_with_devices() {
        let with = LaunchShape {
            vfio: vec![("0000:01:00.0".into(), "1af4:1110".into())],
            ..LaunchShape::default()
        };
        assert_eq!(memlock_bytes(&vm(256), &with), Some(320 << 20));
        assert_eq!(memlock_bytes(&vm(256), &LaunchShape::default()), None);
    }

    #[test]
    fn kvm_access_is_granted_to_the_jail_group_once() {
        use std::os::unix::fs::MetadataExt;
        let f = std::env::temp_dir().join(format!("bulwarkd-kvm-{}", std::process::id()));
        std::fs::write(&f, b"").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let gid = 4242;
        grant_kvm(&f, gid).unwrap();
        let m = std::fs::metadata(&f).unwrap();
        assert_eq!((m.gid(), m.mode() & 0o777), (gid, 0o660));
        // Already granted: nothing changes (a wider mode stays).
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
        grant_kvm(&f, gid).unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o777, 0o666);
        assert!(grant_kvm(Path::new("/nonexistent/kvm"), gid).is_err());
        std::fs::remove_file(&f).unwrap();
    }
}
