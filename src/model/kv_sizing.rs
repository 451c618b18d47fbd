//! How many KV blocks fit on a device (vLLM's `--gpu-memory-utilization`):
//! run the largest step the scheduler can form once, read what the device
//! has used since (weights, that step's peak, anything else on the GPU), and
//! give the KV cache what is left of `utilization × total`.

use super::{KvPools, Model, ModelGroup, StepArena};
use crate::backend::{Backend, DeviceMemory, StepMeta};
use crate::error::{Error, Result};

/// vLLM's default share of the GPU's memory.
pub const DEFAULT_GPU_MEMORY_UTILIZATION: f64 = 0.9;

/// Blocks of `block_size` tokens that fit in `utilization` of each rank's
/// device memory next to its part of the model and a step of `max_tokens`
/// tokens (the fewest any rank has room for: the block tables are shared);
/// `None` on a backend without memory of its own. The profiling step runs on
/// every rank at once, as its collectives need.
pub fn kv_blocks_for_device<B: Backend>(
    group: &mut ModelGroup<B>,
    block_size: usize,
    max_tokens: usize,
    utilization: f64,
) -> Result<Option<usize>> {
    if group.lead().backend().memory_info()?.is_none() {
        return Ok(None);
    }
    let per_rank =
        group.on_each_model(&|model| rank_blocks(model, block_size, max_tokens, utilization))?;
    Ok(per_rank.into_iter().flatten().min())
}

/// [`kv_blocks_for_device`] for one rank.
fn rank_blocks<B: Backend>(
    model: &Model<B>,
    block_size: usize,
    max_tokens: usize,
    utilization: f64,
) -> Result<Option<usize>> {
    let profile_kv_bytes = profile_step(model, block_size, max_tokens)?;
    let Some(memory) = model.backend().memory_info()? else {
        return Ok(None);
    };
    // The profiling step's KV cache is free again, and the real one reuses it.
    let used = (memory.total - memory.free).saturating_sub(profile_kv_bytes);
    let per_block = model.kv_bytes_per_block(block_size);
    blocks_in_budget(memory, used, utilization, per_block, max_tokens).map(Some)
}

/// Blocks of `per_block` bytes in what `utilization` of the device's memory
/// leaves after `used` bytes (weights and a step of `max_tokens` tokens).
fn blocks_in_budget(
    memory: DeviceMemory,
    used: usize,
    utilization: f64,
    per_block: usize,
    max_tokens: usize,
) -> Result<usize> {
    let allowed = (utilization * memory.total as f64) as usize;
    let budget = allowed.saturating_sub(used);
    // Block ids are int32 on the device.
    let num_blocks = (budget / per_block.max(1)).min(i32::MAX as usize);
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    if num_blocks == 0 {
        return Err(Error::invalid(format!(
            "the model does not fit with a KV cache: weights and a step of {max_tokens} tokens \
             use {:.2} GiB of the {:.2} GiB that a GPU memory utilization of {utilization} \
             allows ({:.2} GiB in all), leaving less than one KV block ({per_block} bytes); \
             raise --gpu-memory-utilization, or lower --max-num-batched-tokens or \
             --max-model-len",
            gib(used),
            gib(allowed),
            gib(memory.total),
        )));
    }
    Ok(num_blocks)
}

/// Runs one step of `max_tokens` prompt tokens (as many sequences as the
/// model's length allows each), every row's logits asked for (prompt
/// logprobs), over a KV cache of its own; returns that cache's bytes.
fn profile_step<B: Backend>(
    model: &Model<B>,
    block_size: usize,
    max_tokens: usize,
) -> Result<usize> {
    let tokens = max_tokens.max(1);
    let per_seq = model.max_positions.clamp(1, tokens);
    let lens: Vec<usize> = (0..tokens.div_ceil(per_seq))
        .map(|s| per_seq.min(tokens - s * per_seq))
        .collect();
    let blocks_per_seq: Vec<usize> = lens.iter().map(|l| l.div_ceil(block_size)).collect();
    let num_blocks: usize = blocks_per_seq.iter().sum();
    let mut kv = KvPools::new(model, num_blocks, block_size)?;
    let mut meta = StepMeta {
        block_size,
        query_start: vec![0],
        ..StepMeta::default()
    };
    let mut next_block = 0u32;
    for (&len, &blocks) in lens.iter().zip(&blocks_per_seq) {
        let table: Vec<u32> = (next_block..next_block + blocks as u32).collect();
        next_block += blocks as u32;
        for p in 0..len {
            let block = table[p / block_size] as i64;
            meta.token_ids.push(0);
            meta.positions.push(p as u32);
            meta.slot_mapping
                .push(block * block_size as i64 + (p % block_size) as i64);
        }
        meta.query_start.push(meta.token_ids.len());
        meta.context_lens.push(len);
        meta.block_tables.push(table);
    }
    meta.logits_rows = (0..tokens).collect();
    let be = model.backend();
    let meta = be.prepare_step(meta)?;
    let logits = model.forward(&meta, &mut kv, &mut StepArena::new(be)?)?;
    drop(logits);
    Ok(model.kv_bytes_per_block(block_size) * num_blocks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::DType;
    use crate::config::Arch;
    use crate::fixture::{write_model_dir, FixtureSpec};

    const GIB: usize = 1 << 30;

    #[test]
    fn the_kv_cache_gets_what_the_share_leaves() {
        let memory = DeviceMemory {
            free: 60 * GIB,
            total: 100 * GIB,
        };
        // 90 GiB allowed, 30 used: 60 GiB of 1 MiB blocks.
        let blocks = blocks_in_budget(memory, 30 * GIB, 0.9, 1 << 20, 2048).unwrap();
        assert_eq!(blocks, 60 * 1024);
        let e = blocks_in_budget(memory, 95 * GIB, 0.9, 1 << 20, 2048).unwrap_err();
        let message = e.to_string();
        assert!(
            message.contains("use 95.00 GiB of the 90.00 GiB")
                && message.contains("raise --gpu-memory-utilization"),
            "{message}"
        );
    }

    /// The profiling step runs on the CPU too (the reference for the GPU's),
    /// also when it spans several sequences of the model's length.
    #[test]
    fn the_profiling_step_runs_and_counts_its_kv_cache() {
        let dir = tempfile::tempdir().unwrap();
        let spec = FixtureSpec {
            max_position_embeddings: 40,
            ..FixtureSpec::tiny(Arch::Llama)
        };
        write_model_dir(&spec, dir.path()).unwrap();
        let model = Model::load(dir.path(), DType::F32, None, CpuBackend, &mut |_, _| {}).unwrap();
        // 100 tokens: sequences of 40, 40 and 20 tokens, 3 + 3 + 2 blocks of 16.
        let bytes = profile_step(&model, 16, 100).unwrap();
        assert_eq!(bytes, 8 * model.kv_bytes_per_block(16));
        // No device memory on the CPU: the caller keeps its own rule.
        let mut group = ModelGroup::new(vec![model]).unwrap();
        assert!(kv_blocks_for_device(&mut group, 16, 100, 0.9)
            .unwrap()
            .is_none());
    }

    /// With tensor parallelism every rank profiles at once: one rank alone
    /// would wait forever in its first all-reduce.
    #[test]
    fn every_rank_profiles_in_lockstep() {
        let spec = FixtureSpec {
            max_position_embeddings: 40,
            ..FixtureSpec::tiny(Arch::Llama)
        };
        let mut group = crate::model::group::tests::cpu_ranks(&spec, 2);
        let bytes = group
            .on_each_model(&|model| {
                Ok((profile_step(model, 16, 100)?, model.kv_bytes_per_block(16)))
            })
            .unwrap();
        assert_eq!(bytes.len(), 2);
        for (profiled, per_block) in bytes {
            assert_eq!(profiled, 8 * per_block);
        }
    }
}
