use half::{bf16, f16};
use rand::{RngExt, SeedableRng};

use super::*;

/// A 16-bit pool gives exactly what an f32 pool holding the same rounded
/// values gives: the widening is exact and the arithmetic is the f32 one.
#[test]
fn a_16_bit_pool_equals_an_f32_pool_of_its_values() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let shape = AttnShape {
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 80,
        sliding_window: None,
        scale: 0.1,
    };
    let (bs, blocks) = (16, 6);
    let meta = StepMeta {
        token_ids: vec![0; 4],
        query_start: vec![0, 1, 4],
        context_lens: vec![50, 40],
        block_tables: vec![vec![5, 0, 3, 1], vec![2, 4, 5]],
        block_size: bs,
        ..StepMeta::default()
    };
    let len = blocks * shape.num_kv_heads * bs * shape.head_dim;
    let mut random = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random::<f32>() - 0.5).collect() };
    let (k, v, qkv) = (random(len), random(len), random(4 * shape.qkv_width()));
    let run = |k: &CpuKvPool, v: &CpuKvPool| {
        let mut out = vec![f32::NAN; 4 * shape.num_heads * shape.head_dim];
        paged_attention(&qkv, k, v, &meta, shape, &mut out);
        out
    };
    let bf = |x: &[f32]| x.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>();
    let hf = |x: &[f32]| x.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>();
    let wide_bf = |x: &[f32]| x.iter().map(|&x| bf16::from_f32(x).to_f32()).collect();
    let wide_hf = |x: &[f32]| x.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
    let got = run(&CpuKvPool::BF16(bf(&k)), &CpuKvPool::BF16(bf(&v)));
    let want = run(&CpuKvPool::F32(wide_bf(&k)), &CpuKvPool::F32(wide_bf(&v)));
    assert_eq!(got, want, "bfloat16");
    let got = run(&CpuKvPool::F16(hf(&k)), &CpuKvPool::F16(hf(&v)));
    let want = run(&CpuKvPool::F32(wide_hf(&k)), &CpuKvPool::F32(wide_hf(&v)));
    assert_eq!(got, want, "float16");
    let exact = run(&CpuKvPool::F32(k.clone()), &CpuKvPool::F32(v.clone()));
    let err = got
        .iter()
        .zip(&exact)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(
        err > 0.0 && err < 2e-3,
        "float16 KV moves the output by {err}"
    );
}
