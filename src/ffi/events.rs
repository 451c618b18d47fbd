//! Streaming output: each `RequestOutput` the engine thread produces becomes one
//! `engine_event_t` per sequence that progressed, then, when the request is
//! done, one final event.

use std::ffi::{c_char, c_void};

use engine_api::event as wire;

use super::{as_callback, nul_terminated};
use crate::engine::{FinishReason, RequestOutput, SeqDelta, SeqResult, StopReason};
use crate::sampling::TokenLogprobs;

/// What an event reports.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum engine_event_kind {
    /// New tokens (and their text) of one sequence. A sequence's last delta has
    /// its finish reason set.
    ENGINE_EVENT_DELTA = 0,
    /// The request is done: the last event it gets. The struct's fields describe
    /// its best sequence in full (all its tokens, all its text); the JSON has
    /// every returned sequence, best first (`results`).
    ENGINE_EVENT_FINAL = 1,
}

/// Why a sequence ended (vLLM's finish_reason).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum engine_finish_reason {
    /// Still running.
    ENGINE_FINISH_NONE = 0,
    /// EOS, a stop token or a stop string ("stop").
    ENGINE_FINISH_STOP = 1,
    /// `max_tokens` or the model's length limit ("length").
    ENGINE_FINISH_LENGTH = 2,
    /// Aborted: `engine_abort`, a shutdown without drain, `engine_free`, or an
    /// engine failure ("abort").
    ENGINE_FINISH_ABORT = 3,
}

/// What stopped a sequence that finished with ENGINE_FINISH_STOP (vLLM's
/// stop_reason): nothing named for EOS, else a stop token or a stop string.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum engine_stop_reason_kind {
    /// No stop reason (still running, EOS, length, abort).
    ENGINE_STOP_REASON_NONE = 0,
    /// One of the request's `stop_token_ids`: see `stop_token_id`.
    ENGINE_STOP_REASON_TOKEN = 1,
    /// One of the request's `stop` strings: see `stop_text`.
    ENGINE_STOP_REASON_TEXT = 2,
}

/// One piece of a request's output, passed to its `engine_event_fn`. The event
/// and everything it points to are valid only during the callback: copy what you
/// need. Strings are UTF-8 with explicit lengths, and also NUL-terminated.
///
/// The struct grows at the end in later versions (never changing the fields
/// before): `struct_size` is the size the library filled, so a caller compiled
/// against a newer header checks it (`ENGINE_HAS_FIELD`) before reading a field
/// the library might not have.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct engine_event_t {
    /// sizeof the struct the library filled.
    pub struct_size: u32,
    pub kind: engine_event_kind,
    /// The id `engine_submit` returned.
    pub request_id: u64,
    /// Which of the request's sequences (0 .. best_of-1); for the final event,
    /// the index of the best sequence.
    pub seq_index: u32,
    /// Set on a sequence's last delta and on the final event.
    pub finish_reason: engine_finish_reason,
    pub stop_reason_kind: engine_stop_reason_kind,
    /// The stop token, when `stop_reason_kind` is ENGINE_STOP_REASON_TOKEN.
    pub stop_token_id: u32,
    /// New token ids (delta), or all of the best sequence's (final); NULL when
    /// `num_tokens` is 0.
    pub token_ids: *const u32,
    pub num_tokens: usize,
    /// log P of each of `token_ids` (natural log, `num_tokens` values, whether or
    /// not the request asked for "logprobs"); NULL when `num_tokens` is 0.
    pub logprobs: *const f32,
    /// The text the new tokens complete (delta; possibly empty while a character
    /// or a stop string is incomplete), or the best sequence's whole text (final).
    /// Concatenating a sequence's deltas gives its final text. Empty when the
    /// model has no tokenizer.
    pub text: *const c_char,
    pub text_len: usize,
    /// The stop string, when `stop_reason_kind` is ENGINE_STOP_REASON_TEXT; else NULL.
    pub stop_text: *const c_char,
    pub stop_text_len: usize,
    /// Tokens in the prompt.
    pub prompt_tokens: u64,
    /// Tokens this sequence has generated so far (delta), or all returned
    /// sequences together (final), as OpenAI's usage.completion_tokens.
    pub completion_tokens: u64,
    /// Sequences in the final event's JSON `results` (0 for deltas).
    pub num_results: usize,
    /// The whole event as a JSON object, including what the struct leaves out:
    /// {"request_id", "kind": "delta"|"final", "index", "token_ids", "text",
    /// "logprobs", "finish_reason": null|"stop"|"length"|"abort",
    /// "stop_reason": null|token id|string, "usage": {"prompt_tokens",
    /// "completion_tokens", "total_tokens"}}. "logprobs" is null unless the
    /// request asked for them; then it has, per token, an array of
    /// {"token_id", "logprob", "rank", "decoded_token"}: the sampled token first,
    /// then the top ones; "decoded_token" (the token's text where it stands, "" for
    /// bytes of an unfinished character) is left out when the request does not
    /// detokenize. The first event of a request that asked for "prompt_logprobs" adds
    /// "prompt_logprobs" (one entry per prompt token, null first). The final
    /// event has no "index", "token_ids", "text" or "logprobs" of its own but
    /// "results": [{"index", "token_ids", "text", "logprobs",
    /// "cumulative_logprob", "finish_reason", "stop_reason"}, ...], best first.
    pub json: *const c_char,
    pub json_len: usize,
}

/// Receives a request's events, on the engine's thread, one at a time (never two
/// at once for one engine), in order; the final event is the last call for the
/// request. See `engine_submit` for what a callback may and may not do.
pub type engine_event_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, event: *const engine_event_t)>;

/// The caller's `user_data`, handed to the engine thread.
struct UserData(*mut c_void);

// SAFETY: the pointer is never dereferenced here, only passed back to the
// caller's callback; `engine_submit` documents that the callback runs on the
// engine thread, so making that safe is the caller's side of the contract.
unsafe impl Send for UserData {}

/// Turns one request's outputs into callback calls.
pub(crate) struct EventSink {
    callback: unsafe extern "C" fn(*mut c_void, *const engine_event_t),
    user_data: UserData,
    /// Tokens in the prompt (after `truncate_prompt_tokens`), from the outputs.
    prompt_tokens: u64,
    /// The request asked for "logprobs": the JSON carries them.
    logprobs_requested: bool,
    /// Tokens each sequence has generated so far.
    generated: Vec<u64>,
}

/// Event data the struct points into, kept alive across the call.
struct Owned {
    token_ids: Vec<u32>,
    logprobs: Vec<f32>,
    text: Vec<u8>,
    stop_text: Option<Vec<u8>>,
    json: Vec<u8>,
}

fn finish_code(r: Option<FinishReason>) -> engine_finish_reason {
    match r {
        None => engine_finish_reason::ENGINE_FINISH_NONE,
        Some(FinishReason::Stop) => engine_finish_reason::ENGINE_FINISH_STOP,
        Some(FinishReason::Length) => engine_finish_reason::ENGINE_FINISH_LENGTH,
        Some(FinishReason::Abort) => engine_finish_reason::ENGINE_FINISH_ABORT,
    }
}

fn wire_finish(r: FinishReason) -> wire::FinishReason {
    match r {
        FinishReason::Stop => wire::FinishReason::Stop,
        FinishReason::Length => wire::FinishReason::Length,
        FinishReason::Abort => wire::FinishReason::Abort,
    }
}

fn wire_stop(r: &Option<StopReason>) -> Option<wire::StopReason> {
    match r {
        None => None,
        Some(StopReason::Token(t)) => Some(wire::StopReason::Token(*t)),
        Some(StopReason::Text(s)) => Some(wire::StopReason::Text(s.clone())),
    }
}

/// One token's logprobs as vLLM reports them: the sampled token first, then the
/// top ones asked for (logprobs clamped at -9999 as vLLM's API does) and, when
/// the request detokenizes, each token's text where it stands.
fn token_logprobs(t: &TokenLogprobs) -> wire::TokenLogprobs {
    t.entries()
        .iter()
        .enumerate()
        .map(|(i, l)| wire::LogprobEntry {
            token_id: l.token_id,
            logprob: wire::f32_digits(l.logprob),
            rank: l.rank,
            decoded_token: t.decoded.get(i).cloned(),
        })
        .collect()
}

fn logprobs(requested: bool, logprobs: &[TokenLogprobs]) -> Option<Vec<wire::TokenLogprobs>> {
    requested.then(|| logprobs.iter().map(token_logprobs).collect())
}

fn prompt_logprobs(p: &[Option<TokenLogprobs>]) -> Vec<Option<wire::TokenLogprobs>> {
    p.iter().map(|t| t.as_ref().map(token_logprobs)).collect()
}

fn seq_result(r: &SeqResult, logprobs_requested: bool) -> wire::SeqResult {
    wire::SeqResult {
        index: r.index,
        token_ids: r.token_ids.clone(),
        text: r.text.clone(),
        logprobs: logprobs(logprobs_requested, &r.logprobs),
        cumulative_logprob: r.cum_logprob,
        finish_reason: wire_finish(r.finish_reason),
        stop_reason: wire_stop(&r.stop_reason),
    }
}

fn ptr_or_null<T>(v: &[T]) -> *const T {
    if v.is_empty() {
        std::ptr::null()
    } else {
        v.as_ptr()
    }
}

impl EventSink {
    pub fn new(
        callback: unsafe extern "C" fn(*mut c_void, *const engine_event_t),
        user_data: *mut c_void,
        logprobs_requested: bool,
    ) -> EventSink {
        EventSink {
            callback,
            user_data: UserData(user_data),
            prompt_tokens: 0,
            logprobs_requested,
            generated: Vec::new(),
        }
    }

    /// Calls the callback for every event in `out`.
    pub fn deliver(&mut self, out: RequestOutput) {
        self.prompt_tokens = out.prompt_token_ids_len as u64;
        let mut prompt_logprobs = out.prompt_logprobs.as_deref().map(prompt_logprobs);
        for d in &out.deltas {
            if self.generated.len() <= d.index {
                self.generated.resize(d.index + 1, 0);
            }
            self.generated[d.index] += d.token_ids.len() as u64;
            let event = self.delta_json(out.request_id, d, prompt_logprobs.take());
            self.emit(
                engine_event_kind::ENGINE_EVENT_DELTA,
                out.request_id,
                DeltaView::from_delta(d, self.generated[d.index]),
                &event,
            );
        }
        if let Some(results) = &out.results {
            let completion: u64 = results.iter().map(|r| r.token_ids.len() as u64).sum();
            let event = wire::Event::Final(wire::Final {
                request_id: out.request_id,
                finish_reason: results.first().map(|r| wire_finish(r.finish_reason)),
                results: results
                    .iter()
                    .map(|r| seq_result(r, self.logprobs_requested))
                    .collect(),
                usage: wire::Usage::new(self.prompt_tokens, completion),
                prompt_logprobs: prompt_logprobs.take(),
            });
            let view = match results.first() {
                Some(best) => DeltaView {
                    index: best.index,
                    token_ids: &best.token_ids,
                    logprobs: &best.logprobs,
                    text: &best.text,
                    finish_reason: Some(best.finish_reason),
                    stop_reason: &best.stop_reason,
                    completion,
                    num_results: results.len(),
                },
                None => DeltaView {
                    index: 0,
                    token_ids: &[],
                    logprobs: &[],
                    text: "",
                    finish_reason: Some(FinishReason::Abort),
                    stop_reason: &None,
                    completion,
                    num_results: 0,
                },
            };
            self.emit(
                engine_event_kind::ENGINE_EVENT_FINAL,
                out.request_id,
                view,
                &event,
            );
        }
    }

    fn delta_json(
        &self,
        request_id: u64,
        d: &SeqDelta,
        prompt_logprobs: Option<Vec<Option<wire::TokenLogprobs>>>,
    ) -> wire::Event {
        wire::Event::Delta(wire::Delta {
            request_id,
            index: d.index,
            token_ids: d.token_ids.clone(),
            text: d.text.clone(),
            logprobs: logprobs(self.logprobs_requested, &d.logprobs),
            finish_reason: d.finish_reason.map(wire_finish),
            stop_reason: wire_stop(&d.stop_reason),
            usage: wire::Usage::new(self.prompt_tokens, self.generated[d.index]),
            prompt_logprobs,
        })
    }

    fn emit(
        &self,
        kind: engine_event_kind,
        request_id: u64,
        view: DeltaView<'_>,
        event: &wire::Event,
    ) {
        let owned = Owned {
            token_ids: view.token_ids.to_vec(),
            logprobs: view.logprobs.iter().map(|t| t.chosen.logprob).collect(),
            text: nul_terminated(view.text),
            stop_text: match view.stop_reason {
                Some(StopReason::Text(s)) => Some(nul_terminated(s)),
                _ => None,
            },
            // Plain data: writing it cannot fail.
            json: nul_terminated(&serde_json::to_string(event).unwrap_or_default()),
        };
        let (stop_reason_kind, stop_token_id) = match view.stop_reason {
            None => (engine_stop_reason_kind::ENGINE_STOP_REASON_NONE, 0),
            Some(StopReason::Token(t)) => (engine_stop_reason_kind::ENGINE_STOP_REASON_TOKEN, *t),
            Some(StopReason::Text(_)) => (engine_stop_reason_kind::ENGINE_STOP_REASON_TEXT, 0),
        };
        let event = engine_event_t {
            struct_size: std::mem::size_of::<engine_event_t>() as u32,
            kind,
            request_id,
            seq_index: view.index as u32,
            finish_reason: finish_code(view.finish_reason),
            stop_reason_kind,
            stop_token_id,
            token_ids: ptr_or_null(&owned.token_ids),
            num_tokens: owned.token_ids.len(),
            logprobs: ptr_or_null(&owned.logprobs),
            text: owned.text.as_ptr().cast(),
            text_len: owned.text.len() - 1,
            stop_text: owned
                .stop_text
                .as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr().cast()),
            stop_text_len: owned.stop_text.as_ref().map_or(0, |s| s.len() - 1),
            prompt_tokens: self.prompt_tokens,
            completion_tokens: view.completion,
            num_results: view.num_results,
            json: owned.json.as_ptr().cast(),
            json_len: owned.json.len() - 1,
        };
        as_callback(|| {
            // SAFETY: `callback` is the caller's non-NULL function, called with its own
            // `user_data` on the engine thread as `engine_submit` documents; `event`
            // and the buffers in `owned` it points into outlive the call.
            unsafe { (self.callback)(self.user_data.0, &event) }
        });
        drop(owned);
    }
}

/// The sequence data one event shows.
struct DeltaView<'a> {
    index: usize,
    token_ids: &'a [u32],
    logprobs: &'a [TokenLogprobs],
    text: &'a str,
    finish_reason: Option<FinishReason>,
    stop_reason: &'a Option<StopReason>,
    completion: u64,
    num_results: usize,
}

impl<'a> DeltaView<'a> {
    fn from_delta(d: &'a SeqDelta, completion: u64) -> DeltaView<'a> {
        DeltaView {
            index: d.index,
            token_ids: &d.token_ids,
            logprobs: &d.logprobs,
            text: &d.text,
            finish_reason: d.finish_reason,
            stop_reason: &d.stop_reason,
            completion,
            num_results: 0,
        }
    }
}
