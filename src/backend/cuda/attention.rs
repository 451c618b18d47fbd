//! Which paged-attention kernel runs which sequences of a step, decided on
//! the host, and their launches.

use cudarc::driver::CudaSlice;

use super::{sys, to_i32, CudaBackend, CudaMeta};
use crate::error::Result;

/// Tokens per partition of the split-K decode kernel (csrc/kernels.h).
pub const PARTITION_SIZE: usize = sys::EK_ATTN_PARTITION_SIZE as usize;

/// The head widths csrc/attention/ is instantiated for.
pub const HEAD_DIMS: [usize; 7] = [16, 32, 64, 80, 96, 128, 256];

/// Whether prefill rows run on tensor cores: q in f16 or bf16 (a launcher
/// dtype code), a head width that kernel takes, and its shared memory within
/// what a block may have on this GPU (`shared_mem_per_block`: 99 KiB and
/// more where sm_80 code runs; the check keeps a smaller GPU on the SIMT
/// kernel). f32 models keep the SIMT kernel, which stays in f32 throughout
/// as the CPU backend does.
pub fn tensor_core_prefill(dtype: u32, head_dim: usize, shared_mem_per_block: usize) -> bool {
    let Ok(hd) = i32::try_from(head_dim) else {
        return false;
    };
    // SAFETY: a pure size lookup.
    let bytes = unsafe { sys::ek_paged_attention_prefill_mma_smem_bytes(hd) };
    matches!(dtype, sys::EK_DTYPE_F16 | sys::EK_DTYPE_BF16)
        && usize::try_from(bytes).is_ok_and(|b| b <= shared_mem_per_block)
}

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

impl CudaBackend {
    /// A step's attention: its leading one-row sequences through the decode
    /// kernel (split-K where [`decode_partitions`] says so), the others
    /// through the prefill kernel. `params` describe the whole batch.
    pub(super) fn attention(&self, params: &sys::ek_attn_params, meta: &CudaMeta) -> Result<()> {
        let (seqs, d) = (meta.host.num_seqs(), meta.decode_seqs);
        if d > 0 {
            let decode = sys::ek_attn_params {
                num_seqs: to_i32("sequences", d)?,
                ..*params
            };
            self.decode(&decode, meta.decode_max_context)?;
        }
        if d < seqs {
            // Sequence d's metadata on; query_start holds batch rows, so q
            // and out stay the batch's.
            let prefill = sys::ek_attn_params {
                block_tables: params.block_tables.wrapping_add(d * meta.max_blocks),
                context_lens: params.context_lens.wrapping_add(d),
                query_start: params.query_start.wrapping_add(d),
                num_seqs: to_i32("sequences", seqs - d)?,
                ..*params
            };
            let rows = to_i32("query length", meta.prefill_max_query_len)?;
            let smem = self.dev.shared_mem_per_block;
            if tensor_core_prefill(params.dtype as u32, params.head_dim as usize, smem) {
                // SAFETY: the params describe live buffers of these sequences.
                self.launched("paged_attention_prefill_mma", unsafe {
                    sys::ek_paged_attention_prefill_mma(&prefill, rows, self.stream())
                })?;
            } else {
                // SAFETY: as above.
                self.launched("paged_attention_prefill", unsafe {
                    sys::ek_paged_attention_prefill(&prefill, rows, self.stream())
                })?;
            }
        }
        Ok(())
    }

    /// The decode kernel over `params`' sequences, one query row each.
    fn decode(&self, params: &sys::ek_attn_params, max_context: usize) -> Result<()> {
        let parts = decode_partitions(
            params.num_seqs as usize,
            params.num_heads as usize,
            params.num_kv_heads as usize,
            max_context,
            self.dev.sm_count,
        );
        let mut workspace: Option<CudaSlice<u8>> = None;
        let ws = if parts > 0 {
            // SAFETY: a pure size computation.
            let bytes = unsafe {
                sys::ek_paged_attention_workspace_bytes(
                    params.num_seqs,
                    params.num_heads,
                    params.head_dim,
                    parts as i32,
                )
            };
            // Every partition the reduce reads is written first (it skips
            // the ones without a visible token, whose blocks write nothing).
            let mut buf = self.dev.alloc_uninit::<u8>(bytes as usize)?;
            let p = self.pm(&mut buf);
            workspace = Some(buf);
            p
        } else {
            std::ptr::null_mut()
        };
        // SAFETY: params describe live buffers; the workspace has the size asked for.
        let status =
            unsafe { sys::ek_paged_attention_decode(params, parts as i32, ws, self.stream()) };
        drop(workspace);
        self.launched("paged_attention_decode", status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_cores_take_16_bit_prefill_at_tile_widths_that_fit() {
        const H100: usize = 227 << 10;
        for hd in [16, 32, 64, 80, 96, 128] {
            assert!(tensor_core_prefill(sys::EK_DTYPE_BF16, hd, H100), "{hd}");
            assert!(tensor_core_prefill(sys::EK_DTYPE_F16, hd, H100), "{hd}");
            assert!(!tensor_core_prefill(sys::EK_DTYPE_F32, hd, H100), "{hd}");
        }
        // 256 is not instantiated (its tiles would not fit); 48 is no width
        // the kernels are built for.
        assert!(!tensor_core_prefill(sys::EK_DTYPE_BF16, 256, H100));
        assert!(!tensor_core_prefill(sys::EK_DTYPE_BF16, 48, H100));
        // d 128 takes 93 KiB: within the 99 KiB of an sm_86/sm_89 GPU, past
        // a 64 KiB one, where a narrower head still runs on tensor cores.
        // SAFETY: a pure size lookup.
        let d128 = unsafe { sys::ek_paged_attention_prefill_mma_smem_bytes(128) };
        assert_eq!(d128, 95_232);
        assert!(tensor_core_prefill(sys::EK_DTYPE_BF16, 128, 99 << 10));
        assert!(!tensor_core_prefill(sys::EK_DTYPE_BF16, 128, 64 << 10));
        assert!(tensor_core_prefill(sys::EK_DTYPE_BF16, 64, 64 << 10));
    }

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
