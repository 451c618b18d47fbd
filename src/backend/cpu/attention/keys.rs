//! Keys out of the pool into lanes. A K block is stored transposed,
//! `[head_dim][block_size]` (see [`CpuKvPool`]), so for each dimension the
//! keys of [`LANES`] consecutive positions are one or two contiguous runs of
//! the pool: a chunk is copied (widened to f32), never transposed.

use super::super::kv_pool::CpuKvPool;
use super::rows::{bf16_to_f32, f16_to_f32, prefetch_bytes};
use super::LANES;
use crate::backend::fp8::Fp8Format;

/// One KV head's keys in a sequence's blocks.
pub(super) struct Keys<'a> {
    pub(super) pool: &'a CpuKvPool,
    pub(super) table: &'a [u32],
    pub(super) kv_head: usize,
    pub(super) num_kv_heads: usize,
    pub(super) block_size: usize,
    pub(super) head_dim: usize,
}

impl Keys<'_> {
    /// The runs of positions `from..to` that lie in one block each: (the
    /// first one's index in the pool, the run's first position, its length).
    fn runs(&self, from: usize, to: usize) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let bs = self.block_size;
        let mut p = from;
        std::iter::from_fn(move || {
            if p >= to {
                return None;
            }
            let block = self.table[p / bs] as usize;
            let at = (block * self.num_kv_heads + self.kv_head) * bs * self.head_dim + p % bs;
            let run = (at, p, (bs - p % bs).min(to - p));
            p += run.2;
            Some(run)
        })
    }

    /// `out[d][l]` = dimension `d` of the key at position `first + l`, for
    /// the positions before `end`; zero in the lanes past it.
    #[inline(always)]
    pub(super) fn copy_chunk(&self, first: usize, end: usize, out: &mut [[f32; LANES]]) {
        let bs = self.block_size;
        let last = (first + LANES).min(end);
        if last - first < LANES {
            out.fill([0.0; LANES]);
        }
        for (at, p, len) in self.runs(first, last) {
            if len == LANES && bs == LANES {
                // The whole block, laid out as the chunk is.
                widen(self.pool, at, out.as_flattened_mut());
                continue;
            }
            let lane = p - first;
            for (d, o) in out.iter_mut().enumerate() {
                widen(self.pool, at + d * bs, &mut o[lane..lane + len]);
            }
        }
    }

    /// Asks for the keys of positions `first..end` (at most a chunk) to be
    /// brought into L1: blocks are scattered by the block table, so the
    /// hardware prefetcher cannot see them coming. A hint only.
    #[inline(always)]
    pub(super) fn prefetch(&self, first: usize, end: usize) {
        let (bs, hd) = (self.block_size, self.head_dim);
        let bytes = pool_bytes(self.pool);
        let size = self.pool.dtype().size_in_bytes();
        for (at, _, len) in self.runs(first, (first + LANES).min(end)) {
            // Dimension 0's run through dimension hd - 1's.
            let span = at * size..(at + (hd - 1) * bs + len) * size;
            if let Some(run) = bytes.get(span) {
                prefetch_bytes(run, true);
            }
        }
    }
}

/// The pool's values at `at..at + out.len()`, widened exactly into `out`;
/// inlined so that the loops vectorize for the caller's CPU features.
#[inline(always)]
fn widen(pool: &CpuKvPool, at: usize, out: &mut [f32]) {
    #[inline(always)]
    fn each<T: Copy>(src: &[T], out: &mut [f32], f: impl Fn(T) -> f32) {
        for (o, &v) in out.iter_mut().zip(src) {
            *o = f(v);
        }
    }
    let src = at..at + out.len();
    match pool {
        CpuKvPool::F32(v) => out.copy_from_slice(&v[src]),
        CpuKvPool::BF16(v) => each(bytemuck::cast_slice(&v[src]), out, bf16_to_f32),
        CpuKvPool::F16(v) => each(bytemuck::cast_slice(&v[src]), out, f16_to_f32),
        // The format is a constant inside each arm, so each loop vectorizes.
        CpuKvPool::Fp8(p) => match p.format {
            Fp8Format::E4M3 => each(&p.bits[src], out, |b| Fp8Format::E4M3.widen(b, p.scale)),
            Fp8Format::E5M2 => each(&p.bits[src], out, |b| Fp8Format::E5M2.widen(b, p.scale)),
        },
    }
}

/// A pool's values as bytes.
fn pool_bytes(pool: &CpuKvPool) -> &[u8] {
    match pool {
        CpuKvPool::F32(v) => bytemuck::cast_slice(v),
        CpuKvPool::F16(v) => bytemuck::cast_slice(v),
        CpuKvPool::BF16(v) => bytemuck::cast_slice(v),
        CpuKvPool::Fp8(p) => &p.bits,
    }
}
