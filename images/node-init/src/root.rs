//! Leaving the initramfs root (docs/node-image.md, boot step 1).
//!
//! The node boots from a UKI whose initramfs is the whole system: `/` stays the
//! kernel's rootfs (a ramfs or tmpfs that can never be unmounted or moved), and
//! `pivot_root(2)`, which bulwarkd's VM jail uses, refuses it (EINVAL). So, first of
//! all, PID 1 does what busybox `switch_root` and systemd do in spirit, into a tmpfs:
//! it mounts a tmpfs on [`NEW_ROOT`], moves the whole tree into it (deleting each
//! original once copied, so memory stays about 1x), makes that tmpfs `/` (`MS_MOVE`
//! onto `/`, `chroot`) and goes on booting there.
//!
//! The rule for "`/` is the initramfs": PID 1, `statfs("/")` says ramfs or tmpfs,
//! and `/` does not hold [`MARKER`], the file written into the tmpfs this code
//! made (so the step runs once even if the init were started again).

use std::io;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sys::stat::{mknod, Mode, SFlag};

/// Where the tmpfs is mounted before it becomes `/`.
pub const NEW_ROOT: &str = "/.bulwark-root";
/// The file in the new root that says it is the tmpfs made here.
pub const MARKER: &str = "/.bulwark-tmpfs-root";
/// `RAMFS_MAGIC` of linux/magic.h (nix lacks it).
const RAMFS_MAGIC: i64 = 0x8584_58f6;
/// `TMPFS_MAGIC` of linux/magic.h.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// What was moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MoveStats {
    /// Files, symlinks and device nodes (everything but directories).
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// The regular files' bytes.
    pub bytes: u64,
}

/// Whether `/` is the initramfs, given what [`is_initramfs`] reads: the root's
/// statfs `f_type`, whether the marker is there, and whether this is PID 1.
pub fn initramfs_rule(fs_type: i64, marker_present: bool, pid1: bool) -> bool {
    pid1 && (fs_type == RAMFS_MAGIC || fs_type == TMPFS_MAGIC) && !marker_present
}

/// Whether this process's `/` is the initramfs (see the module's rule).
pub fn is_initramfs() -> Result<bool, String> {
    let st = nix::sys::statfs::statfs("/").map_err(|e| format!("statfs /: {e}"))?;
    // `f_type` is an i64 with glibc and a u64 with musl.
    #[allow(clippy::unnecessary_cast)]
    let fs_type = st.filesystem_type().0 as i64;
    let marker = Path::new(MARKER)
        .symlink_metadata()
        .is_ok_and(|m| m.is_file());
    Ok(initramfs_rule(
        fs_type,
        marker,
        nix::unistd::getpid().as_raw() == 1,
    ))
}

/// Leaves the initramfs when `/` is one: mounts a tmpfs on [`NEW_ROOT`], moves the
/// tree into it, writes [`MARKER`] and switches into it. `None` when `/` is not the
/// initramfs. Meant for PID 1 before anything else is mounted.
pub fn leave_initramfs() -> Result<Option<MoveStats>, String> {
    if !is_initramfs()? {
        return Ok(None);
    }
    let new_root = Path::new(NEW_ROOT);
    let old_mode = std::fs::metadata("/")
        .map(|m| m.mode() & 0o7777)
        .unwrap_or(0o755);
    match std::fs::DirBuilder::new().mode(0o755).create(new_root) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && new_root.is_dir() => {}
        Err(e) => return Err(format!("creating {NEW_ROOT}: {e}")),
    }
    mount(
        Some("tmpfs"),
        new_root,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(|e| format!("mounting a tmpfs on {NEW_ROOT}: {e}"))?;
    std::fs::set_permissions(new_root, std::fs::Permissions::from_mode(old_mode))
        .map_err(|e| format!("chmod {NEW_ROOT}: {e}"))?;
    let stats = move_tree(Path::new("/"), new_root, &[new_root])?;
    std::fs::write(
        new_root.join(MARKER.trim_start_matches('/')),
        "the tmpfs root bulwark-node-init moved the initramfs into\n",
    )
    .map_err(|e| format!("writing {MARKER}: {e}"))?;
    switch_root(new_root)?;
    Ok(Some(stats))
}

/// Makes the mount at `new_root` the root: `chdir` into it, move it onto `/`,
/// `chroot(".")`, `chdir("/")` (what busybox `switch_root` does after its cleanup).
fn switch_root(new_root: &Path) -> Result<(), String> {
    nix::unistd::chdir(new_root).map_err(|e| format!("chdir {}: {e}", new_root.display()))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| format!("moving the mount {} onto /: {e}", new_root.display()))?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

/// Moves everything under `src` into the existing directory `dst`: directories,
/// regular files, symlinks, device nodes, fifos and sockets, with their modes and
/// ownership (not their times; hard links become copies). Each original is deleted
/// once copied, so the memory a ramfs holds stays about the same. Entries listed in
/// `skip` (absolute, as found under `src`) are left alone; a directory on another
/// filesystem (a mount point) is re-created empty and left alone too.
pub fn move_tree(src: &Path, dst: &Path, skip: &[&Path]) -> Result<MoveStats, String> {
    let dev = src
        .symlink_metadata()
        .map_err(|e| format!("stat {}: {e}", src.display()))?
        .dev();
    let mut stats = MoveStats::default();
    move_dir_contents(src, dst, dev, skip, &mut stats)?;
    Ok(stats)
}

fn move_dir_contents(
    src: &Path,
    dst: &Path,
    dev: u64,
    skip: &[&Path],
    stats: &mut MoveStats,
) -> Result<(), String> {
    let ctx = |what: &str, p: &Path, e: io::Error| format!("{what} {}: {e}", p.display());
    // Listed first, then moved: the directory changes under the listing otherwise.
    let entries: Vec<_> = std::fs::read_dir(src)
        .map_err(|e| ctx("listing", src, e))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(|e| ctx("listing", src, e))?;
    for from in entries {
        if skip.contains(&from.as_path()) {
            continue;
        }
        let Some(name) = from.file_name() else {
            continue;
        };
        let to = dst.join(name);
        let meta = from.symlink_metadata().map_err(|e| ctx("stat", &from, e))?;
        let ft = meta.file_type();
        let mode = meta.mode() & 0o7777;
        if ft.is_dir() {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&to)
                .map_err(|e| ctx("creating", &to, e))?;
            if meta.dev() == dev {
                move_dir_contents(&from, &to, dev, skip, stats)?;
            }
            own(&to, &meta)?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))
                .map_err(|e| ctx("chmod", &to, e))?;
            if meta.dev() == dev {
                std::fs::remove_dir(&from).map_err(|e| ctx("removing", &from, e))?;
            }
            stats.dirs += 1;
            continue;
        }
        if ft.is_file() {
            let mut input = std::fs::File::open(&from).map_err(|e| ctx("opening", &from, e))?;
            let mut output = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&to)
                .map_err(|e| ctx("creating", &to, e))?;
            stats.bytes +=
                io::copy(&mut input, &mut output).map_err(|e| ctx("copying to", &to, e))?;
            std::os::unix::fs::fchown(&output, Some(meta.uid()), Some(meta.gid()))
                .map_err(|e| ctx("chown", &to, e))?;
            // After the chown, which clears set-user-ID bits.
            output
                .set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(|e| ctx("chmod", &to, e))?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&from).map_err(|e| ctx("reading link", &from, e))?;
            std::os::unix::fs::symlink(&target, &to).map_err(|e| ctx("creating link", &to, e))?;
            own(&to, &meta)?;
        } else {
            let kind = if ft.is_char_device() {
                SFlag::S_IFCHR
            } else if ft.is_block_device() {
                SFlag::S_IFBLK
            } else if ft.is_fifo() {
                SFlag::S_IFIFO
            } else if ft.is_socket() {
                SFlag::S_IFSOCK
            } else {
                return Err(format!("{}: unknown file type", from.display()));
            };
            mknod(&to, kind, Mode::from_bits_truncate(0o600), meta.rdev())
                .map_err(|e| format!("mknod {}: {e}", to.display()))?;
            own(&to, &meta)?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))
                .map_err(|e| ctx("chmod", &to, e))?;
        }
        std::fs::remove_file(&from).map_err(|e| ctx("removing", &from, e))?;
        stats.files += 1;
    }
    Ok(())
}

/// Gives `path` (not following a symlink) the owner and group of `meta`.
fn own(path: &Path, meta: &std::fs::Metadata) -> Result<(), String> {
    std::os::unix::fs::lchown(path, Some(meta.uid()), Some(meta.gid()))
        .map_err(|e| format!("chown {}: {e}", path.display()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A directory under the system's temp directory, removed on drop.
    #[derive(Debug)]
    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        pub(crate) fn new(what: &str) -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "bulwark-node-init-{what}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir(&p).unwrap();
            TempDir(p)
        }
        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Every entry under `dir`: relative path, file type, mode, owner, and the
    /// contents or link target or device number.
    fn snapshot(dir: &Path) -> Vec<(PathBuf, String, u32, u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let m = p.symlink_metadata().unwrap();
                let ft = m.file_type();
                let (kind, data) = if ft.is_dir() {
                    stack.push(p.clone());
                    ("dir", Vec::new())
                } else if ft.is_file() {
                    ("file", std::fs::read(&p).unwrap())
                } else if ft.is_symlink() {
                    (
                        "symlink",
                        std::fs::read_link(&p)
                            .unwrap()
                            .into_os_string()
                            .into_encoded_bytes(),
                    )
                } else {
                    ("special", m.rdev().to_le_bytes().to_vec())
                };
                out.push((
                    p.strip_prefix(dir).unwrap().to_owned(),
                    format!("{kind} {:o}", m.mode() & 0o170000),
                    m.mode() & 0o7777,
                    m.uid(),
                    m.gid(),
                    data,
                ));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn the_tree_moves_with_modes_links_and_nodes_and_the_originals_go() {
        let tmp = TempDir::new("move");
        let src = tmp.path().join("src");
        let dst = tmp.path().join("dst");
        std::fs::create_dir(&src).unwrap();
        std::fs::create_dir(&dst).unwrap();
        let mkdir = |p: &str, mode: u32| {
            std::fs::create_dir(src.join(p)).unwrap();
            std::fs::set_permissions(src.join(p), std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let file = |p: &str, data: &[u8], mode: u32| {
            std::fs::write(src.join(p), data).unwrap();
            std::fs::set_permissions(src.join(p), std::fs::Permissions::from_mode(mode)).unwrap();
        };
        mkdir("bin", 0o755);
        mkdir("etc", 0o755);
        mkdir("etc/bulwark", 0o750);
        mkdir("etc/bulwark/empty", 0o700);
        mkdir("tmp", 0o1777);
        mkdir("skipped", 0o755);
        file("init", &vec![0x7f; 300_000], 0o755);
        file("bin/bulwarkd", b"\x7fELF", 0o4755);
        file("etc/bulwark/node-init.json", b"{}", 0o644);
        file("etc/bulwark/secret", b"s", 0o600);
        file("etc/empty-file", b"", 0o444);
        std::fs::write(src.join("skipped/stays"), b"x").unwrap();
        std::os::unix::fs::symlink("bin/bulwarkd", src.join("bulwarkd")).unwrap();
        std::os::unix::fs::symlink("/nowhere", src.join("etc/dangling")).unwrap();
        std::os::unix::fs::symlink("bulwark", src.join("etc/dirlink")).unwrap();
        mknod(
            &src.join("fifo"),
            SFlag::S_IFIFO,
            Mode::from_bits_truncate(0o620),
            0,
        )
        .unwrap();
        let root = nix::unistd::geteuid().is_root();
        if root {
            mkdir("dev", 0o755);
            mknod(
                &src.join("dev/console"),
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o600),
                nix::sys::stat::makedev(5, 1),
            )
            .unwrap();
            std::os::unix::fs::lchown(src.join("etc/bulwark/secret"), Some(1234), Some(5678))
                .unwrap();
            std::os::unix::fs::lchown(src.join("etc/dirlink"), Some(42), Some(43)).unwrap();
            std::os::unix::fs::chown(src.join("etc/bulwark/empty"), Some(7), Some(8)).unwrap();
        } else {
            eprintln!("not root: no device node or foreign owners in this run");
        }

        let skip = src.join("skipped");
        let mut before = snapshot(&src);
        let stats = move_tree(&src, &dst, &[skip.as_path()]).unwrap();

        before.retain(|e| !e.0.starts_with("skipped"));
        assert_eq!(snapshot(&dst), before);
        // Only the skipped entry is left of the originals.
        let left: Vec<_> = snapshot(&src).into_iter().map(|e| e.0).collect();
        assert_eq!(
            left,
            [PathBuf::from("skipped"), PathBuf::from("skipped/stays")]
        );
        let specials = if root { 1 } else { 0 };
        assert_eq!(
            stats,
            MoveStats {
                files: 9 + specials,
                dirs: 5 + specials,
                bytes: 300_000 + 4 + 2 + 1,
            }
        );
        if root {
            let m = dst.join("etc/bulwark/secret").symlink_metadata().unwrap();
            assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1234, 5678, 0o600));
            let m = dst.join("bin/bulwarkd").symlink_metadata().unwrap();
            assert_eq!(m.mode() & 0o7777, 0o4755);
        }
    }

    #[test]
    fn a_failure_names_the_path() {
        let tmp = TempDir::new("fail");
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("a"), b"a").unwrap();
        let err = move_tree(&src, &tmp.path().join("missing"), &[]).unwrap_err();
        assert!(err.contains("missing/a"), "{err}");
        // Nothing was lost.
        assert_eq!(std::fs::read(src.join("a")).unwrap(), b"a");
    }

    #[test]
    fn only_pid_1_on_a_ramfs_or_tmpfs_without_the_marker_moves() {
        assert!(initramfs_rule(RAMFS_MAGIC, false, true));
        assert!(initramfs_rule(TMPFS_MAGIC, false, true));
        // The tmpfs made here, another filesystem, not PID 1.
        assert!(!initramfs_rule(TMPFS_MAGIC, true, true));
        assert!(!initramfs_rule(0xEF53, false, true));
        assert!(!initramfs_rule(RAMFS_MAGIC, false, false));
        // A test process is not PID 1: nothing to do.
        assert_eq!(is_initramfs(), Ok(false));
    }
}
