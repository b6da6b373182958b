//! Building an unsigned bundle from component files, and adding signatures.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha384};

use crate::atomic::AtomicFile;
use crate::bundle::{Bundle, Progress};
use crate::error::ImageError;
use crate::keys::SigningKey;
use crate::layout::{align_up, Header, MANIFEST_OFFSET, PAGE, SIGNATURE_PAGE_OFFSET};
use crate::manifest::{validate_name, Component, ComponentKind, Integrity, Manifest, NodeInfo};
use crate::signature::{encode_page, Signature, MAX_SIGNATURES};
use crate::verity::{build_tree, VerityParams, SALT_LEN};

/// What goes into a new bundle.
#[derive(Clone, Debug)]
pub struct BuildSpec {
    /// Image name.
    pub name: String,
    /// Monotonic version.
    pub version: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// Kernel file (required).
    pub kernel: PathBuf,
    /// Initrd file.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: Option<String>,
    /// Guest-init configuration file.
    pub config: Option<PathBuf>,
    /// Root filesystem image (size a multiple of 4096).
    pub rootfs: Option<PathBuf>,
}

/// What goes into a new node OS image bundle (`docs/image-format.md`, "Node
/// images"): the UKI, optionally the boot manager, and the node field with
/// the digests and predicted PCRs (computed by `bulwark-node-image`).
#[derive(Clone, Debug)]
pub struct NodeBuildSpec {
    /// Image name.
    pub name: String,
    /// Monotonic version.
    pub version: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// The Unified Kernel Image.
    pub uki: PathBuf,
    /// The boot manager (systemd-boot), if the image carries one.
    pub bootloader: Option<PathBuf>,
    /// Digests and predicted PCRs.
    pub node: NodeInfo,
}

enum Input<'a> {
    File(&'a Path),
    Bytes(&'a [u8]),
}

struct Part<'a> {
    kind: ComponentKind,
    input: Input<'a>,
    size: u64,
}

/// Build an unsigned bundle at `out` (written atomically). Returns its manifest.
pub fn build(spec: &BuildSpec, out: &Path, progress: Progress<'_>) -> Result<Manifest, ImageError> {
    validate_name(&spec.name).map_err(|e| ImageError::Build(e.to_string()))?;
    let parts = collect_parts(spec)?;
    let head = Manifest {
        name: spec.name.clone(),
        version: spec.version,
        created: spec.created,
        components: Vec::new(),
        node: None,
    };
    write_bundle(&head, &parts, out, progress)
}

/// Build an unsigned node OS image bundle at `out` (written atomically).
/// Returns its manifest.
pub fn build_node(
    spec: &NodeBuildSpec,
    out: &Path,
    progress: Progress<'_>,
) -> Result<Manifest, ImageError> {
    validate_name(&spec.name).map_err(|e| ImageError::Build(e.to_string()))?;
    let mut parts = Vec::new();
    if let Some(b) = &spec.bootloader {
        parts.push(part(ComponentKind::Bootloader, Input::File(b))?);
    }
    parts.push(part(ComponentKind::Uki, Input::File(&spec.uki))?);
    let head = Manifest {
        name: spec.name.clone(),
        version: spec.version,
        created: spec.created,
        components: Vec::new(),
        node: Some(spec.node.clone()),
    };
    write_bundle(&head, &parts, out, progress)
}

fn write_bundle(
    head: &Manifest,
    parts: &[Part<'_>],
    out: &Path,
    progress: Progress<'_>,
) -> Result<Manifest, ImageError> {
    let mut salt = vec![0u8; SALT_LEN];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
        .map_err(|_| ImageError::Build("no randomness for the verity salt".into()))?;

    // The manifest's length fixes where the data starts, and the data's
    // placement is written in the manifest: iterate until both agree.
    // Digests are fixed-length, so placeholders give the final length.
    let mut data_start = MANIFEST_OFFSET + PAGE;
    let mut manifest = loop {
        let m = plan(head, parts, data_start, &salt)?;
        let needed = MANIFEST_OFFSET + align_up(m.encode().len() as u64);
        if needed == data_start {
            break m;
        }
        data_start = needed;
    };
    let placeholder_len = manifest.encode().len();
    let file_len = manifest.file_len(data_start);

    let out_file = AtomicFile::create(out, None)?;
    let f = out_file.file();
    let tmp_err = |e| ImageError::io(out, e);
    f.set_len(file_len).map_err(tmp_err)?;
    for (part, comp) in parts.iter().zip(manifest.components.iter_mut()) {
        match &mut comp.integrity {
            Integrity::Sha384(d) => {
                *d = copy_hashing(&part.input, part.size, f, comp.offset, out, progress)?;
            }
            Integrity::Verity(v) => {
                copy_hashing(&part.input, part.size, f, comp.offset, out, progress)?;
                let (data_off, hash_off) = (comp.offset, v.hash_offset);
                let data_read = |buf: &mut [u8], off: u64| {
                    f.read_exact_at(buf, data_off + off).map_err(tmp_err)
                };
                let tree_read = |buf: &mut [u8], off: u64| {
                    f.read_exact_at(buf, hash_off + off).map_err(tmp_err)
                };
                let tree_write =
                    |buf: &[u8], off: u64| f.write_all_at(buf, hash_off + off).map_err(tmp_err);
                build_tree(v, &data_read, &tree_read, &tree_write, progress)?;
            }
        }
    }
    let manifest_bytes = manifest.encode();
    if manifest_bytes.len() != placeholder_len {
        return Err(ImageError::Build(
            "manifest length changed while building".into(),
        ));
    }
    let header = Header {
        manifest_len: manifest_bytes.len() as u64,
        file_len,
    };
    f.write_all_at(&header.encode(), 0).map_err(tmp_err)?;
    f.write_all_at(&encode_page(&[])?, SIGNATURE_PAGE_OFFSET)
        .map_err(tmp_err)?;
    f.write_all_at(&manifest_bytes, MANIFEST_OFFSET)
        .map_err(tmp_err)?;
    out_file.commit()?;
    Ok(manifest)
}

fn collect_parts(spec: &BuildSpec) -> Result<Vec<Part<'_>>, ImageError> {
    let mut parts = Vec::new();
    for kind in ComponentKind::ALL {
        let input = match kind {
            ComponentKind::Kernel => Some(Input::File(spec.kernel.as_path())),
            ComponentKind::Initrd => spec.initrd.as_deref().map(Input::File),
            ComponentKind::Cmdline => spec.cmdline.as_deref().map(|s| Input::Bytes(s.as_bytes())),
            ComponentKind::Config => spec.config.as_deref().map(Input::File),
            ComponentKind::Rootfs => spec.rootfs.as_deref().map(Input::File),
            // Node images only (build_node).
            ComponentKind::Bootloader | ComponentKind::Uki => None,
        };
        let Some(input) = input else { continue };
        parts.push(part(kind, input)?);
    }
    Ok(parts)
}

/// One input, with its size checked against the kind's limits.
fn part(kind: ComponentKind, input: Input<'_>) -> Result<Part<'_>, ImageError> {
    {
        let size = match &input {
            Input::File(p) => {
                let meta = std::fs::metadata(p).map_err(|e| ImageError::io(*p, e))?;
                if !meta.is_file() {
                    return Err(ImageError::Build(format!(
                        "{kind} {} is not a regular file",
                        p.display()
                    )));
                }
                meta.len()
            }
            Input::Bytes(b) => b.len() as u64,
        };
        if size == 0 {
            return Err(ImageError::Build(format!("{kind} is empty")));
        }
        if size > kind.max_size() {
            return Err(ImageError::Build(format!(
                "{kind} is {size} bytes, over the limit of {}",
                kind.max_size()
            )));
        }
        if let (ComponentKind::Cmdline, Input::Bytes(b)) = (kind, &input) {
            if !b.iter().all(|c| (0x20..0x7f).contains(c)) {
                return Err(ImageError::Build("cmdline must be printable ASCII".into()));
            }
        }
        Ok(Part { kind, input, size })
    }
}

/// Lay the components out from `data_start` with placeholder digests.
fn plan(
    head: &Manifest,
    parts: &[Part<'_>],
    data_start: u64,
    salt: &[u8],
) -> Result<Manifest, ImageError> {
    let mut offset = data_start;
    let mut components = Vec::with_capacity(parts.len());
    for p in parts {
        let end = align_up(offset + p.size);
        let (integrity, next) = if p.kind == ComponentKind::Rootfs {
            let mut v = VerityParams::new(p.size, end, salt.to_vec())?;
            v.root_hash = vec![0; v.algorithm.digest_len()];
            let next = align_up(end + v.hash_size);
            (Integrity::Verity(v), next)
        } else {
            (Integrity::Sha384([0; 48]), end)
        };
        components.push(Component {
            kind: p.kind,
            offset,
            size: p.size,
            integrity,
        });
        offset = next;
    }
    Ok(Manifest {
        components,
        ..head.clone()
    })
}

/// Copy `size` bytes of `input` to `out` at `offset`, returning their SHA-384.
/// A file whose length changed since it was measured is an error.
fn copy_hashing(
    input: &Input<'_>,
    size: u64,
    out: &File,
    offset: u64,
    out_path: &Path,
    progress: Progress<'_>,
) -> Result<[u8; 48], ImageError> {
    let mut h = Sha384::new();
    match input {
        Input::Bytes(b) => {
            h.update(b);
            out.write_all_at(b, offset)
                .map_err(|e| ImageError::io(out_path, e))?;
            progress(size);
        }
        Input::File(path) => {
            let mut f = File::open(path).map_err(|e| ImageError::io(*path, e))?;
            let mut buf = vec![0u8; 1 << 20];
            let mut done = 0u64;
            loop {
                let n = f.read(&mut buf).map_err(|e| ImageError::io(*path, e))?;
                if n == 0 {
                    break;
                }
                if done + n as u64 > size {
                    break;
                }
                h.update(&buf[..n]);
                out.write_all_at(&buf[..n], offset + done)
                    .map_err(|e| ImageError::io(out_path, e))?;
                done += n as u64;
                progress(n as u64);
            }
            if done != size {
                return Err(ImageError::Build(format!(
                    "{} changed size while it was being read",
                    path.display()
                )));
            }
        }
    }
    Ok(h.finalize().into())
}

/// Add `key`'s signature to the bundle at `path`, atomically. The bundle's
/// content is checked against its own manifest first: a signer vouches only
/// for what it has seen. Signing twice with the same key is refused.
pub fn sign(path: &Path, key: &SigningKey, progress: Progress<'_>) -> Result<(), ImageError> {
    let bundle = Bundle::open(path)?;
    bundle.check_contents(progress)?;
    let key_id = *key.public().id();
    let mut sigs = bundle.signatures().to_vec();
    if sigs.iter().any(|s| s.key_id == key_id) {
        return Err(ImageError::Sign(format!(
            "already signed by key {}",
            key.public().id_hex()
        )));
    }
    if sigs.len() >= MAX_SIGNATURES {
        return Err(ImageError::Sign(format!(
            "bundle already carries the maximum of {MAX_SIGNATURES} signatures"
        )));
    }
    sigs.push(Signature {
        key_id,
        value: key.sign(bundle.manifest_bytes())?,
    });
    let page = encode_page(&sigs)?;
    let manifest_bytes = bundle.manifest_bytes().to_vec();
    drop(bundle);
    let out = AtomicFile::create(path, Some(path))?;
    // The copy must hold the manifest that was checked and signed, even if
    // the file was replaced in the meantime.
    let mut copied = vec![0u8; manifest_bytes.len()];
    out.file()
        .read_exact_at(&mut copied, MANIFEST_OFFSET)
        .map_err(|e| ImageError::io(path, e))?;
    if copied != manifest_bytes {
        return Err(ImageError::Sign(
            "the bundle changed while it was being signed".into(),
        ));
    }
    out.file()
        .write_all_at(&page, SIGNATURE_PAGE_OFFSET)
        .map_err(|e| ImageError::io(path, e))?;
    out.commit()
}

/// The time builds record: `SOURCE_DATE_EPOCH` when set (reproducible builds),
/// else now; seconds since the Unix epoch.
pub fn build_time() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        })
}
