//! The CUDA backend (feature `cuda`): the ops of [`Backend`] on one GPU, run by
//! the kernels in csrc/ (through their C launchers, [`sys`]) and cuBLAS, over
//! the CPU backend's layouts. cudarc loads the driver and cuBLAS at run time,
//! so a build with this feature runs anywhere; opening the device on a
//! machine without a driver is an error, never a panic.
//!
//! Activations and KV pools are f32 (as the trait's layouts are); matrices
//! stay in their dtype and bf16/f16 GEMMs run with f32 accumulation (the
//! activations are rounded to the weight's dtype first, as the CPU's packed
//! kernels do). The kernels themselves take f32, f16 and bf16.

pub mod attention;
mod device;
mod libs;
mod nccl;
mod sample;
#[rustfmt::skip]
pub mod kernels_sys;

/// The kernels' C launchers (csrc/kernels.h), for tests and benches too.
pub use kernels_sys as sys;

use std::ffi::c_void;

use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::driver::CudaSlice;
use half::{bf16, f16};

pub use cudarc;
pub use device::{driver_present, gpu_count, ptr, ptr_mut, CudaDevice};

use crate::backend::cpu::weight::{CpuWeight, WeightData};
use crate::backend::DType;
use crate::backend::HostTensor;
use crate::backend::{AttnShape, Backend, DeviceMemory, KvDType, KvPoolShape, StepMeta};
use crate::backend::{HostRowSampler, SampleBatch, SampledRow};
use crate::error::{Error, Result};
use device::{check, device_error};

/// A weight on the GPU in its dtype; vectors (norm weights, biases) are held
/// in f32 with the dtype's values, as on the CPU.
pub enum CudaWeight {
    F32(CudaSlice<f32>),
    F16(CudaSlice<f16>),
    BF16(CudaSlice<bf16>),
}

pub struct CudaWeightTensor {
    pub shape: Vec<usize>,
    pub data: CudaWeight,
}

impl CudaWeightTensor {
    fn rows(&self) -> usize {
        if self.shape.len() >= 2 {
            self.shape[0]
        } else {
            1
        }
    }

    fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }
}

/// [`StepMeta`] uploaded once per step.
pub struct CudaMeta {
    host: StepMeta,
    token_ids: CudaSlice<i32>,
    positions: CudaSlice<i32>,
    slot_mapping: CudaSlice<i64>,
    query_start: CudaSlice<i32>,
    context_lens: CudaSlice<i32>,
    /// `[num_seqs, max_blocks]`, padded with block 0 (never read past a context).
    block_tables: CudaSlice<i32>,
    max_blocks: usize,
    max_query_len: usize,
    max_context: usize,
    /// Every sequence has exactly one query token.
    decode_only: bool,
}

pub struct CudaBackend {
    dev: CudaDevice,
    /// `ENGINE_CUDA_SYNC=1`: synchronize after every op, so that a device
    /// fault is reported by the op that caused it (slow; for debugging).
    sync_each_op: bool,
}

fn to_i32(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::invalid(format!("cuda: {what} {v} does not fit in int32")))
}

impl CudaBackend {
    /// Opens GPU `ordinal` (an error if there is no driver or no such GPU).
    pub fn new(ordinal: usize) -> Result<CudaBackend> {
        Ok(CudaBackend {
            dev: CudaDevice::open(ordinal)?,
            sync_each_op: std::env::var("ENGINE_CUDA_SYNC").is_ok_and(|v| v == "1"),
        })
    }

    /// A launcher's status, then (with `ENGINE_CUDA_SYNC=1`) the device's.
    fn launched(&self, op: &str, status: i32) -> Result<()> {
        check(op, status)?;
        self.sync_point(op)
    }

    /// With `ENGINE_CUDA_SYNC=1`, waits for the device and names `op` in a fault.
    fn sync_point(&self, op: &str) -> Result<()> {
        if !self.sync_each_op {
            return Ok(());
        }
        self.dev
            .stream
            .synchronize()
            .map_err(|e| Error::Device(format!("cuda: {op} failed on the device: {e}")))
    }

    pub fn device(&self) -> &CudaDevice {
        &self.dev
    }

    fn stream(&self) -> *mut c_void {
        self.dev.raw_stream()
    }

    fn p<T>(&self, buf: &CudaSlice<T>) -> *const c_void {
        ptr(buf, &self.dev.stream)
    }

    fn pm<T>(&self, buf: &mut CudaSlice<T>) -> *mut c_void {
        ptr_mut(buf, &self.dev.stream)
    }

    fn vector<'a>(&self, w: &'a CudaWeightTensor, what: &str) -> Result<&'a CudaSlice<f32>> {
        match &w.data {
            CudaWeight::F32(v) => Ok(v),
            _ => Err(Error::invalid(format!(
                "cuda: {what} must be a vector held in f32"
            ))),
        }
    }

    /// `out[m, n] = x[m, k] · w[n, k]ᵀ` through cuBLAS (column-major: outᵀ = w · xᵀ),
    /// f32 accumulation; bf16/f16 weights multiply x rounded to their dtype.
    fn gemm(
        &self,
        x: &CudaSlice<f32>,
        w: &CudaWeightTensor,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let (n, k) = (w.rows(), w.cols());
        if k == 0 {
            return self.zero(out);
        }
        let m = x.len() / k;
        if m == 0 || n == 0 {
            return Ok(());
        }
        let (mi, ni, ki) = (
            to_i32("rows", m)?,
            to_i32("columns", n)?,
            to_i32("depth", k)?,
        );
        // x in the weight's dtype (16-bit types share one scratch buffer type).
        let mut scratch: Option<CudaSlice<u16>> = None;
        let (a, b, ty) = match &w.data {
            CudaWeight::F32(wd) => (self.p(wd), self.p(x), cudaDataType::CUDA_R_32F),
            CudaWeight::F16(wd) => (
                self.p(wd),
                self.rounded(x, sys::EK_DTYPE_F16, &mut scratch)?,
                cudaDataType::CUDA_R_16F,
            ),
            CudaWeight::BF16(wd) => (
                self.p(wd),
                self.rounded(x, sys::EK_DTYPE_BF16, &mut scratch)?,
                cudaDataType::CUDA_R_16BF,
            ),
        };
        let (alpha, beta) = (1f32, 0f32);
        let c = self.pm(out);
        // SAFETY: a is n x k (lda k), b is m x k (ldb k), c is m x n (ldc n),
        // all live device buffers of those sizes on this handle's stream.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.dev.blas.handle(),
                cublasOperation_t::CUBLAS_OP_T,
                cublasOperation_t::CUBLAS_OP_N,
                ni,
                mi,
                ki,
                (&alpha as *const f32).cast(),
                a,
                ty,
                ki,
                b,
                ty,
                ki,
                (&beta as *const f32).cast(),
                c,
                cudaDataType::CUDA_R_32F,
                ni,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| device_error("cuBLAS GEMM", e))?;
        self.sync_point("cuBLAS GEMM")
    }

    /// `x` converted to a 16-bit `dtype` in `scratch`; returns its address.
    fn rounded(
        &self,
        x: &CudaSlice<f32>,
        dtype: u32,
        scratch: &mut Option<CudaSlice<u16>>,
    ) -> Result<*const c_void> {
        let mut buf = self.dev.alloc_uninit::<u16>(x.len())?;
        let out = self.pm(&mut buf);
        // SAFETY: both buffers hold x.len() elements.
        self.launched("convert", unsafe {
            sys::ek_convert(
                out,
                dtype as i32,
                self.p(x),
                sys::EK_DTYPE_F32 as i32,
                x.len() as i64,
                self.stream(),
            )
        })?;
        let p = out as *const c_void;
        *scratch = Some(buf);
        Ok(p)
    }

    fn zero(&self, out: &mut CudaSlice<f32>) -> Result<()> {
        self.dev
            .stream
            .memset_zeros(out)
            .map_err(|e| device_error("zeroing", e))
    }
}

fn upload_slab<T: cudarc::driver::DeviceRepr + bytemuck::Pod>(
    dev: &CudaDevice,
    values: &[T],
) -> Result<CudaSlice<T>> {
    dev.upload(values)
}

impl Backend for CudaBackend {
    type Buffer = CudaSlice<f32>;
    type Weight = CudaWeightTensor;
    type KvPool = CudaSlice<f32>;
    type Meta = CudaMeta;
    type Comm = nccl::NcclComm;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn describe(&self) -> String {
        self.dev.describe()
    }

    fn alloc(&self, len: usize) -> Result<CudaSlice<f32>> {
        self.dev.alloc_zeros(len)
    }

    fn upload(&self, data: &[f32]) -> Result<CudaSlice<f32>> {
        self.dev.upload(data)
    }

    fn download(&self, buf: &CudaSlice<f32>) -> Result<Vec<f32>> {
        self.dev.download(buf)
    }

    fn buffer_len(&self, buf: &CudaSlice<f32>) -> usize {
        buf.len()
    }

    /// A device slice has a fixed length: a new length is a new allocation
    /// from the stream's pool (cheap: freed memory stays in the pool), left
    /// uninitialized; the same length keeps the buffer.
    fn resize(&self, buf: &mut CudaSlice<f32>, len: usize) -> Result<()> {
        if buf.len() != len.max(1) {
            *buf = self.dev.alloc_uninit(len)?;
        }
        Ok(())
    }

    fn upload_weight(&self, tensor: HostTensor, dtype: DType) -> Result<CudaWeightTensor> {
        // The host conversion the CPU backend does (vectors rounded to the dtype
        // and held in f32), in the stored row-major layout.
        let host = CpuWeight::natural(tensor, dtype);
        let data = match &host.data {
            WeightData::F32(s) => CudaWeight::F32(upload_slab(&self.dev, s.as_slice())?),
            WeightData::F16(s) => CudaWeight::F16(upload_slab(&self.dev, s.as_slice())?),
            WeightData::BF16(s) => CudaWeight::BF16(upload_slab(&self.dev, s.as_slice())?),
            #[cfg(target_arch = "x86_64")]
            WeightData::Packed(_) => {
                return Err(Error::invalid(
                    "cuda: a packed CPU weight cannot be uploaded",
                ))
            }
            // `natural` dequantizes GGUF blocks and FP8 and never stacks parts,
            // so this does not occur.
            WeightData::Quant(_) | WeightData::Fp8(_) | WeightData::Stacked(_) => {
                return Err(Error::invalid(
                    "cuda: a quantized CPU weight cannot be uploaded",
                ))
            }
        };
        Ok(CudaWeightTensor {
            shape: host.shape,
            data,
        })
    }

    fn alloc_kv_pool(&self, shape: KvPoolShape, _scale: f32) -> Result<CudaSlice<f32>> {
        if shape.dtype != KvDType::F32 {
            return Err(Error::invalid(format!(
                "cuda: the KV cache is kept in float32 for now, not {}",
                shape.dtype.name()
            )));
        }
        if !attention::HEAD_DIMS.contains(&shape.head_dim) {
            return Err(Error::invalid(format!(
                "cuda: the attention kernels take head_dim {:?}; this model's is {}",
                attention::HEAD_DIMS,
                shape.head_dim
            )));
        }
        self.dev.alloc_zeros(shape.len())
    }

    fn memory_info(&self) -> Result<Option<DeviceMemory>> {
        self.dev.synchronize()?;
        let (free, total) = self.dev.memory_info()?;
        Ok(Some(DeviceMemory { free, total }))
    }

    fn prepare_step(&self, meta: StepMeta) -> Result<CudaMeta> {
        let seqs = meta.num_seqs();
        let max_blocks = meta
            .block_tables
            .iter()
            .map(Vec::len)
            .max()
            .unwrap_or(0)
            .max(1);
        let mut tables = vec![0i32; seqs * max_blocks];
        for (row, table) in tables.chunks_mut(max_blocks).zip(&meta.block_tables) {
            for (dst, &b) in row.iter_mut().zip(table) {
                *dst = to_i32("block id", b as usize)?;
            }
        }
        let ints = |v: &[usize], what: &str| -> Result<Vec<i32>> {
            v.iter().map(|&x| to_i32(what, x)).collect()
        };
        let token_ids: Vec<i32> = meta.token_ids.iter().map(|&t| t as i32).collect();
        let positions: Vec<i32> = meta.positions.iter().map(|&p| p as i32).collect();
        let query_lens = meta.query_start.windows(2).map(|w| w[1] - w[0]);
        let max_query_len = query_lens.clone().max().unwrap_or(0);
        let decode_only = seqs > 0 && query_lens.clone().all(|n| n == 1);
        let d = &self.dev;
        Ok(CudaMeta {
            token_ids: d.upload(&token_ids)?,
            positions: d.upload(&positions)?,
            slot_mapping: d.upload(&meta.slot_mapping)?,
            query_start: d.upload(&ints(&meta.query_start, "query start")?)?,
            context_lens: d.upload(&ints(&meta.context_lens, "context length")?)?,
            block_tables: d.upload(&tables)?,
            max_blocks,
            max_query_len,
            max_context: meta.context_lens.iter().copied().max().unwrap_or(0),
            decode_only,
            host: meta,
        })
    }

    fn step_meta<'a>(&self, meta: &'a CudaMeta) -> &'a StepMeta {
        &meta.host
    }

    fn copy_blocks(
        &self,
        pool: &mut CudaSlice<f32>,
        shape: KvPoolShape,
        pairs: &[(u32, u32)],
    ) -> Result<()> {
        let block = shape.num_kv_heads * shape.block_size * shape.head_dim;
        let bytes = block * std::mem::size_of::<f32>();
        let base = self.pm(pool) as u64;
        for &(src, dst) in pairs {
            let (s, d) = (src as u64 * bytes as u64, dst as u64 * bytes as u64);
            // SAFETY: both blocks lie inside the pool (the allocator hands out
            // ids below num_blocks) and do not overlap (src != dst).
            unsafe {
                cudarc::driver::result::memcpy_dtod_async(
                    base + d,
                    base + s,
                    bytes,
                    self.dev.stream.cu_stream(),
                )
            }
            .map_err(|e| device_error("copying a KV block", e))?;
        }
        self.sync_point("copy_blocks")
    }

    fn embedding(
        &self,
        table: &CudaWeightTensor,
        meta: &CudaMeta,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let (ptr, dtype) = match &table.data {
            CudaWeight::F32(t) => (self.p(t), sys::EK_DTYPE_F32),
            CudaWeight::F16(t) => (self.p(t), sys::EK_DTYPE_F16),
            CudaWeight::BF16(t) => (self.p(t), sys::EK_DTYPE_BF16),
        };
        let out = self.pm(out).cast();
        // SAFETY: out holds tokens x width f32; every id is below the table's rows
        // (the validator checks token ids against the vocabulary).
        self.launched("embedding", unsafe {
            sys::ek_embedding(
                out,
                ptr,
                dtype as i32,
                self.p(&meta.token_ids).cast(),
                meta.host.num_tokens() as i64,
                table.cols() as i64,
                self.stream(),
            )
        })
    }

    fn rms_norm(
        &self,
        x: &CudaSlice<f32>,
        weight: &CudaWeightTensor,
        eps: f32,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let w = self.vector(weight, "an RMSNorm weight")?;
        let hidden = w.len();
        let out = self.pm(out);
        // SAFETY: x and out hold rows x hidden f32, the weight hidden f32.
        self.launched("rms_norm", unsafe {
            sys::ek_rms_norm(
                out,
                self.p(x),
                self.p(w),
                sys::EK_DTYPE_F32 as i32,
                (x.len() / hidden) as i64,
                hidden as i64,
                eps,
                self.stream(),
            )
        })
    }

    fn fused_add_rms_norm(
        &self,
        x: &mut CudaSlice<f32>,
        residual: &mut CudaSlice<f32>,
        weight: &CudaWeightTensor,
        eps: f32,
    ) -> Result<()> {
        let w = self.vector(weight, "an RMSNorm weight")?;
        let hidden = w.len();
        let rows = x.len() / hidden;
        let (xp, rp) = (self.pm(x), self.pm(residual));
        // SAFETY: x and residual hold rows x hidden f32, the weight hidden f32.
        self.launched("fused_add_rms_norm", unsafe {
            sys::ek_fused_add_rms_norm(
                xp,
                rp,
                self.p(w),
                sys::EK_DTYPE_F32 as i32,
                rows as i64,
                hidden as i64,
                eps,
                self.stream(),
            )
        })
    }

    fn matmul(
        &self,
        x: &CudaSlice<f32>,
        weight: &CudaWeightTensor,
        bias: Option<&CudaWeightTensor>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.gemm(x, weight, out)?;
        if let Some(b) = bias {
            let b = self.vector(b, "a bias")?;
            let cols = b.len();
            let o = self.pm(out);
            // SAFETY: out holds rows x cols f32, the bias cols f32.
            self.launched("add_bias", unsafe {
                sys::ek_add_bias(
                    o.cast(),
                    self.p(b).cast(),
                    (out.len() / cols) as i64,
                    cols as i64,
                    self.stream(),
                )
            })?;
        }
        Ok(())
    }

    fn rotary(
        &self,
        qkv: &mut CudaSlice<f32>,
        cos_sin: &CudaSlice<f32>,
        meta: &CudaMeta,
        shape: AttnShape,
    ) -> Result<()> {
        let hd = shape.head_dim;
        let base = self.pm(qkv) as *mut f32;
        let width = shape.qkv_width() as i64;
        // SAFETY: every token's row holds the q heads then the k heads; the
        // table covers every position (the scheduler bounds them by max_model_len).
        self.launched("rotary", unsafe {
            sys::ek_rotary(
                base.cast(),
                base.add(shape.num_heads * hd).cast(),
                self.p(&meta.positions).cast(),
                self.p(cos_sin).cast(),
                sys::EK_DTYPE_F32 as i32,
                meta.host.num_tokens() as i64,
                shape.num_heads as i32,
                shape.num_kv_heads as i32,
                hd as i32,
                hd as i32,
                width,
                width,
                1,
                self.stream(),
            )
        })
    }

    fn reshape_and_cache(
        &self,
        qkv: &CudaSlice<f32>,
        k_pool: &mut CudaSlice<f32>,
        v_pool: &mut CudaSlice<f32>,
        meta: &CudaMeta,
        shape: AttnShape,
    ) -> Result<()> {
        let hd = shape.head_dim;
        let base = self.p(qkv) as *const f32;
        let width = shape.qkv_width() as i64;
        let (kp, vp) = (self.pm(k_pool), self.pm(v_pool));
        // SAFETY: k and v heads follow the q heads in every row; every
        // non-negative slot is inside the pools.
        self.launched("reshape_and_cache", unsafe {
            sys::ek_reshape_and_cache(
                base.add(shape.num_heads * hd).cast(),
                base.add((shape.num_heads + shape.num_kv_heads) * hd).cast(),
                kp,
                vp,
                self.p(&meta.slot_mapping).cast(),
                sys::EK_DTYPE_F32 as i32,
                meta.host.num_tokens() as i64,
                width,
                width,
                shape.num_kv_heads as i32,
                hd as i32,
                meta.host.block_size as i32,
                self.stream(),
            )
        })
    }

    fn paged_attention(
        &self,
        qkv: &CudaSlice<f32>,
        k_pool: &CudaSlice<f32>,
        v_pool: &CudaSlice<f32>,
        meta: &CudaMeta,
        shape: AttnShape,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        if meta.host.num_seqs() == 0 {
            return Ok(());
        }
        let params = sys::ek_attn_params {
            out: self.pm(out),
            q: self.p(qkv),
            k_cache: self.p(k_pool),
            v_cache: self.p(v_pool),
            block_tables: self.p(&meta.block_tables).cast(),
            context_lens: self.p(&meta.context_lens).cast(),
            query_start: self.p(&meta.query_start).cast(),
            q_stride: shape.qkv_width() as i64,
            out_stride: (shape.num_heads * shape.head_dim) as i64,
            num_seqs: to_i32("sequences", meta.host.num_seqs())?,
            num_heads: shape.num_heads as i32,
            num_kv_heads: shape.num_kv_heads as i32,
            head_dim: shape.head_dim as i32,
            block_size: meta.host.block_size as i32,
            max_blocks_per_seq: to_i32("blocks per sequence", meta.max_blocks)?,
            sliding_window: shape
                .sliding_window
                .map_or(Ok(0), |w| to_i32("sliding window", w))?,
            dtype: sys::EK_DTYPE_F32 as i32,
            scale: shape.scale,
        };
        if !meta.decode_only {
            // SAFETY: params describe live buffers of the shapes above.
            return self.launched("paged_attention_prefill", unsafe {
                sys::ek_paged_attention_prefill(
                    &params,
                    to_i32("query length", meta.max_query_len)?,
                    self.stream(),
                )
            });
        }
        let parts = attention::decode_partitions(
            meta.host.num_seqs(),
            shape.num_heads,
            shape.num_kv_heads,
            meta.max_context,
            self.dev.sm_count,
        );
        let mut workspace: Option<CudaSlice<u8>> = None;
        let ws = if parts > 0 {
            // SAFETY: a pure size computation.
            let bytes = unsafe {
                sys::ek_paged_attention_workspace_bytes(
                    params.num_seqs,
                    params.num_heads,
                    params.head_dim,
                    parts as i32,
                )
            };
            // Every partition the reduce reads is written first (it skips
            // the ones without a visible token, whose blocks write nothing).
            let mut buf = self.dev.alloc_uninit::<u8>(bytes as usize)?;
            let p = self.pm(&mut buf);
            workspace = Some(buf);
            p
        } else {
            std::ptr::null_mut()
        };
        // SAFETY: params describe live buffers; the workspace has the size asked for.
        let status =
            unsafe { sys::ek_paged_attention_decode(&params, parts as i32, ws, self.stream()) };
        drop(workspace);
        self.launched("paged_attention_decode", status)
    }

    fn silu_mul(
        &self,
        gate_up: &CudaSlice<f32>,
        width: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        if width == 0 {
            return Ok(());
        }
        let o = self.pm(out);
        // SAFETY: gate_up holds rows x 2 width f32, out rows x width.
        self.launched("silu_and_mul", unsafe {
            sys::ek_silu_and_mul(
                o,
                self.p(gate_up),
                sys::EK_DTYPE_F32 as i32,
                (gate_up.len() / (2 * width)) as i64,
                width as i64,
                self.stream(),
            )
        })
    }

    fn gather_rows(
        &self,
        x: &CudaSlice<f32>,
        rows: &[usize],
        width: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let idx: Vec<i32> = rows
            .iter()
            .map(|&r| to_i32("row", r))
            .collect::<Result<_>>()?;
        let idx = self.dev.upload(&idx)?;
        let o = self.pm(out);
        // SAFETY: every row index is inside x; out holds rows.len() x width f32.
        self.launched("gather_rows", unsafe {
            sys::ek_gather_rows(
                o.cast(),
                self.p(x).cast(),
                self.p(&idx).cast(),
                rows.len() as i64,
                width as i64,
                self.stream(),
            )
        })
    }

    fn sample_rows(
        &self,
        logits: &CudaSlice<f32>,
        batch: &SampleBatch,
        host: &dyn HostRowSampler,
    ) -> Result<Vec<SampledRow>> {
        self.sample_batch(logits, batch, host)
    }

    fn tensor_parallel_group(self, world: usize) -> Result<Vec<(CudaBackend, nccl::NcclComm)>> {
        nccl::group(self, world)
    }

    fn bind_thread(&self) -> Result<()> {
        self.dev.bind()
    }

    fn abort_collectives(&self, comm: &nccl::NcclComm) {
        nccl::abort(comm);
    }

    fn all_reduce_sum(&self, comm: &nccl::NcclComm, buf: &mut CudaSlice<f32>) -> Result<()> {
        nccl::all_reduce_sum(comm, buf)?;
        self.sync_point("all_reduce_sum")
    }

    fn all_gather(
        &self,
        comm: &nccl::NcclComm,
        local: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        nccl::all_gather(comm, local, out)?;
        self.sync_point("all_gather")
    }
}
