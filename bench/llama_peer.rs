//! llama.cpp as the decode bench's peer: `llama-bench` (batch-1 decode and
//! prefill) and `llama-batched-bench` (aggregate decode at batch 1, 8, 32) on
//! the same weights written as a bf16 GGUF (and, for the gguf bench, the
//! quantized files themselves). The binaries are built from source
//! outside this repo and named by `LLAMA_BENCH` and `LLAMA_BATCHED_BENCH`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Sizes shared with our own measurements.
#[derive(Clone, Copy)]
pub struct Sizes {
    pub threads: usize,
    pub prompt: usize,
    pub decode_tokens: usize,
    pub batched_tokens: usize,
    pub prefill: usize,
    pub batches: [usize; 3],
    /// The long-context decode row: its prompt and decode tokens (batch 1).
    pub long_context: usize,
    pub long_tokens: usize,
}

/// The peer's binaries, from the environment.
pub struct Peer {
    bench: Option<PathBuf>,
    batched: Option<PathBuf>,
}

/// llama.cpp's tokens/s, keyed like our rows: decode at each batch, prefill.
#[derive(Default, Clone)]
pub struct PeerSpeeds {
    pub decode: Vec<(usize, f64)>,
    pub prefill: Option<f64>,
    /// Batch-1 decode after `long_context` tokens.
    pub long_context: Option<f64>,
}

impl Peer {
    pub fn from_env() -> Option<Peer> {
        let var = |v: &str| {
            std::env::var_os(v)
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
        };
        let peer = Peer {
            bench: var("LLAMA_BENCH"),
            batched: var("LLAMA_BATCHED_BENCH"),
        };
        (peer.bench.is_some() || peer.batched.is_some()).then_some(peer)
    }

    /// One run of each binary that is set.
    pub fn measure(&self, model: &Path, s: &Sizes) -> engine::Result<PeerSpeeds> {
        let mut speeds = PeerSpeeds::default();
        if let Some(bin) = &self.bench {
            let (tg, pp) = llama_bench(bin, model, s)?;
            speeds.decode.push((1, tg));
            speeds.prefill = Some(pp);
        }
        if let Some(bin) = &self.batched {
            let long = Sizes {
                prompt: s.long_context,
                batched_tokens: s.long_tokens,
                batches: [1; 3],
                ..*s
            };
            speeds.long_context = batched_bench(bin, model, &long)?.first().map(|&(_, tg)| tg);
            for (b, tg) in batched_bench(bin, model, s)? {
                // llama-bench's batch-1 figure, when there is one, is the
                // like-for-like one (64 tokens, not 32); keep the better.
                match speeds.decode.iter_mut().find(|(batch, _)| *batch == b) {
                    Some((_, v)) => *v = v.max(tg),
                    None => speeds.decode.push((b, tg)),
                }
            }
        }
        Ok(speeds)
    }
}

impl PeerSpeeds {
    /// The better of each figure across runs.
    pub fn best(mut self, other: &PeerSpeeds) -> PeerSpeeds {
        for &(b, v) in &other.decode {
            match self.decode.iter_mut().find(|(batch, _)| *batch == b) {
                Some((_, mine)) => *mine = mine.max(v),
                None => self.decode.push((b, v)),
            }
        }
        let better = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.prefill = better(self.prefill, other.prefill);
        self.long_context = better(self.long_context, other.long_context);
        self
    }

    pub fn decode_at(&self, batch: usize) -> Option<f64> {
        self.decode
            .iter()
            .find(|(b, _)| *b == batch)
            .map(|&(_, v)| v)
    }
}

fn run(bin: &Path, args: &[String]) -> engine::Result<String> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .map_err(|e| engine::Error::invalid(format!("running {}: {e}", bin.display())))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: String = err.lines().rev().take(5).collect::<Vec<_>>().join(" / ");
        return Err(engine::Error::invalid(format!(
            "{} failed: {tail}",
            bin.display()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// llama-bench's (decode, prefill) tok/s, one repetition.
fn llama_bench(bin: &Path, model: &Path, s: &Sizes) -> engine::Result<(f64, f64)> {
    let args = [
        "-m".into(),
        model.display().to_string(),
        "-t".into(),
        s.threads.to_string(),
        "-p".into(),
        s.prefill.to_string(),
        "-n".into(),
        s.decode_tokens.to_string(),
        "-r".into(),
        "1".into(),
        "-o".into(),
        "json".into(),
    ];
    let out = run(bin, &args)?;
    let fail = |m: String| engine::Error::invalid(format!("llama-bench output: {m}"));
    let json: serde_json::Value = serde_json::from_str(&out).map_err(|e| fail(e.to_string()))?;
    let (mut tg, mut pp) = (None, None);
    for test in json.as_array().into_iter().flatten() {
        let ts = test["avg_ts"].as_f64();
        if test["n_gen"].as_u64().unwrap_or(0) > 0 {
            tg = ts;
        } else {
            pp = ts;
        }
    }
    tg.zip(pp)
        .ok_or_else(|| fail("no decode or prefill result".into()))
}

/// llama-batched-bench's aggregate decode tok/s (its S_TG column) per batch.
pub fn batched_bench(bin: &Path, model: &Path, s: &Sizes) -> engine::Result<Vec<(usize, f64)>> {
    let mut batches: Vec<String> = s.batches.iter().map(usize::to_string).collect();
    batches.dedup();
    let context = s.batches.iter().max().unwrap_or(&1) * (s.prompt + s.batched_tokens);
    let args = [
        "-m".into(),
        model.display().to_string(),
        "-t".into(),
        s.threads.to_string(),
        "-c".into(),
        context.to_string(),
        "-npp".into(),
        s.prompt.to_string(),
        "-ntg".into(),
        s.batched_tokens.to_string(),
        "-npl".into(),
        batches.join(","),
    ];
    let out = run(bin, &args)?;
    // Table rows: | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |
    let rows: Vec<(usize, f64)> = out
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let cell = |i: usize| cells.get(i).copied().unwrap_or("");
            Some((cell(3).parse().ok()?, cell(8).parse().ok()?))
        })
        .collect();
    if rows.len() != batches.len() {
        let msg = format!(
            "llama-batched-bench: expected {} rows in:\n{out}",
            batches.len()
        );
        return Err(engine::Error::invalid(msg));
    }
    Ok(rows)
}
