//! The V rows a task reads, in the pool's dtype, widened exactly (keys: see
//! `keys.rs`).

use super::super::kv_pool::CpuKvPool;
use crate::backend::fp8::Fp8Format;

/// The V rows of a task's visible positions, as views into the pool in
/// its dtype: 16-bit and FP8 values are widened where they are read, exactly
/// (every such value times its pool's scale is an f32: see [`CpuKvPool`]).
pub(super) enum Rows<'a> {
    F32(&'a [f32], &'a [usize]),
    Bf16(&'a [u16], &'a [usize]),
    F16(&'a [u16], &'a [usize]),
    /// The bytes, read as `decode(b) · scale`.
    Fp8(&'a [u8], &'a [usize], Fp8Format, f32),
}

impl<'a> Rows<'a> {
    pub(super) fn new(pool: &'a CpuKvPool, offsets: &'a [usize]) -> Rows<'a> {
        match pool {
            CpuKvPool::F32(v) => Rows::F32(v, offsets),
            CpuKvPool::BF16(v) => Rows::Bf16(bytemuck::cast_slice(v), offsets),
            CpuKvPool::F16(v) => Rows::F16(bytemuck::cast_slice(v), offsets),
            CpuKvPool::Fp8(p) => Rows::Fp8(&p.bits, offsets, p.format, p.scale),
        }
    }

    /// Asks for row `i`'s `hd` values to be brought into L2: rows are
    /// scattered by the block table, so the hardware prefetcher cannot see
    /// them coming. A hint only.
    #[inline(always)]
    pub(super) fn prefetch(&self, i: usize, hd: usize) {
        fn row<T: bytemuck::Pod>(pool: &[T], offsets: &[usize], i: usize, hd: usize) {
            let Some(&at) = offsets.get(i) else { return };
            if let Some(row) = pool.get(at..at + hd) {
                prefetch_bytes(bytemuck::cast_slice(row), false);
            }
        }
        match *self {
            Rows::F32(pool, offsets) => row(pool, offsets, i, hd),
            Rows::Bf16(pool, offsets) | Rows::F16(pool, offsets) => row(pool, offsets, i, hd),
            Rows::Fp8(pool, offsets, ..) => row(pool, offsets, i, hd),
        }
    }
}

/// Asks for the cache lines of `bytes` to be brought into L1 (`near`) or L2.
#[inline(always)]
pub(super) fn prefetch_bytes(bytes: &[u8], near: bool) {
    for line in (0..bytes.len()).step_by(64) {
        // SAFETY: `line` is inside `bytes`; a prefetch never faults.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};
            let p = bytes.as_ptr().cast::<i8>().add(line);
            if near {
                _mm_prefetch::<_MM_HINT_T0>(p);
            } else {
                _mm_prefetch::<_MM_HINT_T1>(p);
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (line, near);
    }
}

/// A bf16 value (its bits) as f32: the high half of the f32's bits, exactly.
#[inline(always)]
pub(super) fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// An f16 value (its bits) as f32, exactly and without a branch: the
/// exponent and mantissa moved into place, then rebiased by a multiplication
/// by 2^112, which also normalizes subnormals; infinities and NaNs (exponent
/// all ones) get the f32's all-ones exponent.
#[inline(always)]
pub(super) fn f16_to_f32(bits: u16) -> f32 {
    let h = u32::from(bits);
    let sign = (h & 0x8000) << 16;
    let shifted = (h & 0x7fff) << 13;
    let rebiased = (f32::from_bits(shifted) * f32::from_bits((127 + 112) << 23)).to_bits();
    let magnitude = if shifted >= 0x7c00 << 13 {
        shifted | 0x7f80_0000
    } else {
        rebiased
    };
    f32::from_bits(sign | magnitude)
}
