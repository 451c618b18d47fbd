//! Device memory tagged with its element type: the activations (in the
//! model's dtype), the KV pools, and the weights. The launchers take a
//! pointer and a dtype code; ops check that the buffers they combine agree.

use std::ffi::c_void;

use cudarc::driver::CudaSlice;
use half::{bf16, f16};

use super::device::{ptr, ptr_mut, CudaDevice};
use super::sys;
use crate::backend::DType;
use crate::error::{Error, Result};

/// `len()` values of one dtype on the GPU.
pub enum CudaBuffer {
    F32(CudaSlice<f32>),
    F16(CudaSlice<f16>),
    BF16(CudaSlice<bf16>),
}

/// Runs `$body` with `$s` bound to the buffer's typed slice.
macro_rules! each_slice {
    ($buf:expr, $s:ident => $body:expr) => {
        match $buf {
            CudaBuffer::F32($s) => $body,
            CudaBuffer::F16($s) => $body,
            CudaBuffer::BF16($s) => $body,
        }
    };
}

/// The launchers' code for `dtype` (csrc/kernels.h's `EK_DTYPE_*`).
pub fn ek_dtype(dtype: DType) -> i32 {
    (match dtype {
        DType::F32 => sys::EK_DTYPE_F32,
        DType::F16 => sys::EK_DTYPE_F16,
        DType::BF16 => sys::EK_DTYPE_BF16,
    }) as i32
}

impl CudaBuffer {
    /// `len` zeros of `dtype` (at least one value).
    pub fn zeros(dev: &CudaDevice, dtype: DType, len: usize) -> Result<CudaBuffer> {
        Ok(match dtype {
            DType::F32 => CudaBuffer::F32(dev.alloc_zeros(len)?),
            DType::F16 => CudaBuffer::F16(dev.alloc_zeros(len)?),
            DType::BF16 => CudaBuffer::BF16(dev.alloc_zeros(len)?),
        })
    }

    /// `len` values of `dtype` that an op overwrites before anything reads them.
    pub fn uninit(dev: &CudaDevice, dtype: DType, len: usize) -> Result<CudaBuffer> {
        Ok(match dtype {
            DType::F32 => CudaBuffer::F32(dev.alloc_uninit(len)?),
            DType::F16 => CudaBuffer::F16(dev.alloc_uninit(len)?),
            DType::BF16 => CudaBuffer::BF16(dev.alloc_uninit(len)?),
        })
    }

    /// `values` in `dtype` (rounded to it on the host).
    pub fn upload(dev: &CudaDevice, values: &[f32], dtype: DType) -> Result<CudaBuffer> {
        Ok(match dtype {
            DType::F32 => CudaBuffer::F32(dev.upload(values)?),
            DType::F16 => {
                let v: Vec<f16> = values.iter().map(|&x| f16::from_f32(x)).collect();
                CudaBuffer::F16(dev.upload(&v)?)
            }
            DType::BF16 => {
                let v: Vec<bf16> = values.iter().map(|&x| bf16::from_f32(x)).collect();
                CudaBuffer::BF16(dev.upload(&v)?)
            }
        })
    }

    /// The values as f32 on the host (waits for the device).
    pub fn to_host(&self, dev: &CudaDevice) -> Result<Vec<f32>> {
        Ok(match self {
            CudaBuffer::F32(s) => dev.download(s)?,
            CudaBuffer::F16(s) => dev.download(s)?.into_iter().map(f16::to_f32).collect(),
            CudaBuffer::BF16(s) => dev.download(s)?.into_iter().map(bf16::to_f32).collect(),
        })
    }

    pub fn dtype(&self) -> DType {
        match self {
            CudaBuffer::F32(_) => DType::F32,
            CudaBuffer::F16(_) => DType::F16,
            CudaBuffer::BF16(_) => DType::BF16,
        }
    }

    /// The launchers' code for the buffer's dtype.
    pub fn ek_dtype(&self) -> i32 {
        ek_dtype(self.dtype())
    }

    pub fn len(&self) -> usize {
        each_slice!(self, s => s.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The device address, for a launcher that reads the buffer.
    pub fn ptr(&self, dev: &CudaDevice) -> *const c_void {
        each_slice!(self, s => ptr(s, &dev.stream))
    }

    /// The device address, for a launcher that writes the buffer.
    pub fn ptr_mut(&mut self, dev: &CudaDevice) -> *mut c_void {
        each_slice!(self, s => ptr_mut(s, &dev.stream))
    }

    /// The buffer as f32 values: an error naming `what` in another dtype.
    pub fn f32(&self, what: &str) -> Result<&CudaSlice<f32>> {
        match self {
            CudaBuffer::F32(s) => Ok(s),
            other => Err(Error::invalid(format!(
                "cuda: {what} must be float32, not {}",
                other.dtype().name()
            ))),
        }
    }
}

impl CudaBuffer {
    /// Copies `len` values of `src` (same dtype) from offset `from` over
    /// this buffer's from offset `to`.
    pub fn copy_range_from(
        &mut self,
        dev: &CudaDevice,
        to: usize,
        src: &CudaBuffer,
        from: usize,
        len: usize,
    ) -> Result<()> {
        let short = || {
            Error::invalid(format!(
                "cuda: copying {len} values from {from} to {to} between shorter buffers"
            ))
        };
        macro_rules! copy {
            ($d:expr, $s:expr) => {{
                let from = $s.try_slice(from..from + len).ok_or_else(short)?;
                let mut to = $d.try_slice_mut(to..to + len).ok_or_else(short)?;
                dev.stream
                    .memcpy_dtod(&from, &mut to)
                    .map_err(|e| super::device::device_error("copying on the GPU", e))
            }};
        }
        match (self, src) {
            (CudaBuffer::F32(d), CudaBuffer::F32(s)) => copy!(d, s),
            (CudaBuffer::F16(d), CudaBuffer::F16(s)) => copy!(d, s),
            (CudaBuffer::BF16(d), CudaBuffer::BF16(s)) => copy!(d, s),
            (d, s) => same_dtype("copy", d.dtype(), &[s.dtype()]),
        }
    }
}

/// An error unless every buffer of an op is in `dtype`.
pub fn same_dtype(op: &str, dtype: DType, others: &[DType]) -> Result<()> {
    match others.iter().find(|&&d| d != dtype) {
        None => Ok(()),
        Some(d) => Err(Error::invalid(format!(
            "cuda: {op} takes one dtype; got {} and {}",
            dtype.name(),
            d.name()
        ))),
    }
}

pub(super) use each_slice;
