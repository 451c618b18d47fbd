//! The CUDA kernels against the CPU backend (feature `cuda`; needs a GPU).
//!
//! Every check draws fresh random inputs (the seed is printed, and
//! ENGINE_TEST_SEED replays one), never zeros, poisons the outputs with NaN
//! first, and compares ‖gpu − cpu‖ / ‖cpu‖ per dtype: f32 ≤ 1e-5, f16 ≤ 5e-3,
//! bf16 ≤ 1e-2 (the CPU reference runs in f32 on the inputs rounded to the
//! dtype). Without a CUDA driver the tests print why and pass, unless
//! ENGINE_REQUIRE_GPU=1 (the device check sets it) makes that a failure.
#![cfg(feature = "cuda")]

use std::ffi::c_void;

use engine::backend::cpu::{key_blocks_transposed, CpuBackend, CpuKvPool, CpuWeight};
use engine::backend::cuda::cudarc::driver::CudaSlice;
use engine::backend::cuda::{self, sys, CudaBackend, CudaBuffer, CudaDevice};
use engine::backend::DType;
use engine::backend::{AttnShape, Backend, StepMeta};
use engine::backend::{HostTensor, TensorBytes};
use engine::backend::{SampleBatch, SampleRow, SampledRow};
use engine::config::ModelConfig;
use engine::sampling::batch::HostSampler;
use engine::sampling::{self, processors, SamplingParams, SequenceTokens};
use half::{bf16, f16};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

// ---------------------------------------------------------------- harness

fn gpu() -> Option<CudaDevice> {
    let require = std::env::var("ENGINE_REQUIRE_GPU").is_ok_and(|v| v == "1");
    match CudaDevice::open(0) {
        Ok(d) => Some(d),
        Err(e) if require => panic!("ENGINE_REQUIRE_GPU=1 but {e}"),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

fn rng(test: &str) -> ChaCha8Rng {
    let seed = std::env::var("ENGINE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("{test}: seed {seed}");
    ChaCha8Rng::seed_from_u64(seed)
}

fn random(len: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..len)
        .map(|_| {
            let v: f32 = rng.random_range(-1f32..1.0);
            if v == 0.0 {
                0.5
            } else {
                v
            }
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Dt {
    F32,
    F16,
    BF16,
}

const DTYPES: [Dt; 3] = [Dt::F32, Dt::F16, Dt::BF16];

impl Dt {
    fn code(self) -> i32 {
        (match self {
            Dt::F32 => sys::EK_DTYPE_F32,
            Dt::F16 => sys::EK_DTYPE_F16,
            Dt::BF16 => sys::EK_DTYPE_BF16,
        }) as i32
    }
    fn round(self, x: f32) -> f32 {
        match self {
            Dt::F32 => x,
            Dt::F16 => f16::from_f32(x).to_f32(),
            Dt::BF16 => bf16::from_f32(x).to_f32(),
        }
    }
    fn rounded(self, v: &[f32]) -> Vec<f32> {
        v.iter().map(|&x| self.round(x)).collect()
    }
    fn tol(self) -> f64 {
        match self {
            Dt::F32 => 1e-5,
            Dt::F16 => 5e-3,
            Dt::BF16 => 1e-2,
        }
    }
    fn encode(self, v: &[f32]) -> Vec<u8> {
        match self {
            Dt::F32 => bytemuck::cast_slice(v).to_vec(),
            Dt::F16 => v
                .iter()
                .flat_map(|&x| f16::from_f32(x).to_le_bytes())
                .collect(),
            Dt::BF16 => v
                .iter()
                .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
                .collect(),
        }
    }
    fn decode(self, b: &[u8]) -> Vec<f32> {
        match self {
            Dt::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dt::F16 => b
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dt::BF16 => b
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        }
    }
}

/// A typed tensor on the GPU, held as bytes.
struct Dev<'a> {
    gpu: &'a CudaDevice,
    buf: CudaSlice<u8>,
    dt: Dt,
}

impl<'a> Dev<'a> {
    fn new(gpu: &'a CudaDevice, dt: Dt, v: &[f32]) -> Dev<'a> {
        Dev {
            gpu,
            buf: gpu.upload(&dt.encode(v)).unwrap(),
            dt,
        }
    }
    /// `len` elements of NaN.
    fn poisoned(gpu: &'a CudaDevice, dt: Dt, len: usize) -> Dev<'a> {
        let size = match dt {
            Dt::F32 => 4,
            _ => 2,
        };
        Dev {
            gpu,
            buf: gpu.upload(&vec![0xffu8; len * size]).unwrap(),
            dt,
        }
    }
    fn p(&self) -> *const c_void {
        cuda::ptr(&self.buf, &self.gpu.stream)
    }
    fn pm(&mut self) -> *mut c_void {
        cuda::ptr_mut(&mut self.buf, &self.gpu.stream)
    }
    fn get(&self) -> Vec<f32> {
        self.dt.decode(&self.gpu.download(&self.buf).unwrap())
    }
}

fn upload<T: engine::backend::cuda::cudarc::driver::DeviceRepr>(
    gpu: &CudaDevice,
    v: &[T],
) -> CudaSlice<T> {
    gpu.upload(v).unwrap()
}

fn p<T>(gpu: &CudaDevice, b: &CudaSlice<T>) -> *const c_void {
    cuda::ptr(b, &gpu.stream)
}

fn pm<T>(gpu: &CudaDevice, b: &mut CudaSlice<T>) -> *mut c_void {
    cuda::ptr_mut(b, &gpu.stream)
}

fn ok(what: &str, status: i32) {
    assert_eq!(status, 0, "{what}: launcher returned cudaError {status}");
}

/// ‖got − want‖ / ‖want‖ within `tol`, every element finite where `want` is.
fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (mut diff, mut norm) = (0f64, 0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if w.is_finite() {
            assert!(
                g.is_finite(),
                "{what}: element {i} is {g} (want {w}): unwritten or broken"
            );
            diff += ((g - w) as f64).powi(2);
            norm += (w as f64).powi(2);
        } else {
            assert!(
                g == w || (g.is_nan() && w.is_nan()),
                "{what}: element {i} is {g}, want {w}"
            );
        }
    }
    let rel = diff.sqrt() / norm.sqrt().max(1e-30);
    assert!(rel <= tol, "{what}: relative error {rel:.3e} > {tol:.0e}");
}

fn host_tensor(v: &[f32], shape: &[usize]) -> HostTensor {
    HostTensor {
        name: "test".into(),
        dtype: DType::F32,
        shape: shape.to_vec(),
        bytes: TensorBytes::Owned(bytemuck::cast_slice(v).to_vec()),
        quant: None,
        fp8_scales: None,
    }
}

// ---------------------------------------------------------------- norms and element-wise

#[test]
fn rms_norm_and_fused_add_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("rms_norm");
    for dt in DTYPES {
        for (rows, hidden) in [(1, 4096), (7, 5120), (33, 1000), (3, 13), (2, 8192)] {
            let x = dt.rounded(&random(rows * hidden, &mut rng));
            let r = dt.rounded(&random(rows * hidden, &mut rng));
            let w = dt.rounded(&random(hidden, &mut rng));
            let cpu_w = CpuWeight::natural(host_tensor(&w, &[hidden]), DType::F32);
            let mut want = vec![0f32; rows * hidden];
            CpuBackend.rms_norm(&x, &cpu_w, 1e-5, &mut want).unwrap();
            let (xd, wd) = (Dev::new(&gpu, dt, &x), Dev::new(&gpu, dt, &w));
            let mut out = Dev::poisoned(&gpu, dt, rows * hidden);
            ok("rms_norm", unsafe {
                sys::ek_rms_norm(
                    out.pm(),
                    xd.p(),
                    wd.p(),
                    dt.code(),
                    rows as i64,
                    hidden as i64,
                    1e-5,
                    gpu.raw_stream(),
                )
            });
            assert_close(
                &format!("rms_norm {dt:?} {rows}x{hidden}"),
                &out.get(),
                &want,
                dt.tol(),
            );

            let (mut want_x, mut want_r) = (x.clone(), r.clone());
            CpuBackend
                .fused_add_rms_norm(&mut want_x, &mut want_r, &cpu_w, 1e-5)
                .unwrap();
            let (mut xd, mut rd) = (Dev::new(&gpu, dt, &x), Dev::new(&gpu, dt, &r));
            ok("fused_add_rms_norm", unsafe {
                sys::ek_fused_add_rms_norm(
                    xd.pm(),
                    rd.pm(),
                    wd.p(),
                    dt.code(),
                    rows as i64,
                    hidden as i64,
                    1e-5,
                    gpu.raw_stream(),
                )
            });
            let what = format!("fused_add_rms_norm {dt:?} {rows}x{hidden}");
            assert_close(&format!("{what} (residual)"), &rd.get(), &want_r, dt.tol());
            assert_close(&format!("{what} (out)"), &xd.get(), &want_x, dt.tol());
        }
    }
}

#[test]
fn silu_and_mul_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("silu_and_mul");
    for dt in DTYPES {
        for (rows, width) in [(1, 14336), (5, 11008), (3, 1001), (64, 64)] {
            let gu = dt.rounded(&random(rows * 2 * width, &mut rng));
            let mut want = vec![0f32; rows * width];
            CpuBackend.silu_mul(&gu, width, &mut want).unwrap();
            let gd = Dev::new(&gpu, dt, &gu);
            let mut out = Dev::poisoned(&gpu, dt, rows * width);
            ok("silu_and_mul", unsafe {
                sys::ek_silu_and_mul(
                    out.pm(),
                    gd.p(),
                    dt.code(),
                    rows as i64,
                    width as i64,
                    gpu.raw_stream(),
                )
            });
            assert_close(
                &format!("silu_and_mul {dt:?} {rows}x{width}"),
                &out.get(),
                &want,
                dt.tol(),
            );
        }
    }
}

/// Row copies and the bias add are exact: the values rounded to the output's dtype.
#[test]
fn embedding_gather_rows_and_add_bias_in_every_dtype() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("embedding, gather_rows, add_bias");
    let (vocab, width, tokens) = (1000, 576, 9);
    let ids: Vec<i32> = (0..tokens)
        .map(|_| rng.random_range(0..vocab as i32))
        .collect();
    let idd = upload(&gpu, &ids);
    for table_dt in DTYPES {
        let table = table_dt.rounded(&random(vocab * width, &mut rng));
        let td = Dev::new(&gpu, table_dt, &table);
        for out_dt in DTYPES {
            let mut out = Dev::poisoned(&gpu, out_dt, tokens * width);
            ok("embedding", unsafe {
                sys::ek_embedding(
                    out.pm(),
                    out_dt.code(),
                    td.p(),
                    table_dt.code(),
                    p(&gpu, &idd).cast(),
                    tokens as i64,
                    width as i64,
                    gpu.raw_stream(),
                )
            });
            let want: Vec<f32> = ids
                .iter()
                .flat_map(|&i| &table[i as usize * width..(i as usize + 1) * width])
                .map(|&v| out_dt.round(v))
                .collect();
            assert_eq!(out.get(), want, "embedding {table_dt:?} -> {out_dt:?}");
        }
    }
    for dt in DTYPES {
        let (rows, cols) = (7, 333);
        let x = dt.rounded(&random(rows * cols, &mut rng));
        let pick: Vec<i32> = vec![6, 0, 3, 3];
        let (xd, pd) = (Dev::new(&gpu, dt, &x), upload(&gpu, &pick));
        let mut out = Dev::poisoned(&gpu, dt, pick.len() * cols);
        ok("gather_rows", unsafe {
            sys::ek_gather_rows(
                out.pm(),
                xd.p(),
                dt.code(),
                p(&gpu, &pd).cast(),
                pick.len() as i64,
                cols as i64,
                gpu.raw_stream(),
            )
        });
        let want: Vec<f32> = pick
            .iter()
            .flat_map(|&r| &x[r as usize * cols..(r as usize + 1) * cols])
            .copied()
            .collect();
        assert_eq!(out.get(), want, "gather_rows {dt:?}");

        let bias = dt.rounded(&random(cols, &mut rng));
        let (mut xd, bd) = (Dev::new(&gpu, dt, &x), Dev::new(&gpu, dt, &bias));
        ok("add_bias", unsafe {
            sys::ek_add_bias(
                xd.pm(),
                bd.p(),
                dt.code(),
                rows as i64,
                cols as i64,
                gpu.raw_stream(),
            )
        });
        let want: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(i, &v)| dt.round(v + bias[i % cols]))
            .collect();
        assert_eq!(xd.get(), want, "add_bias {dt:?}");
    }
}

fn llama3_table(head_dim: usize, positions: usize) -> Vec<f32> {
    let heads = 4;
    let text = format!(
        r#"{{"architectures":["LlamaForCausalLM"],"hidden_size":{},"intermediate_size":64,
        "num_hidden_layers":1,"num_attention_heads":{heads},"vocab_size":10,"rope_theta":500000.0,
        "max_position_embeddings":131072,
        "rope_scaling":{{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
        "original_max_position_embeddings":8192}}}}"#,
        head_dim * heads
    );
    let config = ModelConfig::from_json_str(&text).unwrap();
    engine::model::rope::cos_sin_table(&config, positions).unwrap()
}

/// GPT-J style: pairs (2i, 2i + 1) rotated by the table's i-th cos/sin.
fn rotary_gptj(qkv: &mut [f32], table: &[f32], positions: &[u32], shape: AttnShape) {
    let hd = shape.head_dim;
    for (row, &pos) in qkv.chunks_mut(shape.qkv_width()).zip(positions) {
        let t = &table[pos as usize * hd..(pos as usize + 1) * hd];
        for head in row[..(shape.num_heads + shape.num_kv_heads) * hd].chunks_mut(hd) {
            for i in 0..hd / 2 {
                let (a, b) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = a * t[i] - b * t[hd / 2 + i];
                head[2 * i + 1] = b * t[i] + a * t[hd / 2 + i];
            }
        }
    }
}

#[test]
fn rotary_matches_the_cpu_on_slices_of_fused_qkv() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("rotary");
    for dt in DTYPES {
        for (tokens, heads, kvh, hd) in [
            (1, 32, 8, 128),
            (37, 28, 4, 128),
            (5, 8, 8, 64),
            (3, 12, 2, 80),
            (2, 4, 1, 256),
        ] {
            for neox in [true, false] {
                let shape = AttnShape {
                    num_heads: heads,
                    num_kv_heads: kvh,
                    head_dim: hd,
                    sliding_window: None,
                    scale: 1.0,
                };
                let max_pos = 9000;
                let table = llama3_table(hd, max_pos);
                let positions: Vec<u32> = (0..tokens)
                    .map(|_| rng.random_range(0..max_pos as u32))
                    .collect();
                let qkv = dt.rounded(&random(tokens * shape.qkv_width(), &mut rng));
                let mut want = qkv.clone();
                if neox {
                    let meta = StepMeta {
                        positions: positions.clone(),
                        ..StepMeta::default()
                    };
                    CpuBackend.rotary(&mut want, &table, &meta, shape).unwrap();
                } else {
                    rotary_gptj(&mut want, &table, &positions, shape);
                }
                let mut qd = Dev::new(&gpu, dt, &qkv);
                let pos: Vec<i32> = positions.iter().map(|&p| p as i32).collect();
                let (pos_d, table_d) = (upload(&gpu, &pos), upload(&gpu, &table));
                let elem = if dt == Dt::F32 { 4 } else { 2 };
                let base = qd.pm() as *mut u8;
                ok("rotary", unsafe {
                    sys::ek_rotary(
                        base.cast(),
                        base.add(heads * hd * elem).cast(),
                        p(&gpu, &pos_d).cast(),
                        p(&gpu, &table_d).cast(),
                        dt.code(),
                        tokens as i64,
                        heads as i32,
                        kvh as i32,
                        hd as i32,
                        hd as i32,
                        shape.qkv_width() as i64,
                        shape.qkv_width() as i64,
                        neox as i32,
                        gpu.raw_stream(),
                    )
                });
                // The v heads are untouched: compared like the rest.
                assert_close(
                    &format!("rotary {dt:?} neox={neox} {tokens}x{heads}/{kvh}x{hd}"),
                    &qd.get(),
                    &want,
                    dt.tol(),
                );
            }
        }
    }
}

/// A random distinct slot of `slots` per token, every third token skipped (-1).
fn scattered_slots(tokens: usize, slots: usize, rng: &mut ChaCha8Rng) -> Vec<i64> {
    let mut all: Vec<i64> = (0..slots as i64).collect();
    for i in (1..all.len()).rev() {
        all.swap(i, rng.random_range(0..=i));
    }
    (0..tokens)
        .map(|t| if t % 3 == 2 { -1 } else { all[t] })
        .collect()
}

#[test]
fn reshape_and_cache_writes_only_mapped_slots() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("reshape_and_cache");
    for dt in DTYPES {
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
            let blocks = usize::div_ceil(tokens, bs) + 3;
            let slot_mapping = scattered_slots(tokens, blocks * bs, &mut rng);
            let meta = StepMeta {
                slot_mapping: slot_mapping.clone(),
                block_size: bs,
                ..StepMeta::default()
            };
            let qkv = dt.rounded(&random(tokens * shape.qkv_width(), &mut rng));
            let pool = blocks * kvh * bs * hd;
            let (k0, v0) = (
                dt.rounded(&random(pool, &mut rng)),
                dt.rounded(&random(pool, &mut rng)),
            );
            // The CPU stores each K block transposed; the GPU, as vLLM does, not.
            let mut want_k = CpuKvPool::F32(key_blocks_transposed(&k0, bs, hd));
            let mut want_v = CpuKvPool::F32(v0.clone());
            CpuBackend
                .reshape_and_cache(&qkv, &mut want_k, &mut want_v, &meta, shape)
                .unwrap();
            let want_k = key_blocks_transposed(want_k.as_f32().unwrap(), hd, bs);
            let want_v = want_v.as_f32().unwrap();
            let qd = Dev::new(&gpu, dt, &qkv);
            let (mut kd, mut vd) = (Dev::new(&gpu, dt, &k0), Dev::new(&gpu, dt, &v0));
            let sm = upload(&gpu, &slot_mapping);
            let elem = if dt == Dt::F32 { 4 } else { 2 };
            let base = qd.p() as *const u8;
            ok("reshape_and_cache", unsafe {
                sys::ek_reshape_and_cache(
                    base.add(heads * hd * elem).cast(),
                    base.add((heads + kvh) * hd * elem).cast(),
                    kd.pm(),
                    vd.pm(),
                    p(&gpu, &sm).cast(),
                    dt.code(),
                    dt.code(),
                    1.0,
                    1.0,
                    tokens as i64,
                    shape.qkv_width() as i64,
                    shape.qkv_width() as i64,
                    kvh as i32,
                    hd as i32,
                    bs as i32,
                    gpu.raw_stream(),
                )
            });
            // Copies are exact in any dtype.
            assert_close(
                &format!("reshape_and_cache K {dt:?}"),
                &kd.get(),
                &want_k,
                0.0,
            );
            assert_close(
                &format!("reshape_and_cache V {dt:?}"),
                &vd.get(),
                want_v,
                0.0,
            );
        }
    }
}

// ---------------------------------------------------------------- attention

struct AttnCase {
    heads: usize,
    kvh: usize,
    hd: usize,
    bs: usize,
    window: Option<usize>,
    /// (new tokens, context) per sequence.
    seqs: Vec<(usize, usize)>,
}

/// Builds a batch with scattered blocks, fills the pools at random, and
/// returns (meta, qkv, k pool, v pool, shape).
fn attn_batch(
    c: &AttnCase,
    dt: Dt,
    rng: &mut ChaCha8Rng,
) -> (StepMeta, Vec<f32>, Vec<f32>, Vec<f32>, AttnShape) {
    let shape = AttnShape {
        num_heads: c.heads,
        num_kv_heads: c.kvh,
        head_dim: c.hd,
        sliding_window: c.window,
        scale: 1.0 / (c.hd as f32).sqrt(),
    };
    let blocks: usize = c
        .seqs
        .iter()
        .map(|&(_, ctx)| ctx.div_ceil(c.bs))
        .sum::<usize>()
        + 2;
    let mut free: Vec<u32> = (0..blocks as u32).collect();
    for i in (1..free.len()).rev() {
        free.swap(i, rng.random_range(0..=i));
    }
    let mut meta = StepMeta {
        block_size: c.bs,
        query_start: vec![0],
        ..StepMeta::default()
    };
    for &(new, ctx) in &c.seqs {
        let table: Vec<u32> = (0..ctx.div_ceil(c.bs))
            .map(|_| free.pop().unwrap())
            .collect();
        meta.token_ids.extend(std::iter::repeat_n(0, new));
        meta.positions.extend((ctx - new..ctx).map(|p| p as u32));
        meta.query_start.push(meta.token_ids.len());
        meta.context_lens.push(ctx);
        meta.block_tables.push(table);
    }
    let pool = blocks * c.kvh * c.bs * c.hd;
    let k = dt.rounded(&random(pool, rng));
    let v = dt.rounded(&random(pool, rng));
    // Larger q spreads the softmax (scores of a few units).
    let q: Vec<f32> = random(meta.num_tokens() * shape.qkv_width(), rng)
        .iter()
        .map(|x| x * 3.0)
        .collect();
    (meta, dt.rounded(&q), k, v, shape)
}

fn attn_params(
    gpu: &CudaDevice,
    dt: Dt,
    shape: AttnShape,
    meta: &StepMeta,
    bufs: &mut AttnBufs,
) -> sys::ek_attn_params {
    sys::ek_attn_params {
        out: bufs.out.pm(),
        q: bufs.q.p(),
        k_cache: bufs.k.p(),
        v_cache: bufs.v.p(),
        block_tables: p(gpu, &bufs.tables).cast(),
        context_lens: p(gpu, &bufs.ctx).cast(),
        query_start: p(gpu, &bufs.qs).cast(),
        q_stride: shape.qkv_width() as i64,
        out_stride: (shape.num_heads * shape.head_dim) as i64,
        num_seqs: meta.num_seqs() as i32,
        num_heads: shape.num_heads as i32,
        num_kv_heads: shape.num_kv_heads as i32,
        head_dim: shape.head_dim as i32,
        block_size: meta.block_size as i32,
        max_blocks_per_seq: bufs.max_blocks as i32,
        sliding_window: shape.sliding_window.unwrap_or(0) as i32,
        dtype: dt.code(),
        scale: shape.scale,
        cache_dtype: dt.code(),
        k_scale: 1.0,
        v_scale: 1.0,
    }
}

struct AttnBufs<'a> {
    out: Dev<'a>,
    q: Dev<'a>,
    k: Dev<'a>,
    v: Dev<'a>,
    tables: CudaSlice<i32>,
    ctx: CudaSlice<i32>,
    qs: CudaSlice<i32>,
    max_blocks: usize,
}

fn attn_bufs<'a>(
    gpu: &'a CudaDevice,
    dt: Dt,
    meta: &StepMeta,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out_len: usize,
) -> AttnBufs<'a> {
    let max_blocks = meta.block_tables.iter().map(Vec::len).max().unwrap_or(1);
    let mut tables = vec![0i32; meta.num_seqs() * max_blocks];
    for (row, t) in tables.chunks_mut(max_blocks).zip(&meta.block_tables) {
        for (d, &b) in row.iter_mut().zip(t) {
            *d = b as i32;
        }
    }
    let ctx: Vec<i32> = meta.context_lens.iter().map(|&c| c as i32).collect();
    let qs: Vec<i32> = meta.query_start.iter().map(|&c| c as i32).collect();
    AttnBufs {
        out: Dev::poisoned(gpu, dt, out_len),
        q: Dev::new(gpu, dt, q),
        k: Dev::new(gpu, dt, k),
        v: Dev::new(gpu, dt, v),
        tables: upload(gpu, &tables),
        ctx: upload(gpu, &ctx),
        qs: upload(gpu, &qs),
        max_blocks,
    }
}

/// The decode kernel over `params` in `parts` partitions (0: one pass), with
/// the workspace it asks for.
fn launch_decode(gpu: &CudaDevice, params: &sys::ek_attn_params, parts: usize, what: &str) {
    // SAFETY: a pure size computation.
    let bytes = unsafe {
        sys::ek_paged_attention_workspace_bytes(
            params.num_seqs,
            params.num_heads,
            params.head_dim,
            parts as i32,
        )
    };
    let mut ws = gpu.alloc_zeros::<u8>(bytes as usize).unwrap();
    // SAFETY: params describe live buffers; the workspace has the size asked for.
    ok(what, unsafe {
        sys::ek_paged_attention_decode(params, parts as i32, pm(gpu, &mut ws), gpu.raw_stream())
    });
}

fn decode_cases() -> Vec<AttnCase> {
    let mut cases = Vec::new();
    for (heads, kvh, hd, bs, window) in [
        (32, 8, 128, 16, None),
        (8, 8, 64, 8, None),
        (28, 4, 128, 32, None),
        (12, 2, 80, 16, Some(100)),
        (16, 1, 96, 16, None),
        (8, 2, 256, 8, None),
        (24, 2, 64, 16, Some(7)),
    ] {
        cases.push(AttnCase {
            heads,
            kvh,
            hd,
            bs,
            window,
            seqs: vec![(1, 1), (1, 17), (1, 513), (1, 1300), (1, 64)],
        });
    }
    cases
}

#[test]
fn paged_attention_decode_matches_the_cpu_single_pass_and_split() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("paged_attention_decode");
    for dt in DTYPES {
        for c in decode_cases() {
            let (meta, q, k, v, shape) = attn_batch(&c, dt, &mut rng);
            let cpu_k = CpuKvPool::F32(key_blocks_transposed(&k, c.bs, c.hd));
            let cpu_v = CpuKvPool::F32(v.clone());
            let out_len = meta.num_tokens() * c.heads * c.hd;
            let mut want = vec![0f32; out_len];
            CpuBackend
                .paged_attention(&q, &cpu_k, &cpu_v, &meta, shape, &mut want)
                .unwrap();
            let max_ctx = *meta.context_lens.iter().max().unwrap();
            for parts in [0, max_ctx.div_ceil(cuda::attention::PARTITION_SIZE)] {
                let mut bufs = attn_bufs(&gpu, dt, &meta, &q, &k, &v, out_len);
                let params = attn_params(&gpu, dt, shape, &meta, &mut bufs);
                launch_decode(&gpu, &params, parts, "paged_attention_decode");
                let what = format!(
                    "decode {dt:?} {}/{}x{} bs {} window {:?} partitions {parts}",
                    c.heads, c.kvh, c.hd, c.bs, c.window
                );
                assert_close(&what, &bufs.out.get(), &want, dt.tol());
            }
        }
    }
}

/// The two prefill kernels: SIMT (every dtype and width) and tensor cores.
#[derive(Clone, Copy)]
enum Prefill {
    Simt,
    Mma,
}

impl Prefill {
    fn name(self) -> &'static str {
        match self {
            Prefill::Simt => "paged_attention_prefill",
            Prefill::Mma => "paged_attention_prefill_mma",
        }
    }

    fn launch(self, gpu: &CudaDevice, params: &sys::ek_attn_params, max_query_len: i32) -> i32 {
        // SAFETY: params describe live buffers of the batch.
        unsafe {
            match self {
                Prefill::Simt => {
                    sys::ek_paged_attention_prefill(params, max_query_len, gpu.raw_stream())
                }
                Prefill::Mma => {
                    sys::ek_paged_attention_prefill_mma(params, max_query_len, gpu.raw_stream())
                }
            }
        }
    }
}

/// The prefill kernels that serve `dt` at head width `hd` on this GPU, as
/// the backend picks.
fn prefill_kernels(gpu: &CudaDevice, dt: Dt, hd: usize) -> Vec<Prefill> {
    let mut kernels = vec![Prefill::Simt];
    let smem = gpu.shared_mem_per_block;
    if cuda::attention::tensor_core_prefill(dt.code() as u32, hd, smem) {
        kernels.push(Prefill::Mma);
    }
    kernels
}

#[test]
fn paged_attention_prefill_matches_the_cpu_on_mixed_batches() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("paged_attention_prefill");
    for dt in DTYPES {
        for (heads, kvh, hd, bs, window) in [
            (32, 8, 128, 16, None),
            (8, 8, 64, 8, Some(20)),
            (12, 2, 80, 32, None),
            (16, 4, 96, 16, None),
            (4, 2, 256, 16, Some(33)),
        ] {
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
            let (meta, q, k, v, shape) = attn_batch(&c, dt, &mut rng);
            let cpu_k = CpuKvPool::F32(key_blocks_transposed(&k, c.bs, c.hd));
            let cpu_v = CpuKvPool::F32(v.clone());
            let out_len = meta.num_tokens() * heads * hd;
            let mut want = vec![0f32; out_len];
            CpuBackend
                .paged_attention(&q, &cpu_k, &cpu_v, &meta, shape, &mut want)
                .unwrap();
            for kernel in prefill_kernels(&gpu, dt, hd) {
                let mut bufs = attn_bufs(&gpu, dt, &meta, &q, &k, &v, out_len);
                let params = attn_params(&gpu, dt, shape, &meta, &mut bufs);
                ok(kernel.name(), kernel.launch(&gpu, &params, 130));
                assert_close(
                    &format!(
                        "{} {dt:?} {heads}/{kvh}x{hd} bs {bs} window {window:?}",
                        kernel.name()
                    ),
                    &bufs.out.get(),
                    &want,
                    dt.tol(),
                );
            }
        }
    }
}

// The FP8 KV cache: tests/cuda_kernels/kv_fp8.rs.
#[path = "cuda_kernels/kv_fp8.rs"]
mod kv_fp8;

// ---------------------------------------------------------------- the backend (cuBLAS, the trait)

#[test]
fn backend_matmul_matches_the_cpu_in_every_dtype() {
    if gpu().is_none() {
        return;
    }
    let mut be = CudaBackend::new(0).unwrap();
    let mut rng = rng("matmul");
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::F16, 1e-3), (DType::BF16, 1e-2)] {
        // A model in `dtype`: activations, outputs and biases in it.
        be.set_activation_dtype(dtype);
        for (m, n, k) in [(1, 4096, 4096), (7, 1000, 333), (64, 256, 128)] {
            let x = random(m * k, &mut rng);
            let w = random(n * k, &mut rng);
            let b = random(n, &mut rng);
            let cpu_w = CpuWeight::natural(host_tensor(&w, &[n, k]), dtype);
            let cpu_b = CpuWeight::natural(host_tensor(&b, &[n]), dtype);
            let mut want = vec![0f32; m * n];
            CpuBackend
                .matmul(&x, &cpu_w, Some(&cpu_b), &mut want)
                .unwrap();
            let gw = be.upload_weight(host_tensor(&w, &[n, k]), dtype).unwrap();
            let gb = be.upload_weight(host_tensor(&b, &[n]), dtype).unwrap();
            let dev = be.device();
            let gx = CudaBuffer::upload(dev, &x, dtype).unwrap();
            let mut out = CudaBuffer::upload(dev, &vec![f32::NAN; m * n], dtype).unwrap();
            assert_eq!(be.alloc(1).unwrap().dtype(), dtype);
            be.matmul(&gx, &gw, Some(&gb), &mut out).unwrap();
            assert_close(
                &format!("matmul {dtype:?} {m}x{n}x{k}"),
                &be.download(&out).unwrap(),
                &want,
                tol,
            );

            // Logits: f32 out of the model's dtype, from f32 inputs (converted).
            CpuBackend.matmul(&x, &cpu_w, None, &mut want).unwrap();
            let mut logits = be.alloc_logits(m * n).unwrap();
            assert_eq!(logits.dtype(), DType::F32);
            be.matmul(&be.upload(&x).unwrap(), &gw, None, &mut logits)
                .unwrap();
            assert_close(
                &format!("matmul {dtype:?} {m}x{n}x{k} to f32"),
                &be.download(&logits).unwrap(),
                &want,
                tol,
            );
        }
    }
}

/// An FP8 e4m3 matrix `[n, k]`: random codes (no NaN code) and one positive
/// scale per row, as an FP8 checkpoint's weights reach the backends.
fn fp8_matrix(n: usize, k: usize, rng: &mut ChaCha8Rng) -> HostTensor {
    let codes: Vec<u8> = (0..n * k)
        .map(|_| loop {
            let c: u8 = rng.random();
            if !engine::backend::fp8::is_nan(c) {
                break c;
            }
        })
        .collect();
    let scales: Vec<f32> = (0..n).map(|_| rng.random_range(1e-3f32..1e-1)).collect();
    HostTensor {
        name: "fp8".into(),
        dtype: DType::BF16,
        shape: vec![n, k],
        bytes: TensorBytes::Owned(codes),
        quant: None,
        fp8_scales: Some(scales),
    }
}

/// FP8 weights against the CPU's FP8 matmul (both multiply the codes and
/// scales with unquantized activations): up to 8 rows through the GEMV, more
/// through dequantized slabs and cuBLAS (n 8200 x k 4096 is two slabs); k 40
/// (not a multiple of 16) falls back to a dequantized dense upload. Bounds as
/// the dense matmul's: f32 1e-5 (summation order); bf16 1e-2 and f16 2e-3,
/// the outputs (and the slabs' dequantized weights) rounded to the dtype.
#[test]
fn fp8_matmul_matches_the_cpu_through_the_gemv_and_the_slabs() {
    if gpu().is_none() {
        return;
    }
    let mut be = CudaBackend::new(0).unwrap();
    let mut rng = rng("fp8 matmul");
    let cases = [
        (1, 4096, 4096),
        (3, 1000, 336),
        (8, 77, 512),
        (9, 8200, 4096),
        (64, 1000, 1024),
        (2, 50, 40),
    ];
    for (dtype, dt, tol) in [
        (DType::F32, Dt::F32, 1e-5),
        (DType::F16, Dt::F16, 2e-3),
        (DType::BF16, Dt::BF16, 1e-2),
    ] {
        be.set_activation_dtype(dtype);
        for (m, n, k) in cases {
            let w = fp8_matrix(n, k, &mut rng);
            let x = dt.rounded(&random(m * k, &mut rng));
            let cpu_w = CpuBackend.upload_weight(w.clone(), dtype).unwrap();
            let mut want = vec![0f32; m * n];
            CpuBackend.matmul(&x, &cpu_w, None, &mut want).unwrap();
            let gw = be.upload_weight(w, dtype).unwrap();
            assert_eq!(gw.is_fp8(), k % 16 == 0, "{m}x{n}x{k}: kept as FP8");
            let dev = be.device();
            let gx = CudaBuffer::upload(dev, &x, dtype).unwrap();
            let mut out = CudaBuffer::upload(dev, &vec![f32::NAN; m * n], dtype).unwrap();
            be.matmul(&gx, &gw, None, &mut out).unwrap();
            let what = format!("fp8 matmul {dtype:?} {m}x{n}x{k}");
            assert_close(&what, &be.download(&out).unwrap(), &want, tol);
            // f32 outputs from the model's dtype (as the LM head writes logits).
            let mut wide = be.alloc_logits(m * n).unwrap();
            be.matmul(&gx, &gw, None, &mut wide).unwrap();
            let tol32 = if dtype == DType::F32 { tol } else { 1e-2 };
            assert_close(
                &format!("{what} to f32"),
                &be.download(&wide).unwrap(),
                &want,
                tol32,
            );
        }
    }
}

// ---------------------------------------------------------------- sampling

fn logits(rows: usize, vocab: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    random(rows * vocab, rng).iter().map(|x| x * 8.0).collect()
}

#[test]
#[allow(clippy::too_many_lines)] // one chain of kernels against the CPU's, read top to bottom
fn penalties_temperature_and_truncation_match_the_cpu_sampler() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("sampling processors");
    for vocab in [32000, 128256, 1000, 77] {
        let rows = 6;
        let mut l = logits(rows, vocab, &mut rng);
        // Ties at the top-k threshold in one row.
        l[5 * vocab..5 * vocab + 10].fill(7.5);
        let mut want = l.clone();
        let (mut offsets, mut ids, mut counts) = (vec![0i32], Vec::new(), Vec::new());
        let (mut rep, mut freq, mut pres, mut temp) = (vec![], vec![], vec![], vec![]);
        let (mut top_k, mut top_p, mut min_p) = (vec![], vec![], vec![]);
        let settings: [(i32, f64, f64); 6] = [
            (0, 1.0, 0.0),
            (50, 1.0, 0.0),
            (0, 0.9, 0.0),
            (40, 0.8, 0.05),
            (0, 1.0, 0.1),
            (5, 0.95, 0.0),
        ];
        for (r, row) in want.chunks_mut(vocab).enumerate() {
            let prompt: Vec<u32> = (0..20).map(|_| rng.random_range(0..vocab as u32)).collect();
            let output: Vec<u32> = (0..30)
                .map(|_| rng.random_range(0..vocab as u32 / 4 + 1))
                .collect();
            let params = SamplingParams {
                repetition_penalty: 1.0 + r as f64 * 0.1,
                frequency_penalty: 0.2 * r as f64,
                presence_penalty: 0.1,
                temperature: 0.7 + 0.1 * r as f64,
                top_k: settings[r].0,
                top_p: settings[r].1,
                min_p: settings[r].2,
                ..SamplingParams::default()
            };
            processors::process_logits(
                row,
                &params,
                SequenceTokens {
                    prompt: &prompt,
                    output: &output,
                },
                &[],
            );
            let mut distinct: Vec<u32> = prompt.iter().chain(&output).copied().collect();
            distinct.sort_unstable();
            distinct.dedup();
            for id in distinct {
                ids.push(id as i32);
                counts.push(output.iter().filter(|&&o| o == id).count() as i32);
            }
            offsets.push(ids.len() as i32);
            rep.push(params.repetition_penalty as f32);
            freq.push(params.frequency_penalty as f32);
            pres.push(params.presence_penalty as f32);
            temp.push(params.temperature as f32);
            top_k.push(params.top_k);
            top_p.push(params.top_p);
            min_p.push(params.min_p);
        }
        let mut ld = upload(&gpu, &l);
        let s = gpu.raw_stream();
        let (od, idd, cd) = (
            upload(&gpu, &offsets),
            upload(&gpu, &ids),
            upload(&gpu, &counts),
        );
        let (rd, fd, pd, td) = (
            upload(&gpu, &rep),
            upload(&gpu, &freq),
            upload(&gpu, &pres),
            upload(&gpu, &temp),
        );
        let (kd, tpd, mpd) = (
            upload(&gpu, &top_k),
            upload(&gpu, &top_p),
            upload(&gpu, &min_p),
        );
        let lp = pm(&gpu, &mut ld).cast();
        unsafe {
            ok(
                "penalties",
                sys::ek_apply_penalties(
                    lp,
                    rows as i64,
                    vocab as i64,
                    p(&gpu, &od).cast(),
                    p(&gpu, &idd).cast(),
                    p(&gpu, &cd).cast(),
                    p(&gpu, &rd).cast(),
                    p(&gpu, &fd).cast(),
                    p(&gpu, &pd).cast(),
                    s,
                ),
            );
            ok(
                "temperature",
                sys::ek_apply_temperature(lp, rows as i64, vocab as i64, p(&gpu, &td).cast(), s),
            );
            ok(
                "top_k_top_p_min_p",
                sys::ek_apply_top_k_top_p_min_p(
                    lp,
                    rows as i64,
                    vocab as i64,
                    p(&gpu, &kd).cast(),
                    p(&gpu, &tpd).cast(),
                    p(&gpu, &mpd).cast(),
                    s,
                ),
            );
        }
        let got = gpu.download(&ld).unwrap();
        for (r, (g, w)) in got.chunks(vocab).zip(want.chunks(vocab)).enumerate() {
            let kept = |row: &[f32]| row.iter().filter(|x| x.is_finite()).count();
            assert_eq!(
                kept(g),
                kept(w),
                "vocab {vocab} row {r} ({:?}): tokens kept",
                settings[r]
            );
            assert_close(
                &format!("processed logits, vocab {vocab} row {r}"),
                g,
                w,
                1e-6,
            );
        }
    }
}

#[test]
#[allow(clippy::too_many_lines)] // one chain of kernels against the CPU's, read top to bottom
fn bitmask_log_softmax_argmax_and_top_logprobs_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("sampling rows");
    let s = gpu.raw_stream();
    for vocab in [128256, 32000, 999, 33] {
        let rows = 4;
        let mut l = logits(rows, vocab, &mut rng);
        // A tie for the maximum (the first wins) and a NaN that must not win.
        l[vocab + 3] = 100.0;
        l[vocab + 7] = 100.0;
        l[2 * vocab] = f32::NAN;
        let words = vocab.div_ceil(32);
        let mask: Vec<u32> = (0..rows * words)
            .map(|_| rng.random::<u32>() | 1 << 3)
            .collect();
        let mut want = l.clone();
        for (r, row) in want.chunks_mut(vocab).enumerate() {
            for (i, x) in row.iter_mut().enumerate() {
                if mask[r * words + i / 32] >> (i % 32) & 1 == 0 {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
        let mut ld = upload(&gpu, &l);
        let md = upload(&gpu, &mask);
        ok("bitmask", unsafe {
            sys::ek_apply_token_bitmask(
                pm(&gpu, &mut ld).cast(),
                rows as i64,
                vocab as i64,
                p(&gpu, &md).cast(),
                words as i64,
                s,
            )
        });
        assert_close("bitmask", &gpu.download(&ld).unwrap(), &want, 0.0);

        let mut amax = upload(&gpu, &vec![-1i32; rows]);
        ok("argmax", unsafe {
            sys::ek_argmax(
                pm(&gpu, &mut amax).cast(),
                p(&gpu, &ld).cast(),
                rows as i64,
                vocab as i64,
                s,
            )
        });
        let want_amax: Vec<i32> = want
            .chunks(vocab)
            .map(|r| sampling::argmax(r) as i32)
            .collect();
        assert_eq!(
            gpu.download(&amax).unwrap(),
            want_amax,
            "argmax, vocab {vocab}"
        );

        // log_softmax of rows without NaN (the CPU's sum skips NaN; so does the GPU's, but
        // the max would differ): replace it first.
        want[2 * vocab] = 1.0;
        let ld = upload(&gpu, &want);
        let mut lsm = upload(&gpu, &vec![f32::NAN; rows * vocab]);
        ok("log_softmax", unsafe {
            sys::ek_log_softmax(
                pm(&gpu, &mut lsm).cast(),
                p(&gpu, &ld).cast(),
                rows as i64,
                vocab as i64,
                s,
            )
        });
        let want_lsm: Vec<f32> = want.chunks(vocab).flat_map(sampling::log_softmax).collect();
        assert_close(
            &format!("log_softmax, vocab {vocab}"),
            &gpu.download(&lsm).unwrap(),
            &want_lsm,
            1e-6,
        );

        let n = 20.min(vocab);
        let (mut ids, mut vals) = (
            upload(&gpu, &vec![-1i32; rows * n]),
            upload(&gpu, &vec![f32::NAN; rows * n]),
        );
        let lsm_host = gpu.download(&lsm).unwrap();
        ok("top_logprobs", unsafe {
            sys::ek_top_logprobs(
                pm(&gpu, &mut ids).cast(),
                pm(&gpu, &mut vals).cast(),
                p(&gpu, &lsm).cast(),
                rows as i64,
                vocab as i64,
                n as i32,
                s,
            )
        });
        let (ids, vals) = (gpu.download(&ids).unwrap(), gpu.download(&vals).unwrap());
        for (r, row) in lsm_host.chunks(vocab).enumerate() {
            let top = sampling::logprobs::top_logprobs(row, n);
            let want_ids: Vec<i32> = top.iter().map(|t| t.token_id as i32).collect();
            let want_vals: Vec<f32> = top.iter().map(|t| t.logprob).collect();
            assert_eq!(
                &ids[r * n..(r + 1) * n],
                &want_ids[..],
                "top_logprobs ids, vocab {vocab} row {r}"
            );
            assert_eq!(
                &vals[r * n..(r + 1) * n],
                &want_vals[..],
                "top_logprobs values, vocab {vocab} row {r}"
            );
        }
    }
}

/// Philox4x32-10, the generator ek_sample draws from.
fn philox(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (ctr, key);
    for _ in 0..10 {
        let p0 = 0xD251_1F53u64 * c[0] as u64;
        let p1 = 0xCD9E_8D57u64 * c[2] as u64;
        c = [
            (p1 >> 32) as u32 ^ c[1] ^ k[0],
            p1 as u32,
            (p0 >> 32) as u32 ^ c[3] ^ k[1],
            p0 as u32,
        ];
        k = [
            k[0].wrapping_add(0x9E37_79B9),
            k[1].wrapping_add(0xBB67_AE85),
        ];
    }
    c
}

fn philox_uniform(seed: u64, stream: u64, offset: u64) -> f64 {
    let c = philox(
        [
            offset as u32,
            (offset >> 32) as u32,
            stream as u32,
            (stream >> 32) as u32,
        ],
        [seed as u32, (seed >> 32) as u32],
    );
    let bits = (c[1] as u64) << 32 | c[0] as u64;
    let u = (bits >> 11) as f64 / (1u64 << 53) as f64;
    assert_eq!(u, sampling::philox::philox_uniform(seed, stream, offset));
    u
}

#[test]
fn philox_reference_matches_the_published_known_answers() {
    // Random123's kat_vectors for philox4x32-10 (runs without a GPU).
    assert_eq!(
        philox([0; 4], [0; 2]),
        [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
    );
    assert_eq!(
        philox([u32::MAX; 4], [u32::MAX; 2]),
        [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
    );
    assert_eq!(
        philox(
            [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
            [0xa4093822, 0x299f31d0]
        ),
        [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
    );
}

/// The CPU sampler's inverse-CDF draw (src/sampling/sampler.rs) for a given u.
fn draw(logprobs: &[f32], u: f64) -> i32 {
    let weight = |lp: f32| {
        let w = (lp as f64).exp();
        if w.is_finite() {
            w
        } else {
            0.0
        }
    };
    let total: f64 = logprobs.iter().map(|&lp| weight(lp)).sum();
    if total <= 0.0 || !total.is_finite() {
        return sampling::argmax(logprobs) as i32;
    }
    let target = u * total;
    let mut acc = 0.0;
    let mut last = 0;
    for (i, &lp) in logprobs.iter().enumerate() {
        let w = weight(lp);
        if w > 0.0 {
            acc += w;
            last = i;
            if target < acc {
                return i as i32;
            }
        }
    }
    last as i32
}

/// ek_philox_uniform against the CPU's Philox for random (seed, stream, counter).
fn check_philox_uniforms(gpu: &CudaDevice, rng: &mut ChaCha8Rng) {
    let s = gpu.raw_stream();
    let n = 4096;
    let seeds: Vec<u64> = (0..n).map(|_| rng.random()).collect();
    let offsets: Vec<u64> = (0..n)
        .map(|i| if i % 2 == 0 { rng.random() } else { i as u64 })
        .collect();
    let streams: Vec<u64> = (0..n)
        .map(|i| {
            if i % 3 == 0 {
                rng.random()
            } else {
                i as u64 % 5
            }
        })
        .collect();
    let (sd, td, od) = (
        upload(gpu, &seeds),
        upload(gpu, &streams),
        upload(gpu, &offsets),
    );
    let mut ud = upload(gpu, &vec![f64::NAN; n]);
    ok("philox_uniform", unsafe {
        sys::ek_philox_uniform(
            pm(gpu, &mut ud).cast(),
            p(gpu, &sd).cast(),
            p(gpu, &td).cast(),
            p(gpu, &od).cast(),
            n as i64,
            s,
        )
    });
    let want: Vec<f64> = (0..n)
        .map(|i| philox_uniform(seeds[i], streams[i], offsets[i]))
        .collect();
    assert_eq!(gpu.download(&ud).unwrap(), want, "philox uniforms");
}

#[test]
fn seeded_sampling_draws_what_the_cpu_draws_with_the_same_uniforms() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("sample");
    let s = gpu.raw_stream();
    check_philox_uniforms(&gpu, &mut rng);

    for vocab in [128256, 32000, 50] {
        let rows = 64;
        let mut lp: Vec<f32> = logits(rows, vocab, &mut rng)
            .chunks(vocab)
            .flat_map(sampling::log_softmax)
            .collect();
        // A row with everything masked but two tokens, and one fully masked (argmax fallback).
        for (i, x) in lp[..vocab].iter_mut().enumerate() {
            if i != 5 && i != vocab - 1 {
                *x = f32::NEG_INFINITY;
            }
        }
        lp[vocab..2 * vocab].fill(f32::NEG_INFINITY);
        let seeds: Vec<u64> = (0..rows).map(|_| rng.random()).collect();
        let offsets: Vec<u64> = (0..rows as u64).collect();
        let want: Vec<i32> = lp
            .chunks(vocab)
            .zip(seeds.iter().zip(&offsets))
            .map(|(row, (&s, &o))| draw(row, philox_uniform(s, o % 3, o)))
            .collect();
        let streams: Vec<u64> = offsets.iter().map(|o| o % 3).collect();
        let (ld, sd, td, od) = (
            upload(&gpu, &lp),
            upload(&gpu, &seeds),
            upload(&gpu, &streams),
            upload(&gpu, &offsets),
        );
        let mut out = upload(&gpu, &vec![-1i32; rows]);
        ok("sample", unsafe {
            sys::ek_sample(
                pm(&gpu, &mut out).cast(),
                p(&gpu, &ld).cast(),
                rows as i64,
                vocab as i64,
                p(&gpu, &sd).cast(),
                p(&gpu, &td).cast(),
                p(&gpu, &od).cast(),
                s,
            )
        });
        assert_eq!(
            gpu.download(&out).unwrap(),
            want,
            "sampled tokens, vocab {vocab}"
        );
    }
}

#[test]
fn opening_the_device_without_a_driver_is_an_error_not_a_panic() {
    // On a machine with a GPU this opens it; without one it must fail cleanly.
    match CudaBackend::new(0) {
        Ok(be) => assert_eq!(be.name(), "cuda"),
        Err(e) => assert!(e.to_string().starts_with("cuda: "), "{e}"),
    }
    assert!(CudaBackend::new(4096).is_err());
}

/// A grid of sample rows over `rows` logits rows: greedy and seeded draws,
/// penalties, top-k/top-p/min-p, bitmasks, logit bias (the CUDA op's host
/// path), top-N 0/1/5/20.
fn sample_grid(rows: usize, vocab: usize, rng: &mut ChaCha8Rng) -> Vec<SampleRow> {
    let mut out = Vec::new();
    for i in 0..rows * 4 {
        let mut r = SampleRow::greedy(i % rows);
        if i % 2 == 1 {
            r.draw = Some((rng.random(), (i % 5) as u64, rng.random_range(0..1000)));
            r.temperature = 0.7;
        }
        match i % 4 {
            1 => r.top_k = 40,
            2 => r.top_p = 0.9,
            3 => (r.top_k, r.top_p, r.min_p) = (100, 0.8, 0.02),
            _ => {}
        }
        if i % 3 == 0 {
            r.penalty_tokens = (0..20)
                .map(|_| (rng.random_range(0..vocab as u32), rng.random_range(0..3)))
                .collect::<std::collections::BTreeMap<_, _>>()
                .into_iter()
                .collect();
            (
                r.repetition_penalty,
                r.frequency_penalty,
                r.presence_penalty,
            ) = (1.2, 0.4, 0.3);
        }
        if i % 5 == 0 {
            r.bitmask = Some((0..vocab.div_ceil(32)).map(|_| rng.random()).collect());
        }
        if i % 7 == 0 {
            // The last bias is past the vocabulary: skipped, as on the host.
            r.logit_adds = vec![(1, 3.0), ((vocab - 1) as u32, -100.0), (vocab as u32, 5.0)];
            r.masked_ids = vec![0, 2];
        }
        r.top_logprobs = [0, 1, 5, 20][i % 4];
        out.push(r);
    }
    out
}

/// A batch of greedy rows without top logprobs takes the fused kernel
/// (csrc/greedy.cu): the CPU op's tokens, logprobs and ranks, with ties, a
/// masked-out row (all -inf), a row with +inf and one with NaNs among them.
#[test]
fn greedy_batches_take_the_fused_kernel_and_match_the_cpu_op() {
    if gpu().is_none() {
        return;
    }
    let be = CudaBackend::new(0).unwrap();
    let mut rng = rng("greedy");
    for vocab in [128256, 49152, 4097, 50] {
        let rows = 12;
        let mut logits = logits(rows, vocab, &mut rng);
        // Ties at the top (the first wins), +inf (an all -inf row), NaNs (never win).
        logits[vocab..vocab + 7].fill(9.0);
        logits[2 * vocab + vocab / 2] = f32::INFINITY;
        for i in (0..vocab).step_by(3) {
            logits[3 * vocab + i] = f32::NAN;
        }
        let batch = SampleBatch {
            vocab,
            rows: (0..rows)
                .map(|i| {
                    let mut r = SampleRow::greedy(i);
                    match i {
                        4 => r.bitmask = Some(vec![0; vocab.div_ceil(32)]),
                        5 => {
                            r.bitmask =
                                Some((0..vocab.div_ceil(32)).map(|_| rng.random()).collect())
                        }
                        6 | 7 => {
                            r.penalty_tokens = vec![(1, 2), (7, 1)];
                            r.repetition_penalty = 1.3;
                        }
                        8 => r.top_k = 5,
                        _ => {}
                    }
                    r
                })
                .collect(),
        };
        let want = CpuBackend
            .sample_rows(&logits, &batch, &HostSampler)
            .unwrap();
        let got = be
            .sample_rows(&be.upload(&logits).unwrap(), &batch, &HostSampler)
            .unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let ctx = format!("vocab {vocab} row {i}");
            assert_eq!(g.chosen.token, w.chosen.token, "{ctx}");
            assert_eq!(g.chosen.rank, w.chosen.rank, "{ctx}");
            let (a, b) = (g.chosen.logprob, w.chosen.logprob);
            assert!(a == b || (a - b).abs() <= 1e-4, "{ctx}: {a} vs {b}");
            assert!(g.top.is_empty(), "{ctx}");
        }
    }
}

#[test]
fn sample_rows_on_the_gpu_match_the_cpu_op() {
    if gpu().is_none() {
        return;
    }
    let be = CudaBackend::new(0).unwrap();
    let mut rng = rng("sample_rows");
    for vocab in [128256, 49152, 50] {
        let rows = 16;
        let logits = logits(rows, vocab, &mut rng);
        let batch = SampleBatch {
            vocab,
            rows: sample_grid(rows, vocab, &mut rng),
        };
        let want = CpuBackend
            .sample_rows(&logits, &batch, &HostSampler)
            .unwrap();
        let got = be
            .sample_rows(&be.upload(&logits).unwrap(), &batch, &HostSampler)
            .unwrap();
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let ctx = format!("vocab {vocab} row {i}: {:?}", batch.rows[i]);
            assert_eq!(g.chosen.token, w.chosen.token, "{ctx}");
            assert_eq!(g.chosen.rank, w.chosen.rank, "{ctx}");
            let close = |a: f32, b: f32| a == b || (a - b).abs() <= 1e-4;
            assert!(close(g.chosen.logprob, w.chosen.logprob), "{ctx}");
            let ids = |r: &SampledRow| r.top.iter().map(|t| t.token).collect::<Vec<_>>();
            assert_eq!(ids(g), ids(w), "{ctx}");
            for (a, b) in g.top.iter().zip(&w.top) {
                assert!(close(a.logprob, b.logprob), "{ctx}");
                assert_eq!(a.rank, b.rank, "{ctx}");
            }
        }
    }
}
