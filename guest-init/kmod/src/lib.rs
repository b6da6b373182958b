//! `bulwark-kmod`: kernel modules without kmod, for the two PIDs 1 of the project
//! (`bulwark-init` in tenant VMs, `bulwark-node-init` on nodes): index the `.ko` files of one directory by the
//! `name=` and `depends=` of their ELF `.modinfo` section, order a wanted set with
//! all its dependencies (dependencies first), and load each with `finit_module`.
//!
//! File names do not matter (`03-virtio_blk.ko`, `dm-verity.ko`): a module is known
//! by its `.modinfo` name. Names are normalised as the kernel does (`-` → `_`), so
//! `depends=dm-mod` finds the module named `dm_mod`.
//!
//! A wanted module that is not shipped is fine when the running kernel already has
//! it: `/sys/module/<name>` exists (loaded, or built in with parameters, a version
//! or a driver), or it is a filesystem listed in `/proc/filesystems` (e.g. a
//! built-in `ext4`). A built-in module with none of those leaves no trace at run
//! time and must not be listed in the config.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};

/// Where the initramfs ships its modules.
pub const DEFAULT_MODULE_DIR: &str = "/lib/modules";
/// One directory per loaded (or built-in, with parameters) module.
pub const SYS_MODULE: &str = "/sys/module";
/// Filesystems the running kernel knows (built in or loaded).
pub const PROC_FILESYSTEMS: &str = "/proc/filesystems";
/// Writing `1` here forbids loading any further module until reboot.
pub const MODULES_DISABLED: &str = "/proc/sys/kernel/modules_disabled";

/// Errors of module indexing and loading.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// Reading the directory or a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A `.ko` file is not a usable ELF kernel module.
    #[error("{}: not a usable kernel module: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The directory has a compressed module; the initramfs ships them uncompressed.
    #[error("{}: compressed kernel modules are not supported (ship it uncompressed)", path.display())]
    Compressed {
        /// The file.
        path: PathBuf,
    },
    /// Two files carry the same module name.
    #[error("module {name:?} is in both {} and {}", first.display(), second.display())]
    Duplicate {
        /// The module name.
        name: String,
        /// One file.
        first: PathBuf,
        /// The other.
        second: PathBuf,
    },
    /// A module name that cannot be a kernel module's.
    #[error("{name:?} is not a valid module name ({who})")]
    InvalidName {
        /// The name.
        name: String,
        /// Where it came from.
        who: String,
    },
    /// A wanted or depended-on module is neither shipped nor in the kernel.
    #[error("module {name:?} is not in {} ({})", dir.display(), needed_by.describe())]
    Missing {
        /// The module name.
        name: String,
        /// The module directory.
        dir: PathBuf,
        /// Who needs it.
        needed_by: NeededBy,
    },
    /// The `depends=` fields form a cycle.
    #[error("kernel module dependency cycle: {}", cycle.join(" -> "))]
    Cycle {
        /// The modules of the cycle, the first repeated at the end.
        cycle: Vec<String>,
    },
    /// `finit_module` failed.
    #[error("loading module {name:?} ({}): {}{}", path.display(), errno.desc(), load_hint(*errno))]
    Load {
        /// The module name (the file name for [`load`]).
        name: String,
        /// The file.
        path: PathBuf,
        /// The kernel's answer.
        errno: Errno,
    },
    /// Writing `/proc/sys/kernel/modules_disabled` failed.
    #[error("disabling module loading ({}): {source}", path.display())]
    Disable {
        /// The sysctl file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn load_hint(errno: Errno) -> &'static str {
    match errno {
        Errno::ENOENT => " (an unknown symbol: a dependency is not loaded; dmesg has the reason)",
        Errno::ENOEXEC => " (not built for this kernel; dmesg has the reason)",
        Errno::EPERM => " (module loading is disabled or not permitted)",
        Errno::EKEYREJECTED | Errno::EBADMSG => " (the module's signature was rejected)",
        _ => " (dmesg has the reason)",
    }
}

/// Who needs a module, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NeededBy {
    /// The config lists it.
    Config,
    /// This module's `depends=` names it.
    Module(String),
}

impl NeededBy {
    fn describe(&self) -> String {
        match self {
            NeededBy::Config => "wanted by the config".into(),
            NeededBy::Module(m) => format!("needed by {m:?}"),
        }
    }
}

/// Facts from a module's `.modinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleInfo {
    /// `name=`, normalised.
    pub name: String,
    /// `depends=`, normalised, in file order.
    pub depends: Vec<String>,
    /// `vermagic=` (the kernel release it was built for, and more), if present.
    pub vermagic: Option<String>,
}

/// A module to load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleRef {
    /// Its name.
    pub name: String,
    /// Its file.
    pub path: PathBuf,
}

impl ModuleRef {
    /// Load it ([`load`]), naming the module in errors.
    pub fn load(&self) -> Result<LoadOutcome, ModuleError> {
        load_named(&self.name, &self.path)
    }
}

/// What [`load`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadOutcome {
    /// The kernel loaded and initialised it, in this time.
    Loaded(Duration),
    /// It was already loaded or is built in (`EEXIST`).
    AlreadyPresent,
}

/// Replace `-` by `_`, as the kernel does for module names.
pub fn normalize_name(name: &str) -> String {
    name.replace('-', "_")
}

/// A normalised module name is ASCII letters, digits and `_`, 1 to 55 bytes
/// (`MODULE_NAME_LEN` is 56 with the NUL).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 56
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[derive(Clone, Debug)]
struct Entry {
    path: PathBuf,
    depends: Vec<String>,
}

/// The modules of one directory, by name.
#[derive(Clone, Debug)]
pub struct ModuleIndex {
    dir: PathBuf,
    modules: BTreeMap<String, Entry>,
    sys_module: PathBuf,
    proc_filesystems: PathBuf,
}

impl ModuleIndex {
    /// Index every `*.ko` file directly in `dir` (other files are ignored; a
    /// compressed `.ko.xz`/`.ko.zst`/`.ko.gz` is an error). A directory that does
    /// not exist is an empty index: every wanted module must then be in the kernel.
    pub fn scan(dir: &Path) -> Result<ModuleIndex, ModuleError> {
        let mut index = ModuleIndex {
            dir: dir.to_owned(),
            modules: BTreeMap::new(),
            sys_module: PathBuf::from(SYS_MODULE),
            proc_filesystems: PathBuf::from(PROC_FILESYSTEMS),
        };
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| ModuleError::Io { path, source }
        };
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(index),
            Err(e) => return Err(io_err(dir)(e)),
        };
        let mut paths = Vec::new();
        for entry in entries {
            let path = entry.map_err(io_err(dir))?.path();
            let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if [".ko.xz", ".ko.zst", ".ko.gz"]
                .iter()
                .any(|s| file_name.ends_with(s))
            {
                return Err(ModuleError::Compressed { path });
            }
            if file_name.ends_with(".ko")
                && std::fs::metadata(&path).map_err(io_err(&path))?.is_file()
            {
                paths.push(path);
            }
        }
        paths.sort();
        for path in paths {
            let info = read_modinfo(&path)?;
            if let Some(first) = index.modules.get(&info.name) {
                return Err(ModuleError::Duplicate {
                    name: info.name,
                    first: first.path.clone(),
                    second: path,
                });
            }
            index.modules.insert(
                info.name,
                Entry {
                    path,
                    depends: info.depends,
                },
            );
        }
        Ok(index)
    }

    /// Use these instead of `/sys/module` and `/proc/filesystems` to tell which
    /// modules the running kernel has (tests).
    pub fn with_presence_paths(mut self, sys_module: &Path, proc_filesystems: &Path) -> Self {
        self.sys_module = sys_module.to_owned();
        self.proc_filesystems = proc_filesystems.to_owned();
        self
    }

    /// The indexed directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Names of the shipped modules, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.modules.keys().map(String::as_str)
    }

    /// Whether a module of this name is shipped.
    pub fn contains(&self, name: &str) -> bool {
        self.modules.contains_key(&normalize_name(name))
    }

    /// A shipped module's file and dependencies.
    pub fn get(&self, name: &str) -> Option<(&Path, &[String])> {
        self.modules
            .get(&normalize_name(name))
            .map(|e| (e.path.as_path(), e.depends.as_slice()))
    }

    /// Whether the running kernel already has `name` (see [`is_present`]).
    pub fn is_present(&self, name: &str) -> bool {
        present_in(&self.sys_module, &self.proc_filesystems, name)
    }

    /// The `wanted` modules and all their dependencies, each once, every module
    /// after its dependencies. A module that is not shipped but that the kernel
    /// already has is left out; one that is neither is an error naming who needs
    /// it. Shipped modules are listed even if already loaded ([`load`] accepts
    /// that).
    pub fn load_order(&self, wanted: &[String]) -> Result<Vec<ModuleRef>, ModuleError> {
        let mut order = Vec::new();
        let mut state = HashMap::new();
        let mut stack = Vec::new();
        for w in wanted {
            let name = normalize_name(w);
            if !valid_name(&name) {
                return Err(ModuleError::InvalidName {
                    name: w.clone(),
                    who: "wanted by the config".into(),
                });
            }
            self.visit(&name, &NeededBy::Config, &mut state, &mut stack, &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        needed_by: &NeededBy,
        state: &mut HashMap<String, Visit>,
        stack: &mut Vec<String>,
        order: &mut Vec<ModuleRef>,
    ) -> Result<(), ModuleError> {
        match state.get(name) {
            Some(Visit::Done) => return Ok(()),
            Some(Visit::InProgress) => {
                let start = stack.iter().position(|s| s == name).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(name.to_owned());
                return Err(ModuleError::Cycle { cycle });
            }
            None => {}
        }
        let Some(entry) = self.modules.get(name) else {
            if self.is_present(name) {
                state.insert(name.to_owned(), Visit::Done);
                return Ok(());
            }
            return Err(ModuleError::Missing {
                name: name.to_owned(),
                dir: self.dir.clone(),
                needed_by: needed_by.clone(),
            });
        };
        state.insert(name.to_owned(), Visit::InProgress);
        stack.push(name.to_owned());
        let by = NeededBy::Module(name.to_owned());
        for dep in &entry.depends {
            self.visit(dep, &by, state, stack, order)?;
        }
        stack.pop();
        state.insert(name.to_owned(), Visit::Done);
        order.push(ModuleRef {
            name: name.to_owned(),
            path: entry.path.clone(),
        });
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Visit {
    InProgress,
    Done,
}

/// Whether the running kernel has module `name` already: `/sys/module/<name>`
/// exists, or `name` is a filesystem in `/proc/filesystems`.
pub fn is_present(name: &str) -> bool {
    present_in(Path::new(SYS_MODULE), Path::new(PROC_FILESYSTEMS), name)
}

fn present_in(sys_module: &Path, proc_filesystems: &Path, name: &str) -> bool {
    let name = normalize_name(name);
    if !valid_name(&name) {
        return false;
    }
    if sys_module.join(&name).is_dir() {
        return true;
    }
    // Lines are "nodev\tname" or "\tname".
    std::fs::read_to_string(proc_filesystems).is_ok_and(|text| {
        text.lines()
            .any(|l| l.rsplit('\t').next().map(str::trim) == Some(name.as_str()))
    })
}

/// Load the module in `path` with `finit_module(fd, "", 0)`. `EEXIST` (already
/// loaded, or built in) is success.
pub fn load(path: &Path) -> Result<LoadOutcome, ModuleError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    load_named(&name, path)
}

fn load_named(name: &str, path: &Path) -> Result<LoadOutcome, ModuleError> {
    let file = File::open(path).map_err(|source| ModuleError::Io {
        path: path.to_owned(),
        source,
    })?;
    let start = Instant::now();
    match finit_module(&file, c"", ModuleInitFlags::empty()) {
        Ok(()) => Ok(LoadOutcome::Loaded(start.elapsed())),
        Err(Errno::EEXIST) => Ok(LoadOutcome::AlreadyPresent),
        Err(errno) => Err(ModuleError::Load {
            name: name.to_owned(),
            path: path.to_owned(),
            errno,
        }),
    }
}

/// Forbid loading any further module until reboot (`modules_disabled = 1`).
pub fn disable_module_loading() -> Result<(), ModuleError> {
    disable_module_loading_at(Path::new(MODULES_DISABLED))
}

fn disable_module_loading_at(path: &Path) -> Result<(), ModuleError> {
    std::fs::write(path, b"1\n").map_err(|source| ModuleError::Disable {
        path: path.to_owned(),
        source,
    })
}

/// Read `name=`, `depends=` and `vermagic=` from the `.modinfo` section of the
/// ELF file `path`. Only the ELF header, the section table, the section-name
/// table and `.modinfo` are read, not the whole (possibly large) file.
pub fn read_modinfo(path: &Path) -> Result<ModuleInfo, ModuleError> {
    let file = File::open(path).map_err(|source| ModuleError::Io {
        path: path.to_owned(),
        source,
    })?;
    let len = file
        .metadata()
        .map_err(|source| ModuleError::Io {
            path: path.to_owned(),
            source,
        })?
        .len();
    modinfo_from(&FileSource { file: &file, len }).map_err(|e| match e {
        Fail::Io(source) => ModuleError::Io {
            path: path.to_owned(),
            source,
        },
        Fail::Bad(reason) => ModuleError::Malformed {
            path: path.to_owned(),
            reason,
        },
    })
}

/// [`read_modinfo`] on a module image in memory; the error is the reason.
pub fn parse_modinfo(image: &[u8]) -> Result<ModuleInfo, String> {
    modinfo_from(&image).map_err(|e| match e {
        Fail::Io(e) => e.to_string(),
        Fail::Bad(reason) => reason,
    })
}

// ---- A bounds-checked ELF64 little-endian section-table reader. ----

enum Fail {
    Io(io::Error),
    Bad(String),
}

fn bad<T>(reason: impl Into<String>) -> Result<T, Fail> {
    Err(Fail::Bad(reason.into()))
}

/// Positioned reads from a file or a byte slice.
trait Source {
    fn len(&self) -> u64;
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// `len` bytes at `offset`, after checking they lie inside the source and are
    /// at most `limit` bytes.
    fn bytes(&self, offset: u64, len: u64, what: &str, limit: u64) -> Result<Vec<u8>, Fail> {
        if len > limit {
            return bad(format!(
                "{what} is {len} bytes, more than the {limit} allowed"
            ));
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.len() => {}
            _ => {
                return bad(format!(
                    "{what} ({len} bytes at offset {offset}) lies beyond the end of the file ({} bytes)",
                    self.len()
                ))
            }
        }
        // `len <= limit`, which is far below usize::MAX.
        let mut buf = vec![0; len as usize];
        self.read_exact_at(&mut buf, offset).map_err(Fail::Io)?;
        Ok(buf)
    }
}

impl Source for &[u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

struct FileSource<'a> {
    file: &'a File,
    len: u64,
}

impl Source for FileSource<'_> {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self.file, buf, offset)
    }
}

const ELF_HEADER_SIZE: u64 = 64;
const SECTION_HEADER_SIZE: u64 = 64;
const ET_REL: u16 = 1;
const SHT_NOBITS: u32 = 8;
const SHN_XINDEX: u16 = 0xffff;
/// Generous limits that no real module reaches but that bound memory use.
const MAX_SECTIONS: u64 = 1 << 20;
const MAX_STRTAB: u64 = 16 << 20;
const MAX_MODINFO: u64 = 1 << 20;

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The fields of one 64-byte section header that matter here.
struct Section {
    name: u32,
    kind: u32,
    offset: u64,
    size: u64,
    link: u32,
}

impl Section {
    /// `raw` is exactly one section header (callers slice 64 bytes).
    fn parse(raw: &[u8]) -> Section {
        Section {
            name: le_u32(raw, 0),
            kind: le_u32(raw, 4),
            offset: le_u64(raw, 24),
            size: le_u64(raw, 32),
            link: le_u32(raw, 40),
        }
    }

    fn contents(&self, src: &dyn Source, what: &str, limit: u64) -> Result<Vec<u8>, Fail> {
        if self.kind == SHT_NOBITS {
            return bad(format!("{what} has no contents in the file (SHT_NOBITS)"));
        }
        src.bytes(self.offset, self.size, what, limit)
    }
}

fn modinfo_from(src: &dyn Source) -> Result<ModuleInfo, Fail> {
    if src.len() < ELF_HEADER_SIZE {
        return bad(format!("{} bytes is shorter than an ELF header", src.len()));
    }
    let h = src.bytes(0, ELF_HEADER_SIZE, "ELF header", ELF_HEADER_SIZE)?;
    if h[0..4] != *b"\x7fELF" {
        return bad("no ELF magic");
    }
    if h[4] != 2 || h[5] != 1 {
        return bad("not a 64-bit little-endian ELF file");
    }
    if le_u16(&h, 16) != ET_REL {
        return bad("not a relocatable object (ET_REL), which kernel modules are");
    }
    let shoff = le_u64(&h, 0x28);
    let shentsize = le_u16(&h, 0x3a);
    let mut shnum = u64::from(le_u16(&h, 0x3c));
    let shstrndx = le_u16(&h, 0x3e);
    if shoff == 0 {
        return bad("no section table");
    }
    if u64::from(shentsize) != SECTION_HEADER_SIZE {
        return bad(format!("section header size {shentsize}, expected 64"));
    }
    // Section 0 holds the real count and string-table index when they do not
    // fit the ELF header's 16-bit fields.
    let first = Section::parse(&src.bytes(shoff, SECTION_HEADER_SIZE, "section 0", 64)?);
    if shnum == 0 {
        shnum = first.size;
    }
    let shstrndx = if shstrndx == SHN_XINDEX {
        u64::from(first.link)
    } else {
        u64::from(shstrndx)
    };
    if shnum > MAX_SECTIONS {
        return bad(format!("{shnum} sections, more than {MAX_SECTIONS}"));
    }
    let table = src.bytes(
        shoff,
        shnum * SECTION_HEADER_SIZE,
        "section table",
        MAX_SECTIONS * SECTION_HEADER_SIZE,
    )?;
    let section = |i: u64| {
        // `i < shnum` and the table holds `shnum` headers.
        let at = (i * SECTION_HEADER_SIZE) as usize;
        Section::parse(&table[at..at + SECTION_HEADER_SIZE as usize])
    };
    if shstrndx == 0 || shstrndx >= shnum {
        return bad(format!(
            "section-name table index {shstrndx} is not among the {shnum} sections"
        ));
    }
    let names = section(shstrndx).contents(src, "section-name table", MAX_STRTAB)?;
    let mut modinfo = None;
    for i in 1..shnum {
        let s = section(i);
        let start = usize::try_from(s.name).unwrap_or(usize::MAX);
        let Some(rest) = names.get(start..) else {
            return bad(format!(
                "section {i}'s name lies outside the section-name table"
            ));
        };
        let Some(end) = rest.iter().position(|&b| b == 0) else {
            return bad(format!("section {i}'s name is not NUL-terminated"));
        };
        if &rest[..end] == b".modinfo" {
            modinfo = Some(s);
            break;
        }
    }
    let Some(modinfo) = modinfo else {
        return bad("no .modinfo section");
    };
    let data = modinfo.contents(src, ".modinfo", MAX_MODINFO)?;
    parse_modinfo_strings(&data).map_err(Fail::Bad)
}

/// Parse `.modinfo`: NUL-separated `key=value` strings (runs of NULs pad it).
fn parse_modinfo_strings(data: &[u8]) -> Result<ModuleInfo, String> {
    let mut name: Option<String> = None;
    let mut depends: Option<Vec<String>> = None;
    let mut vermagic = None;
    for entry in data.split(|&b| b == 0).filter(|e| !e.is_empty()) {
        let Some(eq) = entry.iter().position(|&b| b == b'=') else {
            continue;
        };
        let (key, value) = (&entry[..eq], &entry[eq + 1..]);
        let text = |what: &str| {
            std::str::from_utf8(value).map_err(|_| format!(".modinfo {what}= is not UTF-8"))
        };
        match key {
            b"name" => {
                let n = normalize_name(text("name")?);
                if !valid_name(&n) {
                    return Err(format!(".modinfo name={n:?} is not a valid module name"));
                }
                if let Some(old) = &name {
                    if *old != n {
                        return Err(format!(".modinfo has two names, {old:?} and {n:?}"));
                    }
                }
                name = Some(n);
            }
            b"depends" => {
                if depends.is_some() {
                    return Err(".modinfo has two depends= entries".into());
                }
                let mut list = Vec::new();
                for d in text("depends")?.split(',').filter(|d| !d.is_empty()) {
                    let d = normalize_name(d);
                    if !valid_name(&d) {
                        return Err(format!(
                            ".modinfo depends= names {d:?}, not a valid module name"
                        ));
                    }
                    list.push(d);
                }
                depends = Some(list);
            }
            b"vermagic" => vermagic = Some(text("vermagic")?.trim_end().to_owned()),
            _ => {}
        }
    }
    let name = name.ok_or(".modinfo has no name= entry")?;
    Ok(ModuleInfo {
        name,
        depends: depends.unwrap_or_default(),
        vermagic,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    // The `.modinfo` facts of real modules of the Debian 6.1 cloud kernel
    // (linux-image-6.1.0-57-cloud-amd64 6.1.192-3), as `objcopy -O binary
    // --only-section=.modinfo` shows them (abridged to the relevant keys):
    //   virtio_blk.ko:   depends=virtio,virtio_ring  name=virtio_blk
    //   virtio.ko:       depends=virtio_ring         name=virtio
    //   virtio_ring.ko:  depends=                    name=virtio_ring
    //   dm-verity.ko:    depends=reed_solomon,dm-mod,dm-bufio  name=dm_verity
    //   dm-bufio.ko:     depends=dm-mod              name=dm_bufio
    //   dm-mod.ko:       depends=                    name=dm_mod
    //   reed_solomon.ko: depends=                    name=reed_solomon
    // all with vermagic=6.1.0-57-cloud-amd64 SMP preempt mod_unload modversions
    // (note the trailing space) and ext4 built into that kernel.
    const VERMAGIC: &str = "6.1.0-57-cloud-amd64 SMP preempt mod_unload modversions ";

    fn modinfo(name: &str, depends: &str) -> Vec<u8> {
        let mut m = Vec::new();
        for kv in [
            "license=GPL".to_owned(),
            "description=test module".to_owned(),
            format!("depends={depends}"),
            "retpoline=Y".to_owned(),
            "intree=Y".to_owned(),
            format!("name={name}"),
            format!("vermagic={VERMAGIC}"),
        ] {
            m.extend_from_slice(kv.as_bytes());
            m.push(0);
        }
        m
    }

    /// A minimal ELF64 little-endian ET_REL x86-64 file: a null section, `.text`,
    /// `.modinfo` and `.shstrtab`, the section table at the end.
    fn elf(modinfo: &[u8]) -> Vec<u8> {
        let text = [0xc3u8; 16]; // ret
        let shstrtab = b"\0.text\0.modinfo\0.shstrtab\0";
        let (text_name, modinfo_name, shstrtab_name) = (1u32, 7u32, 16u32);
        let mut f = vec![0u8; 64];
        let text_off = f.len() as u64;
        f.extend_from_slice(&text);
        let modinfo_off = f.len() as u64;
        f.extend_from_slice(modinfo);
        let shstrtab_off = f.len() as u64;
        f.extend_from_slice(shstrtab);
        while !f.len().is_multiple_of(8) {
            f.push(0);
        }
        let shoff = f.len() as u64;
        let mut sh = |name: u32, kind: u32, flags: u64, off: u64, size: u64| {
            let mut h = [0u8; 64];
            h[0..4].copy_from_slice(&name.to_le_bytes());
            h[4..8].copy_from_slice(&kind.to_le_bytes());
            h[8..16].copy_from_slice(&flags.to_le_bytes());
            h[24..32].copy_from_slice(&off.to_le_bytes());
            h[32..40].copy_from_slice(&size.to_le_bytes());
            h[48..56].copy_from_slice(&1u64.to_le_bytes());
            f.extend_from_slice(&h);
        };
        sh(0, 0, 0, 0, 0);
        sh(text_name, 1, 6, text_off, text.len() as u64);
        sh(modinfo_name, 1, 2, modinfo_off, modinfo.len() as u64);
        sh(shstrtab_name, 3, 0, shstrtab_off, shstrtab.len() as u64);
        f[0..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // ELFCLASS64
        f[5] = 1; // ELFDATA2LSB
        f[6] = 1; // EV_CURRENT
        f[16..18].copy_from_slice(&ET_REL.to_le_bytes());
        f[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        f[0x34..0x36].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
        f[0x3c..0x3e].copy_from_slice(&4u16.to_le_bytes()); // e_shnum
        f[0x3e..0x40].copy_from_slice(&3u16.to_le_bytes()); // e_shstrndx
        f
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "bulwark-modules-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }

        fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The real modules' facts, under file names that do not match the names.
    fn real_modules() -> TempDir {
        let d = TempDir::new();
        d.write(
            "03-virtio_blk.ko",
            &elf(&modinfo("virtio_blk", "virtio,virtio_ring")),
        );
        d.write("virtio.ko", &elf(&modinfo("virtio", "virtio_ring")));
        d.write("01-virtio-ring.ko", &elf(&modinfo("virtio_ring", "")));
        d.write(
            "dm-verity.ko",
            &elf(&modinfo("dm_verity", "reed_solomon,dm-mod,dm-bufio")),
        );
        d.write("dm-bufio.ko", &elf(&modinfo("dm_bufio", "dm-mod")));
        d.write("dm-mod.ko", &elf(&modinfo("dm_mod", "")));
        d.write("reed_solomon.ko", &elf(&modinfo("reed_solomon", "")));
        d.write("README", b"not a module");
        d
    }

    /// An index whose view of the running kernel is `present` (module names with
    /// a /sys/module directory) and `filesystems` (/proc/filesystems contents).
    fn index(dir: &TempDir, present: &[&str], filesystems: &str) -> (ModuleIndex, TempDir) {
        let sys = TempDir::new();
        for p in present {
            std::fs::create_dir_all(sys.0.join("module").join(p)).unwrap();
        }
        let fs = sys.write("filesystems", filesystems.as_bytes());
        let idx = ModuleIndex::scan(&dir.0)
            .unwrap()
            .with_presence_paths(&sys.0.join("module"), &fs);
        (idx, sys)
    }

    fn names(order: &[ModuleRef]) -> Vec<&str> {
        order.iter().map(|m| m.name.as_str()).collect()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_real_modinfo_facts() {
        let info =
            parse_modinfo(&elf(&modinfo("dm_verity", "reed_solomon,dm-mod,dm-bufio"))).unwrap();
        assert_eq!(info.name, "dm_verity");
        assert_eq!(info.depends, ["reed_solomon", "dm_mod", "dm_bufio"]);
        assert_eq!(info.vermagic.as_deref(), Some(VERMAGIC.trim_end()));
        let info = parse_modinfo(&elf(&modinfo("virtio_ring", ""))).unwrap();
        assert_eq!(info.name, "virtio_ring");
        assert!(info.depends.is_empty());
        // NUL padding between entries (as alignment leaves it) is harmless.
        let mut padded = b"\0\0license=GPL\0\0\0\0".to_vec();
        padded.extend(modinfo("virtio_blk", "virtio,virtio_ring"));
        padded.extend([0; 5]);
        let info = parse_modinfo(&elf(&padded)).unwrap();
        assert_eq!(info.depends, ["virtio", "virtio_ring"]);
        // The same through a file.
        let d = TempDir::new();
        let p = d.write("x.ko", &elf(&modinfo("virtio_blk", "virtio,virtio_ring")));
        assert_eq!(read_modinfo(&p).unwrap().name, "virtio_blk");
    }

    #[test]
    fn load_order_puts_dependencies_first_once() {
        let d = real_modules();
        let (idx, _sys) = index(&d, &[], "");
        assert_eq!(idx.names().count(), 7);
        assert!(idx.contains("dm-verity") && idx.contains("virtio_blk") && !idx.contains("ext4"));
        assert_eq!(
            idx.get("dm-verity").unwrap().0,
            d.0.join("dm-verity.ko").as_path()
        );
        // virtio_ring is reached twice (a diamond): directly and through virtio.
        let order = idx
            .load_order(&strings(&["virtio_blk", "dm-verity", "virtio_ring"]))
            .unwrap();
        assert_eq!(
            names(&order),
            [
                "virtio_ring",
                "virtio",
                "virtio_blk",
                "reed_solomon",
                "dm_mod",
                "dm_bufio",
                "dm_verity"
            ]
        );
        assert_eq!(order[2].path, d.0.join("03-virtio_blk.ko"));
        assert_eq!(order[0].path, d.0.join("01-virtio-ring.ko"));
        assert!(idx.load_order(&[]).unwrap().is_empty());
    }

    #[test]
    fn missing_modules_name_who_needs_them() {
        let d = real_modules();
        let (idx, _sys) = index(&d, &[], "");
        let err = idx
            .load_order(&strings(&["nvidia"]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "module \"nvidia\" is not in {} (wanted by the config)",
                d.0.display()
            )
        );
        std::fs::remove_file(d.0.join("dm-bufio.ko")).unwrap();
        let (idx, _sys) = index(&d, &[], "");
        let err = idx
            .load_order(&strings(&["dm_verity"]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "module \"dm_bufio\" is not in {} (needed by \"dm_verity\")",
                d.0.display()
            )
        );
        let err = idx
            .load_order(&strings(&["../evil"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a valid module name"), "{err}");
    }

    #[test]
    fn modules_the_kernel_has_need_no_file() {
        let d = real_modules();
        // ext4 built in (only in /proc/filesystems), dm_bufio already loaded.
        std::fs::remove_file(d.0.join("dm-bufio.ko")).unwrap();
        let (idx, _sys) = index(&d, &["dm_bufio"], "nodev\tsysfs\n\text4\n");
        let order = idx.load_order(&strings(&["ext4", "dm_verity"])).unwrap();
        assert_eq!(names(&order), ["reed_solomon", "dm_mod", "dm_verity"]);
        assert!(idx.is_present("ext4") && idx.is_present("dm-bufio"));
        assert!(!idx.is_present("sysf") && !idx.is_present("xfs"));
        // A missing directory is an empty index.
        let idx = ModuleIndex::scan(&d.0.join("none")).unwrap();
        assert_eq!(idx.names().count(), 0);
    }

    #[test]
    fn dependency_cycles_are_errors() {
        let d = TempDir::new();
        d.write("a.ko", &elf(&modinfo("a", "b")));
        d.write("b.ko", &elf(&modinfo("b", "c")));
        d.write("c.ko", &elf(&modinfo("c", "a")));
        d.write("s.ko", &elf(&modinfo("s", "s")));
        let (idx, _sys) = index(&d, &[], "");
        let err = idx.load_order(&strings(&["a"])).unwrap_err().to_string();
        assert_eq!(err, "kernel module dependency cycle: a -> b -> c -> a");
        let err = idx.load_order(&strings(&["s"])).unwrap_err().to_string();
        assert_eq!(err, "kernel module dependency cycle: s -> s");
    }

    #[test]
    fn duplicates_and_compressed_modules_are_errors() {
        let d = TempDir::new();
        d.write("virtio_ring.ko", &elf(&modinfo("virtio_ring", "")));
        d.write("99-virtio-ring.ko", &elf(&modinfo("virtio-ring", "")));
        let err = ModuleIndex::scan(&d.0).unwrap_err().to_string();
        assert!(
            err.starts_with("module \"virtio_ring\" is in both"),
            "{err}"
        );
        let d = TempDir::new();
        d.write("virtio_ring.ko.xz", b"");
        let err = ModuleIndex::scan(&d.0).unwrap_err().to_string();
        assert!(
            err.contains("compressed kernel modules are not supported"),
            "{err}"
        );
    }

    #[test]
    fn truncated_and_garbage_files_are_errors_not_panics() {
        let good = elf(&modinfo("virtio_blk", "virtio,virtio_ring"));
        assert!(parse_modinfo(&good).is_ok());
        // Every strict prefix is an error (the section table is at the end).
        for len in 0..good.len() {
            assert!(
                parse_modinfo(&good[..len]).is_err(),
                "prefix of {len} bytes"
            );
        }
        // Any single corrupted byte never panics.
        for i in 0..good.len() {
            for v in [0x00, 0x7f, 0xff] {
                let mut f = good.clone();
                f[i] = v;
                let _ = parse_modinfo(&f);
            }
        }
        let reason = |f: &[u8]| parse_modinfo(f).unwrap_err();
        assert!(reason(b"garbage").contains("shorter than an ELF header"));
        assert!(reason(&[0x55; 200]).contains("no ELF magic"));
        let mut f = good.clone();
        f[4] = 1;
        assert!(reason(&f).contains("64-bit little-endian"));
        let mut f = good.clone();
        f[16] = 3; // ET_DYN
        assert!(reason(&f).contains("ET_REL"));
        let mut f = good.clone();
        f[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(reason(&f).contains("beyond the end of the file"));
        let mut f = good.clone();
        f[0x3e] = 9;
        assert!(reason(&f).contains("section-name table index 9"));
        // .modinfo's size points past the end of the file, or overflows.
        let shoff = u64::from_le_bytes(good[0x28..0x30].try_into().unwrap()) as usize;
        let modinfo_size = shoff + 2 * 64 + 32;
        let mut f = good.clone();
        f[modinfo_size..modinfo_size + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(reason(&f).contains(".modinfo is"));
        let mut f = good.clone();
        f[modinfo_size - 8..modinfo_size].copy_from_slice(&u64::MAX.to_le_bytes());
        f[modinfo_size..modinfo_size + 8].copy_from_slice(&16u64.to_le_bytes());
        assert!(reason(&f).contains("beyond the end of the file"));
        // A section name outside the string table.
        let mut f = good.clone();
        f[shoff + 2 * 64..shoff + 2 * 64 + 4].copy_from_slice(&1000u32.to_le_bytes());
        assert!(reason(&f).contains("outside the section-name table"));
        // No .modinfo, or one without a name.
        assert!(reason(&elf(b"")).contains("no name="));
        let mut f = good.clone();
        let pos = f.windows(8).position(|w| w == b".modinfo").unwrap();
        f[pos + 1] = b'M';
        assert!(reason(&f).contains("no .modinfo section"));
        // A malformed module in the directory is reported with its path.
        let d = TempDir::new();
        let p = d.write("bad.ko", &good[..100]);
        let err = ModuleIndex::scan(&d.0).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}: not a usable kernel module", p.display())),
            "{err}"
        );
    }

    #[test]
    fn bad_modinfo_values_are_errors() {
        assert!(parse_modinfo(&elf(&modinfo("a/b", "")))
            .unwrap_err()
            .contains("name"));
        assert!(parse_modinfo(&elf(&modinfo("a", "b,../c")))
            .unwrap_err()
            .contains("depends"));
        let mut two = modinfo("a", "");
        two.extend(b"name=b\0");
        assert!(parse_modinfo(&elf(&two)).unwrap_err().contains("two names"));
    }

    #[test]
    fn load_reports_the_module_and_errno() {
        let d = TempDir::new();
        let missing = d.0.join("nope.ko");
        let err = load(&missing).unwrap_err().to_string();
        assert!(err.starts_with(&missing.display().to_string()), "{err}");
        let e = ModuleError::Load {
            name: "nvidia".into(),
            path: "/lib/modules/nvidia.ko".into(),
            errno: Errno::ENOEXEC,
        };
        assert_eq!(
            e.to_string(),
            "loading module \"nvidia\" (/lib/modules/nvidia.ko): Exec format error \
             (not built for this kernel; dmesg has the reason)"
        );
    }

    #[test]
    fn disabling_writes_one() {
        let d = TempDir::new();
        let p = d.write("modules_disabled", b"0\n");
        disable_module_loading_at(&p).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"1\n");
        let err = disable_module_loading_at(&d.0.join("no/such")).unwrap_err();
        assert!(err.to_string().starts_with("disabling module loading"));
    }
}
