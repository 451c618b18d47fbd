//! The batched sampling op on the CPU: each row copied out of the logits and
//! run through the host sampler, rows in parallel on the pool (one row is
//! O(vocab) of work, tens of µs or more, above a task's cost).

use std::cell::Cell;

use rayon::prelude::*;

use crate::backend::{HostRowSampler, SampleBatch, SampleRow, SampledRow};
use crate::error::Result;

thread_local! {
    /// The row being sampled, kept between steps: a fresh vocabulary-sized
    /// buffer is a fresh mapping whose pages fault in on every step.
    static ROW: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

pub(super) fn sample_rows(
    logits: &[f32],
    batch: &SampleBatch,
    host: &dyn HostRowSampler,
) -> Result<Vec<SampledRow>> {
    batch.check(logits.len())?;
    let vocab = batch.vocab;
    let sample = |r: &SampleRow| {
        let start = r.logits_row * vocab;
        // Taken out and put back, not borrowed: a thread that runs another
        // row meanwhile (rayon work-stealing) finds it empty, not locked.
        let mut row = ROW.take();
        row.clear();
        row.extend_from_slice(&logits[start..start + vocab]);
        let sampled = host.sample_row(&mut row, r);
        ROW.set(row);
        sampled
    };
    // One row runs here: from outside rayon's pool, a parallel iterator
    // first hands its work to a pool thread and waits for it.
    if let [r] = &batch.rows[..] {
        return Ok(vec![sample(r)]);
    }
    Ok(batch.rows.par_iter().map(sample).collect())
}
