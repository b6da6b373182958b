//! The node's boot artifacts for the lab: a Unified Kernel Image (systemd-stub with
//! the kernel, the node initramfs, the command line and an os-release) and a GPT disk
//! image holding it on an EFI system partition behind systemd-boot, plus an ext4
//! state partition.
//!
//! TO BE REPLACED: this is the lab's stand-in, built with host tools (`objcopy` for
//! the UKI as measured in `../shared/lab/UEFI-TPM.md`; `sfdisk`, `mkfs.vfat`,
//! `mtools` and `mkfs.ext4` for the disk). When `bulwark_node_image` lands its
//! `build_node_image` (UKI, PCR prediction) and install functions (GPT, ESP, A/B
//! slots), [`node_disk`] becomes a call to those; its signature is the seam.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::{LabError, Result};
use super::host_command::{find_program, run};

/// Debian's systemd-stub (package `systemd-boot-efi`).
pub const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
/// Debian's systemd-boot (package `systemd-boot-efi`).
pub const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
/// The GPT partition name of the state partition (bulwark-node-init's default).
pub const STATE_LABEL: &str = "bulwark-state";
/// Tries systemd-boot gives a fresh slot (`+3` in its file name).
pub const BOOT_TRIES: u32 = 3;

const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const LINUX_FS_TYPE: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
const DISK_GUID: &str = "B0B0A0A0-0000-4000-8000-000000000001";
const ESP_GUID: &str = "B0B0A0A0-0000-4000-8000-000000000002";
const STATE_GUID: &str = "B0B0A0A0-0000-4000-8000-000000000003";

/// What goes into the node image.
#[derive(Debug, Clone)]
pub struct NodeDiskInputs {
    /// The kernel (bzImage with an EFI stub).
    pub kernel: PathBuf,
    /// The node initramfs (compressed cpio).
    pub initramfs: PathBuf,
    /// The kernel command line (measured into PCR 11 with the UKI).
    pub cmdline: String,
    /// The node image's version (in the os-release, the slot's file name).
    pub version: String,
    /// Size of the state partition.
    pub state_mib: u64,
}

/// Paths of the intermediate artifacts in `run_dir` (for measurements and checks).
pub fn uki_path(run_dir: &Path) -> PathBuf {
    run_dir.join("node-uki.efi")
}

/// The section files `node_disk` put into the UKI, in `run_dir` (what
/// `systemd-measure calculate` takes to predict PCR 11).
pub fn section_paths(run_dir: &Path) -> [(&'static str, PathBuf); 2] {
    [
        ("cmdline", run_dir.join("uki-cmdline.txt")),
        ("osrel", run_dir.join("uki-os-release")),
    ]
}

/// The UKI's file name on the ESP: slot A with boot counting (`bulwark-A-V+3.efi`).
pub fn slot_file_name(version: &str) -> String {
    format!("bulwark-a-{version}+{BOOT_TRIES}.efi")
}

/// Builds the UKI (`run_dir/node-uki.efi`) and the disk image (`run_dir/node-disk.img`,
/// returned): GPT with an ESP (`/EFI/BOOT/BOOTX64.EFI` = systemd-boot,
/// `/EFI/Linux/<slot_file_name>` = the UKI, `/loader/loader.conf`) and an empty ext4
/// state partition named [`STATE_LABEL`].
pub fn node_disk(run_dir: &Path, inputs: &NodeDiskInputs) -> Result<PathBuf> {
    for tool in [
        "objcopy",
        "sfdisk",
        "mkfs.vfat",
        "mmd",
        "mcopy",
        "mkfs.ext4",
    ] {
        if find_program(tool).is_none() {
            return Err(LabError::Prerequisite {
                what: format!("`{tool}` not found (the lab builds the node disk image with it)"),
                hint:
                    "install binutils, fdisk, dosfstools, mtools and e2fsprogs: run scripts/setup"
                        .into(),
            });
        }
    }
    for file in [STUB, SYSTEMD_BOOT] {
        if !Path::new(file).is_file() {
            return Err(LabError::Prerequisite {
                what: format!("{file} not found"),
                hint: "install Debian's systemd-boot-efi: run scripts/setup".into(),
            });
        }
    }
    fs::create_dir_all(run_dir).map_err(LabError::io(format!("creating {}", run_dir.display())))?;
    let uki = uki_path(run_dir);
    build_uki(run_dir, inputs, &uki)?;
    let disk = run_dir.join("node-disk.img");
    build_disk(run_dir, inputs, &uki, &disk)?;
    Ok(disk)
}

fn write(path: &Path, bytes: impl AsRef<[u8]>) -> Result<()> {
    fs::write(path, bytes).map_err(LabError::io(format!("writing {}", path.display())))
}

fn build_uki(run_dir: &Path, inputs: &NodeDiskInputs, uki: &Path) -> Result<()> {
    let [(_, cmdline), (_, osrel)] = section_paths(run_dir);
    // No newline: the stub passes the section's bytes as they are.
    write(&cmdline, &inputs.cmdline)?;
    write(
        &osrel,
        format!(
            "ID=bulwark\nNAME=\"Bulwark node\"\nVERSION_ID={v}\nPRETTY_NAME=\"Bulwark node {v}\"\nIMAGE_VERSION={v}\n",
            v = inputs.version
        ),
    )?;
    let stub = fs::read(STUB).map_err(LabError::io(format!("reading {STUB}")))?;
    let (image_base, end) = pe_layout(&stub).map_err(|reason| LabError::UnexpectedOutput {
        command: format!("reading {STUB}"),
        reason,
    })?;
    let size = |p: &Path| {
        fs::metadata(p)
            .map(|m| m.len())
            .map_err(LabError::io(format!("reading {}", p.display())))
    };
    // Each section at the end of the previous one rounded up to 4 KiB (UEFI-TPM.md:
    // the "computed" layout, which systemd-stub 252 boots).
    let align = |v: u64| v.div_ceil(4096) * 4096;
    let mut vma = align(end);
    let mut cmd = Command::new("objcopy");
    for (name, file) in [
        (".osrel", osrel.as_path()),
        (".cmdline", cmdline.as_path()),
        (".linux", inputs.kernel.as_path()),
        (".initrd", inputs.initramfs.as_path()),
    ] {
        cmd.arg("--add-section")
            .arg(format!("{name}={}", file.display()))
            .arg("--change-section-vma")
            .arg(format!("{name}={:#x}", image_base + vma));
        vma = align(vma + size(file)?);
    }
    cmd.arg(STUB).arg(uki);
    run(&mut cmd)?;
    // objcopy stamps the COFF header with the current time (SOURCE_DATE_EPOCH is not
    // honoured for PE), and the Authenticode hash the firmware extends into PCR 4
    // covers it: zero it, so the same inputs give the same UKI and the same PCR 4.
    let mut image = fs::read(uki).map_err(LabError::io(format!("reading {}", uki.display())))?;
    clear_pe_timestamp(&mut image).map_err(|reason| LabError::UnexpectedOutput {
        command: format!("reading {}", uki.display()),
        reason,
    })?;
    write(uki, image)
}

/// Sets the COFF header's TimeDateStamp of a PE image to 0, and its CheckSum (which
/// changes with it; firmware does not check it, Authenticode skips it) to 0.
pub fn clear_pe_timestamp(pe: &mut [u8]) -> std::result::Result<(), String> {
    let pe_off = pe
        .get(0x3c..0x40)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or("truncated PE")?;
    if pe.get(pe_off..pe_off + 4) != Some(b"PE\0\0") {
        return Err("not a PE image (no PE signature)".into());
    }
    // Signature (4), Machine (2), NumberOfSections (2), then TimeDateStamp (4).
    let stamp = pe
        .get_mut(pe_off + 8..pe_off + 12)
        .ok_or("truncated COFF header")?;
    stamp.fill(0);
    // The optional header follows the 20-byte COFF header; CheckSum is at 64 in it.
    let checksum = pe_off + 24 + 64;
    pe.get_mut(checksum..checksum + 4)
        .ok_or("truncated optional header")?
        .fill(0);
    Ok(())
}

/// The PE image's ImageBase and the end (RVA) of its last section.
pub fn pe_layout(pe: &[u8]) -> std::result::Result<(u64, u64), String> {
    let u16_at = |o: usize| {
        pe.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as u64)
            .ok_or_else(|| format!("truncated PE at {o:#x}"))
    };
    let u32_at = |o: usize| {
        pe.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64)
            .ok_or_else(|| format!("truncated PE at {o:#x}"))
    };
    if pe.get(..2) != Some(b"MZ") {
        return Err("not a PE image (no MZ)".into());
    }
    let pe_off = u32_at(0x3c)? as usize;
    if pe.get(pe_off..pe_off + 4) != Some(b"PE\0\0") {
        return Err("not a PE image (no PE signature)".into());
    }
    let coff = pe_off + 4;
    let sections = u16_at(coff + 2)? as usize;
    let opt_size = u16_at(coff + 16)? as usize;
    let opt = coff + 20;
    let image_base = match u16_at(opt)? {
        0x20b => pe
            .get(opt + 24..opt + 32)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
            .ok_or("truncated PE32+ header")?,
        0x10b => u32_at(opt + 28)?,
        magic => return Err(format!("unknown optional header magic {magic:#x}")),
    };
    let table = opt + opt_size;
    let mut end = 0;
    for i in 0..sections {
        let s = table + i * 40;
        let (virtual_size, rva) = (u32_at(s + 8)?, u32_at(s + 12)?);
        end = end.max(rva + virtual_size);
    }
    if end == 0 {
        return Err("a PE image without sections".into());
    }
    Ok((image_base, end))
}

fn build_disk(run_dir: &Path, inputs: &NodeDiskInputs, uki: &Path, disk: &Path) -> Result<()> {
    let uki_len = fs::metadata(uki)
        .map_err(LabError::io(format!("reading {}", uki.display())))?
        .len();
    // Room for two slots' UKIs (A/B) and systemd-boot; FAT32 wants >= 33 MiB.
    let esp_mib = (2 * uki_len.div_ceil(MIB) + 8).max(40);
    let esp = run_dir.join("esp.img");
    let state = run_dir.join("state.img");
    for p in [&esp, &state, &disk.to_path_buf()] {
        let _ = fs::remove_file(p);
    }
    let file_of = |p: &Path, mib: u64| -> Result<()> {
        let f = fs::File::create(p).map_err(LabError::io(format!("creating {}", p.display())))?;
        f.set_len(mib * MIB)
            .map_err(LabError::io(format!("sizing {}", p.display())))
    };
    file_of(&esp, esp_mib)?;
    let mut cmd = Command::new("mkfs.vfat");
    cmd.args(["-F", "32", "-n", "ESP"]).arg(&esp);
    run(&mut cmd)?;
    let mtools = |args: &[&str]| -> Result<()> {
        let mut cmd = Command::new(args[0]);
        cmd.env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&esp)
            .args(&args[1..]);
        run(&mut cmd).map(drop)
    };
    mtools(&["mmd", "::/EFI", "::/EFI/BOOT", "::/EFI/Linux", "::/loader"])?;
    let loader_conf = run_dir.join("loader.conf");
    // No menu; the newest bulwark entry (boot counting skips exhausted ones).
    write(&loader_conf, "timeout 0\ndefault bulwark-*\n")?;
    let slot = format!("::/EFI/Linux/{}", slot_file_name(&inputs.version));
    for (src, dst) in [
        (Path::new(SYSTEMD_BOOT), "::/EFI/BOOT/BOOTX64.EFI"),
        (uki, slot.as_str()),
        (loader_conf.as_path(), "::/loader/loader.conf"),
    ] {
        mtools(&["mcopy", &src.to_string_lossy(), dst])?;
    }

    file_of(&state, inputs.state_mib)?;
    let mut cmd = Command::new("mkfs.ext4");
    cmd.args(["-q", "-F", "-L", STATE_LABEL]).arg(&state);
    run(&mut cmd)?;

    let esp_start = MIB / SECTOR;
    let esp_sectors = esp_mib * MIB / SECTOR;
    let state_start = esp_start + esp_sectors;
    let state_sectors = inputs.state_mib * MIB / SECTOR;
    // 1 MiB at the end for the backup GPT.
    let disk_mib = 1 + esp_mib + inputs.state_mib + 1;
    file_of(disk, disk_mib)?;
    // Fixed GUIDs: the firmware measures the GPT header and entries into PCR 5, and
    // random ones (sfdisk's default) would change PCR 5 (and IMA's boot_aggregate in
    // PCR 10) on every build. A real install gives each disk its own.
    let layout = format!(
        "label: gpt\n\
         label-id: {DISK_GUID}\n\
         start={esp_start}, size={esp_sectors}, type={ESP_TYPE}, uuid={ESP_GUID}, name=\"esp\"\n\
         start={state_start}, size={state_sectors}, type={LINUX_FS_TYPE}, uuid={STATE_GUID}, name=\"{STATE_LABEL}\"\n"
    );
    let script = run_dir.join("sfdisk.txt");
    write(&script, &layout)?;
    let mut cmd = Command::new("sfdisk");
    cmd.args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(disk)
        .stdin(
            fs::File::open(&script)
                .map_err(LabError::io(format!("reading {}", script.display())))?,
        );
    run(&mut cmd)?;
    let mut out = fs::OpenOptions::new()
        .write(true)
        .open(disk)
        .map_err(LabError::io(format!("opening {}", disk.display())))?;
    for (part, start) in [(&esp, esp_start), (&state, state_start)] {
        let bytes = fs::read(part).map_err(LabError::io(format!("reading {}", part.display())))?;
        out.seek(SeekFrom::Start(start * SECTOR))
            .and_then(|_| out.write_all(&bytes))
            .map_err(LabError::io(format!("writing {}", disk.display())))?;
        fs::remove_file(part).map_err(LabError::io(format!("removing {}", part.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stubs_layout_is_read() {
        if !Path::new(STUB).is_file() {
            eprintln!("skipped: {STUB} not installed");
            return;
        }
        let (base, end) = pe_layout(&fs::read(STUB).unwrap()).unwrap();
        // UEFI-TPM.md: ImageBase 0, the last section (.sdmagic) ends at 0x19134.
        assert_eq!(base, 0);
        assert!(end > 0x1000 && end < 0x100000, "{end:#x}");
        assert!(pe_layout(b"MZ").unwrap_err().contains("truncated"));
        assert!(pe_layout(b"ELF").unwrap_err().contains("no MZ"));
    }

    #[test]
    fn a_disk_image_with_the_uki_on_the_esp_and_a_state_partition() {
        let tools = [
            "objcopy",
            "objdump",
            "sfdisk",
            "mkfs.vfat",
            "mdir",
            "mkfs.ext4",
        ];
        if tools.iter().any(|t| find_program(t).is_none()) || !Path::new(STUB).is_file() {
            eprintln!("skipped: the disk tools or systemd-boot-efi are not installed");
            return;
        }
        let dir = std::env::temp_dir().join(format!("lab-node-disk-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        // objcopy does not look into the sections: stand-ins do.
        fs::write(dir.join("vmlinuz"), vec![0xaa; 3 * 4096 + 5]).unwrap();
        fs::write(dir.join("initrd"), vec![0x55; 1000]).unwrap();
        let inputs = NodeDiskInputs {
            kernel: dir.join("vmlinuz"),
            initramfs: dir.join("initrd"),
            cmdline: "console=ttyS0 bulwark.version=9".into(),
            version: "9".into(),
            state_mib: 8,
        };
        node_disk(&dir, &inputs).unwrap();
        // The same inputs give the same UKI (no build time inside).
        let first = fs::read(uki_path(&dir)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let disk = node_disk(&dir, &inputs).unwrap();
        assert!(
            fs::read(uki_path(&dir)).unwrap() == first,
            "the UKI differs between builds"
        );
        let out = |cmd: &mut Command| String::from_utf8(run(cmd).unwrap().stdout).unwrap();

        let sections = out(Command::new("objdump").arg("-h").arg(uki_path(&dir)));
        let vma = |name: &str| {
            let line = sections
                .lines()
                .find(|l| l.split_whitespace().nth(1) == Some(name));
            let line = line.unwrap_or_else(|| panic!("no {name} in {sections}"));
            u64::from_str_radix(line.split_whitespace().nth(3).unwrap(), 16).unwrap()
        };
        let (osrel, cmdline, linux, initrd) = (
            vma(".osrel"),
            vma(".cmdline"),
            vma(".linux"),
            vma(".initrd"),
        );
        assert!(
            osrel % 4096 == 0 && osrel < cmdline && cmdline < linux,
            "{sections}"
        );
        // .initrd right after the 3 pages and 5 bytes of .linux, rounded up.
        assert_eq!(initrd, linux + 4 * 4096, "{sections}");
        assert_eq!(
            fs::read_to_string(dir.join("uki-cmdline.txt")).unwrap(),
            "console=ttyS0 bulwark.version=9"
        );

        let table = out(Command::new("sfdisk").arg("--dump").arg(&disk));
        assert!(table.contains("label: gpt"), "{table}");
        let partition = |ty: &str, name: &str| {
            table.lines().any(|l| {
                l.contains(&format!("type={ty}")) && l.contains(&format!("name=\"{name}\""))
            })
        };
        assert!(partition(ESP_TYPE, "esp"), "{table}");
        assert!(table.contains(&format!("label-id: {DISK_GUID}")), "{table}");
        assert!(partition(LINUX_FS_TYPE, "bulwark-state"), "{table}");
        // The ESP's files, read through mtools at the partition's offset.
        let esp = format!("{}@@{}", disk.display(), MIB);
        let listing = |path: &str| {
            out(Command::new("mdir")
                .env("MTOOLS_SKIP_CHECK", "1")
                .args(["-b", "-i", &esp, path]))
        };
        assert!(listing("::/EFI/BOOT").contains("BOOTX64.EFI"));
        assert!(listing("::/EFI/Linux").contains("bulwark-a-9+3.efi"));
        assert!(listing("::/loader").contains("loader.conf"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn slot_names_carry_the_boot_counter() {
        assert_eq!(slot_file_name("7"), "bulwark-a-7+3.efi");
    }
}
