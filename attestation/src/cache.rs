//! A bounded cache of certificate paths already verified, for long-running
//! verifiers that see the same node's chain again and again (a node's EK
//! chain does not change between its evidence documents).
//!
//! - **Keyed by the exact bytes** of every input: SHA-256 over a domain tag
//!   and the length-prefixed DER of the leaf, of each offered intermediate (in
//!   order) and of each trust anchor (in order). A different byte anywhere,
//!   another order, another anchor set: another key, a miss.
//! - **Only successes are stored.** A path that fails to build, or input that
//!   does not parse, is verified again next time.
//! - **What is cached is the path, not the verdict on time.** Validity
//!   windows are checked against the verification time on every use, hit or
//!   miss, so a certificate that has expired since fails on a hit too.
//! - **Bounded**: at most `capacity` entries; inserting into a full cache
//!   evicts the least recently used entry.
//!
//! Trust anchors read from a PEM file (policy `node.ek_roots`) are cached the
//! same way, keyed by the file's bytes, after their self-signatures verified.
//!
//! The cache is an explicit object: a one-shot CLI run passes none (nothing
//! would be reused), a long-running verifier keeps one and passes it to
//! [`crate::evidence::appraise::verify_document_with`]. It is `Sync`: one
//! cache may serve several threads.

use crate::roots::TrustStore;
use crate::x509::{build_path, CertPath, Certificate};
use crate::Error;
use ring::digest::{Context, SHA256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Capacity of [`ChainCache::default`].
pub const DEFAULT_CAPACITY: usize = 1024;

/// Hits, misses and evictions since the cache was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

/// The cache key: SHA-256 over the domain tag and the inputs' exact bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key([u8; 32]);

#[derive(Debug, Clone)]
enum Value {
    Path(Arc<CertPath>),
    Anchors(Arc<TrustStore>),
}

#[derive(Debug)]
struct Slot {
    value: Value,
    last_used: u64,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<Key, Slot>,
    tick: u64,
    stats: CacheStats,
}

/// A bounded, thread-safe cache of verified certificate paths (module docs).
#[derive(Debug)]
pub struct ChainCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

impl Default for ChainCache {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl ChainCache {
    /// A cache holding at most `capacity` entries (0: caches nothing).
    pub fn new(capacity: usize) -> Self {
        ChainCache {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn stats(&self) -> CacheStats {
        self.lock().stats
    }

    /// The path from `leaf` through `pool` to one of `anchors`, as
    /// [`crate::x509::build_path`] builds it (every signature verified),
    /// taken from the cache when these exact certificates were verified
    /// before. Validity is not part of it: check the path's certificates
    /// against the verification time ([`crate::x509::validity_check`]).
    pub fn verified_path(
        &self,
        leaf: &Certificate,
        pool: &[Certificate],
        anchors: &[Certificate],
    ) -> Result<Arc<CertPath>, String> {
        let pool_der: Vec<&[u8]> = pool.iter().map(|c| &c.der[..]).collect();
        let key = path_key(&leaf.der, &pool_der, anchors);
        if let Some(p) = self.get_path(&key) {
            return Ok(p);
        }
        let path = Arc::new(build_path(leaf, pool, anchors)?);
        self.insert(key, Value::Path(path.clone()));
        Ok(path)
    }

    /// The trust anchors of a PEM file (self-issued certificates, each
    /// self-signature verified; [`TrustStore::from_pem`]), cached by the
    /// file's exact bytes.
    pub fn trust_store(&self, pem: &[u8]) -> Result<Arc<TrustStore>, Error> {
        let key = hash(b"bulwark chain cache v1: trust store", &[&[pem]]);
        {
            let mut g = self.lock();
            let g = &mut *g;
            if let Some(slot) = g.map.get_mut(&key) {
                if let Value::Anchors(t) = &slot.value {
                    g.tick += 1;
                    slot.last_used = g.tick;
                    g.stats.hits += 1;
                    return Ok(t.clone());
                }
            }
            g.stats.misses += 1;
        }
        let store = Arc::new(TrustStore::from_pem(pem)?);
        self.insert(key, Value::Anchors(store.clone()));
        Ok(store)
    }

    /// A cached path for this key (counts a hit or a miss).
    pub(crate) fn get_path(&self, key: &Key) -> Option<Arc<CertPath>> {
        let mut g = self.lock();
        let g = &mut *g;
        if let Some(slot) = g.map.get_mut(key) {
            if let Value::Path(p) = &slot.value {
                g.tick += 1;
                slot.last_used = g.tick;
                g.stats.hits += 1;
                return Some(p.clone());
            }
        }
        g.stats.misses += 1;
        None
    }

    /// Store a path verified from exactly the inputs `key` was made from.
    pub(crate) fn insert_path(&self, key: Key, path: Arc<CertPath>) {
        self.insert(key, Value::Path(path));
    }

    fn insert(&self, key: Key, value: Value) {
        if self.capacity == 0 {
            return;
        }
        let mut g = self.lock();
        let g = &mut *g;
        if !g.map.contains_key(&key) && g.map.len() >= self.capacity {
            // Least recently used; a linear scan, paid only on an insertion
            // into a full cache (which follows a full verification anyway).
            if let Some(old) = g
                .map
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| *k)
            {
                g.map.remove(&old);
                g.stats.evictions += 1;
            }
        }
        g.tick += 1;
        let last_used = g.tick;
        g.map.insert(key, Slot { value, last_used });
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-made entry
        // (entries are inserted whole), so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The key of a path: leaf DER, intermediates' DER, anchors' DER.
pub(crate) fn path_key(leaf_der: &[u8], pool_der: &[&[u8]], anchors: &[Certificate]) -> Key {
    let anchor_der: Vec<&[u8]> = anchors.iter().map(|c| &c.der[..]).collect();
    hash(
        b"bulwark chain cache v1: path",
        &[&[leaf_der], pool_der, &anchor_der],
    )
}

/// SHA-256 over a domain tag and groups of byte strings, every group and
/// every string length-prefixed, so no two different inputs share a key.
fn hash(domain: &[u8], groups: &[&[&[u8]]]) -> Key {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&(domain.len() as u64).to_be_bytes());
    ctx.update(domain);
    for g in groups {
        ctx.update(&(g.len() as u64).to_be_bytes());
        for part in *g {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Key(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x509::validity_check;
    use crate::{Outcome, VerificationTime};
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

    struct Pki {
        root: Certificate,
        intermediate: Certificate,
        leaves: Vec<Certificate>,
    }

    /// Root → intermediate → `n` leaves; the leaves valid 2020..2030.
    fn pki(n: usize) -> Pki {
        let ca = |cn: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2100, 1, 1);
            p
        };
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let root = ca("Root").self_signed(&root_key).unwrap();
        let int_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let int = ca("Intermediate")
            .signed_by(&int_key, &root, &root_key)
            .unwrap();
        let leaves = (0..n)
            .map(|i| {
                let k = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
                let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
                p.distinguished_name
                    .push(DnType::CommonName, format!("Leaf {i}"));
                p.not_before = rcgen::date_time_ymd(2020, 1, 1);
                p.not_after = rcgen::date_time_ymd(2030, 1, 1);
                let c = p.signed_by(&k, &int, &int_key).unwrap();
                Certificate::from_der(c.der()).unwrap()
            })
            .collect();
        Pki {
            root: Certificate::from_der(root.der()).unwrap(),
            intermediate: Certificate::from_der(int.der()).unwrap(),
            leaves,
        }
    }

    fn at(y: i32) -> VerificationTime {
        VerificationTime::from_unix_seconds(rcgen::date_time_ymd(y, 6, 1).unix_timestamp())
    }

    #[test]
    fn a_hit_is_the_path_a_miss_builds() {
        let p = pki(1);
        let cache = ChainCache::new(4);
        let pool = [p.intermediate.clone()];
        let anchors = [p.root.clone()];
        let miss = cache.verified_path(&p.leaves[0], &pool, &anchors).unwrap();
        let hit = cache.verified_path(&p.leaves[0], &pool, &anchors).unwrap();
        let fresh = build_path(&p.leaves[0], &pool, &anchors).unwrap();
        assert_eq!(miss.describe(), fresh.describe());
        assert_eq!(hit.describe(), fresh.describe());
        let ders = |c: &CertPath| c.certs.iter().map(|c| c.der.clone()).collect::<Vec<_>>();
        assert_eq!(ders(&hit), ders(&fresh));
        assert_eq!(
            cache.stats(),
            CacheStats {
                hits: 1,
                misses: 1,
                evictions: 0
            }
        );
    }

    #[test]
    fn a_changed_byte_misses_and_failures_are_not_kept() {
        let p = pki(1);
        let cache = ChainCache::new(4);
        let pool = [p.intermediate.clone()];
        let anchors = [p.root.clone()];
        cache.verified_path(&p.leaves[0], &pool, &anchors).unwrap();
        // The leaf's signature with one bit flipped: still parses, another
        // key, and the path does not verify.
        let mut der = p.leaves[0].der.clone();
        let last = der.len() - 1;
        der[last] ^= 1;
        let bad = Certificate::from_der(&der).unwrap();
        for _ in 0..2 {
            assert!(cache.verified_path(&bad, &pool, &anchors).is_err());
        }
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.stats().misses, 3);
        assert_eq!(cache.stats().hits, 0);
        // Without the intermediate, or with another anchor: other keys.
        assert!(cache.verified_path(&p.leaves[0], &[], &anchors).is_err());
        let other = pki(0);
        assert!(cache
            .verified_path(&p.leaves[0], &pool, std::slice::from_ref(&other.root))
            .is_err());
        assert_eq!(cache.stats().hits, 0);
        // Key material differs with every input, and with their order.
        let (l, i) = (&p.leaves[0].der[..], &p.intermediate.der[..]);
        let k = path_key(l, &[i], &anchors);
        assert_ne!(k, path_key(l, &[], &anchors));
        assert_ne!(k, path_key(l, &[i, i], &anchors));
        assert_ne!(k, path_key(l, &[i], &[]));
        assert_ne!(path_key(l, &[i, l], &[]), path_key(l, &[l, i], &[]));
        // Moving a byte from one input to the next is another key.
        assert_ne!(
            path_key(&l[..10], &[&l[10..]], &[]),
            path_key(&l[..11], &[&l[11..]], &[])
        );
    }

    #[test]
    fn capacity_bounds_the_cache_least_recently_used_goes_first() {
        let p = pki(4);
        let cache = ChainCache::new(2);
        let pool = [p.intermediate.clone()];
        let anchors = [p.root.clone()];
        let get = |i: usize| cache.verified_path(&p.leaves[i], &pool, &anchors).unwrap();
        get(0);
        get(1);
        get(0); // 0 is now the most recently used
        get(2); // evicts 1
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.stats().evictions, 1);
        let hits = cache.stats().hits;
        get(0);
        assert_eq!(cache.stats().hits, hits + 1, "0 was kept");
        get(1);
        assert_eq!(cache.stats().hits, hits + 1, "1 was evicted");
        for i in 0..4 {
            get(i);
            assert!(cache.len() <= 2);
        }
        let none = ChainCache::new(0);
        none.verified_path(&p.leaves[0], &pool, &anchors).unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn an_expired_certificate_fails_on_a_hit() {
        let p = pki(1);
        let cache = ChainCache::new(4);
        let pool = [p.intermediate.clone()];
        let anchors = [p.root.clone()];
        let path = cache.verified_path(&p.leaves[0], &pool, &anchors).unwrap();
        let ok = validity_check("v", &path.certs, at(2025));
        assert_eq!(ok.result, Outcome::Passed);
        let path = cache.verified_path(&p.leaves[0], &pool, &anchors).unwrap();
        assert_eq!(cache.stats().hits, 1);
        let late = validity_check("v", &path.certs, at(2031));
        assert_eq!(late.result, Outcome::Failed);
        assert!(late.detail.contains("expired"), "{}", late.detail);
        let early = validity_check("v", &path.certs, at(2019));
        assert_eq!(early.result, Outcome::Failed);
    }

    #[test]
    fn trust_stores_are_cached_by_their_bytes() {
        let p = pki(0);
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &p.root.der)
        );
        let cache = ChainCache::new(4);
        let a = cache.trust_store(pem.as_bytes()).unwrap();
        let b = cache.trust_store(pem.as_bytes()).unwrap();
        assert_eq!(a.anchors, b.anchors);
        assert_eq!(a.anchors.len(), 1);
        assert_eq!((cache.stats().hits, cache.stats().misses), (1, 1));
        // A file that is not a trust store is an error, and is not kept.
        assert!(cache.trust_store(b"nothing").is_err());
        assert!(cache.trust_store(b"nothing").is_err());
        assert_eq!(cache.len(), 1);
    }
}
