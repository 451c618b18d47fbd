//! The arithmetic of attention for the query heads of one token: scores over
//! transposed keys, the softmax, the probability-weighted values.

use super::super::exp::exp;
use super::super::lanes::max_of;
use super::rows::{bf16_to_f32, f16_to_f32, Rows};
use super::{HEADS_AT_ONCE, LANES};
use crate::backend::fp8::Fp8Format;

/// Query heads that share a token's keys and values: several heads are
/// scored per pass over the keys, so each key chunk is loaded once for all
/// of them and their sums are independent chains for the adder.
pub(super) struct Heads<'k, 's, 'v> {
    pub(super) head_dim: usize,
    pub(super) keys: &'k [[f32; LANES]],
    pub(super) scores: &'s mut [f32],
    pub(super) stride: usize,
    /// The positions the token sees, relative to the task's first key.
    pub(super) visible: std::ops::Range<usize>,
    pub(super) scale: f32,
    pub(super) values: &'v Rows<'v>,
}

impl Heads<'_, '_, '_> {
    /// Attends every head of `qs` (head-major, `head_dim` each) into `outs`.
    #[inline(always)]
    pub(super) fn attend_all(mut self, qs: &[f32], outs: &mut [f32]) {
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
    let q: [&[f32]; R] = std::array::from_fn(|r| &q[r][..hd]);
    let chunk: [&[[f32; LANES]]; C] = std::array::from_fn(|c| &keys[c * hd..][..hd]);
    let mut sums = [[[0f32; LANES]; C]; R];
    for d in 0..hd {
        // The sums are independent: interleaved, they overlap in the adder.
        for r in 0..R {
            // SAFETY: every q[r] and chunk[c] holds exactly `hd` entries, and
            // d < hd. Checked indexing here left the loops scalar (LLVM does
            // not see the lengths through the arrays of slices).
            let qd = unsafe { *q[r].get_unchecked(d) };
            for c in 0..C {
                // SAFETY: as for `qd`.
                let k = unsafe { chunk[c].get_unchecked(d) };
                for (s, &k) in sums[r][c].iter_mut().zip(k) {
                    *s += qd * k;
                }
            }
        }
    }
    sums
}
