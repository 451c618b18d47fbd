//! Linear layers on the GPU: the weight type and the GEMMs. Matrices in a
//! 16/32-bit dtype go through cuBLAS (f32 accumulation). FP8 e4m3 matrices
//! with a scale per output row (FP8 checkpoints, `--quantization fp8`) stay one
//! byte a weight: a few activation rows (decode, where reading the weights is
//! the whole cost) through the FP8 GEMV of csrc/fp8_linear.cu, more rows
//! dequantized into the activations' dtype, a slab of weight rows at a time,
//! for cuBLAS. The activations are never quantized, as on the CPU.

use std::ffi::c_void;

use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::driver::CudaSlice;

use super::buffer::CudaBuffer;
use super::device::device_error;
use super::{sys, to_i32, CudaBackend};
use crate::backend::{DType, HostTensor};
use crate::error::{Error, Result};

/// The FP8 kernels read 16 codes at a time: `in_features` must be a multiple.
const FP8_CHUNK: usize = 16;
/// Activation rows up to which an FP8 layer takes the GEMV.
const FP8_GEMV_MAX_ROWS: usize = sys::EK_FP8_GEMV_MAX_ROWS as usize;
/// Values of the dequantized slab for many-row FP8 GEMMs (64 MiB in bf16):
/// bounded, so a large matrix never needs a full-size copy.
const FP8_SLAB_VALUES: usize = 32 << 20;

/// A weight on the GPU: matrices in their dtype or FP8; vectors (norm weights,
/// biases) in the activations' dtype, with the model dtype's values (as the
/// CPU holds them in f32), since the kernels read them beside the activations.
pub struct CudaWeightTensor {
    pub shape: Vec<usize>,
    pub data: CudaWeightData,
}

pub enum CudaWeightData {
    Dense(CudaBuffer),
    Fp8(Fp8Matrix),
}

/// `[rows, cols]` e4m3 codes, row `r` scaled by `scales[r]`.
pub struct Fp8Matrix {
    codes: CudaSlice<u8>,
    scales: CudaSlice<f32>,
}

impl CudaWeightTensor {
    pub fn rows(&self) -> usize {
        if self.shape.len() >= 2 {
            self.shape[0]
        } else {
            1
        }
    }

    pub fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// The values in their dtype; an error naming `what` for FP8 codes, which
    /// only the GEMMs read.
    pub fn dense(&self, what: &str) -> Result<&CudaBuffer> {
        match &self.data {
            CudaWeightData::Dense(b) => Ok(b),
            CudaWeightData::Fp8(_) => Err(Error::invalid(format!(
                "cuda: {what} cannot be an FP8 matrix"
            ))),
        }
    }

    /// Whether the weight is kept as FP8 codes.
    pub fn is_fp8(&self) -> bool {
        matches!(self.data, CudaWeightData::Fp8(_))
    }
}

/// cuBLAS's name for `dtype`.
fn blas_type(dtype: DType) -> cudaDataType {
    match dtype {
        DType::F32 => cudaDataType::CUDA_R_32F,
        DType::F16 => cudaDataType::CUDA_R_16F,
        DType::BF16 => cudaDataType::CUDA_R_16BF,
    }
}

/// One GEMM's operands: `out[m, n] = x[m, k] · w[n, k]ᵀ`, `out` rows `ldc`
/// apart (a slab of `n` columns of a wider output).
struct BlasGemm {
    w: *const c_void,
    x: *const c_void,
    /// The dtype of `w` and `x`.
    in_dtype: DType,
    out: *mut c_void,
    out_dtype: DType,
    m: usize,
    n: usize,
    k: usize,
    ldc: usize,
}

impl CudaBackend {
    /// An FP8 matrix (a tensor with `fp8_scales`) kept as codes, or `None`
    /// where the FP8 kernels cannot take it (not a matrix, or in_features not a
    /// multiple of 16: the caller uploads the dequantized values instead).
    pub(super) fn upload_fp8(&self, t: &HostTensor) -> Result<Option<CudaWeightTensor>> {
        let (Some(scales), [n, k]) = (t.fp8_scales.as_deref(), t.shape.as_slice()) else {
            return Ok(None);
        };
        let (n, k) = (*n, *k);
        if k % FP8_CHUNK != 0 {
            return Ok(None);
        }
        let codes = t.bytes.as_slice();
        if scales.len() != n || codes.len() != n * k {
            return Err(Error::invalid(format!(
                "cuda: FP8 weight {} has {} codes and {} scales for shape [{n}, {k}]",
                t.name,
                codes.len(),
                scales.len()
            )));
        }
        Ok(Some(CudaWeightTensor {
            shape: t.shape.clone(),
            data: CudaWeightData::Fp8(Fp8Matrix {
                codes: self.dev.upload(codes)?,
                scales: self.dev.upload(scales)?,
            }),
        }))
    }

    /// `out[m, n] = x[m, k] · w[n, k]ᵀ` with f32 accumulation. 16/32-bit
    /// weights: x is converted to the weight's dtype first where it differs,
    /// and `out` is in the weight's dtype or (for 16-bit weights) f32. FP8
    /// weights: `out` in x's dtype or f32.
    pub(super) fn gemm(
        &self,
        x: &CudaBuffer,
        w: &CudaWeightTensor,
        out: &mut CudaBuffer,
    ) -> Result<()> {
        let (n, k) = (w.rows(), w.cols());
        if k == 0 {
            return self.zero(out);
        }
        let m = x.len() / k;
        if m == 0 || n == 0 {
            return Ok(());
        }
        match &w.data {
            CudaWeightData::Dense(a) => self.dense_gemm(x, a, (m, n, k), out),
            CudaWeightData::Fp8(f) => self.fp8_gemm(x, f, (m, n, k), out),
        }
    }

    fn dense_gemm(
        &self,
        x: &CudaBuffer,
        w: &CudaBuffer,
        (m, n, k): (usize, usize, usize),
        out: &mut CudaBuffer,
    ) -> Result<()> {
        let wt = w.dtype();
        let out_ok = out.dtype() == wt || (out.dtype() == DType::F32 && wt != DType::F32);
        if !out_ok {
            return Err(Error::invalid(format!(
                "cuda: a GEMM with {} weights cannot write {} outputs",
                wt.name(),
                out.dtype().name()
            )));
        }
        let converted;
        let xp = if x.dtype() == wt {
            x.ptr(&self.dev)
        } else {
            converted = self.converted(x, wt)?;
            converted.ptr(&self.dev)
        };
        let out_dtype = out.dtype();
        self.blas_gemm(&BlasGemm {
            w: w.ptr(&self.dev),
            x: xp,
            in_dtype: wt,
            out: out.ptr_mut(&self.dev),
            out_dtype,
            m,
            n,
            k,
            ldc: n,
        })
    }

    fn fp8_gemm(
        &self,
        x: &CudaBuffer,
        w: &Fp8Matrix,
        (m, n, k): (usize, usize, usize),
        out: &mut CudaBuffer,
    ) -> Result<()> {
        let (xt, ot) = (x.dtype(), out.dtype());
        if ot != xt && ot != DType::F32 {
            return Err(Error::invalid(format!(
                "cuda: an FP8 GEMM on {} activations cannot write {} outputs",
                xt.name(),
                ot.name()
            )));
        }
        let (codes, scales) = (
            self.p(&w.codes).cast::<u8>(),
            self.p(&w.scales).cast::<f32>(),
        );
        if m <= FP8_GEMV_MAX_ROWS {
            let (od, xd) = (out.ek_dtype(), x.ek_dtype());
            // SAFETY: x holds m x k values, out m x n, the codes n x k and the
            // scales n; k is a multiple of 16 (upload_fp8) and cudarc's
            // allocations are 256-byte aligned.
            return self.launched("fp8_gemv", unsafe {
                sys::ek_fp8_gemv(
                    out.ptr_mut(&self.dev),
                    od,
                    x.ptr(&self.dev),
                    xd,
                    codes.cast(),
                    scales,
                    m as i64,
                    n as i64,
                    k as i64,
                    self.stream(),
                )
            });
        }
        let slab_rows = (FP8_SLAB_VALUES / k).clamp(1, n);
        let mut slab = CudaBuffer::uninit(&self.dev, xt, slab_rows * k)?;
        let out_base = out.ptr_mut(&self.dev).cast::<u8>();
        for first in (0..n).step_by(slab_rows) {
            let rows = slab_rows.min(n - first);
            let sd = slab.ek_dtype();
            // SAFETY: rows x k codes and rows scales from row `first`, inside
            // the matrix; the slab holds slab_rows x k values.
            self.launched("fp8_weight_rows", unsafe {
                sys::ek_fp8_weight_rows(
                    slab.ptr_mut(&self.dev),
                    sd,
                    codes.wrapping_add(first * k).cast(),
                    scales.wrapping_add(first),
                    rows as i64,
                    k as i64,
                    self.stream(),
                )
            })?;
            self.blas_gemm(&BlasGemm {
                w: slab.ptr(&self.dev),
                x: x.ptr(&self.dev),
                in_dtype: xt,
                out: out_base.wrapping_add(first * ot.size_in_bytes()).cast(),
                out_dtype: ot,
                m,
                n: rows,
                k,
                ldc: n,
            })?;
        }
        Ok(())
    }

    /// cuBLAS in column-major terms: outᵀ = w · xᵀ, w transposed.
    fn blas_gemm(&self, g: &BlasGemm) -> Result<()> {
        let (mi, ni, ki, ldc) = (
            to_i32("rows", g.m)?,
            to_i32("columns", g.n)?,
            to_i32("depth", g.k)?,
            to_i32("output width", g.ldc)?,
        );
        let (alpha, beta) = (1f32, 0f32);
        let (ty, c_ty) = (blas_type(g.in_dtype), blas_type(g.out_dtype));
        // SAFETY: w is n x k (lda k), x is m x k (ldb k), out m rows of ldc
        // values whose first n the GEMM writes; all live device buffers on
        // this handle's stream.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.dev.blas.handle(),
                cublasOperation_t::CUBLAS_OP_T,
                cublasOperation_t::CUBLAS_OP_N,
                ni,
                mi,
                ki,
                (&alpha as *const f32).cast(),
                g.w,
                ty,
                ki,
                g.x,
                ty,
                ki,
                (&beta as *const f32).cast(),
                g.out,
                c_ty,
                ldc,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| device_error("cuBLAS GEMM", e))?;
        self.sync_point("cuBLAS GEMM")
    }

    /// `x` converted to `dtype`, in a new buffer.
    fn converted(&self, x: &CudaBuffer, dtype: DType) -> Result<CudaBuffer> {
        let mut buf = CudaBuffer::uninit(&self.dev, dtype, x.len())?;
        // SAFETY: both buffers hold x.len() elements.
        self.launched("convert", unsafe {
            sys::ek_convert(
                buf.ptr_mut(&self.dev),
                buf.ek_dtype(),
                x.ptr(&self.dev),
                x.ek_dtype(),
                x.len() as i64,
                self.stream(),
            )
        })?;
        Ok(buf)
    }
}
