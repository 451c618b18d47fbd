//! The FP8 kernels against an f64 matmul of the dequantized weights, and their
//! batch invariance (a row alone equals the same row in a batch, bitwise).

use super::*;
use crate::backend::fp8::is_nan;

/// A deterministic pseudo-random stream (xorshift), enough for test data.
fn stream(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}

fn matrix(n: usize, k: usize, seed: u64) -> Fp8Matrix {
    let mut next = stream(seed);
    let codes = (0..n * k)
        .map(|_| {
            let b = next() as u8;
            if is_nan(b) {
                b - 1
            } else {
                b
            }
        })
        .collect();
    let scales = (0..n)
        .map(|_| (next() % 1000) as f32 / 1e5 + 1e-4)
        .collect();
    Fp8Matrix::new(n, k, Slab::Owned(codes), scales).unwrap()
}

fn acts(m: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut next = stream(seed);
    (0..m * k)
        .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

fn reference(x: &[f32], m: usize, w: &Fp8Matrix) -> Vec<f64> {
    let mut row = vec![0f32; w.k];
    let mut out = vec![0f64; m * w.n];
    for j in 0..w.n {
        w.dequantize_row(j, &mut row);
        for i in 0..m {
            let xr = &x[i * w.k..(i + 1) * w.k];
            out[i * w.n + j] = xr
                .iter()
                .zip(&row)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum();
        }
    }
    out
}

fn run_kernel(x: &[f32], m: usize, w: &Fp8Matrix, kernels: Kernels) -> Vec<f32> {
    let mut out = vec![0f32; m * w.n];
    matmul(x, m, w, &mut out, kernels);
    out
}

#[test]
fn both_kernels_match_the_dequantized_matmul() {
    // n not a multiple of GROUP, k not a multiple of 16.
    for (n, k) in [(13, 70), (8, 16), (40, 129), (1, 5)] {
        let w = matrix(n, k, n as u64 * 31 + k as u64);
        for m in [1, 2, 3, 9] {
            let x = acts(m, k, m as u64);
            let want = reference(&x, m, &w);
            for kernels in [Kernels::Best, Kernels::Portable] {
                let got = run_kernel(&x, m, &w, kernels);
                for (g, r) in got.iter().zip(&want) {
                    let tol = 1e-5 * (1.0 + r.abs());
                    assert!(
                        (*g as f64 - r).abs() <= tol,
                        "{n}x{k} m={m} {kernels:?}: {g} vs {r}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_row_gives_the_same_bits_alone_and_in_a_batch() {
    let (n, k, m) = (37, 200, 11);
    let w = matrix(n, k, 7);
    let x = acts(m, k, 3);
    for kernels in [Kernels::Best, Kernels::Portable] {
        let batch = run_kernel(&x, m, &w, kernels);
        for i in 0..m {
            let alone = run_kernel(&x[i * k..(i + 1) * k], 1, &w, kernels);
            assert_eq!(alone, batch[i * n..(i + 1) * n], "row {i} {kernels:?}");
            let pair = run_kernel(
                &x[i * k..((i + 2).min(m)) * k],
                (i + 2).min(m) - i,
                &w,
                kernels,
            );
            assert_eq!(
                pair[..n],
                batch[i * n..(i + 1) * n],
                "row {i} in a pair {kernels:?}"
            );
        }
    }
}

#[test]
fn sizes_that_disagree_are_refused() {
    assert!(Fp8Matrix::new(2, 3, Slab::Owned(vec![0; 5]), vec![1.0; 2]).is_none());
    assert!(Fp8Matrix::new(2, 3, Slab::Owned(vec![0; 6]), vec![1.0; 1]).is_none());
    assert!(Fp8Matrix::new(usize::MAX, 3, Slab::Owned(vec![]), vec![]).is_none());
}

#[test]
fn fp8_host_tensors_stay_one_byte_per_weight() {
    use crate::backend::cpu::weight::{CpuWeight, WeightData};
    use crate::backend::{DType, HostTensor, TensorBytes};
    let w = matrix(5, 12, 1);
    let host = HostTensor {
        name: "w".into(),
        dtype: DType::F32,
        shape: vec![5, 12],
        bytes: TensorBytes::Owned(w.codes.as_slice().to_vec()),
        quant: None,
        fp8_scales: Some(w.scales.clone()),
    };
    let loaded = CpuWeight::from_host(host.clone(), DType::BF16);
    let WeightData::Fp8(m) = &loaded.data else {
        panic!("not kept in FP8");
    };
    assert_eq!(m.codes.as_slice().len(), 60);
    let (mut a, mut b) = (vec![0f32; 12], vec![0f32; 12]);
    let dense = host.dequantized();
    let dense: Vec<f32> = bytemuck::pod_collect_to_vec(dense.bytes.as_slice());
    for j in 0..5 {
        loaded.row_f32(j, &mut a);
        w.dequantize_row(j, &mut b);
        assert_eq!(a, b);
        assert_eq!(&dense[j * 12..(j + 1) * 12], &b[..]);
    }
}
