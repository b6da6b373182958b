//! Reading and verifying bundles.
//!
//! [`Bundle`] is a bundle whose fixed layout and manifest have been parsed but
//! nothing trusted. [`Bundle::verify`] checks the signatures against a
//! [`TrustPolicy`], then every byte of the file: padding, component digests
//! and the whole dm-verity tree, and only then hands out a [`VerifiedBundle`].

use std::path::Path;

use rayon::prelude::*;
use sha2::{Digest, Sha384};

use crate::error::ImageError;
use crate::keys::KeyId;
use crate::layout::{align_up, Header, MANIFEST_OFFSET, PAGE, SIGNATURE_PAGE_OFFSET};
use crate::manifest::{Component, ComponentKind, Integrity, Manifest};
use crate::signature::{check_threshold, decode_page, Signature, TrustPolicy};
use crate::source::{BundleSource, FileSource};
use crate::verity::{verify_tree, VerityParams};

/// Read size for streaming hashes.
const READ_CHUNK: u64 = 1 << 20;

/// A callback told how many more bytes have been processed.
pub type Progress<'a> = &'a (dyn Fn(u64) + Sync);

/// A bundle with its layout and manifest parsed, not yet trusted.
#[derive(Debug)]
pub struct Bundle<S = FileSource> {
    source: S,
    header: Header,
    signatures: Vec<Signature>,
    manifest_bytes: Vec<u8>,
    manifest: Manifest,
}

impl Bundle<FileSource> {
    /// Open and parse a bundle file.
    pub fn open(path: &Path) -> Result<Self, ImageError> {
        Bundle::from_source(FileSource::open(path)?)
    }
}

impl<S: BundleSource> Bundle<S> {
    /// Parse the header, signature page and manifest of `source`.
    pub fn from_source(source: S) -> Result<Self, ImageError> {
        let actual = source.len();
        if actual < MANIFEST_OFFSET + PAGE {
            if actual >= 8 {
                // Say "not a bundle" rather than "truncated" for foreign files.
                let mut magic = [0u8; 8];
                source.read_exact_at(&mut magic, 0)?;
                if magic != crate::layout::MAGIC {
                    return Err(ImageError::Format(
                        "not a Bulwark image bundle (bad magic)".into(),
                    ));
                }
            }
            return Err(ImageError::Format(format!(
                "file is {actual} bytes, too short to be a bundle"
            )));
        }
        let mut page = [0u8; PAGE as usize];
        source.read_exact_at(&mut page, 0)?;
        let header = Header::decode(&page)?;
        if header.file_len != actual {
            return Err(ImageError::Length {
                expected: header.file_len,
                actual,
            });
        }
        source.read_exact_at(&mut page, SIGNATURE_PAGE_OFFSET)?;
        let signatures = decode_page(&page)?;
        let data_start = header.data_start();
        if data_start > actual {
            return Err(ImageError::Length {
                expected: data_start,
                actual,
            });
        }
        let mut manifest_bytes = vec![0u8; header.manifest_len as usize];
        source.read_exact_at(&mut manifest_bytes, MANIFEST_OFFSET)?;
        let manifest = Manifest::decode(&manifest_bytes, data_start)?;
        let expected = manifest.file_len(data_start);
        if expected != actual {
            return Err(ImageError::Length { expected, actual });
        }
        Ok(Bundle {
            source,
            header,
            signatures,
            manifest_bytes,
            manifest,
        })
    }

    /// The manifest, UNVERIFIED: nothing vouches for it yet.
    pub fn unverified_manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The signatures as stored, UNVERIFIED.
    pub fn signatures(&self) -> &[Signature] {
        &self.signatures
    }

    /// The exact manifest bytes that signatures cover.
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.manifest_bytes
    }

    /// The source the bundle is read from.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// Check signatures against `policy`, then the whole content.
    pub fn verify(self, policy: &TrustPolicy) -> Result<VerifiedBundle<S>, ImageError> {
        self.verify_with_progress(policy, &|_| {})
    }

    /// [`Bundle::verify`], reporting bytes processed to `progress`.
    pub fn verify_with_progress(
        self,
        policy: &TrustPolicy,
        progress: Progress<'_>,
    ) -> Result<VerifiedBundle<S>, ImageError> {
        let signed_by = self.check_trust(policy)?;
        self.check_contents(progress)?;
        Ok(VerifiedBundle {
            bundle: self,
            signed_by,
        })
    }

    /// [`Bundle::verify`] for a loader that reads the SHA-384 components in `read_now`
    /// into memory right away with [`VerifiedBundle::read_component`], which checks each
    /// one's digest as it reads it: those are not hashed a first time here (each byte is
    /// hashed once); everything else (signatures, version, padding, every other
    /// component and the rootfs's dm-verity tree) is checked as by `verify`. A caller
    /// must read every component in `read_now` before it trusts the bundle.
    pub fn verify_for_loading(
        self,
        policy: &TrustPolicy,
        read_now: &[ComponentKind],
    ) -> Result<VerifiedBundle<S>, ImageError> {
        let signed_by = self.check_trust(policy)?;
        self.check_padding()?;
        self.manifest
            .components
            .par_iter()
            .filter(|c| {
                !(read_now.contains(&c.kind) && matches!(c.integrity, Integrity::Sha384(_)))
            })
            .try_for_each(|c| self.check_component(c, &|_| {}))?;
        Ok(VerifiedBundle {
            bundle: self,
            signed_by,
        })
    }

    /// The signatures against `policy`'s keys and threshold, and its minimum version;
    /// returns who signed.
    fn check_trust(&self, policy: &TrustPolicy) -> Result<Vec<KeyId>, ImageError> {
        let signed_by = check_threshold(&self.manifest_bytes, &self.signatures, policy)?;
        if self.manifest.version < policy.min_version {
            return Err(ImageError::Rollback {
                name: self.manifest.name.clone(),
                version: self.manifest.version,
                minimum: policy.min_version,
                why: "--min-version",
            });
        }
        Ok(signed_by)
    }

    /// Bytes that content checking reads: for the progress bar.
    pub fn content_len(&self) -> u64 {
        self.manifest
            .components
            .iter()
            .map(|c| match &c.integrity {
                Integrity::Sha384(_) => c.size,
                Integrity::Verity(v) => c.size + v.hash_size,
            })
            .sum()
    }

    /// Check every byte after the manifest against it: zero padding, each
    /// component's SHA-384 and the rootfs dm-verity tree. Components are
    /// checked in parallel.
    pub fn check_contents(&self, progress: Progress<'_>) -> Result<(), ImageError> {
        self.check_padding()?;
        self.manifest
            .components
            .par_iter()
            .try_for_each(|c| self.check_component(c, progress))
    }

    fn check_padding(&self) -> Result<(), ImageError> {
        let mut gaps = vec![(
            MANIFEST_OFFSET + self.header.manifest_len,
            self.header.data_start(),
        )];
        for c in &self.manifest.components {
            // Both ends were range-checked when the manifest was decoded.
            let end = c.offset + c.size;
            match &c.integrity {
                Integrity::Sha384(_) => gaps.push((end, align_up(end))),
                Integrity::Verity(v) => {
                    gaps.push((end, v.hash_offset));
                    let tree_end = v.hash_offset + v.hash_size;
                    gaps.push((tree_end, align_up(tree_end)));
                }
            }
        }
        for (start, end) in gaps {
            let mut buf = vec![0u8; (end - start) as usize];
            self.source.read_exact_at(&mut buf, start)?;
            if let Some(pos) = buf.iter().position(|&b| b != 0) {
                return Err(ImageError::Format(format!(
                    "padding byte at offset {} is not zero",
                    start + pos as u64
                )));
            }
        }
        Ok(())
    }

    fn check_component(&self, c: &Component, progress: Progress<'_>) -> Result<(), ImageError> {
        match &c.integrity {
            Integrity::Sha384(expected) => {
                let digest = sha384_range(&self.source, c.offset, c.size, progress)?;
                if &digest != expected {
                    return Err(ImageError::DigestMismatch { component: c.kind });
                }
                Ok(())
            }
            Integrity::Verity(v) => {
                let data_read =
                    |buf: &mut [u8], off: u64| self.source.read_exact_at(buf, c.offset + off);
                let tree_read =
                    |buf: &mut [u8], off: u64| self.source.read_exact_at(buf, v.hash_offset + off);
                verify_tree(v, &data_read, &tree_read, progress)
            }
        }
    }
}

/// SHA-384 of `len` bytes of `source` from `offset`, streamed.
fn sha384_range<S: BundleSource + ?Sized>(
    source: &S,
    offset: u64,
    len: u64,
    progress: Progress<'_>,
) -> Result<[u8; 48], ImageError> {
    let mut h = Sha384::new();
    let mut buf = vec![0u8; READ_CHUNK.min(len) as usize];
    let mut done = 0u64;
    while done < len {
        let n = READ_CHUNK.min(len - done) as usize;
        source.read_exact_at(&mut buf[..n], offset + done)?;
        h.update(&buf[..n]);
        done += n as u64;
        progress(n as u64);
    }
    Ok(h.finalize().into())
}

/// Where the rootfs sits inside the bundle file, for serving it in place.
#[derive(Clone, Copy, Debug)]
pub struct RootfsExtent<'a> {
    /// Byte offset of the filesystem image in the bundle.
    pub offset: u64,
    /// Its length in bytes.
    pub size: u64,
    /// Its dm-verity tree (stored at `verity.hash_offset` in the bundle).
    pub verity: &'a VerityParams,
}

/// A bundle whose signatures, version and every byte have been checked.
#[derive(Debug)]
pub struct VerifiedBundle<S = FileSource> {
    bundle: Bundle<S>,
    signed_by: Vec<KeyId>,
}

impl<S: BundleSource> VerifiedBundle<S> {
    /// The verified manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.bundle.manifest
    }

    /// The trusted keys whose signatures verified.
    pub fn signed_by(&self) -> &[KeyId] {
        &self.signed_by
    }

    /// SHA-384 of the signed manifest bytes: the image's identity, which
    /// binds every component.
    pub fn manifest_sha384(&self) -> [u8; 48] {
        Sha384::digest(&self.bundle.manifest_bytes).into()
    }

    /// The exact signed manifest bytes.
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.bundle.manifest_bytes
    }

    /// Read a SHA-384-bound component into memory, hashing the very bytes
    /// returned against the signed digest (so a file changed after
    /// verification is caught). `None` when the bundle lacks it. The rootfs
    /// is served in place instead: see [`VerifiedBundle::rootfs`].
    pub fn read_component(&self, kind: ComponentKind) -> Result<Option<Vec<u8>>, ImageError> {
        let Some(c) = self.manifest().component(kind) else {
            return Ok(None);
        };
        let Integrity::Sha384(expected) = &c.integrity else {
            return Err(ImageError::Build(format!(
                "the {kind} component is served in place through dm-verity, not read into memory"
            )));
        };
        let mut bytes = vec![0u8; c.size as usize];
        self.bundle.source.read_exact_at(&mut bytes, c.offset)?;
        if &<[u8; 48]>::from(Sha384::digest(&bytes)) != expected {
            return Err(ImageError::DigestMismatch { component: kind });
        }
        Ok(Some(bytes))
    }

    /// The rootfs extent and its dm-verity parameters, if the image has one.
    pub fn rootfs(&self) -> Option<RootfsExtent<'_>> {
        let c = self.manifest().component(ComponentKind::Rootfs)?;
        Some(RootfsExtent {
            offset: c.offset,
            size: c.size,
            verity: c.verity()?,
        })
    }

    /// The source the bundle is read from.
    pub fn source(&self) -> &S {
        &self.bundle.source
    }
}
