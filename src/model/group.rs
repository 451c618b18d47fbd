//! The model's ranks (one for an unsharded model, `world` for tensor
//! parallelism), each with its own KV pools, stepped in lockstep: the engine
//! schedules once and hands every rank the same step; each rank runs it on a
//! thread of its own (the collectives inside the forward pass wait for all),
//! and rank 0's logits, gathered over the vocabulary, come back to the host.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::backend::{Backend, StepMeta};
use crate::error::{Error, Result};

use super::{KvPools, Model, StepArena};

struct Rank<B: Backend> {
    model: Model<B>,
    /// Allocated once the cache is sized ([`ModelGroup::allocate_kv`]).
    kv: Option<KvPools<B>>,
    /// The activations of the engine's steps, kept from one to the next.
    arena: StepArena<B>,
}

impl<B: Backend> Rank<B> {
    /// Runs one engine step on this rank (see [`Model::forward`]).
    fn forward(&mut self, meta: &StepMeta) -> Result<B::Buffer> {
        let meta = self.model.backend().prepare_step(meta.clone())?;
        let kv = allocated(&mut self.kv)?;
        self.model.forward(&meta, kv, &mut self.arena)
    }
}

/// A rank's KV pools, once allocated.
fn allocated<B: Backend>(kv: &mut Option<KvPools<B>>) -> Result<&mut KvPools<B>> {
    kv.as_mut()
        .ok_or_else(|| Error::invalid("the KV cache is not allocated yet"))
}

/// Every rank of the model with its KV pools; the block tables are shared
/// (one scheduler), so every rank's pools have the same blocks.
pub struct ModelGroup<B: Backend> {
    ranks: Vec<Rank<B>>,
    /// With more than one rank: one pool per rank, its thread and (on the
    /// CPU) its share of the compute threads.
    threads: Vec<rayon::ThreadPool>,
}

impl<B: Backend> ModelGroup<B> {
    /// The ranks in rank order, without a KV cache yet: the cache is sized
    /// (which may run a step on every rank) and then allocated.
    pub fn new(models: Vec<Model<B>>) -> Result<Self> {
        if models.is_empty() {
            return Err(Error::invalid("a model group needs at least one rank"));
        }
        let world = models.len();
        let ranks = models
            .into_iter()
            .map(|model| {
                let arena = StepArena::new(model.backend())?;
                Ok(Rank {
                    model,
                    kv: None,
                    arena,
                })
            })
            .collect::<Result<_>>()?;
        let threads = if world == 1 {
            Vec::new()
        } else {
            // Loading runs on the engine's compute pool: its threads are split.
            let each = (rayon::current_num_threads() / world).max(1);
            (0..world)
                .map(|rank| {
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(each)
                        .thread_name(move |i| format!("engine-tp{rank}-{i}"))
                        .build()
                        .map_err(|e| {
                            Error::invalid(format!("cannot start the threads of rank {rank}: {e}"))
                        })
                })
                .collect::<Result<Vec<_>>>()?
        };
        Ok(ModelGroup { ranks, threads })
    }

    /// Every rank's KV pools: `num_blocks` blocks of `block_size` tokens each
    /// (the block tables are shared, so every rank has as many).
    pub fn allocate_kv(&mut self, num_blocks: usize, block_size: usize) -> Result<()> {
        for rank in &mut self.ranks {
            rank.kv = None; // the old pools go before the new ones are made
            rank.kv = Some(KvPools::new(&rank.model, num_blocks, block_size)?);
        }
        Ok(())
    }

    /// Every rank's model, mutably, for settings made before the cache exists.
    pub fn models_mut(&mut self) -> impl Iterator<Item = &mut Model<B>> {
        self.ranks.iter_mut().map(|r| &mut r.model)
    }

    /// Runs `work` on every rank's model at once, in lockstep (a forward pass
    /// outside the engine's steps, e.g. the KV sizing's profiling step).
    pub fn on_each_model<T: Send>(
        &mut self,
        work: &(dyn Fn(&Model<B>) -> Result<T> + Sync),
    ) -> Result<Vec<T>> {
        self.on_ranks(&|rank: &mut Rank<B>, _| work(&rank.model))
    }

    /// Rank 0's model: the config, the limits and the backend the engine reports.
    pub fn lead(&self) -> &Model<B> {
        &self.ranks[0].model
    }

    pub fn world(&self) -> usize {
        self.ranks.len()
    }

    /// Runs `meta` on every rank; returns the logits of `meta.logits_rows`,
    /// `[rows, vocab]`.
    pub fn forward(&mut self, meta: StepMeta) -> Result<Vec<f32>> {
        let results = self.on_ranks(&|rank: &mut Rank<B>, lead| {
            let logits = rank.forward(&meta)?;
            let host = if lead {
                rank.model.logits_to_host(&logits)
            } else {
                Ok(Vec::new())
            };
            rank.arena.spare_logits = Some(logits);
            host
        })?;
        Ok(results.into_iter().next().unwrap_or_default())
    }

    /// As [`ModelGroup::forward`], but rank 0's logits stay on its device
    /// (`[rows, vocab]`), for the batched sampling op. A tensor-parallel
    /// group's vocabulary slices are gathered on the host and uploaded back.
    pub fn forward_on_device(&mut self, meta: StepMeta) -> Result<B::Buffer> {
        let sharded = self.world() > 1;
        let results = self.on_ranks(&|rank: &mut Rank<B>, lead| {
            let logits = rank.forward(&meta)?;
            let be = rank.model.backend();
            match (lead, sharded) {
                (false, _) => Ok(None),
                (true, false) => Ok(Some(logits)),
                (true, true) => be.upload(&rank.model.logits_to_host(&logits)?).map(Some),
            }
        })?;
        match results.into_iter().next().flatten() {
            Some(logits) => Ok(logits),
            None => Err(Error::Device("no rank returned logits".into())),
        }
    }

    /// Takes [`ModelGroup::forward_on_device`]'s logits back, done with: the
    /// next step writes its logits there instead of into a fresh buffer.
    pub fn recycle_logits(&mut self, logits: B::Buffer) {
        self.ranks[0].arena.spare_logits = Some(logits);
    }

    /// [`ModelGroup::forward_on_device`]'s logits on the host.
    pub fn logits_to_host(&self, logits: &B::Buffer) -> Result<Vec<f32>> {
        self.lead().backend().download(logits)
    }

    /// Copies whole KV blocks `src -> dst` in every layer of every rank.
    pub fn copy_blocks(&mut self, pairs: &[(u32, u32)]) -> Result<()> {
        self.on_ranks(&|rank: &mut Rank<B>, _| {
            let be = rank.model.backend();
            let kv = allocated(&mut rank.kv)?;
            let shape = kv.shape;
            for (k, v) in kv.pools.iter_mut() {
                be.copy_blocks(k, shape, pairs)?;
                be.copy_blocks(v, shape, pairs)?;
            }
            Ok(())
        })
        .map(drop)
    }

    /// Runs `work(rank, is_rank_0)` on every rank at once, each on its own
    /// thread; the first error wins. A rank that fails releases the others
    /// from the collectives they wait in; a rank that panics does so too, and
    /// its panic goes on once every rank has returned (a bug stays a panic,
    /// which the C ABI reports as an internal error).
    fn on_ranks<T: Send>(
        &mut self,
        work: &(dyn Fn(&mut Rank<B>, bool) -> Result<T> + Sync),
    ) -> Result<Vec<T>> {
        if self.threads.is_empty() {
            // One rank: nothing to release, so nothing to catch.
            let rank = &mut self.ranks[0];
            rank.model.backend().bind_thread()?;
            return Ok(vec![work(rank, true)?]);
        }
        let run = |rank: &mut Rank<B>, lead: bool| -> std::thread::Result<Result<T>> {
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                rank.model.backend().bind_thread()?;
                work(rank, lead)
            }));
            if !matches!(outcome, Ok(Ok(_))) {
                rank.model.abort_collectives();
            }
            outcome
        };
        let threads = &self.threads;
        let outcomes: Vec<std::thread::Result<Result<T>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .ranks
                .iter_mut()
                .zip(threads)
                .enumerate()
                .map(|(i, (rank, pool))| {
                    let run = &run;
                    scope.spawn(move || pool.install(|| run(rank, i == 0)))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(Err))
                .collect()
        });
        let mut results = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            match outcome {
                Ok(result) => results.push(result),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        results.into_iter().collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::panic::{catch_unwind, AssertUnwindSafe};

    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::{DType, Shard};
    use crate::config::{Arch, ModelConfig};
    use crate::fixture::{write_model_dir, FixtureSpec};
    use crate::model::weights::Checkpoint;
    use crate::model::TpRank;

    /// The `spec` fixture as `world` CPU ranks, without a KV cache.
    pub(crate) fn cpu_ranks(spec: &FixtureSpec, world: usize) -> ModelGroup<CpuBackend> {
        let dir = tempfile::tempdir().unwrap();
        write_model_dir(spec, dir.path()).unwrap();
        let config = ModelConfig::from_model_dir(dir.path()).unwrap();
        let ckpt = Checkpoint::open(dir.path()).unwrap();
        let comms = CpuBackend.tensor_parallel_group(world).unwrap();
        let models = comms
            .into_iter()
            .enumerate()
            .map(|(rank, (be, comm))| {
                let tp = TpRank {
                    shard: Shard { rank, world },
                    comm,
                };
                let c = config.clone();
                Model::from_source_rank(c, &ckpt, DType::F32, None, be, Some(tp), &mut |_, _| {})
                    .unwrap()
            })
            .collect();
        ModelGroup::new(models).unwrap()
    }

    /// The tiny Llama fixture as `world` CPU ranks with a KV cache.
    fn cpu_group(world: usize) -> ModelGroup<CpuBackend> {
        let mut group = cpu_ranks(&FixtureSpec::tiny(Arch::Llama), world);
        group.allocate_kv(4, 16).unwrap();
        group
    }

    /// Rank 0 fails (`panic` or an error) while rank 1 waits in an all-reduce.
    fn rank_0_fails(group: &mut ModelGroup<CpuBackend>, panic: bool) -> Result<Vec<()>> {
        group.on_ranks(&|rank: &mut Rank<CpuBackend>, lead| {
            if lead && panic {
                panic!("rank 0 broke");
            } else if lead {
                return Err(Error::invalid("rank 0 failed"));
            }
            let mut buf = rank.model.backend().upload(&[1.0; 8])?;
            rank.model.all_reduce(&mut buf)
        })
    }

    /// A step of `(sequence, first position, tokens)` parts; sequence `s`
    /// holds blocks `2s` and `2s + 1` of 16 slots, every token's logits asked for.
    fn step(parts: &[(usize, usize, usize)]) -> StepMeta {
        let mut meta = StepMeta {
            block_size: 16,
            query_start: vec![0],
            ..StepMeta::default()
        };
        for &(seq, start, n) in parts {
            let table = vec![2 * seq as u32, 2 * seq as u32 + 1];
            for p in start..start + n {
                meta.token_ids.push((7 * p + 3 * seq) as u32 % 32);
                meta.positions.push(p as u32);
                meta.slot_mapping
                    .push(i64::from(table[p / 16]) * 16 + (p % 16) as i64);
            }
            meta.query_start.push(meta.token_ids.len());
            meta.context_lens.push(start + n);
            meta.block_tables.push(table);
        }
        meta.logits_rows = (0..meta.token_ids.len()).collect();
        meta
    }

    #[test]
    fn kept_step_buffers_give_the_logits_of_fresh_ones() {
        // Prompts, decodes and chunks of changing sizes, so the kept buffers
        // (and the logits handed back after each step) shrink and grow; they
        // are spoiled with NaN before every step, so no op can lean on what a
        // buffer held (or on zeros).
        let steps = [
            step(&[(0, 0, 7), (1, 0, 5)]),
            step(&[(0, 7, 1), (1, 5, 1)]),
            step(&[(0, 8, 3), (1, 6, 1)]),
            step(&[(1, 7, 9)]),
            step(&[(0, 11, 1)]),
        ];
        for world in [1, 2] {
            let mut kept = cpu_group(world);
            let mut fresh = cpu_group(world);
            for (i, meta) in steps.iter().enumerate() {
                for rank in &mut kept.ranks {
                    for buf in rank.arena.buffers_mut() {
                        buf.fill(f32::NAN);
                    }
                    // The logits the previous step handed back, and a
                    // rank's slice of them, too.
                    let arena = &mut rank.arena;
                    for kept in [&mut arena.spare_logits, &mut arena.local_logits] {
                        if let Some(buf) = kept.as_mut() {
                            buf.fill(f32::NAN);
                        }
                    }
                }
                for rank in &mut fresh.ranks {
                    rank.arena = StepArena::new(&CpuBackend).unwrap();
                }
                let a = kept.forward(meta.clone()).unwrap();
                let b = fresh.forward(meta.clone()).unwrap();
                assert_eq!(a.len(), meta.num_tokens() * 512, "step {i}");
                assert!(a.iter().all(|x| x.is_finite()), "world {world}, step {i}");
                let same = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "world {world}, step {i}: the logits differ");
            }
        }
    }

    #[test]
    fn a_failing_rank_releases_the_others_and_its_error_wins() {
        let mut group = cpu_group(2);
        let err = rank_0_fails(&mut group, false).unwrap_err();
        assert!(err.to_string().contains("rank 0 failed"), "{err}");
    }

    #[test]
    fn a_panicking_rank_releases_the_others_and_stays_a_panic() {
        let mut group = cpu_group(2);
        let caught = catch_unwind(AssertUnwindSafe(|| rank_0_fails(&mut group, true)));
        let panic = caught.expect_err("the panic went on");
        assert_eq!(panic.downcast_ref::<&str>(), Some(&"rank 0 broke"));
    }

    #[test]
    fn one_rank_runs_on_the_callers_thread_and_panics_through() {
        let mut group = cpu_group(1);
        let caller = std::thread::current().id();
        let ran_on = group
            .on_ranks(&|_: &mut Rank<CpuBackend>, _| Ok(std::thread::current().id()))
            .unwrap();
        assert_eq!(ran_on, vec![caller]);
        let caught = catch_unwind(AssertUnwindSafe(|| rank_0_fails(&mut group, true)));
        assert!(caught.is_err());
    }
}
