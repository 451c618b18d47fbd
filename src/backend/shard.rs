//! A rank's place in a tensor-parallel group (Megatron-style sharding).

use std::ops::Range;

/// Rank `rank` of `world` ranks; `Shard::SINGLE` is the unsharded model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Shard {
    pub const SINGLE: Shard = Shard { rank: 0, world: 1 };

    /// This rank's equal part of `0..len` (callers check that `world` divides `len`).
    pub fn part(&self, len: usize) -> Range<usize> {
        let each = len / self.world;
        self.rank * each..(self.rank + 1) * each
    }

    /// This rank's part of `0..len` in parts of `len.div_ceil(world)`: the last
    /// ranks' parts may reach past `len` (they are padded).
    pub fn padded_part(&self, len: usize) -> Range<usize> {
        let each = len.div_ceil(self.world);
        self.rank * each..(self.rank + 1) * each
    }
}
