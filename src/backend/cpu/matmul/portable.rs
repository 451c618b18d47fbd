//! The portable matmul, on weights in their stored row-major layout.
//!
//! Few rows (decode): each weight row is streamed once from memory and dotted
//! with every input row — memory-bound, so the dtype conversion is free.
//! Many rows (prefill): panels of weight rows are widened to f32 and handed to
//! the `gemm` crate, which blocks for the caches and uses the widest SIMD.

use rayon::prelude::*;

use super::OutPtr;
use crate::backend::cpu::weight::{CpuWeight, WeightData};

/// At or below this many input rows the streaming kernel wins.
const STREAMING_MAX_ROWS: usize = 4;
/// Weight rows widened to f32 at a time on the GEMM path.
const PANEL_ROWS: usize = 128;
/// Elements widened to f32 at a time on the streaming path (fits L1).
const CHUNK: usize = 1024;

/// `out = x · wᵀ` for `m` rows of `x`, `w` in its natural row-major layout.
pub fn matmul(x: &[f32], m: usize, w: &CpuWeight, out: &mut [f32]) {
    if m <= STREAMING_MAX_ROWS {
        streaming(x, m, w, out);
    } else {
        panels(x, m, w, out);
    }
}

fn streaming(x: &[f32], m: usize, w: &CpuWeight, out: &mut [f32]) {
    let (n, k) = (w.rows(), w.cols());
    let ptr = OutPtr(out.as_mut_ptr());
    let rows_per_task = (n / (rayon::current_num_threads() * 16)).clamp(1, 256);
    (0..n.div_ceil(rows_per_task))
        .into_par_iter()
        .for_each(|task| {
            let mut wide = vec![0f32; CHUNK.min(k)];
            let mut acc = [0f32; STREAMING_MAX_ROWS];
            for j in task * rows_per_task..((task + 1) * rows_per_task).min(n) {
                acc[..m].fill(0.0);
                let row_start = j * k;
                let mut c = 0;
                while c < k {
                    let len = CHUNK.min(k - c);
                    let wr: &[f32] = match &w.data {
                        WeightData::F32(s) => &s.as_slice()[row_start + c..row_start + c + len],
                        _ => {
                            w.read_f32(row_start + c..row_start + c + len, &mut wide[..len]);
                            &wide[..len]
                        }
                    };
                    for (i, a) in acc[..m].iter_mut().enumerate() {
                        *a += dot(&x[i * k + c..i * k + c + len], wr);
                    }
                    c += len;
                }
                for (i, &a) in acc[..m].iter().enumerate() {
                    // SAFETY: column j belongs to this task alone; i * n + j < m * n.
                    unsafe { *ptr.at(i * n + j) = a };
                }
            }
        });
}

fn panels(x: &[f32], m: usize, w: &CpuWeight, out: &mut [f32]) {
    let (n, k) = (w.rows(), w.cols());
    let ptr = OutPtr(out.as_mut_ptr());
    (0..n.div_ceil(PANEL_ROWS)).into_par_iter().for_each(|p| {
        let (j0, j1) = (p * PANEL_ROWS, ((p + 1) * PANEL_ROWS).min(n));
        let widened;
        let panel: &[f32] = match &w.data {
            WeightData::F32(s) => &s.as_slice()[j0 * k..j1 * k],
            _ => {
                let mut buf = vec![0f32; (j1 - j0) * k];
                w.read_f32(j0 * k..j1 * k, &mut buf);
                widened = buf;
                &widened
            }
        };
        // SAFETY: dst covers rows 0..m, columns j0..j1 of `out` (row stride n),
        // which no other task writes; lhs/rhs are valid for the given strides.
        unsafe {
            gemm::gemm(
                m,
                j1 - j0,
                k,
                ptr.at(j0),
                1,
                n as isize,
                false,
                x.as_ptr(),
                1,
                k as isize,
                panel.as_ptr(),
                k as isize,
                1,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    });
}

/// f32 dot product with the widest SIMD the CPU has.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected at run time.
            return unsafe { dot_avx512(a, b) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the features were detected at run time.
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_lanes::<8>(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes::<64>(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes::<32>(a, b)
}

/// Independent accumulators per lane let the compiler vectorize without
/// reassociating a single sum.
#[inline(always)]
fn dot_lanes<const L: usize>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; L];
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..L {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    acc.iter().sum::<f32>() + tail
}
