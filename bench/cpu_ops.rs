//! Criterion benches of every op of the CPU backend at the shapes of a 1.1B
//! Llama (TinyLlama: hidden 2048, intermediate 5632, 32 heads, 4 KV heads of
//! 64, vocab 32000), for one decode token and a 128-token prefill.
//!
//! Throughput is the bytes an op must move at least (weights read, activations
//! read and written), in decimal GB/s, to set against `roofline/copy` — a plain
//! memory copy measured in the same run. Many-row matmuls are compute-bound and
//! report FLOP/s instead (criterion prints them as "elem/s").
//!
//! `cargo bench --bench cpu_ops` (all, a few minutes); `cargo bench --bench cpu_ops -- matmul/bf16`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use engine::backend::cpu::exp::exp;
use engine::backend::cpu::{CpuBackend, CpuKvPool, CpuWeight};
use engine::backend::fp8::Fp8Format;
use engine::backend::{AttnShape, Backend, KvPoolShape, StepMeta};
use engine::backend::{DType, KvDType};
use engine::backend::{HostTensor, SampleBatch, TensorBytes};
use engine::sampling::batch::{sample_row_for, HostSampler, RowRequest};
use engine::sampling::{Sampler, SamplingParams, SequenceTokens};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

const HIDDEN: usize = 2048;
const INTERMEDIATE: usize = 5632;
const VOCAB: usize = 32000;
const HEADS: usize = 32;
const KV_HEADS: usize = 4;
const HEAD_DIM: usize = 64;
const BLOCK: usize = 16;
const PREFILL: usize = 128;

const SHAPE: AttnShape = AttnShape {
    num_heads: HEADS,
    num_kv_heads: KV_HEADS,
    head_dim: HEAD_DIM,
    sliding_window: None,
    scale: 0.125,
};
const QKV: usize = (HEADS + 2 * KV_HEADS) * HEAD_DIM;

type Group<'a> = BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// Fresh random values in ±[0.1, 1), never zero.
fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..len)
        .map(|_| rng.random_range(0.1f32..1.0) * if rng.random() { 1.0 } else { -1.0 })
        .collect()
}

fn weight(shape: &[usize], dtype: DType, seed: u64) -> CpuWeight {
    let values = random(shape.iter().product(), seed);
    let host = HostTensor {
        name: "bench".into(),
        dtype: DType::F32,
        shape: shape.to_vec(),
        bytes: TensorBytes::Owned(bytemuck::cast_slice(&values).to_vec()),
        quant: None,
        fp8_scales: None,
    };
    let weight = CpuBackend.upload_weight(host, dtype);
    weight.unwrap_or_else(|e| panic!("upload_weight: {e}"))
}

/// One sequence of `tokens` new tokens ending at `context` cached ones, blocks in order.
fn meta(tokens: usize, context: usize) -> StepMeta {
    let first = context - tokens;
    StepMeta {
        token_ids: (0..tokens as u32).map(|t| t * 7 % VOCAB as u32).collect(),
        positions: (first as u32..context as u32).collect(),
        slot_mapping: (first as i64..context as i64).collect(),
        query_start: vec![0, tokens],
        context_lens: vec![context],
        block_tables: vec![(0..context.div_ceil(BLOCK) as u32).collect()],
        logits_rows: vec![tokens - 1],
        block_size: BLOCK,
    }
}

fn kv_pool(context: usize, seed: u64, dtype: KvDType) -> CpuKvPool {
    let shape = KvPoolShape {
        num_blocks: context.div_ceil(BLOCK),
        num_kv_heads: KV_HEADS,
        block_size: BLOCK,
        head_dim: HEAD_DIM,
        dtype,
    };
    let mut pool = CpuKvPool::zeros(shape).expect("a small pool");
    pool.write(0, &random(shape.len(), seed));
    pool
}

fn group<'a>(c: &'a mut Criterion, name: &str) -> Group<'a> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g
}

/// A plain copy of 256 MiB: the memory roofline the other numbers compare to.
fn roofline(c: &mut Criterion) {
    let mut g = group(c, "roofline");
    let src = random(64 << 20, 1);
    let mut dst = vec![0f32; src.len()];
    g.throughput(Throughput::BytesDecimal((src.len() * 4) as u64));
    g.bench_function("copy_256MiB", |b| {
        b.iter(|| dst.copy_from_slice(black_box(&src)))
    });
    // The compute roofline of the bf16 matmul: nothing but `vdpbf16ps` on every thread.
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512bf16") {
        use rayon::prelude::*;
        const ITERS: usize = 100_000;
        let threads = rayon::current_num_threads();
        g.throughput(Throughput::Elements(
            (threads * ITERS * ACCUMULATORS * 64) as u64,
        ));
        g.bench_function("bf16_dot_peak_flops", |b| {
            b.iter(|| {
                (0..threads).into_par_iter().for_each(|_| {
                    // SAFETY: the feature was detected above.
                    black_box(unsafe { bf16_dot_loop(ITERS) });
                })
            })
        });
    }
}

/// Independent accumulators: enough to hide the instruction's latency.
#[cfg(target_arch = "x86_64")]
const ACCUMULATORS: usize = 24;

/// `iters` rounds of [`ACCUMULATORS`] independent `vdpbf16ps` (64 FLOP each).
///
/// # Safety
/// The CPU must support AVX-512F and AVX-512 BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn bf16_dot_loop(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    // Pairs of bf16 1.0, hidden from the optimizer.
    let ones: __m512bh = std::mem::transmute(black_box(_mm512_set1_epi32(0x3f80_3f80)));
    let mut acc = [_mm512_setzero_ps(); ACCUMULATORS];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm512_dpbf16_ps(*a, ones, ones);
        }
    }
    acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum()
}

fn row_ops(c: &mut Criterion) {
    let be = CpuBackend;
    let mut g = group(c, "ops");
    let table = weight(&[VOCAB, HIDDEN], DType::BF16, 2);
    let norm = weight(&[HIDDEN], DType::BF16, 3);
    let cos_sin = random(4096 * HEAD_DIM, 4);
    for tokens in [1, PREFILL] {
        let m = meta(tokens, tokens);
        let elems = (tokens * HIDDEN) as u64;
        let mut out = vec![0f32; tokens * HIDDEN];
        g.throughput(Throughput::BytesDecimal(elems * (2 + 4)));
        g.bench_function(format!("embedding_bf16/t{tokens}"), |b| {
            b.iter(|| be.embedding(&table, &m, &mut out))
        });

        let x = random(tokens * HIDDEN, 5);
        g.throughput(Throughput::BytesDecimal(elems * 8));
        g.bench_function(format!("rms_norm/t{tokens}"), |b| {
            b.iter(|| be.rms_norm(&x, &norm, 1e-5, &mut out))
        });

        let mut h = random(tokens * HIDDEN, 6);
        let mut residual = random(tokens * HIDDEN, 7);
        g.throughput(Throughput::BytesDecimal(elems * 16));
        g.bench_function(format!("fused_add_rms_norm/t{tokens}"), |b| {
            b.iter(|| be.fused_add_rms_norm(&mut h, &mut residual, &norm, 1e-5))
        });

        let mut qkv = random(tokens * QKV, 8);
        let rotated = (tokens * (HEADS + KV_HEADS) * HEAD_DIM) as u64;
        g.throughput(Throughput::BytesDecimal(rotated * 8));
        g.bench_function(format!("rotary/t{tokens}"), |b| {
            b.iter(|| be.rotary(&mut qkv, &cos_sin, &m, SHAPE))
        });

        let gate_up = random(tokens * 2 * INTERMEDIATE, 9);
        let mut act = vec![0f32; tokens * INTERMEDIATE];
        g.throughput(Throughput::BytesDecimal(
            (tokens * INTERMEDIATE * 12) as u64,
        ));
        g.bench_function(format!("silu_mul/t{tokens}"), |b| {
            b.iter(|| be.silu_mul(&gate_up, INTERMEDIATE, &mut act))
        });

        let (mut k_pool, mut v_pool) = (
            kv_pool(tokens, 10, KvDType::F32),
            kv_pool(tokens, 11, KvDType::F32),
        );
        g.throughput(Throughput::BytesDecimal(
            (tokens * 2 * KV_HEADS * HEAD_DIM * 8) as u64,
        ));
        g.bench_function(format!("reshape_and_cache/t{tokens}"), |b| {
            b.iter(|| be.reshape_and_cache(&qkv, &mut k_pool, &mut v_pool, &m, SHAPE))
        });
    }
}

fn attention(c: &mut Criterion) {
    let be = CpuBackend;
    let mut g = group(c, "paged_attention");
    // (new tokens, context): decode over 512 and 2048 cached tokens, a 128-token
    // prefill; with the KV cache in each --kv-cache-dtype.
    let kvs = [
        (KvDType::F32, "f32"),
        (KvDType::BF16, "bf16"),
        (KvDType::F16, "f16"),
        (KvDType::Fp8(Fp8Format::E4M3), "fp8e4m3"),
        (KvDType::Fp8(Fp8Format::E5M2), "fp8e5m2"),
    ];
    for (tokens, context) in [(1, 512), (1, 2048), (PREFILL, PREFILL)] {
        for (kv, kv_name) in kvs {
            let m = meta(tokens, context);
            let qkv = random(tokens * QKV, 12);
            let (k_pool, v_pool) = (kv_pool(context, 13, kv), kv_pool(context, 14, kv));
            let mut out = vec![0f32; tokens * HEADS * HEAD_DIM];
            // The K and V of the context, each read at least once.
            g.throughput(Throughput::BytesDecimal(
                (context * 2 * KV_HEADS * HEAD_DIM * kv.size_in_bytes()) as u64,
            ));
            g.bench_function(format!("t{tokens}_ctx{context}_kv{kv_name}"), |b| {
                b.iter(|| be.paged_attention(&qkv, &k_pool, &v_pool, &m, SHAPE, &mut out))
            });
        }
    }
    softmax_exps(&mut g);
}

/// The softmax's exps over one 2048-score row: libm's `expf` (what attention
/// called before) against the vectorized [`exp`], both built for AVX-512 as
/// the attention kernel is.
fn softmax_exps(g: &mut Group) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        #[target_feature(enable = "avx512f")]
        fn exps(row: &mut [f32], f: impl Fn(f32) -> f32) {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            for p in row.iter_mut() {
                *p = f(*p - max);
            }
        }
        let scores: Vec<f32> = random(2048, 15).iter().map(|x| x * 8.0).collect();
        let mut row = scores.clone();
        g.throughput(Throughput::Elements(2048));
        g.bench_function("softmax_exp_2048/libm", |b| {
            b.iter(|| {
                row.copy_from_slice(&scores);
                // SAFETY: AVX-512F was detected above.
                unsafe { exps(black_box(&mut row), f32::exp) }
            })
        });
        g.bench_function("softmax_exp_2048/vectorized", |b| {
            b.iter(|| {
                row.copy_from_slice(&scores);
                // SAFETY: AVX-512F was detected above.
                unsafe { exps(black_box(&mut row), exp) }
            })
        });
    }
}

/// Weights of one-row benches cycle through this many bytes at least, so they
/// come from memory as a model's do, not from the 32 MiB L3 cache.
const STREAM_BYTES: usize = 96 << 20;

/// `m` rows through `[n, k]` weights (one of `ws` per call, in turn): GB/s of
/// weight for decode, FLOP/s for prefill.
fn bench_matmul(g: &mut Group, name: &str, ws: &[CpuWeight], m: usize) {
    let (n, k) = (ws[0].rows(), ws[0].cols());
    let x = random(m * k, 15);
    let mut out = vec![0f32; m * n];
    g.throughput(if m <= 8 {
        Throughput::BytesDecimal((n * k * elem_bytes(ws[0].dtype())) as u64)
    } else {
        Throughput::Elements((2 * m * n * k) as u64)
    });
    let mut next = 0;
    g.bench_function(format!("{name}/m{m}/{n}x{k}"), |b| {
        b.iter(|| {
            next = (next + 1) % ws.len();
            let result = CpuBackend.matmul(&x, &ws[next], None, &mut out);
            result.unwrap_or_else(|e| panic!("matmul: {e}"));
        })
    });
}

fn elem_bytes(dtype: DType) -> usize {
    match dtype {
        DType::F32 => 4,
        _ => 2,
    }
}

/// Enough distinct copies of a random `shape` weight to fill [`STREAM_BYTES`].
fn streamed(
    shape: [usize; 2],
    dtype: DType,
    seed: u64,
    make: fn(&[usize], DType, u64) -> CpuWeight,
) -> Vec<CpuWeight> {
    let bytes = shape[0] * shape[1] * elem_bytes(dtype);
    (0..STREAM_BYTES.div_ceil(bytes) as u64)
        .map(|i| make(&shape, dtype, seed + 100 * i))
        .collect()
}

/// A weight in its natural layout, for the portable kernels.
fn natural_weight(shape: &[usize], dtype: DType, seed: u64) -> CpuWeight {
    let values = random(shape.iter().product(), seed);
    let host = HostTensor {
        name: "bench".into(),
        dtype: DType::F32,
        shape: shape.to_vec(),
        bytes: TensorBytes::Owned(bytemuck::cast_slice(&values).to_vec()),
        quant: None,
        fp8_scales: None,
    };
    CpuWeight::natural(host, dtype)
}

fn matmul(c: &mut Criterion) {
    let mut g = group(c, "matmul");
    let shapes = [
        ("qkv", [QKV, HIDDEN]),
        ("o_proj", [HIDDEN, HIDDEN]),
        ("gate_up", [2 * INTERMEDIATE, HIDDEN]),
        ("down", [HIDDEN, INTERMEDIATE]),
        ("lm_head", [VOCAB, HIDDEN]),
    ];
    for (dtype, name) in [
        (DType::BF16, "bf16"),
        (DType::F16, "f16"),
        (DType::F32, "f32"),
    ] {
        for (i, &(what, shape)) in shapes.iter().enumerate() {
            // Every shape in bf16 (the model's dtype); the square and the wide one otherwise.
            if dtype != DType::BF16 && !matches!(what, "o_proj" | "down") {
                continue;
            }
            let seed = 20 + i as u64;
            bench_matmul(&mut g, name, &streamed(shape, dtype, seed, weight), 1);
            if matches!(what, "o_proj" | "down" | "gate_up") {
                bench_matmul(&mut g, name, &[weight(&shape, dtype, seed)], PREFILL);
            }
        }
    }
    // The portable kernels (CPUs without AVX-512) on the same shapes, for comparison.
    let shape = [HIDDEN, INTERMEDIATE];
    for (dtype, name) in [(DType::BF16, "bf16_portable"), (DType::F16, "f16_portable")] {
        bench_matmul(&mut g, name, &streamed(shape, dtype, 30, natural_weight), 1);
        bench_matmul(&mut g, name, &[natural_weight(&shape, dtype, 30)], PREFILL);
    }
}

/// One step's sampling at batch 64 over SmolLM2's 49152-token vocabulary
/// (temperature 0.8, top-p 0.95, seeded; a 200-token history under penalties):
/// the engine's old per-row loop (`Sampler::next_token` row after row) against
/// the batched op (`sample_rows`, rows in parallel on the pool).
/// `cargo bench --bench cpu_ops -- sampling/`.
fn sampling(c: &mut Criterion) {
    const ROWS: usize = 64;
    const SMOL_VOCAB: usize = 49152;
    let logits: Vec<f32> = random(ROWS * SMOL_VOCAB, 40)
        .into_iter()
        .map(|x| x * 10.0)
        .collect();
    let history: Vec<u32> = (0..200).map(|i| (i * 97 % SMOL_VOCAB) as u32).collect();
    let params = SamplingParams {
        temperature: 0.8,
        top_p: 0.95,
        presence_penalty: 0.2,
        repetition_penalty: 1.1,
        seed: Some(1),
        ..SamplingParams::default()
    };
    let tokens = SequenceTokens {
        prompt: &history[..150],
        output: &history[150..],
    };
    let root = Sampler::new(params.seed);
    let mut g = group(c, "sampling");
    g.throughput(Throughput::Elements(ROWS as u64));
    g.bench_function("per_row_b64_v49152", |b| {
        b.iter(|| {
            for (i, row) in logits.chunks_exact(SMOL_VOCAB).enumerate() {
                let mut row = row.to_vec();
                black_box(
                    root.fork(i as u64)
                        .next_token(&mut row, &params, tokens, &[0]),
                );
            }
        })
    });
    g.bench_function("op_b64_v49152", |b| {
        b.iter(|| {
            let rows = (0..ROWS)
                .map(|i| {
                    let request = RowRequest {
                        logits_row: i,
                        vocab: SMOL_VOCAB,
                        params: &params,
                        tokens,
                        eos_token_ids: &[0],
                        bitmask: None,
                    };
                    sample_row_for(&request, &root.fork(i as u64))
                })
                .collect();
            let batch = SampleBatch {
                vocab: SMOL_VOCAB,
                rows,
            };
            black_box(
                CpuBackend
                    .sample_rows(&logits, &batch, &HostSampler)
                    .unwrap(),
            );
        })
    });
}

criterion_group!(benches, roofline, row_ops, attention, matmul, sampling);
criterion_main!(benches);
