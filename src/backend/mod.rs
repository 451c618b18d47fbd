//! The device ops the model is written against. The model never branches on the
//! device: it calls these ops, and a backend (CPU, and CUDA with the `cuda` feature) implements them
//! over the same memory layouts, so the CPU backend is the reference for the GPU.
//!
//! Layouts (row-major; activations in f32, or in the model's 16-bit dtype where the backend keeps
//! them so: [`Backend::set_activation_dtype`]):
//! - activations `[tokens, features]`;
//! - weights `[out_features, in_features]` in their stored dtype (as Hugging Face keeps them);
//! - the fused projection `qkv` row is `[q heads | k heads | v heads] x head_dim`;
//! - a KV pool (one per layer for K, one for V) is `[num_blocks, num_kv_heads, block_size, head_dim]`
//!   in the KV cache's dtype (f32, or 16-bit or FP8 where the backend stores it: see [`Backend::kv_dtypes`]),
//!   except the CPU's K pool, whose blocks are transposed (`[head_dim, block_size]`: the layout
//!   its attention scores keys in, a position per SIMD lane, where the GPU's kernels load each key's
//!   dimensions as vectors); the CUDA tests convert with [`cpu::key_blocks_transposed`].

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod fp8;
pub mod ggml;
mod kv_dtype;
mod sample;
mod shard;
mod tensor;

pub use kv_dtype::KvDType;
pub use sample::{
    HostRowSampler, RankedToken, SampleBatch, SampleRow, SampledRow, MAX_SAMPLE_ROWS,
    MAX_TOP_LOGPROBS,
};
pub use shard::Shard;

pub use tensor::{DType, HostTensor, TensorBytes};

use crate::error::Result;

/// Everything the ops need to know about one forward step, built on the host by
/// the scheduler and handed to the backend once per step.
#[derive(Debug, Clone, Default)]
pub struct StepMeta {
    /// Per token of the batch.
    pub token_ids: Vec<u32>,
    /// Per token: its position in its sequence (rotary and causal mask).
    pub positions: Vec<u32>,
    /// Per token: the KV cache slot it writes (`block * block_size + offset`); -1 skips the write.
    pub slot_mapping: Vec<i64>,
    /// Per sequence: its rows are `query_start[s]..query_start[s + 1]` (len = sequences + 1).
    pub query_start: Vec<usize>,
    /// Per sequence: tokens in its KV cache once this step's tokens are written.
    pub context_lens: Vec<usize>,
    /// Per sequence: the physical blocks holding its positions, in order.
    pub block_tables: Vec<Vec<u32>>,
    /// Rows of the final hidden state to turn into logits, in output order.
    pub logits_rows: Vec<usize>,
    pub block_size: usize,
}

impl StepMeta {
    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }

    pub fn num_seqs(&self) -> usize {
        self.context_lens.len()
    }

    /// How many sequences, from the first, have one query row each: a device
    /// backend runs them through its decode kernel and the others through its
    /// prefill kernel (the scheduler puts decoding sequences first).
    pub fn leading_decode_seqs(&self) -> usize {
        self.query_start
            .windows(2)
            .take_while(|w| w[1] - w[0] == 1)
            .count()
    }
}

/// [`Backend::graph_step`]'s step: the ops for a prepared meta on the
/// caller's state `S`, writing the logits into the buffer given if any.
pub type GraphForward<'a, B, S> = dyn FnMut(
        &<B as Backend>::Meta,
        &mut S,
        Option<<B as Backend>::Buffer>,
    ) -> Result<<B as Backend>::Buffer>
    + 'a;

/// What graphs must cover: every decode batch up to `max_seqs` sequences,
/// each up to `max_model_len` tokens in blocks of `block_size`. A step's
/// logits come in `logits_parts` equal parts of `[rows, slice]` (a
/// tensor-parallel group's gathered vocabulary slices: the world size; 1
/// otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphLimits {
    pub max_seqs: usize,
    pub max_model_len: usize,
    pub block_size: usize,
    pub logits_parts: usize,
}

/// Geometry of one attention layer.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Attend only to the last `w` positions (self included), as Mistral does.
    pub sliding_window: Option<usize>,
    pub scale: f32,
}

impl AttnShape {
    /// Width of one row of the fused qkv projection.
    pub fn qkv_width(&self) -> usize {
        (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
    }
}

/// Geometry of a KV pool: `num_blocks` blocks of `num_kv_heads × block_size × head_dim` values of
/// `dtype` (see the module's notes for the order within a block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvPoolShape {
    pub num_blocks: usize,
    pub num_kv_heads: usize,
    pub block_size: usize,
    pub head_dim: usize,
    pub dtype: KvDType,
}

impl KvPoolShape {
    /// Values in the pool.
    pub fn len(&self) -> usize {
        self.num_blocks * self.num_kv_heads * self.block_size * self.head_dim
    }

    /// Values in one block of the pool.
    pub fn block_len(&self) -> usize {
        self.num_kv_heads * self.block_size * self.head_dim
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A device's memory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    pub free: usize,
    pub total: usize,
}

/// A compute device. Every op checks nothing a caller controls: the model builds
/// shapes from a validated config, and the scheduler builds [`StepMeta`].
pub trait Backend: Send + Sync + 'static {
    /// Activations on the device, in the dtype [`Backend::set_activation_dtype`]
    /// chose; logits and the rotary table are f32 ones.
    type Buffer: Send + Sync;
    /// A weight tensor in its stored dtype on the device.
    type Weight: Send + Sync;
    /// One layer's K or V pool, in the dtype of its [`KvPoolShape`].
    type KvPool: Send + Sync;
    /// [`StepMeta`] as the device reads it.
    type Meta: Send + Sync;
    /// One rank's end of a tensor-parallel group's communicator (NCCL on CUDA,
    /// an in-process barrier and fixed-order sum on the CPU).
    type Comm: Send + Sync;

    fn name(&self) -> &'static str;
    /// The device for logs ("cpu", "cuda:0 (NVIDIA H200, 140 GiB)").
    fn describe(&self) -> String {
        self.name().to_string()
    }

    /// Keeps the activations of a model in `dtype` in the dtype this backend
    /// computes such a model in: the CPU keeps f32 whatever the weights (the
    /// default: nothing to set), CUDA the model's own dtype. A model calls it
    /// once, before it uploads its weights and makes its buffers.
    fn set_activation_dtype(&mut self, _dtype: DType) {}

    // Memory.
    /// Zeroed activations.
    fn alloc(&self, len: usize) -> Result<Self::Buffer>;
    /// A zeroed f32 buffer for logits (what the samplers read), whatever the
    /// activations' dtype.
    fn alloc_logits(&self, len: usize) -> Result<Self::Buffer> {
        self.alloc(len)
    }
    /// `data` as an f32 buffer.
    fn upload(&self, data: &[f32]) -> Result<Self::Buffer>;
    /// A buffer's values as f32, whatever its dtype.
    fn download(&self, buf: &Self::Buffer) -> Result<Vec<f32>>;
    fn buffer_len(&self, buf: &Self::Buffer) -> usize;
    /// Makes `buf` hold `len` values for an op to overwrite, keeping its
    /// storage where the backend can: a step's activation buffers are resized
    /// from step to step ([`crate::model::StepArena`]) rather than allocated
    /// and cleared for every op. The values it holds afterwards are unspecified.
    fn resize(&self, buf: &mut Self::Buffer, len: usize) -> Result<()>;
    /// Takes a weight in `dtype` (converting from its stored dtype if they differ).
    fn upload_weight(&self, tensor: HostTensor, dtype: DType) -> Result<Self::Weight>;
    /// Takes `parts` (of equal width) stacked along their rows as one weight
    /// (q/k/v, gate/up: one matmul). By default they are fused into one
    /// tensor ([`HostTensor::concat_rows`]); a backend may keep parts of
    /// different storage types apart.
    fn upload_stacked(
        &self,
        name: &str,
        parts: Vec<HostTensor>,
        dtype: DType,
    ) -> Result<Self::Weight> {
        self.upload_weight(HostTensor::concat_rows(name, &parts)?, dtype)
    }
    /// A zeroed pool; an FP8 pool stores its values divided by `scale` (the
    /// layer's per-tensor `k_scale` or `v_scale`), other dtypes ignore it.
    fn alloc_kv_pool(&self, shape: KvPoolShape, scale: f32) -> Result<Self::KvPool>;
    /// The dtypes this backend keeps a KV cache in.
    fn kv_dtypes(&self) -> &'static [KvDType] {
        &[KvDType::F32]
    }
    /// Free and total bytes of the device's own memory, after everything
    /// allocated so far (freed buffers the backend keeps for reuse count as
    /// used); `None` where the backend has no memory of its own (the CPU).
    fn memory_info(&self) -> Result<Option<DeviceMemory>> {
        Ok(None)
    }
    /// Runs one forward step (`step` issues all its ops). A backend whose ops
    /// fork work onto a thread pool runs the step on that pool, so each op's
    /// fork is a cheap join among the pool's threads rather than a hand-off
    /// from an outside thread that sleeps until the op is done.
    fn run_step<R: Send>(&self, step: impl FnOnce() -> R + Send) -> R {
        step()
    }
    fn prepare_step(&self, meta: StepMeta) -> Result<Self::Meta>;
    /// From now on, runs decode steps of up to `limits.max_seqs` sequences
    /// through [`Backend::graph_step`] where the backend has graphs (CUDA);
    /// others ignore it.
    fn enable_graphs(&mut self, _limits: GraphLimits) {}
    /// A step through a graph captured for its batch size (CUDA graphs), or
    /// `Ok(None)`: run it eagerly (no graphs here, or not a decode step they
    /// take). `forward` issues a step's ops for a prepared meta on its own
    /// state (`new_state`'s: buffers the graph keeps) and returns the logits,
    /// written into the buffer it is given if any. The logits returned are
    /// the step's own rows, in `spare` if it holds a buffer (taken only when
    /// the step is taken).
    fn graph_step<S: Send + 'static>(
        &self,
        _meta: &Self::Meta,
        _spare: &mut Option<Self::Buffer>,
        _new_state: &mut dyn FnMut() -> Result<S>,
        _forward: &mut GraphForward<'_, Self, S>,
    ) -> Result<Option<Self::Buffer>> {
        Ok(None)
    }
    /// Graphs captured so far (0 where the backend has none).
    fn graphs_captured(&self) -> usize {
        0
    }
    /// The host copy of what was prepared (the scheduler reads it back to sample).
    fn step_meta<'a>(&self, meta: &'a Self::Meta) -> &'a StepMeta;

    /// Copies whole blocks `src -> dst` within a pool (copy-on-write of forked sequences).
    fn copy_blocks(
        &self,
        pool: &mut Self::KvPool,
        shape: KvPoolShape,
        pairs: &[(u32, u32)],
    ) -> Result<()>;

    // Ops.
    /// `out[t] = table[token_ids[t]]`.
    fn embedding(
        &self,
        table: &Self::Weight,
        meta: &Self::Meta,
        out: &mut Self::Buffer,
    ) -> Result<()>;
    /// `out = x / rms(x) * weight`, row by row.
    fn rms_norm(
        &self,
        x: &Self::Buffer,
        weight: &Self::Weight,
        eps: f32,
        out: &mut Self::Buffer,
    ) -> Result<()>;
    /// `residual += x; x = residual / rms(residual) * weight`, row by row.
    fn fused_add_rms_norm(
        &self,
        x: &mut Self::Buffer,
        residual: &mut Self::Buffer,
        weight: &Self::Weight,
        eps: f32,
    ) -> Result<()>;
    /// `out[m, n] = x[m, k] · weight[n, k]ᵀ (+ bias[n])`.
    fn matmul(
        &self,
        x: &Self::Buffer,
        weight: &Self::Weight,
        bias: Option<&Self::Weight>,
        out: &mut Self::Buffer,
    ) -> Result<()>;
    /// Rotates the q and k heads of each fused qkv row in place (neox style) with
    /// `cos_sin[pos] = [cos(pos·f_0..f_{d/2}), sin(...)]`.
    fn rotary(
        &self,
        qkv: &mut Self::Buffer,
        cos_sin: &Self::Buffer,
        meta: &Self::Meta,
        shape: AttnShape,
    ) -> Result<()>;
    /// Writes each token's k and v heads into its slot of the pools.
    fn reshape_and_cache(
        &self,
        qkv: &Self::Buffer,
        k_pool: &mut Self::KvPool,
        v_pool: &mut Self::KvPool,
        meta: &Self::Meta,
        shape: AttnShape,
    ) -> Result<()>;
    /// Causal attention of each token's q heads over its sequence's cached K/V
    /// (prefill, chunked prefill and decode alike). `out` is `[tokens, heads * head_dim]`.
    fn paged_attention(
        &self,
        qkv: &Self::Buffer,
        k_pool: &Self::KvPool,
        v_pool: &Self::KvPool,
        meta: &Self::Meta,
        shape: AttnShape,
        out: &mut Self::Buffer,
    ) -> Result<()>;
    /// `out[t] = silu(gate_up[t, :width]) * gate_up[t, width:]`.
    fn silu_mul(&self, gate_up: &Self::Buffer, width: usize, out: &mut Self::Buffer) -> Result<()>;
    /// `out[i] = x[rows[i]]` for rows of width `width`.
    fn gather_rows(
        &self,
        x: &Self::Buffer,
        rows: &[usize],
        width: usize,
        out: &mut Self::Buffer,
    ) -> Result<()>;

    // Sampling.
    /// Samples every row of `batch` from `logits` (`[rows, batch.vocab]`, left
    /// unchanged) and returns one result per row, in order: only token ids and
    /// the requested logprobs come back. `host` is the host implementation of a
    /// row (the CPU backend runs it; a device backend runs its own kernels).
    fn sample_rows(
        &self,
        logits: &Self::Buffer,
        batch: &SampleBatch,
        host: &dyn HostRowSampler,
    ) -> Result<Vec<SampledRow>>;

    // Tensor parallelism.
    /// This backend as rank 0 of a group of `world` ranks, and the other ranks'
    /// backends (rank order), each with its end of the group's communicator.
    /// An error where the machine has fewer than `world` devices.
    fn tensor_parallel_group(self, world: usize) -> Result<Vec<(Self, Self::Comm)>>
    where
        Self: Sized;
    /// Makes this backend's device current on the calling thread: each rank of a
    /// group steps on a thread of its own.
    fn bind_thread(&self) -> Result<()> {
        Ok(())
    }
    /// Releases the group's other ranks from the collectives they wait in (or
    /// will): this rank failed. Where the backend cannot, it does nothing.
    fn abort_collectives(&self, _comm: &Self::Comm) {}
    /// `buf = Σ_rank buf` over the group, every rank getting the same sum.
    fn all_reduce_sum(&self, comm: &Self::Comm, buf: &mut Self::Buffer) -> Result<()>;
    /// `out = [rank 0's local | rank 1's local | ...]` on every rank (each `local`
    /// of one length, `out` world times as long).
    fn all_gather(
        &self,
        comm: &Self::Comm,
        local: &Self::Buffer,
        out: &mut Self::Buffer,
    ) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::StepMeta;

    fn meta(query_lens: &[usize]) -> StepMeta {
        let mut query_start = vec![0];
        for n in query_lens {
            query_start.push(query_start.last().unwrap() + n);
        }
        StepMeta {
            context_lens: query_lens.iter().map(|n| n + 10).collect(),
            query_start,
            ..StepMeta::default()
        }
    }

    #[test]
    fn the_leading_one_row_sequences_are_the_decode_part() {
        assert_eq!(meta(&[]).leading_decode_seqs(), 0);
        assert_eq!(meta(&[1, 1, 1]).leading_decode_seqs(), 3);
        assert_eq!(meta(&[1, 1, 7, 1]).leading_decode_seqs(), 2);
        assert_eq!(meta(&[5, 1, 1]).leading_decode_seqs(), 0);
    }
}
