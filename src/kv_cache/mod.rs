//! The paged KV cache: per layer a K and a V pool of fixed-size blocks, a block
//! allocator with reference counts (so forked sequences can share blocks), and
//! the block manager that maps each sequence's positions to slots.

pub mod block_manager;
pub mod prefix_cache;
pub mod sizing;

use crate::backend::{Backend, KvPoolShape};
use crate::error::{Error, Result};
use crate::model::Model;

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

/// The K and V pools of every layer, on the model's backend.
pub struct KvCache<B: Backend> {
    pub pools: Vec<(B::KvPool, B::KvPool)>,
    pub shape: KvPoolShape,
}

impl<B: Backend> KvCache<B> {
    pub fn new(model: &Model<B>, num_blocks: usize, block_size: usize) -> Result<KvCache<B>> {
        if ![8, 16, 32].contains(&block_size) {
            return Err(Error::invalid(format!(
                "block size must be 8, 16 or 32, got {block_size}"
            )));
        }
        if num_blocks == 0 {
            return Err(Error::invalid("the KV cache needs at least one block"));
        }
        let shape = model.kv_pool_shape(num_blocks, block_size);
        let be = model.backend();
        let pools = (0..model.config.num_layers)
            .map(|_| Ok((be.alloc_kv_pool(shape)?, be.alloc_kv_pool(shape)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache { pools, shape })
    }

    pub fn block_size(&self) -> usize {
        self.shape.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.shape.num_blocks
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
