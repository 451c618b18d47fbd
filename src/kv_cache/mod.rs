//! The paged KV cache's bookkeeping: a block allocator with reference counts (so
//! forked sequences can share blocks), the block manager that maps each
//! sequence's positions to slots, and the prefix cache. The pools the blocks
//! index live with the model (`model::KvPools`); this module knows
//! only block ids.

pub mod block_manager;
pub mod prefix_cache;

/// Hands out block ids; a block returns to the free list when its last holder frees it.
#[derive(Debug, Clone)]
pub struct BlockAllocator {
    free: Vec<u32>,
    ref_counts: Vec<u32>,
}

impl BlockAllocator {
    pub fn new(num_blocks: usize) -> BlockAllocator {
        // Reversed so blocks are handed out in increasing order (easier to read in tests).
        BlockAllocator {
            free: (0..num_blocks as u32).rev().collect(),
            ref_counts: vec![0; num_blocks],
        }
    }

    pub fn num_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    pub fn allocate(&mut self) -> Option<u32> {
        let block = self.free.pop()?;
        self.ref_counts[block as usize] = 1;
        Some(block)
    }

    /// Another holder for `block` (a fork sharing it).
    pub fn share(&mut self, block: u32) {
        debug_assert!(self.ref_counts[block as usize] > 0, "sharing a free block");
        self.ref_counts[block as usize] += 1;
    }

    /// Takes `block` back from outside the free list (a cached block being reused).
    pub fn reclaim(&mut self, block: u32) {
        debug_assert_eq!(self.ref_counts[block as usize], 0);
        self.ref_counts[block as usize] = 1;
    }

    /// Drops the last reference without returning the block to the free list
    /// (the prefix cache keeps it).
    pub fn drop_to_zero(&mut self, block: u32) {
        debug_assert_eq!(self.ref_counts[block as usize], 1);
        self.ref_counts[block as usize] = 0;
    }

    pub fn ref_count(&self, block: u32) -> u32 {
        self.ref_counts[block as usize]
    }

    pub fn release(&mut self, block: u32) {
        let rc = &mut self.ref_counts[block as usize];
        debug_assert!(*rc > 0, "double free of block {block}");
        *rc = rc.saturating_sub(1);
        if *rc == 0 {
            self.free.push(block);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_share_release() {
        let mut a = BlockAllocator::new(3);
        let (x, y) = (a.allocate().unwrap(), a.allocate().unwrap());
        assert_eq!((x, y), (0, 1), "blocks come out in order");
        a.share(x);
        assert_eq!(a.ref_count(x), 2);
        a.release(x);
        assert_eq!(a.num_free(), 1, "a shared block stays allocated");
        a.release(x);
        a.release(y);
        assert_eq!(a.num_free(), 3);
        assert!(a.allocate().is_some() && a.allocate().is_some() && a.allocate().is_some());
        assert!(a.allocate().is_none());
    }
}
