//! Criterion benches of the CUDA kernels (feature `cuda`), timed with CUDA
//! events around a batch of launches, at Llama-3-8B shapes (hidden 4096,
//! intermediate 14336, 32 heads / 8 KV heads of 128, vocab 128256); the
//! `cpu/` group runs the CPU backend on the same shapes in f32.
//!
//! Throughput is the bytes a kernel must move at least (inputs read once,
//! outputs written once), decimal GB/s, against `roofline/copy` (a
//! device-to-device copy counting bytes read plus written) measured in the
//! same run. After criterion's report, a table of each kernel's median time,
//! GB/s and percent of the copy bandwidth is printed (what scripts/device/kernels.sh shows).
//!
//! `cargo bench --features cuda --bench cuda_kernels -- cuda/` (GPU);
//! `cargo bench --features cuda --bench cuda_kernels -- cpu/` (CPU).

use std::ffi::c_void;
use std::sync::Mutex;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use engine::backend::cpu::{CpuBackend, CpuKvPool, CpuWeight};
use engine::backend::cuda::cudarc::driver::{sys::CUevent_flags, CudaSlice};
use engine::backend::cuda::{self, sys, CudaBackend, CudaBuffer, CudaDevice};
use engine::backend::fp8::Fp8Format;
use engine::backend::{AttnShape, Backend, DType, HostTensor, StepMeta, TensorBytes};
use half::bf16;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

const HIDDEN: usize = 4096;
const INTER: usize = 14336;
const HEADS: usize = 32;
const KV_HEADS: usize = 8;
const HD: usize = 128;
const BS: usize = 16;
const VOCAB: usize = 128256;
/// Rows of the row-wise kernels: a large prefill batch, so the data is many times the L2.
const ROWS: usize = 16384;
/// Paged-attention decode: batch and context.
const BATCH: usize = 64;
const CONTEXT: usize = 4096;
const QKV: usize = (HEADS + 2 * KV_HEADS) * HD;

/// (name, bytes moved, median seconds) of every GPU bench, for the table.
static RESULTS: Mutex<Vec<(String, f64, f64)>> = Mutex::new(Vec::new());

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..len)
        .map(|_| rng.random_range(0.1f32..1.0) * if rng.random() { 1.0 } else { -1.0 })
        .collect()
}

fn bf16s(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

struct Gpu {
    be: CudaBackend,
}

impl Gpu {
    fn dev(&self) -> &CudaDevice {
        self.be.device()
    }
    fn up<T: cuda::cudarc::driver::DeviceRepr>(&self, v: &[T]) -> CudaSlice<T> {
        self.dev().upload(v).expect("upload")
    }
    fn p<T>(&self, b: &CudaSlice<T>) -> *const c_void {
        cuda::ptr(b, &self.dev().stream)
    }
    fn pm<T>(&self, b: &mut CudaSlice<T>) -> *mut c_void {
        cuda::ptr_mut(b, &self.dev().stream)
    }
    fn s(&self) -> *mut c_void {
        self.dev().raw_stream()
    }

    /// Times `launch` with events around `iters` launches; records the
    /// median per-launch time of the samples for the table.
    fn bench(&self, c: &mut Criterion, name: &str, bytes: f64, mut launch: impl FnMut()) {
        let ctx = &self.dev().ctx;
        let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let (start, end) = (
            ctx.new_event(flags).expect("event"),
            ctx.new_event(flags).expect("event"),
        );
        let mut samples = Vec::new();
        let mut group = c.benchmark_group("cuda");
        group.throughput(Throughput::Bytes(bytes as u64));
        group
            .sample_size(20)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(2));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                start.record(&self.dev().stream).expect("record");
                for _ in 0..iters {
                    launch();
                }
                end.record(&self.dev().stream).expect("record");
                end.synchronize().expect("sync");
                let ms = start.elapsed_ms(&end).expect("elapsed") as f64;
                samples.push(ms / 1e3 / iters as f64);
                Duration::from_secs_f64(ms / 1e3)
            })
        });
        group.finish();
        samples.sort_by(f64::total_cmp);
        if let Some(&median) = samples.get(samples.len() / 2) {
            RESULTS
                .lock()
                .unwrap()
                .push((name.to_string(), bytes, median));
        }
    }
}

fn ok(what: &str, status: i32) {
    assert_eq!(status, 0, "{what}: cudaError {status}");
}

/// Block tables for `BATCH` sequences of `CONTEXT` tokens, blocks shuffled.
fn decode_tables(seed: u64) -> (Vec<i32>, usize, usize) {
    let per_seq = CONTEXT.div_ceil(BS);
    let blocks = BATCH * per_seq;
    let mut ids: Vec<i32> = (0..blocks as i32).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for i in (1..ids.len()).rev() {
        ids.swap(i, rng.random_range(0..=i));
    }
    (ids, per_seq, blocks)
}

#[allow(clippy::too_many_lines)] // a benchmark driver, read top to bottom
fn gpu_benches(c: &mut Criterion, g: &Gpu) {
    let s = g.s();
    let bf = sys::EK_DTYPE_BF16 as i32;
    let f32c = sys::EK_DTYPE_F32 as i32;

    // The roofline: 1 GiB device-to-device copy, bytes read plus written.
    let n = 1 << 28;
    let src = g.up(&random(n, 1));
    let mut dst = g.dev().alloc_zeros::<f32>(n).expect("alloc");
    let (sp, dp) = (g.p(&src) as u64, g.pm(&mut dst) as u64);
    g.bench(c, "roofline/copy", (2 * 4 * n) as f64, || unsafe {
        cuda::cudarc::driver::result::memcpy_dtod_async(dp, sp, 4 * n, g.dev().stream.cu_stream())
            .expect("copy");
    });
    drop((src, dst));

    for (dtype, code, size) in [("bf16", bf, 2usize), ("f32", f32c, 4)] {
        let up = |v: &[f32]| -> CudaSlice<u8> {
            let bytes: Vec<u8> = if size == 2 {
                bytemuck::cast_slice(&bf16s(v)).to_vec()
            } else {
                bytemuck::cast_slice(v).to_vec()
            };
            g.up(&bytes)
        };
        let (x, w) = (up(&random(ROWS * HIDDEN, 2)), up(&random(HIDDEN, 3)));
        let mut r = up(&random(ROWS * HIDDEN, 4));
        let mut out = up(&random(ROWS * HIDDEN, 5));
        let (xp, wp, op, rp) = (g.p(&x), g.p(&w), g.pm(&mut out), g.pm(&mut r));
        let row_bytes = (ROWS * HIDDEN * size) as f64;
        g.bench(
            c,
            &format!("rms_norm/{dtype}/{ROWS}x{HIDDEN}"),
            2.0 * row_bytes,
            || unsafe {
                ok(
                    "rms_norm",
                    sys::ek_rms_norm(op, xp, wp, code, ROWS as i64, HIDDEN as i64, 1e-5, s),
                );
            },
        );
        g.bench(
            c,
            &format!("fused_add_rms_norm/{dtype}/{ROWS}x{HIDDEN}"),
            4.0 * row_bytes,
            || unsafe {
                ok(
                    "fused",
                    sys::ek_fused_add_rms_norm(
                        op,
                        rp,
                        wp,
                        code,
                        ROWS as i64,
                        HIDDEN as i64,
                        1e-5,
                        s,
                    ),
                );
            },
        );
        drop((x, w, r, out));

        let mut qkv = up(&random(ROWS * QKV, 6));
        let table = g.up(&random(8192 * HD, 7));
        let positions: Vec<i32> = (0..ROWS as i32).map(|i| i % 8192).collect();
        let pos = g.up(&positions);
        let base = g.pm(&mut qkv) as *mut u8;
        let rot_bytes = (2 * ROWS * (HEADS + KV_HEADS) * HD * size + ROWS * HD * 4) as f64;
        g.bench(
            c,
            &format!("rotary/{dtype}/{ROWS}x{HEADS}+{KV_HEADS}x{HD}"),
            rot_bytes,
            || unsafe {
                ok(
                    "rotary",
                    sys::ek_rotary(
                        base.cast(),
                        base.add(HEADS * HD * size).cast(),
                        g.p(&pos).cast(),
                        g.p(&table).cast(),
                        code,
                        ROWS as i64,
                        HEADS as i32,
                        KV_HEADS as i32,
                        HD as i32,
                        HD as i32,
                        QKV as i64,
                        QKV as i64,
                        1,
                        s,
                    ),
                );
            },
        );
        let blocks = ROWS.div_ceil(BS);
        let mut kc = up(&random(blocks * KV_HEADS * BS * HD, 8));
        let mut vc = up(&random(blocks * KV_HEADS * BS * HD, 9));
        let slots: Vec<i64> = (0..ROWS as i64).collect();
        let slots = g.up(&slots);
        let (kp, vp) = (g.pm(&mut kc), g.pm(&mut vc));
        let cache_bytes = (4 * ROWS * KV_HEADS * HD * size + ROWS * 8) as f64;
        g.bench(
            c,
            &format!("reshape_and_cache/{dtype}/{ROWS}x{KV_HEADS}x{HD}"),
            cache_bytes,
            || unsafe {
                ok(
                    "cache",
                    sys::ek_reshape_and_cache(
                        base.add(HEADS * HD * size).cast(),
                        base.add((HEADS + KV_HEADS) * HD * size).cast(),
                        kp,
                        vp,
                        g.p(&slots).cast(),
                        code,
                        code,
                        1.0,
                        1.0,
                        ROWS as i64,
                        QKV as i64,
                        QKV as i64,
                        KV_HEADS as i32,
                        HD as i32,
                        BS as i32,
                        s,
                    ),
                );
            },
        );
        drop((qkv, kc, vc));

        let rows = 4096;
        let gu = up(&random(rows * 2 * INTER, 10));
        let mut act = up(&random(rows * INTER, 11));
        let (gp, ap) = (g.p(&gu), g.pm(&mut act));
        g.bench(
            c,
            &format!("silu_and_mul/{dtype}/{rows}x{INTER}"),
            (3 * rows * INTER * size) as f64,
            || unsafe {
                ok(
                    "silu",
                    sys::ek_silu_and_mul(ap, gp, code, rows as i64, INTER as i64, s),
                );
            },
        );
        drop((gu, act));

        // Paged-attention decode at batch 64, 4k context.
        let (tables, per_seq, blocks) = decode_tables(12);
        let pool = blocks * KV_HEADS * BS * HD;
        let (kc, vc) = (up(&random(pool, 13)), up(&random(pool, 14)));
        let q = up(&random(BATCH * QKV, 15));
        let mut out = up(&random(BATCH * HEADS * HD, 16));
        let (tables, ctx) = (g.up(&tables), g.up(&vec![CONTEXT as i32; BATCH]));
        let qs: Vec<i32> = (0..=BATCH as i32).collect();
        let qs = g.up(&qs);
        let params = sys::ek_attn_params {
            out: g.pm(&mut out),
            q: g.p(&q),
            k_cache: g.p(&kc),
            v_cache: g.p(&vc),
            block_tables: g.p(&tables).cast(),
            context_lens: g.p(&ctx).cast(),
            query_start: g.p(&qs).cast(),
            q_stride: QKV as i64,
            out_stride: (HEADS * HD) as i64,
            num_seqs: BATCH as i32,
            num_heads: HEADS as i32,
            num_kv_heads: KV_HEADS as i32,
            head_dim: HD as i32,
            block_size: BS as i32,
            max_blocks_per_seq: per_seq as i32,
            sliding_window: 0,
            dtype: code,
            scale: 1.0 / (HD as f32).sqrt(),
            cache_dtype: code,
            k_scale: 1.0,
            v_scale: 1.0,
        };
        let kv_bytes = (2 * BATCH * CONTEXT * KV_HEADS * HD * size) as f64;
        let chosen =
            cuda::attention::decode_partitions(BATCH, HEADS, KV_HEADS, CONTEXT, g.dev().sm_count);
        let all_parts = CONTEXT.div_ceil(cuda::attention::PARTITION_SIZE);
        let bytes = unsafe {
            sys::ek_paged_attention_workspace_bytes(
                BATCH as i32,
                HEADS as i32,
                HD as i32,
                all_parts as i32,
            )
        };
        let mut ws = g.dev().alloc_zeros::<u8>(bytes as usize).expect("alloc");
        let wsp = g.pm(&mut ws);
        for parts in [0, all_parts] {
            let tag = if parts == chosen {
                " (rule's choice)"
            } else {
                ""
            };
            let name = format!("paged_attention_decode/{dtype}/b{BATCH}_ctx{CONTEXT}_h{HEADS}_kv{KV_HEADS}_d{HD}/partitions{parts}{tag}");
            g.bench(c, &name, kv_bytes, || unsafe {
                ok(
                    "decode",
                    sys::ek_paged_attention_decode(&params, parts as i32, wsp, s),
                );
            });
        }
        drop((kc, vc, q, out, ws));

        // Prefill: 4 prompts of 1024 tokens (compute-bound; GB/s of K/V read once).
        let (seqs, len) = (4usize, 1024usize);
        let per_seq = len / BS;
        let tables: Vec<i32> = (0..(seqs * per_seq) as i32).collect();
        let pool = seqs * per_seq * KV_HEADS * BS * HD;
        let (kc, vc) = (up(&random(pool, 17)), up(&random(pool, 18)));
        let q = up(&random(seqs * len * QKV, 19));
        let mut out = up(&random(seqs * len * HEADS * HD, 20));
        let (tables, ctx) = (g.up(&tables), g.up(&vec![len as i32; seqs]));
        let qs: Vec<i32> = (0..=seqs as i32).map(|s| s * len as i32).collect();
        let qs = g.up(&qs);
        let params = sys::ek_attn_params {
            out: g.pm(&mut out),
            q: g.p(&q),
            k_cache: g.p(&kc),
            v_cache: g.p(&vc),
            block_tables: g.p(&tables).cast(),
            context_lens: g.p(&ctx).cast(),
            query_start: g.p(&qs).cast(),
            num_seqs: seqs as i32,
            max_blocks_per_seq: per_seq as i32,
            ..params
        };
        let bytes =
            (2 * seqs * len * KV_HEADS * HD * size + 2 * seqs * len * HEADS * HD * size) as f64;
        let shape = format!("{seqs}x{len}_h{HEADS}_kv{KV_HEADS}_d{HD}");
        g.bench(
            c,
            &format!("paged_attention_prefill/{dtype}/{shape}/simt"),
            bytes,
            || unsafe {
                ok(
                    "prefill",
                    sys::ek_paged_attention_prefill(&params, len as i32, s),
                );
            },
        );
        // The tensor-core kernel, where the backend would pick it.
        if cuda::attention::tensor_core_prefill(code as u32, HD, g.dev().shared_mem_per_block) {
            g.bench(
                c,
                &format!("paged_attention_prefill/{dtype}/{shape}/mma"),
                bytes,
                || unsafe {
                    ok(
                        "prefill_mma",
                        sys::ek_paged_attention_prefill_mma(&params, len as i32, s),
                    );
                },
            );
        }
        drop((kc, vc, q, out));
    }

    // Sampling on 64 rows of a 128k vocabulary (f32 logits).
    let rows = BATCH;
    let mut logits = g.up(&random(rows * VOCAB, 21)
        .iter()
        .map(|x| x * 8.0)
        .collect::<Vec<f32>>());
    let lp = g.pm(&mut logits);
    let row_bytes = (rows * VOCAB * 4) as f64;
    let mut out = g.dev().alloc_zeros::<f32>(rows * VOCAB).expect("alloc");
    let opp = g.pm(&mut out);
    g.bench(
        c,
        &format!("log_softmax/{rows}x{VOCAB}"),
        2.0 * row_bytes,
        || unsafe {
            ok(
                "log_softmax",
                sys::ek_log_softmax(opp.cast(), lp.cast(), rows as i64, VOCAB as i64, s),
            );
        },
    );
    let mut ids = g.dev().alloc_zeros::<i32>(rows * 20).expect("alloc");
    let mut vals = g.dev().alloc_zeros::<f32>(rows * 20).expect("alloc");
    let (ip, vp) = (g.pm(&mut ids), g.pm(&mut vals));
    g.bench(c, &format!("argmax/{rows}x{VOCAB}"), row_bytes, || unsafe {
        ok(
            "argmax",
            sys::ek_argmax(ip.cast(), lp.cast(), rows as i64, VOCAB as i64, s),
        );
    });
    // The fused greedy choice reads the logits twice (the second pass mostly from L2).
    let ws_bytes = unsafe { sys::ek_greedy_workspace_bytes(rows as i64, VOCAB as i64) };
    let mut ws = g.dev().alloc_zeros::<u8>(ws_bytes as usize).expect("alloc");
    let wsp = g.pm(&mut ws);
    g.bench(c, &format!("greedy/{rows}x{VOCAB}"), row_bytes, || unsafe {
        ok(
            "greedy",
            sys::ek_greedy(
                ip.cast(),
                vp.cast(),
                lp.cast(),
                rows as i64,
                VOCAB as i64,
                wsp,
                s,
            ),
        );
    });
    let seeds = g.up(&(0..rows as u64).collect::<Vec<_>>());
    g.bench(c, &format!("sample/{rows}x{VOCAB}"), row_bytes, || unsafe {
        ok(
            "sample",
            sys::ek_sample(
                ip.cast(),
                opp.cast(),
                rows as i64,
                VOCAB as i64,
                g.p(&seeds).cast(),
                g.p(&seeds).cast(),
                g.p(&seeds).cast(),
                s,
            ),
        );
    });
    g.bench(
        c,
        &format!("top_logprobs/{rows}x{VOCAB}/n5"),
        row_bytes,
        || unsafe {
            ok(
                "top_logprobs",
                sys::ek_top_logprobs(
                    ip.cast(),
                    vp.cast(),
                    opp.cast(),
                    rows as i64,
                    VOCAB as i64,
                    5,
                    s,
                ),
            );
        },
    );
    // Truncation rewrites its row in place: run it on a fresh copy each time
    // (the copy's bytes are counted).
    let (tk, tp, mp) = (
        g.up(&vec![50i32; rows]),
        g.up(&vec![0.9f64; rows]),
        g.up(&vec![0.05f64; rows]),
    );
    let (lp0, op0) = (lp as u64, opp as u64);
    g.bench(
        c,
        &format!("top_k_top_p_min_p/{rows}x{VOCAB} (with a copy)"),
        3.0 * row_bytes,
        || unsafe {
            cuda::cudarc::driver::result::memcpy_dtod_async(
                op0,
                lp0,
                rows * VOCAB * 4,
                g.dev().stream.cu_stream(),
            )
            .expect("copy");
            ok(
                "truncation",
                sys::ek_apply_top_k_top_p_min_p(
                    opp.cast(),
                    rows as i64,
                    VOCAB as i64,
                    g.p(&tk).cast(),
                    g.p(&tp).cast(),
                    g.p(&mp).cast(),
                    s,
                ),
            );
        },
    );
    let pen = g.up(&vec![1.1f32; rows]);
    let offsets = g.up(&(0..=rows as i32).map(|r| r * 512).collect::<Vec<_>>());
    let toks = g.up(&(0..(rows * 512) as i32)
        .map(|i| (i * 7919) % VOCAB as i32)
        .collect::<Vec<_>>());
    let counts = g.up(&vec![2i32; rows * 512]);
    g.bench(
        c,
        &format!("penalties+temperature/{rows}x{VOCAB}"),
        2.0 * row_bytes,
        || unsafe {
            ok(
                "penalties",
                sys::ek_apply_penalties(
                    opp.cast(),
                    rows as i64,
                    VOCAB as i64,
                    g.p(&offsets).cast(),
                    g.p(&toks).cast(),
                    g.p(&counts).cast(),
                    g.p(&pen).cast(),
                    g.p(&pen).cast(),
                    g.p(&pen).cast(),
                    s,
                ),
            );
            ok(
                "temperature",
                sys::ek_apply_temperature(
                    opp.cast(),
                    rows as i64,
                    VOCAB as i64,
                    g.p(&pen).cast(),
                    s,
                ),
            );
        },
    );
}

/// The linear layers of a decode step at Llama-3-8B shapes (gate+up fused,
/// down), 1 and 8 activation rows: bf16 weights through cuBLAS beside FP8
/// weights (one scale per row) through the FP8 GEMV, bf16 activations. Bytes:
/// the weights, the activations and the outputs once.
fn linear_benches(c: &mut Criterion, g: &mut Gpu) {
    g.be.set_activation_dtype(DType::BF16);
    for (n, k) in [(2 * INTER, HIDDEN), (HIDDEN, INTER)] {
        let values = random(n * k, 11);
        let dense = HostTensor {
            name: "w".into(),
            dtype: DType::F32,
            shape: vec![n, k],
            bytes: TensorBytes::Owned(bytemuck::cast_slice(&values).to_vec()),
            quant: None,
            fp8_scales: None,
        };
        let fp8 = engine::backend::fp8::quantize_matrix(dense.clone());
        drop(values);
        for (label, host, weight_bytes) in [("bf16", dense, 2), ("fp8", fp8, 1)] {
            let w = g.be.upload_weight(host, DType::BF16).expect("upload");
            for m in [1, 8] {
                let x = CudaBuffer::upload(g.dev(), &random(m * k, 12), DType::BF16).expect("x");
                let mut out = g.be.alloc(m * n).expect("out");
                let bytes = (weight_bytes * n * k + 2 * m * (n + k)) as f64;
                g.bench(c, &format!("linear/{label}/m{m}/{n}x{k}"), bytes, || {
                    g.be.matmul(&x, &w, None, &mut out).expect("matmul");
                });
            }
        }
    }
}

/// Paged-attention decode at the bf16 decode bench's shape over an e4m3 KV
/// cache (`--kv-cache-dtype fp8`): half the bytes of the bf16 cache to read.
fn fp8_kv_decode_bench(c: &mut Criterion, g: &Gpu) {
    let (tables, per_seq, blocks) = decode_tables(12);
    let pool = blocks * KV_HEADS * BS * HD;
    let codes = |seed| -> CudaSlice<u8> {
        let v: Vec<u8> = random(pool, seed)
            .iter()
            .map(|&x| Fp8Format::E4M3.encode(x / 0.01))
            .collect();
        g.up(&v)
    };
    let (kc, vc) = (codes(13), codes(14));
    let bf16_up = |v: &[f32]| g.up(&bf16s(v));
    let q = bf16_up(&random(BATCH * QKV, 15));
    let mut out = bf16_up(&random(BATCH * HEADS * HD, 16));
    let (tables, ctx) = (g.up(&tables), g.up(&vec![CONTEXT as i32; BATCH]));
    let qs: Vec<i32> = (0..=BATCH as i32).collect();
    let qs = g.up(&qs);
    let bf = sys::EK_DTYPE_BF16 as i32;
    let params = sys::ek_attn_params {
        out: g.pm(&mut out),
        q: g.p(&q),
        k_cache: g.p(&kc),
        v_cache: g.p(&vc),
        block_tables: g.p(&tables).cast(),
        context_lens: g.p(&ctx).cast(),
        query_start: g.p(&qs).cast(),
        q_stride: QKV as i64,
        out_stride: (HEADS * HD) as i64,
        num_seqs: BATCH as i32,
        num_heads: HEADS as i32,
        num_kv_heads: KV_HEADS as i32,
        head_dim: HD as i32,
        block_size: BS as i32,
        max_blocks_per_seq: per_seq as i32,
        sliding_window: 0,
        dtype: bf,
        scale: 1.0 / (HD as f32).sqrt(),
        cache_dtype: sys::EK_DTYPE_FP8_E4M3 as i32,
        k_scale: 0.01,
        v_scale: 0.01,
    };
    let parts =
        cuda::attention::decode_partitions(BATCH, HEADS, KV_HEADS, CONTEXT, g.dev().sm_count);
    // SAFETY: a pure size computation.
    let bytes = unsafe {
        sys::ek_paged_attention_workspace_bytes(BATCH as i32, HEADS as i32, HD as i32, parts as i32)
    };
    let mut ws = g.dev().alloc_zeros::<u8>(bytes as usize).expect("alloc");
    let wsp = g.pm(&mut ws);
    let (s, kv_bytes) = (g.s(), (2 * BATCH * CONTEXT * KV_HEADS * HD) as f64);
    let name = format!(
        "paged_attention_decode/bf16_kv_fp8_e4m3/b{BATCH}_ctx{CONTEXT}_h{HEADS}_kv{KV_HEADS}_d{HD}/partitions{parts}"
    );
    g.bench(c, &name, kv_bytes, || unsafe {
        ok(
            "decode",
            sys::ek_paged_attention_decode(&params, parts as i32, wsp, s),
        );
    });
    drop((kc, vc, q, out, ws));
}

fn cpu_weight(len: usize, seed: u64) -> CpuWeight {
    let host = HostTensor {
        name: "bench".into(),
        dtype: DType::F32,
        shape: vec![len],
        bytes: TensorBytes::Owned(bytemuck::cast_slice(&random(len, seed)).to_vec()),
        quant: None,
        fp8_scales: None,
    };
    CpuWeight::natural(host, DType::F32)
}

/// The same shapes on the CPU backend (f32), for comparison.
#[allow(clippy::too_many_lines)] // a benchmark driver, read top to bottom
fn cpu_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(3));
    let rows = ROWS / 16; // the CPU shapes are 16x fewer rows (same per-row work)
    let (x, w) = (random(rows * HIDDEN, 2), cpu_weight(HIDDEN, 3));
    let mut out = vec![0f32; rows * HIDDEN];
    group.throughput(Throughput::Bytes((2 * rows * HIDDEN * 4) as u64));
    group.bench_function(
        BenchmarkId::new("rms_norm/f32", format!("{rows}x{HIDDEN}")),
        |b| b.iter(|| CpuBackend.rms_norm(&x, &w, 1e-5, &mut out).unwrap()),
    );
    let shape = AttnShape {
        num_heads: HEADS,
        num_kv_heads: KV_HEADS,
        head_dim: HD,
        sliding_window: None,
        scale: 1.0 / (HD as f32).sqrt(),
    };
    let mut qkv = random(rows * QKV, 6);
    let table = random(8192 * HD, 7);
    let meta = StepMeta {
        positions: (0..rows as u32).collect(),
        ..StepMeta::default()
    };
    group.throughput(Throughput::Bytes(
        (2 * rows * (HEADS + KV_HEADS) * HD * 4) as u64,
    ));
    group.bench_function(
        BenchmarkId::new("rotary/f32", format!("{rows}x{HEADS}+{KV_HEADS}x{HD}")),
        |b| b.iter(|| CpuBackend.rotary(&mut qkv, &table, &meta, shape).unwrap()),
    );
    let gu = random(rows / 4 * 2 * INTER, 10);
    let mut act = vec![0f32; rows / 4 * INTER];
    group.throughput(Throughput::Bytes((3 * rows / 4 * INTER * 4) as u64));
    group.bench_function(
        BenchmarkId::new("silu_and_mul/f32", format!("{}x{INTER}", rows / 4)),
        |b| b.iter(|| CpuBackend.silu_mul(&gu, INTER, &mut act).unwrap()),
    );
    // Decode attention at batch 8 (the 64-sequence 4k pools are 2 GB in f32).
    let batch = 8;
    let (tables, per_seq, _) = decode_tables(12);
    let blocks = batch * per_seq;
    let pool = blocks * KV_HEADS * BS * HD;
    let (k, v) = (
        CpuKvPool::F32(random(pool, 13)),
        CpuKvPool::F32(random(pool, 14)),
    );
    let meta = StepMeta {
        token_ids: vec![0; batch],
        query_start: (0..=batch).collect(),
        context_lens: vec![CONTEXT; batch],
        block_tables: (0..batch)
            .map(|s| {
                (0..per_seq)
                    .map(|j| ((tables[s * per_seq + j] as usize) % blocks) as u32)
                    .collect()
            })
            .collect(),
        block_size: BS,
        ..StepMeta::default()
    };
    let q = random(batch * QKV, 15);
    let mut out = vec![0f32; batch * HEADS * HD];
    group.throughput(Throughput::Bytes(
        (2 * batch * CONTEXT * KV_HEADS * HD * 4) as u64,
    ));
    group.bench_function(
        BenchmarkId::new(
            "paged_attention_decode/f32",
            format!("b{batch}_ctx{CONTEXT}_h{HEADS}_kv{KV_HEADS}_d{HD}"),
        ),
        |b| {
            b.iter(|| {
                CpuBackend
                    .paged_attention(&q, &k, &v, &meta, shape, &mut out)
                    .unwrap()
            })
        },
    );
    group.finish();
}

fn print_table() {
    let results = RESULTS.lock().unwrap();
    let Some(copy) = results
        .iter()
        .find(|r| r.0 == "roofline/copy")
        .map(|r| r.1 / r.2)
    else {
        return;
    };
    println!(
        "\n| kernel | median (us) | GB/s | % of copy ({:.0} GB/s) |",
        copy / 1e9
    );
    println!("| --- | ---: | ---: | ---: |");
    for (name, bytes, secs) in results.iter() {
        let bw = bytes / secs;
        println!(
            "| {name} | {:.1} | {:.0} | {:.0}% |",
            secs * 1e6,
            bw / 1e9,
            100.0 * bw / copy
        );
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    // A filter starting with cpu or cuda skips the other group's set-up too.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wants = |group: &str| {
        filters.is_empty()
            || filters
                .iter()
                .any(|f| !f.starts_with("cpu") && !f.starts_with("cuda") || f.starts_with(group))
    };
    if wants("cuda") {
        match CudaBackend::new(0) {
            Ok(be) => {
                let mut g = Gpu { be };
                gpu_benches(&mut c, &g);
                fp8_kv_decode_bench(&mut c, &g);
                linear_benches(&mut c, &mut g);
            }
            Err(e) => eprintln!("cuda benches skipped: {e}"),
        }
    }
    if wants("cpu") {
        cpu_benches(&mut c);
    }
    c.final_summary();
    print_table();
}
