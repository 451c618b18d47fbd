//! The CPU backend (rayon): the reference implementation of every op.

mod attention;
pub mod collective;
pub mod exp;
pub mod kv_pool;
pub mod lanes;
pub mod matmul;
pub(crate) mod ops;
pub(crate) mod pool;
mod sample;
pub mod weight;

use crate::backend::fp8::Fp8Format;
use crate::backend::DType;
use crate::backend::HostTensor;
use crate::backend::{AttnShape, Backend, KvDType, KvPoolShape, StepMeta};
use crate::backend::{HostRowSampler, SampleBatch, SampledRow};
use crate::error::Result;

pub use collective::CpuComm;
pub use kv_pool::{key_blocks_transposed, CpuKvPool};
pub use weight::CpuWeight;

#[derive(Debug, Default, Clone, Copy)]
pub struct CpuBackend;

impl Backend for CpuBackend {
    type Buffer = Vec<f32>;
    type Weight = CpuWeight;
    type KvPool = CpuKvPool;
    type Meta = StepMeta;
    type Comm = CpuComm;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn alloc(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }

    fn upload(&self, data: &[f32]) -> Result<Vec<f32>> {
        Ok(data.to_vec())
    }

    fn download(&self, buf: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(buf.clone())
    }

    fn buffer_len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }

    fn resize(&self, buf: &mut Vec<f32>, len: usize) -> Result<()> {
        if len > buf.capacity() {
            // Growing in place would copy the old values over first; the old
            // storage goes before the new comes (no peak of both).
            drop(std::mem::take(buf));
            *buf = vec![0.0; len];
        } else {
            // Within the capacity: no allocation, and only a grown tail is written.
            buf.resize(len, 0.0);
        }
        Ok(())
    }

    fn upload_weight(&self, tensor: HostTensor, dtype: DType) -> Result<CpuWeight> {
        Ok(CpuWeight::from_host(tensor, dtype))
    }

    fn upload_stacked(
        &self,
        name: &str,
        parts: Vec<HostTensor>,
        dtype: DType,
    ) -> Result<CpuWeight> {
        CpuWeight::stacked(name, parts, dtype)
    }

    fn alloc_kv_pool(&self, shape: KvPoolShape, scale: f32) -> Result<CpuKvPool> {
        CpuKvPool::zeros_scaled(shape, scale)
    }

    fn kv_dtypes(&self) -> &'static [KvDType] {
        &[
            KvDType::F32,
            KvDType::BF16,
            KvDType::F16,
            KvDType::Fp8(Fp8Format::E4M3),
            KvDType::Fp8(Fp8Format::E5M2),
        ]
    }

    fn run_step<R: Send>(&self, step: impl FnOnce() -> R + Send) -> R {
        // On a thread outside the pool this moves the step onto a pool thread
        // (one hand-off per step instead of one per op); on a pool thread it
        // runs in place.
        rayon::scope(|_| step())
    }

    fn prepare_step(&self, meta: StepMeta) -> Result<StepMeta> {
        Ok(meta)
    }

    fn step_meta<'a>(&self, meta: &'a StepMeta) -> &'a StepMeta {
        meta
    }

    fn copy_blocks(
        &self,
        pool: &mut CpuKvPool,
        shape: KvPoolShape,
        pairs: &[(u32, u32)],
    ) -> Result<()> {
        let block = shape.block_len();
        for &(src, dst) in pairs {
            pool.copy_within(src as usize * block, dst as usize * block, block);
        }
        Ok(())
    }

    fn embedding(&self, table: &CpuWeight, meta: &StepMeta, out: &mut Vec<f32>) -> Result<()> {
        ops::embedding(table, &meta.token_ids, out);
        Ok(())
    }

    fn rms_norm(
        &self,
        x: &Vec<f32>,
        weight: &CpuWeight,
        eps: f32,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        ops::rms_norm(x, &weight.f32_values(), eps, out);
        Ok(())
    }

    fn fused_add_rms_norm(
        &self,
        x: &mut Vec<f32>,
        residual: &mut Vec<f32>,
        weight: &CpuWeight,
        eps: f32,
    ) -> Result<()> {
        ops::fused_add_rms_norm(x, residual, &weight.f32_values(), eps);
        Ok(())
    }

    fn matmul(
        &self,
        x: &Vec<f32>,
        weight: &CpuWeight,
        bias: Option<&CpuWeight>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let bias = bias.map(CpuWeight::f32_values);
        matmul::matmul(x, weight, bias.as_deref(), out);
        Ok(())
    }

    fn rotary(
        &self,
        qkv: &mut Vec<f32>,
        cos_sin: &Vec<f32>,
        meta: &StepMeta,
        shape: AttnShape,
    ) -> Result<()> {
        ops::rotary(qkv, cos_sin, &meta.positions, shape);
        Ok(())
    }

    fn reshape_and_cache(
        &self,
        qkv: &Vec<f32>,
        k_pool: &mut CpuKvPool,
        v_pool: &mut CpuKvPool,
        meta: &StepMeta,
        shape: AttnShape,
    ) -> Result<()> {
        ops::reshape_and_cache(qkv, k_pool, v_pool, meta, shape);
        Ok(())
    }

    fn paged_attention(
        &self,
        qkv: &Vec<f32>,
        k_pool: &CpuKvPool,
        v_pool: &CpuKvPool,
        meta: &StepMeta,
        shape: AttnShape,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        attention::paged_attention(qkv, k_pool, v_pool, meta, shape, out);
        Ok(())
    }

    fn silu_mul(&self, gate_up: &Vec<f32>, width: usize, out: &mut Vec<f32>) -> Result<()> {
        ops::silu_mul(gate_up, width, out);
        Ok(())
    }

    fn gather_rows(
        &self,
        x: &Vec<f32>,
        rows: &[usize],
        width: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        ops::gather_rows(x, rows, width, out);
        Ok(())
    }

    fn sample_rows(
        &self,
        logits: &Vec<f32>,
        batch: &SampleBatch,
        host: &dyn HostRowSampler,
    ) -> Result<Vec<SampledRow>> {
        sample::sample_rows(logits, batch, host)
    }

    fn tensor_parallel_group(self, world: usize) -> Result<Vec<(CpuBackend, CpuComm)>> {
        Ok(CpuComm::group(world)
            .into_iter()
            .map(|comm| (CpuBackend, comm))
            .collect())
    }

    fn abort_collectives(&self, comm: &CpuComm) {
        comm.abort();
    }

    fn all_reduce_sum(&self, comm: &CpuComm, buf: &mut Vec<f32>) -> Result<()> {
        comm.all_reduce_sum(buf)
    }

    fn all_gather(&self, comm: &CpuComm, local: &Vec<f32>, out: &mut Vec<f32>) -> Result<()> {
        comm.all_gather(local, out)
    }
}
