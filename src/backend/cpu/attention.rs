//! Attention over the paged KV cache: every query token attends causally to its
//! sequence's cached positions (within the sliding window, if any). One code
//! path serves prefill, chunked prefill and decode.
//!
//! Work is split by (sequence, KV head): a task copies the keys its queries
//! can see out of the paged pool once, transposed into chunks of [`LANES`]
//! positions, so the score of each position is its own SIMD lane and every
//! query head of the group reuses the copy. Up to [`HEADS_AT_ONCE`] heads are
//! scored per pass over the keys and 4 per pass over the values, so each key
//! chunk and value row is loaded once for several heads. Each score is still
//! the plain sequential sum `q₀k₀ + q₁k₁ + …` in `head_dim` order, each
//! softmax sum and weighted value sum in position order, whatever the lane,
//! the heads beside it, the batch or the CPU.

use std::sync::{Mutex, PoisonError};

use super::exp::exp;
use super::kv_pool::CpuKvPool;
use super::pool;
use crate::backend::fp8::Fp8Format;
use crate::backend::{AttnShape, StepMeta};

/// Key positions scored together, one per SIMD lane.
const LANES: usize = 16;
/// Chunks of positions scored at once: independent sums keep the adder busy.
const CHUNKS_AT_ONCE: usize = 4;
/// How many chunks ahead of the transposition its rows are prefetched.
const PREFETCH_CHUNKS: usize = 2;
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
    |task| attend(task, transpose)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn attend_avx512(task: &Task) -> Vec<f32> {
    attend(task, |rows, out| {
        // SAFETY: this build runs only where AVX-512F was detected.
        unsafe { transpose_avx512(rows, out) }
    })
}

/// `out[d][l] = rows[l][d]`: a chunk of keys into lanes.
fn transpose(rows: &[&[f32]; LANES], out: &mut [[f32; LANES]]) {
    for (l, row) in rows.iter().enumerate() {
        for (o, &v) in out.iter_mut().zip(*row) {
            o[l] = v;
        }
    }
}

/// [`transpose`] in 16 × 16 register blocks: four rounds that each swap the
/// off-diagonal sub-blocks (8 × 8, then 4 × 4, 2 × 2, 1 × 1) of every block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_avx512(rows: &[&[f32]; LANES], out: &mut [[f32; LANES]]) {
    use std::arch::x86_64::*;
    /// For rows i (low) and i + b (high) of a round with sub-blocks of `b`:
    /// the indices into (low, high) that make the new low and high rows.
    const fn swap_indices(b: usize) -> [[i32; 16]; 2] {
        let mut idx = [[0; 16]; 2];
        let mut c = 0;
        while c < 16 {
            let first_half = c % (2 * b) < b;
            idx[0][c] = if first_half { c } else { 16 + c - b } as i32;
            idx[1][c] = if first_half { c + b } else { 16 + c } as i32;
            c += 1;
        }
        idx
    }
    const ROUNDS: [[[i32; 16]; 2]; 4] = [
        swap_indices(8),
        swap_indices(4),
        swap_indices(2),
        swap_indices(1),
    ];
    /// One round, on sub-blocks of `B`: constant indices throughout, so the
    /// 16 rows stay in registers (a loop over a filtered range left them on
    /// the stack).
    #[inline(always)]
    unsafe fn round<const B: usize>(r: &mut [__m512; LANES], idx: &[[i32; 16]; 2]) {
        // SAFETY: reads 16 i32 from each 16-element array.
        let (lo, hi) = unsafe {
            (
                _mm512_loadu_si512(idx[0].as_ptr().cast()),
                _mm512_loadu_si512(idx[1].as_ptr().cast()),
            )
        };
        for i in 0..LANES - B {
            if i % (2 * B) < B {
                let (a, c) = (r[i], r[i + B]);
                r[i] = _mm512_permutex2var_ps(a, lo, c);
                r[i + B] = _mm512_permutex2var_ps(a, hi, c);
            }
        }
    }
    let hd = out.len();
    let mut d0 = 0;
    while d0 + LANES <= hd {
        let mut r = [_mm512_setzero_ps(); LANES];
        for (r, row) in r.iter_mut().zip(rows) {
            // SAFETY: `row` has `hd` values and d0 + 16 <= hd.
            *r = unsafe { _mm512_loadu_ps(row.as_ptr().add(d0)) };
        }
        // SAFETY (each round): AVX-512F, as this function.
        unsafe {
            round::<8>(&mut r, &ROUNDS[0]);
            round::<4>(&mut r, &ROUNDS[1]);
            round::<2>(&mut r, &ROUNDS[2]);
            round::<1>(&mut r, &ROUNDS[3]);
        }
        for (o, r) in out[d0..d0 + LANES].iter_mut().zip(r) {
            // SAFETY: `o` is 16 f32.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), r) };
        }
        d0 += LANES;
    }
    for (d, o) in out.iter_mut().enumerate().skip(d0) {
        for (o, row) in o.iter_mut().zip(rows) {
            *o = row[d];
        }
    }
}

/// A worker's buffers, kept between calls: at long context the transposed
/// keys are hundreds of KiB, and a fresh allocation of that size is a fresh
/// mapping whose pages the kernel zeroes on first touch, every layer.
#[derive(Default)]
struct Scratch {
    keys: Vec<[f32; LANES]>,
    widened: Vec<f32>,
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
fn attend<'a>(
    task: &Task<'a>,
    transpose: impl Fn(&[&[f32]; LANES], &mut [[f32; LANES]]),
) -> Vec<f32> {
    // Taken out and put back rather than borrowed in a closure: a closure
    // would not be compiled with the caller's target features.
    let mut scratch = SCRATCH.take();
    let out = attend_in(task, transpose, &mut scratch);
    SCRATCH.set(scratch);
    out
}

#[inline(always)]
fn attend_in<'a>(
    task: &Task<'a>,
    transpose: impl Fn(&[&[f32]; LANES], &mut [[f32; LANES]]),
    scratch: &mut Scratch,
) -> Vec<f32> {
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
    let slot = |j: usize| ((table[j / bs] as usize * kvh + task.kv_head) * bs + j % bs) * hd;

    // Where each visible position's K and V rows are in the pools.
    let start = lowest(first);
    let offsets: Vec<usize> = (start..context).map(slot).collect();
    let (k_rows, v_rows) = (
        Rows::new(task.k_pool, &offsets),
        Rows::new(task.v_pool, &offsets),
    );

    // Keys of positions `start..context`, transposed: chunk c, dimension d,
    // lane l holds k[start + c·LANES + l][d]; zero past the context, and
    // CHUNKS_AT_ONCE - 1 chunks of zeros at the end so every score call can
    // read a full set of chunks.
    let chunks = (context - start).div_ceil(LANES);
    let keys = at_least(&mut scratch.keys, (chunks + CHUNKS_AT_ONCE - 1) * hd);
    keys[chunks * hd..].fill([0.0; LANES]);
    let zeros = vec![0f32; hd];
    // Narrow keys are widened a chunk at a time here, where the chunk stays in L1.
    let widened = at_least(&mut scratch.widened, LANES * hd);
    for (c, dst) in keys.chunks_exact_mut(hd).take(chunks).enumerate() {
        // The keys of a later chunk into L1, its values on their way to L2
        // for the weighted sums that follow.
        for i in (c + PREFETCH_CHUNKS) * LANES..(c + PREFETCH_CHUNKS + 1) * LANES {
            k_rows.prefetch(i, hd, true);
            v_rows.prefetch(i, hd, false);
        }
        let visible = (c * LANES..(c * LANES + LANES).min(context - start)).len();
        if !matches!(k_rows, Rows::F32(..)) {
            for (l, row) in widened.chunks_exact_mut(hd).take(visible).enumerate() {
                k_rows.widen(c * LANES + l, row);
            }
        }
        let chunk_rows = std::array::from_fn(|l| match &k_rows {
            _ if l >= visible => &zeros[..],
            Rows::F32(pool, offsets) => &pool[offsets[c * LANES + l]..][..hd],
            _ => &widened[l * hd..(l + 1) * hd],
        });
        transpose(&chunk_rows, dst);
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

/// Query heads that share a token's keys and values: several heads are
/// scored per pass over the keys, so each key chunk is loaded once for all
/// of them and their sums are independent chains for the adder.
struct Heads<'k, 's, 'v> {
    head_dim: usize,
    keys: &'k [[f32; LANES]],
    scores: &'s mut [f32],
    stride: usize,
    /// The positions the token sees, relative to the task's first key.
    visible: std::ops::Range<usize>,
    scale: f32,
    values: &'v Rows<'v>,
}

impl Heads<'_, '_, '_> {
    /// Attends every head of `qs` (head-major, `head_dim` each) into `outs`.
    #[inline(always)]
    fn attend_all(mut self, qs: &[f32], outs: &mut [f32]) {
        let (n, hd) = (outs.len(), self.head_dim);
        let mut h = 0;
        while h < n {
            let left = n - h;
            h += if left >= HEADS_AT_ONCE * hd {
                self.attend::<HEADS_AT_ONCE, 1>(&qs[h..], &mut outs[h..])
            } else if left >= 4 * hd {
                self.attend::<4, 2>(&qs[h..], &mut outs[h..])
            } else if left >= 2 * hd {
                self.attend::<2, 4>(&qs[h..], &mut outs[h..])
            } else {
                self.attend::<1, 4>(&qs[h..], &mut outs[h..])
            };
        }
    }

    /// `R` heads, their key chunks scored `C` at a time; returns the values done.
    #[inline(always)]
    fn attend<const R: usize, const C: usize>(&mut self, qs: &[f32], outs: &mut [f32]) -> usize {
        let hd = self.head_dim;
        let q: [&[f32]; R] = std::array::from_fn(|r| &qs[r * hd..(r + 1) * hd]);
        let stride = self.stride;
        let (lo, hi) = (self.visible.start, self.visible.end);
        for c in (lo / LANES..=(hi - 1) / LANES).step_by(C) {
            let sums = dot_chunks::<R, C>(&q, &self.keys[c * hd..(c + C) * hd]);
            for (r, sums) in sums.iter().enumerate() {
                let dst = &mut self.scores[r * stride + c * LANES..][..C * LANES];
                for (dst, sums) in dst.chunks_exact_mut(LANES).zip(sums) {
                    for (d, &s) in dst.iter_mut().zip(sums) {
                        *d = s * self.scale;
                    }
                }
            }
        }
        softmax_rows::<R>(self.scores, stride, lo..hi);
        let probs: [&[f32]; R] = std::array::from_fn(|r| &self.scores[r * stride..][lo..hi]);
        let outs = &mut outs[..R * hd];
        let mut r = 0;
        while r < R {
            let o = &mut outs[r * hd..];
            r += if R - r >= 4 {
                weighted_rows::<4>(&mut o[..4 * hd], sub(&probs, r), self.values, lo)
            } else if R - r >= 2 {
                weighted_rows::<2>(&mut o[..2 * hd], sub(&probs, r), self.values, lo)
            } else {
                weighted_rows::<1>(&mut o[..hd], sub(&probs, r), self.values, lo)
            };
        }
        R * hd
    }
}

/// `N` consecutive entries of `rows` from `at`.
#[inline(always)]
fn sub<'a, const R: usize, const N: usize>(rows: &[&'a [f32]; R], at: usize) -> [&'a [f32]; N] {
    std::array::from_fn(|i| rows[at + i])
}

/// The largest value (NaNs ignored, as by `f32::max`), found lane by lane so
/// that it vectorizes: a maximum does not depend on the order it is taken in.
#[inline(always)]
fn max_of(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            *m = m.max(v);
        }
    }
    let tail = chunks.remainder().iter();
    tail.chain(&lanes).fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

/// Each of `R` rows (`stride` apart) over `range`: `p = e^(p - max) / Σ e^(p - max)`.
/// The exps vectorize; each row's sum runs in order, the rows' sums side by side.
#[inline(always)]
fn softmax_rows<const R: usize>(scores: &mut [f32], stride: usize, range: std::ops::Range<usize>) {
    for r in 0..R {
        let probs = &mut scores[r * stride..][range.clone()];
        let max = max_of(probs);
        for p in probs.iter_mut() {
            *p = exp(*p - max);
        }
    }
    let rows: [&[f32]; R] = std::array::from_fn(|r| &scores[r * stride..][range.clone()]);
    let mut sums = [0f32; R];
    for j in 0..range.len() {
        for (sum, row) in sums.iter_mut().zip(&rows) {
            *sum += row[j];
        }
    }
    for (r, sum) in sums.into_iter().enumerate() {
        for p in &mut scores[r * stride..][range.clone()] {
            *p /= sum;
        }
    }
}

/// The K or V rows of a task's visible positions, as views into the pool in
/// its dtype: 16-bit and FP8 values are widened where they are read, exactly
/// (every such value times its pool's scale is an f32: see [`CpuKvPool`]).
enum Rows<'a> {
    F32(&'a [f32], &'a [usize]),
    Bf16(&'a [u16], &'a [usize]),
    F16(&'a [u16], &'a [usize]),
    /// The bytes, read as `decode(b) · scale`.
    Fp8(&'a [u8], &'a [usize], Fp8Format, f32),
}

impl<'a> Rows<'a> {
    fn new(pool: &'a CpuKvPool, offsets: &'a [usize]) -> Rows<'a> {
        match pool {
            CpuKvPool::F32(v) => Rows::F32(v, offsets),
            CpuKvPool::BF16(v) => Rows::Bf16(bytemuck::cast_slice(v), offsets),
            CpuKvPool::F16(v) => Rows::F16(bytemuck::cast_slice(v), offsets),
            CpuKvPool::Fp8(p) => Rows::Fp8(&p.bits, offsets, p.format, p.scale),
        }
    }

    /// Asks for row `i`'s `hd` values to be brought into the cache (into L1
    /// with `near`, else L2): rows are scattered by the block table, so the
    /// hardware prefetcher cannot see them coming. A hint only.
    #[inline(always)]
    fn prefetch(&self, i: usize, hd: usize, near: bool) {
        fn lines<T>(pool: &[T], offsets: &[usize], i: usize, hd: usize, near: bool) {
            let Some(&at) = offsets.get(i) else { return };
            let Some(row) = pool.get(at..at + hd) else {
                return;
            };
            let bytes = std::mem::size_of_val(row);
            for line in (0..bytes).step_by(64) {
                // SAFETY: `line` is inside `row`; a prefetch never faults.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};
                    let p = row.as_ptr().cast::<i8>().add(line);
                    if near {
                        _mm_prefetch::<_MM_HINT_T0>(p);
                    } else {
                        _mm_prefetch::<_MM_HINT_T1>(p);
                    }
                }
            }
        }
        match *self {
            Rows::F32(pool, offsets) => lines(pool, offsets, i, hd, near),
            Rows::Bf16(pool, offsets) | Rows::F16(pool, offsets) => {
                lines(pool, offsets, i, hd, near)
            }
            Rows::Fp8(pool, offsets, ..) => lines(pool, offsets, i, hd, near),
        }
    }

    /// Row `i` (position `start + i`) widened into `out` (its `hd` values).
    #[inline(always)]
    fn widen(&self, i: usize, out: &mut [f32]) {
        fn each<T: Copy>(src: &[T], out: &mut [f32], f: impl Fn(T) -> f32) {
            for (o, &v) in out.iter_mut().zip(src) {
                *o = f(v);
            }
        }
        let hd = out.len();
        match *self {
            Rows::F32(pool, offsets) => out.copy_from_slice(&pool[offsets[i]..][..hd]),
            Rows::Bf16(pool, offsets) => each(&pool[offsets[i]..][..hd], out, bf16_to_f32),
            Rows::F16(pool, offsets) => each(&pool[offsets[i]..][..hd], out, f16_to_f32),
            // The format is a constant inside each arm, so each loop vectorizes.
            Rows::Fp8(pool, offsets, Fp8Format::E4M3, scale) => {
                each(&pool[offsets[i]..][..hd], out, |b| {
                    Fp8Format::E4M3.widen(b, scale)
                })
            }
            Rows::Fp8(pool, offsets, Fp8Format::E5M2, scale) => {
                each(&pool[offsets[i]..][..hd], out, |b| {
                    Fp8Format::E5M2.widen(b, scale)
                })
            }
        }
    }
}

/// [`weighted_values`] for `R` heads over rows `first..` of `rows`, read in
/// their dtype; returns `R`.
#[inline(always)]
fn weighted_rows<const R: usize>(
    o: &mut [f32],
    probs: [&[f32]; R],
    rows: &Rows,
    first: usize,
) -> usize {
    let hd = o.len() / R;
    match *rows {
        Rows::F32(pool, offsets) => {
            weighted_values(o, probs, |v| v, |j| &pool[offsets[first + j]..][..hd])
        }
        Rows::Bf16(pool, offsets) => {
            weighted_values(o, probs, bf16_to_f32, |j| &pool[offsets[first + j]..][..hd])
        }
        Rows::F16(pool, offsets) => {
            weighted_values(o, probs, f16_to_f32, |j| &pool[offsets[first + j]..][..hd])
        }
        Rows::Fp8(pool, offsets, Fp8Format::E4M3, scale) => weighted_values(
            o,
            probs,
            |b: u8| Fp8Format::E4M3.widen(b, scale),
            |j| &pool[offsets[first + j]..][..hd],
        ),
        Rows::Fp8(pool, offsets, Fp8Format::E5M2, scale) => weighted_values(
            o,
            probs,
            |b: u8| Fp8Format::E5M2.widen(b, scale),
            |j| &pool[offsets[first + j]..][..hd],
        ),
    }
    R
}

/// A bf16 value (its bits) as f32: the high half of the f32's bits, exactly.
#[inline(always)]
fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// An f16 value (its bits) as f32, exactly and without a branch: the
/// exponent and mantissa moved into place, then rebiased by a multiplication
/// by 2^112, which also normalizes subnormals; infinities and NaNs (exponent
/// all ones) get the f32's all-ones exponent.
#[inline(always)]
fn f16_to_f32(bits: u16) -> f32 {
    let h = u32::from(bits);
    let sign = (h & 0x8000) << 16;
    let shifted = (h & 0x7fff) << 13;
    let rebiased = (f32::from_bits(shifted) * f32::from_bits((127 + 112) << 23)).to_bits();
    let magnitude = if shifted >= 0x7c00 << 13 {
        shifted | 0x7f80_0000
    } else {
        rebiased
    };
    f32::from_bits(sign | magnitude)
}

/// `o[r][d] = Σⱼ weights[r][j] · v(j)[d]` for `R` heads (`o` head-major),
/// summed in `j` order for every `(r, d)`, in blocks of dimensions that stay
/// in registers across all the values; each value is widened once for the
/// `R` heads. Values are `T` (f32, or narrow bits read straight from the
/// pool), widened by `widen`.
#[inline(always)]
fn weighted_values<'v, const R: usize, T: Copy + 'v>(
    o: &mut [f32],
    weights: [&[f32]; R],
    widen: impl Fn(T) -> f32 + Copy,
    v: impl Fn(usize) -> &'v [T],
) {
    let hd = o.len() / R;
    let mut d = 0;
    while d < hd {
        let left = hd - d;
        d += if left >= 64 {
            weighted_block::<64, R, T>(o, d, weights, widen, &v)
        } else if left >= 16 {
            weighted_block::<16, R, T>(o, d, weights, widen, &v)
        } else {
            weighted_block::<1, R, T>(o, d, weights, widen, &v)
        };
    }
}

/// Dimensions `d0..d0 + W` of [`weighted_values`]; returns `W`.
#[inline(always)]
fn weighted_block<'v, const W: usize, const R: usize, T: Copy + 'v>(
    o: &mut [f32],
    d0: usize,
    weights: [&[f32]; R],
    widen: impl Fn(T) -> f32,
    v: &impl Fn(usize) -> &'v [T],
) -> usize {
    let hd = o.len() / R;
    let mut acc = [[0f32; W]; R];
    for j in 0..weights[0].len() {
        let row = &v(j)[d0..d0 + W];
        let wide: [f32; W] = std::array::from_fn(|d| widen(row[d]));
        for (acc, weights) in acc.iter_mut().zip(&weights) {
            let w = weights[j];
            for (a, &v) in acc.iter_mut().zip(&wide) {
                *a += w * v;
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        o[r * hd + d0..][..W].copy_from_slice(acc);
    }
    W
}

/// `q · k` for every head of `q` and every lane of `C` transposed key
/// chunks (`keys` holds `head_dim` rows per chunk); each lane sums in
/// dimension order. Every key row is loaded once for all the heads.
#[inline(always)]
fn dot_chunks<const R: usize, const C: usize>(
    q: &[&[f32]; R],
    keys: &[[f32; LANES]],
) -> [[[f32; LANES]; C]; R] {
    let hd = q[0].len();
    let chunk: [&[[f32; LANES]]; C] = std::array::from_fn(|c| &keys[c * hd..(c + 1) * hd]);
    let mut sums = [[[0f32; LANES]; C]; R];
    for d in 0..hd {
        // The sums are independent: interleaved, they overlap in the adder.
        for (s, q) in sums.iter_mut().zip(q) {
            let qd = q[d];
            for (s, chunk) in s.iter_mut().zip(&chunk) {
                for (s, &k) in s.iter_mut().zip(&chunk[d]) {
                    *s += qd * k;
                }
            }
        }
    }
    sums
}

#[cfg(test)]
mod tests {
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// The computation written plainly, one query head and one key at a time:
    /// the kernel must match it bit for bit.
    fn plain(qkv: &[f32], k: &[f32], v: &[f32], meta: &StepMeta, shape: AttnShape) -> Vec<f32> {
        let (hd, heads, kvh, bs) = (
            shape.head_dim,
            shape.num_heads,
            shape.num_kv_heads,
            meta.block_size,
        );
        let mut out = vec![0f32; meta.num_tokens() * heads * hd];
        for s in 0..meta.num_seqs() {
            let (q0, q1) = (meta.query_start[s], meta.query_start[s + 1]);
            let first = meta.context_lens[s] - (q1 - q0);
            for t in q0..q1 {
                let pos = first + t - q0;
                let lo = shape
                    .sliding_window
                    .map_or(0, |w| (pos + 1).saturating_sub(w));
                for h in 0..heads {
                    let g = h / (heads / kvh);
                    let q = &qkv[t * shape.qkv_width() + h * hd..][..hd];
                    let slot = |j: usize| {
                        ((meta.block_tables[s][j / bs] as usize * kvh + g) * bs + j % bs) * hd
                    };
                    let scores: Vec<f32> = (lo..=pos)
                        .map(|j| {
                            let dot = q
                                .iter()
                                .zip(&k[slot(j)..])
                                .fold(0f32, |a, (x, y)| a + x * y);
                            dot * shape.scale
                        })
                        .collect();
                    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
                    let exps: Vec<f32> = scores.iter().map(|s| exp(s - max)).collect();
                    let sum = exps.iter().fold(0f32, |a, e| a + e);
                    let o = &mut out[(t * heads + h) * hd..][..hd];
                    for (j, &p) in (lo..=pos).zip(&exps) {
                        for (o, &v) in o.iter_mut().zip(&v[slot(j)..slot(j) + hd]) {
                            *o += p / sum * v;
                        }
                    }
                }
            }
        }
        out
    }

    fn random(len: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
        (0..len).map(|_| rng.random_range(-1f32..1.0)).collect()
    }

    /// The kernel's shift widens every bf16 value as `half` does, bit for bit
    /// (a NaN stays a NaN; `half` also sets the quiet bit of a signaling one).
    #[test]
    fn bf16_widening_is_exact_for_every_value() {
        for bits in 0..=u16::MAX {
            let (got, want) = (bf16_to_f32(bits), half::bf16::from_bits(bits).to_f32());
            if want.is_nan() {
                assert!(got.is_nan(), "bits {bits:#06x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "bits {bits:#06x}");
            }
        }
    }

    #[test]
    fn f16_widening_is_exact_for_every_value() {
        for bits in 0..=u16::MAX {
            let (got, want) = (f16_to_f32(bits), half::f16::from_bits(bits).to_f32());
            if want.is_nan() {
                assert!(got.is_nan(), "bits {bits:#06x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "bits {bits:#06x}");
            }
        }
    }

    /// Decode, prefill and chunked prefill in one batch, scattered blocks, with
    /// and without a sliding window, several head widths and block sizes.
    #[test]
    fn matches_the_plain_computation_bit_for_bit() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        // Query heads per KV head: 4, 8, 3 (2 + 1 per pass), 1 and 14 (8 + 4 + 2).
        for (hd, bs, window, (heads, kv_heads)) in [
            (64, 16, None, (8, 2)),
            (16, 8, Some(20), (16, 2)),
            (80, 32, None, (6, 2)),
            (128, 16, Some(7), (3, 3)),
            (32, 16, None, (14, 1)),
        ] {
            let shape = AttnShape {
                num_heads: heads,
                num_kv_heads: kv_heads,
                head_dim: hd,
                sliding_window: window,
                scale: 1.0 / (hd as f32).sqrt(),
            };
            // (new tokens, context): decode at 1 and 70, a prefill of 37, a chunk of 5 after 40.
            let seqs: [(usize, usize); 4] = [(1, 1), (1, 70), (37, 37), (5, 45)];
            let blocks: usize = seqs.iter().map(|&(_, c)| c.div_ceil(bs)).sum();
            let mut free: Vec<u32> = (0..blocks as u32).rev().collect();
            // Scatter the blocks: every other one from each end.
            free.sort_by_key(|b| (b % 2, *b));
            let mut meta = StepMeta {
                block_size: bs,
                query_start: vec![0],
                ..StepMeta::default()
            };
            for &(new, context) in &seqs {
                let table: Vec<u32> = (0..context.div_ceil(bs))
                    .filter_map(|_| free.pop())
                    .collect();
                meta.token_ids.extend(std::iter::repeat_n(0, new));
                meta.query_start.push(meta.token_ids.len());
                meta.context_lens.push(context);
                meta.block_tables.push(table);
            }
            let pool = blocks * shape.num_kv_heads * bs * hd;
            let (k, v) = (random(pool, &mut rng), random(pool, &mut rng));
            let qkv = random(meta.num_tokens() * shape.qkv_width(), &mut rng);
            let want = plain(&qkv, &k, &v, &meta, shape);
            let (k, v) = (CpuKvPool::F32(k), CpuKvPool::F32(v));
            let portable: fn(&Task) -> Vec<f32> = |task| attend(task, transpose);
            for (name, kernel) in [("this CPU's", kernel()), ("portable", portable)] {
                let mut out = vec![f32::NAN; meta.num_tokens() * shape.num_heads * hd];
                attention_with(kernel, &qkv, &k, &v, &meta, shape, &mut out);
                for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{name} kernel, hd {hd} bs {bs}: element {i}: {a} vs {b}"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod sixteen_bit {
    use half::{bf16, f16};
    use rand::{RngExt, SeedableRng};

    use super::*;

    /// A 16-bit pool gives exactly what an f32 pool holding the same rounded
    /// values gives: the widening is exact and the arithmetic is the f32 one.
    #[test]
    fn a_16_bit_pool_equals_an_f32_pool_of_its_values() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let shape = AttnShape {
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 80,
            sliding_window: None,
            scale: 0.1,
        };
        let (bs, blocks) = (16, 6);
        let meta = StepMeta {
            token_ids: vec![0; 4],
            query_start: vec![0, 1, 4],
            context_lens: vec![50, 40],
            block_tables: vec![vec![5, 0, 3, 1], vec![2, 4, 5]],
            block_size: bs,
            ..StepMeta::default()
        };
        let len = blocks * shape.num_kv_heads * bs * shape.head_dim;
        let mut random =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random::<f32>() - 0.5).collect() };
        let (k, v, qkv) = (random(len), random(len), random(4 * shape.qkv_width()));
        let run = |k: &CpuKvPool, v: &CpuKvPool| {
            let mut out = vec![f32::NAN; 4 * shape.num_heads * shape.head_dim];
            paged_attention(&qkv, k, v, &meta, shape, &mut out);
            out
        };
        let bf = |x: &[f32]| x.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>();
        let hf = |x: &[f32]| x.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>();
        let wide_bf = |x: &[f32]| x.iter().map(|&x| bf16::from_f32(x).to_f32()).collect();
        let wide_hf = |x: &[f32]| x.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
        let got = run(&CpuKvPool::BF16(bf(&k)), &CpuKvPool::BF16(bf(&v)));
        let want = run(&CpuKvPool::F32(wide_bf(&k)), &CpuKvPool::F32(wide_bf(&v)));
        assert_eq!(got, want, "bfloat16");
        let got = run(&CpuKvPool::F16(hf(&k)), &CpuKvPool::F16(hf(&v)));
        let want = run(&CpuKvPool::F32(wide_hf(&k)), &CpuKvPool::F32(wide_hf(&v)));
        assert_eq!(got, want, "float16");
        let exact = run(&CpuKvPool::F32(k.clone()), &CpuKvPool::F32(v.clone()));
        let err = got
            .iter()
            .zip(&exact)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            err > 0.0 && err < 2e-3,
            "float16 KV moves the output by {err}"
        );
    }
}

#[cfg(test)]
mod paged_vs_dense {
    use super::*;
    use crate::backend::cpu::ops::reshape_and_cache;
    use rand::{RngExt, SeedableRng};

    /// Dense causal attention for one sequence, straight from the definition.
    fn dense(qkv: &[f32], len: usize, shape: AttnShape) -> Vec<f32> {
        let (hd, h, kvh, w) = (
            shape.head_dim,
            shape.num_heads,
            shape.num_kv_heads,
            shape.qkv_width(),
        );
        let mut out = vec![0f32; len * h * hd];
        for t in 0..len {
            for head in 0..h {
                let g = head / (h / kvh);
                let q = &qkv[t * w + head * hd..][..hd];
                let lo = shape
                    .sliding_window
                    .map_or(0, |win| (t + 1).saturating_sub(win));
                let scores: Vec<f64> = (lo..=t)
                    .map(|j| {
                        let k = &qkv[j * w + (h + g) * hd..][..hd];
                        q.iter().zip(k).map(|(a, b)| (a * b) as f64).sum::<f64>()
                            * shape.scale as f64
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                for (j, s) in (lo..=t).zip(&scores) {
                    let v = &qkv[j * w + (h + kvh + g) * hd..][..hd];
                    for d in 0..hd {
                        out[(t * h + head) * hd + d] += ((s - max).exp() / sum) as f32 * v[d];
                    }
                }
            }
        }
        out
    }

    /// Runs `len` tokens through the paged path in chunks of `chunk` tokens,
    /// with the sequence's blocks scattered through the pool.
    fn paged(
        qkv: &[f32],
        len: usize,
        chunk: usize,
        shape: AttnShape,
        block_size: usize,
    ) -> Vec<f32> {
        let num_blocks = len.div_ceil(block_size) + 5;
        // A scrambled permutation of the pool's blocks.
        let mut table: Vec<u32> = (0..num_blocks as u32).collect();
        table.sort_by_key(|&b| b.wrapping_mul(2_654_435_761) ^ 0x5bd1_e995);
        table.truncate(len.div_ceil(block_size));
        let pool_len = num_blocks * shape.num_kv_heads * block_size * shape.head_dim;
        let (mut k_pool, mut v_pool) = (
            CpuKvPool::F32(vec![f32::NAN; pool_len]),
            CpuKvPool::F32(vec![f32::NAN; pool_len]),
        );
        let (w, out_w) = (shape.qkv_width(), shape.num_heads * shape.head_dim);
        let mut out = vec![0f32; len * out_w];
        for start in (0..len).step_by(chunk) {
            let end = (start + chunk).min(len);
            let meta = StepMeta {
                token_ids: vec![0; end - start],
                positions: (start as u32..end as u32).collect(),
                slot_mapping: (start..end)
                    .map(|p| (table[p / block_size] as usize * block_size + p % block_size) as i64)
                    .collect(),
                query_start: vec![0, end - start],
                context_lens: vec![end],
                block_tables: vec![table.clone()],
                logits_rows: vec![],
                block_size,
            };
            let rows = &qkv[start * w..end * w];
            reshape_and_cache(rows, &mut k_pool, &mut v_pool, &meta, shape);
            paged_attention(
                rows,
                &k_pool,
                &v_pool,
                &meta,
                shape,
                &mut out[start * out_w..end * out_w],
            );
        }
        out
    }

    #[test]
    fn paged_matches_dense_for_prefill_chunks_and_decode() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for (window, block_size, chunk) in [
            (None, 16, 45),
            (Some(20), 8, 1),
            (None, 32, 1),
            (Some(7), 16, 13),
        ] {
            let shape = AttnShape {
                num_heads: 4,
                num_kv_heads: 2,
                head_dim: 16,
                sliding_window: window,
                scale: 0.25,
            };
            let len = 45;
            let qkv: Vec<f32> = (0..len * shape.qkv_width())
                .map(|_| rng.random::<f32>() * 2.0 - 1.0)
                .collect();
            let want = dense(&qkv, len, shape);
            let got = paged(&qkv, len, chunk, shape, block_size);
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(
                err < 1e-5,
                "window {window:?} block {block_size} chunk {chunk}: max error {err}"
            );
        }
    }
}
