//! `POST /v1/completions`: prompts as text, token ids, or lists of either; one
//! engine request per prompt; `echo`, logprobs, streaming.

use std::sync::Arc;

use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use crate::endpoints::{random_id, unix_time};
use crate::engine_handle::EngineHandle;
use crate::engine_request::{
    engine_request, keep_last, max_tokens, streams_incrementally, EngineParams,
};
use crate::error::{ApiError, ApiResult};
use crate::generation::Generation;
use crate::logprobs::{completion_logprobs, TokenText};
use crate::offload;
use crate::request::{parse_completion, CommonFields, CompletionRequest};
use crate::response::{json_response, sse_event, sse_response, Body};
use crate::state::AppState;
use crate::stream::{
    check_stream_options, end_stream, pump, send_done, send_error, usage, ChunkHeader,
};
use engine_api::event::{Event, Final, FinishReason, SeqResult, TokenLogprobs};
use engine_api::request::SubmitRequest;

/// vLLM's default for completions.
const DEFAULT_MAX_TOKENS: i64 = 16;

/// One prompt as the engine got it, and what `echo` shows of it.
struct Prompt {
    ids: Vec<u32>,
    echo_text: String,
}

/// Everything the response needs besides the engine's events.
struct Completion {
    engine: Arc<EngineHandle>,
    header: ChunkHeader,
    prompts: Vec<Prompt>,
    /// Choices per prompt.
    n: usize,
    echo: bool,
    /// `echo` with `max_tokens: 0`: the prompt alone is the output.
    echo_only: bool,
    logprobs: bool,
    as_token_ids: bool,
}

pub async fn create(state: Arc<AppState>, body: &[u8]) -> ApiResult<Response<Body>> {
    let req = parse_completion(body)?;
    let c = &req.common;
    state.check_model(&c.model)?;
    let engine = state.engine()?;
    if req.suffix.is_some() {
        return Err(ApiError::bad_request("suffix is not currently supported"));
    }
    check_stream_options(c)?;
    check_sequence_count(&req.prompt, c)?;
    if req.logprobs.is_some_and(|n| n < 0) {
        return Err(ApiError::bad_request(
            "if passed, `logprobs` must be a positive value.",
        ));
    }
    if c.truncate_prompt_tokens.is_none() {
        let bound = state.prompt_bound();
        for text in prompt_texts(&req.prompt) {
            bound.check(text, engine.info().max_model_len)?;
        }
    }
    let (req, prepared) = {
        let engine = engine.clone();
        offload::run(&state.large_jobs, body.len(), move || {
            let prepared = prepare(&engine, &req);
            (req, prepared)
        })
        .await?
    };
    let (prompts, bodies) = prepared?;
    let c = &req.common;
    let id = format!("cmpl-{}", random_id());
    let texts: Vec<&str> = prompts.iter().map(|p| p.echo_text.as_str()).collect();
    let generation = Generation::start(state.clone(), engine.clone(), id.clone(), &bodies, &texts)?;
    let echo = c.echo == Some(true);
    let completion = Completion {
        engine,
        header: ChunkHeader::new(
            id,
            "text_completion",
            unix_time(),
            state.model_name().into(),
            c,
        ),
        prompts,
        n: c.n.unwrap_or(1).max(1) as usize,
        echo,
        echo_only: echo && c.max_tokens == Some(Some(0)),
        logprobs: req.logprobs.is_some(),
        as_token_ids: c
            .return_tokens_as_token_ids
            .unwrap_or(state.config.return_tokens_as_token_ids),
    };
    if c.stream != Some(true) {
        let response = completion.collect(generation).await?;
        return Ok(json_response(StatusCode::OK, &response));
    }
    let (tx, response) = sse_response();
    let incremental = streams_incrementally(c);
    tokio::spawn(async move {
        let mut generation = generation;
        if incremental {
            completion.stream(&mut generation, &tx).await;
        } else {
            // best_of > n or beam search: the result is known only at the end,
            // so it comes as one chunk (then the usage chunk, if asked for).
            tokio::select! {
                r = completion.collect(generation) => match r {
                    Ok(v) => completion.send_whole(&v, &tx).await,
                    Err(e) => send_error(&tx, &completion.header.id, &e).await,
                },
                _ = tx.closed() => return,
            }
        }
        send_done(&tx).await;
    });
    Ok(response)
}

/// The most sequences one request may start, over all its prompts (prompts ×
/// best_of): the engine bounds n and best_of by max_num_seqs per prompt, but a
/// list of prompts multiplies them, and every sequence holds memory until the
/// response is sent (4000 prompts of n 256 were a million sequences from a
/// 0.23 MB body).
const MAX_SEQUENCES_PER_REQUEST: i64 = 4096;

fn check_sequence_count(prompt: &Value, c: &CommonFields) -> ApiResult<()> {
    let prompts = match prompt {
        // A list of strings or of token lists; a flat list of ids is one prompt.
        Value::Array(items) if !items.first().is_some_and(Value::is_number) => items.len(),
        _ => 1,
    };
    let n = c.n.unwrap_or(1);
    let width = c.best_of.unwrap_or(n).max(n).max(1);
    let total = (prompts as i64).saturating_mul(width);
    // One prompt: the engine's own bound (max_num_seqs) speaks, in vLLM's words.
    if prompts > 1 && total > MAX_SEQUENCES_PER_REQUEST {
        return Err(ApiError::bad_request(format!(
            "a request may run at most {MAX_SEQUENCES_PER_REQUEST} sequences (prompts x \
             best_of, or n); this one asks for {total} ({prompts} prompts x {width})"
        )));
    }
    Ok(())
}

/// Tokenizes, truncates and length-checks each prompt; builds its engine request.
fn prepare(
    engine: &EngineHandle,
    req: &CompletionRequest,
) -> ApiResult<(Vec<Prompt>, Vec<SubmitRequest>)> {
    let c = &req.common;
    let echo = c.echo == Some(true);
    let requested_max = match c.max_tokens {
        None => Some(DEFAULT_MAX_TOKENS),
        // echo with max_tokens 0: generate one token, show only the prompt.
        Some(Some(0)) if echo => Some(1),
        Some(m) => m,
    };
    let mut prompts = Vec::new();
    let mut bodies = Vec::new();
    for input in prompt_inputs(&req.prompt, engine.info().vocab_size)? {
        let (mut ids, echo_text) = match input {
            PromptInput::Text(text) => {
                if text.is_empty() {
                    return Err(ApiError::bad_request(
                        "Either prompt or prompt_ids should be provided.",
                    ));
                }
                (
                    engine.tokenize(&text, c.add_special_tokens.unwrap_or(true))?,
                    text,
                )
            }
            PromptInput::Tokens(ids) => {
                let text = if echo {
                    engine.detokenize(&ids, false)?
                } else {
                    String::new()
                };
                (ids, text)
            }
        };
        keep_last(&mut ids, c.truncate_prompt_tokens);
        let max_tokens = max_tokens(requested_max, ids.len(), engine.info().max_model_len)?;
        bodies.push(engine_request(
            c,
            EngineParams {
                prompt_ids: ids.clone(),
                max_tokens,
                default_temperature: 1.0,
                logprobs: req.logprobs,
                prompt_logprobs: if echo { req.logprobs } else { None },
            },
        )?);
        prompts.push(Prompt { ids, echo_text });
    }
    Ok((prompts, bodies))
}

/// The text prompts of a request (none when it gives token ids).
fn prompt_texts(prompt: &Value) -> Vec<&str> {
    match prompt {
        Value::String(s) => vec![s.as_str()],
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
}

/// vLLM's accepted prompt shapes: a string, strings, token ids, lists of ids.
fn prompt_inputs(prompt: &Value, vocab: usize) -> ApiResult<Vec<PromptInput>> {
    let bad_shape = || {
        ApiError::bad_request(
            "prompt must be a string, array of strings, array of tokens, or array of token arrays",
        )
    };
    let tokens = |items: &[Value]| -> ApiResult<Vec<u32>> {
        items
            .iter()
            .map(|v| match v.as_i64() {
                Some(t) if (0..vocab as i64).contains(&t) => Ok(t as u32),
                Some(t) => Err(ApiError::bad_request(format!(
                    "token id {t} is out of range for a vocabulary of {vocab} tokens"
                ))),
                None => Err(bad_shape()),
            })
            .collect()
    };
    match prompt {
        Value::String(s) => Ok(vec![PromptInput::Text(s.clone())]),
        Value::Array(items) if items.is_empty() => {
            Err(ApiError::bad_request("please provide at least one prompt"))
        }
        Value::Array(items) => match &items[0] {
            Value::String(_) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(|s| PromptInput::Text(s.into()))
                        .ok_or_else(bad_shape)
                })
                .collect(),
            Value::Number(_) => Ok(vec![PromptInput::Tokens(tokens(items)?)]),
            Value::Array(_) => items
                .iter()
                .map(|v| match v {
                    Value::Array(ids) if !ids.is_empty() => Ok(PromptInput::Tokens(tokens(ids)?)),
                    Value::Array(_) => Err(ApiError::bad_request(
                        "Either prompt or prompt_ids should be provided.",
                    )),
                    _ => Err(bad_shape()),
                })
                .collect(),
            _ => Err(bad_shape()),
        },
        _ => Err(bad_shape()),
    }
}

impl Completion {
    fn token_text(&self) -> impl Fn(u32) -> String + '_ {
        |id| self.engine.detokenize(&[id], false).unwrap_or_default()
    }

    /// The text, token ids and logprob steps a choice shows: the generated ones,
    /// after the prompt's under `echo`.
    fn shown<'a>(
        &'a self,
        prompt: &'a Prompt,
        prompt_logprobs: Option<&'a [Option<TokenLogprobs>]>,
        text: &str,
        ids: &'a [u32],
        steps: Option<&'a [TokenLogprobs]>,
        first: bool,
    ) -> (String, Vec<u32>, Vec<Option<&'a TokenLogprobs>>) {
        let generated_steps = || -> Vec<Option<&TokenLogprobs>> {
            steps
                .map(|s| s.iter().map(Some).collect())
                .unwrap_or_default()
        };
        let prompt_steps = || -> Vec<Option<&TokenLogprobs>> {
            prompt_logprobs
                .map(|p| p.iter().map(Option::as_ref).collect())
                .unwrap_or_default()
        };
        match (self.echo && first, self.echo_only) {
            (true, true) => (prompt.echo_text.clone(), prompt.ids.clone(), prompt_steps()),
            (false, true) => (String::new(), Vec::new(), Vec::new()),
            (true, false) => {
                let mut all_ids = prompt.ids.clone();
                all_ids.extend_from_slice(ids);
                let mut all_steps = prompt_steps();
                all_steps.resize(prompt.ids.len(), None);
                all_steps.extend(generated_steps());
                (format!("{}{text}", prompt.echo_text), all_ids, all_steps)
            }
            (false, false) => (text.to_string(), ids.to_vec(), generated_steps()),
        }
    }

    fn logprobs_json(
        &self,
        ids: &[u32],
        steps: &[Option<&TokenLogprobs>],
        offset: usize,
    ) -> (Value, usize) {
        if !self.logprobs {
            return (Value::Null, offset);
        }
        let decode = self.token_text();
        let text = TokenText {
            as_ids: self.as_token_ids,
            decode: &decode,
        };
        completion_logprobs(ids, steps, offset, &text)
    }

    /// Waits for every prompt's final event and builds the whole response.
    async fn collect(&self, mut generation: Generation) -> ApiResult<Value> {
        let mut finals: Vec<Option<Final>> = vec![None; self.prompts.len()];
        let mut prompt_logprobs: Vec<Option<Vec<Option<TokenLogprobs>>>> =
            vec![None; self.prompts.len()];
        while let Some(next) = generation.next().await {
            let (tag, event) = next?;
            if let Some(p) = event.prompt_logprobs() {
                prompt_logprobs[tag] = Some(p.clone());
            }
            if let Event::Final(done) = event {
                finals[tag] = Some(done);
            }
        }
        let mut choices = Vec::new();
        let (mut prompt_tokens, mut completion_tokens) = (0, 0);
        for (p, event) in finals.iter().enumerate() {
            let event = event
                .as_ref()
                .ok_or_else(|| ApiError::internal("the engine ended a request without a result"))?;
            prompt_tokens += event.usage.prompt_tokens;
            completion_tokens += event.usage.completion_tokens;
            for r in &event.results {
                self.check_not_failed(r)?;
                choices.push(self.choice(choices.len(), p, r, prompt_logprobs[p].as_deref()));
            }
        }
        Ok(json!({
            "id": self.header.id,
            "object": "text_completion",
            "created": self.header.created,
            "model": self.header.model,
            "choices": choices,
            "usage": usage(prompt_tokens, completion_tokens),
        }))
    }

    /// An aborted sequence the client did not abort means the engine stopped.
    fn check_not_failed(&self, r: &SeqResult) -> ApiResult<()> {
        if r.finish_reason == FinishReason::Abort {
            self.engine.check()?;
        }
        Ok(())
    }

    fn choice(
        &self,
        index: usize,
        p: usize,
        r: &SeqResult,
        prompt_logprobs: Option<&[Option<TokenLogprobs>]>,
    ) -> Value {
        let prompt = &self.prompts[p];
        let (text, ids, steps) = self.shown(
            prompt,
            prompt_logprobs,
            &r.text,
            &r.token_ids,
            r.logprobs.as_deref(),
            true,
        );
        let (logprobs, _) = self.logprobs_json(&ids, &steps, 0);
        json!({
            "index": index,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": r.finish_reason,
            "stop_reason": r.stop_reason,
        })
    }

    /// A whole response as one stream chunk, and its usage as the usage chunk.
    async fn send_whole(&self, response: &Value, tx: &tokio::sync::mpsc::Sender<bytes::Bytes>) {
        let choices = response["choices"].as_array().cloned().unwrap_or_default();
        let _ = tx.send(sse_event(&self.header.chunk(choices, None))).await;
        if self.header.include_usage {
            let u = &response["usage"];
            let chunk = self.header.usage_chunk(
                u["prompt_tokens"].as_u64().unwrap_or(0),
                u["completion_tokens"].as_u64().unwrap_or(0),
            );
            let _ = tx.send(sse_event(&chunk)).await;
        }
    }

    /// Streams each sequence's deltas as chunks as they come.
    async fn stream(
        &self,
        generation: &mut Generation,
        tx: &tokio::sync::mpsc::Sender<bytes::Bytes>,
    ) {
        let choices = self.prompts.len() * self.n;
        let mut started = vec![false; choices];
        let mut finished = vec![false; choices];
        let mut offsets = vec![0usize; choices];
        let mut prompt_logprobs: Vec<Option<Vec<Option<TokenLogprobs>>>> =
            vec![None; self.prompts.len()];
        let mut engine_stopped = false;
        let totals = pump(generation, tx, |tag, event| {
            if let Some(p) = event.prompt_logprobs() {
                prompt_logprobs[tag] = Some(p.clone());
            }
            let event = match event {
                Event::Delta(delta) => delta,
                // Sequences that ended without a last delta (aborted) still get one.
                Event::Final(done) => return done
                    .results
                    .iter()
                    .filter(|r| !std::mem::replace(&mut finished[tag * self.n + r.index], true))
                    .map(|r| {
                        engine_stopped |= self.check_not_failed(r).is_err();
                        let choice = json!({"index": tag * self.n + r.index, "text": "", "logprobs": null,
                            "finish_reason": r.finish_reason, "stop_reason": r.stop_reason});
                        self.header.chunk(vec![choice], None)
                    })
                    .collect(),
            };
            let index = tag * self.n + event.index;
            if index >= choices {
                return Vec::new();
            }
            let first = !std::mem::replace(&mut started[index], true);
            let (text, ids, steps) = self.shown(
                &self.prompts[tag],
                prompt_logprobs[tag].as_deref(),
                &event.text,
                &event.token_ids,
                event.logprobs.as_deref(),
                first,
            );
            let (logprobs, end) = self.logprobs_json(&ids, &steps, offsets[index]);
            offsets[index] = end;
            if event.finish_reason.is_some() {
                finished[index] = true;
            } else if text.is_empty() && logprobs.is_null() {
                return Vec::new();
            }
            let choice = json!({"index": index, "text": text, "logprobs": logprobs,
                "finish_reason": event.finish_reason, "stop_reason": event.stop_reason});
            let seq_usage = usage(event.usage.prompt_tokens, event.usage.completion_tokens);
            vec![self.header.chunk(vec![choice], Some(seq_usage))]
        })
        .await;
        if let Some(totals) = totals {
            end_stream(&self.header, &self.engine, tx, &totals, engine_stopped).await;
        }
    }
}
