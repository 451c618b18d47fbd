//! Continuous batching: which tokens of which sequences run in the next step.
//!
//! Each step fills a token budget: first one token for every decoding group,
//! then chunks of prompts already running, then waiting requests in arrival
//! order (FCFS) while sequences, tokens and KV blocks allow. A long prompt is
//! split into chunks so it never stalls running decodes. When KV blocks run out,
//! the newest running group is preempted: its blocks are freed and it is
//! recomputed when it is admitted again, with an unchanged output.

use std::collections::{HashMap, VecDeque};

use crate::kv_cache::block_manager::BlockManager;

use super::sequence::SequenceGroup;

#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
}

/// Tokens `start..end` of one sequence run this step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheduled {
    pub request_id: u64,
    pub seq_index: usize,
    pub start: usize,
    pub end: usize,
}

/// Why a group cannot run this step.
enum NoRoom {
    /// The step's token budget is spent: it runs next step.
    Budget,
    /// KV blocks ran out: someone must be preempted.
    Blocks,
}

#[derive(Debug, Default)]
pub struct Scheduler {
    pub waiting: VecDeque<u64>,
    /// Oldest first; preemption takes from the back.
    pub running: Vec<u64>,
    pub num_preemptions: u64,
}

impl Scheduler {
    pub fn add(&mut self, request_id: u64) {
        self.waiting.push_back(request_id);
    }

    pub fn remove(&mut self, request_id: u64) {
        self.waiting.retain(|&id| id != request_id);
        self.running.retain(|&id| id != request_id);
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    pub fn schedule(
        &mut self,
        config: SchedulerConfig,
        groups: &mut HashMap<u64, SequenceGroup>,
        blocks: &mut BlockManager,
    ) -> Vec<Scheduled> {
        let mut out = Vec::new();
        let mut budget = config.max_num_batched_tokens;
        // Decoding groups first, then running prompts, each oldest first.
        for decoding in [true, false] {
            let mut i = 0;
            while i < self.running.len() {
                let id = self.running[i];
                let Some(group) = groups.get(&id) else {
                    i += 1;
                    continue;
                };
                if group.has_output() != decoding {
                    i += 1;
                    continue;
                }
                match self.plan_group(id, groups, blocks, &mut budget) {
                    Ok(plan) => {
                        out.extend(plan);
                        i += 1;
                    }
                    Err(NoRoom::Budget) => i += 1,
                    Err(NoRoom::Blocks) => {
                        // Out of blocks: free the newest group and try again.
                        let victim = *self.running.last().unwrap_or(&id);
                        self.preempt(victim, groups, blocks);
                        out.retain(|s| s.request_id != victim);
                        if victim == id {
                            break;
                        }
                    }
                }
            }
        }
        // Then waiting groups, oldest first, while they fit.
        while let Some(&id) = self.waiting.front() {
            let running_seqs: usize = self
                .running
                .iter()
                .filter_map(|r| groups.get(r))
                .map(|g| g.unfinished().count())
                .sum();
            let Some(group) = groups.get_mut(&id) else {
                self.waiting.pop_front();
                continue;
            };
            if budget == 0 || running_seqs + group.unfinished().count() > config.max_num_seqs {
                break;
            }
            if !admit(group, blocks) {
                break;
            }
            self.waiting.pop_front();
            self.running.push(id);
            match self.plan_group(id, groups, blocks, &mut budget) {
                Ok(plan) => out.extend(plan),
                Err(_) => {
                    // Admitted but no room to run: back to the head of the queue.
                    self.preempt(id, groups, blocks);
                    break;
                }
            }
        }
        out
    }

    /// Plans the next chunk of every unfinished sequence of a group (all or none),
    /// reserving their blocks.
    fn plan_group(
        &mut self,
        id: u64,
        groups: &mut HashMap<u64, SequenceGroup>,
        blocks: &mut BlockManager,
        budget: &mut usize,
    ) -> Result<Vec<Scheduled>, NoRoom> {
        let group = groups.get(&id).ok_or(NoRoom::Budget)?;
        let live: Vec<usize> = group.unfinished().map(|(i, _)| i).collect();
        if live.is_empty() || *budget < live.len() {
            return Err(NoRoom::Budget);
        }
        // Every live sequence of a group has the same length, so one chunk size fits all.
        let per_seq = *budget / live.len();
        let plan: Vec<Scheduled> = live
            .iter()
            .map(|&i| {
                let s = &group.seqs[i];
                // Saturating: a budget near usize::MAX means "no limit".
                let end = s.tokens.len().min(s.computed.saturating_add(per_seq));
                Scheduled {
                    request_id: id,
                    seq_index: i,
                    start: s.computed,
                    end,
                }
            })
            .collect();
        let needed: usize = plan
            .iter()
            .map(|p| blocks.blocks_needed(group.seqs[p.seq_index].id, p.end, p.start))
            .sum();
        if needed > blocks.num_available() {
            return Err(NoRoom::Blocks);
        }
        for p in &plan {
            // Cannot fail: the blocks were counted above.
            blocks
                .prepare_write(group.seqs[p.seq_index].id, p.end, p.start)
                .map_err(|_| NoRoom::Blocks)?;
        }
        *budget -= plan.iter().map(|p| p.end - p.start).sum::<usize>();
        Ok(plan)
    }

    /// Frees a running group's blocks and puts it at the head of the queue; it
    /// is recomputed from scratch when admitted again.
    fn preempt(
        &mut self,
        id: u64,
        groups: &mut HashMap<u64, SequenceGroup>,
        blocks: &mut BlockManager,
    ) {
        self.running.retain(|&r| r != id);
        self.waiting.push_front(id);
        self.num_preemptions += 1;
        if let Some(group) = groups.get_mut(&id) {
            group.preemptions += 1;
            for s in &mut group.seqs {
                blocks.free(s.id);
                s.computed = 0;
            }
            if group
                .prompt_logprobs
                .as_ref()
                .is_some_and(|p| p.len() < group.seqs[0].prompt_len)
            {
                group.prompt_logprobs = Some(vec![None]);
            }
        }
    }
}

/// Gives a waiting group's unfinished sequences their blocks (reusing cached
/// prefixes). All or nothing.
fn admit(group: &mut SequenceGroup, blocks: &mut BlockManager) -> bool {
    let mut done = Vec::new();
    for (i, s) in group
        .seqs
        .iter_mut()
        .enumerate()
        .filter(|(_, s)| !s.is_finished())
    {
        match blocks.allocate(s.id, &s.tokens) {
            Ok(cached) => {
                // Prompt logprobs need every prompt position computed.
                s.computed = if group
                    .prompt_logprobs
                    .as_ref()
                    .is_some_and(|p| p.len() < s.prompt_len)
                {
                    0
                } else {
                    cached
                };
                done.push(i);
            }
            Err(_) => {
                for j in done {
                    blocks.free(group.seqs[j].id);
                }
                return false;
            }
        }
    }
    true
}
