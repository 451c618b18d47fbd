//! Quantized weights kept in their GGUF blocks (Q8_0, Q4_0, Q4_1, Q4_K, Q5_K,
//! Q6_K), multiplied without dequantizing them: the activations are quantized
//! to 8-bit blocks per matmul (`acts`), and each output is an integer dot
//! product per block scaled in f32, as llama.cpp's CPU backend does.
//!
//! Kernels: AVX-512 VNNI (`avx512`) where the CPU has it, else the portable
//! `scalar` ones. Every output `(i, j)` is one kernel call on weight row `j` and
//! activation row `i`, and rows are quantized independently, so a row's result
//! is bitwise the same whatever the batch.
//!
//! On AVX-512 VNNI CPUs every type is also repacked at load into 16-row tiles
//! (`tiled`; the K-quants' records in `tiled_k`), which serve every matmul of those matrices (decode
//! and prefill alike, so still batch-invariant); the mapped blocks stay for row
//! reads (embedding lookups) and the portable kernels.

pub mod acts;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod fp8;
pub mod scalar;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
pub mod tiled;
#[cfg(target_arch = "x86_64")]
mod tiled_k;

use super::OutPtr;
use crate::backend::cpu::pool;
use crate::backend::cpu::weight::Slab;
use crate::backend::ggml::dequantize;
use crate::backend::ggml::GgmlType;
pub use crate::backend::ggml::{f16_at, scale_min_k4};
use acts::{ActRow, QuantActs};

/// Dot products of one weight row (whole blocks) with each activation row of
/// `a`, into `out` (one per row). A row's result does not depend on the others.
pub type DotFn = fn(w: &[u8], a: &[ActRow], out: &mut [f32]);

/// Which kernels a matmul runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// AVX-512 VNNI where the CPU has it (tiles where the matrix has them), else portable.
    Best,
    /// The row-by-row AVX-512 VNNI kernels even where the matrix has tiles (the
    /// tiles' baseline in benches), else portable.
    Rows,
    /// The portable kernels (tests force them to keep them checked).
    Portable,
}

/// Whether weights of `ty` can stay quantized (have kernels here).
pub fn has_kernels(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q8_0
            | GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q4K
            | GgmlType::Q5K
            | GgmlType::Q6K
    )
}

/// The activation block width paired with weights of `ty`.
fn act_block(ty: GgmlType) -> usize {
    if ty.block_elems() == 256 {
        256
    } else {
        32
    }
}

fn kernel(ty: GgmlType, kernels: Kernels) -> DotFn {
    #[cfg(target_arch = "x86_64")]
    if kernels != Kernels::Portable {
        if let Some(f) = avx512::kernel(ty) {
            return f;
        }
    }
    let _ = kernels;
    match ty {
        GgmlType::Q4_0 => |w, a, o| each(w, a, o, scalar::q4_0),
        GgmlType::Q4_1 => |w, a, o| each(w, a, o, scalar::q4_1),
        GgmlType::Q8_0 => |w, a, o| each(w, a, o, scalar::q8_0),
        GgmlType::Q4K => |w, a, o| each(w, a, o, scalar::q4_k),
        GgmlType::Q5K => |w, a, o| each(w, a, o, scalar::q5_k),
        GgmlType::Q6K => |w, a, o| each(w, a, o, scalar::q6_k),
        other => unreachable!("no quantized kernel for {}", other.name()),
    }
}

fn each(w: &[u8], a: &[ActRow], out: &mut [f32], f: fn(&[u8], ActRow) -> f32) {
    for (o, &ar) in out.iter_mut().zip(a) {
        *o = f(w, ar);
    }
}

/// An `n × k` matrix of quantized rows, each `k / block_elems` blocks.
pub struct QuantMatrix {
    pub ty: GgmlType,
    pub n: usize,
    pub k: usize,
    data: Slab<u8>,
    /// The rows in 16-row tiles, where this CPU and type have tiled kernels.
    #[cfg(target_arch = "x86_64")]
    tiles: Option<tiled::Tiles>,
}

impl QuantMatrix {
    /// Whether `len` bytes are exactly `n` rows of `k` values of `ty`, a type with kernels.
    pub fn fits(ty: GgmlType, n: usize, k: usize, len: usize) -> bool {
        has_kernels(ty)
            && k.is_multiple_of(ty.block_elems())
            && n.checked_mul(k / ty.block_elems() * ty.block_bytes()) == Some(len)
    }

    /// The matrix of `data`, which [`QuantMatrix::fits`] has accepted.
    pub fn from_parts(ty: GgmlType, n: usize, k: usize, data: Slab<u8>) -> QuantMatrix {
        debug_assert!(QuantMatrix::fits(ty, n, k, data.as_slice().len()));
        let rb = k / ty.block_elems() * ty.block_bytes();
        #[cfg(target_arch = "x86_64")]
        let tiles = tiled::Tiles::repack(ty, n, k, |j| &data.as_slice()[j * rb..(j + 1) * rb]);
        QuantMatrix {
            ty,
            n,
            k,
            data,
            #[cfg(target_arch = "x86_64")]
            tiles,
        }
    }

    /// Whether matmuls with the best kernels read 16-row tiles.
    pub fn is_tiled(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return self.tiles.is_some();
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    pub fn row_bytes(&self) -> usize {
        self.k / self.ty.block_elems() * self.ty.block_bytes()
    }

    pub fn row(&self, j: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.data.as_slice()[j * rb..(j + 1) * rb]
    }

    /// Row `j` dequantized into `out` (`k` values): an embedding lookup reads
    /// just the rows it needs.
    pub fn dequantize_row(&self, j: usize, out: &mut [f32]) {
        dequantize(self.ty, self.row(j), out);
    }

    /// Whether the blocks are read in place from the mapped file.
    pub fn is_mapped(&self) -> bool {
        matches!(self.data, Slab::Mapped { .. })
    }
}

/// `out = x · wᵀ` for `m` rows of `x`.
pub fn matmul(x: &[f32], m: usize, w: &QuantMatrix, out: &mut [f32], kernels: Kernels) {
    let (n, k) = (w.n, w.k);
    debug_assert!(x.len() == m * k && out.len() == m * n);
    let acts = QuantActs::new(x, k, act_block(w.ty));
    #[cfg(target_arch = "x86_64")]
    if let (Kernels::Best, Some(tiles)) = (kernels, &w.tiles) {
        return tiles.matmul(&acts, m, out);
    }
    let dot = kernel(w.ty, kernels);
    let ptr = OutPtr(out.as_mut_ptr());
    let rows: Vec<ActRow> = (0..m).map(|i| acts.row(i)).collect();
    // Tasks of consecutive weight rows; within one, a few rows at a time stay
    // in L1 while blocks of activation rows pass over them.
    const GROUP: usize = 8;
    const ROW_BLOCK: usize = 16;
    let rows_per_task = (n / (rayon::current_num_threads() * 16)).clamp(GROUP, 256);
    pool::for_each(n.div_ceil(rows_per_task), &|task| {
        let (j0, j1) = (task * rows_per_task, ((task + 1) * rows_per_task).min(n));
        let mut tmp = [0f32; ROW_BLOCK];
        for g in (j0..j1).step_by(GROUP) {
            let g1 = (g + GROUP).min(j1);
            for i0 in (0..m).step_by(ROW_BLOCK) {
                let block = &rows[i0..(i0 + ROW_BLOCK).min(m)];
                for j in g..g1 {
                    dot(w.row(j), block, &mut tmp[..block.len()]);
                    for (r, &v) in tmp[..block.len()].iter().enumerate() {
                        // SAFETY: column j belongs to this task alone; (i0 + r) * n + j < m * n.
                        unsafe { *ptr.at((i0 + r) * n + j) = v };
                    }
                }
            }
        }
    });
}
