//! Decode steps through CUDA graphs (on with `ENGINE_CUDA_GRAPHS=1` until
//! they have run on a GPU). A step of B one-row sequences is padded to its
//! bucket, the next power of two. A bucket's first step runs eagerly on the
//! bucket's own metadata buffers and activation state — the warm-up: buffers
//! sized, kernels loaded, and this step's logits — and then its ops are
//! captured into a graph (capture runs nothing). Later steps of the bucket
//! copy their metadata into those buffers and launch the graph. A graph's
//! launch arguments are fixed, so per bucket the block-table width and the
//! split-K partition count of decode attention are those of `max_model_len`.
//! Padding rows: token 0 at position 0, no KV write (slot -1), attending to
//! one position of block 0; their logits are never read. If a capture fails,
//! every step runs eagerly from then on (said once in the log). A
//! tensor-parallel rank captures its NCCL collectives with the rest; its
//! logits are the ranks' gathered slices, each losing its padding rows. In a
//! group of several ranks a failed capture is the step's error instead: the
//! ranks must all replay or all run eagerly.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Mutex;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaGraph;

use super::meta::{CudaMeta, MetaArrays};
use super::{CudaBackend, CudaBuffer};
use crate::backend::{Backend, GraphForward, GraphLimits, StepMeta};
use crate::error::{Error, Result};

/// The graphs of one backend, by bucket.
pub(super) struct Graphs {
    limits: GraphLimits,
    /// Block-table width of every graph: `max_model_len` in blocks.
    max_blocks: usize,
    buckets: Mutex<Buckets>,
}

#[derive(Default)]
struct Buckets {
    entries: HashMap<usize, Entry>,
    /// A capture failed: no more graphs.
    failed: bool,
}

/// One bucket's graph and everything it reads and writes.
struct Entry {
    graph: Graph,
    meta: CudaMeta,
    /// The caller's per-step state (the model's activation buffers).
    _state: Box<dyn Any + Send>,
    /// `[bucket, vocab]` f32, written by every launch.
    logits: CudaBuffer,
}

/// cudarc's graph, which is not `Send`: a CUDA graph may be used from any
/// thread as long as no two use it at once.
struct Graph(CudaGraph);

// SAFETY: the graph is only used under `Graphs::buckets`' lock.
unsafe impl Send for Graph {}

impl Graphs {
    pub(super) fn new(limits: GraphLimits) -> Graphs {
        Graphs {
            limits,
            max_blocks: limits
                .max_model_len
                .div_ceil(limits.block_size.max(1))
                .max(1),
            buckets: Mutex::new(Buckets::default()),
        }
    }

    /// Graphs captured so far.
    pub(super) fn captured(&self) -> usize {
        self.buckets.lock().map_or(0, |b| b.entries.len())
    }

    /// The bucket of a step the graphs take: every sequence one row, the
    /// logits of every row in order, within the limits.
    fn bucket(&self, m: &StepMeta) -> Option<usize> {
        let n = m.num_seqs();
        let decode = n > 0 && m.num_tokens() == n && m.leading_decode_seqs() == n;
        let in_order =
            m.logits_rows.len() == n && m.logits_rows.iter().enumerate().all(|(i, &r)| i == r);
        let fits = n <= self.limits.max_seqs
            && m.block_size == self.limits.block_size
            && m.block_tables.iter().all(|t| t.len() <= self.max_blocks);
        (decode && in_order && fits).then(|| n.next_power_of_two())
    }

    /// `m` with padding sequences up to `bucket`.
    fn padded(m: &StepMeta, bucket: usize) -> StepMeta {
        let pad = bucket - m.num_seqs();
        let mut p = m.clone();
        p.token_ids.extend(std::iter::repeat_n(0, pad));
        p.positions.extend(std::iter::repeat_n(0, pad));
        p.slot_mapping.extend(std::iter::repeat_n(-1, pad));
        p.query_start = (0..=bucket).collect();
        p.context_lens.extend(std::iter::repeat_n(1, pad));
        p.block_tables.extend(std::iter::repeat_n(vec![0], pad));
        p.logits_rows = (0..bucket).collect();
        p
    }
}

impl CudaBackend {
    /// [`Backend::graph_step`] on this backend.
    pub(super) fn step_through_graph<S: Send + 'static>(
        &self,
        meta: &CudaMeta,
        spare: &mut Option<CudaBuffer>,
        new_state: &mut dyn FnMut() -> Result<S>,
        forward: &mut GraphForward<'_, CudaBackend, S>,
    ) -> Result<Option<CudaBuffer>> {
        let Some(graphs) = &self.graphs else {
            return Ok(None);
        };
        // A synchronization inside a capture is an error.
        let Some(bucket) = graphs.bucket(&meta.host).filter(|_| !self.sync_each_op) else {
            return Ok(None);
        };
        let mut buckets = graphs
            .buckets
            .lock()
            .map_err(|_| Error::Device("cuda: the graph table was poisoned".into()))?;
        if buckets.failed {
            return Ok(None);
        }
        let rows = meta.host.num_seqs();
        let padded = Graphs::padded(&meta.host, bucket);
        let arrays = MetaArrays::new(&padded, graphs.max_blocks)?;
        if let Some(entry) = buckets.entries.get_mut(&bucket) {
            entry
                .meta
                .copy_in(&self.dev, &arrays, &padded.slot_mapping)?;
            entry
                .graph
                .0
                .launch()
                .map_err(|e| super::device_error("launching a CUDA graph", e))?;
            return self
                .logits_rows(&entry.logits, rows, bucket, spare)
                .map(Some);
        }
        let max_context = graphs.limits.max_model_len;
        let own_meta = CudaMeta::upload(&self.dev, &arrays, padded, Some(max_context))?;
        let mut state = new_state()?;
        // The warm-up is this step, run eagerly on the bucket's buffers.
        let logits = forward(&own_meta, &mut state, None)?;
        let out = self.logits_rows(&logits, rows, bucket, spare)?;
        // A fault of the warm-up is this step's error, not a failed capture.
        self.dev.synchronize()?;
        match self.capture(&own_meta, &mut state, logits, forward) {
            Ok((graph, logits)) => {
                buckets.entries.insert(
                    bucket,
                    Entry {
                        graph: Graph(graph),
                        meta: own_meta,
                        _state: Box::new(state),
                        logits,
                    },
                );
            }
            Err(e) if graphs.limits.logits_parts > 1 => {
                // The other ranks may have captured theirs: this rank's eager
                // steps would meet their replays' collectives with other
                // sizes (a hang, or garbage). Failing the step fails the group.
                buckets.failed = true;
                return Err(Error::Device(format!(
                    "cuda graphs: capturing a decode step of {bucket} sequences failed on a \
                     tensor-parallel rank ({e}); --enforce-eager runs without graphs"
                )));
            }
            Err(e) => {
                buckets.failed = true;
                eprintln!(
                    "engine: cuda graphs: capturing a decode step of {bucket} sequences failed \
                     ({e}); decode steps run eagerly from now on"
                );
            }
        }
        Ok(Some(out))
    }

    /// The ops `forward` issues, captured (not run) into a graph, and the
    /// logits buffer its launches write.
    fn capture<S>(
        &self,
        meta: &CudaMeta,
        state: &mut S,
        logits: CudaBuffer,
        forward: &mut GraphForward<'_, CudaBackend, S>,
    ) -> Result<(CudaGraph, CudaBuffer)> {
        let stream = &self.dev.stream;
        stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| super::device_error("starting a graph capture", e))?;
        // (Were `forward` to fail here, its logits buffer would be freed
        // only in the discarded graph: one buffer lost, once.)
        let captured = forward(meta, state, Some(logits));
        // The capture ends whatever happened inside it.
        let graph = stream.end_capture(CUgraphInstantiate_flags(0));
        let logits = captured?;
        match graph {
            Ok(Some(graph)) => Ok((graph, logits)),
            Ok(None) => Err(Error::Device("cuda: the graph capture was empty".into())),
            Err(e) => Err(super::device_error("capturing a CUDA graph", e)),
        }
    }

    /// The first `rows` rows of each part of `[bucket, slice]` of a graph's
    /// logits, copied into `spare` (resized) or a new buffer.
    fn logits_rows(
        &self,
        logits: &CudaBuffer,
        rows: usize,
        bucket: usize,
        spare: &mut Option<CudaBuffer>,
    ) -> Result<CudaBuffer> {
        let parts = self.graphs.as_ref().map_or(1, |g| g.limits.logits_parts);
        let copies = row_copies(logits.len(), bucket, rows, parts);
        let len = copies.iter().map(|&(_, _, n)| n).sum();
        let mut out = match spare.take() {
            Some(mut buf) => {
                self.resize(&mut buf, len)?;
                buf
            }
            None => self.alloc_logits(len)?,
        };
        for (from, to, n) in copies {
            out.copy_range_from(&self.dev, to, logits, from, n)?;
        }
        Ok(out)
    }
}

/// The copies `(from, to, len)` that take a step's `rows` out of `total`
/// logits padded to `bucket` rows: one per part of `[bucket, slice]` (a
/// tensor-parallel group's vocabulary slices, gathered rank by rank), into
/// parts of `[rows, slice]` back to back.
fn row_copies(
    total: usize,
    bucket: usize,
    rows: usize,
    parts: usize,
) -> Vec<(usize, usize, usize)> {
    let part = total / parts.max(1);
    let take = part / bucket.max(1) * rows;
    (0..parts).map(|p| (p * part, p * take, take)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graphs() -> Graphs {
        Graphs::new(GraphLimits {
            max_seqs: 64,
            max_model_len: 100,
            block_size: 16,
            logits_parts: 1,
        })
    }

    /// `n` decoding sequences, sequence `s` at `10 + s` tokens.
    fn decode_step(n: usize) -> StepMeta {
        StepMeta {
            token_ids: (0..n as u32).map(|s| 100 + s).collect(),
            positions: (0..n as u32).map(|s| 9 + s).collect(),
            slot_mapping: (0..n as i64).map(|s| 16 * s + 9).collect(),
            query_start: (0..=n).collect(),
            context_lens: (0..n).map(|s| 10 + s).collect(),
            block_tables: (0..n as u32).map(|s| vec![s]).collect(),
            logits_rows: (0..n).collect(),
            block_size: 16,
        }
    }

    #[test]
    fn decode_steps_within_the_limits_take_the_next_power_of_two() {
        let g = graphs();
        assert_eq!(g.max_blocks, 7, "100 tokens in blocks of 16");
        for (n, bucket) in [(1, 1), (2, 2), (3, 4), (5, 8), (33, 64), (64, 64)] {
            assert_eq!(g.bucket(&decode_step(n)), Some(bucket), "{n} sequences");
        }
    }

    #[test]
    fn other_steps_run_eagerly() {
        let g = graphs();
        assert_eq!(g.bucket(&StepMeta::default()), None, "empty");
        assert_eq!(g.bucket(&decode_step(65)), None, "past max_seqs");
        let mut prefill = decode_step(2);
        prefill.token_ids.push(7);
        prefill.positions.push(10);
        prefill.slot_mapping.push(26);
        prefill.query_start[2] = 3;
        assert_eq!(g.bucket(&prefill), None, "a sequence with two rows");
        let mut picked = decode_step(3);
        picked.logits_rows = vec![0, 2];
        assert_eq!(g.bucket(&picked), None, "not every row's logits");
        let mut long = decode_step(2);
        long.block_tables[1] = vec![0; 8];
        assert_eq!(g.bucket(&long), None, "a table past max_model_len");
        let mut blocks = decode_step(2);
        blocks.block_size = 32;
        assert_eq!(g.bucket(&blocks), None, "another block size");
    }

    #[test]
    fn each_ranks_slice_of_the_logits_loses_its_padding_rows() {
        // One part: the prefix. 3 of 4 rows of a 5-wide vocabulary.
        assert_eq!(row_copies(20, 4, 3, 1), [(0, 0, 15)]);
        // Two ranks' [4, 5] slices, gathered: each one's first 3 rows, back to back.
        assert_eq!(row_copies(40, 4, 3, 2), [(0, 0, 15), (20, 15, 15)]);
        // A full bucket copies everything.
        assert_eq!(row_copies(40, 4, 4, 2), [(0, 0, 20), (20, 20, 20)]);
    }

    #[test]
    fn padding_rows_write_nothing_and_read_one_position_of_block_zero() {
        let step = decode_step(3);
        let p = Graphs::padded(&step, 4);
        assert_eq!(p.token_ids, [100, 101, 102, 0]);
        assert_eq!(p.positions, [9, 10, 11, 0]);
        assert_eq!(p.slot_mapping, [9, 25, 41, -1]);
        assert_eq!(p.query_start, [0, 1, 2, 3, 4]);
        assert_eq!(p.context_lens, [10, 11, 12, 1]);
        assert_eq!(p.block_tables, [vec![0], vec![1], vec![2], vec![0]]);
        assert_eq!(p.logits_rows, [0, 1, 2, 3]);
        assert_eq!(p.leading_decode_seqs(), 4);
    }
}
