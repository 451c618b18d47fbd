//! One layer's K or V pool on the GPU: in the activations' dtype, or FP8
//! codes with the layer's per-tensor scale (vLLM's `k_scale` / `v_scale`,
//! [`crate::model::KvPools`]), which the pool carries as the CPU's does, so
//! the model passes pools and never scales. The cache and attention
//! launchers take the pools' dtype code and scales beside their pointers.

use std::ffi::c_void;

use cudarc::driver::CudaSlice;

use super::buffer::{ek_dtype, CudaBuffer};
use super::device::{ptr, ptr_mut, CudaDevice};
use super::sys;
use crate::backend::fp8::Fp8Format;
use crate::backend::{DType, KvDType, KvPoolShape};
use crate::error::{Error, Result};

pub enum CudaKvPool {
    /// Values in a float or 16-bit dtype.
    Dense(CudaBuffer),
    /// Codes of `value / scale`, read back as `code · scale`.
    Fp8 {
        codes: CudaSlice<u8>,
        format: Fp8Format,
        scale: f32,
    },
}

/// The launchers' code for a KV cache dtype (csrc/kernels.h's `EK_DTYPE_*`).
pub fn ek_kv_dtype(dtype: KvDType) -> i32 {
    match dtype {
        KvDType::F32 => ek_dtype(DType::F32),
        KvDType::F16 => ek_dtype(DType::F16),
        KvDType::BF16 => ek_dtype(DType::BF16),
        KvDType::Fp8(Fp8Format::E4M3) => sys::EK_DTYPE_FP8_E4M3 as i32,
        KvDType::Fp8(Fp8Format::E5M2) => sys::EK_DTYPE_FP8_E5M2 as i32,
    }
}

impl CudaKvPool {
    /// A zeroed pool of `shape` (an FP8 one stores its values divided by `scale`).
    pub fn zeros(dev: &CudaDevice, shape: KvPoolShape, scale: f32) -> Result<CudaKvPool> {
        let len = shape.len();
        Ok(match shape.dtype {
            KvDType::F32 => CudaKvPool::Dense(CudaBuffer::zeros(dev, DType::F32, len)?),
            KvDType::F16 => CudaKvPool::Dense(CudaBuffer::zeros(dev, DType::F16, len)?),
            KvDType::BF16 => CudaKvPool::Dense(CudaBuffer::zeros(dev, DType::BF16, len)?),
            KvDType::Fp8(format) => CudaKvPool::Fp8 {
                codes: dev.alloc_zeros(len.max(1))?,
                format,
                scale,
            },
        })
    }

    pub fn dtype(&self) -> KvDType {
        match self {
            CudaKvPool::Dense(b) => KvDType::from(b.dtype()),
            CudaKvPool::Fp8 { format, .. } => KvDType::Fp8(*format),
        }
    }

    /// The launchers' code for the pool's dtype.
    pub fn ek_dtype(&self) -> i32 {
        ek_kv_dtype(self.dtype())
    }

    /// What the launchers read codes with: the FP8 pool's scale (a dense
    /// pool's values need none: 1).
    pub fn scale(&self) -> f32 {
        match self {
            CudaKvPool::Dense(_) => 1.0,
            CudaKvPool::Fp8 { scale, .. } => *scale,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            CudaKvPool::Dense(b) => b.len(),
            CudaKvPool::Fp8 { codes, .. } => codes.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The device address, for a launcher that reads the pool.
    pub fn ptr(&self, dev: &CudaDevice) -> *const c_void {
        match self {
            CudaKvPool::Dense(b) => b.ptr(dev),
            CudaKvPool::Fp8 { codes, .. } => ptr(codes, &dev.stream),
        }
    }

    /// The device address, for a launcher that writes the pool.
    pub fn ptr_mut(&mut self, dev: &CudaDevice) -> *mut c_void {
        match self {
            CudaKvPool::Dense(b) => b.ptr_mut(dev),
            CudaKvPool::Fp8 { codes, .. } => ptr_mut(codes, &dev.stream),
        }
    }
}

/// The launchers' code for the dtype of a K and V pool pair (`kd`, `vd`)
/// beside activations in `act`: an error unless the two agree and the
/// kernels are instantiated for them (the activations' own dtype, or FP8).
pub fn pair_dtype(op: &str, act: DType, kd: KvDType, vd: KvDType) -> Result<i32> {
    if kd != vd {
        return Err(Error::invalid(format!(
            "cuda: {op} takes K and V pools of one dtype; got {} and {}",
            kd.name(),
            vd.name()
        )));
    }
    if kd != KvDType::from(act) && !matches!(kd, KvDType::Fp8(_)) {
        return Err(Error::invalid(format!(
            "cuda: {op} has no kernel for a {} KV cache beside {} activations \
             (it is instantiated for the activations' dtype, fp8_e4m3 and fp8_e5m2)",
            kd.name(),
            act.name()
        )));
    }
    Ok(ek_kv_dtype(kd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_pair_in_the_activations_dtype_or_fp8_only() {
        let e4m3 = KvDType::Fp8(Fp8Format::E4M3);
        let e5m2 = KvDType::Fp8(Fp8Format::E5M2);
        for act in [DType::F32, DType::F16, DType::BF16] {
            let own = KvDType::from(act);
            assert_eq!(pair_dtype("op", act, own, own).unwrap(), ek_dtype(act));
            assert_eq!(
                pair_dtype("op", act, e4m3, e4m3).unwrap(),
                sys::EK_DTYPE_FP8_E4M3 as i32
            );
            assert_eq!(
                pair_dtype("op", act, e5m2, e5m2).unwrap(),
                sys::EK_DTYPE_FP8_E5M2 as i32
            );
            assert!(pair_dtype("op", act, e4m3, e5m2).is_err());
            assert!(pair_dtype("op", act, own, e4m3).is_err());
        }
        let err = pair_dtype("attention", DType::BF16, KvDType::F16, KvDType::F16).unwrap_err();
        assert!(err.to_string().contains("no kernel"), "{err}");
    }
}
