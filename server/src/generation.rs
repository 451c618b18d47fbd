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
use crate::http::cut_for_log;
use crate::metrics::RequestRecord;
use crate::state::AppState;
use engine_api::python::json_repr;

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

/// Per engine request: its id, whether its final event came, timings, and the
/// parameters the metrics count.
struct Tracked {
    engine_id: u64,
    done: bool,
    start: Instant,
    first_token: Option<Instant>,
    n: u64,
    best_of: u64,
}

pub struct Generation {
    state: Arc<AppState>,
    engine: Arc<Engine>,
    request_id: String,
    events: mpsc::UnboundedReceiver<RawEvent>,
    requests: Vec<Tracked>,
    /// Set once the unfinished requests were aborted (and that was logged).
    aborted: bool,
    /// An engine event could not be read: a later abort is no disconnect.
    failed: bool,
}

impl Generation {
    /// Submits one engine request per body (`prompts`: their texts, for the
    /// log; empty for token-id prompts); if one is refused the others are
    /// aborted and its error returned.
    pub fn start(
        state: Arc<AppState>,
        engine: Arc<Engine>,
        request_id: String,
        bodies: &[Value],
        prompts: &[&str],
    ) -> ApiResult<Generation> {
        let (tx, events) = mpsc::unbounded_channel();
        let mut generation = Generation {
            state,
            engine,
            request_id,
            events,
            requests: Vec::with_capacity(bodies.len()),
            aborted: false,
            failed: false,
        };
        for (tag, body) in bodies.iter().enumerate() {
            if generation.state.config.log_requests {
                generation.log_received(tag, body, prompts.get(tag).copied());
            }
            let engine_id = generation.engine.submit(&body.to_string(), tag, &tx)?;
            let n = body["n"].as_u64().unwrap_or(1);
            generation.requests.push(Tracked {
                engine_id,
                done: false,
                start: Instant::now(),
                first_token: None,
                n,
                best_of: body["best_of"].as_u64().unwrap_or(n),
            });
        }
        Ok(generation)
    }

    /// vLLM's "Received request" line; `--max-log-len` bounds the prompt's
    /// characters and token ids shown.
    fn log_received(&self, tag: usize, body: &Value, prompt: Option<&str>) {
        let limit = self.state.config.max_log_len.unwrap_or(usize::MAX);
        let prompt = prompt
            .filter(|p| !p.is_empty())
            .map_or("None".to_string(), |p| {
                json_repr(&Value::String(p.chars().take(limit).collect()))
            });
        let ids = body["prompt"].as_array().map_or(&[][..], Vec::as_slice);
        let shown: Vec<String> = ids.iter().take(limit).map(Value::to_string).collect();
        let mut params = body.clone();
        if let Some(map) = params.as_object_mut() {
            map.remove("prompt");
        }
        // A guided-decoding grammar may be megabytes: the params are cut too.
        let params = params.to_string();
        let (params, cut) = cut_for_log(&params);
        tracing::info!(
            "Received request {}-{tag}: prompt: {prompt}, params: {params}{cut}, prompt_token_ids: [{}]{}.",
            self.request_id,
            shown.join(", "),
            if shown.len() < ids.len() { " (cut by --max-log-len)" } else { "" },
        );
    }

    /// The id responses carry (`cmpl-…`, `chatcmpl-…`).
    pub fn request_id(&self) -> &str {
        &self.request_id
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
                self.failed = true;
                return Some(Err(ApiError::internal(format!(
                    "unreadable engine event: {e}"
                ))));
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

    /// Aborts whatever has not finished (the final events still arrive), and
    /// logs it: the client went away, unless an engine event was unreadable.
    pub fn abort(&mut self) {
        let mut unfinished = 0;
        for r in self.requests.iter().filter(|r| !r.done) {
            self.engine.abort(r.engine_id);
            unfinished += 1;
        }
        if unfinished > 0 && !self.aborted {
            self.aborted = true;
            let why = if self.failed {
                "after an engine error"
            } else {
                "the client disconnected"
            };
            let total = self.requests.len();
            tracing::info!(
                "Aborted request {} ({unfinished} of {total} prompts unfinished): {why}.",
                self.request_id
            );
        }
    }

    /// Records the metrics of a finished request and logs it. An aborted one
    /// (engine shut down) is no success and counts in no histogram, as in vLLM.
    fn finished(&self, tag: usize, event: &Event) {
        let tracked = &self.requests[tag];
        let aborted = !event.results.is_empty()
            && event
                .results
                .iter()
                .all(|r| r.finish_reason.as_deref() == Some("abort"));
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
        if !aborted {
            self.state.metrics.record(&RequestRecord {
                ttft,
                tpot,
                e2e,
                prompt_tokens: event.usage.prompt_tokens,
                generation_tokens: tokens,
                n: tracked.n,
                best_of: tracked.best_of,
            });
        }
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
