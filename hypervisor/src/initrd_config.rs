//! The guest-init configuration of a signed bundle, handed to the guest as a newc cpio
//! archive appended to its initrd (Linux unpacks every archive of a concatenated
//! initramfs into the same root, `Documentation/driver-api/early-userspace/
//! buffer-format.rst`).
//!
//! The archive is a pure function of the configuration bytes (`docs/image-format.md`,
//! "What the VMM gives the guest from a signed bundle"): the directory `bulwark`
//! (mode 040500), the file `bulwark/config.json` (mode 0100400), then the `TRAILER!!!`
//! entry; owner root, mtime 0, fixed inode numbers, device numbers 0. It is byte for
//! byte what GNU cpio writes for that tree with `cpio -o -H newc --reproducible
//! --owner=0:0`, without cpio's zero padding to a 512-byte block.

/// The directory the configuration is unpacked into, relative to the guest's root.
pub const CONFIG_DIR: &str = "bulwark";
/// The configuration file's path in the archive (`/bulwark/config.json` in the guest).
pub const CONFIG_PATH: &str = "bulwark/config.json";

/// The newc ("new ASCII", no checksum) magic.
const NEWC_MAGIC: &[u8; 6] = b"070701";
/// The name of the entry that ends a cpio archive.
const TRAILER: &str = "TRAILER!!!";

/// Mode of the `bulwark` directory: a directory, readable and searchable by root only.
pub const DIR_MODE: u32 = 0o040500;
/// Mode of `bulwark/config.json`: a regular file, readable by root only.
pub const FILE_MODE: u32 = 0o100400;
/// Inode number of the `bulwark` directory (the trailer has 0 too; Linux looks inode
/// numbers up only for regular files with more than one link).
pub const DIR_INO: u32 = 0;
/// Inode number of `bulwark/config.json`.
pub const FILE_INO: u32 = 1;

/// The configuration does not fit a newc entry (its size field is 8 hex digits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the config component is {0} bytes, more than a cpio newc entry holds (4 GiB - 1)")]
pub struct ConfigTooLarge(pub usize);

/// One entry's header fields (newc order; the name size is derived from the name).
struct Entry<'a> {
    ino: u32,
    mode: u32,
    nlink: u32,
    name: &'a str,
    data: &'a [u8],
}

/// Appends zero bytes until `out.len()` is a multiple of 4.
fn pad4(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(4), 0);
}

fn push_entry(out: &mut Vec<u8>, e: &Entry<'_>) -> Result<(), ConfigTooLarge> {
    let filesize = u32::try_from(e.data.len()).map_err(|_| ConfigTooLarge(e.data.len()))?;
    // Names are the constants above: short, ASCII, no NUL.
    let namesize = (e.name.len() + 1) as u32;
    out.extend_from_slice(NEWC_MAGIC);
    for field in [
        e.ino, e.mode, 0, // uid
        0, // gid
        e.nlink, 0, // mtime
        filesize, 0, // devmajor
        0, // devminor
        0, // rdevmajor
        0, // rdevminor
        namesize, 0, // check
    ] {
        // Upper-case hex, as GNU cpio and the kernel's gen_init_cpio write it.
        out.extend_from_slice(format!("{field:08X}").as_bytes());
    }
    out.extend_from_slice(e.name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(e.data);
    pad4(out);
    Ok(())
}

/// The newc archive holding `config` as `bulwark/config.json` (see the module docs).
/// Its length is a multiple of 4.
pub fn config_archive(config: &[u8]) -> Result<Vec<u8>, ConfigTooLarge> {
    let mut out = Vec::with_capacity(3 * 128 + config.len() + 32);
    push_entry(
        &mut out,
        &Entry {
            ino: DIR_INO,
            mode: DIR_MODE,
            nlink: 2,
            name: CONFIG_DIR,
            data: &[],
        },
    )?;
    push_entry(
        &mut out,
        &Entry {
            ino: FILE_INO,
            mode: FILE_MODE,
            nlink: 1,
            name: CONFIG_PATH,
            data: config,
        },
    )?;
    push_entry(
        &mut out,
        &Entry {
            ino: 0,
            mode: 0,
            nlink: 1,
            name: TRAILER,
            data: &[],
        },
    )?;
    Ok(out)
}

/// The initrd the guest gets: `initrd` (if any) padded with zero bytes to a multiple of
/// 4, then `archive` (Linux skips zero bytes between concatenated archives, and wants
/// each archive to start 4-byte aligned).
pub fn append_archive(initrd: Option<Vec<u8>>, archive: &[u8]) -> Vec<u8> {
    let mut out = initrd.unwrap_or_default();
    out.reserve_exact(3 + archive.len());
    pad4(&mut out);
    out.extend_from_slice(archive);
    out
}

/// What [`append_archive`] adds after an initrd of `initrd_len` bytes: the zero padding
/// and `archive` (for an initrd that stays in the bundle until it is loaded).
pub fn archive_after(initrd_len: u64, archive: &[u8]) -> Vec<u8> {
    let pad = (4 - (initrd_len % 4) as usize) % 4;
    let mut out = vec![0u8; pad];
    out.extend_from_slice(archive);
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One parsed newc entry, every header field kept.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) struct Parsed {
        pub ino: u32,
        pub mode: u32,
        pub uid: u32,
        pub gid: u32,
        pub nlink: u32,
        pub mtime: u32,
        pub devmajor: u32,
        pub devminor: u32,
        pub rdevmajor: u32,
        pub rdevminor: u32,
        pub check: u32,
        pub name: String,
        pub data: Vec<u8>,
    }

    /// A strict test-only newc reader: magic, 8-digit upper-case hex fields, NUL-ended
    /// names, zero padding to 4 after the name and after the data, ends exactly after
    /// the trailer's padding. Offsets are relative to `bytes`, which must start aligned.
    pub(crate) fn parse_newc(bytes: &[u8]) -> Vec<Parsed> {
        let mut at = 0usize;
        let mut out = Vec::new();
        let skip_padding = |at: &mut usize| {
            while !(*at).is_multiple_of(4) {
                assert_eq!(bytes[*at], 0, "padding byte at {at} is not zero");
                *at += 1;
            }
        };
        loop {
            assert_eq!(at % 4, 0, "entry at {at} is not 4-byte aligned");
            assert_eq!(&bytes[at..at + 6], NEWC_MAGIC, "magic at {at}");
            let mut fields = [0u32; 13];
            for (i, f) in fields.iter_mut().enumerate() {
                let s = std::str::from_utf8(&bytes[at + 6 + 8 * i..at + 14 + 8 * i]).unwrap();
                assert!(
                    s.bytes()
                        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)),
                    "field {i} {s:?}"
                );
                *f = u32::from_str_radix(s, 16).unwrap();
            }
            at += 110;
            let namesize = fields[11] as usize;
            let name = &bytes[at..at + namesize];
            assert_eq!(name.last(), Some(&0), "name not NUL-terminated");
            assert!(!name[..namesize - 1].contains(&0));
            let name = String::from_utf8(name[..namesize - 1].to_vec()).unwrap();
            at += namesize;
            skip_padding(&mut at);
            let filesize = fields[6] as usize;
            let data = bytes[at..at + filesize].to_vec();
            at += filesize;
            skip_padding(&mut at);
            let done = name == TRAILER;
            out.push(Parsed {
                ino: fields[0],
                mode: fields[1],
                uid: fields[2],
                gid: fields[3],
                nlink: fields[4],
                mtime: fields[5],
                devmajor: fields[7],
                devminor: fields[8],
                rdevmajor: fields[9],
                rdevminor: fields[10],
                check: fields[12],
                name,
                data,
            });
            if done {
                assert_eq!(at, bytes.len(), "bytes after the trailer");
                return out;
            }
        }
    }

    fn entry(ino: u32, mode: u32, nlink: u32, name: &str, data: &[u8]) -> Parsed {
        Parsed {
            ino,
            mode,
            uid: 0,
            gid: 0,
            nlink,
            mtime: 0,
            devmajor: 0,
            devminor: 0,
            rdevmajor: 0,
            rdevminor: 0,
            check: 0,
            name: name.into(),
            data: data.to_vec(),
        }
    }

    /// Config sizes covering every remainder mod 4 (the data padding).
    fn configs() -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = (1..=8)
            .map(|n| br#"{"workload":"abcdefgh"}"#[..n].to_vec())
            .collect();
        v.push(br#"{"workload":{"argv":["/bin/true"]},"gpu":true}"#.to_vec());
        v.push((0..=255u8).cycle().take(70_001).collect());
        v
    }

    #[test]
    fn the_archive_parses_back_field_by_field() {
        for config in configs() {
            let a = config_archive(&config).unwrap();
            assert_eq!(a.len() % 4, 0);
            assert_eq!(
                parse_newc(&a),
                vec![
                    entry(0, 0o040500, 2, "bulwark", b""),
                    entry(1, 0o100400, 1, "bulwark/config.json", &config),
                    entry(0, 0, 1, "TRAILER!!!", b""),
                ]
            );
            // Fixed layout: 110-byte headers, names padded to 4 with the header.
            assert_eq!(&a[110..118], b"bulwark\0");
            assert_eq!(&a[118..120], b"\0\0");
            assert_eq!(&a[120..126], b"070701");
            assert_eq!(&a[230..252], b"bulwark/config.json\0\0\0");
            assert_eq!(&a[252..252 + config.len()], &config[..]);
            let trailer = 252 + config.len().next_multiple_of(4);
            assert_eq!(&a[trailer..trailer + 6], b"070701");
            assert_eq!(a.len(), trailer + 124);
            // Deterministic.
            assert_eq!(config_archive(&config).unwrap(), a);
        }
    }

    #[test]
    fn the_exact_bytes_of_a_small_archive() {
        let a = config_archive(b"{}").unwrap();
        let mut want = Vec::new();
        want.extend_from_slice(
            b"070701\
              00000000000041400000000000000000000000020000000000000000\
              000000000000000000000000000000000000000800000000bulwark\0\0\0",
        );
        want.extend_from_slice(
            b"070701\
              00000001000081000000000000000000000000010000000000000002\
              000000000000000000000000000000000000001400000000bulwark/config.json\0\0\0{}\0\0",
        );
        want.extend_from_slice(
            b"070701\
              00000000000000000000000000000000000000010000000000000000\
              000000000000000000000000000000000000000B00000000TRAILER!!!\0\0\0\0",
        );
        assert_eq!(String::from_utf8_lossy(&a), String::from_utf8_lossy(&want));
        assert_eq!(a, want);
    }

    #[test]
    fn appending_pads_the_initrd_to_four_bytes() {
        let archive = config_archive(b"cfg").unwrap();
        assert_eq!(append_archive(None, &archive), archive);
        for len in 0..9usize {
            let initrd: Vec<u8> = (1..=len as u8).collect();
            let out = append_archive(Some(initrd.clone()), &archive);
            let pad = len.next_multiple_of(4) - len;
            assert_eq!(out.len(), len + pad + archive.len());
            assert_eq!(&out[..len], &initrd[..]);
            assert!(out[len..len + pad].iter().all(|&b| b == 0));
            assert_eq!(&out[len + pad..], &archive[..]);
        }
    }

    /// Runs `cpio` (GNU cpio, Debian package `cpio`, scripts/debian-packages.txt).
    fn cpio(args: &[&str], dir: &std::path::Path, stdin: &[u8]) -> (Vec<u8>, String) {
        use std::io::Write;
        let mut child = std::process::Command::new("cpio")
            .args(args)
            .current_dir(dir)
            .env("TZ", "UTC")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("GNU cpio must be installed (scripts/setup installs it)");
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let o = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "cpio {args:?}: {stderr}");
        // GNU cpio reports only the block count; anything else is a complaint.
        assert!(
            stderr.trim().ends_with(" block") || stderr.trim().ends_with(" blocks"),
            "cpio {args:?}: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "cpio {args:?}: {stderr}");
        (o.stdout, stderr)
    }

    /// GNU cpio, an independent implementation, lists and extracts the archive as we
    /// mean it and, given the extracted tree, writes the same bytes.
    #[test]
    fn gnu_cpio_reads_the_archive_and_writes_the_same_bytes() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        for config in configs() {
            let archive = config_archive(&config).unwrap();
            let dir = tempfile::tempdir().unwrap();

            // Listing, verbose: modes, links, owners, sizes, mtime 0, names.
            let (list, _) = cpio(
                &["-i", "--list", "--verbose", "--numeric-uid-gid"],
                dir.path(),
                &archive,
            );
            let list = String::from_utf8(list).unwrap();
            let lines: Vec<Vec<&str>> = list
                .lines()
                .map(|l| l.split_whitespace().collect())
                .collect();
            assert_eq!(lines.len(), 2, "{list}");
            assert_eq!(lines[0][..4], ["dr-x------", "2", "0", "0"], "{list}");
            assert_eq!(lines[0].last(), Some(&"bulwark"), "{list}");
            assert_eq!(lines[1][..4], ["-r--------", "1", "0", "0"], "{list}");
            assert_eq!(lines[1][4], config.len().to_string(), "{list}");
            assert_eq!(lines[1].last(), Some(&"bulwark/config.json"), "{list}");
            assert!(list.contains("1970"), "mtime 0: {list}");

            // Extraction: contents, modes, mtime.
            let out = dir.path().join("out");
            std::fs::create_dir(&out).unwrap();
            cpio(
                &[
                    "-i",
                    "--make-directories",
                    "--preserve-modification-time",
                    "--no-absolute-filenames",
                ],
                &out,
                &archive,
            );
            let d = std::fs::metadata(out.join("bulwark")).unwrap();
            let f = std::fs::metadata(out.join("bulwark/config.json")).unwrap();
            assert!(d.is_dir() && f.is_file());
            assert_eq!(d.mode() & 0o7777, 0o500);
            assert_eq!(f.mode() & 0o7777, 0o400);
            assert_eq!((d.mtime(), f.mtime()), (0, 0));
            std::fs::set_permissions(out.join("bulwark"), PermissionsExt::from_mode(0o700))
                .unwrap();
            assert_eq!(
                std::fs::read(out.join("bulwark/config.json")).unwrap(),
                config
            );

            // Copy-out of the extracted tree: the same bytes, then cpio's zero padding
            // to its 512-byte block. (Directory link counts are the filesystem's: only
            // compared where a directory holding no directory has 2, as on ext4/tmpfs.)
            std::fs::set_permissions(out.join("bulwark"), PermissionsExt::from_mode(0o500))
                .unwrap();
            if d.nlink() == 2 {
                let (written, _) = cpio(
                    &["-o", "--format=newc", "--reproducible", "--owner=0:0"],
                    &out,
                    b"bulwark\nbulwark/config.json\n",
                );
                assert!(
                    written.len() >= archive.len(),
                    "cpio wrote {} bytes",
                    written.len()
                );
                assert_eq!(written.len() % 512, 0);
                assert_eq!(
                    String::from_utf8_lossy(&written[..archive.len()]),
                    String::from_utf8_lossy(&archive)
                );
                assert!(written[archive.len()..].iter().all(|&b| b == 0));
            }
            std::fs::set_permissions(out.join("bulwark"), PermissionsExt::from_mode(0o700))
                .unwrap();
        }
    }
}
