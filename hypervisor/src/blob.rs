//! The bytes a boot loads: in memory, or a signed bundle's component that is still in
//! the verified bundle file. A signed component is read once, by whoever loads it:
//! [`Blob::stream`] reads it in chunks, hashes each chunk against the signed SHA-384 as
//! it goes and hands the chunk to the loader, which writes it into guest memory (one
//! pass, no buffer the size of the file); [`Blob::read`] does the same into one buffer
//! for the loaders that need the whole file (raw and firmware boots, unusual ELF files).

use std::borrow::Cow;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bulwark_image::ComponentKind;
use sha2::{Digest, Sha384};

/// Bytes read per chunk when streaming a signed component.
pub const CHUNK: usize = 1 << 20;

/// What a boot loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blob {
    /// Bytes in memory (plain files, and what the VMM built itself).
    Bytes(Vec<u8>),
    /// A signed bundle component not read yet, and the bytes the VMM appends to it.
    Signed(SignedComponent),
}

/// A SHA-384-bound component of a verified bundle: where it lies in the very file that
/// was verified, and its signed digest.
#[derive(Debug, Clone)]
pub struct SignedComponent {
    /// Which component.
    pub kind: ComponentKind,
    /// The verified bundle file, opened read-only.
    pub file: Arc<std::fs::File>,
    /// First byte of the component in the file.
    pub offset: u64,
    /// Its length.
    pub len: u64,
    /// Its signed SHA-384.
    pub sha384: [u8; 48],
    /// Bytes the VMM appends after the component (the initrd's zero padding to 4 bytes
    /// and the config archive; see `boot_source::signed_linux_handoff`). Covered by the
    /// measurement, not by the signed digest.
    pub appended: Vec<u8>,
}

impl PartialEq for SignedComponent {
    fn eq(&self, other: &Self) -> bool {
        (
            self.kind,
            self.offset,
            self.len,
            self.sha384,
            &self.appended,
        ) == (
            other.kind,
            other.offset,
            other.len,
            other.sha384,
            &other.appended,
        )
    }
}

impl Eq for SignedComponent {}

/// A signed component that could not be read, or whose bytes are not the signed ones.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// Reading the bundle file failed.
    #[error("verification failed: reading the {kind} component: {message}")]
    Read {
        /// Which component.
        kind: ComponentKind,
        /// Why.
        message: String,
    },
    /// The bytes read are not the ones the manifest signs.
    #[error("verification failed: reading the {kind} component: its SHA-384 does not match the signed manifest (the bundle changed after verification)")]
    Mismatch {
        /// Which component.
        kind: ComponentKind,
    },
    /// The loader that received the bytes refused them.
    #[error("{0}")]
    Sink(String),
}

impl Blob {
    /// The length of what the guest gets (a signed component's appended bytes included).
    pub fn len(&self) -> u64 {
        match self {
            Blob::Bytes(b) => b.len() as u64,
            Blob::Signed(c) => c.len + c.appended.len() as u64,
        }
    }

    /// Whether the blob has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The SHA-384 of all of the blob's bytes when it is known without reading them (a
    /// signed component with nothing appended).
    pub fn known_sha384(&self) -> Option<[u8; 48]> {
        match self {
            Blob::Signed(c) if c.appended.is_empty() => Some(c.sha384),
            _ => None,
        }
    }

    /// All the bytes in one buffer; a signed component is read and checked against its
    /// signed digest first.
    pub fn read(&self) -> Result<Cow<'_, [u8]>, BlobError> {
        match self {
            Blob::Bytes(b) => Ok(Cow::Borrowed(b)),
            Blob::Signed(c) => {
                let mut out = Vec::with_capacity(self.len() as usize);
                c.stream(|_, chunk| {
                    out.extend_from_slice(chunk);
                    Ok(())
                })?;
                Ok(Cow::Owned(out))
            }
        }
    }
}

impl SignedComponent {
    /// Reads the component and then its appended bytes in order, in chunks of at most
    /// [`CHUNK`] bytes, handing each to `sink` with its offset in the blob, and returns
    /// the SHA-384 of everything handed over. The component's bytes are hashed as they
    /// are read and compared with the signed digest once the last one is read, before
    /// the appended bytes: until `stream` returns `Ok`, what `sink` received is
    /// unverified and must not be used (a loader writes it into the memory of a guest
    /// that does not run unless this returns `Ok`).
    pub fn stream(
        &self,
        mut sink: impl FnMut(u64, &[u8]) -> Result<(), String>,
    ) -> Result<[u8; 48], BlobError> {
        let read_err = |message: String| BlobError::Read {
            kind: self.kind,
            message,
        };
        let mut signed = Sha384::new();
        // The digest of the whole blob is the signed one unless bytes are appended.
        let mut whole = (!self.appended.is_empty()).then(Sha384::new);
        let mut buf = vec![0u8; CHUNK.min(usize::try_from(self.len).unwrap_or(CHUNK))];
        let mut at = 0u64;
        while at < self.len {
            let n = CHUNK.min(usize::try_from(self.len - at).unwrap_or(CHUNK));
            let chunk = &mut buf[..n];
            let file_at = self
                .offset
                .checked_add(at)
                .ok_or_else(|| read_err("the component's extent overflows".into()))?;
            self.file
                .read_exact_at(chunk, file_at)
                .map_err(|e| read_err(e.to_string()))?;
            signed.update(&*chunk);
            if let Some(h) = whole.as_mut() {
                h.update(&*chunk);
            }
            sink(at, chunk).map_err(BlobError::Sink)?;
            at += n as u64;
        }
        if <[u8; 48]>::from(signed.finalize()) != self.sha384 {
            return Err(BlobError::Mismatch { kind: self.kind });
        }
        match whole {
            None => Ok(self.sha384),
            Some(mut h) => {
                h.update(&self.appended);
                sink(self.len, &self.appended).map_err(BlobError::Sink)?;
                Ok(h.finalize().into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn component(file_bytes: &[u8], offset: u64, len: u64, appended: &[u8]) -> SignedComponent {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(file_bytes).unwrap();
        let body = &file_bytes[offset as usize..(offset + len) as usize];
        SignedComponent {
            kind: ComponentKind::Initrd,
            file: Arc::new(f),
            offset,
            len,
            sha384: Sha384::digest(body).into(),
            appended: appended.to_vec(),
        }
    }

    #[test]
    fn streams_in_chunks_in_order_and_returns_the_digest_of_everything() {
        let bytes: Vec<u8> = (0..(2 * CHUNK + 100)).map(|i| (i % 251) as u8).collect();
        let mut file = vec![9u8; 300];
        file.extend_from_slice(&bytes);
        file.extend_from_slice(&[7; 50]);
        for appended in [&b""[..], b"\0\0config"] {
            let c = component(&file, 300, bytes.len() as u64, appended);
            let mut seen = Vec::new();
            let mut offsets = Vec::new();
            let digest = c
                .stream(|at, chunk| {
                    offsets.push(at);
                    seen.extend_from_slice(chunk);
                    Ok(())
                })
                .unwrap();
            let mut want = bytes.clone();
            want.extend_from_slice(appended);
            assert_eq!(seen, want);
            assert_eq!(&offsets[..3], &[0, CHUNK as u64, 2 * CHUNK as u64]);
            assert_eq!(digest, <[u8; 48]>::from(Sha384::digest(&want)));
            let blob = Blob::Signed(c);
            assert_eq!(blob.len(), want.len() as u64);
            assert_eq!(blob.read().unwrap().as_ref(), &want[..]);
            assert_eq!(
                blob.known_sha384().is_some(),
                appended.is_empty(),
                "known only when nothing is appended"
            );
        }
    }

    #[test]
    fn a_changed_byte_anywhere_is_refused_after_the_last_chunk() {
        let bytes = vec![1u8; CHUNK + 10];
        let mut c = component(&bytes, 0, bytes.len() as u64, b"tail");
        for at in [0, CHUNK as u64 - 1, CHUNK as u64 + 9] {
            let mut changed = bytes.clone();
            changed[at as usize] ^= 1;
            c.file = component(&changed, 0, bytes.len() as u64, b"").file;
            let mut appended_seen = false;
            let e = c
                .stream(|off, _| {
                    appended_seen |= off == bytes.len() as u64;
                    Ok(())
                })
                .unwrap_err();
            assert!(matches!(e, BlobError::Mismatch { .. }), "{e}");
            assert!(e.to_string().contains("does not match the signed manifest"));
            assert!(!appended_seen, "nothing follows a mismatch");
            assert!(Blob::Signed(c.clone()).read().is_err());
        }
    }

    #[test]
    fn a_short_file_and_a_refusing_sink_are_errors() {
        let c = component(&[1u8; 100], 0, 100, b"");
        let short = SignedComponent {
            len: 200,
            ..c.clone()
        };
        assert!(matches!(
            short.stream(|_, _| Ok(())).unwrap_err(),
            BlobError::Read { .. }
        ));
        let e = c.stream(|_, _| Err("no room".into())).unwrap_err();
        assert_eq!(e.to_string(), "no room");
    }
}
