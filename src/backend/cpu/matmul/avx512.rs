//! The AVX-512 register tiles of the packed matmul (layout: `packed.rs`), and
//! the rounding of activations to bf16 pairs.
//!
//! A tile is `R` rows × one 64-column panel: 4 × `R` f32 accumulators, fed
//! one k-step at a time by four panel loads and one broadcast per row.

use std::arch::x86_64::*;
use std::mem::transmute;

use rayon::prelude::*;

use super::packed::{MR, PANEL};

/// What one tile call reads and writes; see the kernels' safety contracts.
pub struct TileArgs<X> {
    /// The tile's first row of activations, at its first k-step.
    pub x: *const X,
    /// Elements between consecutive rows of `x`.
    pub x_stride: usize,
    /// The panel at the tile's first k-step.
    pub w: *const u16,
    pub steps: usize,
    /// The tile's first output element: row 0, the panel's first column.
    pub out: *mut f32,
    pub out_stride: usize,
    /// Valid columns of the panel (1..=64); the others are neither read nor written.
    pub cols: usize,
    /// Add to what `out` holds (a later k-block) instead of starting from zero.
    pub accumulate: bool,
}

/// Masks of the valid lanes of the tile's four column registers.
fn col_masks(cols: usize) -> [__mmask16; 4] {
    let mut masks = [0; 4];
    for (z, m) in masks.iter_mut().enumerate() {
        *m = lane_mask(cols.saturating_sub(16 * z));
    }
    masks
}

/// The first `n.min(16)` lanes.
fn lane_mask(n: usize) -> __mmask16 {
    ((1u32 << n.min(16)) - 1) as __mmask16
}

/// Rounds each row of `x` (`m` rows of `k`) to bf16 (round to nearest even) and
/// packs it as pairs, low half first, `stride` (≥ `k.div_ceil(2)`) pairs a row
/// for `rows` (≥ `m`) rows: an odd `k`, the pairs past it and the rows past `m`
/// are zero.
///
/// # Safety
/// The CPU must support AVX-512F and AVX-512 BF16.
pub unsafe fn round_to_bf16_pairs(
    x: &[f32],
    (m, k): (usize, usize),
    (rows, stride): (usize, usize),
) -> Vec<u32> {
    assert!(rows >= m && stride >= k.div_ceil(2));
    let mut out = vec![0u32; rows * stride];
    let rows = x[..m * k]
        .par_chunks_exact(k)
        .zip(out.par_chunks_exact_mut(stride));
    // Below a few rows a parallel region costs more than the conversion.
    rows.with_min_len(16).for_each(|(src, dst)| {
        // SAFETY: the caller guarantees the CPU features; `dst` has room for
        // `src.len().div_ceil(2)` pairs (`stride` checked above).
        unsafe { round_row(src, dst) }
    });
    out
}

#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn round_row(src: &[f32], dst: &mut [u32]) {
    let mut c = 0;
    while c < src.len() {
        let left = src.len() - c;
        let p = src.as_ptr().wrapping_add(c);
        // SAFETY: masked loads touch only the `left` elements that remain in
        // `src`, and the masked store only the `left.div_ceil(2)` pairs that
        // remain in `dst`.
        unsafe {
            let lo = _mm512_maskz_loadu_ps(lane_mask(left), p);
            let hi = _mm512_maskz_loadu_ps(lane_mask(left.saturating_sub(16)), p.wrapping_add(16));
            let pairs: __m512i = transmute(_mm512_cvtne2ps_pbh(hi, lo));
            let d = dst.as_mut_ptr().wrapping_add(c / 2);
            _mm512_mask_storeu_epi32(d.cast(), lane_mask(left.div_ceil(2)), pairs);
        }
        c += 32;
    }
}

/// `out[r, c] (+)= Σ_s x[r, s] · w[s, c]` over bf16 pairs, for `rows` (1..=MR) rows.
///
/// # Safety
/// The CPU must support AVX-512F and AVX-512 BF16; `t.x` must be readable for
/// `rows` rows of `t.steps` pairs, `t.w` for `t.steps` panel steps, and `t.out`
/// readable and writable for `rows` rows of `t.cols` columns, with no other
/// thread touching those.
pub unsafe fn bf16_tile(rows: usize, t: &TileArgs<u32>) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match rows {
            1 => bf16_rows::<1>(t),
            2 => bf16_rows::<2>(t),
            3 => bf16_rows::<3>(t),
            4 => bf16_rows::<4>(t),
            5 => bf16_rows::<5>(t),
            MR => bf16_rows::<MR>(t),
            _ => unreachable!("a tile has 1..={MR} rows, not {rows}"),
        }
    }
}

#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn bf16_rows<const R: usize>(t: &TileArgs<u32>) {
    let masks = col_masks(t.cols);
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    // SAFETY (whole body): the bounds are the caller's contract; masked loads
    // and stores skip the columns past `t.cols`.
    unsafe {
        if t.accumulate {
            load_tile(&mut acc, t.out, t.out_stride, &masks);
        }
        for s in 0..t.steps {
            let wp = t.w.add(s * 2 * PANEL);
            let mut w = [transmute::<__m512i, __m512bh>(_mm512_setzero_si512()); 4];
            for (z, w) in w.iter_mut().enumerate() {
                *w = transmute::<__m512i, __m512bh>(_mm512_loadu_si512(wp.add(32 * z).cast()));
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let pair = *t.x.add(r * t.x_stride + s);
                let xb: __m512bh = transmute(_mm512_set1_epi32(pair as i32));
                for (a, w) in acc.iter_mut().zip(&w) {
                    *a = _mm512_dpbf16_ps(*a, *w, xb);
                }
            }
        }
        store_tile(&acc, t.out, t.out_stride, &masks);
    }
}

/// `out[r, c] (+)= Σ_k x[r, k] · w[k, c]` with f16 weights widened to f32, for
/// `rows` (1..=MR) rows.
///
/// # Safety
/// The CPU must support AVX-512F; otherwise as [`bf16_tile`], with `t.x`
/// readable for `rows` rows of `t.steps` f32.
pub unsafe fn f16_tile(rows: usize, t: &TileArgs<f32>) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match rows {
            1 => f16_rows::<1>(t),
            2 => f16_rows::<2>(t),
            3 => f16_rows::<3>(t),
            4 => f16_rows::<4>(t),
            5 => f16_rows::<5>(t),
            MR => f16_rows::<MR>(t),
            _ => unreachable!("a tile has 1..={MR} rows, not {rows}"),
        }
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn f16_rows<const R: usize>(t: &TileArgs<f32>) {
    let masks = col_masks(t.cols);
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    // SAFETY (whole body): as in `bf16_rows`.
    unsafe {
        if t.accumulate {
            load_tile(&mut acc, t.out, t.out_stride, &masks);
        }
        for s in 0..t.steps {
            let wp = t.w.add(s * PANEL);
            let mut w = [_mm512_setzero_ps(); 4];
            for (z, w) in w.iter_mut().enumerate() {
                *w = _mm512_cvtph_ps(_mm256_loadu_si256(wp.add(16 * z).cast()));
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let xb = _mm512_set1_ps(*t.x.add(r * t.x_stride + s));
                for (a, w) in acc.iter_mut().zip(&w) {
                    *a = _mm512_fmadd_ps(*w, xb, *a);
                }
            }
        }
        store_tile(&acc, t.out, t.out_stride, &masks);
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn load_tile<const R: usize>(
    acc: &mut [[__m512; 4]; R],
    out: *const f32,
    stride: usize,
    masks: &[__mmask16; 4],
) {
    for (r, acc) in acc.iter_mut().enumerate() {
        for (z, a) in acc.iter_mut().enumerate() {
            // SAFETY: the caller's tile bounds; masked-off lanes are not read.
            *a = unsafe { _mm512_maskz_loadu_ps(masks[z], out.wrapping_add(r * stride + 16 * z)) };
        }
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn store_tile<const R: usize>(
    acc: &[[__m512; 4]; R],
    out: *mut f32,
    stride: usize,
    masks: &[__mmask16; 4],
) {
    for (r, acc) in acc.iter().enumerate() {
        for (z, a) in acc.iter().enumerate() {
            // SAFETY: the caller's tile bounds; masked-off lanes are not written.
            unsafe { _mm512_mask_storeu_ps(out.wrapping_add(r * stride + 16 * z), masks[z], *a) };
        }
    }
}
