//! Megatron-style tensor parallelism at load: which rows and columns of each
//! weight a rank keeps. Column-parallel (split output rows): q/k/v by heads,
//! gate/up, the LM head by vocabulary. Row-parallel (split input columns, the
//! partial sums all-reduced): o_proj and down_proj. KV heads are replicated when
//! there are more ranks than KV heads (vLLM does the same).

use std::ops::Range;

use crate::backend::{HostTensor, Shard};
use crate::config::ModelConfig;
use crate::error::{Error, Result};

use super::weights::TensorSource;

/// The largest tensor parallel size served (a bound on the threads and the
/// per-rank copies a flag can ask for).
pub const MAX_TENSOR_PARALLEL_SIZE: usize = 64;

/// Whether `world` ranks can split `c`, as vLLM checks it: the attention heads
/// and the MLP's width divide by `world`, and the KV heads divide by `world` or
/// `world` by them (replicated).
pub fn check_tensor_parallel(c: &ModelConfig, world: usize) -> Result<()> {
    if world == 0 || world > MAX_TENSOR_PARALLEL_SIZE {
        return Err(Error::invalid(format!(
            "tensor_parallel_size must be between 1 and {MAX_TENSOR_PARALLEL_SIZE}, got {world}"
        )));
    }
    let (heads, kv) = (c.num_heads, c.num_kv_heads);
    if !heads.is_multiple_of(world) {
        return Err(Error::invalid(format!(
            "Total number of attention heads ({heads}) must be divisible by tensor parallel \
             size ({world})"
        )));
    }
    if !kv.is_multiple_of(world) && !world.is_multiple_of(kv) {
        return Err(Error::invalid(format!(
            "Total number of key-value heads ({kv}) must be divisible by tensor parallel \
             size ({world}), or tensor parallel size by it"
        )));
    }
    if !c.intermediate_size.is_multiple_of(world) {
        return Err(Error::invalid(format!(
            "intermediate_size ({}) must be divisible by tensor parallel size ({world})",
            c.intermediate_size
        )));
    }
    Ok(())
}

/// One rank's part of the model's dimensions.
#[derive(Debug, Clone)]
pub struct ShardPlan {
    pub shard: Shard,
    pub q_heads: Range<usize>,
    pub kv_heads: Range<usize>,
    pub intermediate: Range<usize>,
    /// Padded past the vocabulary on the last ranks where `world` does not divide it.
    pub vocab: Range<usize>,
}

impl ShardPlan {
    pub fn new(c: &ModelConfig, shard: Shard) -> Result<ShardPlan> {
        check_tensor_parallel(c, shard.world)?;
        let kv_heads = if c.num_kv_heads >= shard.world {
            shard.part(c.num_kv_heads)
        } else {
            // world / kv ranks share each KV head: the one their q heads read.
            let head = shard.rank * c.num_kv_heads / shard.world;
            head..head + 1
        };
        Ok(ShardPlan {
            shard,
            q_heads: shard.part(c.num_heads),
            kv_heads,
            intermediate: shard.part(c.intermediate_size),
            vocab: shard.padded_part(c.vocab_size),
        })
    }

    /// Whether this rank adds the row-parallel biases (one rank does, so the
    /// all-reduce adds them once).
    pub fn adds_row_bias(&self) -> bool {
        self.shard.rank == 0
    }
}

/// Reads tensors and keeps this rank's part of each.
pub struct ShardedSource<'a> {
    pub source: &'a dyn TensorSource,
    pub shard: Shard,
}

impl ShardedSource<'_> {
    /// All of `name` (replicated weights: norms, the embedding).
    pub fn whole(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        self.source.get(name, shape)
    }

    /// Rows `rows` (times `per` rows each) of `name`.
    pub fn rows(
        &self,
        name: &str,
        shape: &[usize],
        rows: &Range<usize>,
        per: usize,
    ) -> Result<HostTensor> {
        let t = self.source.get(name, shape)?;
        if self.shard.world == 1 {
            return Ok(t);
        }
        t.slice_rows(rows.start * per..rows.end * per)
    }

    /// Columns `cols` (times `per` columns each) of `name`.
    pub fn cols(
        &self,
        name: &str,
        shape: &[usize],
        cols: &Range<usize>,
        per: usize,
    ) -> Result<HostTensor> {
        let t = self.source.get(name, shape)?;
        if self.shard.world == 1 {
            return Ok(t);
        }
        t.slice_cols(cols.start * per..cols.end * per)
    }
}
