//! Counters and latency sums the metrics endpoint and the C ABI report.

use std::time::Instant;

use super::sequence::{FinishReason, SequenceGroup};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStats {
    pub num_running: usize,
    pub num_waiting: usize,
    /// Preemptions since start.
    pub num_preemptions: u64,
    pub kv_blocks_used: usize,
    pub kv_blocks_total: usize,
    /// Share of prefix-cache lookups that found a block (`None` when caching is off).
    pub prefix_cache_hit_rate: Option<f64>,
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
    pub finished_stop: u64,
    pub finished_length: u64,
    pub finished_abort: u64,
    /// Sums and counts of per-request latencies, in seconds.
    pub time_to_first_token_sum: f64,
    pub time_per_output_token_sum: f64,
    pub e2e_latency_sum: f64,
    pub latency_count: u64,
}

impl EngineStats {
    pub fn kv_usage(&self) -> f64 {
        if self.kv_blocks_total == 0 {
            0.0
        } else {
            self.kv_blocks_used as f64 / self.kv_blocks_total as f64
        }
    }

    pub fn finished(&mut self, reason: FinishReason) {
        match reason {
            FinishReason::Stop => self.finished_stop += 1,
            FinishReason::Length => self.finished_length += 1,
            FinishReason::Abort => self.finished_abort += 1,
        }
    }

    pub fn record_latency(&mut self, group: &SequenceGroup) {
        let now = Instant::now();
        let Some(first) = group.first_token_at else {
            return;
        };
        let ttft = (first - group.arrival).as_secs_f64();
        let outputs = group
            .seqs
            .iter()
            .map(|s| s.output().len())
            .max()
            .unwrap_or(0);
        self.time_to_first_token_sum += ttft;
        if outputs > 1 {
            self.time_per_output_token_sum += (now - first).as_secs_f64() / (outputs - 1) as f64;
        }
        self.e2e_latency_sum += (now - group.arrival).as_secs_f64();
        self.latency_count += 1;
    }
}
