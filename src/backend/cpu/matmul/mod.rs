//! `out[m, n] = x[m, k] · w[n, k]ᵀ` with `w` in its stored dtype.
//!
//! Two implementations, chosen by the weight's layout (fixed when it was loaded):
//! - `packed` (x86-64 with AVX-512): bf16 and f16 matrices repacked into column
//!   panels, multiplied by AVX-512 kernels — `vdpbf16ps` on bf16 pairs (the
//!   activations rounded to bf16 once per matmul), or f16 widened with
//!   `vcvtph2ps` and f32 FMAs. One loop nest serves decode and prefill, and
//!   every output element is computed by the same instructions in the same
//!   order whatever the number of rows: a row's result does not depend on the
//!   batch it runs in. On CPUs with AMX (Sapphire Rapids on), bf16 matrices
//!   are multiplied on AMX tiles instead, for every number of rows (`amx.rs`).
//! - `quant`: GGUF blocks (Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K) read in place,
//!   the activations quantized to 8-bit blocks (see its docs); batch-invariant.
//!   `quant::fp8`: FP8 e4m3 weights with row scales, f32 activations; batch-invariant.
//! - `portable`: the stored row-major layout on any CPU — a streaming kernel for
//!   few rows and the `gemm` crate for many. f32 weights always take it; bf16 and
//!   f16 take it on CPUs without AVX-512 (BF16). Its results for a row may
//!   change with the number of rows (the two kernels sum in different orders).

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
pub mod packed;
mod portable;
pub mod quant;
#[cfg(test)]
mod tests;

use super::weight::{CpuWeight, WeightData};

/// A pointer to `out` shared by tasks that own disjoint columns of it.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every read (of a partial sum) and write through the pointer is to a
// column range that exactly one task owns, and `out` outlives the parallel
// region that uses it.
unsafe impl Send for OutPtr {}
// SAFETY: as for Send.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// A method, so closures capture the whole (Send) wrapper rather than its raw field.
    fn at(self, index: usize) -> *mut f32 {
        self.0.wrapping_add(index)
    }
}

pub fn matmul(x: &[f32], w: &CpuWeight, bias: Option<&[f32]>, out: &mut [f32]) {
    let (n, k) = (w.rows(), w.cols());
    if k == 0 {
        out.fill(0.0);
        return;
    }
    let m = x.len() / k;
    assert!(
        x.len() == m * k && out.len() == m * n,
        "matmul: x has {} elements, out {}, weight is {n}x{k}",
        x.len(),
        out.len()
    );
    multiply(x, m, w, out);
    if let Some(b) = bias {
        for row in out.chunks_mut(n) {
            row.iter_mut().zip(b).for_each(|(o, b)| *o += b);
        }
    }
}

/// Each part into its columns of `out`: in place for one row, else through a
/// buffer of the part's own rows.
fn stacked(x: &[f32], m: usize, parts: &[CpuWeight], out: &mut [f32]) {
    let n: usize = parts.iter().map(CpuWeight::rows).sum();
    let mut first = 0;
    let mut part_out = Vec::new();
    for part in parts {
        let width = part.rows();
        if m == 1 {
            multiply(x, m, part, &mut out[first..first + width]);
            first += width;
            continue;
        }
        part_out.clear();
        part_out.resize(m * width, 0.0);
        multiply(x, m, part, &mut part_out);
        for (row, got) in out.chunks_mut(n).zip(part_out.chunks(width)) {
            row[first..first + width].copy_from_slice(got);
        }
        first += width;
    }
}

/// A kernel family that a test or a bench pins (`None`: the one [`matmul`] picks).
#[cfg(target_arch = "x86_64")]
pub type Family = Option<packed::Bf16Kernel>;
#[cfg(not(target_arch = "x86_64"))]
pub type Family = Option<()>;

/// Every family this machine multiplies `w` with: each bf16 kernel family it
/// runs (AMX and AVX-512 where both do) for a packed bf16 matrix, else
/// [`matmul`]'s own.
pub fn families(w: &CpuWeight) -> Vec<Family> {
    #[cfg(target_arch = "x86_64")]
    if let WeightData::Packed(p) = &w.data {
        if p.kind() == packed::PackedKind::Bf16 {
            return packed::Bf16Kernel::available()
                .into_iter()
                .map(Some)
                .collect();
        }
    }
    let _ = w;
    vec![None]
}

/// `out = x · wᵀ` on `family` (one of [`families`]`(w)`).
pub fn matmul_on(x: &[f32], w: &CpuWeight, out: &mut [f32], family: Family) {
    #[cfg(target_arch = "x86_64")]
    if let (Some(kernel), WeightData::Packed(p)) = (family, &w.data) {
        return packed::matmul_with(x, x.len() / w.cols(), p, out, kernel);
    }
    let _ = family;
    matmul(x, w, None, out);
}

/// The kernel for the weight's layout.
fn multiply(x: &[f32], m: usize, w: &CpuWeight, out: &mut [f32]) {
    if let WeightData::Quant(q) = &w.data {
        return quant::matmul(x, m, q, out, quant::Kernels::Best);
    }
    if let WeightData::Fp8(q) = &w.data {
        return quant::fp8::matmul(x, m, q, out, quant::Kernels::Best);
    }
    if let WeightData::Stacked(parts) = &w.data {
        return stacked(x, m, parts, out);
    }
    #[cfg(target_arch = "x86_64")]
    if let WeightData::Packed(p) = &w.data {
        return packed::matmul(x, m, p, out);
    }
    portable::matmul(x, m, w, out)
}
