//! Server-sent events for both APIs: chunk envelopes, the loop that turns engine
//! events into chunks while watching for the client going away, the usage chunk
//! of `stream_options.include_usage`, in-stream errors and `[DONE]`.

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::engine_handle::EngineHandle;
use crate::error::{ApiError, ApiResult};
use crate::generation::Generation;
use crate::request::CommonFields;
use crate::response::{sse_done, sse_event};
use engine_api::event::Event;

/// What every chunk of one response repeats.
pub struct ChunkHeader {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    /// `stream_options.include_usage`: `"usage": null` on every chunk, then a
    /// usage-only chunk at the end.
    pub include_usage: bool,
    /// `stream_options.continuous_usage_stats`: every chunk carries its
    /// sequence's usage so far.
    pub continuous_usage: bool,
}

impl ChunkHeader {
    pub fn new(
        id: String,
        object: &'static str,
        created: u64,
        model: String,
        c: &CommonFields,
    ) -> ChunkHeader {
        let options = c.stream_options.clone().unwrap_or_default();
        let include_usage = options.include_usage.unwrap_or(false);
        ChunkHeader {
            id,
            object,
            created,
            model,
            include_usage,
            continuous_usage: include_usage && options.continuous_usage_stats.unwrap_or(false),
        }
    }

    /// A chunk with `choices`; `usage` is the sequence's usage so far, reported
    /// only with continuous usage stats.
    pub fn chunk(&self, choices: Vec<Value>, usage: Option<Value>) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if self.include_usage {
            chunk["usage"] = match (self.continuous_usage, usage) {
                (true, Some(u)) => u,
                _ => Value::Null,
            };
        }
        chunk
    }

    /// The last chunk under `include_usage`: no choices, the whole usage.
    pub fn usage_chunk(&self, prompt_tokens: u64, completion_tokens: u64) -> Value {
        json!({
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage(prompt_tokens, completion_tokens),
        })
    }
}

pub fn usage(prompt_tokens: u64, completion_tokens: u64) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

/// `stream_options` only with `stream` (vLLM v0.5's check).
pub fn check_stream_options(c: &CommonFields) -> ApiResult<()> {
    if c.stream_options.is_some() && c.stream != Some(true) {
        return Err(ApiError::bad_request(
            "Stream options can only be defined when stream is true.",
        ));
    }
    Ok(())
}

/// Totals for the usage chunk.
#[derive(Default)]
pub struct Totals {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Feeds engine events to `on_event` (which returns the chunks to send) until
/// every request is final; stops early, aborting the requests, if the client
/// goes away. Returns the totals from the final events, or `None` when the
/// client is gone. An engine failure is sent as an in-stream error event.
pub async fn pump(
    generation: &mut Generation,
    tx: &mpsc::Sender<Bytes>,
    mut on_event: impl FnMut(usize, &Event) -> Vec<Value>,
) -> Option<Totals> {
    let mut totals = Totals::default();
    loop {
        let next = tokio::select! {
            next = generation.next() => next,
            _ = tx.closed() => {
                generation.abort();
                return None;
            }
        };
        let Some(next) = next else { break };
        let (tag, event) = match next {
            Ok(x) => x,
            Err(e) => {
                send_error(tx, generation.request_id(), &e).await;
                return Some(totals);
            }
        };
        if let Event::Final(done) = &event {
            totals.prompt_tokens += done.usage.prompt_tokens;
            totals.completion_tokens += done.usage.completion_tokens;
        }
        for chunk in on_event(tag, &event) {
            if tx.send(sse_event(&chunk)).await.is_err() {
                generation.abort();
                return None;
            }
        }
    }
    Some(totals)
}

/// An error after the stream started: an `{"error": ...}` event (the caller
/// still ends the stream with `[DONE]`), and a log line.
pub async fn send_error(tx: &mpsc::Sender<Bytes>, request_id: &str, e: &ApiError) {
    crate::http::log_error(request_id, "in its stream", e);
    let _ = tx.send(sse_event(&e.body())).await;
}

/// After the last chunk of an incremental stream: an error event if the engine
/// stopped under the request, then the usage chunk if asked for.
pub async fn end_stream(
    header: &ChunkHeader,
    engine: &EngineHandle,
    tx: &mpsc::Sender<Bytes>,
    totals: &Totals,
    engine_stopped: bool,
) {
    if engine_stopped {
        if let Err(e) = engine.check() {
            send_error(tx, &header.id, &e.into()).await;
        }
    }
    if header.include_usage {
        let chunk = header.usage_chunk(totals.prompt_tokens, totals.completion_tokens);
        let _ = tx.send(sse_event(&chunk)).await;
    }
}

pub async fn send_done(tx: &mpsc::Sender<Bytes>) {
    let _ = tx.send(sse_done()).await;
}
