//! A KV pool on the CPU in the cache's dtype. A 16-bit pool halves the bytes
//! attention streams at long context; values are rounded to nearest-even when
//! written and widened exactly to f32 when read, so attention over a 16-bit
//! pool equals attention over an f32 pool holding the same rounded values.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use crate::backend::DType;
use crate::backend::KvPoolShape;
use crate::memory::try_zeroed;

/// One layer's K or V pool: `[num_blocks, num_kv_heads, block_size, head_dim]`.
#[derive(Debug, Clone, PartialEq)]
pub enum CpuKvPool {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

impl CpuKvPool {
    /// A zeroed pool, or an error naming the size when the memory is not there
    /// (the size comes from a user's flag or the model's config).
    pub fn zeros(shape: KvPoolShape) -> crate::error::Result<CpuKvPool> {
        let (len, what) = (shape.len(), "the KV cache");
        Ok(match shape.dtype {
            DType::F32 => CpuKvPool::F32(try_zeroed(len, what)?),
            DType::F16 => CpuKvPool::F16(try_zeroed(len, what)?),
            DType::BF16 => CpuKvPool::BF16(try_zeroed(len, what)?),
        })
    }

    pub fn dtype(&self) -> DType {
        match self {
            CpuKvPool::F32(_) => DType::F32,
            CpuKvPool::F16(_) => DType::F16,
            CpuKvPool::BF16(_) => DType::BF16,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            CpuKvPool::F32(v) => v.len(),
            CpuKvPool::F16(v) => v.len(),
            CpuKvPool::BF16(v) => v.len(),
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
        }
    }

    /// Stores `values` at `at..at + values.len()`, rounded to the pool's dtype.
    pub fn write(&mut self, at: usize, values: &[f32]) {
        let end = at + values.len();
        match self {
            CpuKvPool::F32(v) => v[at..end].copy_from_slice(values),
            CpuKvPool::F16(v) => v[at..end].convert_from_f32_slice(values),
            CpuKvPool::BF16(v) => v[at..end].convert_from_f32_slice(values),
        }
    }

    /// The values at `at..at + out.len()`, widened to f32.
    pub fn read(&self, at: usize, out: &mut [f32]) {
        let end = at + out.len();
        match self {
            CpuKvPool::F32(v) => out.copy_from_slice(&v[at..end]),
            CpuKvPool::F16(v) => v[at..end].convert_to_f32_slice(out),
            CpuKvPool::BF16(v) => v[at..end].convert_to_f32_slice(out),
        }
    }

    /// The bf16 values' bits, where the pool holds bf16 (attention widens them
    /// where it reads them).
    pub fn as_bf16_bits(&self) -> Option<&[u16]> {
        match self {
            CpuKvPool::BF16(v) => Some(bytemuck::cast_slice(v)),
            _ => None,
        }
    }

    /// The f32 values themselves, where the pool holds f32.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match self {
            CpuKvPool::F32(v) => Some(v),
            _ => None,
        }
    }
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
            dtype: DType::BF16,
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
        assert_eq!(pool.dtype(), DType::BF16);
    }

    #[test]
    fn only_a_bf16_pool_lends_its_bits() {
        let shape = |dtype| KvPoolShape {
            num_blocks: 1,
            num_kv_heads: 1,
            block_size: 1,
            head_dim: 3,
            dtype,
        };
        let mut pool = CpuKvPool::zeros(shape(DType::BF16)).unwrap();
        let values = [1.5, -2.0e-3, 7.0e4];
        pool.write(0, &values);
        let want: Vec<u16> = values
            .iter()
            .map(|&x| bf16::from_f32(x).to_bits())
            .collect();
        assert_eq!(pool.as_bf16_bits(), Some(&want[..]));
        for dtype in [DType::F32, DType::F16] {
            assert!(CpuKvPool::zeros(shape(dtype))
                .unwrap()
                .as_bf16_bits()
                .is_none());
        }
    }

    #[test]
    fn an_impossible_pool_is_an_error_not_an_abort() {
        let shape = KvPoolShape {
            num_blocks: usize::MAX / 64,
            num_kv_heads: 2,
            block_size: 16,
            head_dim: 1,
            dtype: DType::F16,
        };
        let err = CpuKvPool::zeros(shape).unwrap_err().to_string();
        assert!(err.contains("the KV cache: cannot allocate"), "{err}");
    }
}
