//! dm-verity hash trees in the exact on-disk format Linux uses (format
//! version 1, no superblock), so the guest kernel can enforce the rootfs at
//! run time with the root hash from the signed manifest, and `veritysetup`
//! accepts the tree we store.
//!
//! Geometry (as the kernel's dm-verity target computes it): with `B` hashes
//! per hash block, level `i` (0 = the hashes of the data blocks) holds
//! `ceil(data_blocks / B^(i+1))` blocks; levels are stored top level first;
//! every hash is `H(salt || block)`; the root hash is `H(salt || top block)`.
//! A single data block gives zero levels and its own hash is the root.
//!
//! Building and checking both go level by level in parallel chunks, reading
//! through positioned I/O, so memory stays bounded whatever the rootfs size.

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::error::ImageError;

/// The hash function of a tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerityHash {
    /// SHA-256, dm-verity's default.
    Sha256,
}

impl VerityHash {
    /// The name dm-verity and veritysetup use.
    pub fn name(self) -> &'static str {
        match self {
            VerityHash::Sha256 => "sha256",
        }
    }

    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            VerityHash::Sha256 => 32,
        }
    }
}

/// Block size used for data and hash blocks by `build`.
pub const BLOCK_SIZE: u32 = 4096;
/// Salt length used by `build` (veritysetup's default).
pub const SALT_LEN: usize = 32;
/// Longest salt dm-verity accepts.
pub const MAX_SALT_LEN: usize = 256;

/// The parameters of a stored tree, as signed in the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerityParams {
    /// dm-verity format version (1).
    pub version: u32,
    /// Hash function.
    pub algorithm: VerityHash,
    /// Data block size in bytes.
    pub data_block_size: u32,
    /// Hash block size in bytes.
    pub hash_block_size: u32,
    /// Number of data blocks.
    pub data_blocks: u64,
    /// Byte offset of the hash tree in the bundle file.
    pub hash_offset: u64,
    /// Length of the hash tree in bytes.
    pub hash_size: u64,
    /// Salt.
    pub salt: Vec<u8>,
    /// Root hash.
    pub root_hash: Vec<u8>,
}

/// One level of the tree: where it is inside the hash area and how many
/// blocks it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Level {
    /// Offset of the level's first block from the start of the hash area.
    start: u64,
    /// Number of hash blocks.
    blocks: u64,
}

/// Positioned reads (and, for building, writes) used by the tree code.
pub(crate) type ReadAt<'a> = dyn Fn(&mut [u8], u64) -> Result<(), ImageError> + Sync + 'a;
pub(crate) type WriteAt<'a> = dyn Fn(&[u8], u64) -> Result<(), ImageError> + Sync + 'a;
/// Receives each computed run of hash blocks with its offset in the hash
/// area and its level.
type LevelSink<'a> = dyn Fn(&[u8], u64, usize) -> Result<(), ImageError> + Sync + 'a;

impl VerityParams {
    /// Parameters for a new tree over `data_size` bytes, stored at `hash_offset`.
    /// The root hash is filled in by [`build_tree`].
    pub fn new(data_size: u64, hash_offset: u64, salt: Vec<u8>) -> Result<Self, ImageError> {
        if data_size == 0 || !data_size.is_multiple_of(u64::from(BLOCK_SIZE)) {
            return Err(ImageError::Build(format!(
                "rootfs size {data_size} is not a non-zero multiple of {BLOCK_SIZE} bytes"
            )));
        }
        let mut p = VerityParams {
            version: 1,
            algorithm: VerityHash::Sha256,
            data_block_size: BLOCK_SIZE,
            hash_block_size: BLOCK_SIZE,
            data_blocks: data_size / u64::from(BLOCK_SIZE),
            hash_offset,
            hash_size: 0,
            salt,
            root_hash: Vec::new(),
        };
        p.hash_size = p.tree_size();
        Ok(p)
    }

    /// Parse the manifest's `verity` object, checking every parameter is one
    /// Linux accepts and this code supports.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_manifest(
        version: u32,
        algorithm: &str,
        data_block_size: u32,
        hash_block_size: u32,
        data_blocks: u64,
        hash_offset: u64,
        hash_size: u64,
        salt: &str,
        root_hash: &str,
    ) -> Result<Self, ImageError> {
        let bad = |m: String| ImageError::Manifest(format!("rootfs verity: {m}"));
        if version != 1 {
            return Err(bad(format!(
                "format version {version} (only 1 is supported)"
            )));
        }
        let algorithm = match algorithm {
            "sha256" => VerityHash::Sha256,
            other => return Err(bad(format!("hash algorithm {other:?} is not supported"))),
        };
        if data_block_size != BLOCK_SIZE || hash_block_size != BLOCK_SIZE {
            return Err(bad(format!(
                "block sizes {data_block_size}/{hash_block_size} (only {BLOCK_SIZE}/{BLOCK_SIZE} are supported)"
            )));
        }
        let salt = hex::decode(salt).map_err(|_| bad("salt is not hex".into()))?;
        if salt.len() > MAX_SALT_LEN || hex::encode(&salt).len() != 2 * salt.len() {
            return Err(bad(format!("salt longer than {MAX_SALT_LEN} bytes")));
        }
        let root_hash = hex::decode(root_hash).map_err(|_| bad("root hash is not hex".into()))?;
        if root_hash.len() != algorithm.digest_len() {
            return Err(bad(format!(
                "root hash is {} bytes, expected {}",
                root_hash.len(),
                algorithm.digest_len()
            )));
        }
        Ok(VerityParams {
            version,
            algorithm,
            data_block_size,
            hash_block_size,
            data_blocks,
            hash_offset,
            hash_size,
            salt,
            root_hash,
        })
    }

    /// Check the parameters agree with the component they protect: the data
    /// covers exactly the component and the tree sits where it must, with the
    /// size its geometry gives.
    pub(crate) fn check_against(
        &self,
        component_size: u64,
        expected_hash_offset: u64,
    ) -> Result<(), ImageError> {
        let bad = |m: String| ImageError::Manifest(format!("rootfs verity: {m}"));
        let data_bytes = self
            .data_blocks
            .checked_mul(u64::from(self.data_block_size))
            .ok_or_else(|| bad("data block count overflows".into()))?;
        if data_bytes != component_size || self.data_blocks == 0 {
            return Err(bad(format!(
                "{} data blocks of {} bytes do not cover the {component_size}-byte rootfs",
                self.data_blocks, self.data_block_size
            )));
        }
        if self.hash_offset != expected_hash_offset {
            return Err(bad(format!(
                "hash tree at offset {}, expected {expected_hash_offset}",
                self.hash_offset
            )));
        }
        if self.hash_size != self.tree_size() {
            return Err(bad(format!(
                "hash tree is {} bytes, its geometry needs {}",
                self.hash_size,
                self.tree_size()
            )));
        }
        Ok(())
    }

    fn hash_per_block_bits(&self) -> u32 {
        let slot = self.algorithm.digest_len().next_power_of_two() as u64;
        (u64::from(self.hash_block_size) / slot).trailing_zeros()
    }

    /// The levels, index 0 = hashes of the data blocks.
    fn levels(&self) -> Vec<Level> {
        let bits = self.hash_per_block_bits();
        let mut count = 0u32;
        while bits * count < 64 && (self.data_blocks - 1) >> (bits * count) != 0 {
            count += 1;
        }
        let blocks: Vec<u64> = (0..count)
            .map(|i| {
                let shift = bits * (i + 1);
                if shift >= 64 {
                    1
                } else {
                    self.data_blocks.div_ceil(1u64 << shift)
                }
            })
            .collect();
        // Stored top level first.
        let mut levels = vec![
            Level {
                start: 0,
                blocks: 0
            };
            blocks.len()
        ];
        let mut pos = 0u64;
        for i in (0..blocks.len()).rev() {
            levels[i] = Level {
                start: pos,
                blocks: blocks[i],
            };
            pos += blocks[i] * u64::from(self.hash_block_size);
        }
        levels
    }

    /// Size of the whole hash area in bytes.
    pub fn tree_size(&self) -> u64 {
        self.levels()
            .iter()
            .map(|l| l.blocks * u64::from(self.hash_block_size))
            .sum()
    }

    /// The `veritysetup` arguments that describe this tree for a data file
    /// and a separate hash file holding just the tree (no superblock).
    pub fn veritysetup_args(&self) -> Vec<String> {
        vec![
            "--no-superblock".into(),
            "--format=1".into(),
            format!("--hash={}", self.algorithm.name()),
            format!("--data-block-size={}", self.data_block_size),
            format!("--hash-block-size={}", self.hash_block_size),
            format!("--data-blocks={}", self.data_blocks),
            format!("--salt={}", self.salt_hex()),
        ]
    }

    /// The device-mapper table line, for `dm-mod.create=` on the guest
    /// kernel command line: `<data_dev>` and `<hash_dev>` name the guest's
    /// block devices and `hash_start_block` the first block of the tree on
    /// `<hash_dev>`.
    pub fn dm_table(&self, data_dev: &str, hash_dev: &str, hash_start_block: u64) -> String {
        let sectors = self.data_blocks * u64::from(self.data_block_size) / 512;
        format!(
            "0 {sectors} verity {} {data_dev} {hash_dev} {} {} {} {hash_start_block} {} {} {}",
            self.version,
            self.data_block_size,
            self.hash_block_size,
            self.data_blocks,
            self.algorithm.name(),
            hex::encode(&self.root_hash),
            self.salt_hex(),
        )
    }

    fn salt_hex(&self) -> String {
        if self.salt.is_empty() {
            "-".into()
        } else {
            hex::encode(&self.salt)
        }
    }

    fn hash(&self, block: &[u8]) -> [u8; 32] {
        match self.algorithm {
            VerityHash::Sha256 => Sha256::new()
                .chain_update(&self.salt)
                .chain_update(block)
                .finalize()
                .into(),
        }
    }

    /// Hash `count` blocks of `src_block` bytes read from `src_offset`
    /// onwards, into whole hash blocks (zero padded).
    fn hash_blocks(
        &self,
        read: &ReadAt<'_>,
        src_offset: u64,
        src_block: u64,
        count: u64,
    ) -> Result<Vec<u8>, ImageError> {
        let hash_block = self.hash_block_size as usize;
        let slot = self.algorithm.digest_len().next_power_of_two();
        let per_block = hash_block / slot;
        let out_blocks = (count as usize).div_ceil(per_block);
        let mut out = vec![0u8; out_blocks * hash_block];
        let mut buf = vec![0u8; (src_block * count) as usize];
        read(&mut buf, src_offset)?;
        for (i, block) in buf.chunks_exact(src_block as usize).enumerate() {
            let d = self.hash(block);
            out[i * slot..i * slot + d.len()].copy_from_slice(&d);
        }
        Ok(out)
    }

    /// For each level, in parallel chunks, compute the level's blocks from
    /// the level below (or the data) and hand them to `sink` with their
    /// offset inside the hash area. `data_read` reads the data; `tree_read`
    /// reads the hash area (offsets relative to its start). Returns the root
    /// hash computed from the top block as read back through `tree_read`.
    fn walk(
        &self,
        data_read: &ReadAt<'_>,
        tree_read: &ReadAt<'_>,
        sink: &LevelSink<'_>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Vec<u8>, ImageError> {
        let levels = self.levels();
        let hash_block = u64::from(self.hash_block_size);
        let per_block = 1u64 << self.hash_per_block_bits();
        // Source blocks per chunk: whole output blocks, 4 MiB of data.
        let chunk = per_block * 8;
        for (i, level) in levels.iter().enumerate() {
            let (src_blocks, src_block, read, src_base): (u64, u64, &ReadAt<'_>, u64) = if i == 0 {
                (
                    self.data_blocks,
                    u64::from(self.data_block_size),
                    data_read,
                    0,
                )
            } else {
                (
                    levels[i - 1].blocks,
                    hash_block,
                    tree_read,
                    levels[i - 1].start,
                )
            };
            let chunks = src_blocks.div_ceil(chunk);
            (0..chunks).into_par_iter().try_for_each(|c| {
                let first = c * chunk;
                let count = chunk.min(src_blocks - first);
                let out = self.hash_blocks(read, src_base + first * src_block, src_block, count)?;
                let dst = level.start + (first / per_block) * hash_block;
                sink(&out, dst, i)?;
                progress(count * src_block);
                Ok::<(), ImageError>(())
            })?;
        }
        let top = match levels.last() {
            Some(top) => {
                let mut block = vec![0u8; hash_block as usize];
                tree_read(&mut block, top.start)?;
                block
            }
            None => {
                let mut block = vec![0u8; self.data_block_size as usize];
                data_read(&mut block, 0)?;
                block
            }
        };
        Ok(self.hash(&top).to_vec())
    }
}

/// Compute the tree for the data behind `data_read`, writing it through
/// `tree_write` (offsets relative to the start of the hash area) and reading
/// it back through `tree_read` for the upper levels; sets `params.root_hash`.
pub(crate) fn build_tree(
    params: &mut VerityParams,
    data_read: &ReadAt<'_>,
    tree_read: &ReadAt<'_>,
    tree_write: &WriteAt<'_>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(), ImageError> {
    let root = params.walk(
        data_read,
        tree_read,
        &|blocks, offset, _| tree_write(blocks, offset),
        progress,
    )?;
    params.root_hash = root;
    Ok(())
}

/// Check that the stored tree is exactly the tree of the data and that its
/// root is the signed root hash. Every level is recomputed from the level
/// below as stored, and compared byte for byte, padding included.
pub(crate) fn verify_tree(
    params: &VerityParams,
    data_read: &ReadAt<'_>,
    tree_read: &ReadAt<'_>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(), ImageError> {
    let compare = |computed: &[u8], offset: u64, level: usize| {
        let mut stored = vec![0u8; computed.len()];
        tree_read(&mut stored, offset)?;
        if stored != computed {
            let block = offset / u64::from(params.hash_block_size);
            return Err(ImageError::Verity(format!(
                "hash block {block} (level {level}) does not match the {} below it",
                if level == 0 {
                    "rootfs data"
                } else {
                    "tree level"
                }
            )));
        }
        Ok(())
    };
    let root = params.walk(data_read, tree_read, &compare, progress)?;
    if root != params.root_hash {
        return Err(ImageError::Verity(
            "root hash does not match the signed manifest".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn params(blocks: u64) -> VerityParams {
        VerityParams::new(blocks * 4096, 0, vec![7; 32]).unwrap()
    }

    #[test]
    fn geometry_matches_the_kernel_formula() {
        // 1 block: no levels; 2..=128 blocks: one level of one block;
        // 129 blocks: two level-0 blocks and one level-1 block.
        assert_eq!(params(1).tree_size(), 0);
        assert_eq!(params(2).tree_size(), 4096);
        assert_eq!(params(128).tree_size(), 4096);
        assert_eq!(params(129).tree_size(), 3 * 4096);
        let l = params(129).levels();
        assert_eq!(
            l[1],
            Level {
                start: 0,
                blocks: 1
            }
        );
        assert_eq!(
            l[0],
            Level {
                start: 4096,
                blocks: 2
            }
        );
        // 1 GiB: 262144 blocks -> 2048 + 16 + 1 hash blocks.
        assert_eq!(params(262_144).tree_size(), (2048 + 16 + 1) * 4096);
    }

    fn build_and_verify(blocks: u64) {
        let data: Vec<u8> = (0..blocks * 4096).map(|i| (i * 31 % 251) as u8).collect();
        let mut p = params(blocks);
        let tree = Mutex::new(vec![0u8; p.tree_size() as usize]);
        let data_read = |buf: &mut [u8], off: u64| {
            buf.copy_from_slice(&data[off as usize..off as usize + buf.len()]);
            Ok(())
        };
        let tree_read = |buf: &mut [u8], off: u64| {
            let t = tree.lock().unwrap();
            buf.copy_from_slice(&t[off as usize..off as usize + buf.len()]);
            Ok(())
        };
        let tree_write = |buf: &[u8], off: u64| {
            tree.lock().unwrap()[off as usize..off as usize + buf.len()].copy_from_slice(buf);
            Ok(())
        };
        build_tree(&mut p, &data_read, &tree_read, &tree_write, &|_| {}).unwrap();
        verify_tree(&p, &data_read, &tree_read, &|_| {}).unwrap();
        // Any change to the data is caught.
        let mut bad = data.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let bad_read = |buf: &mut [u8], off: u64| {
            buf.copy_from_slice(&bad[off as usize..off as usize + buf.len()]);
            Ok(())
        };
        assert!(matches!(
            verify_tree(&p, &bad_read, &tree_read, &|_| {}),
            Err(ImageError::Verity(_))
        ));
    }

    #[test]
    fn tree_round_trips_for_edge_sizes() {
        for blocks in [1, 2, 127, 128, 129, 1025, 16_385] {
            build_and_verify(blocks);
        }
    }
}
