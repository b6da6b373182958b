//! The minimal device-mapper ioctl ABI (`linux/dm-ioctl.h`, interface version 4):
//! create a device, load a table, resume it, read its status, remove it.
//!
//! Every request is one buffer: a `struct dm_ioctl` header (312 bytes), then, for
//! `DM_TABLE_LOAD`, one `struct dm_target_spec` (40 bytes) per target, each followed
//! by its NUL-terminated parameter string padded to 8 bytes. The buffer is built
//! with safe helpers that write little-endian fields at the header's offsets (checked
//! against a `#[repr(C)]` mirror of the C structs at compile time); the `ioctl`
//! call itself is the only `unsafe`.
//!
//! Layout facts (from the kernel header):
//! `struct dm_ioctl { u32 version[3]; u32 data_size; u32 data_start; u32 target_count;
//! s32 open_count; u32 flags; u32 event_nr; u32 padding; u64 dev; char name[128];
//! char uuid[129]; char data[7]; }` and `struct dm_target_spec { u64 sector_start;
//! u64 length; s32 status; u32 next; char target_type[16]; }`; requests are
//! `_IOWR(0xfd, nr, struct dm_ioctl)`.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

/// `sizeof(struct dm_ioctl)`.
pub const DM_IOCTL_SIZE: usize = 312;
/// `sizeof(struct dm_target_spec)`.
pub const DM_TARGET_SPEC_SIZE: usize = 40;
/// `DM_NAME_LEN`: a name is at most 127 bytes plus its NUL.
pub const DM_NAME_LEN: usize = 128;
/// `DM_UUID_LEN`.
pub const DM_UUID_LEN: usize = 129;
/// `DM_MAX_TYPE_NAME`: a target type is at most 15 bytes plus its NUL.
pub const DM_MAX_TYPE_NAME: usize = 16;

/// The ioctl interface version this code speaks (major 4; minor 0 asks for no
/// newer feature, and every kernel with interface 4 accepts it).
pub const DM_VERSION: [u32; 3] = [4, 0, 0];

/// `DM_READONLY_FLAG`: in `DM_TABLE_LOAD`, open the table's devices read-only;
/// out: the device is read-only.
pub const DM_READONLY_FLAG: u32 = 1 << 0;
/// `DM_SUSPEND_FLAG`: in `DM_DEV_SUSPEND`, suspend (without it: resume); out: the
/// device is suspended.
pub const DM_SUSPEND_FLAG: u32 = 1 << 1;
/// `DM_STATUS_TABLE_FLAG`: in a status request, return the table, not the status.
pub const DM_STATUS_TABLE_FLAG: u32 = 1 << 4;
/// `DM_ACTIVE_PRESENT_FLAG` (out): the device has an active (live) table.
pub const DM_ACTIVE_PRESENT_FLAG: u32 = 1 << 5;
/// `DM_INACTIVE_PRESENT_FLAG` (out): a loaded table waits for a resume.
pub const DM_INACTIVE_PRESENT_FLAG: u32 = 1 << 6;

/// The device-mapper control node.
pub const CONTROL_PATH: &str = "/dev/mapper/control";
/// Where sysfs has the control node's `major:minor` (a misc device, normally 10:236).
pub const CONTROL_SYSFS_DEV: &str = "/sys/class/misc/device-mapper/dev";

/// The ioctl type byte of device-mapper (`DM_IOCTL`).
const DM_IOCTL_TYPE: u8 = 0xfd;
/// Size of every request buffer. A verity table is a few hundred bytes; status
/// answers are shorter than that.
const BUF_SIZE: usize = 16 * 1024;

/// Byte offsets in `struct dm_ioctl`.
mod hdr {
    pub const VERSION: usize = 0;
    pub const DATA_SIZE: usize = 12;
    pub const DATA_START: usize = 16;
    pub const TARGET_COUNT: usize = 20;
    pub const OPEN_COUNT: usize = 24;
    pub const FLAGS: usize = 28;
    pub const EVENT_NR: usize = 32;
    pub const DEV: usize = 40;
    pub const NAME: usize = 48;
    pub const UUID: usize = 176;
}

/// Byte offsets in `struct dm_target_spec`.
mod spec {
    pub const SECTOR_START: usize = 0;
    pub const LENGTH: usize = 8;
    pub const STATUS: usize = 16;
    pub const NEXT: usize = 20;
    pub const TARGET_TYPE: usize = 24;
}

/// Mirrors of the C structs, only for the compile-time layout checks below.
#[allow(dead_code)]
#[repr(C)]
struct DmIoctlMirror {
    version: [u32; 3],
    data_size: u32,
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    dev: u64,
    name: [u8; DM_NAME_LEN],
    uuid: [u8; DM_UUID_LEN],
    data: [u8; 7],
}

#[allow(dead_code)]
#[repr(C)]
struct DmTargetSpecMirror {
    sector_start: u64,
    length: u64,
    status: i32,
    next: u32,
    target_type: [u8; DM_MAX_TYPE_NAME],
}

const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<DmIoctlMirror>() == DM_IOCTL_SIZE);
    assert!(offset_of!(DmIoctlMirror, version) == hdr::VERSION);
    assert!(offset_of!(DmIoctlMirror, data_size) == hdr::DATA_SIZE);
    assert!(offset_of!(DmIoctlMirror, data_start) == hdr::DATA_START);
    assert!(offset_of!(DmIoctlMirror, target_count) == hdr::TARGET_COUNT);
    assert!(offset_of!(DmIoctlMirror, open_count) == hdr::OPEN_COUNT);
    assert!(offset_of!(DmIoctlMirror, flags) == hdr::FLAGS);
    assert!(offset_of!(DmIoctlMirror, event_nr) == hdr::EVENT_NR);
    assert!(offset_of!(DmIoctlMirror, dev) == hdr::DEV);
    assert!(offset_of!(DmIoctlMirror, name) == hdr::NAME);
    assert!(offset_of!(DmIoctlMirror, uuid) == hdr::UUID);
    assert!(size_of::<DmTargetSpecMirror>() == DM_TARGET_SPEC_SIZE);
    assert!(offset_of!(DmTargetSpecMirror, sector_start) == spec::SECTOR_START);
    assert!(offset_of!(DmTargetSpecMirror, length) == spec::LENGTH);
    assert!(offset_of!(DmTargetSpecMirror, status) == spec::STATUS);
    assert!(offset_of!(DmTargetSpecMirror, next) == spec::NEXT);
    assert!(offset_of!(DmTargetSpecMirror, target_type) == spec::TARGET_TYPE);
    // The data area starts right after the header, which keeps 8-byte alignment.
    assert!(DM_IOCTL_SIZE.is_multiple_of(8));
};

/// The device-mapper commands used here (the `nr` of `_IOWR(0xfd, nr, ...)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `DM_DEV_CREATE` (3).
    DevCreate,
    /// `DM_DEV_REMOVE` (4).
    DevRemove,
    /// `DM_DEV_SUSPEND` (6); also resumes (without [`DM_SUSPEND_FLAG`]).
    DevSuspend,
    /// `DM_DEV_STATUS` (7).
    DevStatus,
    /// `DM_TABLE_LOAD` (9).
    TableLoad,
}

impl Command {
    /// The command number.
    pub fn nr(self) -> u8 {
        match self {
            Command::DevCreate => 3,
            Command::DevRemove => 4,
            Command::DevSuspend => 6,
            Command::DevStatus => 7,
            Command::TableLoad => 9,
        }
    }

    /// The ioctl request number, `_IOWR(0xfd, nr, struct dm_ioctl)`.
    pub fn request(self) -> nix::sys::ioctl::ioctl_num_type {
        nix::request_code_readwrite!(DM_IOCTL_TYPE, self.nr(), DM_IOCTL_SIZE)
    }

    /// The kernel header's name for the command, used in error messages.
    pub fn name(self) -> &'static str {
        match self {
            Command::DevCreate => "DM_DEV_CREATE",
            Command::DevRemove => "DM_DEV_REMOVE",
            Command::DevSuspend => "DM_DEV_SUSPEND",
            Command::DevStatus => "DM_DEV_STATUS",
            Command::TableLoad => "DM_TABLE_LOAD",
        }
    }
}

/// A block or character device number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DevNum {
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
}

impl DevNum {
    /// Decode the kernel's "huge" device encoding, used in `dm_ioctl.dev`:
    /// bits 8..20 are the major, bits 0..8 and 20..32 the minor.
    pub fn from_kernel(dev: u64) -> DevNum {
        // Only the low 32 bits carry a device number; the masks keep each value
        // far below u32::MAX, so the conversions cannot truncate.
        let dev = dev & 0xffff_ffff;
        DevNum {
            major: ((dev >> 8) & 0xfff) as u32,
            minor: ((dev & 0xff) | ((dev >> 12) & 0xf_ff00)) as u32,
        }
    }

    /// The `dev_t` of this number, for `mknod` and to compare with `st_rdev`.
    pub fn to_dev_t(self) -> libc::dev_t {
        makedev(u64::from(self.major), u64::from(self.minor))
    }

    /// From a `dev_t` (`st_rdev`).
    pub fn from_dev_t(dev: libc::dev_t) -> DevNum {
        // Linux major and minor numbers are 32-bit values.
        DevNum {
            major: nix::sys::stat::major(dev) as u32,
            minor: nix::sys::stat::minor(dev) as u32,
        }
    }

    /// Parse sysfs's `MAJOR:MINOR` (a trailing newline is allowed).
    pub fn parse(text: &str) -> Option<DevNum> {
        let (major, minor) = text.trim_end_matches('\n').split_once(':')?;
        let num = |s: &str| {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                None
            } else {
                s.parse::<u32>().ok()
            }
        };
        Some(DevNum {
            major: num(major)?,
            minor: num(minor)?,
        })
    }
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// One line of a device-mapper table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// First sector (512 bytes) of the device that this target maps.
    pub sector_start: u64,
    /// Number of sectors.
    pub length: u64,
    /// Target type, e.g. `verity`.
    pub target_type: String,
    /// The target's parameters, as in a `dmsetup` table line.
    pub params: String,
}

impl fmt::Display for Target {
    /// The `dmsetup` table line: `<start> <length> <type> <params>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {}",
            self.sector_start, self.length, self.target_type, self.params
        )
    }
}

/// What the kernel answers about a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmInfo {
    /// The mapped device's number.
    pub dev: DevNum,
    /// `flags` of the answer (`DM_*_FLAG`).
    pub flags: u32,
    /// How many times the device is open.
    pub open_count: i32,
    /// Number of targets in the (active) table.
    pub target_count: u32,
    /// Event counter.
    pub event_nr: u32,
}

impl DmInfo {
    /// The device is suspended.
    pub fn suspended(&self) -> bool {
        self.flags & DM_SUSPEND_FLAG != 0
    }

    /// The device is read-only.
    pub fn read_only(&self) -> bool {
        self.flags & DM_READONLY_FLAG != 0
    }

    /// The device has a live table.
    pub fn active(&self) -> bool {
        self.flags & DM_ACTIVE_PRESENT_FLAG != 0
    }
}

/// A device-mapper failure: which step, on which device, and the errno.
#[derive(Debug, thiserror::Error)]
pub enum DmError {
    /// An ioctl failed.
    #[error("{}{}: {}{}", command.name(), on_name(name), errno.desc(), hint(*command, *errno))]
    Ioctl {
        /// The command.
        command: Command,
        /// The device name.
        name: String,
        /// The kernel's answer.
        errno: Errno,
    },
    /// A device or target name the kernel would reject.
    #[error("invalid device-mapper {what} {value:?}: {reason}")]
    InvalidName {
        /// "device name" or "target type".
        what: &'static str,
        /// The offending value.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// The table does not fit in the request buffer.
    #[error("device-mapper table for {name:?} is too large ({bytes} bytes, at most {max})")]
    TableTooLarge {
        /// The device name.
        name: String,
        /// Bytes needed.
        bytes: usize,
        /// Bytes available.
        max: usize,
    },
    /// `/dev/mapper/control` could not be opened or created.
    #[error("device-mapper control node {}: {reason}", path.display())]
    Control {
        /// The node or the sysfs file involved.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

fn on_name(name: &str) -> String {
    if name.is_empty() {
        String::new()
    } else {
        format!(" on {name:?}")
    }
}

fn hint(command: Command, errno: Errno) -> &'static str {
    match (command, errno) {
        (Command::TableLoad | Command::DevSuspend, _) => " (dmesg has the reason)",
        (Command::DevCreate, Errno::EBUSY) => " (a device of that name exists already)",
        (_, Errno::ENXIO) => " (no such device-mapper device)",
        _ => "",
    }
}

/// Check a device name as the kernel does: 1 to 127 bytes, no NUL, no `/`, and not
/// `.` or `..` (it becomes a `/dev/mapper` entry).
pub fn check_name(name: &str) -> Result<(), DmError> {
    let bad = |reason| DmError::InvalidName {
        what: "device name",
        value: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() >= DM_NAME_LEN {
        return Err(bad("it is longer than 127 bytes"));
    }
    if name.contains('\0') || name.contains('/') {
        return Err(bad("it contains NUL or '/'"));
    }
    if name == "." || name == ".." {
        return Err(bad("it is '.' or '..'"));
    }
    Ok(())
}

/// A request buffer: 8-byte aligned, zero-filled, written through bounds-checked
/// helpers.
#[repr(C, align(8))]
struct Aligned([u8; BUF_SIZE]);

/// One ioctl request under construction (and, after the call, its answer).
pub struct Request {
    buf: Box<Aligned>,
}

/// A table can hold a key (dm-crypt's): the buffer is wiped when the request goes.
impl Drop for Request {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.buf.0);
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("name", &self.name())
            .field("flags", &self.u32_at(hdr::FLAGS))
            .field("target_count", &self.u32_at(hdr::TARGET_COUNT))
            .finish()
    }
}

impl Request {
    /// A request for device `name` with `flags`: version 4.0.0, `data_size` the
    /// whole buffer (the kernel writes its answer back into it), data right after
    /// the header.
    pub fn new(name: &str, flags: u32) -> Result<Request, DmError> {
        check_name(name)?;
        let mut r = Request {
            buf: Box::new(Aligned([0; BUF_SIZE])),
        };
        for (i, v) in DM_VERSION.iter().enumerate() {
            r.put_u32(hdr::VERSION + 4 * i, *v);
        }
        r.put_u32(hdr::DATA_SIZE, BUF_SIZE as u32);
        r.put_u32(hdr::DATA_START, DM_IOCTL_SIZE as u32);
        r.put_u32(hdr::FLAGS, flags);
        r.put_bytes(hdr::NAME, name.as_bytes());
        Ok(r)
    }

    /// A `DM_TABLE_LOAD` request: the header, then each target's spec and
    /// parameters.
    pub fn table_load(name: &str, targets: &[Target], read_only: bool) -> Result<Request, DmError> {
        let flags = if read_only { DM_READONLY_FLAG } else { 0 };
        let mut r = Request::new(name, flags)?;
        let mut at = DM_IOCTL_SIZE;
        for t in targets {
            if t.target_type.is_empty()
                || t.target_type.len() >= DM_MAX_TYPE_NAME
                || t.target_type.contains('\0')
            {
                return Err(DmError::InvalidName {
                    what: "target type",
                    value: t.target_type.clone(),
                    reason: "it must be 1 to 15 bytes without NUL",
                });
            }
            if t.params.contains('\0') {
                return Err(DmError::InvalidName {
                    what: "target parameters",
                    value: t.params.clone(),
                    reason: "they contain NUL",
                });
            }
            // Parameters with their NUL, then padding so the next spec is aligned.
            let next = (DM_TARGET_SPEC_SIZE + t.params.len() + 1).next_multiple_of(8);
            if at + next > BUF_SIZE {
                return Err(DmError::TableTooLarge {
                    name: name.to_owned(),
                    bytes: at + next,
                    max: BUF_SIZE,
                });
            }
            r.put_u64(at + spec::SECTOR_START, t.sector_start);
            r.put_u64(at + spec::LENGTH, t.length);
            r.put_u32(at + spec::STATUS, 0);
            r.put_u32(at + spec::NEXT, next as u32);
            r.put_bytes(at + spec::TARGET_TYPE, t.target_type.as_bytes());
            r.put_bytes(at + DM_TARGET_SPEC_SIZE, t.params.as_bytes());
            at += next;
        }
        r.put_u32(hdr::TARGET_COUNT, targets.len() as u32);
        Ok(r)
    }

    /// The request's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buf.0
    }

    /// The device name in the buffer.
    pub fn name(&self) -> String {
        let field = &self.buf.0[hdr::NAME..hdr::NAME + DM_NAME_LEN];
        let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
        String::from_utf8_lossy(&field[..end]).into_owned()
    }

    /// The answer's device information.
    pub fn info(&self) -> DmInfo {
        DmInfo {
            dev: DevNum::from_kernel(self.u64_at(hdr::DEV)),
            flags: self.u32_at(hdr::FLAGS),
            open_count: self.u32_at(hdr::OPEN_COUNT) as i32,
            target_count: self.u32_at(hdr::TARGET_COUNT),
            event_nr: self.u32_at(hdr::EVENT_NR),
        }
    }

    fn put_bytes(&mut self, at: usize, bytes: &[u8]) {
        self.buf.0[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn put_u32(&mut self, at: usize, v: u32) {
        self.put_bytes(at, &v.to_ne_bytes());
    }

    fn put_u64(&mut self, at: usize, v: u64) {
        self.put_bytes(at, &v.to_ne_bytes());
    }

    fn u32_at(&self, at: usize) -> u32 {
        let mut b = [0; 4];
        b.copy_from_slice(&self.buf.0[at..at + 4]);
        u32::from_ne_bytes(b)
    }

    fn u64_at(&self, at: usize) -> u64 {
        let mut b = [0; 8];
        b.copy_from_slice(&self.buf.0[at..at + 8]);
        u64::from_ne_bytes(b)
    }
}

/// An open `/dev/mapper/control`.
#[derive(Debug)]
pub struct Control {
    file: File,
}

impl Control {
    /// Open `/dev/mapper/control`, creating the node (and `/dev/mapper`) from
    /// sysfs's numbers if devtmpfs did not.
    pub fn open() -> Result<Control, DmError> {
        Control::open_at(Path::new(CONTROL_PATH), Path::new(CONTROL_SYSFS_DEV))
    }

    /// [`Control::open`] with explicit paths.
    pub fn open_at(node: &Path, sysfs_dev: &Path) -> Result<Control, DmError> {
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(node)
        };
        let control_err = |path: &Path, reason: String| DmError::Control {
            path: path.to_owned(),
            reason,
        };
        match open() {
            Ok(file) => return Ok(Control { file }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(control_err(node, e.to_string())),
        }
        let text = std::fs::read_to_string(sysfs_dev).map_err(|e| {
            control_err(
                sysfs_dev,
                format!("{e} (is device-mapper in the kernel? load dm_mod)"),
            )
        })?;
        let dev = DevNum::parse(&text)
            .ok_or_else(|| control_err(sysfs_dev, format!("unexpected contents {text:?}")))?;
        if let Some(dir) = node.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| control_err(dir, format!("creating the directory: {e}")))?;
        }
        match mknod(
            node,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o600),
            dev.to_dev_t(),
        ) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(control_err(node, format!("mknod c {dev}: {}", e.desc()))),
        }
        open()
            .map(|file| Control { file })
            .map_err(|e| control_err(node, e.to_string()))
    }

    /// Send one request; the kernel writes its answer into `req`.
    pub fn ioctl(&self, command: Command, req: &mut Request) -> Result<(), DmError> {
        let ptr = req.buf.0.as_mut_ptr();
        // SAFETY: `ptr` points to `BUF_SIZE` writable, 8-byte aligned bytes owned by
        // `req`, which outlives the call; the header's `data_size` is `BUF_SIZE`, so
        // the kernel reads and writes back at most that many bytes. The request
        // number encodes `struct dm_ioctl`'s size, which the header matches.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), command.request(), ptr) };
        if rc < 0 {
            return Err(DmError::Ioctl {
                command,
                name: req.name(),
                errno: Errno::last(),
            });
        }
        Ok(())
    }

    fn simple(&self, command: Command, name: &str, flags: u32) -> Result<DmInfo, DmError> {
        let mut req = Request::new(name, flags)?;
        self.ioctl(command, &mut req)?;
        Ok(req.info())
    }

    /// `DM_DEV_CREATE`: a new, suspended device without a table.
    pub fn create(&self, name: &str) -> Result<DmInfo, DmError> {
        self.simple(Command::DevCreate, name, 0)
    }

    /// `DM_TABLE_LOAD`: load `targets` into the device's inactive slot.
    pub fn load_table(
        &self,
        name: &str,
        targets: &[Target],
        read_only: bool,
    ) -> Result<DmInfo, DmError> {
        let mut req = Request::table_load(name, targets, read_only)?;
        self.ioctl(Command::TableLoad, &mut req)?;
        Ok(req.info())
    }

    /// `DM_DEV_SUSPEND` without `DM_SUSPEND_FLAG`: make the loaded table live and
    /// resume I/O.
    pub fn resume(&self, name: &str) -> Result<DmInfo, DmError> {
        self.simple(Command::DevSuspend, name, 0)
    }

    /// `DM_DEV_STATUS`.
    pub fn status(&self, name: &str) -> Result<DmInfo, DmError> {
        self.simple(Command::DevStatus, name, 0)
    }

    /// `DM_DEV_REMOVE`.
    pub fn remove(&self, name: &str) -> Result<(), DmError> {
        self.simple(Command::DevRemove, name, 0).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_the_kernel_header() {
        // _IOWR(0xfd, nr, 312) = 3 << 30 | 312 << 16 | 0xfd << 8 | nr.
        assert_eq!(Command::DevCreate.request() as u32, 0xc138_fd03);
        assert_eq!(Command::DevRemove.request() as u32, 0xc138_fd04);
        assert_eq!(Command::DevSuspend.request() as u32, 0xc138_fd06);
        assert_eq!(Command::DevStatus.request() as u32, 0xc138_fd07);
        assert_eq!(Command::TableLoad.request() as u32, 0xc138_fd09);
    }

    #[test]
    fn header_fields_land_at_their_offsets() {
        let r = Request::new("bulwark-root", DM_READONLY_FLAG).unwrap();
        let b = r.bytes();
        assert_eq!(&b[0..4], &4u32.to_le_bytes());
        assert_eq!(&b[4..12], &[0; 8]);
        assert_eq!(&b[12..16], &(BUF_SIZE as u32).to_le_bytes());
        assert_eq!(&b[16..20], &312u32.to_le_bytes());
        assert_eq!(&b[28..32], &1u32.to_le_bytes());
        assert_eq!(&b[48..60], b"bulwark-root");
        assert_eq!(b[60], 0);
        assert_eq!(r.name(), "bulwark-root");
        assert_eq!(b.as_ptr() as usize % 8, 0);
    }

    #[test]
    fn table_load_lays_out_specs_and_params() {
        let targets = [
            Target {
                sector_start: 0,
                length: 16,
                target_type: "verity".into(),
                params: "1 253:0 253:0".into(),
            },
            Target {
                sector_start: 16,
                length: 8,
                target_type: "zero".into(),
                params: String::new(),
            },
        ];
        let r = Request::table_load("t", &targets, true).unwrap();
        let b = r.bytes();
        assert_eq!(r.info().target_count, 2);
        assert!(r.info().read_only());
        let s = DM_IOCTL_SIZE;
        assert_eq!(&b[s..s + 8], &0u64.to_le_bytes());
        assert_eq!(&b[s + 8..s + 16], &16u64.to_le_bytes());
        // 40 + 13 + NUL = 54, rounded up to 56.
        assert_eq!(&b[s + 20..s + 24], &56u32.to_le_bytes());
        assert_eq!(&b[s + 24..s + 31], b"verity\0");
        assert_eq!(&b[s + 40..s + 54], b"1 253:0 253:0\0");
        let s2 = s + 56;
        assert_eq!(&b[s2..s2 + 8], &16u64.to_le_bytes());
        assert_eq!(&b[s2 + 8..s2 + 16], &8u64.to_le_bytes());
        assert_eq!(&b[s2 + 20..s2 + 24], &48u32.to_le_bytes());
        assert_eq!(&b[s2 + 24..s2 + 29], b"zero\0");
        assert_eq!(b[s2 + 40], 0);
    }

    #[test]
    fn bad_names_and_oversized_tables_are_refused() {
        for name in ["", ".", "..", "a/b", "a\0b", &"x".repeat(128)] {
            assert!(Request::new(name, 0).is_err(), "{name:?}");
        }
        assert!(Request::new(&"x".repeat(127), 0).is_ok());
        let t = |ty: &str, params: String| Target {
            sector_start: 0,
            length: 8,
            target_type: ty.into(),
            params,
        };
        assert!(Request::table_load("d", &[t("", String::new())], true).is_err());
        assert!(Request::table_load("d", &[t(&"v".repeat(16), String::new())], true).is_err());
        let err = Request::table_load("d", &[t("verity", "p".repeat(BUF_SIZE))], true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("too large"), "{err}");
    }

    #[test]
    fn kernel_dev_encoding_decodes() {
        assert_eq!(
            DevNum::from_kernel(0xfd00),
            DevNum {
                major: 253,
                minor: 0
            }
        );
        assert_eq!(
            DevNum::from_kernel(0xfd05),
            DevNum {
                major: 253,
                minor: 5
            }
        );
        // Minor 0x12345: low byte in bits 0..8, the rest from bit 20.
        assert_eq!(
            DevNum::from_kernel(0x45 | (254 << 8) | (0x123 << 20)),
            DevNum {
                major: 254,
                minor: 0x12345
            }
        );
        let d = DevNum {
            major: 253,
            minor: 0x12345,
        };
        assert_eq!(DevNum::from_dev_t(d.to_dev_t()), d);
        assert_eq!(
            DevNum::parse("10:236\n"),
            Some(DevNum {
                major: 10,
                minor: 236
            })
        );
        assert_eq!(DevNum::parse("10:"), None);
        assert_eq!(DevNum::parse("+1:2"), None);
        assert_eq!(d.to_string(), "253:74565");
    }

    #[test]
    fn answer_is_read_back_from_the_buffer() {
        let mut r = Request::new("x", 0).unwrap();
        r.put_u64(hdr::DEV, 0xfd01);
        r.put_u32(
            hdr::FLAGS,
            DM_READONLY_FLAG | DM_ACTIVE_PRESENT_FLAG | DM_SUSPEND_FLAG,
        );
        r.put_u32(hdr::OPEN_COUNT, 2);
        let i = r.info();
        assert_eq!(
            i.dev,
            DevNum {
                major: 253,
                minor: 1
            }
        );
        assert!(i.read_only() && i.active() && i.suspended());
        assert_eq!(i.open_count, 2);
    }

    #[test]
    fn errors_name_the_step_and_errno() {
        let e = DmError::Ioctl {
            command: Command::TableLoad,
            name: "bulwark-root".into(),
            errno: Errno::EINVAL,
        };
        assert_eq!(
            e.to_string(),
            "DM_TABLE_LOAD on \"bulwark-root\": Invalid argument (dmesg has the reason)"
        );
    }

    #[test]
    fn control_node_is_created_from_sysfs_numbers_or_reported() {
        let dir = std::env::temp_dir().join(format!("bulwark-dm-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // No sysfs entry: the error says device-mapper is missing.
        let err = Control::open_at(&dir.join("mapper/control"), &dir.join("no-such-dev"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("load dm_mod"), "{err}");
        // A garbled sysfs entry is reported with its contents.
        std::fs::write(dir.join("dev"), "garbage\n").unwrap();
        let err = Control::open_at(&dir.join("mapper/control"), &dir.join("dev"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"garbage\\n\""), "{err}");
        // An existing node (here a regular file) is simply opened.
        std::fs::create_dir_all(dir.join("mapper")).unwrap();
        std::fs::write(dir.join("mapper/control"), b"").unwrap();
        Control::open_at(&dir.join("mapper/control"), &dir.join("dev")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
