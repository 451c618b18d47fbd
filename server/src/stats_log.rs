//! vLLM's periodic stats line ("Avg prompt throughput: ... tokens/s, ...")
//! every [`INTERVAL`] while the engine is busy, and the throughput gauges of
//! /metrics, from the engine's counters (`engine_stats_t`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine_handle::EngineHandle;
use crate::state::AppState;
use crate::sys::engine_stats_t;

/// vLLM's `_LOCAL_LOGGING_INTERVAL_SEC`.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// One interval's activity.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub prompt_throughput: f64,
    pub generation_throughput: f64,
    pub running: u64,
    pub waiting: u64,
    pub kv_usage: f64,
}

impl Window {
    /// Between two snapshots `seconds` apart.
    pub fn between(before: &engine_stats_t, after: &engine_stats_t, seconds: f64) -> Window {
        let rate = |a: u64, b: u64| {
            if seconds > 0.0 {
                b.saturating_sub(a) as f64 / seconds
            } else {
                0.0
            }
        };
        Window {
            prompt_throughput: rate(before.prompt_tokens, after.prompt_tokens),
            generation_throughput: rate(before.generation_tokens, after.generation_tokens),
            running: after.num_running,
            waiting: after.num_waiting,
            kv_usage: after.kv_usage,
        }
    }

    /// Whether anything happened: vLLM logs only from engine steps, so an
    /// idle server stays quiet.
    pub fn active(&self) -> bool {
        self.prompt_throughput > 0.0
            || self.generation_throughput > 0.0
            || self.running > 0
            || self.waiting > 0
    }

    /// vLLM's line (no swapping, so no CPU cache, here).
    pub fn line(&self) -> String {
        format!(
            "Avg prompt throughput: {:.1} tokens/s, Avg generation throughput: {:.1} tokens/s, \
             Running: {} reqs, Swapped: 0 reqs, Pending: {} reqs, GPU KV cache usage: {:.1}%, \
             CPU KV cache usage: 0.0%.",
            self.prompt_throughput,
            self.generation_throughput,
            self.running,
            self.waiting,
            self.kv_usage * 100.0
        )
    }
}

/// Runs for the life of the server: every interval, sets the throughput
/// gauges and, when `log` (no `--disable-log-stats`) and the engine was busy,
/// logs the line.
pub async fn run(state: Arc<AppState>, engine: Arc<EngineHandle>, log: bool) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + INTERVAL, INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut before = engine.stats();
    let mut since = Instant::now();
    loop {
        ticks.tick().await;
        let after = engine.stats();
        let now = Instant::now();
        let window = Window::between(&before, &after, now.duration_since(since).as_secs_f64());
        state
            .metrics
            .set_throughput(window.prompt_throughput, window.generation_throughput);
        if log && window.active() {
            tracing::info!("{}", window.line());
        }
        (before, since) = (after, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(prompt: u64, generated: u64, running: u64) -> engine_stats_t {
        // SAFETY: plain old data; zeroed is valid.
        let mut s: engine_stats_t = unsafe { std::mem::zeroed() };
        s.prompt_tokens = prompt;
        s.generation_tokens = generated;
        s.num_running = running;
        s.num_waiting = 2;
        s.kv_usage = 0.125;
        s
    }

    #[test]
    fn the_line_reads_as_vllms() {
        let w = Window::between(&stats(10, 100, 0), &stats(60, 125, 3), 5.0);
        assert_eq!(
            w.line(),
            "Avg prompt throughput: 10.0 tokens/s, Avg generation throughput: 5.0 tokens/s, \
             Running: 3 reqs, Swapped: 0 reqs, Pending: 2 reqs, GPU KV cache usage: 12.5%, \
             CPU KV cache usage: 0.0%."
        );
        assert!(w.active());
    }

    #[test]
    fn an_idle_interval_is_quiet() {
        let mut idle = stats(7, 7, 0);
        idle.num_waiting = 0;
        let w = Window::between(&idle, &idle, 5.0);
        assert!(!w.active());
        assert_eq!(w.prompt_throughput, 0.0);
        // Counters never go back, but a zero-length interval must not divide by zero.
        assert_eq!(
            Window::between(&idle, &idle, 0.0).generation_throughput,
            0.0
        );
    }
}
