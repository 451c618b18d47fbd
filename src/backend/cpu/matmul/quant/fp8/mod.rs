//! FP8 e4m3 weights (one byte each, one f32 scale per output row) multiplied
//! by f32 activations, dequantized inside the kernel: the weight bytes are read
//! once per matmul, and the activations are not quantized (unlike the GGUF
//! kernels), so the result is the f32 matmul of the dequantized weights up to
//! the order of the f32 sums.
//!
//! Kernels: AVX-512 (`avx512`: e4m3 → f16 bits with a shift and a mask, then
//! `vcvtph2ps` and f32 FMAs) where the CPU has it, else a portable one (a
//! 256-entry table). Each output `(i, j)` is one dot product over `k` summed in
//! one fixed order whatever the number of rows `m` (few rows convert the bytes in
//! registers, many decode a group of weight rows to f32 once and reuse it: the
//! same values and the same sums), so a row's result does not depend on its batch.

#[cfg(target_arch = "x86_64")]
mod avx512;

use super::super::OutPtr;
use super::Kernels;
use crate::backend::cpu::pool;
use crate::backend::cpu::weight::Slab;
use crate::backend::fp8::E4M3_TO_F32;

/// Weight rows handled together: their dot products share each activation load.
pub const GROUP: usize = 8;

/// An `n × k` matrix of e4m3 codes with one scale per row.
pub struct Fp8Matrix {
    pub n: usize,
    pub k: usize,
    codes: Slab<u8>,
    scales: Vec<f32>,
}

impl Fp8Matrix {
    /// The matrix of `codes` (`n · k` bytes, row-major) and `scales` (`n`), or
    /// `None` when the sizes disagree.
    pub fn new(n: usize, k: usize, codes: Slab<u8>, scales: Vec<f32>) -> Option<Fp8Matrix> {
        let fits = n.checked_mul(k) == Some(codes.as_slice().len()) && scales.len() == n;
        fits.then_some(Fp8Matrix {
            n,
            k,
            codes,
            scales,
        })
    }

    pub fn row(&self, j: usize) -> &[u8] {
        &self.codes.as_slice()[j * self.k..(j + 1) * self.k]
    }

    pub fn scale(&self, j: usize) -> f32 {
        self.scales[j]
    }

    /// Row `j` dequantized into `out` (`k` values).
    pub fn dequantize_row(&self, j: usize, out: &mut [f32]) {
        let s = self.scales[j];
        for (o, &b) in out.iter_mut().zip(self.row(j)) {
            *o = E4M3_TO_F32[b as usize] * s;
        }
    }

    /// Whether the codes are read in place from the mapped file.
    pub fn is_mapped(&self) -> bool {
        matches!(self.codes, Slab::Mapped { .. })
    }
}

/// The dot products of weight rows `j0..j0 + GROUP` (fewer at the end) with
/// activation rows, through one implementation.
trait GroupKernel: Sync {
    /// Each out-row `i` gets the unscaled dots of the group's rows with `x` row `i`.
    fn group(&self, w: &Fp8Matrix, j0: usize, rows: usize, x: &[f32], m: usize, out: &mut [f32]);
    /// The factor folded into each row's scale (the kernel's decoded values are
    /// the codes' values divided by it).
    fn unit(&self) -> f32;
}

/// `out = x · wᵀ` for `m` rows of `x`.
pub fn matmul(x: &[f32], m: usize, w: &Fp8Matrix, out: &mut [f32], kernels: Kernels) {
    debug_assert!(x.len() == m * w.k && out.len() == m * w.n);
    #[cfg(target_arch = "x86_64")]
    if kernels == Kernels::Best {
        if let Some(k) = avx512::Avx512::new() {
            return run(&k, x, m, w, out);
        }
    }
    let _ = kernels;
    run(&Portable, x, m, w, out)
}

fn run(kernel: &dyn GroupKernel, x: &[f32], m: usize, w: &Fp8Matrix, out: &mut [f32]) {
    let n = w.n;
    let ptr = OutPtr(out.as_mut_ptr());
    let unit = kernel.unit();
    let groups = n.div_ceil(GROUP);
    let groups_per_task = (groups / (rayon::current_num_threads() * 8)).clamp(1, 32);
    pool::for_each(groups.div_ceil(groups_per_task), &|task| {
        let mut dots = vec![0f32; m * GROUP];
        let g1 = ((task + 1) * groups_per_task).min(groups);
        for g in task * groups_per_task..g1 {
            let j0 = g * GROUP;
            let rows = GROUP.min(n - j0);
            kernel.group(w, j0, rows, x, m, &mut dots);
            for i in 0..m {
                for r in 0..rows {
                    let v = dots[i * GROUP + r] * (w.scales[j0 + r] * unit);
                    // SAFETY: column j0 + r belongs to this task alone; i * n + j0 + r < m * n.
                    unsafe { *ptr.at(i * n + j0 + r) = v };
                }
            }
        }
    });
}

/// Lanes of the portable kernel's partial sums.
const LANES: usize = 16;

/// The portable kernel: the group's rows decoded to f32 with the table, then
/// each dot summed in 16 lanes (chunk by chunk, tail last) and the lanes folded
/// in a fixed tree.
struct Portable;

impl GroupKernel for Portable {
    fn group(&self, w: &Fp8Matrix, j0: usize, rows: usize, x: &[f32], m: usize, out: &mut [f32]) {
        let k = w.k;
        let mut decoded = vec![0f32; rows * k];
        for (r, d) in decoded.chunks_mut(k.max(1)).enumerate() {
            for (v, &b) in d.iter_mut().zip(w.row(j0 + r)) {
                *v = E4M3_TO_F32[b as usize];
            }
        }
        for (i, xr) in x.chunks(k).take(m).enumerate() {
            for r in 0..rows {
                out[i * GROUP + r] = portable_dot(&decoded[r * k..(r + 1) * k], xr);
            }
        }
    }

    fn unit(&self) -> f32 {
        1.0
    }
}

fn portable_dot(w: &[f32], x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (wc, xc) = (w.chunks_exact(LANES), x.chunks_exact(LANES));
    let (wt, xt) = (wc.remainder(), xc.remainder());
    for (wc, xc) in wc.zip(xc) {
        for l in 0..LANES {
            acc[l] += wc[l] * xc[l];
        }
    }
    for l in 0..wt.len() {
        acc[l] += wt[l] * xt[l];
    }
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for l in 0..width {
            acc[l] += acc[l + width];
        }
    }
    acc[0]
}

#[cfg(test)]
mod tests;
