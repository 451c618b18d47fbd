//! A KV pool on the CPU in the cache's dtype. A 16-bit pool halves the bytes
//! attention streams at long context, an FP8 one quarters them; values are
//! rounded to nearest-even when written and widened exactly to f32 when read,
//! so attention over a narrow pool equals attention over an f32 pool holding
//! the same rounded values. An FP8 pool stores `x / scale` (vLLM's per-tensor
//! `k_scale` / `v_scale`, saturated to the format's largest finite value) and
//! reads `value · scale`.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use crate::backend::fp8::Fp8Format;
use crate::backend::{KvDType, KvPoolShape};
use crate::memory::try_zeroed;

/// One layer's K or V pool. A V pool is `[num_blocks, num_kv_heads,
/// block_size, head_dim]`, as on the GPU; a K pool on the CPU is `[num_blocks,
/// num_kv_heads, head_dim, block_size]`: each block's keys transposed, the
/// layout attention scores them in (a position per SIMD lane), so a step
/// copies them out without transposing (see [`key_blocks_transposed`]).
#[derive(Debug, Clone, PartialEq)]
pub enum CpuKvPool {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    Fp8(Fp8Pool),
}

/// FP8 values with their format and per-tensor scale.
#[derive(Debug, Clone, PartialEq)]
pub struct Fp8Pool {
    pub bits: Vec<u8>,
    pub format: Fp8Format,
    pub scale: f32,
    /// `format.decode(b) · scale` for every byte `b`: a read is one lookup.
    pub table: Box<[f32; 256]>,
}

impl CpuKvPool {
    /// A zeroed pool, or an error naming the size when the memory is not there
    /// (the size comes from a user's flag or the model's config).
    pub fn zeros(shape: KvPoolShape) -> crate::error::Result<CpuKvPool> {
        CpuKvPool::zeros_scaled(shape, 1.0)
    }

    /// [`CpuKvPool::zeros`] with the scale an FP8 pool stores its values
    /// divided by (other dtypes store values as they are).
    pub fn zeros_scaled(shape: KvPoolShape, scale: f32) -> crate::error::Result<CpuKvPool> {
        let (len, what) = (shape.len(), "the KV cache");
        Ok(match shape.dtype {
            KvDType::F32 => CpuKvPool::F32(try_zeroed(len, what)?),
            KvDType::F16 => CpuKvPool::F16(try_zeroed(len, what)?),
            KvDType::BF16 => CpuKvPool::BF16(try_zeroed(len, what)?),
            KvDType::Fp8(format) => CpuKvPool::Fp8(Fp8Pool {
                bits: try_zeroed(len, what)?,
                format,
                scale,
                table: format.dequant_table(scale),
            }),
        })
    }

    pub fn dtype(&self) -> KvDType {
        match self {
            CpuKvPool::F32(_) => KvDType::F32,
            CpuKvPool::F16(_) => KvDType::F16,
            CpuKvPool::BF16(_) => KvDType::BF16,
            CpuKvPool::Fp8(p) => KvDType::Fp8(p.format),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            CpuKvPool::F32(v) => v.len(),
            CpuKvPool::F16(v) => v.len(),
            CpuKvPool::BF16(v) => v.len(),
            CpuKvPool::Fp8(p) => p.bits.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies `src..src + len` over `dst..dst + len`.
    pub fn copy_within(&mut self, src: usize, dst: usize, len: usize) {
        match self {
            CpuKvPool::F32(v) => v.copy_within(src..src + len, dst),
            CpuKvPool::F16(v) => v.copy_within(src..src + len, dst),
            CpuKvPool::BF16(v) => v.copy_within(src..src + len, dst),
            CpuKvPool::Fp8(p) => p.bits.copy_within(src..src + len, dst),
        }
    }

    /// Stores `values` at `at..at + values.len()`, rounded to the pool's dtype.
    pub fn write(&mut self, at: usize, values: &[f32]) {
        let end = at + values.len();
        match self {
            CpuKvPool::F32(v) => v[at..end].copy_from_slice(values),
            CpuKvPool::F16(v) => v[at..end].convert_from_f32_slice(values),
            CpuKvPool::BF16(v) => v[at..end].convert_from_f32_slice(values),
            CpuKvPool::Fp8(p) => {
                for (b, &x) in p.bits[at..end].iter_mut().zip(values) {
                    *b = p.format.encode(x / p.scale);
                }
            }
        }
    }

    /// Stores `values[i]` at `at + i · stride`, rounded to the pool's dtype
    /// (a key goes into its block's column).
    pub fn write_strided(&mut self, at: usize, stride: usize, values: &[f32]) {
        fn each<T>(pool: &mut [T], at: usize, stride: usize, values: &[f32], f: impl Fn(f32) -> T) {
            for (dst, &x) in pool[at..].iter_mut().step_by(stride).zip(values) {
                *dst = f(x);
            }
        }
        match self {
            CpuKvPool::F32(v) => each(v, at, stride, values, |x| x),
            CpuKvPool::F16(v) => each(v, at, stride, values, f16::from_f32),
            CpuKvPool::BF16(v) => each(v, at, stride, values, bf16::from_f32),
            CpuKvPool::Fp8(p) => {
                let (format, scale) = (p.format, p.scale);
                each(&mut p.bits, at, stride, values, |x| {
                    format.encode(x / scale)
                })
            }
        }
    }

    /// An f32 pool's values (the CUDA tests compare device pools with them).
    pub fn as_f32(&self) -> Option<&[f32]> {
        match self {
            CpuKvPool::F32(v) => Some(v),
            _ => None,
        }
    }

    /// The values at `at..at + out.len()`, widened to f32.
    pub fn read(&self, at: usize, out: &mut [f32]) {
        let end = at + out.len();
        match self {
            CpuKvPool::F32(v) => out.copy_from_slice(&v[at..end]),
            CpuKvPool::F16(v) => v[at..end].convert_to_f32_slice(out),
            CpuKvPool::BF16(v) => v[at..end].convert_to_f32_slice(out),
            CpuKvPool::Fp8(p) => {
                for (o, &b) in out.iter_mut().zip(&p.bits[at..end]) {
                    *o = p.table[usize::from(b)];
                }
            }
        }
    }
}

/// Every `rows × cols` matrix of `values`, transposed: with `rows` =
/// block_size and `cols` = head_dim it turns K blocks as the GPU stores them
/// into the CPU's layout, and with the two swapped back again.
pub fn key_blocks_transposed(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    for (src, dst) in values.chunks(rows * cols).zip(out.chunks_mut(rows * cols)) {
        for (r, row) in src.chunks(cols).enumerate() {
            for (c, &x) in row.iter().enumerate() {
                dst[c * rows + r] = x;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_round_to_nearest_even_and_reads_widen_exactly() {
        let shape = KvPoolShape {
            num_blocks: 1,
            num_kv_heads: 1,
            block_size: 1,
            head_dim: 4,
            dtype: KvDType::BF16,
        };
        let mut pool = CpuKvPool::zeros(shape).unwrap();
        let values = [1.0, 1.0 + 1.0 / 256.0, -3.140625, 1e-3];
        pool.write(0, &values);
        let mut back = [0f32; 4];
        pool.read(0, &mut back);
        let want: Vec<f32> = values.iter().map(|&x| bf16::from_f32(x).to_f32()).collect();
        assert_eq!(back.to_vec(), want);
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one, 1.0.
        assert_eq!(back[1], 1.0);
        assert_eq!(pool.dtype(), KvDType::BF16);
    }

    #[test]
    fn an_fp8_pool_stores_scaled_values_and_reads_them_back_scaled() {
        let shape = KvPoolShape {
            num_blocks: 1,
            num_kv_heads: 1,
            block_size: 1,
            head_dim: 5,
            dtype: KvDType::Fp8(Fp8Format::E4M3),
        };
        let mut pool = CpuKvPool::zeros_scaled(shape, 0.5).unwrap();
        // 300 / 0.5 = 600 saturates to 448; 0.3 / 0.5 = 0.6 rounds to 0.625.
        let values = [1.0, 300.0, -0.3, 0.0, f32::INFINITY];
        pool.write(0, &values);
        let mut back = [0f32; 5];
        pool.read(0, &mut back);
        assert_eq!(back, [1.0, 224.0, -0.3125, 0.0, 224.0]);
        let CpuKvPool::Fp8(p) = &pool else {
            panic!("an fp8 pool")
        };
        assert_eq!(p.bits[1], 0x7E);
        assert_eq!(pool.dtype(), shape.dtype);
    }

    #[test]
    fn an_impossible_pool_is_an_error_not_an_abort() {
        let shape = KvPoolShape {
            num_blocks: usize::MAX / 64,
            num_kv_heads: 2,
            block_size: 16,
            head_dim: 1,
            dtype: KvDType::F16,
        };
        let err = CpuKvPool::zeros(shape).unwrap_err().to_string();
        assert!(err.contains("the KV cache: cannot allocate"), "{err}");
    }

    /// A strided write rounds as a contiguous one and touches only its slots.
    #[test]
    fn a_strided_write_stores_what_a_contiguous_one_does() {
        let values = [1.0 + 1.0 / 256.0, -3.140625, 1e-3, 300.0, f32::INFINITY];
        for dtype in [
            KvDType::F32,
            KvDType::F16,
            KvDType::BF16,
            KvDType::Fp8(Fp8Format::E4M3),
            KvDType::Fp8(Fp8Format::E5M2),
        ] {
            let shape = KvPoolShape {
                num_blocks: 1,
                num_kv_heads: 1,
                block_size: 4,
                head_dim: 5,
                dtype,
            };
            let mut rows = CpuKvPool::zeros_scaled(shape, 0.5).unwrap();
            rows.write(0, &values);
            let mut columns = CpuKvPool::zeros_scaled(shape, 0.5).unwrap();
            columns.write_strided(1, 4, &values);
            let mut want = [0f32; 5];
            rows.read(0, &mut want);
            let mut all = [0f32; 20];
            columns.read(0, &mut all);
            for (i, &x) in all.iter().enumerate() {
                let expected = if i % 4 == 1 { want[i / 4] } else { 0.0 };
                assert_eq!(x.to_bits(), expected.to_bits(), "{dtype:?} at {i}");
            }
        }
    }

    #[test]
    fn key_blocks_transpose_there_and_back() {
        let values: Vec<f32> = (0..2 * 3 * 4).map(|i| i as f32).collect();
        let there = key_blocks_transposed(&values, 3, 4);
        // Block 1, row 2, column 1 goes to column 2 of row 1.
        assert_eq!(there[12 + 3 + 2], values[12 + 2 * 4 + 1]);
        assert_eq!(key_blocks_transposed(&there, 4, 3), values);
    }
}

#[cfg(test)]
mod fp8_attention {
    use rand::{RngExt, SeedableRng};

    use super::*;
    use crate::backend::cpu::attention::paged_attention;
    use crate::backend::{AttnShape, StepMeta};

    /// An FP8 pool read in place gives exactly what an f32 pool holding its
    /// dequantized values (`decode(bits) · scale`) gives.
    #[test]
    fn an_fp8_pool_equals_an_f32_pool_of_its_values() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
        let shape = AttnShape {
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 64,
            sliding_window: None,
            scale: 0.125,
        };
        let meta = StepMeta {
            token_ids: vec![0; 4],
            query_start: vec![0, 1, 4],
            context_lens: vec![50, 40],
            block_tables: vec![vec![5, 0, 3, 1], vec![2, 4, 5]],
            block_size: 16,
            ..StepMeta::default()
        };
        for (format, scale) in [(Fp8Format::E4M3, 0.01), (Fp8Format::E5M2, 1.0)] {
            let pool_shape = KvPoolShape {
                num_blocks: 6,
                num_kv_heads: 2,
                block_size: 16,
                head_dim: 64,
                dtype: KvDType::Fp8(format),
            };
            let mut random = |n: usize| -> Vec<f32> {
                (0..n).map(|_| rng.random::<f32>() * 4.0 - 2.0).collect()
            };
            let (k, v) = (random(pool_shape.len()), random(pool_shape.len()));
            let qkv = random(4 * shape.qkv_width());
            let fp8_pool = |values: &[f32]| {
                let mut pool = CpuKvPool::zeros_scaled(pool_shape, scale).unwrap();
                pool.write(0, values);
                pool
            };
            let (k8, v8) = (fp8_pool(&k), fp8_pool(&v));
            let widened = |pool: &CpuKvPool| {
                let mut values = vec![0f32; pool.len()];
                pool.read(0, &mut values);
                CpuKvPool::F32(values)
            };
            let run = |k: &CpuKvPool, v: &CpuKvPool| {
                let mut out = vec![f32::NAN; 4 * shape.num_heads * shape.head_dim];
                paged_attention(&qkv, k, v, &meta, shape, &mut out);
                out
            };
            let got = run(&k8, &v8);
            assert_eq!(got, run(&widened(&k8), &widened(&v8)), "{format:?}");
            let exact = run(&CpuKvPool::F32(k), &CpuKvPool::F32(v));
            assert_ne!(got, exact, "{format:?}: the values were rounded");
        }
    }
}
