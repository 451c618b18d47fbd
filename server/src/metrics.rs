//! `GET /metrics`: vLLM's metrics (names, types, help texts and buckets of vLLM
//! v0.5's `vllm/engine/metrics.py`), kept and encoded by prometheus-client.
//!
//! The engine's own counts (requests running and waiting, KV cache use, tokens,
//! finished sequences) are read from `engine_stats_t` at each scrape; what only
//! the server sees (latencies, per-request token counts, `n`, `best_of`,
//! throughput over the last stats interval) is observed here. Prometheus asks
//! for OpenMetrics and gets it; any other client gets the classic text format
//! (0.0.4), as Python's prometheus_client answers vLLM's scrapers.

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::engine_handle::EngineHandle;
use crate::sys::engine_stats_t;

/// vLLM's bucket bounds.
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
const TPOT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];
const E2E_BUCKETS: &[f64] = &[1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0];
const PARAM_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0];

/// The content types of the two formats.
pub const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A label value, escaped as the exposition formats require (prometheus-client
/// writes label values as they are).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct LabelText(String);

impl EncodeLabelValue for LabelText {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model_name: LabelText,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    finished_reason: LabelText,
    model_name: LabelText,
}

type Hist = Family<ModelLabel, Histogram, fn() -> Histogram>;
type TokenHist = Family<ModelLabel, Histogram, Box<dyn Fn() -> Histogram + Send + Sync>>;
type FloatGauge = Family<ModelLabel, Gauge<f64, AtomicU64>>;

/// What one finished request adds to the histograms.
#[derive(Debug, Clone, Copy)]
pub struct RequestRecord {
    pub ttft: Option<f64>,
    pub tpot: Option<f64>,
    pub e2e: f64,
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
    pub n: u64,
    pub best_of: u64,
}

/// The settings vLLM reports as `vllm:cache_config_info` (its CacheConfig's
/// fields, as Python's `str` writes them).
pub fn cache_config_labels(
    block_size: usize,
    cache_dtype: &str,
    gpu_memory_utilization: f64,
    enable_prefix_caching: bool,
    num_gpu_blocks: usize,
    num_gpu_blocks_override: Option<u64>,
) -> Vec<(String, String)> {
    let py_bool = |b: bool| if b { "True" } else { "False" }.to_string();
    let mut utilization = gpu_memory_utilization.to_string();
    if !utilization.contains('.') {
        utilization.push_str(".0");
    }
    vec![
        ("block_size".into(), block_size.to_string()),
        ("cache_dtype".into(), cache_dtype.to_string()),
        (
            "enable_prefix_caching".into(),
            py_bool(enable_prefix_caching),
        ),
        ("gpu_memory_utilization".into(), utilization),
        ("num_cpu_blocks".into(), "0".into()),
        ("num_gpu_blocks".into(), num_gpu_blocks.to_string()),
        (
            "num_gpu_blocks_override".into(),
            num_gpu_blocks_override.map_or("None".into(), |n| n.to_string()),
        ),
        ("sliding_window".into(), "None".into()),
        ("swap_space_bytes".into(), "0".into()),
    ]
}

pub struct Metrics {
    registry: Registry,
    label: ModelLabel,
    ttft: Hist,
    tpot: Hist,
    e2e: Hist,
    n: Hist,
    best_of: Hist,
    avg_prompt_throughput: FloatGauge,
    avg_generation_throughput: FloatGauge,
    loaded: Arc<OnceLock<Loaded>>,
}

/// What exists once the model has loaded.
struct Loaded {
    engine: Arc<EngineHandle>,
    cache_config: Vec<(String, LabelText)>,
    prompt_tokens: TokenHist,
    generation_tokens: TokenHist,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new(model_name: &str) -> Metrics {
        let label = ModelLabel {
            model_name: LabelText(model_name.to_string()),
        };
        let m = Metrics {
            registry: Registry::default(),
            label,
            ttft: Family::new_with_constructor(|| Histogram::new(TTFT_BUCKETS.iter().copied())),
            tpot: Family::new_with_constructor(|| Histogram::new(TPOT_BUCKETS.iter().copied())),
            e2e: Family::new_with_constructor(|| Histogram::new(E2E_BUCKETS.iter().copied())),
            n: Family::new_with_constructor(|| Histogram::new(PARAM_BUCKETS.iter().copied())),
            best_of: Family::new_with_constructor(|| Histogram::new(PARAM_BUCKETS.iter().copied())),
            avg_prompt_throughput: FloatGauge::default(),
            avg_generation_throughput: FloatGauge::default(),
            loaded: Arc::new(OnceLock::new()),
        };
        m.register()
    }

    fn register(mut self) -> Metrics {
        // Every series exists from the start, at zero, as the stats collector's do.
        for family in [&self.ttft, &self.tpot, &self.e2e, &self.n, &self.best_of] {
            drop(family.get_or_create(&self.label));
        }
        self.set_throughput(0.0, 0.0);
        let r = &mut self.registry;
        // The registry adds the final period of each help text.
        r.register_collector(Box::new(StatsCollector {
            loaded: self.loaded.clone(),
            label: self.label.clone(),
        }));
        r.register(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds",
            self.ttft.clone(),
        );
        r.register(
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds",
            self.tpot.clone(),
        );
        r.register(
            "vllm:e2e_request_latency_seconds",
            "Histogram of end to end request latency in seconds",
            self.e2e.clone(),
        );
        r.register(
            "vllm:request_params_best_of",
            "Histogram of the best_of request parameter",
            self.best_of.clone(),
        );
        r.register(
            "vllm:request_params_n",
            "Histogram of the n request parameter",
            self.n.clone(),
        );
        r.register(
            "vllm:avg_prompt_throughput_toks_per_s",
            "Average prefill throughput in tokens/s",
            self.avg_prompt_throughput.clone(),
        );
        r.register(
            "vllm:avg_generation_throughput_toks_per_s",
            "Average generation throughput in tokens/s",
            self.avg_generation_throughput.clone(),
        );
        self
    }

    /// Called once, when the model has loaded: the engine's statistics, the
    /// cache settings and the token histograms (bucketed up to max_model_len)
    /// join the exposition.
    pub fn engine_loaded(&self, engine: Arc<EngineHandle>, cache_config: Vec<(String, String)>) {
        let max_len = engine.info().max_model_len as u64;
        let token_hist = || -> TokenHist {
            Family::new_with_constructor(Box::new(move || Histogram::new(buckets_1_2_5(max_len))))
        };
        let loaded = Loaded {
            engine,
            cache_config: cache_config
                .into_iter()
                .map(|(k, v)| (k, LabelText(v)))
                .collect(),
            prompt_tokens: token_hist(),
            generation_tokens: token_hist(),
        };
        drop(loaded.prompt_tokens.get_or_create(&self.label));
        drop(loaded.generation_tokens.get_or_create(&self.label));
        let _ = self.loaded.set(loaded);
    }

    /// A request that finished (not aborted).
    pub fn record(&self, r: &RequestRecord) {
        if let Some(t) = r.ttft {
            self.ttft.get_or_create(&self.label).observe(t);
        }
        if let Some(t) = r.tpot {
            self.tpot.get_or_create(&self.label).observe(t);
        }
        self.e2e.get_or_create(&self.label).observe(r.e2e);
        self.n.get_or_create(&self.label).observe(r.n as f64);
        self.best_of
            .get_or_create(&self.label)
            .observe(r.best_of as f64);
        if let Some(l) = self.loaded.get() {
            let prompt = l.prompt_tokens.get_or_create(&self.label);
            prompt.observe(r.prompt_tokens as f64);
            let generated = l.generation_tokens.get_or_create(&self.label);
            generated.observe(r.generation_tokens as f64);
        }
    }

    /// The throughput over the last stats interval, in tokens/s.
    pub fn set_throughput(&self, prompt: f64, generation: f64) {
        self.avg_prompt_throughput
            .get_or_create(&self.label)
            .set(prompt);
        self.avg_generation_throughput
            .get_or_create(&self.label)
            .set(generation);
    }

    /// The exposition and its content type: OpenMetrics when the `Accept`
    /// header asks for it (as Prometheus does), else the classic text format.
    pub fn render(&self, accept: Option<&str>) -> (String, &'static str) {
        let mut out = String::new();
        // Writing to a String cannot fail; an encoder error would be a bug in
        // a collector, and then the text so far is still served.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        if wants_openmetrics(accept) {
            (out, OPENMETRICS_TYPE)
        } else {
            (openmetrics_to_text(&out), TEXT_TYPE)
        }
    }
}

/// Python prometheus_client's rule: OpenMetrics if any accepted type is
/// `application/openmetrics-text`.
fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').any(|t| {
            t.split(';')
                .next()
                .is_some_and(|m| m.trim() == "application/openmetrics-text")
        })
    })
}

/// The classic format of the same metrics: a counter's family is named with
/// its `_total` suffix and an info is a gauge named with `_info`, as Python's
/// prometheus_client writes them; no `# UNIT` or `# EOF` lines. Samples read
/// the same in both formats.
pub fn openmetrics_to_text(openmetrics: &str) -> String {
    let mut types = std::collections::HashMap::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                types.insert(name, kind);
            }
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let (prefix, rest) = match (line.strip_prefix("# HELP "), line.strip_prefix("# TYPE ")) {
            (Some(rest), _) => ("# HELP ", rest),
            (_, Some(rest)) => ("# TYPE ", rest),
            _ => {
                out.push_str(line);
                out.push('\n');
                continue;
            }
        };
        let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        let (name, tail) = match (types.get(name).copied(), prefix) {
            (Some("counter"), _) => (format!("{name}_total"), tail),
            (Some("info"), "# TYPE ") => (format!("{name}_info"), "gauge"),
            (Some("info"), _) => (format!("{name}_info"), tail),
            _ => (name.to_string(), tail),
        };
        let _ = writeln!(out, "{prefix}{name} {tail}");
    }
    out
}

/// vLLM's `build_1_2_5_buckets`: 1, 2, 5, 10, 20, 50, ... up to `max`.
fn buckets_1_2_5(max: u64) -> Vec<f64> {
    let mut buckets = Vec::new();
    let mut scale = 1u64;
    loop {
        for m in [1, 2, 5] {
            match scale.checked_mul(m) {
                Some(v) if v <= max => buckets.push(v as f64),
                _ => return buckets,
            }
        }
        scale = match scale.checked_mul(10) {
            Some(s) => s,
            None => return buckets,
        };
    }
}

/// The engine's statistics, read at each scrape (zeros while loading).
#[derive(Debug)]
struct StatsCollector {
    loaded: Arc<OnceLock<Loaded>>,
    label: ModelLabel,
}

impl StatsCollector {
    /// The gauges and counters read from the engine's statistics.
    fn engine_series(&self, e: &mut DescriptorEncoder, s: &engine_stats_t) -> std::fmt::Result {
        let gauges: [(&str, &str, f64); 8] = [
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
                "vllm:cpu_cache_usage_perc",
                "CPU KV-cache usage (swap space, none here). 1 means 100 percent usage.",
                0.0,
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
        for (name, help, v) in gauges {
            let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(v).encode(m.encode_family(&self.label)?)?;
        }
        // Counter names without `_total`: the encoder adds it to the samples.
        let counters: [(&str, &str, u64); 3] = [
            (
                "vllm:num_preemptions",
                "Cumulative number of preemption from the engine.",
                s.num_preemptions,
            ),
            (
                "vllm:prompt_tokens",
                "Number of prefill tokens processed.",
                s.prompt_tokens,
            ),
            (
                "vllm:generation_tokens",
                "Number of generation tokens processed.",
                s.generation_tokens,
            ),
        ];
        for (name, help, v) in counters {
            let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(v).encode(m.encode_family(&self.label)?)?;
        }
        Ok(())
    }

    /// Sequences that stopped or hit their length; aborted ones are no success.
    fn successes(&self, e: &mut DescriptorEncoder, s: &engine_stats_t) -> std::fmt::Result {
        let mut m = e.encode_descriptor(
            "vllm:request_success",
            "Count of successfully processed requests.",
            None,
            MetricType::Counter,
        )?;
        for (reason, v) in [("stop", s.finished_stop), ("length", s.finished_length)] {
            let labels = ReasonLabels {
                finished_reason: LabelText(reason.into()),
                model_name: self.label.model_name.clone(),
            };
            ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl Collector for StatsCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let loaded = self.loaded.get();
        // SAFETY: plain old data; all zeros is a valid value.
        let zero: engine_stats_t = unsafe { std::mem::zeroed() };
        let s = loaded.map_or(zero, |l| l.engine.stats());
        if let Some(l) = loaded {
            let m = e.encode_descriptor(
                "vllm:cache_config",
                "information of cache_config",
                None,
                MetricType::Info,
            )?;
            Info::new(l.cache_config.clone()).encode(m)?;
        }
        self.engine_series(&mut e, &s)?;
        self.successes(&mut e, &s)?;
        if let Some(l) = loaded {
            let histograms = [
                (
                    "vllm:request_prompt_tokens",
                    "Number of prefill tokens processed.",
                    &l.prompt_tokens,
                ),
                (
                    "vllm:request_generation_tokens",
                    "Number of generation tokens processed.",
                    &l.generation_tokens,
                ),
            ];
            for (name, help, family) in histograms {
                family.encode(e.encode_descriptor(name, help, None, MetricType::Histogram)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
