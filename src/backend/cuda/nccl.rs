//! Tensor parallelism on CUDA: one NCCL communicator per GPU, all made at
//! once by this process (ncclCommInitAll), each rank's collectives enqueued on
//! its GPU's one stream, in order with that rank's kernels.

use cudarc::driver::CudaSlice;
use cudarc::nccl::{Comm, ReduceOp};

use super::device::{device_error, gpu_count};
use super::CudaBackend;
use crate::error::{Error, Result};

/// One GPU's end of the group's NCCL communicator.
pub struct NcclComm(Comm);

// SAFETY: a communicator is used by one rank's thread at a time: the model
// group steps each rank on its own thread and never calls one rank's
// collectives from two threads at once. NCCL allows a communicator to be used
// from any thread so long as calls on it are not concurrent.
unsafe impl Send for NcclComm {}
// SAFETY: see above; `&NcclComm` is only used from its rank's thread.
unsafe impl Sync for NcclComm {}

/// `lead` as rank 0 and the next `world - 1` GPUs after it, with their communicators.
pub(super) fn group(lead: CudaBackend, world: usize) -> Result<Vec<(CudaBackend, NcclComm)>> {
    let first = lead.dev.ctx.ordinal();
    let count = gpu_count()?;
    if first + world > count {
        return Err(Error::invalid(format!(
            "tensor_parallel_size {world} needs {world} GPUs (from GPU {first}), and this \
             machine has {count}"
        )));
    }
    super::libs::load_nccl()?;
    let mut backends = vec![lead];
    for ordinal in first + 1..first + world {
        backends.push(CudaBackend::new(ordinal)?);
    }
    let streams = backends.iter().map(|b| b.dev.stream.clone()).collect();
    let comms = Comm::from_devices(streams)
        .map_err(|e| device_error("creating the NCCL communicators", format!("{e:?}")))?;
    Ok(backends
        .into_iter()
        .zip(comms.into_iter().map(NcclComm))
        .collect())
}

pub(super) fn all_reduce_sum(comm: &NcclComm, buf: &mut CudaSlice<f32>) -> Result<()> {
    comm.0
        .all_reduce_in_place(buf, &ReduceOp::Sum)
        .map(drop)
        .map_err(|e| device_error("NCCL all_reduce", format!("{e:?}")))
}

pub(super) fn all_gather(
    comm: &NcclComm,
    local: &CudaSlice<f32>,
    out: &mut CudaSlice<f32>,
) -> Result<()> {
    if out.len() != local.len() * comm.0.world_size() {
        return Err(Error::Device(format!(
            "cuda: all_gather of {} values into {} (world {})",
            local.len(),
            out.len(),
            comm.0.world_size()
        )));
    }
    comm.0
        .all_gather(local, out)
        .map(drop)
        .map_err(|e| device_error("NCCL all_gather", format!("{e:?}")))
}
