//! Attention over the paged KV cache: every query token attends causally to its
//! sequence's cached positions (within the sliding window, if any). One code
//! path serves prefill, chunked prefill and decode.
//!
//! Work is split by (sequence, KV head): a task copies the keys its queries
//! can see out of the paged pool once, in chunks of [`LANES`] positions
//! stored as the pool stores them (transposed: see [`keys`]), so the score of
//! each position is its own SIMD lane and every query head of the group
//! reuses the copy. Up to [`HEADS_AT_ONCE`] heads are
//! scored per pass over the keys and 4 per pass over the values, so each key
//! chunk and value row is loaded once for several heads. Each score is still
//! the plain sequential sum `q₀k₀ + q₁k₁ + …` in `head_dim` order, each
//! softmax sum and weighted value sum in position order, whatever the lane,
//! the heads beside it, the batch or the CPU.

use std::sync::{Mutex, PoisonError};

mod heads;
mod keys;
mod rows;

#[cfg(test)]
mod paged_vs_dense_tests;
#[cfg(test)]
mod sixteen_bit_tests;
#[cfg(test)]
mod tests;

use super::kv_pool::CpuKvPool;
use super::pool;
use crate::backend::{AttnShape, StepMeta};
use heads::Heads;
use keys::Keys;
use rows::Rows;

/// Key positions scored together, one per SIMD lane.
const LANES: usize = 16;
/// Chunks of positions scored at once: independent sums keep the adder busy.
const CHUNKS_AT_ONCE: usize = 4;
/// How many chunks ahead of the copy its keys and values are prefetched.
const PREFETCH_CHUNKS: usize = 4;
/// Query heads scored in one pass over the keys, at most.
const HEADS_AT_ONCE: usize = 8;

pub fn paged_attention(
    qkv: &[f32],
    k_pool: &CpuKvPool,
    v_pool: &CpuKvPool,
    meta: &StepMeta,
    shape: AttnShape,
    out: &mut [f32],
) {
    attention_with(kernel(), qkv, k_pool, v_pool, meta, shape, out);
}

fn attention_with(
    attend: fn(&Task) -> Vec<f32>,
    qkv: &[f32],
    k_pool: &CpuKvPool,
    v_pool: &CpuKvPool,
    meta: &StepMeta,
    shape: AttnShape,
    out: &mut [f32],
) {
    let (heads, kvh, hd) = (shape.num_heads, shape.num_kv_heads, shape.head_dim);
    let group = heads / kvh;
    let tasks: Vec<(usize, usize)> = (0..meta.num_seqs())
        .flat_map(|s| (0..kvh).map(move |g| (s, g)))
        .collect();
    // The step's spinning pool rather than rayon: waking a rayon worker here,
    // once per layer, would leave it competing with the pool's worker for the
    // cores through the next matmul.
    let results: Vec<Mutex<Vec<f32>>> = tasks.iter().map(|_| Mutex::default()).collect();
    pool::for_each(tasks.len(), &|i| {
        let (seq, kv_head) = tasks[i];
        let task = Task {
            qkv,
            k_pool,
            v_pool,
            meta,
            shape,
            seq,
            kv_head,
        };
        *results[i].lock().unwrap_or_else(PoisonError::into_inner) = attend(&task);
    });
    // Each result is [query tokens][heads of the group][head_dim].
    for (&(s, g), result) in tasks.iter().zip(results) {
        let result = result.into_inner().unwrap_or_else(PoisonError::into_inner);
        let rows = meta.query_start[s]..meta.query_start[s + 1];
        for (t, heads_out) in rows.zip(result.chunks(group * hd)) {
            let dst = t * heads * hd + g * group * hd;
            out[dst..dst + group * hd].copy_from_slice(heads_out);
        }
    }
}

/// What one (sequence, KV head) task reads.
struct Task<'a> {
    qkv: &'a [f32],
    k_pool: &'a CpuKvPool,
    v_pool: &'a CpuKvPool,
    meta: &'a StepMeta,
    shape: AttnShape,
    seq: usize,
    kv_head: usize,
}

/// The widest build of [`attend`] this CPU runs (the arithmetic is the same).
fn kernel() -> fn(&Task) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        return |task| {
            // SAFETY: the feature was detected at run time.
            unsafe { attend_avx512(task) }
        };
    }
    attend
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn attend_avx512(task: &Task) -> Vec<f32> {
    attend(task)
}

/// A worker's buffers, kept between calls: at long context the copied keys
/// are hundreds of KiB, and a fresh allocation of that size is a fresh
/// mapping whose pages the kernel zeroes on first touch, every layer.
#[derive(Default)]
struct Scratch {
    keys: Vec<[f32; LANES]>,
    scores: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// `v[..len]`, grown (never shrunk) to hold `len` values.
fn at_least<T: Copy + Default>(v: &mut Vec<T>, len: usize) -> &mut [T] {
    if v.len() < len {
        v.resize(len, T::default());
    }
    &mut v[..len]
}

#[inline(always)]
fn attend(task: &Task) -> Vec<f32> {
    // Taken out and put back rather than borrowed in a closure: a closure
    // would not be compiled with the caller's target features.
    let mut scratch = SCRATCH.take();
    let out = attend_in(task, &mut scratch);
    SCRATCH.set(scratch);
    out
}

#[inline(always)]
fn attend_in(task: &Task, scratch: &mut Scratch) -> Vec<f32> {
    let Task { meta, shape, .. } = *task;
    let (hd, heads, kvh, bs) = (
        shape.head_dim,
        shape.num_heads,
        shape.num_kv_heads,
        meta.block_size,
    );
    let group = heads / kvh;
    let width = shape.qkv_width();
    let (q0, q1) = (meta.query_start[task.seq], meta.query_start[task.seq + 1]);
    let context = meta.context_lens[task.seq];
    let first = context - (q1 - q0);
    let table = &meta.block_tables[task.seq];
    let lowest = |pos: usize| match shape.sliding_window {
        Some(w) => (pos + 1).saturating_sub(w),
        None => 0,
    };
    // The first chunk starts a whole number of chunks into the sequence, so
    // that no chunk straddles more blocks than it must.
    let start = lowest(first) / LANES * LANES;
    let slot = |j: usize| ((table[j / bs] as usize * kvh + task.kv_head) * bs + j % bs) * hd;
    // Where each visible position's V row is in the pool.
    let offsets: Vec<usize> = (start..context).map(slot).collect();
    let v_rows = Rows::new(task.v_pool, &offsets);
    let k_blocks = Keys {
        pool: task.k_pool,
        table,
        kv_head: task.kv_head,
        num_kv_heads: kvh,
        block_size: bs,
        head_dim: hd,
    };

    // Keys of positions `start..context`: chunk c, dimension d, lane l holds
    // k[start + c·LANES + l][d]; zero past the context, and
    // CHUNKS_AT_ONCE - 1 chunks of zeros at the end so every score call can
    // read a full set of chunks.
    let chunks = (context - start).div_ceil(LANES);
    let keys = at_least(&mut scratch.keys, (chunks + CHUNKS_AT_ONCE - 1) * hd);
    keys[chunks * hd..].fill([0.0; LANES]);
    // Chunk c's keys into L1 and its values on their way to L2 (for the
    // weighted sums that follow) PREFETCH_CHUNKS chunks ahead of its copy.
    // (A loop, not a closure: a closure would not be inlined here, nor get
    // this function's target features.)
    for c in 0..chunks + PREFETCH_CHUNKS {
        k_blocks.prefetch(start + c * LANES, context);
        for i in c * LANES..(c + 1) * LANES {
            v_rows.prefetch(i, hd);
        }
        if let Some(c) = c.checked_sub(PREFETCH_CHUNKS) {
            let dst = &mut keys[c * hd..(c + 1) * hd];
            k_blocks.copy_chunk(start + c * LANES, context, dst);
        }
    }

    let mut out = vec![0f32; (q1 - q0) * group * hd];
    // Scores of positions start.., by whole chunks, one row per query head.
    let stride = (chunks + CHUNKS_AT_ONCE - 1) * LANES;
    let scores = at_least(&mut scratch.scores, HEADS_AT_ONCE * stride);
    for (i, outs) in out.chunks_mut(group * hd).enumerate() {
        let pos = first + i;
        let visible = lowest(pos) - start..pos - start + 1;
        let qs = &task.qkv[(q0 + i) * width..][..width];
        let qs = &qs[task.kv_head * group * hd..][..group * hd];
        let heads = Heads {
            head_dim: hd,
            keys,
            scores: &mut *scores,
            stride,
            visible,
            scale: shape.scale,
            values: &v_rows,
        };
        heads.attend_all(qs, outs);
    }
    out
}
