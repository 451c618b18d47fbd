//! Automatic prefix caching: a full block is named by a hash of every token up
//! to its end, so two prompts sharing a prefix share its blocks. Cached blocks
//! nobody holds stay cached until the allocator needs them back, oldest first.

use std::collections::{BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

/// The hash of a full block: chained through the previous block's hash, so it
/// names the whole prefix and not just this block's tokens.
pub fn block_hash(previous: Option<u64>, tokens: &[u32]) -> u64 {
    // DefaultHasher::new() has fixed keys: the same prefix hashes the same in every run.
    let mut h = DefaultHasher::new();
    previous.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

#[derive(Debug, Default)]
pub struct PrefixCache {
    by_hash: HashMap<u64, u32>,
    hash_of: HashMap<u32, u64>,
    /// Cached blocks with no holder, by last use: `(tick, block)`.
    evictable: BTreeSet<(u64, u32)>,
    last_use: HashMap<u32, u64>,
    tick: u64,
    pub hits: u64,
    pub queries: u64,
}

impl PrefixCache {
    pub fn lookup(&mut self, hash: u64) -> Option<u32> {
        self.queries += 1;
        let block = self.by_hash.get(&hash).copied();
        if block.is_some() {
            self.hits += 1;
        }
        block
    }

    /// Names `block` by `hash` (first writer wins: an equal block already cached stays the one found).
    pub fn insert(&mut self, hash: u64, block: u32) {
        if self.hash_of.contains_key(&block) || self.by_hash.contains_key(&hash) {
            return;
        }
        self.by_hash.insert(hash, block);
        self.hash_of.insert(block, hash);
    }

    pub fn is_cached(&self, block: u32) -> bool {
        self.hash_of.contains_key(&block)
    }

    /// The last holder let go of a cached block: keep it, evictable.
    pub fn park(&mut self, block: u32) {
        self.tick += 1;
        self.evictable.insert((self.tick, block));
        self.last_use.insert(block, self.tick);
    }

    /// A parked block is held again.
    pub fn unpark(&mut self, block: u32) {
        if let Some(t) = self.last_use.remove(&block) {
            self.evictable.remove(&(t, block));
        }
    }

    pub fn num_evictable(&self) -> usize {
        self.evictable.len()
    }

    /// Forgets the least recently used parked block and returns it for reuse.
    pub fn evict(&mut self) -> Option<u32> {
        let (t, block) = self.evictable.pop_first()?;
        debug_assert_eq!(self.last_use.get(&block), Some(&t));
        self.last_use.remove(&block);
        if let Some(h) = self.hash_of.remove(&block) {
            self.by_hash.remove(&h);
        }
        Some(block)
    }
}
