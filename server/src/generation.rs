//! One HTTP request's engine requests (one per prompt): submitted together,
//! their events merged into one stream, aborted if the HTTP request goes away
//! first, timed for the latency histograms, and logged when they finish.

use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::engine::{Engine, RawEvent};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// One token's logprobs: the chosen token first, then the top ones.
pub type TokenLogprobs = Vec<LogprobEntry>;

#[derive(Debug, Clone, Deserialize)]
pub struct LogprobEntry {
    pub token_id: u32,
    pub logprob: f64,
    #[serde(default)]
    pub decoded_token: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// One finished sequence of the final event.
#[derive(Debug, Clone, Deserialize)]
pub struct SeqOutput {
    /// The sequence's index in its request (what its deltas carried).
    pub index: usize,
    pub token_ids: Vec<u32>,
    pub text: String,
    #[serde(default)]
    pub logprobs: Option<Vec<TokenLogprobs>>,
    pub finish_reason: Option<String>,
    #[serde(default)]
    pub stop_reason: Value,
}

/// An engine event (`engine_event_t.json`): a delta of sequence `index`, or the
/// final event with `results`, best first.
#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    pub kind: String,
    #[serde(default)]
    pub index: usize,
    #[serde(default)]
    pub token_ids: Vec<u32>,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub logprobs: Option<Vec<TokenLogprobs>>,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(default)]
    pub stop_reason: Value,
    #[serde(default)]
    pub usage: Usage,
    #[serde(default)]
    pub prompt_logprobs: Option<Vec<Option<TokenLogprobs>>>,
    #[serde(default)]
    pub results: Vec<SeqOutput>,
}

impl Event {
    pub fn is_final(&self) -> bool {
        self.kind == "final"
    }
}

/// Per engine request: its id, whether its final event came, and timings.
struct Tracked {
    engine_id: u64,
    done: bool,
    start: Instant,
    first_token: Option<Instant>,
}

pub struct Generation {
    state: Arc<AppState>,
    engine: Arc<Engine>,
    request_id: String,
    events: mpsc::UnboundedReceiver<RawEvent>,
    requests: Vec<Tracked>,
}

impl Generation {
    /// Submits one engine request per body; if one is refused the others are
    /// aborted and its error returned.
    pub fn start(
        state: Arc<AppState>,
        engine: Arc<Engine>,
        request_id: String,
        bodies: &[Value],
    ) -> ApiResult<Generation> {
        let (tx, events) = mpsc::unbounded_channel();
        let mut generation = Generation {
            state,
            engine,
            request_id,
            events,
            requests: Vec::with_capacity(bodies.len()),
        };
        for (tag, body) in bodies.iter().enumerate() {
            let engine_id = generation.engine.submit(&body.to_string(), tag, &tx)?;
            generation.requests.push(Tracked {
                engine_id,
                done: false,
                start: Instant::now(),
                first_token: None,
            });
        }
        Ok(generation)
    }

    /// The next event of any of the requests, with the index of its prompt;
    /// `None` once every request has had its final event.
    pub async fn next(&mut self) -> Option<ApiResult<(usize, Event)>> {
        if self.requests.iter().all(|r| r.done) {
            return None;
        }
        let raw = self.events.recv().await?;
        let event: Event = match serde_json::from_slice(&raw.json) {
            Ok(e) => e,
            Err(e) => {
                return Some(Err(ApiError::internal(format!(
                    "unreadable engine event: {e}"
                ))))
            }
        };
        let tracked = &mut self.requests[raw.tag];
        if !event.token_ids.is_empty() && tracked.first_token.is_none() {
            tracked.first_token = Some(Instant::now());
        }
        if raw.is_final {
            tracked.done = true;
            self.finished(raw.tag, &event);
        }
        Some(Ok((raw.tag, event)))
    }

    /// Aborts whatever has not finished (the final events still arrive).
    pub fn abort(&mut self) {
        for r in self.requests.iter().filter(|r| !r.done) {
            self.engine.abort(r.engine_id);
        }
    }

    /// Records the latencies of a finished request and logs it.
    fn finished(&self, tag: usize, event: &Event) {
        let tracked = &self.requests[tag];
        let now = Instant::now();
        let e2e = now.duration_since(tracked.start).as_secs_f64();
        let tokens = event.usage.completion_tokens;
        let ttft = tracked
            .first_token
            .map(|t| t.duration_since(tracked.start).as_secs_f64());
        let tpot = match tracked.first_token {
            Some(first) if tokens > 1 => {
                Some(now.duration_since(first).as_secs_f64() / (tokens - 1) as f64)
            }
            _ => None,
        };
        self.state.metrics.record(ttft, tpot, e2e);
        if self.state.config.log_requests {
            let reasons: Vec<&str> = event
                .results
                .iter()
                .map(|r| r.finish_reason.as_deref().unwrap_or("none"))
                .collect();
            tracing::info!(
                "request {}-{tag}: prompt_tokens={} completion_tokens={tokens} finish_reason={} latency={e2e:.3}s",
                self.request_id,
                event.usage.prompt_tokens,
                reasons.join(",")
            );
        }
    }
}

impl Drop for Generation {
    /// The HTTP request went away (client disconnect, error) before its engine
    /// requests finished: abort them so their KV blocks are freed.
    fn drop(&mut self) {
        self.abort();
    }
}
