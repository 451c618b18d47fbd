//! Which blocks each sequence holds. Forks share blocks by reference count and
//! copy a shared block before writing into it (copy-on-write); with prefix
//! caching, full blocks are found again by the hash of their prefix.

use std::collections::HashMap;

use crate::error::{Error, Result};

use super::prefix_cache::{block_hash, PrefixCache};
use super::BlockAllocator;

pub type SeqId = u64;

#[derive(Debug, Default, Clone)]
struct SeqBlocks {
    blocks: Vec<u32>,
    /// Hash of each full block that has been registered (prefix caching).
    hashes: Vec<u64>,
}

#[derive(Debug)]
pub struct BlockManager {
    block_size: usize,
    allocator: BlockAllocator,
    prefix: Option<PrefixCache>,
    seqs: HashMap<SeqId, SeqBlocks>,
    /// Copy-on-write copies `(src, dst)` the next step must run before writing.
    pending_copies: Vec<(u32, u32)>,
}

impl BlockManager {
    pub fn new(num_blocks: usize, block_size: usize, prefix_caching: bool) -> BlockManager {
        BlockManager {
            block_size,
            allocator: BlockAllocator::new(num_blocks),
            prefix: prefix_caching.then(PrefixCache::default),
            seqs: HashMap::new(),
            pending_copies: Vec::new(),
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.allocator.num_blocks()
    }

    /// Blocks that can be handed out now: free ones plus cached ones nobody holds.
    pub fn num_available(&self) -> usize {
        self.allocator.num_free() + self.prefix.as_ref().map_or(0, PrefixCache::num_evictable)
    }

    /// Blocks held by running sequences (not free, not merely cached).
    pub fn num_used(&self) -> usize {
        self.num_blocks() - self.num_available()
    }

    pub fn prefix_cache_hit_rate(&self) -> Option<f64> {
        self.prefix.as_ref().map(|p| {
            if p.queries == 0 {
                0.0
            } else {
                p.hits as f64 / p.queries as f64
            }
        })
    }

    pub fn blocks(&self, seq: SeqId) -> &[u32] {
        self.seqs.get(&seq).map_or(&[], |s| &s.blocks)
    }

    pub fn slot(&self, seq: SeqId, position: usize) -> i64 {
        let blocks = self.blocks(seq);
        (blocks[position / self.block_size] as usize * self.block_size + position % self.block_size)
            as i64
    }

    pub fn take_pending_copies(&mut self) -> Vec<(u32, u32)> {
        std::mem::take(&mut self.pending_copies)
    }

    fn allocate_block(&mut self) -> Option<u32> {
        if let Some(b) = self.allocator.allocate() {
            return Some(b);
        }
        let b = self.prefix.as_mut()?.evict()?;
        self.allocator.reclaim(b);
        Some(b)
    }

    fn hold(&mut self, block: u32) {
        if self.allocator.ref_count(block) == 0 {
            // A parked cached block comes back into use.
            if let Some(p) = self.prefix.as_mut() {
                p.unpark(block);
            }
            self.allocator.reclaim(block);
        } else {
            self.allocator.share(block);
        }
    }

    fn release(&mut self, block: u32) {
        let cached = self.prefix.as_ref().is_some_and(|p| p.is_cached(block));
        if cached && self.allocator.ref_count(block) == 1 {
            self.allocator.drop_to_zero(block);
            if let Some(p) = self.prefix.as_mut() {
                p.park(block);
            }
        } else {
            self.allocator.release(block);
        }
    }

    /// Starts `seq` with `tokens` (its prompt, or prompt and output when resuming
    /// after preemption). Returns how many leading tokens are already in the
    /// cache (prefix caching); at least the last token is always left to compute,
    /// since its logits are needed. Nothing is held on failure.
    pub fn allocate(&mut self, seq: SeqId, tokens: &[u32]) -> Result<usize> {
        if tokens.is_empty() {
            return Err(Error::invalid("a sequence needs at least one token"));
        }
        let bs = self.block_size;
        let mut entry = SeqBlocks::default();
        if self.prefix.is_some() {
            let full = (tokens.len() - 1) / bs; // never the block holding the last token
            let mut prev = None;
            for chunk in tokens.chunks(bs).take(full) {
                let h = block_hash(prev, chunk);
                let Some(block) = self.prefix.as_mut().and_then(|p| p.lookup(h)) else {
                    break;
                };
                self.hold(block);
                entry.blocks.push(block);
                entry.hashes.push(h);
                prev = Some(h);
            }
        }
        let cached_tokens = entry.blocks.len() * bs;
        let needed = tokens.len().div_ceil(bs) - entry.blocks.len();
        if needed > self.num_available() {
            for b in entry.blocks {
                self.release(b);
            }
            return Err(Error::OutOfBlocks(format!(
                "{needed} blocks needed, {} available",
                self.num_available()
            )));
        }
        for _ in 0..needed {
            let b = self
                .allocate_block()
                .ok_or_else(|| Error::OutOfBlocks("allocator out of sync".into()))?;
            entry.blocks.push(b);
        }
        self.seqs.insert(seq, entry);
        Ok(cached_tokens)
    }

    /// Blocks `seq` needs to hold `len` tokens and write from `write_from` on
    /// (new blocks plus copies of shared blocks it will write into).
    pub fn blocks_needed(&self, seq: SeqId, len: usize, write_from: usize) -> usize {
        let Some(s) = self.seqs.get(&seq) else {
            return len.div_ceil(self.block_size);
        };
        let new = len.div_ceil(self.block_size).saturating_sub(s.blocks.len());
        let first = write_from / self.block_size;
        let shared = s
            .blocks
            .iter()
            .skip(first)
            .filter(|&&b| self.allocator.ref_count(b) > 1)
            .count();
        new + shared
    }

    /// Makes `seq` able to hold `len` tokens, with every block it writes from
    /// `write_from` on its own (copying shared ones). Nothing changes on failure.
    pub fn prepare_write(&mut self, seq: SeqId, len: usize, write_from: usize) -> Result<()> {
        let needed = self.blocks_needed(seq, len, write_from);
        if needed > self.num_available() {
            return Err(Error::OutOfBlocks(format!(
                "{needed} blocks needed, {} available",
                self.num_available()
            )));
        }
        let mut s = self.seqs.remove(&seq).unwrap_or_default();
        let first = write_from / self.block_size;
        for i in first..s.blocks.len() {
            let old = s.blocks[i];
            if self.allocator.ref_count(old) > 1 {
                let new = self
                    .allocate_block()
                    .ok_or_else(|| Error::OutOfBlocks("allocator out of sync".into()))?;
                self.pending_copies.push((old, new));
                self.release(old);
                s.blocks[i] = new;
                s.hashes.truncate(i);
            }
        }
        while s.blocks.len() < len.div_ceil(self.block_size) {
            let b = self
                .allocate_block()
                .ok_or_else(|| Error::OutOfBlocks("allocator out of sync".into()))?;
            s.blocks.push(b);
        }
        self.seqs.insert(seq, s);
        Ok(())
    }

    /// Registers the full blocks among `seq`'s first `computed` tokens with the
    /// prefix cache, so later prompts can reuse them.
    pub fn register_computed(&mut self, seq: SeqId, tokens: &[u32], computed: usize) {
        let Some(prefix) = self.prefix.as_mut() else {
            return;
        };
        let Some(s) = self.seqs.get_mut(&seq) else {
            return;
        };
        let bs = self.block_size;
        let full = computed.min(tokens.len()) / bs;
        while s.hashes.len() < full.min(s.blocks.len()) {
            let i = s.hashes.len();
            let h = block_hash(s.hashes.last().copied(), &tokens[i * bs..(i + 1) * bs]);
            prefix.insert(h, s.blocks[i]);
            s.hashes.push(h);
        }
    }

    /// `child` starts as a copy of `parent`, sharing every block.
    pub fn fork(&mut self, parent: SeqId, child: SeqId) {
        let s = self.seqs.get(&parent).cloned().unwrap_or_default();
        for &b in &s.blocks {
            self.allocator.share(b);
        }
        self.seqs.insert(child, s);
    }

    pub fn free(&mut self, seq: SeqId) {
        if let Some(s) = self.seqs.remove(&seq) {
            for b in s.blocks {
                self.release(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fork_shares_then_copies_on_write() {
        let mut m = BlockManager::new(8, 4, false);
        assert_eq!(m.allocate(1, &[1, 2, 3, 4, 5, 6]).unwrap(), 0);
        assert_eq!(m.blocks(1), &[0, 1]);
        m.fork(1, 2);
        assert_eq!(m.num_available(), 6, "the fork holds no new block");
        // The child writes position 6, in the shared second block: it gets a copy.
        m.prepare_write(2, 7, 6).unwrap();
        assert_eq!(m.blocks(2), &[0, 2]);
        assert_eq!(m.take_pending_copies(), vec![(1, 2)]);
        // The parent now owns block 1 alone: no copy for it.
        m.prepare_write(1, 7, 6).unwrap();
        assert_eq!(m.blocks(1), &[0, 1]);
        assert!(m.take_pending_copies().is_empty());
        m.free(1);
        m.free(2);
        assert_eq!(m.num_available(), 8);
    }

    #[test]
    fn prefix_blocks_are_reused_and_evicted_lru() {
        let mut m = BlockManager::new(4, 2, true);
        let a = [1, 2, 3, 4, 5];
        assert_eq!(m.allocate(1, &a).unwrap(), 0);
        m.register_computed(1, &a, 5);
        m.free(1);
        assert_eq!(
            m.num_available(),
            4,
            "cached blocks still count as available"
        );
        // Same first four tokens: two blocks found in the cache.
        assert_eq!(m.allocate(2, &[1, 2, 3, 4, 9]).unwrap(), 4);
        assert_eq!(&m.blocks(2)[..2], &[0, 1]);
        // Whole prompt cached: the block with the last token is still computed.
        m.free(2);
        assert_eq!(m.allocate(3, &[1, 2, 3, 4]).unwrap(), 2);
        m.free(3);
        // Filling the cache with other tokens evicts the cached blocks, oldest first.
        m.allocate(4, &[7, 7, 7, 7, 7, 7, 7, 7]).unwrap();
        assert_eq!(m.num_available(), 0);
        m.free(4);
        assert_eq!(
            m.allocate(5, &[1, 2, 3, 4, 5]).unwrap(),
            0,
            "evicted prefixes are gone"
        );
    }

    #[test]
    fn failure_leaves_nothing_held() {
        let mut m = BlockManager::new(2, 4, true);
        assert!(m.allocate(1, &[1; 12]).is_err());
        assert_eq!(m.num_available(), 2);
        m.allocate(1, &[1; 8]).unwrap();
        m.fork(1, 2);
        assert!(m.prepare_write(2, 9, 8).is_err());
        assert_eq!(m.blocks(2), m.blocks(1));
    }
}
