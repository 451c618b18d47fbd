//! Every dtype and layout against an f64 reference, on random inputs that are
//! never zero, with tolerances derived from the arithmetic each path does.

use half::{bf16, f16};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{families, matmul, matmul_on};
use crate::backend::cpu::weight::CpuWeight;
#[cfg(target_arch = "x86_64")]
use crate::backend::cpu::weight::WeightData;
use crate::backend::DType;
use crate::backend::{HostTensor, TensorBytes};

const ROWS: [usize; 6] = [1, 2, 3, 5, 17, 64];
/// (n, k): odd and even, below and above a panel and a k-block.
const SHAPES: [(usize, usize); 4] = [(7, 129), (300, 129), (7, 2048), (300, 2048)];
/// f32 unit roundoff.
const U32: f64 = 1.0 / (1u64 << 24) as f64;
/// bf16 unit roundoff: round to nearest keeps 8 significant bits.
const U_BF16: f64 = 1.0 / 512.0;

/// Uniform in ±[0.1, 1): never zero, so no term can vanish unnoticed.
fn random(len: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..len)
        .map(|_| {
            let v = rng.random_range(0.1f32..1.0);
            if rng.random::<bool>() {
                v
            } else {
                -v
            }
        })
        .collect()
}

fn host(values: &[f32], shape: &[usize]) -> HostTensor {
    HostTensor {
        name: "w".into(),
        dtype: DType::F32,
        shape: shape.to_vec(),
        bytes: TensorBytes::Owned(bytemuck::cast_slice(values).to_vec()),
        quant: None,
        fp8_scales: None,
    }
}

fn round(dtype: DType, v: f32) -> f32 {
    match dtype {
        DType::F32 => v,
        DType::F16 => f16::from_f32(v).to_f32(),
        DType::BF16 => bf16::from_f32(v).to_f32(),
    }
}

/// `x · wᵀ` in f64 with `w` rounded to `dtype` (and `x` too when `round_x`),
/// and `Σ |x·w|` per output, which scales every rounding error bound.
fn reference(
    x: &[f32],
    w: &[f32],
    n: usize,
    k: usize,
    dtype: DType,
    round_x: bool,
) -> (Vec<f64>, Vec<f64>) {
    let w: Vec<f64> = w.iter().map(|&v| round(dtype, v) as f64).collect();
    let x: Vec<f64> = x
        .iter()
        .map(|&v| if round_x { round(DType::BF16, v) } else { v } as f64)
        .collect();
    let mut out = Vec::new();
    let mut scale = Vec::new();
    for xr in x.chunks(k) {
        for wr in w.chunks(k) {
            out.push(xr.iter().zip(wr).map(|(a, b)| a * b).sum());
            scale.push(xr.iter().zip(wr).map(|(a, b)| (a * b).abs()).sum());
        }
    }
    debug_assert_eq!(out.len(), x.len() / k * n);
    (out, scale)
}

fn check(got: &[f32], want: &[f64], scale: &[f64], bound: f64, what: &str) {
    for (i, ((&g, &w), &s)) in got.iter().zip(want).zip(scale).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(
            err <= bound * s,
            "{what}: element {i}: got {g}, want {w}, error {err:.3e} > {:.3e}",
            bound * s
        );
    }
}

#[cfg(target_arch = "x86_64")]
fn is_packed(w: &CpuWeight) -> bool {
    matches!(w.data, WeightData::Packed(_))
}

#[cfg(not(target_arch = "x86_64"))]
fn is_packed(_: &CpuWeight) -> bool {
    false
}

/// Both layouts (the CPU's and the portable one) of every dtype, every shape and
/// row count. f32 accumulation of `k` exact products errs by at most
/// `k·u·Σ|x·w|` (u = 2⁻²⁴); rounding the activations to bf16 adds `u_bf16·Σ|x·w|`.
#[test]
fn every_dtype_and_layout_matches_f64_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        for (n, k) in SHAPES {
            let w = random(n * k, &mut rng);
            let layouts = [
                CpuWeight::from_host(host(&w, &[n, k]), dtype),
                CpuWeight::natural(host(&w, &[n, k]), dtype),
            ];
            for m in ROWS {
                let x = random(m * k, &mut rng);
                for (weight, path) in layouts
                    .iter()
                    .flat_map(|w| families(w).into_iter().map(move |p| (w, p)))
                {
                    let rounds_x = dtype == DType::BF16 && is_packed(weight);
                    let accumulation = (k as f64 + 4.0) * U32;
                    let packed = is_packed(weight);
                    let what = format!("{dtype:?} packed={packed} {path:?} m={m} n={n} k={k}");
                    let mut out = vec![f32::NAN; m * n];
                    matmul_on(&x, weight, &mut out, path);
                    let (want, scale) = reference(&x, &w, n, k, dtype, false);
                    let bound = accumulation + if rounds_x { U_BF16 } else { 0.0 };
                    check(&out, &want, &scale, bound, &what);
                    if rounds_x {
                        // Against activations rounded like the kernel rounds them:
                        // only the accumulation error is left.
                        let (want, scale) = reference(&x, &w, n, k, dtype, true);
                        check(
                            &out,
                            &want,
                            &scale,
                            accumulation,
                            &format!("{what} (x in bf16)"),
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn bias_is_added_per_row() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (m, n, k) = (3, 70, 33);
    let w = random(n * k, &mut rng);
    let x = random(m * k, &mut rng);
    let bias = random(n, &mut rng);
    for dtype in [DType::F32, DType::BF16] {
        let weight = CpuWeight::from_host(host(&w, &[n, k]), dtype);
        let mut plain = vec![0.0; m * n];
        matmul(&x, &weight, None, &mut plain);
        let mut biased = vec![0.0; m * n];
        matmul(&x, &weight, Some(&bias), &mut biased);
        for (i, (b, p)) in biased.iter().zip(&plain).enumerate() {
            assert_eq!(*b, p + bias[i % n]);
        }
    }
}

/// A row's result is bitwise the same alone (m = 1, the decode kernel, k in one
/// block) as inside batches of 17 and 64 rows (k in blocks, row tiles).
#[cfg(target_arch = "x86_64")]
#[test]
fn packed_rows_are_batch_invariant() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (n, k) = (300, 2048);
    let w = random(n * k, &mut rng);
    for dtype in [DType::F16, DType::BF16] {
        let weight = CpuWeight::from_host(host(&w, &[n, k]), dtype);
        if !is_packed(&weight) {
            eprintln!("no AVX-512 {dtype:?} kernel on this CPU: nothing to check");
            continue;
        }
        for (m, path) in [17, 64]
            .into_iter()
            .flat_map(|m| families(&weight).into_iter().map(move |p| (m, p)))
        {
            let x = random(m * k, &mut rng);
            let mut batch = vec![0.0; m * n];
            matmul_on(&x, &weight, &mut batch, path);
            for i in 0..m {
                let mut alone = vec![0.0; n];
                matmul_on(&x[i * k..(i + 1) * k], &weight, &mut alone, path);
                let together = &batch[i * n..(i + 1) * n];
                let same = alone
                    .iter()
                    .zip(together)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{dtype:?} {path:?}: row {i} of {m} differs from the row alone"
                );
            }
        }
    }
}

/// The kernel's activation rounding is round-to-nearest-even, as `half` does it.
#[cfg(target_arch = "x86_64")]
#[test]
fn activations_round_to_nearest_even_pairs() {
    use super::packed::PackedMatrix;
    if !PackedMatrix::bf16_supported() {
        eprintln!("no AVX-512 BF16 on this CPU: nothing to check");
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for k in [1, 2, 31, 32, 33, 129] {
        let m = 3;
        let mut x = random(m * k, &mut rng);
        // Exact ties, both ways: 1 + 2⁻⁸ rounds down to 1, 1 + 3·2⁻⁸ up to 1 + 2⁻⁶.
        x[0] = 1.0 + 1.0 / 256.0;
        if k > 1 {
            x[1] = 1.0 + 3.0 / 256.0;
        }
        // SAFETY: the features were checked above.
        let half_pairs = k.div_ceil(2) + 3;
        let pairs = unsafe { super::avx512::round_to_bf16_pairs(&x, (m, k), (m + 1, half_pairs)) };
        let padding = pairs[m * half_pairs..].iter().chain(
            (0..m).flat_map(|r| &pairs[r * half_pairs + k.div_ceil(2)..(r + 1) * half_pairs]),
        );
        assert!(
            padding.into_iter().all(|&p| p == 0),
            "k={k}: padding pairs and rows are zero"
        );
        for (r, row) in x.chunks(k).enumerate() {
            for (c, &v) in row.iter().enumerate() {
                let pair = pairs[r * half_pairs + c / 2];
                let bits = (pair >> (16 * (c % 2))) as u16;
                assert_eq!(bits, bf16::from_f32(v).to_bits(), "k={k} row {r} col {c}");
            }
            if k % 2 == 1 {
                assert_eq!(
                    pairs[r * half_pairs + k / 2] >> 16,
                    0,
                    "odd k pads with zero"
                );
            }
        }
    }
}

#[test]
fn packed_rows_read_back() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (n, k) = (70, 33);
    let w = random(n * k, &mut rng);
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let weight = CpuWeight::from_host(host(&w, &[n, k]), dtype);
        let mut row = vec![0.0; k];
        for j in [0, 1, 63, 64, 69] {
            weight.row_f32(j, &mut row);
            let want: Vec<f32> = w[j * k..(j + 1) * k]
                .iter()
                .map(|&v| round(dtype, v))
                .collect();
            assert_eq!(row, want, "{dtype:?} row {j}");
        }
        let all = weight.f32_values();
        assert_eq!(all[5 * k + 7], round(dtype, w[5 * k + 7]));
    }
}

/// Every row count a decode batch can have (1..=33: each register-tile split,
/// one and several k-blocks, full and partial AMX tiles), against the f64 reference and against each row
/// alone, bitwise. k is odd and not a multiple of 32; n is not a multiple of
/// the 64-column panel.
#[cfg(target_arch = "x86_64")]
#[test]
fn packed_tiles_of_every_row_count_match_reference_and_rows_alone() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    for (n, k) in [(70, 45), (130, 301)] {
        let w = random(n * k, &mut rng);
        for dtype in [DType::F16, DType::BF16] {
            let weight = CpuWeight::from_host(host(&w, &[n, k]), dtype);
            if !is_packed(&weight) {
                eprintln!("no AVX-512 {dtype:?} kernel on this CPU: nothing to check");
                continue;
            }
            let accumulation = (k as f64 + 4.0) * U32;
            for (m, path) in
                (1..=33).flat_map(|m| families(&weight).into_iter().map(move |p| (m, p)))
            {
                let what = format!("{dtype:?} {path:?} m={m} n={n} k={k}");
                let x = random(m * k, &mut rng);
                let mut batch = vec![f32::NAN; m * n];
                matmul_on(&x, &weight, &mut batch, path);
                let rounds_x = dtype == DType::BF16;
                let (want, scale) = reference(&x, &w, n, k, dtype, rounds_x);
                check(&batch, &want, &scale, accumulation, &what);
                for i in 0..m {
                    let mut alone = vec![f32::NAN; n];
                    matmul_on(&x[i * k..(i + 1) * k], &weight, &mut alone, path);
                    let together = &batch[i * n..(i + 1) * n];
                    let same = alone
                        .iter()
                        .zip(together)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{what}: row {i} differs from the row alone");
                }
            }
        }
    }
}

/// The row tiles cover the rows in order, each 1..=MR rows, sizes within one.
#[cfg(target_arch = "x86_64")]
#[test]
fn row_tiles_are_balanced_and_cover_every_row() {
    use super::packed::{row_tiles, MR};
    for m in 1..=40 {
        let tiles: Vec<_> = row_tiles(m).collect();
        assert_eq!(tiles.len(), m.div_ceil(MR), "m={m}");
        let mut next = 0;
        for &(row, rows) in &tiles {
            assert_eq!(row, next, "m={m}: {tiles:?}");
            assert!((1..=MR).contains(&rows), "m={m}: {tiles:?}");
            next += rows;
        }
        assert_eq!(next, m);
        let sizes = tiles.iter().map(|t| t.1);
        let (lo, hi) = (sizes.clone().min().unwrap(), sizes.max().unwrap());
        assert!(hi - lo <= 1, "m={m}: {tiles:?}");
    }
}
