//! Initramfs images: a tree of directories, files, symlinks and device nodes,
//! written as an uncompressed `newc` cpio archive (the format the kernel unpacks).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::error::{LabError, Result};

#[derive(Debug, Clone)]
enum Node {
    Dir,
    File { source: Source, mode: u32 },
    Symlink(String),
    CharDevice { major: u32, minor: u32 },
}

#[derive(Debug, Clone)]
enum Source {
    Bytes(Vec<u8>),
    Host(PathBuf),
}

/// An initramfs being assembled. Paths are absolute inside the image (`/bin/sh`);
/// parent directories are added automatically.
#[derive(Debug, Default, Clone)]
pub struct Initramfs {
    nodes: BTreeMap<String, Node>,
}

impl Initramfs {
    /// An empty image.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a file with the given contents and permission bits.
    pub fn file(&mut self, path: &str, contents: impl Into<Vec<u8>>, mode: u32) -> &mut Self {
        self.insert(
            path,
            Node::File {
                source: Source::Bytes(contents.into()),
                mode,
            },
        )
    }

    /// Adds a file whose contents are read from `host` when the image is written
    /// (symlinks on the host are followed).
    pub fn host_file(&mut self, path: &str, host: &Path, mode: u32) -> &mut Self {
        self.insert(
            path,
            Node::File {
                source: Source::Host(host.to_owned()),
                mode,
            },
        )
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.insert(path, Node::Symlink(target.to_owned()))
    }

    /// Adds a character device node.
    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) -> &mut Self {
        self.insert(path, Node::CharDevice { major, minor })
    }

    /// Adds an (empty) directory.
    pub fn dir(&mut self, path: &str) -> &mut Self {
        self.insert(path, Node::Dir)
    }

    /// Whether the image already has something at `path`.
    pub fn contains(&self, path: &str) -> bool {
        self.nodes.contains_key(normalize(path).as_str())
    }

    fn insert(&mut self, path: &str, node: Node) -> &mut Self {
        let path = normalize(path);
        let mut parent = String::new();
        for component in path.split('/') {
            if !parent.is_empty() {
                self.nodes.entry(parent.clone()).or_insert(Node::Dir);
                parent.push('/');
            }
            parent.push_str(component);
        }
        self.nodes.insert(path, node);
        self
    }

    /// Writes the image as a `newc` cpio archive to the file `out`.
    pub fn write_to(&self, out: &Path) -> Result<()> {
        let context = format!("writing initramfs {}", out.display());
        let file = fs::File::create(out).map_err(LabError::io(&context))?;
        let mut writer = io::BufWriter::new(file);
        self.write_archive(&mut writer)?;
        writer.flush().map_err(LabError::io(&context))
    }

    /// Writes the image as a `newc` cpio archive to `out`.
    pub fn write_archive(&self, out: &mut impl Write) -> Result<()> {
        let io_err = |e| LabError::io("writing initramfs")(e);
        // Directories sort before their contents (BTreeMap order), as the kernel needs.
        for (ino, (path, node)) in (1u32..).zip(&self.nodes) {
            match node {
                Node::Dir => write_entry(out, ino, path, 0o040_755, 0, &[]).map_err(io_err)?,
                Node::Symlink(target) => {
                    write_entry(out, ino, path, 0o120_777, 0, target.as_bytes()).map_err(io_err)?
                }
                Node::CharDevice { major, minor } => {
                    write_entry(out, ino, path, 0o020_600, rdev(*major, *minor), &[])
                        .map_err(io_err)?
                }
                Node::File { source, mode } => {
                    let host_data;
                    let data = match source {
                        Source::Bytes(b) => b.as_slice(),
                        Source::Host(p) => {
                            host_data = fs::read(p).map_err(LabError::io(format!(
                                "reading {} for initramfs path /{path}",
                                p.display()
                            )))?;
                            host_data.as_slice()
                        }
                    };
                    write_entry(out, ino, path, 0o100_000 | (mode & 0o7777), 0, data)
                        .map_err(io_err)?
                }
            }
        }
        write_entry(out, 0, "TRAILER!!!", 0, 0, &[]).map_err(io_err)
    }
}

fn normalize(path: &str) -> String {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

fn rdev(major: u32, minor: u32) -> u64 {
    (u64::from(major) << 32) | u64::from(minor)
}

/// One `newc` record: a 110-byte ASCII header, the NUL-terminated name and the
/// data, each padded to 4 bytes.
fn write_entry(
    out: &mut impl Write,
    ino: u32,
    name: &str,
    mode: u32,
    rdev: u64,
    data: &[u8],
) -> io::Result<()> {
    let size = u32::try_from(data.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("/{name} is larger than 4 GiB"),
        )
    })?;
    let (rmajor, rminor) = ((rdev >> 32) as u32, rdev as u32);
    let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
    let header = format!(
        "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}{dmaj:08x}{dmin:08x}{rmajor:08x}{rminor:08x}{namesize:08x}{check:08x}",
        uid = 0,
        gid = 0,
        mtime = 0,
        dmaj = 0,
        dmin = 0,
        namesize = name.len() + 1,
        check = 0,
    );
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    pad(out, header.len() + name.len() + 1)?;
    out.write_all(data)?;
    pad(out, data.len())
}

fn pad(out: &mut impl Write, len: usize) -> io::Result<()> {
    out.write_all(&[0; 3][..(4 - len % 4) % 4])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(image: &Initramfs) -> Vec<u8> {
        let mut out = Vec::new();
        image.write_archive(&mut out).unwrap();
        out
    }

    #[test]
    fn parents_are_created_and_entries_are_aligned() {
        let mut image = Initramfs::new();
        image.file("/bin/tool", b"abc".to_vec(), 0o755);
        let bytes = archive(&image);
        let text = String::from_utf8_lossy(&bytes);
        let bin = text.find("bin\0").unwrap();
        let tool = text.find("bin/tool\0").unwrap();
        assert!(bin < tool, "directory must precede its contents");
        assert!(text.ends_with("TRAILER!!!\0\0\0\0") || text.contains("TRAILER!!!\0"));
        assert_eq!(bytes.len() % 4, 0);
        // The file record: mode 0100755, size 3, then "abc" padded to 4 bytes.
        let record = &text[tool - 110..];
        assert!(record.starts_with("070701"));
        assert_eq!(&record[14..22], "000081ed");
        assert_eq!(&record[54..62], "00000003");
        assert!(record[110..].starts_with("bin/tool\0\0abc\0"));
    }

    #[test]
    fn device_nodes_carry_major_and_minor() {
        let mut image = Initramfs::new();
        image.char_device("/dev/console", 5, 1);
        let text = String::from_utf8_lossy(&archive(&image)).into_owned();
        let at = text.find("dev/console").unwrap() - 110;
        assert_eq!(&text[at + 14..at + 22], "00002180");
        assert_eq!(&text[at + 78..at + 86], "00000005");
        assert_eq!(&text[at + 86..at + 94], "00000001");
    }

    #[test]
    fn a_missing_host_file_names_both_paths() {
        let mut image = Initramfs::new();
        image.host_file("/bin/x", Path::new("/nonexistent/lab-file"), 0o755);
        let err = image
            .write_archive(&mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/nonexistent/lab-file") && err.contains("/bin/x"),
            "{err}"
        );
    }
}
