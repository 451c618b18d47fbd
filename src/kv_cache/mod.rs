//! The paged KV cache: per layer a K and a V pool of fixed-size blocks, a block
//! allocator with reference counts (so forked sequences can share blocks), and
//! per-sequence block tables mapping positions to slots.

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

/// The blocks holding one sequence's positions, in order.
#[derive(Debug, Clone, Default)]
pub struct BlockTable {
    pub blocks: Vec<u32>,
}

impl BlockTable {
    /// Positions this table can hold.
    pub fn capacity(&self, block_size: usize) -> usize {
        self.blocks.len() * block_size
    }

    /// Grows the table to hold `len` positions. On failure nothing is allocated.
    pub fn reserve(
        &mut self,
        len: usize,
        block_size: usize,
        alloc: &mut BlockAllocator,
    ) -> Result<()> {
        let needed = len.div_ceil(block_size).saturating_sub(self.blocks.len());
        if needed > alloc.num_free() {
            return Err(Error::OutOfBlocks(format!(
                "{needed} more blocks needed for {len} tokens, {} free of {}",
                alloc.num_free(),
                alloc.num_blocks()
            )));
        }
        for _ in 0..needed {
            // Cannot fail: checked above.
            if let Some(b) = alloc.allocate() {
                self.blocks.push(b);
            }
        }
        Ok(())
    }

    /// The cache slot of `position`, which must be within capacity.
    pub fn slot(&self, position: usize, block_size: usize) -> i64 {
        (self.blocks[position / block_size] as usize * block_size + position % block_size) as i64
    }

    pub fn release(&mut self, alloc: &mut BlockAllocator) {
        for b in self.blocks.drain(..) {
            alloc.release(b);
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
        let mut a = BlockAllocator::new(4);
        let mut t = BlockTable::default();
        t.reserve(17, 8, &mut a).unwrap();
        assert_eq!(t.blocks, vec![0, 1, 2]);
        assert_eq!(a.num_free(), 1);
        assert_eq!(t.slot(9, 8), 9);
        let mut fork = t.clone();
        fork.blocks.iter().for_each(|&b| a.share(b));
        assert_eq!(a.ref_count(1), 2);
        t.release(&mut a);
        assert_eq!(
            a.num_free(),
            1,
            "blocks shared with the fork stay allocated"
        );
        fork.release(&mut a);
        assert_eq!(a.num_free(), 4);
    }

    #[test]
    fn reserve_fails_without_allocating() {
        let mut a = BlockAllocator::new(2);
        let mut t = BlockTable::default();
        assert!(matches!(
            t.reserve(40, 16, &mut a),
            Err(Error::OutOfBlocks(_))
        ));
        assert_eq!(a.num_free(), 2);
        assert!(t.blocks.is_empty());
    }
}
