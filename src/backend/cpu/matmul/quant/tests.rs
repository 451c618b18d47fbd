//! Each quantized kernel (portable and AVX-512) against the same product in
//! f64 over dequantized weights and dequantized activations: the integer sums
//! are exact, so only f32 rounding separates them. Then the whole matmul against
//! the unquantized activations (the activation rounding bounded), batch
//! invariance, and row reads.

use half::f16;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::acts::QuantActs;
use super::{act_block, kernel, matmul, DotFn, Kernels, QuantMatrix};
use crate::backend::cpu::weight::{CpuWeight, Slab, WeightData};
use crate::backend::ggml::dequantize;
use crate::backend::ggml::GgmlType;
use crate::backend::DType;
use crate::backend::{HostTensor, TensorBytes};

const TYPES: [GgmlType; 6] = [
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

/// Byte offsets of a block's f16 scales (random bytes there could be inf/NaN).
fn f16_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q8_0 | GgmlType::Q4_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q6K => &[208],
        _ => unreachable!(),
    }
}

/// `n` rows of `k` random values of `ty`: random quants, scales in ±[0.001, 0.05).
fn random_blocks(ty: GgmlType, n: usize, k: usize, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let blocks = n * k / ty.block_elems();
    let mut bytes: Vec<u8> = (0..blocks * ty.block_bytes())
        .map(|_| rng.random())
        .collect();
    for b in bytes.chunks_exact_mut(ty.block_bytes()) {
        for &at in f16_fields(ty) {
            let mut v = rng.random_range(0.001f32..0.05);
            if rng.random::<bool>() {
                v = -v;
            }
            b[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
        }
    }
    bytes
}

fn random_x(len: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-2.0f32..2.0)).collect()
}

fn dequantized(ty: GgmlType, bytes: &[u8], len: usize) -> Vec<f32> {
    let mut out = vec![0f32; len];
    dequantize(ty, bytes, &mut out);
    out
}

/// Kernels to check: the portable ones always, AVX-512 where this CPU has it.
fn kernel_sets(ty: GgmlType) -> Vec<(&'static str, DotFn)> {
    let mut sets: Vec<(&'static str, DotFn)> = vec![("portable", kernel(ty, Kernels::Portable))];
    #[cfg(target_arch = "x86_64")]
    if let Some(f) = super::avx512::kernel(ty) {
        sets.push(("avx512", f));
    } else {
        println!("AVX-512 VNNI kernels not checked: this CPU lacks them");
    }
    sets
}

#[test]
fn kernels_match_f64_over_dequantized_values() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for ty in TYPES {
        // 1, 2 and 3 blocks (odd counts take the AVX-512 single-block tail), then many.
        for blocks in [1, 2, 3, 9] {
            let k = blocks * ty.block_elems();
            let w = random_blocks(ty, 1, k, &mut rng);
            let x = random_x(k, &mut rng);
            let acts = QuantActs::new(&x, k, act_block(ty));
            let wf = dequantized(ty, &w, k);
            let a = acts.row(0);
            let af: Vec<f64> = (0..k)
                .map(|j| a.qs[j] as f64 * a.d[j / acts.block] as f64)
                .collect();
            let want: f64 = wf.iter().zip(&af).map(|(&w, &a)| w as f64 * a).sum();
            let scale: f64 = wf
                .iter()
                .zip(&af)
                .map(|(&w, &a)| (w as f64 * a).abs())
                .sum();
            for (name, dot) in kernel_sets(ty) {
                let mut got = [0f32];
                dot(&w, &[a], &mut got);
                let got = got[0] as f64;
                let tol = 1e-5 * scale + 1e-6;
                assert!(
                    (got - want).abs() <= tol,
                    "{} {name} k={k}: {got} vs {want} (tol {tol})",
                    ty.name()
                );
            }
        }
    }
}

fn quant_weight(ty: GgmlType, n: usize, k: usize, bytes: Vec<u8>) -> QuantMatrix {
    assert!(QuantMatrix::fits(ty, n, k, bytes.len()));
    QuantMatrix::from_parts(ty, n, k, Slab::Owned(bytes))
}

#[test]
fn matmul_is_close_to_f32_and_batch_invariant() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for ty in TYPES {
        let (n, k, m) = (37, 2 * 256, 5);
        let bytes = random_blocks(ty, n, k, &mut rng);
        let wf = dequantized(ty, &bytes, n * k);
        let w = quant_weight(ty, n, k, bytes);
        let x = random_x(m * k, &mut rng);
        for kernels in [Kernels::Portable, Kernels::Best] {
            let mut out = vec![0f32; m * n];
            matmul(&x, m, &w, &mut out, kernels);
            for i in 0..m {
                // The same row alone: bitwise the same outputs.
                let mut alone = vec![0f32; n];
                matmul(&x[i * k..(i + 1) * k], 1, &w, &mut alone, kernels);
                assert_eq!(
                    alone,
                    out[i * n..(i + 1) * n],
                    "{} {kernels:?} row {i}",
                    ty.name()
                );
                for j in 0..n {
                    let (xr, wr) = (&x[i * k..(i + 1) * k], &wf[j * k..(j + 1) * k]);
                    let want: f64 = xr.iter().zip(wr).map(|(&a, &b)| a as f64 * b as f64).sum();
                    // Each activation is off by at most half a step, amax/254, of its block.
                    let err: f64 = xr
                        .chunks(act_block(ty))
                        .zip(wr.chunks(act_block(ty)))
                        .map(|(xb, wb)| {
                            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                            wb.iter().map(|&w| w.abs() as f64).sum::<f64>() * amax / 254.0
                        })
                        .sum();
                    let got = out[i * n + j] as f64;
                    assert!(
                        (got - want).abs() <= err * 1.01 + 1e-4,
                        "{} {kernels:?} ({i},{j}): {got} vs {want} (bound {err})",
                        ty.name()
                    );
                }
            }
        }
    }
}

#[test]
fn cpu_weight_keeps_blocks_and_reads_rows() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (ty, n, k) = (GgmlType::Q4_1, 6, 64);
    let bytes = random_blocks(ty, n, k, &mut rng);
    let wf = dequantized(ty, &bytes, n * k);
    let host = HostTensor {
        name: "w".into(),
        dtype: DType::F32,
        shape: vec![n, k],
        bytes: TensorBytes::Owned(bytes),
        quant: Some(ty),
        fp8_scales: None,
    };
    let w = CpuWeight::from_host(host.clone(), DType::F32);
    assert!(matches!(w.data, WeightData::Quant(_)));
    let mut row = vec![0f32; k];
    w.row_f32(4, &mut row);
    assert_eq!(row, wf[4 * k..5 * k]);
    let mut part = vec![0f32; 100];
    w.read_f32(50..150, &mut part);
    assert_eq!(part, wf[50..150]);
    // The natural layout (the CUDA upload's) dequantizes.
    let natural = CpuWeight::natural(host, DType::F32);
    assert_eq!(natural.f32_values().as_ref(), wf.as_slice());
}

#[test]
fn tiled_matmul_matches_portable_for_any_row_and_column_count() {
    let mut rng = ChaCha8Rng::seed_from_u64(19);
    // 3 and 4 blocks a row: Q4_0 and Q8_0 records hold pairs of blocks, the last alone.
    for (ty, blocks) in TYPES.into_iter().flat_map(|ty| [(ty, 3), (ty, 4)]) {
        // 35 columns: two full 16-row tiles and a padded one.
        let (n, k) = (35, blocks * ty.block_elems());
        let w = quant_weight(ty, n, k, random_blocks(ty, n, k, &mut rng));
        if !w.is_tiled() {
            #[cfg(target_arch = "x86_64")]
            assert!(!super::avx512::supported(), "{} is not tiled", ty.name());
            println!("tiled kernels not checked: this CPU lacks AVX-512 VNNI");
            return;
        }
        // 9 rows: two passes of 4 and one row alone.
        let m = 9;
        let x = random_x(m * k, &mut rng);
        let (mut tiled, mut portable) = (vec![0f32; m * n], vec![0f32; m * n]);
        matmul(&x, m, &w, &mut tiled, Kernels::Best);
        matmul(&x, m, &w, &mut portable, Kernels::Portable);
        for (i, (t, p)) in tiled.iter().zip(&portable).enumerate() {
            // Same integer sums; only the f32 order of the per-block scaling differs.
            assert!(
                (t - p).abs() <= 1e-4 * p.abs().max(1.0),
                "{} x{blocks} [{i}]: {t} vs {p}",
                ty.name()
            );
        }
    }
}

/// q and k in Q4_K, v in Q6_K (a Q4_K_M file's mix): the stacked weight keeps
/// each part in its blocks, and every output column is bitwise the one its part
/// alone gives, for decode (one row, written in place) and prefill rows alike.
/// Its rows read back as the parts' values.
#[test]
fn parts_of_different_types_stay_apart_and_multiply_as_their_parts() {
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    let k = 512;
    let parts: Vec<(GgmlType, usize)> = vec![
        (GgmlType::Q4K, 48),
        (GgmlType::Q4K, 16),
        (GgmlType::Q6K, 16),
    ];
    let hosts: Vec<HostTensor> = parts
        .iter()
        .map(|&(ty, n)| HostTensor {
            name: format!("{ty:?}"),
            dtype: DType::F32,
            shape: vec![n, k],
            bytes: TensorBytes::Owned(random_blocks(ty, n, k, &mut rng)),
            quant: Some(ty),
            fp8_scales: None,
        })
        .collect();
    let stacked = CpuWeight::stacked("qkv", hosts.clone(), DType::F32).unwrap();
    let WeightData::Stacked(kept) = &stacked.data else {
        panic!("the parts were fused");
    };
    assert!(kept.iter().all(|p| matches!(p.data, WeightData::Quant(_))));
    assert_eq!((stacked.rows(), stacked.cols()), (80, k));
    let alone: Vec<CpuWeight> = hosts
        .iter()
        .map(|h| CpuWeight::from_host(h.clone(), DType::F32))
        .collect();
    for m in [1, 3] {
        let x = random_x(m * k, &mut rng);
        let mut got = vec![0f32; m * 80];
        crate::backend::cpu::matmul::matmul(&x, &stacked, None, &mut got);
        let mut first = 0;
        for part in &alone {
            let n = part.rows();
            let mut want = vec![0f32; m * n];
            crate::backend::cpu::matmul::matmul(&x, part, None, &mut want);
            for i in 0..m {
                assert_eq!(
                    got[i * 80 + first..i * 80 + first + n],
                    want[i * n..(i + 1) * n],
                    "m={m} row {i}"
                );
            }
            first += n;
        }
    }
    let values: Vec<f32> = parts
        .iter()
        .zip(&hosts)
        .flat_map(|(&(ty, n), h)| dequantized(ty, h.bytes.as_slice(), n * k))
        .collect();
    assert_eq!(stacked.f32_values().as_ref(), values.as_slice());
    // Parts of one type fuse into one matrix, as before.
    let same = CpuWeight::stacked("qk", hosts[..2].to_vec(), DType::F32).unwrap();
    assert!(matches!(same.data, WeightData::Quant(_)));
}
