//! The CUDA device: context, stream and cuBLAS handle, opened with a check
//! that the driver and cuBLAS libraries exist (cudarc's safe API panics without them).

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, DevicePtrMut};

use crate::error::{Error, Result};

/// A device error in the engine's error type.
pub(crate) fn device_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Device(format!("cuda: {what}: {e}"))
}

/// Turns a launcher's status (a cudaError_t) into a result.
pub(crate) fn check(kernel: &str, status: i32) -> Result<()> {
    if status == 0 {
        Ok(())
    } else {
        Err(Error::Device(format!(
            "cuda: {kernel} failed with cudaError {status}"
        )))
    }
}

/// One GPU, one stream: every op of the backend is enqueued on `stream` in
/// program order, so no event tracking between streams is needed.
pub struct CudaDevice {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub blas: CudaBlas,
    /// cuBLAS's workspace, set on its handle: allocated once, so a GEMM
    /// captured into a CUDA graph never allocates (dropped after `blas`).
    _blas_workspace: CudaSlice<u8>,
    /// Multiprocessors: what the split-K rule of paged attention sizes against.
    pub sm_count: usize,
    /// Shared memory a block may opt into: whether the tensor-core prefill fits.
    pub shared_mem_per_block: usize,
}

/// cuBLAS's workspace: NVIDIA's recommendation for Hopper.
const BLAS_WORKSPACE_BYTES: usize = 32 << 20;

/// Whether the CUDA driver library can be loaded on this machine.
pub fn driver_present() -> bool {
    super::libs::pin_driver()
}

/// How many GPUs the driver sees (an error where there is no driver).
pub fn gpu_count() -> Result<usize> {
    if !driver_present() {
        return Err(Error::Device(
            "cuda: the CUDA driver (libcuda.so) is not installed on this machine".into(),
        ));
    }
    let n = CudaContext::device_count().map_err(|e| device_error("counting GPUs", e))?;
    Ok(n.max(0) as usize)
}

impl CudaDevice {
    /// Opens GPU `ordinal`. A machine without the driver (or without a GPU)
    /// gets an error, never a panic.
    pub fn open(ordinal: usize) -> Result<CudaDevice> {
        let count = gpu_count()?;
        if ordinal >= count {
            return Err(Error::Device(format!(
                "cuda: GPU {ordinal} does not exist ({count} found)"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| device_error("opening the GPU", e))?;
        // One stream orders everything: no events between streams.
        // SAFETY: nothing has been allocated on this context yet.
        unsafe { ctx.disable_event_tracking() };
        // Our own non-blocking stream, not the legacy NULL stream, which
        // serializes with every other stream of the process (a host library's
        // or a second engine's).
        let stream = ctx
            .new_stream()
            .map_err(|e| device_error("creating a stream", e))?;
        keep_freed_memory(&ctx)?;
        super::libs::load_cublas()?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| device_error("creating cuBLAS", e))?;
        let mut workspace = stream
            .alloc_zeros::<u8>(BLAS_WORKSPACE_BYTES)
            .map_err(|e| device_error("allocating cuBLAS's workspace", e))?;
        let wp = ptr_mut(&mut workspace, &stream);
        // SAFETY: a live handle and a workspace of that size that outlives it.
        unsafe {
            cudarc::cublas::sys::cublasSetWorkspace_v2(*blas.handle(), wp, BLAS_WORKSPACE_BYTES)
        }
        .result()
        .map_err(|e| device_error("setting cuBLAS's workspace", e))?;
        let sm_count = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| device_error("reading the multiprocessor count", e))?
            as usize;
        let shared_mem_per_block = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(|e| device_error("reading the shared memory per block", e))?
            as usize;
        Ok(CudaDevice {
            ctx,
            stream,
            blas,
            _blas_workspace: workspace,
            sm_count,
            shared_mem_per_block,
        })
    }

    /// "cuda:0 (NVIDIA H200, 140 GiB)".
    pub fn describe(&self) -> String {
        let name = self.ctx.name().unwrap_or_else(|_| "unnamed GPU".into());
        let total = self.memory_info().map_or(0, |(_, t)| t);
        format!(
            "cuda:{} ({name}, {:.0} GiB)",
            self.ctx.ordinal(),
            total as f64 / (1u64 << 30) as f64
        )
    }

    /// Free and total bytes of the GPU's memory.
    pub fn memory_info(&self) -> Result<(usize, usize)> {
        self.ctx
            .mem_get_info()
            .map_err(|e| device_error("reading the free memory", e))
    }

    /// The stream as the launchers take it.
    pub fn raw_stream(&self) -> *mut c_void {
        self.stream.cu_stream() as *mut c_void
    }

    /// Makes this device's context current on the calling thread (the
    /// launchers use the runtime API, which works on the current context).
    pub fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| device_error("binding the context", e))
    }

    pub fn alloc_zeros<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        len: usize,
    ) -> Result<CudaSlice<T>> {
        self.stream
            .alloc_zeros::<T>(len.max(1))
            .map_err(|e| device_error("allocating device memory", e))
    }

    /// `len` values (at least one) that the caller writes before anything
    /// reads them: no zero-fill (a kernel launch) where an op overwrites them.
    pub fn alloc_uninit<T: cudarc::driver::DeviceRepr>(&self, len: usize) -> Result<CudaSlice<T>> {
        // SAFETY: the memory is only handed to kernels, which write it before
        // they read it (every caller's contract); no host code reads it.
        unsafe { self.stream.alloc::<T>(len.max(1)) }
            .map_err(|e| device_error("allocating device memory", e))
    }

    pub fn upload<T: cudarc::driver::DeviceRepr>(&self, data: &[T]) -> Result<CudaSlice<T>> {
        if data.is_empty() {
            // SAFETY: a one-element allocation nothing reads.
            return unsafe { self.stream.alloc::<T>(1) }
                .map_err(|e| device_error("allocating device memory", e));
        }
        self.stream
            .clone_htod(data)
            .map_err(|e| device_error("copying to the GPU", e))
    }

    pub fn download<T: cudarc::driver::DeviceRepr>(&self, buf: &CudaSlice<T>) -> Result<Vec<T>> {
        let v = self
            .stream
            .clone_dtoh(buf)
            .map_err(|e| device_error("copying from the GPU", e))?;
        self.synchronize()?;
        Ok(v)
    }

    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| device_error("synchronizing", e))
    }
}

/// Keeps memory freed to the device's default pool (where stream-ordered
/// allocations come from) instead of returning it to the driver at each
/// synchronization: steps reuse it without new allocations, and the pool's
/// size after a profiling step is that step's peak, which sizes the KV cache.
fn keep_freed_memory(ctx: &Arc<CudaContext>) -> Result<()> {
    use cudarc::driver::sys;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold = u64::MAX;
    // SAFETY: the context is current (bound above); both out-pointers are live.
    unsafe {
        ctx.bind_to_thread()
            .map_err(|e| device_error("binding the context", e))?;
        sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device())
            .result()
            .map_err(|e| device_error("reading the memory pool", e))?;
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
        .result()
        .map_err(|e| device_error("setting the memory pool's release threshold", e))
    }
}

/// The device address of a buffer, for a launcher.
pub fn ptr<T>(buf: &CudaSlice<T>, stream: &Arc<CudaStream>) -> *const c_void {
    let (p, _sync) = buf.device_ptr(stream);
    p as usize as *const c_void
}

/// The device address of a buffer the launcher writes.
pub fn ptr_mut<T>(buf: &mut CudaSlice<T>, stream: &Arc<CudaStream>) -> *mut c_void {
    let (p, _sync) = buf.device_ptr_mut(stream);
    p as usize as *mut c_void
}
