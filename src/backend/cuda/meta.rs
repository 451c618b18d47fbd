//! A step's [`StepMeta`] on the device: uploaded once per step, or, for a
//! step replayed from a CUDA graph, copied into the buffers the graph reads.

use cudarc::driver::CudaSlice;

use super::device::{device_error, CudaDevice};
use super::to_i32;
use crate::backend::StepMeta;
use crate::error::Result;

/// [`StepMeta`] uploaded once per step.
pub struct CudaMeta {
    pub(super) host: StepMeta,
    pub(super) token_ids: CudaSlice<i32>,
    pub(super) positions: CudaSlice<i32>,
    pub(super) slot_mapping: CudaSlice<i64>,
    pub(super) query_start: CudaSlice<i32>,
    pub(super) context_lens: CudaSlice<i32>,
    /// `[num_seqs, max_blocks]`, padded with block 0 (never read past a context).
    pub(super) block_tables: CudaSlice<i32>,
    pub(super) max_blocks: usize,
    /// The first `decode_seqs` sequences have one query row each and go
    /// through the decode kernel ([`StepMeta::leading_decode_seqs`]); the
    /// others through the prefill kernel.
    pub(super) decode_seqs: usize,
    /// The longest context of a decode sequence (what the split-K partition
    /// count of decode attention is chosen for).
    pub(super) decode_max_context: usize,
    /// The most query rows of a prefill sequence.
    pub(super) prefill_max_query_len: usize,
}

/// The device buffers' contents, built on the host.
pub(super) struct MetaArrays {
    token_ids: Vec<i32>,
    positions: Vec<i32>,
    query_start: Vec<i32>,
    context_lens: Vec<i32>,
    block_tables: Vec<i32>,
    max_blocks: usize,
}

impl MetaArrays {
    /// `meta`'s arrays with block tables `max_blocks` wide (at least the
    /// longest table's length).
    pub(super) fn new(meta: &StepMeta, max_blocks: usize) -> Result<MetaArrays> {
        let ints = |v: &[usize], what: &str| -> Result<Vec<i32>> {
            v.iter().map(|&x| to_i32(what, x)).collect()
        };
        let mut block_tables = vec![0i32; meta.num_seqs() * max_blocks];
        for (row, table) in block_tables.chunks_mut(max_blocks).zip(&meta.block_tables) {
            for (dst, &b) in row.iter_mut().zip(table) {
                *dst = to_i32("block id", b as usize)?;
            }
        }
        Ok(MetaArrays {
            token_ids: meta.token_ids.iter().map(|&t| t as i32).collect(),
            positions: meta.positions.iter().map(|&p| p as i32).collect(),
            query_start: ints(&meta.query_start, "query start")?,
            context_lens: ints(&meta.context_lens, "context length")?,
            block_tables,
            max_blocks,
        })
    }

    /// The width that fits every table of `meta` (at least 1).
    pub(super) fn widest_table(meta: &StepMeta) -> usize {
        meta.block_tables
            .iter()
            .map(Vec::len)
            .max()
            .unwrap_or(0)
            .max(1)
    }
}

impl CudaMeta {
    /// `host` on the device; decode attention's partitions are chosen for
    /// `decode_max_context` where given, else for the longest decode context.
    pub(super) fn upload(
        dev: &CudaDevice,
        arrays: &MetaArrays,
        host: StepMeta,
        decode_max_context: Option<usize>,
    ) -> Result<CudaMeta> {
        let decode_seqs = host.leading_decode_seqs();
        let longest = host.context_lens[..decode_seqs].iter().copied().max();
        let query_lens = host.query_start.windows(2).map(|w| w[1] - w[0]);
        let prefill_max_query_len = query_lens.skip(decode_seqs).max().unwrap_or(0);
        Ok(CudaMeta {
            token_ids: dev.upload(&arrays.token_ids)?,
            positions: dev.upload(&arrays.positions)?,
            slot_mapping: dev.upload(&host.slot_mapping)?,
            query_start: dev.upload(&arrays.query_start)?,
            context_lens: dev.upload(&arrays.context_lens)?,
            block_tables: dev.upload(&arrays.block_tables)?,
            max_blocks: arrays.max_blocks,
            decode_seqs,
            decode_max_context: decode_max_context.or(longest).unwrap_or(0),
            prefill_max_query_len,
            host,
        })
    }

    /// Overwrites the device buffers with another step's arrays of the same
    /// shape (`slot_mapping` its slots), leaving their addresses as they are.
    pub(super) fn copy_in(
        &mut self,
        dev: &CudaDevice,
        arrays: &MetaArrays,
        slot_mapping: &[i64],
    ) -> Result<()> {
        let same_shape = arrays.max_blocks == self.max_blocks
            && arrays.token_ids.len() == self.token_ids.len()
            && arrays.block_tables.len() == self.block_tables.len();
        if !same_shape {
            return Err(crate::error::Error::invalid(
                "cuda: a graph's metadata takes steps of its own shape only",
            ));
        }
        let s = &dev.stream;
        let copy = |e| device_error("copying a step's metadata to the GPU", e);
        s.memcpy_htod(&arrays.token_ids, &mut self.token_ids)
            .map_err(copy)?;
        s.memcpy_htod(&arrays.positions, &mut self.positions)
            .map_err(copy)?;
        s.memcpy_htod(slot_mapping, &mut self.slot_mapping)
            .map_err(copy)?;
        s.memcpy_htod(&arrays.query_start, &mut self.query_start)
            .map_err(copy)?;
        s.memcpy_htod(&arrays.context_lens, &mut self.context_lens)
            .map_err(copy)?;
        s.memcpy_htod(&arrays.block_tables, &mut self.block_tables)
            .map_err(copy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_tables_are_padded_to_the_width_with_block_zero() {
        let meta = StepMeta {
            token_ids: vec![5, 6],
            positions: vec![17, 2],
            slot_mapping: vec![33, 50],
            query_start: vec![0, 1, 2],
            context_lens: vec![18, 3],
            block_tables: vec![vec![4, 2], vec![3]],
            logits_rows: vec![0, 1],
            block_size: 16,
        };
        assert_eq!(MetaArrays::widest_table(&meta), 2);
        let a = MetaArrays::new(&meta, 3).unwrap();
        assert_eq!(a.block_tables, [4, 2, 0, 3, 0, 0]);
        assert_eq!((a.token_ids, a.positions), (vec![5, 6], vec![17, 2]));
        assert_eq!(
            (a.query_start, a.context_lens),
            (vec![0, 1, 2], vec![18, 3])
        );
        let mut huge = meta;
        huge.block_tables[0][0] = u32::MAX;
        assert!(MetaArrays::new(&huge, 2).is_err(), "a block id past int32");
    }
}
