//! `GET /metrics`: Prometheus text with vLLM's metric names. Gauges and counters
//! come from the engine's statistics; the latency histograms are measured here,
//! from when a request was submitted to when its events arrived.

use std::fmt::Write;
use std::sync::Mutex;

use crate::sys::engine_stats_t;

/// vLLM's bucket bounds, in seconds.
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
const TPOT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];
const E2E_BUCKETS: &[f64] = &[1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// Per bound: observations <= it (cumulative, as Prometheus wants).
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, value: f64) {
        for (bound, count) in self.bounds.iter().zip(&mut self.counts) {
            if value <= *bound {
                *count += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str, labels: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound:?}\",{labels}}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\",{labels}}} {}", self.count);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {:?}", self.sum);
    }
}

struct Latencies {
    ttft: Histogram,
    tpot: Histogram,
    e2e: Histogram,
}

pub struct Metrics {
    latencies: Mutex<Latencies>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            latencies: Mutex::new(Latencies {
                ttft: Histogram::new(TTFT_BUCKETS),
                tpot: Histogram::new(TPOT_BUCKETS),
                e2e: Histogram::new(E2E_BUCKETS),
            }),
        }
    }
}

impl Metrics {
    /// A finished request's time to first token (if it produced one), time per
    /// output token after the first (if it produced two) and end-to-end latency.
    pub fn record(&self, ttft: Option<f64>, tpot: Option<f64>, e2e: f64) {
        let mut l = self
            .latencies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(t) = ttft {
            l.ttft.observe(t);
        }
        if let Some(t) = tpot {
            l.tpot.observe(t);
        }
        l.e2e.observe(e2e);
    }

    /// The exposition text; `stats` is `None` while the model loads.
    pub fn render(&self, model_name: &str, stats: Option<&engine_stats_t>) -> String {
        let labels = format!("model_name=\"{}\"", escape_label(model_name));
        let mut out = String::new();
        let zero = zeroed_stats();
        let s = stats.unwrap_or(&zero);
        let gauges: [(&str, &str, f64); 7] = [
            (
                "vllm:num_requests_running",
                "Number of requests currently running on GPU.",
                s.num_running as f64,
            ),
            (
                "vllm:num_requests_waiting",
                "Number of requests waiting to be processed.",
                s.num_waiting as f64,
            ),
            (
                "vllm:num_requests_swapped",
                "Number of requests swapped to CPU.",
                0.0,
            ),
            (
                "vllm:gpu_cache_usage_perc",
                "KV-cache usage of the device the engine runs on. 1 means 100 percent usage.",
                s.kv_usage,
            ),
            (
                "vllm:kv_cache_blocks_used",
                "KV cache blocks in use.",
                s.kv_blocks_used as f64,
            ),
            (
                "vllm:kv_cache_blocks_total",
                "KV cache blocks in all.",
                s.kv_blocks_total as f64,
            ),
            (
                "vllm:gpu_prefix_cache_hit_rate",
                "Share of prefix-cache lookups that hit, 0 to 1; -1 when prefix caching is off.",
                s.prefix_cache_hit_rate,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{labels}}} {value:?}"
            );
        }
        let counters: [(&str, &str, u64); 3] = [
            (
                "vllm:num_preemptions_total",
                "Cumulative number of preemption from the engine.",
                s.num_preemptions,
            ),
            (
                "vllm:prompt_tokens_total",
                "Number of prefill tokens processed.",
                s.prompt_tokens,
            ),
            (
                "vllm:generation_tokens_total",
                "Number of generation tokens processed.",
                s.generation_tokens,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{{labels}}} {:?}",
                value as f64
            );
        }
        let name = "vllm:request_success_total";
        let _ = writeln!(
            out,
            "# HELP {name} Count of successfully processed requests.\n# TYPE {name} counter"
        );
        for (reason, value) in [
            ("stop", s.finished_stop),
            ("length", s.finished_length),
            ("abort", s.finished_abort),
        ] {
            let _ = writeln!(
                out,
                "{name}{{finished_reason=\"{reason}\",{labels}}} {:?}",
                value as f64
            );
        }
        let l = self
            .latencies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        l.ttft.render(
            &mut out,
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            &labels,
        );
        l.tpot.render(
            &mut out,
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds.",
            &labels,
        );
        l.e2e.render(
            &mut out,
            "vllm:e2e_request_latency_seconds",
            "Histogram of end to end request latency in seconds.",
            &labels,
        );
        out
    }
}

fn zeroed_stats() -> engine_stats_t {
    // SAFETY: plain old data; all zeros is a valid value.
    unsafe { std::mem::zeroed() }
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative() {
        let m = Metrics::default();
        m.record(Some(0.003), Some(0.02), 1.5);
        m.record(None, None, 70.0);
        let text = m.render("demo", None);
        assert!(text.contains(
            "vllm:time_to_first_token_seconds_bucket{le=\"0.001\",model_name=\"demo\"} 0"
        ));
        assert!(text.contains(
            "vllm:time_to_first_token_seconds_bucket{le=\"0.005\",model_name=\"demo\"} 1"
        ));
        assert!(text.contains("vllm:time_to_first_token_seconds_count{model_name=\"demo\"} 1"));
        assert!(text
            .contains("vllm:e2e_request_latency_seconds_bucket{le=\"2.5\",model_name=\"demo\"} 1"));
        assert!(text.contains(
            "vllm:e2e_request_latency_seconds_bucket{le=\"+Inf\",model_name=\"demo\"} 2"
        ));
        assert!(text.contains("vllm:e2e_request_latency_seconds_sum{model_name=\"demo\"} 71.5"));
        assert!(text.contains("vllm:num_requests_running{model_name=\"demo\"} 0.0"));
    }
}
