//! The CPU's collectives: the ranks of a tensor-parallel group are threads of
//! one process, so a collective is a barrier over per-rank slots. Sums run in
//! rank order on every rank, so every rank gets the same bits and a run is
//! deterministic whatever the threads' timing.
//!
//! A rank that fails (an error or a panic) breaks the group: the ranks waiting
//! in a collective, and every later collective, get an error instead of
//! waiting forever for it.

use std::sync::{Arc, Condvar, Mutex, PoisonError};

use crate::backend::Shard;
use crate::error::{Error, Result};

/// What the ranks share.
struct Group {
    world: usize,
    /// Each rank's contribution to the collective under way.
    slots: Vec<Mutex<Vec<f32>>>,
    barrier: Mutex<BarrierState>,
    arrived: Condvar,
}

#[derive(Default)]
struct BarrierState {
    waiting: usize,
    generation: u64,
    broken: bool,
}

/// One rank's end of an in-process group.
pub struct CpuComm {
    pub shard: Shard,
    group: Arc<Group>,
}

impl CpuComm {
    /// The `world` ends of a new group, in rank order.
    pub fn group(world: usize) -> Vec<CpuComm> {
        let group = Arc::new(Group {
            world,
            slots: (0..world).map(|_| Mutex::new(Vec::new())).collect(),
            barrier: Mutex::new(BarrierState::default()),
            arrived: Condvar::new(),
        });
        (0..world)
            .map(|rank| CpuComm {
                shard: Shard { rank, world },
                group: group.clone(),
            })
            .collect()
    }

    /// Marks the group broken: this rank will not reach the next barrier.
    pub fn abort(&self) {
        let mut state = self.lock_barrier();
        state.broken = true;
        self.group.arrived.notify_all();
    }

    fn lock_barrier(&self) -> std::sync::MutexGuard<'_, BarrierState> {
        self.group
            .barrier
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until every rank has arrived, or the group is broken.
    fn wait(&self) -> Result<()> {
        let mut state = self.lock_barrier();
        let broken = || Error::Device("tensor parallel: another rank failed".into());
        if state.broken {
            return Err(broken());
        }
        state.waiting += 1;
        if state.waiting == self.group.world {
            state.waiting = 0;
            state.generation += 1;
            self.group.arrived.notify_all();
            return Ok(());
        }
        let generation = state.generation;
        while state.generation == generation && !state.broken {
            state = self
                .group
                .arrived
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if state.generation == generation {
            return Err(broken());
        }
        Ok(())
    }

    fn publish(&self, values: &[f32]) {
        let mut slot = self.group.slots[self.shard.rank]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        slot.clear();
        slot.extend_from_slice(values);
    }

    /// Runs `read` over the ranks' slots once all have published `values`;
    /// no rank publishes again until every rank has read.
    fn exchange(&self, values: &[f32], read: &mut dyn FnMut(usize, &[f32])) -> Result<()> {
        self.publish(values);
        self.wait()?;
        for (rank, slot) in self.group.slots.iter().enumerate() {
            read(rank, &slot.lock().unwrap_or_else(PoisonError::into_inner));
        }
        self.wait()
    }

    /// `buf = Σ_rank buf`, summed in rank order.
    pub fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        let mut sum = vec![0f32; buf.len()];
        let mut lengths_agree = true;
        self.exchange(buf, &mut |rank, slot| {
            if slot.len() != sum.len() {
                lengths_agree = false;
            } else if rank == 0 {
                sum.copy_from_slice(slot);
            } else {
                sum.iter_mut().zip(slot).for_each(|(s, v)| *s += v);
            }
        })?;
        if !lengths_agree {
            return Err(Error::Device(
                "tensor parallel: all_reduce_sum over buffers of different lengths".into(),
            ));
        }
        buf.copy_from_slice(&sum);
        Ok(())
    }

    /// `out = [rank 0's local | rank 1's local | ...]`.
    pub fn all_gather(&self, local: &[f32], out: &mut [f32]) -> Result<()> {
        let n = local.len();
        if out.len() != n * self.group.world {
            return Err(Error::Device(format!(
                "tensor parallel: all_gather of {n} values into {} (world {})",
                out.len(),
                self.group.world
            )));
        }
        let mut lengths_agree = true;
        self.exchange(local, &mut |rank, slot| {
            if slot.len() == n {
                out[rank * n..(rank + 1) * n].copy_from_slice(slot);
            } else {
                lengths_agree = false;
            }
        })?;
        if !lengths_agree {
            return Err(Error::Device(
                "tensor parallel: all_gather over buffers of different lengths".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_ranks<T: Send>(world: usize, f: impl Fn(CpuComm) -> T + Sync) -> Vec<T> {
        let comms = CpuComm::group(world);
        std::thread::scope(|s| {
            let handles: Vec<_> = comms
                .into_iter()
                .map(|c| {
                    let f = &f;
                    s.spawn(move || f(c))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn all_reduce_sums_in_rank_order_on_every_rank() {
        let out = on_ranks(4, |c| {
            let r = c.shard.rank as f32;
            let mut results = Vec::new();
            // Several collectives in a row: the slots must not be overwritten early.
            for step in 0..50 {
                let mut buf = vec![r + step as f32, 1e8 * (r - 1.5), 0.1 * r];
                c.all_reduce_sum(&mut buf).unwrap();
                results.push(buf);
            }
            results
        });
        for step in 0..50 {
            let s = step as f32;
            let expected0 = ((s + (1.0 + s)) + (2.0 + s)) + (3.0 + s);
            let expected2 = ((0.0f32 + 0.1) + 0.2) + 0.3;
            for rank in &out {
                assert_eq!(rank[step][0], expected0);
                assert_eq!(
                    rank[step][1],
                    1e8 * -1.5 + 1e8 * -0.5 + 1e8 * 0.5 + 1e8 * 1.5
                );
                assert_eq!(rank[step][2].to_bits(), expected2.to_bits());
            }
        }
    }

    #[test]
    fn all_gather_concatenates_in_rank_order() {
        let out = on_ranks(3, |c| {
            let r = c.shard.rank as f32;
            let mut out = vec![0.0; 6];
            c.all_gather(&[r, 10.0 * r], &mut out).unwrap();
            out
        });
        for o in out {
            assert_eq!(o, vec![0.0, 0.0, 1.0, 10.0, 2.0, 20.0]);
        }
    }

    #[test]
    fn a_failed_rank_releases_the_others_with_an_error() {
        let out = on_ranks(3, |c| {
            if c.shard.rank == 1 {
                c.abort();
                return None;
            }
            let mut buf = vec![1.0];
            Some(c.all_reduce_sum(&mut buf).unwrap_err().to_string())
        });
        for msg in out.into_iter().flatten() {
            assert!(msg.contains("another rank failed"), "{msg}");
        }
    }
}
