//! Quantized matmuls with the 16-row tiles (`Kernels::Best`) against the
//! row-by-row AVX-512 VNNI kernels (`Kernels::Rows`) on the same matrix, in one
//! run, interleaved, best of `ROUNDS`: for each type, batch 1 (decode) and 128
//! (prefill) rows, at the shapes of a Llama 1.1B layer (k 2048 → n 5632, k 5632 →
//! n 2048) and SmolLM2's FFN down projection (k 1536 → n 576).
//!
//! `cargo bench --bench quant_tiles`

use std::time::{Duration, Instant};

use engine::backend::cpu::matmul::quant::{matmul, Kernels, QuantMatrix};
use engine::backend::cpu::weight::Slab;
use engine::backend::ggml::GgmlType;

const ROUNDS: usize = 5;
const SHAPES: [(usize, usize); 3] = [(2048, 5632), (5632, 2048), (1536, 576)];

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("quant_tiles: run it with `cargo bench --bench quant_tiles`");
        return;
    }
    println!("threads: {}", rayon::current_num_threads());
    println!("| type | k → n | rows | tiled ms | row-by-row ms | tiled speed-up |");
    println!("|---|---|---:|---:|---:|---:|");
    for ty in [GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K, GgmlType::Q4_0] {
        for (k, n) in SHAPES {
            let w = random_matrix(ty, n, k);
            if !w.is_tiled() {
                println!("{}: not tiled on this CPU (no AVX-512 VNNI)", ty.name());
                return;
            }
            for m in [1, 128] {
                let (tiled, rows) = compare(&w, m);
                println!(
                    "| {} | {k} → {n} | {m} | {:.3} | {:.3} | {:.2}× |",
                    ty.name(),
                    ms(tiled),
                    ms(rows),
                    rows.as_secs_f64() / tiled.as_secs_f64()
                );
            }
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Best time of each path over interleaved rounds.
fn compare(w: &QuantMatrix, m: usize) -> (Duration, Duration) {
    let x: Vec<f32> = (0..m * w.k)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let mut out = vec![0f32; m * w.n];
    let reps = if m == 1 { 20 } else { 2 };
    let mut best = [Duration::MAX; 2];
    for _ in 0..ROUNDS {
        for (slot, kernels) in [Kernels::Best, Kernels::Rows].into_iter().enumerate() {
            let start = Instant::now();
            for _ in 0..reps {
                matmul(&x, m, w, &mut out, kernels);
            }
            best[slot] = best[slot].min(start.elapsed() / reps);
        }
    }
    (best[0], best[1])
}

/// `n × k` of `ty` with random quants and small, finite f16 scales.
fn random_matrix(ty: GgmlType, n: usize, k: usize) -> QuantMatrix {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let bb = ty.block_bytes();
    let mut bytes: Vec<u8> = (0..n * k / ty.block_elems() * bb)
        .map(|_| next() as u8)
        .collect();
    let scale_at: &[usize] = match ty {
        GgmlType::Q6K => &[208],
        GgmlType::Q4_0 => &[0],
        _ => &[0, 2],
    };
    for blk in bytes.chunks_exact_mut(bb) {
        for &at in scale_at {
            let v = half::f16::from_f32(0.001 + (next() % 1000) as f32 * 1e-5);
            blk[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    QuantMatrix::from_parts(ty, n, k, Slab::Owned(bytes))
}
