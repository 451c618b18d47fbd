//! The KV cache's size on a device without memory of its own (the CPU),
//! when none is asked for: as vLLM's CPU backend sizes it.

use crate::error::{Error, Result};
use crate::memory::human_bytes;

/// vLLM's CPU backend sizes its KV cache from this variable (GiB).
pub(super) const CPU_KV_SPACE_VAR: &str = "VLLM_CPU_KVCACHE_SPACE";

/// The KV cache's default size where the device has no memory of its own:
/// `space_gib` GiB where `VLLM_CPU_KVCACHE_SPACE` says so, as vLLM; else as
/// many blocks as vLLM's default of 4 GiB holds (at most half the machine's
/// memory), but never fewer than four sequences of `max_model_len`
/// (`seq_blocks` blocks each).
pub(super) fn host_kv_blocks(
    space_gib: Option<&str>,
    bytes_per_block: usize,
    seq_blocks: usize,
    host_memory: Option<usize>,
) -> Result<(usize, String)> {
    const GIB: usize = 1 << 30;
    let per_block = bytes_per_block.max(1);
    if let Some(text) = space_gib.filter(|t| !t.trim().is_empty() && t.trim() != "0") {
        // vLLM takes a whole number of GiB; 0 (or nothing) means its default.
        let gib = text
            .trim()
            .parse::<usize>()
            .ok()
            .and_then(|g| g.checked_mul(GIB))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "{CPU_KV_SPACE_VAR} must be a whole number of GiB, got {text:?}"
                ))
            })?;
        return Ok((
            gib / per_block,
            format!("{CPU_KV_SPACE_VAR}={}", text.trim()),
        ));
    }
    let budget = host_memory.map_or(4 * GIB, |m| (m / 2).min(4 * GIB));
    let four_seqs = seq_blocks.saturating_mul(4);
    let blocks = (budget / per_block).max(four_seqs);
    let how = if blocks == four_seqs {
        format!("the default (four sequences of max_model_len, {four_seqs} blocks)")
    } else {
        format!(
            "the default ({} of KV cache, as vLLM's CPU backend)",
            human_bytes(budget)
        )
    };
    Ok((blocks, how))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;
    const GIB: usize = 1 << 30;

    #[test]
    fn the_default_is_4_gib_at_most_half_the_machine_and_four_whole_sequences() {
        let blocks = |seq_blocks, host| host_kv_blocks(None, MIB, seq_blocks, host).unwrap().0;
        assert_eq!(blocks(10, Some(64 * GIB)), 4096);
        assert_eq!(blocks(10, None), 4096);
        assert_eq!(blocks(10, Some(4 * GIB)), 2048);
        // Four sequences of max_model_len win over the budget.
        assert_eq!(blocks(2000, Some(64 * GIB)), 8000);
        let (_, how) = host_kv_blocks(None, MIB, 2000, Some(64 * GIB)).unwrap();
        assert!(how.contains("four sequences of max_model_len"), "{how}");
    }

    #[test]
    fn vllms_variable_sets_the_size_in_gib() {
        let sized = |v: &str| host_kv_blocks(Some(v), MIB, 10, Some(64 * GIB));
        assert_eq!(sized("8").unwrap().0, 8192);
        assert_eq!(sized(" 2 ").unwrap().0, 2048);
        assert!(sized("8").unwrap().1.contains("VLLM_CPU_KVCACHE_SPACE=8"));
        // 0 or empty: vLLM's default.
        assert_eq!(sized("0").unwrap().0, 4096);
        assert_eq!(sized("").unwrap().0, 4096);
        for bad in ["-1", "1.5", "lots", "99999999999999999999"] {
            let e = sized(bad).unwrap_err().to_string();
            assert!(
                e.contains("VLLM_CPU_KVCACHE_SPACE must be a whole number of GiB"),
                "{e}"
            );
        }
    }
}
