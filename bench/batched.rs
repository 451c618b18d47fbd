//! The bf16 and f32 matmuls at decode and prefill batch sizes (1–128
//! activation rows) on the 1.1B Llama's largest shapes: weight GB/s and
//! GFLOP/s per row count, for each bf16 kernel family this CPU runs (AMX and
//! AVX-512 where both do, interleaved in one run), and the peak GFLOP/s of
//! one core's `vdpbf16ps` and AMX `tdpbf16ps` loops measured alongside.
//!
//! `cargo bench --bench batched` (about two minutes). Each figure is the best
//! of `ROUNDS` rounds; the rows of one round run back to back, so compare row
//! counts and kernels within a run, not absolute numbers across runs (the
//! machine is shared). Two copies of each matrix alternate so that every call
//! streams from memory.

#[cfg(target_arch = "x86_64")]
mod peak;

use std::hint::black_box;
use std::time::Instant;

use engine::backend::cpu::matmul::{families, matmul_on};
use engine::backend::cpu::{CpuBackend, CpuWeight};
use engine::backend::{Backend, DType, HostTensor, TensorBytes};

const ROWS: [usize; 10] = [1, 2, 4, 8, 12, 16, 24, 32, 64, 128];
const ROUNDS: usize = 5;
/// Calls per measurement (alternating the two copies).
const CALLS: usize = 8;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("batched: a matmul benchmark; run it with `cargo bench --bench batched`");
        return;
    }
    #[cfg(target_arch = "x86_64")]
    peak::report();
    for (dtype, shapes) in [
        (
            DType::BF16,
            &[("gate_up", [11264, 2048]), ("down", [2048, 5632])][..],
        ),
        (DType::F32, &[("down", [2048, 5632])][..]),
    ] {
        for &(name, shape) in shapes {
            let ws = [weight(shape, dtype, 1), weight(shape, dtype, 2)];
            bench_shape(&format!("{dtype:?} {name} {}x{}", shape[0], shape[1]), &ws);
        }
    }
}

fn bench_shape(name: &str, ws: &[CpuWeight; 2]) {
    let (n, k) = (ws[0].rows(), ws[0].cols());
    let bytes = (n * k * if ws[0].dtype() == DType::F32 { 4 } else { 2 }) as f64;
    let kernels = families(&ws[0]);
    let mut best = vec![[f64::INFINITY; ROWS.len()]; kernels.len()];
    for _ in 0..ROUNDS {
        for (b, &m) in ROWS.iter().enumerate() {
            let x = values(m * k, 3);
            let mut out = vec![0f32; m * n];
            for (best, &kernel) in best.iter_mut().zip(&kernels) {
                let t = Instant::now();
                for call in 0..CALLS {
                    matmul_on(black_box(&x), &ws[call % 2], &mut out, kernel);
                }
                best[b] = best[b].min(t.elapsed().as_secs_f64() / CALLS as f64);
            }
        }
    }
    for (best, kernel) in best.iter().zip(&kernels) {
        let family = kernel.map_or("f32".to_string(), |k| format!("{k:?}"));
        println!("{name} on {family}: rows, µs per call, weight GB/s, GFLOP/s");
        for (&m, &s) in ROWS.iter().zip(best) {
            let flops = 2.0 * (m * n * k) as f64;
            println!(
                "  m={m:<3} {:>9.0} {:>7.1} {:>7.1}",
                s * 1e6,
                bytes / s / 1e9,
                flops / s / 1e9
            );
        }
    }
}

/// Deterministic values in ±[0.1, 1).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let v = 0.1 + 0.9 * (s >> 40) as f32 / (1u64 << 24) as f32;
            if s & 1 == 0 {
                v
            } else {
                -v
            }
        })
        .collect()
}

fn weight(shape: [usize; 2], dtype: DType, seed: u64) -> CpuWeight {
    let v = values(shape[0] * shape[1], seed);
    let host = HostTensor {
        name: "bench".into(),
        dtype: DType::F32,
        shape: shape.to_vec(),
        bytes: TensorBytes::Owned(bytemuck::cast_slice(&v).to_vec()),
        quant: None,
        fp8_scales: None,
    };
    let w = CpuBackend.upload_weight(host, dtype);
    w.unwrap_or_else(|e| panic!("upload_weight: {e}"))
}
