//! The batched sampling op on the CPU: each row copied out of the logits and
//! run through the host sampler, rows in parallel on the pool (one row is
//! O(vocab) of work, ~0.1-1 ms, well above a task's cost).

use rayon::prelude::*;

use crate::backend::{HostRowSampler, SampleBatch, SampledRow};
use crate::error::Result;

pub(super) fn sample_rows(
    logits: &[f32],
    batch: &SampleBatch,
    host: &dyn HostRowSampler,
) -> Result<Vec<SampledRow>> {
    batch.check(logits.len())?;
    let vocab = batch.vocab;
    Ok(batch
        .rows
        .par_iter()
        .map(|r| {
            let start = r.logits_row * vocab;
            let mut row = logits[start..start + vocab].to_vec();
            host.sample_row(&mut row, r)
        })
        .collect())
}
