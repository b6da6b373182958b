//! The EFI system partition: a FAT32 filesystem inside the disk (or a file or
//! partition device holding only the filesystem), read and written with the
//! `fatfs` crate through [`PartIo`], a window onto the disk.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use fatfs::{FatType, FileSystem, FormatVolumeOptions, FsOptions};

use super::{DiskError, Layout, Target};
use crate::disk::gpt::SECTOR;

/// FAT volume label of the ESP.
pub const VOLUME_LABEL: &[u8; 11] = b"BULWARK-ESP";

/// Timestamps for new directory entries: the current UTC time (or
/// `$SOURCE_DATE_EPOCH`), clamped to FAT's 1980..=2107. fatfs 0.3 without its
/// `chrono` feature writes day 0 of month 0, which the UEFI FAT driver
/// refuses in `SetInfo`: systemd-boot's boot-counting rename then fails with
/// "Invalid Parameter" (seen in OVMF).
#[derive(Debug)]
pub struct UtcClock;

/// The clock the ESP uses.
pub static CLOCK: UtcClock = UtcClock;

impl UtcClock {
    fn now() -> fatfs::DateTime {
        date_time(bulwark_image::build_time())
    }
}

/// Civil UTC date and time of Unix time `secs` (Howard Hinnant's
/// days-to-civil), clamped to what FAT can store.
pub fn date_time(secs: u64) -> fatfs::DateTime {
    // 1980-01-01 .. 2107-12-31 23:59:58
    let secs = secs.clamp(315_532_800, 4_354_819_198);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u16;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u16;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u16;
    fatfs::DateTime {
        date: fatfs::Date { year, month, day },
        time: fatfs::Time {
            hour: (rem / 3600) as u16,
            min: (rem / 60 % 60) as u16,
            sec: (rem % 60) as u16,
            millis: 0,
        },
    }
}

impl fatfs::TimeProvider for UtcClock {
    fn get_current_date(&self) -> fatfs::Date {
        Self::now().date
    }

    fn get_current_date_time(&self) -> fatfs::DateTime {
        Self::now()
    }
}

/// A byte range of a file, as a seekable stream.
#[derive(Debug)]
pub struct PartIo {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl PartIo {
    /// The `len` bytes of `file` at `start`.
    pub fn new(file: File, start: u64, len: u64) -> PartIo {
        PartIo {
            file,
            start,
            len,
            pos: 0,
        }
    }
}

impl Read for PartIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        if n == 0 {
            return Ok(0);
        }
        let r = self.file.read_at(&mut buf[..n], self.start + self.pos)?;
        self.pos += r as u64;
        Ok(r)
    }
}

impl Write for PartIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !buf.is_empty() && self.pos >= self.len {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        let n = (buf.len() as u64).min(self.len - self.pos) as usize;
        let w = self.file.write_at(&buf[..n], self.start + self.pos)?;
        self.pos += w as u64;
        Ok(w)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for PartIo {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let p = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match p {
            Some(p) if p <= self.len => {
                self.pos = p;
                Ok(p)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek outside the partition",
            )),
        }
    }
}

/// Format `len` bytes of `file` at `start` as the ESP's FAT32 (512-byte
/// clusters below 260 MiB, 4 KiB above, as mkfs.fat does).
pub fn format(
    path: &Path,
    file: &File,
    start: u64,
    len: u64,
    volume_id: u32,
) -> Result<(), DiskError> {
    let f = file.try_clone().map_err(|e| DiskError::io(path, e))?;
    let cluster = if len < (260 << 20) { 512 } else { 4096 };
    let sectors = u32::try_from(len / SECTOR).map_err(|_| DiskError::Unsuitable {
        path: path.to_path_buf(),
        why: "ESP larger than FAT32 allows".into(),
    })?;
    fatfs::format_volume(
        PartIo::new(f, start, len),
        FormatVolumeOptions::new()
            .fat_type(FatType::Fat32)
            .bytes_per_cluster(cluster)
            .total_sectors(sectors)
            .volume_id(volume_id)
            .volume_label(*VOLUME_LABEL),
    )
    .map_err(|e| DiskError::corrupt(path, format!("formatting the ESP: {e}")))
}

/// Check a FAT32 boot sector well enough that `fatfs` can be trusted not to
/// trip over it: the things it would otherwise divide by or index with.
fn check_boot_sector(b: &[u8; 512], len: u64) -> Result<(), String> {
    if b[510] != 0x55 || b[511] != 0xAA {
        return Err("no boot sector signature (55 AA)".into());
    }
    let bps = u16::from_le_bytes([b[11], b[12]]);
    let spc = b[13];
    let reserved = u16::from_le_bytes([b[14], b[15]]);
    let fats = b[16];
    let root_entries = u16::from_le_bytes([b[17], b[18]]);
    let total16 = u16::from_le_bytes([b[19], b[20]]);
    let fat16 = u16::from_le_bytes([b[22], b[23]]);
    let total32 = u32::from_le_bytes([b[32], b[33], b[34], b[35]]);
    let fat32 = u32::from_le_bytes([b[36], b[37], b[38], b[39]]);
    let root_cluster = u32::from_le_bytes([b[44], b[45], b[46], b[47]]);
    if bps != 512 {
        return Err(format!("{bps} bytes per sector (512 expected)"));
    }
    if spc == 0 || !spc.is_power_of_two() {
        return Err(format!("{spc} sectors per cluster"));
    }
    if reserved == 0 || fats == 0 || fats > 2 {
        return Err(format!("{reserved} reserved sectors, {fats} FATs"));
    }
    if root_entries != 0 || total16 != 0 || fat16 != 0 || fat32 == 0 || root_cluster < 2 {
        return Err("not a FAT32 filesystem".into());
    }
    let total = u64::from(total32);
    let meta = u64::from(reserved) + u64::from(fats) * u64::from(fat32);
    if total * 512 > len || meta >= total {
        return Err(format!(
            "{total} sectors (FATs and reserved: {meta}) do not fit {len} bytes"
        ));
    }
    let clusters = (total - meta) / u64::from(spc);
    if clusters < 65_525
        || u64::from(fat32) * 128 < clusters + 2
        || u64::from(root_cluster) >= clusters + 2
    {
        return Err(format!(
            "{clusters} clusters do not make a consistent FAT32"
        ));
    }
    Ok(())
}

/// An open ESP.
pub struct Esp {
    /// The path it was opened from (disk, partition or file).
    pub path: PathBuf,
    fs: FileSystem<PartIo>,
    file: File,
    geo: Geometry,
}

/// Where clusters are, from the boot sector.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    /// Byte offset of the filesystem in the file.
    start: u64,
    /// Bytes per cluster.
    cluster: u64,
    /// Byte offset of cluster 2 from `start`.
    data: u64,
    /// The root directory's first cluster.
    root: u32,
}

impl Geometry {
    fn of(b: &[u8; 512], start: u64) -> Geometry {
        let spc = u64::from(b[13]);
        let reserved = u64::from(u16::from_le_bytes([b[14], b[15]]));
        let fats = u64::from(b[16]);
        let fat32 = u64::from(u32::from_le_bytes([b[36], b[37], b[38], b[39]]));
        Geometry {
            start,
            cluster: spc * SECTOR,
            data: (reserved + fats * fat32) * SECTOR,
            root: u32::from_le_bytes([b[44], b[45], b[46], b[47]]),
        }
    }

    fn offset(&self, cluster: u32) -> u64 {
        self.start + self.data + u64::from(cluster.saturating_sub(2)) * self.cluster
    }
}

/// The 11-byte directory-entry form of a short name as fatfs prints it
/// (`BOOT`, `BOOTX64.EFI`).
fn sfn_bytes(short: &str) -> [u8; 11] {
    let mut n = [b' '; 11];
    let (base, ext) = short.split_once('.').unwrap_or((short, ""));
    for (i, c) in base.bytes().take(8).enumerate() {
        n[i] = c;
    }
    for (i, c) in ext.bytes().take(3).enumerate() {
        n[8 + i] = c;
    }
    n
}

/// What an ESP was found in.
#[derive(Debug)]
pub enum Container {
    /// A whole disk with the layout (the ESP located through the GPT).
    Disk(Box<Layout>),
    /// The path holds only the FAT filesystem (a partition device or file).
    Volume,
}

impl Esp {
    /// Open the ESP of `path`: a whole disk (found through its GPT) or the
    /// filesystem alone. Block devices must not be in use.
    pub fn open(path: &Path) -> Result<(Esp, Container), DiskError> {
        let t = Target::open(path, None)?;
        // A disk if either GPT header's signature or a protective MBR is
        // there (the GPT reader then falls back to the backup header).
        let mut lba0 = [0u8; 512];
        let mut lba1 = [0u8; 512];
        let mut last = [0u8; 512];
        let _ = t.file.read_at(&mut lba0, 0);
        let _ = t.file.read_at(&mut lba1, 512);
        let _ = t.file.read_at(&mut last, t.size.saturating_sub(512));
        let protective = lba0[450] == 0xEE && lba0[510] == 0x55 && lba0[511] == 0xAA;
        let is_disk = &lba1[0..8] == b"EFI PART" || &last[0..8] == b"EFI PART" || protective;
        let (start, len, container) = if is_disk {
            let l = Layout::read(path, &t.file, t.size)?;
            let (s, n) = (l.esp().offset(), l.esp().len());
            (s, n, Container::Disk(Box::new(l)))
        } else {
            (0, t.size, Container::Volume)
        };
        let esp = Esp::open_at(path, &t.file, start, len)?;
        Ok((esp, container))
    }

    /// Open the FAT filesystem at `start`..`start + len` of `file`.
    pub fn open_at(path: &Path, file: &File, start: u64, len: u64) -> Result<Esp, DiskError> {
        let mut b = [0u8; 512];
        file.read_exact_at(&mut b, start)
            .map_err(|e| DiskError::corrupt(path, format!("reading the ESP boot sector: {e}")))?;
        check_boot_sector(&b, len)
            .map_err(|e| DiskError::corrupt(path, format!("the ESP is not a usable FAT32: {e}")))?;
        let f = file.try_clone().map_err(|e| DiskError::io(path, e))?;
        let fs = FileSystem::new(
            PartIo::new(f, start, len),
            FsOptions::new().time_provider(&CLOCK),
        )
        .map_err(|e| DiskError::corrupt(path, format!("the ESP's FAT32: {e}")))?;
        Ok(Esp {
            path: path.to_path_buf(),
            fs,
            file: file.try_clone().map_err(|e| DiskError::io(path, e))?,
            geo: Geometry::of(&b, start),
        })
    }

    fn err(&self, what: &str, e: io::Error) -> DiskError {
        DiskError::corrupt(&self.path, format!("ESP {what}: {e}"))
    }

    /// Create `dir` and its parents (`/`-separated, no leading slash).
    ///
    /// fatfs 0.3 writes long-name entries in front of a new directory's `.`
    /// and `..` entries and points `..` of a top-level directory at the root
    /// cluster, which fsck.vfat rejects ("Expected a valid '.' entry in this
    /// slot"): each new directory's first slots are rewritten to the two
    /// plain entries the FAT specification requires (`..` = 0 under root).
    pub fn mkdirs(&self, dir: &str) -> Result<(), DiskError> {
        let mut d = self.fs.root_dir();
        let mut cluster = self.geo.root;
        for part in dir.split('/').filter(|p| !p.is_empty()) {
            let (next, created) = match d.open_dir(part) {
                Ok(x) => (x, false),
                Err(_) => (d.create_dir(part).map_err(|e| self.err(dir, e))?, true),
            };
            let child = self.subdir_cluster(&d, cluster, part)?;
            if created {
                let parent = if cluster == self.geo.root { 0 } else { cluster };
                self.fix_dot_entries(child, parent)?;
            }
            d = next;
            cluster = child;
        }
        Ok(())
    }

    /// The first cluster of directory `name` in `dir` (first cluster `at`).
    fn subdir_cluster(
        &self,
        dir: &fatfs::Dir<'_, PartIo>,
        at: u32,
        name: &str,
    ) -> Result<u32, DiskError> {
        let mut short = None;
        for e in dir.iter() {
            let e = e.map_err(|e| self.err(name, e))?;
            if e.is_dir() && e.file_name().eq_ignore_ascii_case(name) {
                short = Some(sfn_bytes(&e.short_file_name()));
            }
        }
        let short = short
            .ok_or_else(|| DiskError::corrupt(&self.path, format!("ESP: no directory {name}")))?;
        let mut buf = vec![0u8; self.geo.cluster as usize];
        self.file
            .read_exact_at(&mut buf, self.geo.offset(at))
            .map_err(|e| DiskError::io(&self.path, e))?;
        buf.chunks(32)
            .find(|e| e[11] != 0x0F && e[11] & 0x10 != 0 && e[0..11] == short)
            .map(|e| {
                u32::from(u16::from_le_bytes([e[20], e[21]])) << 16
                    | u32::from(u16::from_le_bytes([e[26], e[27]]))
            })
            .ok_or_else(|| {
                DiskError::corrupt(
                    &self.path,
                    format!("ESP: directory {name} not in its parent's first cluster"),
                )
            })
    }

    /// Make a new directory start with plain `.` and `..` entries.
    fn fix_dot_entries(&self, cluster: u32, parent: u32) -> Result<(), DiskError> {
        let at = self.geo.offset(cluster);
        let mut e = [0u8; 128];
        self.file
            .read_exact_at(&mut e, at)
            .map_err(|x| DiskError::io(&self.path, x))?;
        let dot = *b".          ";
        let dotdot = *b"..         ";
        let mut fixed = [0u8; 128];
        if e[0..11] == dot && e[32..43] == dotdot {
            fixed[..64].copy_from_slice(&e[..64]);
        } else if e[11] == 0x0F && e[32..43] == dot && e[64 + 11] == 0x0F && e[96..107] == dotdot {
            fixed[..32].copy_from_slice(&e[32..64]);
            fixed[32..64].copy_from_slice(&e[96..128]);
        } else {
            return Err(DiskError::corrupt(
                &self.path,
                "ESP: unexpected entries in a new directory",
            ));
        }
        let p = parent.to_le_bytes();
        fixed[32 + 20..32 + 22].copy_from_slice(&p[2..4]);
        fixed[32 + 26..32 + 28].copy_from_slice(&p[0..2]);
        self.file
            .write_all_at(&fixed, at)
            .map_err(|x| DiskError::io(&self.path, x))
    }

    /// Free bytes.
    pub fn free_bytes(&self) -> Result<u64, DiskError> {
        let s = self.fs.stats().map_err(|e| self.err("statistics", e))?;
        Ok(u64::from(s.free_clusters()) * u64::from(s.cluster_size()))
    }

    /// Write `data` as `path` (replacing it), calling `progress` with bytes
    /// written. Refuses (before writing) if the ESP has no room.
    pub fn write_file(
        &self,
        path: &str,
        data: &[u8],
        progress: &dyn Fn(u64),
    ) -> Result<(), DiskError> {
        let cluster = u64::from(self.fs.cluster_size());
        let needed = (data.len() as u64).div_ceil(cluster) * cluster;
        let existing = self
            .file_len(path)?
            .map_or(0, |l| l.div_ceil(cluster) * cluster);
        let free = self.free_bytes()? + existing;
        if needed + cluster > free {
            return Err(DiskError::EspFull {
                path: self.path.clone(),
                free,
                needed,
                what: path.to_string(),
            });
        }
        let mut f = self
            .fs
            .root_dir()
            .create_file(path)
            .map_err(|e| self.err(path, e))?;
        f.truncate().map_err(|e| self.err(path, e))?;
        for chunk in data.chunks(1 << 20) {
            f.write_all(chunk).map_err(|e| self.err(path, e))?;
            progress(chunk.len() as u64);
        }
        f.flush().map_err(|e| self.err(path, e))
    }

    /// Overwrite the start of an existing file in place (no allocation, no
    /// directory change when the size stays the same).
    pub fn overwrite_in_place(&self, path: &str, data: &[u8]) -> Result<(), DiskError> {
        let mut f = self
            .fs
            .root_dir()
            .open_file(path)
            .map_err(|e| self.err(path, e))?;
        f.write_all(data).map_err(|e| self.err(path, e))?;
        f.flush().map_err(|e| self.err(path, e))
    }

    /// The length of `path`, or `None` if it does not exist.
    pub fn file_len(&self, path: &str) -> Result<Option<u64>, DiskError> {
        let (dir, name) = split(path);
        let d = match self.fs.root_dir().open_dir(dir) {
            Ok(d) if !dir.is_empty() => d,
            _ if dir.is_empty() => self.fs.root_dir(),
            Err(_) => return Ok(None),
            Ok(d) => d,
        };
        for e in d.iter() {
            let e = e.map_err(|e| self.err(dir, e))?;
            if e.is_file() && e.file_name().eq_ignore_ascii_case(name) {
                return Ok(Some(e.len()));
            }
        }
        Ok(None)
    }

    /// Read a whole file of at most `max` bytes; `None` if it does not exist.
    pub fn read_file(&self, path: &str, max: u64) -> Result<Option<Vec<u8>>, DiskError> {
        match self.file_len(path)? {
            None => Ok(None),
            Some(l) if l > max => Err(DiskError::corrupt(
                &self.path,
                format!("ESP {path}: {l} bytes, larger than the {max} expected"),
            )),
            Some(l) => {
                let mut f = self
                    .fs
                    .root_dir()
                    .open_file(path)
                    .map_err(|e| self.err(path, e))?;
                let mut v = Vec::with_capacity(l as usize);
                f.read_to_end(&mut v).map_err(|e| self.err(path, e))?;
                Ok(Some(v))
            }
        }
    }

    /// File names (long names) in `dir`; empty if it does not exist.
    pub fn list(&self, dir: &str) -> Result<Vec<String>, DiskError> {
        let d = match self.fs.root_dir().open_dir(dir) {
            Ok(d) => d,
            Err(_) => return Ok(Vec::new()),
        };
        let mut out = Vec::new();
        for e in d.iter() {
            let e = e.map_err(|e| self.err(dir, e))?;
            if e.is_file() {
                out.push(e.file_name());
            }
        }
        Ok(out)
    }

    /// Rename a file within its directory.
    pub fn rename(&self, from: &str, to: &str) -> Result<(), DiskError> {
        let root = self.fs.root_dir();
        root.rename(from, &root, to).map_err(|e| self.err(from, e))
    }

    /// Remove a file.
    pub fn remove(&self, path: &str) -> Result<(), DiskError> {
        self.fs
            .root_dir()
            .remove(path)
            .map_err(|e| self.err(path, e))
    }

    /// Flush the filesystem (clears its dirty flag) and the device.
    pub fn close(self) -> Result<(), DiskError> {
        let Esp { path, fs, file, .. } = self;
        fs.unmount()
            .map_err(|e| DiskError::corrupt(&path, format!("ESP unmount: {e}")))?;
        file.sync_all().map_err(|e| DiskError::io(&path, e))
    }
}

impl std::fmt::Debug for Esp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Esp")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn split(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some((d, n)) => (d, n),
        None => ("", path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(len: u64) -> (tempfile::NamedTempFile, File) {
        let t = tempfile::NamedTempFile::new().unwrap();
        let f = t.reopen().unwrap();
        f.set_len(len).unwrap();
        (t, f)
    }

    #[test]
    fn format_write_read_rename() {
        let (t, f) = volume(40 << 20);
        format(t.path(), &f, 0, 40 << 20, 7).unwrap();
        let esp = Esp::open_at(t.path(), &f, 0, 40 << 20).unwrap();
        esp.mkdirs("EFI/Linux").unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        esp.write_file("EFI/Linux/a+1.efi", &data, &|_| {}).unwrap();
        assert_eq!(
            esp.read_file("EFI/Linux/a+1.efi", 1 << 20)
                .unwrap()
                .unwrap(),
            data
        );
        esp.rename("EFI/Linux/a+1.efi", "EFI/Linux/a.efi").unwrap();
        assert_eq!(esp.list("EFI/Linux").unwrap(), vec!["a.efi".to_string()]);
        assert_eq!(esp.read_file("EFI/Linux/missing", 10).unwrap(), None);
        let free = esp.free_bytes().unwrap();
        let big = vec![0u8; free as usize];
        assert!(matches!(
            esp.write_file("EFI/Linux/big.efi", &big, &|_| {}),
            Err(DiskError::EspFull { .. })
        ));
        esp.close().unwrap();
    }

    #[test]
    fn civil_dates() {
        let d = date_time(0);
        assert_eq!((d.date.year, d.date.month, d.date.day), (1980, 1, 1));
        // 2026-12-07 05:50:00 UTC
        let d = date_time(1_796_622_600);
        assert_eq!((d.date.year, d.date.month, d.date.day), (2026, 12, 7));
        assert_eq!((d.time.hour, d.time.min, d.time.sec), (5, 50, 0));
        // 2024-02-29 12:00:01
        let d = date_time(1_709_208_001);
        assert_eq!((d.date.year, d.date.month, d.date.day), (2024, 2, 29));
        let d = date_time(u64::MAX);
        assert_eq!(d.date.year, 2107);
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let (t, f) = volume(40 << 20);
        let e = Esp::open_at(t.path(), &f, 0, 40 << 20).err().unwrap();
        assert!(e.to_string().contains("not a usable FAT32"), "{e}");
        format(t.path(), &f, 0, 40 << 20, 7).unwrap();
        // Flip each byte of the boot sector in turn: never a panic.
        for i in 0..512u64 {
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, i).unwrap();
            f.write_all_at(&[b[0] ^ 0xFF], i).unwrap();
            if let Ok(esp) = Esp::open_at(t.path(), &f, 0, 40 << 20) {
                let _ = esp.list("EFI/Linux");
            }
            f.write_all_at(&b, i).unwrap();
        }
    }
}
