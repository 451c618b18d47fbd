//! One HTTP request's engine requests (one per prompt): submitted together,
//! their events merged into one stream, aborted if the HTTP request goes away
//! first, timed for the latency histograms, and logged when they finish.

use std::sync::Arc;
use std::time::Instant;

use engine_api::event::{Event, Final, FinishReason};
use engine_api::request::{Prompt, SubmitRequest};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::engine_handle::{EngineHandle, RawEvent};
use crate::error::{ApiError, ApiResult};
use crate::http::cut_for_log;
use crate::metrics::RequestRecord;
use crate::state::AppState;
use engine_api::python::json_repr;

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
    engine: Arc<EngineHandle>,
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
        engine: Arc<EngineHandle>,
        request_id: String,
        bodies: &[SubmitRequest],
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
            let json = serde_json::to_string(body)
                .map_err(|e| ApiError::internal(format!("unwritable engine request: {e}")))?;
            let engine_id = generation.engine.submit(&json, tag, &tx)?;
            let n = body.n.and_then(|n| u64::try_from(n).ok()).unwrap_or(1);
            generation.requests.push(Tracked {
                engine_id,
                done: false,
                start: Instant::now(),
                first_token: None,
                n,
                best_of: body
                    .best_of
                    .and_then(|b| u64::try_from(b).ok())
                    .unwrap_or(n),
            });
        }
        Ok(generation)
    }

    /// vLLM's "Received request" line; `--max-log-len` bounds the prompt's
    /// characters and token ids shown.
    fn log_received(&self, tag: usize, body: &SubmitRequest, prompt: Option<&str>) {
        let limit = self.state.config.max_log_len.unwrap_or(usize::MAX);
        let prompt = prompt
            .filter(|p| !p.is_empty())
            .map_or("None".to_string(), |p| {
                json_repr(&Value::String(p.chars().take(limit).collect()))
            });
        let ids = match &body.prompt {
            Some(Prompt::Tokens(ids)) => ids.as_slice(),
            _ => &[],
        };
        let shown: Vec<String> = ids.iter().take(limit).map(u32::to_string).collect();
        let params = SubmitRequest {
            prompt: None,
            ..body.clone()
        };
        // A guided-decoding grammar may be megabytes: the params are cut too.
        let params = serde_json::to_string(&params).unwrap_or_default();
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
        if let Event::Delta(delta) = &event {
            if !delta.token_ids.is_empty() && tracked.first_token.is_none() {
                tracked.first_token = Some(Instant::now());
            }
        }
        if raw.is_final {
            tracked.done = true;
        }
        if let Event::Final(done) = &event {
            self.finished(raw.tag, done);
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
    fn finished(&self, tag: usize, event: &Final) {
        let tracked = &self.requests[tag];
        let aborted = !event.results.is_empty()
            && event
                .results
                .iter()
                .all(|r| r.finish_reason == FinishReason::Abort);
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
                .map(|r| r.finish_reason.as_str())
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
