//! The CUDA backend (feature `cuda`): the ops of [`Backend`] on one GPU, run by
//! the kernels in csrc/ (through their C launchers, [`sys`]) and cuBLAS, over
//! the CPU backend's layouts. cudarc loads the driver and cuBLAS at run time,
//! so a build with this feature runs anywhere; opening the device on a
//! machine without a driver is an error, never a panic.
//!
//! Activations, the KV pools and the weights are in the model's dtype
//! ([`CudaBuffer`], set by [`Backend::set_activation_dtype`]; the KV pools
//! may be FP8 instead, [`CudaKvPool`]): a bf16 model
//! runs its GEMMs on bf16 inputs and outputs with f32 accumulation (cuBLAS),
//! and every kernel reads and writes bf16 with f32 arithmetic inside, as
//! vLLM does. A float32 model runs in f32 throughout, the reference for the
//! CPU backend's results. Logits are f32 whatever the dtype (the LM head's
//! GEMM writes them so), and so is the rotary table.

pub mod attention;
mod buffer;
mod device;
mod graphs;
mod kv_pool;
mod libs;
mod linear;
mod meta;
mod nccl;
mod sample;
#[rustfmt::skip]
pub mod kernels_sys;

/// The kernels' C launchers (csrc/kernels.h), for tests and benches too.
pub use kernels_sys as sys;

use std::ffi::c_void;

use cudarc::driver::CudaSlice;

pub use buffer::CudaBuffer;
pub use cudarc;
pub use device::{driver_present, gpu_count, ptr, ptr_mut, CudaDevice};
pub use kv_pool::{ek_kv_dtype, CudaKvPool};
pub use linear::{CudaWeightData, CudaWeightTensor};
pub use meta::CudaMeta;

use crate::backend::cpu::weight::{CpuWeight, WeightData};
use crate::backend::fp8::Fp8Format;
use crate::backend::HostTensor;
use crate::backend::{
    AttnShape, Backend, DeviceMemory, GraphLimits, KvDType, KvPoolShape, StepMeta,
};
use crate::backend::{DType, GraphForward};
use crate::backend::{HostRowSampler, SampleBatch, SampledRow};
use crate::error::{Error, Result};
use buffer::{each_slice, same_dtype};
use device::{check, device_error};
use meta::MetaArrays;

pub struct CudaBackend {
    dev: CudaDevice,
    /// The step's activations (and so the KV cache's) dtype: the model's.
    act_dtype: DType,
    /// Decode steps' CUDA graphs, once [`Backend::enable_graphs`] ran.
    graphs: Option<graphs::Graphs>,
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
            act_dtype: DType::F32,
            graphs: None,
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

    /// A norm weight or bias, checked to be in `dtype` (its activations').
    fn vector(&self, w: &CudaWeightTensor, what: &str, dtype: DType) -> Result<*const c_void> {
        let data = w.dense(what)?;
        if w.shape.len() != 1 || data.dtype() != dtype {
            return Err(Error::invalid(format!(
                "cuda: {what} must be a vector in {} (the activations' dtype), not {:?} in {}",
                dtype.name(),
                w.shape,
                data.dtype().name()
            )));
        }
        Ok(data.ptr(&self.dev))
    }

    fn zero(&self, out: &mut CudaBuffer) -> Result<()> {
        each_slice!(out, s => self.dev.stream.memset_zeros(s))
            .map_err(|e| device_error("zeroing", e))
    }
}

impl Backend for CudaBackend {
    type Buffer = CudaBuffer;
    type Weight = CudaWeightTensor;
    type KvPool = CudaKvPool;
    type Meta = CudaMeta;
    type Comm = nccl::NcclComm;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn describe(&self) -> String {
        self.dev.describe()
    }

    fn set_activation_dtype(&mut self, dtype: DType) {
        self.act_dtype = dtype;
    }

    fn alloc(&self, len: usize) -> Result<CudaBuffer> {
        CudaBuffer::zeros(&self.dev, self.act_dtype, len)
    }

    fn alloc_logits(&self, len: usize) -> Result<CudaBuffer> {
        CudaBuffer::zeros(&self.dev, DType::F32, len)
    }

    fn upload(&self, data: &[f32]) -> Result<CudaBuffer> {
        CudaBuffer::upload(&self.dev, data, DType::F32)
    }

    fn download(&self, buf: &CudaBuffer) -> Result<Vec<f32>> {
        buf.to_host(&self.dev)
    }

    fn buffer_len(&self, buf: &CudaBuffer) -> usize {
        buf.len()
    }

    /// A device slice has a fixed length: a new length is a new allocation
    /// (of the buffer's dtype) from the stream's pool (cheap: freed memory
    /// stays in the pool), left uninitialized; the same length keeps the buffer.
    fn resize(&self, buf: &mut CudaBuffer, len: usize) -> Result<()> {
        if buf.len() != len.max(1) {
            *buf = CudaBuffer::uninit(&self.dev, buf.dtype(), len)?;
        }
        Ok(())
    }

    /// FP8 matrices stay FP8 ([`linear`]); others as the CPU holds them.
    fn upload_weight(&self, tensor: HostTensor, dtype: DType) -> Result<CudaWeightTensor> {
        if let Some(fp8) = self.upload_fp8(&tensor)? {
            return Ok(fp8);
        }
        // The host conversion the CPU backend does (vectors rounded to the dtype
        // and held in f32), in the stored row-major layout.
        let host = CpuWeight::natural(tensor, dtype);
        let vector = host.shape.len() == 1;
        let data = match &host.data {
            // Exact: the values are already rounded to the model's dtype.
            WeightData::F32(s) if vector => {
                CudaBuffer::upload(&self.dev, s.as_slice(), self.act_dtype)?
            }
            WeightData::F32(s) => CudaBuffer::F32(self.dev.upload(s.as_slice())?),
            WeightData::F16(s) => CudaBuffer::F16(self.dev.upload(s.as_slice())?),
            WeightData::BF16(s) => CudaBuffer::BF16(self.dev.upload(s.as_slice())?),
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
            data: CudaWeightData::Dense(data),
        })
    }

    fn alloc_kv_pool(&self, shape: KvPoolShape, scale: f32) -> Result<CudaKvPool> {
        if !self.kv_dtypes().contains(&shape.dtype) {
            return Err(Error::invalid(format!(
                "cuda: no kernel reads a {} KV cache beside {} activations",
                shape.dtype.name(),
                self.act_dtype.name()
            )));
        }
        if !attention::HEAD_DIMS.contains(&shape.head_dim) {
            return Err(Error::invalid(format!(
                "cuda: the attention kernels take head_dim {:?}; this model's is {}",
                attention::HEAD_DIMS,
                shape.head_dim
            )));
        }
        CudaKvPool::zeros(&self.dev, shape, scale)
    }

    /// The cache and attention kernels are instantiated for a KV cache in
    /// the activations' dtype or in either FP8 format.
    fn kv_dtypes(&self) -> &'static [KvDType] {
        const E4M3: KvDType = KvDType::Fp8(Fp8Format::E4M3);
        const E5M2: KvDType = KvDType::Fp8(Fp8Format::E5M2);
        match self.act_dtype {
            DType::F32 => &[KvDType::F32, E4M3, E5M2],
            DType::F16 => &[KvDType::F16, E4M3, E5M2],
            DType::BF16 => &[KvDType::BF16, E4M3, E5M2],
        }
    }

    fn memory_info(&self) -> Result<Option<DeviceMemory>> {
        self.dev.synchronize()?;
        let (free, total) = self.dev.memory_info()?;
        Ok(Some(DeviceMemory { free, total }))
    }

    fn prepare_step(&self, meta: StepMeta) -> Result<CudaMeta> {
        let arrays = MetaArrays::new(&meta, MetaArrays::widest_table(&meta))?;
        CudaMeta::upload(&self.dev, &arrays, meta, None)
    }

    fn enable_graphs(&mut self, limits: GraphLimits) {
        self.graphs = Some(graphs::Graphs::new(limits));
    }

    fn graph_step<S: Send + 'static>(
        &self,
        meta: &CudaMeta,
        spare: &mut Option<CudaBuffer>,
        new_state: &mut dyn FnMut() -> Result<S>,
        forward: &mut GraphForward<'_, CudaBackend, S>,
    ) -> Result<Option<CudaBuffer>> {
        self.step_through_graph(meta, spare, new_state, forward)
    }

    fn graphs_captured(&self) -> usize {
        self.graphs.as_ref().map_or(0, graphs::Graphs::captured)
    }

    fn step_meta<'a>(&self, meta: &'a CudaMeta) -> &'a StepMeta {
        &meta.host
    }

    fn copy_blocks(
        &self,
        pool: &mut CudaKvPool,
        shape: KvPoolShape,
        pairs: &[(u32, u32)],
    ) -> Result<()> {
        let block = shape.num_kv_heads * shape.block_size * shape.head_dim;
        let bytes = block * pool.dtype().size_in_bytes();
        let base = pool.ptr_mut(&self.dev) as u64;
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
        out: &mut CudaBuffer,
    ) -> Result<()> {
        let out_dtype = out.ek_dtype();
        let data = table.dense("the embedding table")?;
        // SAFETY: out holds tokens x width values; every id is below the
        // table's rows (the validator checks token ids against the vocabulary).
        self.launched("embedding", unsafe {
            sys::ek_embedding(
                out.ptr_mut(&self.dev),
                out_dtype,
                data.ptr(&self.dev),
                data.ek_dtype(),
                self.p(&meta.token_ids).cast(),
                meta.host.num_tokens() as i64,
                table.cols() as i64,
                self.stream(),
            )
        })
    }

    fn rms_norm(
        &self,
        x: &CudaBuffer,
        weight: &CudaWeightTensor,
        eps: f32,
        out: &mut CudaBuffer,
    ) -> Result<()> {
        same_dtype("rms_norm", x.dtype(), &[out.dtype()])?;
        let w = self.vector(weight, "an RMSNorm weight", x.dtype())?;
        let hidden = weight.cols();
        // SAFETY: x and out hold rows x hidden values, the weight hidden, one dtype.
        self.launched("rms_norm", unsafe {
            sys::ek_rms_norm(
                out.ptr_mut(&self.dev),
                x.ptr(&self.dev),
                w,
                x.ek_dtype(),
                (x.len() / hidden) as i64,
                hidden as i64,
                eps,
                self.stream(),
            )
        })
    }

    fn fused_add_rms_norm(
        &self,
        x: &mut CudaBuffer,
        residual: &mut CudaBuffer,
        weight: &CudaWeightTensor,
        eps: f32,
    ) -> Result<()> {
        same_dtype("fused_add_rms_norm", x.dtype(), &[residual.dtype()])?;
        let w = self.vector(weight, "an RMSNorm weight", x.dtype())?;
        let hidden = weight.cols();
        let rows = x.len() / hidden;
        let dtype = x.ek_dtype();
        // SAFETY: x and residual hold rows x hidden values, the weight hidden, one dtype.
        self.launched("fused_add_rms_norm", unsafe {
            sys::ek_fused_add_rms_norm(
                x.ptr_mut(&self.dev),
                residual.ptr_mut(&self.dev),
                w,
                dtype,
                rows as i64,
                hidden as i64,
                eps,
                self.stream(),
            )
        })
    }

    fn matmul(
        &self,
        x: &CudaBuffer,
        weight: &CudaWeightTensor,
        bias: Option<&CudaWeightTensor>,
        out: &mut CudaBuffer,
    ) -> Result<()> {
        self.gemm(x, weight, out)?;
        if let Some(b) = bias {
            let bp = self.vector(b, "a bias", out.dtype())?;
            let cols = b.cols();
            let (rows, dtype) = (out.len() / cols, out.ek_dtype());
            // SAFETY: out holds rows x cols values, the bias cols, one dtype.
            self.launched("add_bias", unsafe {
                sys::ek_add_bias(
                    out.ptr_mut(&self.dev),
                    bp,
                    dtype,
                    rows as i64,
                    cols as i64,
                    self.stream(),
                )
            })?;
        }
        Ok(())
    }

    fn rotary(
        &self,
        qkv: &mut CudaBuffer,
        cos_sin: &CudaBuffer,
        meta: &CudaMeta,
        shape: AttnShape,
    ) -> Result<()> {
        let table = cos_sin.f32("the rotary table")?;
        let hd = shape.head_dim;
        let dtype = qkv.ek_dtype();
        let k_offset = shape.num_heads * hd * qkv.dtype().size_in_bytes();
        let base = qkv.ptr_mut(&self.dev).cast::<u8>();
        let width = shape.qkv_width() as i64;
        // SAFETY: every token's row holds the q heads then the k heads; the
        // table covers every position (the scheduler bounds them by max_model_len).
        self.launched("rotary", unsafe {
            sys::ek_rotary(
                base.cast(),
                base.add(k_offset).cast(),
                self.p(&meta.positions).cast(),
                self.p(table).cast(),
                dtype,
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
        qkv: &CudaBuffer,
        k_pool: &mut CudaKvPool,
        v_pool: &mut CudaKvPool,
        meta: &CudaMeta,
        shape: AttnShape,
    ) -> Result<()> {
        let cache_dtype = kv_pool::pair_dtype(
            "reshape_and_cache",
            qkv.dtype(),
            k_pool.dtype(),
            v_pool.dtype(),
        )?;
        let (k_scale, v_scale) = (k_pool.scale(), v_pool.scale());
        let hd = shape.head_dim;
        let elem = qkv.dtype().size_in_bytes();
        let base = qkv.ptr(&self.dev).cast::<u8>();
        let width = shape.qkv_width() as i64;
        let dtype = qkv.ek_dtype();
        let (kp, vp) = (k_pool.ptr_mut(&self.dev), v_pool.ptr_mut(&self.dev));
        // SAFETY: k and v heads follow the q heads in every row; every
        // non-negative slot is inside the pools, which are of cache_dtype.
        self.launched("reshape_and_cache", unsafe {
            sys::ek_reshape_and_cache(
                base.add(shape.num_heads * hd * elem).cast(),
                base.add((shape.num_heads + shape.num_kv_heads) * hd * elem)
                    .cast(),
                kp,
                vp,
                self.p(&meta.slot_mapping).cast(),
                dtype,
                cache_dtype,
                k_scale,
                v_scale,
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
        qkv: &CudaBuffer,
        k_pool: &CudaKvPool,
        v_pool: &CudaKvPool,
        meta: &CudaMeta,
        shape: AttnShape,
        out: &mut CudaBuffer,
    ) -> Result<()> {
        if meta.host.num_seqs() == 0 {
            return Ok(());
        }
        same_dtype("paged_attention", qkv.dtype(), &[out.dtype()])?;
        let cache_dtype = kv_pool::pair_dtype(
            "paged_attention",
            qkv.dtype(),
            k_pool.dtype(),
            v_pool.dtype(),
        )?;
        let params = sys::ek_attn_params {
            out: out.ptr_mut(&self.dev),
            q: qkv.ptr(&self.dev),
            k_cache: k_pool.ptr(&self.dev),
            v_cache: v_pool.ptr(&self.dev),
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
            dtype: qkv.ek_dtype(),
            scale: shape.scale,
            cache_dtype,
            k_scale: k_pool.scale(),
            v_scale: v_pool.scale(),
        };
        self.attention(&params, meta)
    }

    fn silu_mul(&self, gate_up: &CudaBuffer, width: usize, out: &mut CudaBuffer) -> Result<()> {
        if width == 0 {
            return Ok(());
        }
        same_dtype("silu_and_mul", gate_up.dtype(), &[out.dtype()])?;
        let dtype = out.ek_dtype();
        // SAFETY: gate_up holds rows x 2 width values, out rows x width, one dtype.
        self.launched("silu_and_mul", unsafe {
            sys::ek_silu_and_mul(
                out.ptr_mut(&self.dev),
                gate_up.ptr(&self.dev),
                dtype,
                (gate_up.len() / (2 * width)) as i64,
                width as i64,
                self.stream(),
            )
        })
    }

    fn gather_rows(
        &self,
        x: &CudaBuffer,
        rows: &[usize],
        width: usize,
        out: &mut CudaBuffer,
    ) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        same_dtype("gather_rows", x.dtype(), &[out.dtype()])?;
        let idx: Vec<i32> = rows
            .iter()
            .map(|&r| to_i32("row", r))
            .collect::<Result<_>>()?;
        let idx = self.dev.upload(&idx)?;
        let dtype = out.ek_dtype();
        // SAFETY: every row index is inside x; out holds rows.len() x width values.
        self.launched("gather_rows", unsafe {
            sys::ek_gather_rows(
                out.ptr_mut(&self.dev),
                x.ptr(&self.dev),
                dtype,
                self.p(&idx).cast(),
                rows.len() as i64,
                width as i64,
                self.stream(),
            )
        })
    }

    fn sample_rows(
        &self,
        logits: &CudaBuffer,
        batch: &SampleBatch,
        _host: &dyn HostRowSampler,
    ) -> Result<Vec<SampledRow>> {
        self.sample_batch(logits.f32("the logits")?, batch)
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

    fn all_reduce_sum(&self, comm: &nccl::NcclComm, buf: &mut CudaBuffer) -> Result<()> {
        each_slice!(buf, s => nccl::all_reduce_sum(comm, s))?;
        self.sync_point("all_reduce_sum")
    }

    fn all_gather(
        &self,
        comm: &nccl::NcclComm,
        local: &CudaBuffer,
        out: &mut CudaBuffer,
    ) -> Result<()> {
        match (local, out) {
            (CudaBuffer::F32(l), CudaBuffer::F32(o)) => nccl::all_gather(comm, l, o),
            (CudaBuffer::F16(l), CudaBuffer::F16(o)) => nccl::all_gather(comm, l, o),
            (CudaBuffer::BF16(l), CudaBuffer::BF16(o)) => nccl::all_gather(comm, l, o),
            (l, o) => same_dtype("all_gather", l.dtype(), &[o.dtype()]),
        }?;
        self.sync_point("all_gather")
    }
}
