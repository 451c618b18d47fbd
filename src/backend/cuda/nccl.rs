//! Tensor parallelism on CUDA: one NCCL communicator per GPU, all made at
//! once by this process (ncclCommInitAll), each rank's collectives enqueued on
//! its GPU's one stream, in order with that rank's kernels.
//!
//! A rank that fails mid-step leaves the others' collectives waiting on the
//! GPU for data that never comes, and their threads waiting for their streams.
//! Every communicator of the group lives in this process, so the failing rank
//! aborts them all (ncclCommAbort, which cudarc runs when a `Comm` drops):
//! the waiting kernels end, the other ranks see errors, and the group is done
//! (the engine reports the device failure; a new engine makes new ones).

use std::sync::{Arc, Mutex};

use cudarc::driver::CudaSlice;
use cudarc::nccl::{Comm, NcclType, ReduceOp};

use super::device::{device_error, gpu_count};
use super::CudaBackend;
use crate::error::{Error, Result};

/// One GPU's end of the group's NCCL communicator.
pub struct NcclComm {
    rank: usize,
    group: Arc<Communicators>,
}

/// Every rank's communicator; `None` once the group was aborted.
struct Communicators(Vec<Mutex<Option<Comm>>>);

// SAFETY: each communicator is used under its own mutex, so never from two
// threads at once; NCCL allows a communicator to be used from any thread so
// long as calls on it are not concurrent.
unsafe impl Send for Communicators {}
// SAFETY: see above.
unsafe impl Sync for Communicators {}

impl NcclComm {
    /// Runs `f` on this rank's communicator, unless the group was aborted.
    fn with<T>(&self, f: impl FnOnce(&Comm) -> Result<T>) -> Result<T> {
        let slot = self.group.0[self.rank]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match slot.as_ref() {
            Some(comm) => f(comm),
            None => Err(Error::Device(
                "NCCL: the tensor-parallel group was aborted after a rank failed".into(),
            )),
        }
    }
}

/// Aborts every communicator of `comm`'s group (see the module comment).
pub(super) fn abort(comm: &NcclComm) {
    for slot in &comm.group.0 {
        let taken = slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        // cudarc panics if ncclCommAbort fails: the group is lost either way,
        // and a panic must not escape the failing rank's clean-up.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(taken)));
    }
}

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
    let group = Arc::new(Communicators(
        comms.into_iter().map(|c| Mutex::new(Some(c))).collect(),
    ));
    Ok(backends
        .into_iter()
        .enumerate()
        .map(|(rank, backend)| {
            let group = Arc::clone(&group);
            (backend, NcclComm { rank, group })
        })
        .collect())
}

pub(super) fn all_reduce_sum<T: NcclType>(comm: &NcclComm, buf: &mut CudaSlice<T>) -> Result<()> {
    comm.with(|comm| {
        comm.all_reduce_in_place(buf, &ReduceOp::Sum)
            .map(drop)
            .map_err(|e| device_error("NCCL all_reduce", format!("{e:?}")))
    })
}

pub(super) fn all_gather<T: NcclType>(
    comm: &NcclComm,
    local: &CudaSlice<T>,
    out: &mut CudaSlice<T>,
) -> Result<()> {
    comm.with(|comm| {
        if out.len() != local.len() * comm.world_size() {
            return Err(Error::Device(format!(
                "cuda: all_gather of {} values into {} (world {})",
                local.len(),
                out.len(),
                comm.world_size()
            )));
        }
        comm.all_gather(local, out)
            .map(drop)
            .map_err(|e| device_error("NCCL all_gather", format!("{e:?}")))
    })
}
