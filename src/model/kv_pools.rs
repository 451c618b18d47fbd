//! The device memory of the paged KV cache: per layer a K and a V pool of
//! fixed-size blocks on the model's backend, shaped by the model's config.
//! Which block belongs to whom is the kv_cache module's bookkeeping.

use crate::backend::{Backend, KvPoolShape};
use crate::error::{Error, Result};

use super::Model;

/// The K and V pools of every layer, on the model's backend.
pub struct KvPools<B: Backend> {
    pub pools: Vec<(B::KvPool, B::KvPool)>,
    pub shape: KvPoolShape,
}

impl<B: Backend> KvPools<B> {
    pub fn new(model: &Model<B>, num_blocks: usize, block_size: usize) -> Result<KvPools<B>> {
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
        let pools = model
            .kv_scales
            .iter()
            .map(|&(k_scale, v_scale)| {
                Ok((
                    be.alloc_kv_pool(shape, k_scale)?,
                    be.alloc_kv_pool(shape, v_scale)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(KvPools { pools, shape })
    }

    pub fn block_size(&self) -> usize {
        self.shape.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.shape.num_blocks
    }
}
