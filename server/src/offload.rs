//! Tokenizing and chat-template rendering run on tokio's blocking pool, not on
//! the async runtime's threads, so /health and every other connection stay
//! responsive while a large prompt is processed. Large jobs also wait for one
//! of a few slots, which bounds the memory and CPU that big bodies can take at
//! once.

use tokio::sync::Semaphore;

use crate::error::{ApiError, ApiResult};

/// Texts at least this large take a slot.
pub const LARGE_BYTES: usize = 256 * 1024;

/// Slots for large jobs: one per core, at least two.
pub fn large_job_slots() -> Semaphore {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    Semaphore::new(cores.max(2))
}

/// Runs `f` on the blocking pool; `size` (bytes of text it works on) decides
/// whether it waits for a slot in `slots` first.
pub async fn run<T: Send + 'static>(
    slots: &Semaphore,
    size: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> ApiResult<T> {
    let _slot = if size >= LARGE_BYTES {
        Some(
            slots
                .acquire()
                .await
                .map_err(|_| ApiError::unavailable("The server is shutting down."))?,
        )
    } else {
        None
    };
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("tokenizing failed: {e}")))
}
