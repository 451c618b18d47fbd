//! Which paged-attention kernel runs a step, decided on the host.

use super::sys;

/// Tokens per partition of the split-K decode kernel (csrc/kernels.h).
pub const PARTITION_SIZE: usize = sys::EK_ATTN_PARTITION_SIZE as usize;

/// The head widths csrc/attention/ is instantiated for.
pub const HEAD_DIMS: [usize; 7] = [16, 32, 64, 80, 96, 128, 256];

/// Query heads one decode block serves, as the launcher picks it for a GQA
/// group of `group` query heads per KV head.
fn heads_per_block(group: usize) -> usize {
    match group {
        1 => 1,
        2..=4 => 4,
        _ => sys::EK_ATTN_MAX_GROUP as usize,
    }
}

/// Blocks per multiprocessor below which a single pass leaves the GPU short
/// of work (a decode block holds 128 threads and 2-3 fit on a multiprocessor
/// by registers; a few waves of them balance the tail).
const MIN_BLOCKS_PER_SM: usize = 8;

/// The number of partitions the decode kernel should split each context
/// into, or 0 for the single-pass kernel: split only when the context spans
/// more than one partition and one block per (sequence, head block) would not
/// give every multiprocessor several blocks.
pub fn decode_partitions(
    num_seqs: usize,
    num_heads: usize,
    num_kv_heads: usize,
    max_context: usize,
    sm_count: usize,
) -> usize {
    let parts = max_context.div_ceil(PARTITION_SIZE);
    if parts <= 1 || num_kv_heads == 0 {
        return 0;
    }
    let group = num_heads / num_kv_heads;
    let blocks = num_seqs * num_kv_heads * group.div_ceil(heads_per_block(group));
    if blocks >= sm_count.max(1) * MIN_BLOCKS_PER_SM {
        0
    } else {
        parts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_contexts_never_split() {
        assert_eq!(decode_partitions(1, 32, 8, PARTITION_SIZE, 132), 0);
        assert_eq!(decode_partitions(1, 32, 8, 1, 132), 0);
    }

    #[test]
    fn few_sequences_with_long_contexts_split() {
        // Batch 64, 4k context, 32 heads / 8 KV heads on 132 multiprocessors:
        // 512 single-pass blocks is under 8 per multiprocessor.
        assert_eq!(decode_partitions(64, 32, 8, 4096, 132), 8);
        assert_eq!(decode_partitions(1, 32, 8, 4097, 132), 9);
    }

    #[test]
    fn large_batches_fill_the_gpu_without_splitting() {
        assert_eq!(decode_partitions(256, 32, 8, 4096, 132), 0);
        // GQA groups of 8 use one block per KV head; MHA one per head.
        assert_eq!(decode_partitions(33, 32, 32, 4096, 132), 0);
        assert_eq!(decode_partitions(33, 64, 8, 4096, 132), 8);
    }
}
