//! The model's ranks (one for an unsharded model, `world` for tensor
//! parallelism), each with its own KV pools, stepped in lockstep: the engine
//! schedules once and hands every rank the same step; each rank runs it on a
//! thread of its own (the collectives inside the forward pass wait for all),
//! and rank 0's logits, gathered over the vocabulary, come back to the host.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::backend::{Backend, KvPoolShape, StepMeta};
use crate::error::{Error, Result};

use super::{KvPools, Model};

struct Rank<B: Backend> {
    model: Model<B>,
    kv: KvPools<B>,
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
    /// The ranks in rank order; their KV pools of `num_blocks` blocks each.
    pub fn new(models: Vec<Model<B>>, num_blocks: usize, block_size: usize) -> Result<Self> {
        if models.is_empty() {
            return Err(Error::invalid("a model group needs at least one rank"));
        }
        let world = models.len();
        let ranks = models
            .into_iter()
            .map(|model| {
                let kv = KvPools::new(&model, num_blocks, block_size)?;
                Ok(Rank { model, kv })
            })
            .collect::<Result<Vec<_>>>()?;
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

    /// Rank 0's model: the config, the limits and the backend the engine reports.
    pub fn lead(&self) -> &Model<B> {
        &self.ranks[0].model
    }

    pub fn world(&self) -> usize {
        self.ranks.len()
    }

    /// One rank's pool geometry (every rank's is the same).
    pub fn kv_shape(&self) -> KvPoolShape {
        self.ranks[0].kv.shape
    }

    /// Runs `meta` on every rank; returns the logits of `meta.logits_rows`,
    /// `[rows, vocab]`.
    pub fn forward(&mut self, meta: StepMeta) -> Result<Vec<f32>> {
        let results = self.on_ranks(&|rank: &mut Rank<B>, lead| {
            let be = rank.model.backend();
            let meta = be.prepare_step(meta.clone())?;
            let logits = rank.model.forward(&meta, &mut rank.kv)?;
            if lead {
                rank.model.logits_to_host(&logits)
            } else {
                Ok(Vec::new())
            }
        })?;
        Ok(results.into_iter().next().unwrap_or_default())
    }

    /// As [`ModelGroup::forward`], but rank 0's logits stay on its device
    /// (`[rows, vocab]`), for the batched sampling op. A tensor-parallel
    /// group's vocabulary slices are gathered on the host and uploaded back.
    pub fn forward_on_device(&mut self, meta: StepMeta) -> Result<B::Buffer> {
        let sharded = self.world() > 1;
        let results = self.on_ranks(&|rank: &mut Rank<B>, lead| {
            let be = rank.model.backend();
            let meta = be.prepare_step(meta.clone())?;
            let logits = rank.model.forward(&meta, &mut rank.kv)?;
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

    /// [`ModelGroup::forward_on_device`]'s logits on the host.
    pub fn logits_to_host(&self, logits: &B::Buffer) -> Result<Vec<f32>> {
        self.lead().backend().download(logits)
    }

    /// Copies whole KV blocks `src -> dst` in every layer of every rank.
    pub fn copy_blocks(&mut self, pairs: &[(u32, u32)]) -> Result<()> {
        self.on_ranks(&|rank: &mut Rank<B>, _| {
            let be = rank.model.backend();
            let shape = rank.kv.shape;
            for (k, v) in rank.kv.pools.iter_mut() {
                be.copy_blocks(k, shape, pairs)?;
                be.copy_blocks(v, shape, pairs)?;
            }
            Ok(())
        })
        .map(drop)
    }

    /// Runs `work(rank, is_rank_0)` on every rank at once, each on its own
    /// thread; the first error wins. A rank that fails releases the others
    /// from the collectives they wait in.
    fn on_ranks<T: Send>(
        &mut self,
        work: &(dyn Fn(&mut Rank<B>, bool) -> Result<T> + Sync),
    ) -> Result<Vec<T>> {
        let run = |rank: &mut Rank<B>, lead: bool| -> Result<T> {
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                rank.model.backend().bind_thread()?;
                work(rank, lead)
            }))
            .unwrap_or_else(|panic| Err(Error::Device(panic_message(&panic))));
            if outcome.is_err() {
                rank.model.abort_collectives();
            }
            outcome
        };
        if self.threads.is_empty() {
            return self.ranks.iter_mut().map(|r| run(r, true)).collect();
        }
        let threads = &self.threads;
        std::thread::scope(|scope| {
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
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|p| Err(Error::Device(panic_message(&p))))
                })
                .collect()
        })
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into());
    format!("tensor parallel: a rank failed: {what}")
}
