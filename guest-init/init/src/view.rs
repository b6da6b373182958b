//! The workload's view of the machine: the verified rootfs mounted read-only, and on
//! it a fresh `/proc`, a `/dev` holding only the basic nodes and the GPU nodes, a
//! private writable `/tmp` owned by the workload, the configured tmpfs mounts, and
//! `/dev/scratch` (the encrypted scratch disk, the workload's alone) when configured.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sys::stat::{mknod, Mode, SFlag};

use crate::config::FileConfig;
use crate::pid1::unmount_at_poweroff;
use crate::scratch::ScratchDevice;

/// Where the verified rootfs is mounted (the workload's `/`).
pub const ROOT: &str = "/sysroot";

/// Device nodes every workload gets.
const BASIC_NODES: &[&str] = &["null", "zero", "full", "random", "urandom"];

/// Mounts `device` (the dm-verity device) read-only at [`ROOT`].
pub fn mount_root(device: &Path, fs: &str) -> Result<(), String> {
    std::fs::create_dir_all(ROOT).map_err(|e| format!("creating {ROOT}: {e}"))?;
    mount(
        Some(device),
        ROOT,
        Some(fs),
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        None::<&str>,
    )
    .map_err(|e| {
        format!(
            "mounting {} ({fs}, read-only) on {ROOT}: {e}",
            device.display()
        )
    })?;
    unmount_at_poweroff(Path::new(ROOT));
    Ok(())
}

fn under_root(p: &str) -> PathBuf {
    Path::new(ROOT).join(p.trim_start_matches('/'))
}

fn mount_point(p: &str) -> Result<PathBuf, String> {
    let at = under_root(p);
    // Every component must be a real directory: a symlink in the image (say `/dev ->
    // /`) would otherwise carry the mount out of the root onto PID 1's own tree.
    let mut walked = PathBuf::from(ROOT);
    for c in Path::new(p.trim_start_matches('/')).components() {
        walked.push(c);
        if std::fs::symlink_metadata(&walked).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(format!(
                "{p}: {} is a symbolic link in the rootfs; mount points must be directories",
                walked.display()
            ));
        }
    }
    if !at.is_dir() {
        return Err(format!(
            "the rootfs has no directory {p} to mount on (create it in the image)"
        ));
    }
    Ok(at)
}

fn tmpfs(at: &Path, opts: &str, flags: MsFlags) -> Result<(), String> {
    mount(Some("tmpfs"), at, Some("tmpfs"), flags, Some(opts))
        .map_err(|e| format!("mounting tmpfs ({opts}) on {}: {e}", at.display()))?;
    unmount_at_poweroff(at);
    Ok(())
}

/// Prepares `/proc`, `/dev`, `/tmp` and `mounts[]` inside the root, and the scratch
/// device's node when there is one; returns the GPU device nodes made visible.
pub fn prepare(cfg: &FileConfig, scratch: Option<&ScratchDevice>) -> Result<Vec<String>, String> {
    let w = &cfg.workload;
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let proc_at = mount_point("/proc")?;
    mount(
        Some("proc"),
        &proc_at,
        Some("proc"),
        nosuid_nodev_noexec,
        Some("hidepid=invisible"),
    )
    .map_err(|e| format!("mounting proc on {}: {e}", proc_at.display()))?;
    unmount_at_poweroff(&proc_at);

    let dev_at = mount_point("/dev")?;
    tmpfs(
        &dev_at,
        "mode=0755,size=64k",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
    )?;
    let mut gpu_nodes = Vec::new();
    let names = std::fs::read_dir("/dev")
        .map_err(|e| format!("listing /dev: {e}"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("nvidia") || n == "kfd" || n.starts_with("dri"));
    for n in names {
        if copy_node(&n, &dev_at)? {
            gpu_nodes.push(format!("/dev/{n}"));
        }
    }
    for n in BASIC_NODES {
        if !copy_node(n, &dev_at)? {
            return Err(format!("/dev/{n} is not a device node in the guest"));
        }
    }
    if let Some(d) = scratch {
        // The workload's alone: its uid, mode 0600.
        let at = dev_at.join(crate::scratch::NODE_NAME);
        make_node(&at, SFlag::S_IFBLK, 0o600, d.dev.to_dev_t())?;
        std::os::unix::fs::chown(&at, Some(w.uid), Some(w.gid))
            .map_err(|e| format!("chown {}: {e}", at.display()))?;
    }

    let tmp_at = mount_point("/tmp")?;
    tmpfs(
        &tmp_at,
        &format!("mode=0700,uid={},gid={},size={}m", w.uid, w.gid, w.tmp_mib),
        nosuid_nodev_noexec,
    )?;
    for m in &cfg.mounts {
        let at = mount_point(&m.target)?;
        tmpfs(
            &at,
            &format!(
                "mode=0700,uid={},gid={},size={}m",
                w.uid, w.gid, m.tmpfs_mib
            ),
            nosuid_nodev_noexec,
        )?;
    }
    Ok(gpu_nodes)
}

/// Makes `/dev/NAME` (a character device) inside `dev_at`; returns false if it is not
/// a character device here.
fn copy_node(name: &str, dev_at: &Path) -> Result<bool, String> {
    let src = Path::new("/dev").join(name);
    let Ok(meta) = std::fs::metadata(&src) else {
        return Ok(false);
    };
    if !meta.file_type().is_char_device() {
        return Ok(false);
    }
    make_node(
        &dev_at.join(name),
        SFlag::S_IFCHR,
        meta.mode() & 0o666,
        meta.rdev(),
    )?;
    Ok(true)
}

/// Makes the device node `dst` (`kind`: character or block) for `rdev` with exactly
/// `mode`.
fn make_node(dst: &Path, kind: SFlag, mode: u32, rdev: libc::dev_t) -> Result<(), String> {
    mknod(dst, kind, Mode::from_bits_truncate(mode), rdev)
        .map_err(|e| format!("mknod {}: {e}", dst.display()))?;
    // mknod's mode passes through the umask; set it exactly.
    std::fs::set_permissions(dst, std::os::unix::fs::PermissionsExt::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", dst.display()))
}
