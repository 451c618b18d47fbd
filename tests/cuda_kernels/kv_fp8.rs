//! The FP8 KV cache on the GPU against the CPU backend's: the encoder and
//! decoder bit for bit (src/backend/fp8.rs), the codes reshape_and_cache
//! writes, and attention over FP8 pools (decode single-pass and split,
//! prefill, and the Backend trait's ops end to end with the pools' scales).
//!
//! Attention tolerances: an FP8 element reads as code · scale on both
//! backends (one f32 product of the same two numbers), and the codes are
//! checked equal, so both attend over bit-identical K and V. What remains is
//! what the dense caches' comparison has (summation order, expf; q and out
//! in a 16-bit dtype), so the same bounds hold: f32 1e-5, f16 5e-3,
//! bf16 1e-2 (relative L2). The tensor-core prefill rounds code · scale
//! once more, to q's dtype, as its inputs must be: within the same bounds.
//! K and V use different scales, so swapping them is off by far more.

use engine::backend::cuda::CudaKvPool;
use engine::backend::fp8::Fp8Format;
use engine::backend::{KvDType, KvPoolShape};

use super::*;

const FORMATS: [Fp8Format; 2] = [Fp8Format::E4M3, Fp8Format::E5M2];
/// Scales of the attention pools: values in ±1 use codes up to ±50 (K) and
/// ±200 (V), and the two differ by 4x.
const K_SCALE: f32 = 0.02;
const V_SCALE: f32 = 0.005;

fn fp8_code(format: Fp8Format) -> i32 {
    (match format {
        Fp8Format::E4M3 => sys::EK_DTYPE_FP8_E4M3,
        Fp8Format::E5M2 => sys::EK_DTYPE_FP8_E5M2,
    }) as i32
}

fn encoded(format: Fp8Format, values: &[f32], scale: f32) -> Vec<u8> {
    values.iter().map(|&x| format.encode(x / scale)).collect()
}

fn decoded(format: Fp8Format, codes: &[u8], scale: f32) -> Vec<f32> {
    codes.iter().map(|&b| format.decode(b) * scale).collect()
}

/// Equal bit for bit (NaN to any NaN: only an encoded NaN input decodes so).
fn assert_same_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
            "{what}: element {i} is {g:e} ({:#010x}), want {w:e} ({:#010x})",
            g.to_bits(),
            w.to_bits()
        );
    }
}

/// The encoder's inputs of interest, both signs: every finite value of the
/// format, each midpoint between neighbours (a tie) and the f32 either side,
/// the tie between zero and the smallest subnormal, f32 subnormals, the
/// overflow region (the tie above the largest value included), infinities
/// and NaN.
fn encoder_inputs(format: Fp8Format) -> Vec<f32> {
    let finite: Vec<f32> = (0..=0x7Fu8)
        .map(|b| format.decode(b))
        .filter(|v| v.is_finite())
        .collect();
    let mut xs = finite.clone();
    for w in finite.windows(2) {
        let mid = (w[0] + w[1]) / 2.0;
        xs.extend([mid, mid.next_down(), mid.next_up()]);
    }
    let tiny = format.decode(1) / 2.0;
    xs.extend([tiny, tiny.next_down(), tiny.next_up()]);
    xs.extend([f32::from_bits(1), f32::MIN_POSITIVE.next_down(), 1e-30]);
    let (max, below) = (format.max_finite(), finite[finite.len() - 2]);
    let overflow_tie = max + (max - below) / 2.0;
    xs.extend([
        overflow_tie,
        overflow_tie.next_down(),
        overflow_tie.next_up(),
    ]);
    xs.extend([max.next_up(), max * 4.0, f32::MAX, f32::INFINITY, f32::NAN]);
    let negated: Vec<f32> = xs.iter().map(|&x| -x).collect();
    xs.extend(negated);
    xs
}

#[test]
fn fp8_quantize_and_dequantize_match_the_cpu_bit_for_bit() {
    let Some(gpu) = gpu() else { return };
    // Powers of two keep the ties ties after the division; 0.37 and 3e3 do not.
    let scales = [1.0, 2f32.powi(-10), 64.0, 0.37, 3e3];
    for format in FORMATS {
        for scale in scales {
            let inputs: Vec<f32> = encoder_inputs(format).iter().map(|&x| x * scale).collect();
            let want = encoded(format, &inputs, scale);
            let x = upload(&gpu, &inputs);
            let mut out = gpu.alloc_zeros::<u8>(inputs.len()).unwrap();
            ok("fp8_quantize", unsafe {
                sys::ek_fp8_quantize(
                    pm(&gpu, &mut out),
                    p(&gpu, &x).cast(),
                    fp8_code(format),
                    scale,
                    inputs.len() as i64,
                    gpu.raw_stream(),
                )
            });
            let got = gpu.download(&out).unwrap();
            for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g, w,
                    "{format:?} scale {scale}: {:e} / scale encodes to {g:#04x}, the CPU's {w:#04x}",
                    inputs[i]
                );
            }

            let codes: Vec<u8> = (0..=255).collect();
            let c = upload(&gpu, &codes);
            let mut values = gpu.alloc_zeros::<f32>(codes.len()).unwrap();
            ok("fp8_dequantize", unsafe {
                sys::ek_fp8_dequantize(
                    pm(&gpu, &mut values).cast(),
                    p(&gpu, &c),
                    fp8_code(format),
                    scale,
                    codes.len() as i64,
                    gpu.raw_stream(),
                )
            });
            assert_same_bits(
                &format!("fp8_dequantize {format:?} scale {scale}"),
                &gpu.download(&values).unwrap(),
                &decoded(format, &codes, scale),
            );
        }
    }
}

/// Every pool value read back as f32 (the CPU's dequantized values).
fn read_all(pool: &CpuKvPool) -> Vec<f32> {
    let mut out = vec![0f32; pool.len()];
    pool.read(0, &mut out);
    out
}

/// CPU pools in `format` holding `k` and `v` (GPU layout; the CPU's K
/// transposed), and the GPU pools' codes of the same values.
fn fp8_pools(
    format: Fp8Format,
    shape: KvPoolShape,
    k: &[f32],
    v: &[f32],
    scales: (f32, f32),
) -> (CpuKvPool, CpuKvPool, Vec<u8>, Vec<u8>) {
    let shape = KvPoolShape {
        dtype: KvDType::Fp8(format),
        ..shape
    };
    let mut cpu_k = CpuKvPool::zeros_scaled(shape, scales.0).unwrap();
    cpu_k.write(
        0,
        &key_blocks_transposed(k, shape.block_size, shape.head_dim),
    );
    let mut cpu_v = CpuKvPool::zeros_scaled(shape, scales.1).unwrap();
    cpu_v.write(0, v);
    let (gk, gv) = (encoded(format, k, scales.0), encoded(format, v, scales.1));
    (cpu_k, cpu_v, gk, gv)
}

/// `ek_reshape_and_cache` of `qkv` (one row per token, in `dt`) into FP8
/// pools of `format` holding `k_codes` and `v_codes`; returns the pools' codes.
#[allow(clippy::too_many_arguments)] // the launcher's own arguments
fn gpu_reshape_fp8(
    gpu: &CudaDevice,
    dt: Dt,
    format: Fp8Format,
    shape: AttnShape,
    meta: &StepMeta,
    qkv: &[f32],
    codes: (&[u8], &[u8]),
    scales: (f32, f32),
) -> (Vec<u8>, Vec<u8>) {
    let (heads, kvh, hd) = (shape.num_heads, shape.num_kv_heads, shape.head_dim);
    let qd = Dev::new(gpu, dt, qkv);
    let (mut kd, mut vd) = (upload(gpu, codes.0), upload(gpu, codes.1));
    let sm = upload(gpu, &meta.slot_mapping);
    let elem = if dt == Dt::F32 { 4 } else { 2 };
    let base = qd.p() as *const u8;
    ok("reshape_and_cache fp8", unsafe {
        sys::ek_reshape_and_cache(
            base.add(heads * hd * elem).cast(),
            base.add((heads + kvh) * hd * elem).cast(),
            pm(gpu, &mut kd),
            pm(gpu, &mut vd),
            p(gpu, &sm).cast(),
            dt.code(),
            fp8_code(format),
            scales.0,
            scales.1,
            meta.slot_mapping.len() as i64,
            shape.qkv_width() as i64,
            shape.qkv_width() as i64,
            kvh as i32,
            hd as i32,
            meta.block_size as i32,
            gpu.raw_stream(),
        )
    });
    (gpu.download(&kd).unwrap(), gpu.download(&vd).unwrap())
}

#[test]
fn reshape_and_cache_writes_the_fp8_codes_the_cpu_writes() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("reshape_and_cache fp8");
    // |x| up to 6: 6 / 0.01 saturates e4m3 (448); values near 0 reach the subnormals.
    let scales = (0.01f32, 0.25f32);
    for dt in DTYPES {
        for format in FORMATS {
            for (tokens, heads, kvh, hd, bs) in [
                (1, 32, 8, 128, 16),
                (41, 8, 2, 64, 8),
                (7, 12, 4, 80, 32),
                (3, 4, 4, 256, 16),
                (9, 4, 2, 96, 16),
            ] {
                let shape = AttnShape {
                    num_heads: heads,
                    num_kv_heads: kvh,
                    head_dim: hd,
                    sliding_window: None,
                    scale: 1.0,
                };
                let pool_shape = KvPoolShape {
                    num_blocks: usize::div_ceil(tokens, bs) + 3,
                    num_kv_heads: kvh,
                    block_size: bs,
                    head_dim: hd,
                    dtype: KvDType::Fp8(format),
                };
                let meta = StepMeta {
                    slot_mapping: scattered_slots(tokens, pool_shape.num_blocks * bs, &mut rng),
                    block_size: bs,
                    ..StepMeta::default()
                };
                let qkv: Vec<f32> = random(tokens * shape.qkv_width(), &mut rng)
                    .iter()
                    .map(|x| x * 6.0)
                    .collect();
                let qkv = dt.rounded(&qkv);
                let pool = pool_shape.len();
                let (k0, v0) = (random(pool, &mut rng), random(pool, &mut rng));
                let (mut want_k, mut want_v, k_codes, v_codes) =
                    fp8_pools(format, pool_shape, &k0, &v0, scales);
                CpuBackend
                    .reshape_and_cache(&qkv, &mut want_k, &mut want_v, &meta, shape)
                    .unwrap();
                let (got_k, got_v) = gpu_reshape_fp8(
                    &gpu,
                    dt,
                    format,
                    shape,
                    &meta,
                    &qkv,
                    (&k_codes, &v_codes),
                    scales,
                );
                // Decoding is one-to-one (no NaN here, and ±0 differ in bits):
                // equal values are equal codes.
                let what = format!("reshape_and_cache {dt:?} {format:?} {kvh}x{hd} bs {bs}");
                assert_same_bits(
                    &format!("{what} K"),
                    &decoded(format, &got_k, scales.0),
                    &key_blocks_transposed(&read_all(&want_k), hd, bs),
                );
                assert_same_bits(
                    &format!("{what} V"),
                    &decoded(format, &got_v, scales.1),
                    &read_all(&want_v),
                );
            }
        }
    }
}

/// A case's CPU output over FP8 pools, and the GPU's buffers with the same codes.
struct Fp8Attn<'a> {
    want: Vec<f32>,
    bufs: AttnBufs<'a>,
}

fn fp8_attention<'a>(
    gpu: &'a CudaDevice,
    c: &AttnCase,
    dt: Dt,
    format: Fp8Format,
    rng: &mut ChaCha8Rng,
) -> (Fp8Attn<'a>, StepMeta, AttnShape) {
    let (meta, q, k, v, shape) = attn_batch(c, dt, rng);
    let pool_shape = KvPoolShape {
        num_blocks: k.len() / (c.kvh * c.bs * c.hd),
        num_kv_heads: c.kvh,
        block_size: c.bs,
        head_dim: c.hd,
        dtype: KvDType::Fp8(format),
    };
    let (cpu_k, cpu_v, k_codes, v_codes) =
        fp8_pools(format, pool_shape, &k, &v, (K_SCALE, V_SCALE));
    let out_len = meta.num_tokens() * c.heads * c.hd;
    let mut want = vec![0f32; out_len];
    CpuBackend
        .paged_attention(&q, &cpu_k, &cpu_v, &meta, shape, &mut want)
        .unwrap();
    let mut bufs = attn_bufs(gpu, dt, &meta, &q, &k, &v, out_len);
    bufs.k.buf = upload(gpu, &k_codes);
    bufs.v.buf = upload(gpu, &v_codes);
    (Fp8Attn { want, bufs }, meta, shape)
}

fn fp8_params(
    gpu: &CudaDevice,
    dt: Dt,
    format: Fp8Format,
    shape: AttnShape,
    meta: &StepMeta,
    bufs: &mut AttnBufs,
) -> sys::ek_attn_params {
    sys::ek_attn_params {
        cache_dtype: fp8_code(format),
        k_scale: K_SCALE,
        v_scale: V_SCALE,
        ..attn_params(gpu, dt, shape, meta, bufs)
    }
}

#[test]
fn paged_attention_decode_over_fp8_pools_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("paged_attention_decode fp8");
    for (di, dt) in DTYPES.into_iter().enumerate() {
        // The formats take turns (each meets every dtype and most shapes),
        // so this costs the device check what the dense test does.
        for (i, c) in decode_cases().into_iter().enumerate() {
            let format = FORMATS[(i + di) % 2];
            let (mut a, meta, shape) = fp8_attention(&gpu, &c, dt, format, &mut rng);
            let max_ctx = c.seqs.iter().map(|s| s.1).max().unwrap();
            for parts in [0, max_ctx.div_ceil(cuda::attention::PARTITION_SIZE)] {
                a.bufs.out = Dev::poisoned(&gpu, dt, a.want.len());
                let params = fp8_params(&gpu, dt, format, shape, &meta, &mut a.bufs);
                launch_decode(&gpu, &params, parts, "paged_attention_decode fp8");
                let what = format!(
                    "decode {dt:?} {format:?} {}/{}x{} bs {} window {:?} partitions {parts}",
                    c.heads, c.kvh, c.hd, c.bs, c.window
                );
                assert_close(&what, &a.bufs.out.get(), &a.want, dt.tol());
            }
        }
    }
}

#[test]
fn paged_attention_prefill_over_fp8_pools_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("paged_attention_prefill fp8");
    let shapes = [
        (32, 8, 128, 16, None),
        (8, 8, 64, 8, Some(20)),
        (12, 2, 80, 32, None),
        (16, 4, 96, 16, None),
        (4, 2, 256, 16, Some(33)),
        (4, 4, 16, 16, None),
    ];
    for (di, dt) in DTYPES.into_iter().enumerate() {
        for (i, (heads, kvh, hd, bs, window)) in shapes.into_iter().enumerate() {
            let format = FORMATS[(i + di) % 2];
            // Decode, a whole prompt, a chunk after a cached prefix, an odd
            // prompt, a chunk over three 64-row tiles (the last one partial).
            let c = AttnCase {
                heads,
                kvh,
                hd,
                bs,
                window,
                seqs: vec![(1, 70), (37, 37), (21, 150), (1, 1), (5, 5), (130, 200)],
            };
            let (mut a, meta, shape) = fp8_attention(&gpu, &c, dt, format, &mut rng);
            for kernel in prefill_kernels(&gpu, dt, hd) {
                a.bufs.out = Dev::poisoned(&gpu, dt, a.want.len());
                let params = fp8_params(&gpu, dt, format, shape, &meta, &mut a.bufs);
                ok(kernel.name(), kernel.launch(&gpu, &params, 130));
                assert_close(
                    &format!(
                        "{} {dt:?} {format:?} {heads}/{kvh}x{hd} bs {bs} window {window:?}",
                        kernel.name()
                    ),
                    &a.bufs.out.get(),
                    &a.want,
                    dt.tol(),
                );
            }
        }
    }
}

/// A step's metadata: `(new tokens, context)` per sequence over `tables`.
fn step_meta(seqs: &[(usize, usize)], tables: &[Vec<u32>], bs: usize) -> StepMeta {
    let mut meta = StepMeta {
        block_size: bs,
        query_start: vec![0],
        ..StepMeta::default()
    };
    for (&(new, ctx), table) in seqs.iter().zip(tables) {
        for pos in ctx - new..ctx {
            meta.token_ids.push(0);
            meta.positions.push(pos as u32);
            meta.slot_mapping
                .push(i64::from(table[pos / bs]) * bs as i64 + (pos % bs) as i64);
        }
        meta.query_start.push(meta.token_ids.len());
        meta.context_lens.push(ctx);
        meta.block_tables.push(table.clone());
    }
    meta
}

/// The Backend ops over pools from alloc_kv_pool (their scales inside):
/// three prompts prefilled whole, then two decode rows and a 9-token chunk
/// (both kernels in one step), each step's reshape_and_cache then attention.
#[test]
fn backend_reshape_and_cache_and_paged_attention_over_fp8_pools_match_the_cpu() {
    if gpu().is_none() {
        return;
    }
    let mut be = CudaBackend::new(0).unwrap();
    let mut rng = rng("backend fp8 attention");
    let shape = AttnShape {
        num_heads: 8,
        num_kv_heads: 2,
        head_dim: 128,
        sliding_window: None,
        scale: 1.0 / 128f32.sqrt(),
    };
    let tables: Vec<Vec<u32>> = vec![vec![3, 0], vec![5, 7], vec![1, 9, 2, 8]];
    let steps = [
        vec![(30, 30), (17, 17), (50, 50)],
        vec![(1, 31), (1, 18), (9, 59)],
    ];
    for (dtype, dt) in [(DType::F32, Dt::F32), (DType::BF16, Dt::BF16)] {
        be.set_activation_dtype(dtype);
        let unserved = be.alloc_kv_pool(
            KvPoolShape {
                num_blocks: 1,
                num_kv_heads: 2,
                block_size: 16,
                head_dim: 128,
                dtype: if dtype == DType::F32 {
                    KvDType::BF16
                } else {
                    KvDType::F32
                },
            },
            1.0,
        );
        assert!(unserved.is_err(), "{dtype:?}: a KV dtype no kernel reads");
        for format in FORMATS {
            assert!(be.kv_dtypes().contains(&KvDType::Fp8(format)));
            let pool_shape = KvPoolShape {
                num_blocks: 10,
                num_kv_heads: 2,
                block_size: 16,
                head_dim: 128,
                dtype: KvDType::Fp8(format),
            };
            let alloc_cpu = |s| CpuBackend.alloc_kv_pool(pool_shape, s).unwrap();
            let (mut cpu_k, mut cpu_v) = (alloc_cpu(K_SCALE), alloc_cpu(V_SCALE));
            let alloc_gpu = |s| -> CudaKvPool { be.alloc_kv_pool(pool_shape, s).unwrap() };
            let (mut gk, mut gv) = (alloc_gpu(K_SCALE), alloc_gpu(V_SCALE));
            for (i, seqs) in steps.iter().enumerate() {
                let meta = step_meta(seqs, &tables, 16);
                let qkv: Vec<f32> = random(meta.num_tokens() * shape.qkv_width(), &mut rng)
                    .iter()
                    .map(|x| x * 3.0)
                    .collect();
                let qkv = dt.rounded(&qkv);
                let out_len = meta.num_tokens() * shape.num_heads * shape.head_dim;
                let mut want = vec![0f32; out_len];
                CpuBackend
                    .reshape_and_cache(&qkv, &mut cpu_k, &mut cpu_v, &meta, shape)
                    .unwrap();
                CpuBackend
                    .paged_attention(&qkv, &cpu_k, &cpu_v, &meta, shape, &mut want)
                    .unwrap();
                let m = be.prepare_step(meta).unwrap();
                let gqkv = CudaBuffer::upload(be.device(), &qkv, dtype).unwrap();
                let mut out =
                    CudaBuffer::upload(be.device(), &vec![f32::NAN; out_len], dtype).unwrap();
                be.reshape_and_cache(&gqkv, &mut gk, &mut gv, &m, shape)
                    .unwrap();
                be.paged_attention(&gqkv, &gk, &gv, &m, shape, &mut out)
                    .unwrap();
                assert_close(
                    &format!("backend {dtype:?} {format:?} step {i}"),
                    &be.download(&out).unwrap(),
                    &want,
                    dt.tol(),
                );
            }
        }
    }
}
