//! `POST /v1/chat/completions`: messages rendered with the chat template, one
//! engine request, `n` choices as messages; `echo`, logprobs, streaming.

use std::sync::Arc;

use bytes::Bytes;
use engine_api::event::{Delta, Event, Final, FinishReason, SeqResult, StopReason, TokenLogprobs};
use engine_api::request::{ChatTemplateRequest, SubmitRequest};
use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::endpoints::{random_id, unix_time};
use crate::engine_handle::EngineHandle;
use crate::engine_request::{
    engine_request, keep_last, max_tokens, streams_incrementally, uses_guided_decoding,
    EngineParams,
};
use crate::error::{ApiError, ApiResult};
use crate::generation::Generation;
use crate::logprobs::{chat_logprobs, TokenText};
use crate::offload;
use crate::prompt_bound::PromptBound;
use crate::request::{parse_chat, ChatFields, ChatMessage, ChatRequest, CommonFields};
use crate::response::{json_response, sse_event, sse_response, Body};
use crate::state::AppState;
use crate::stream::{
    check_stream_options, end_stream, pump, send_done, send_error, usage, ChunkHeader,
};
use crate::tools::{self, ToolChoice, ToolPlan};

/// vLLM's default temperature for chat.
const DEFAULT_TEMPERATURE: f64 = 0.7;

/// The prompt a conversation renders to, and the conversation as the template saw it.
pub struct RenderedChat {
    pub prompt: String,
    pub conversation: Vec<(String, String)>,
}

/// Flattens messages as vLLM does (text parts joined by newlines; a message
/// without content is dropped) and renders them with the chat template.
pub fn render_chat(
    engine: &EngineHandle,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    extras: Option<&ChatFields>,
) -> ApiResult<RenderedChat> {
    let mut conversation = Vec::with_capacity(messages.len());
    let mut template_messages = Vec::with_capacity(messages.len());
    for m in messages {
        let content = match &m.content {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut texts = Vec::with_capacity(parts.len());
                for part in parts {
                    match part.get("type").and_then(Value::as_str) {
                        Some("text") => texts.push(
                            part.get("text")
                                .and_then(Value::as_str)
                                .ok_or_else(|| {
                                    ApiError::bad_request("a text part needs a string `text`")
                                })?
                                .to_string(),
                        ),
                        Some(other) => {
                            return Err(ApiError::bad_request(format!(
                                "Unknown part type: {other}"
                            )))
                        }
                        None => return Err(ApiError::bad_request("a content part needs a `type`")),
                    }
                }
                texts.join("\n")
            }
            Some(_) => {
                return Err(ApiError::bad_request(
                    "message content must be a string or a list of content parts",
                ))
            }
        };
        conversation.push((m.role.clone(), content));
        let mut message = json!({"role": m.role, "content": conversation.last().map(|c| &c.1)});
        // Templates that know tool calls and names read these.
        if let Some(name) = &m.name {
            message["name"] = json!(name);
        }
        if let Some(calls) = &m.tool_calls {
            message["tool_calls"] = calls.clone();
        }
        if let Some(id) = &m.tool_call_id {
            message["tool_call_id"] = json!(id);
        }
        template_messages.push(message);
    }
    let chat = ChatTemplateRequest {
        messages: Some(Value::Array(template_messages)),
        continue_final_message: extras.and_then(|r| r.continue_final_message),
        tools: extras.and_then(|r| r.tools.clone().filter(Value::is_array)),
        documents: extras.and_then(|r| r.documents.as_ref()).map(|d| json!(d)),
        chat_template_kwargs: extras.and_then(|r| r.chat_template_kwargs.clone()),
    };
    let chat = serde_json::to_string(&chat)
        .map_err(|e| ApiError::internal(format!("unwritable chat: {e}")))?;
    let prompt = engine.apply_chat_template(&chat, add_generation_prompt)?;
    Ok(RenderedChat {
        prompt,
        conversation,
    })
}

/// Everything the response needs besides the engine's events.
struct Chat {
    engine: Arc<EngineHandle>,
    header: ChunkHeader,
    n: usize,
    role: String,
    /// What `echo` puts before each choice's content.
    echo_text: String,
    /// Top alternatives per token when logprobs are on.
    top_logprobs: Option<usize>,
    as_token_ids: bool,
    tools: Option<ToolPlan>,
}

pub async fn create(state: Arc<AppState>, body: &[u8]) -> ApiResult<Response<Body>> {
    let req = parse_chat(body)?;
    let c = &req.common;
    state.check_model(&c.model)?;
    let engine = state.engine()?;
    check_stream_options(c)?;
    let tool_plan = tools::plan(
        req.own.tools.as_ref(),
        req.own.tool_choice.as_ref(),
        state.config.auto_tools,
    )?;
    let forced_tools = forced_tool_schema(&req, tool_plan.as_ref());
    if forced_tools.is_some() && uses_guided_decoding(c)? {
        return Err(ApiError::bad_request(
            "You can only either use guided decoding or tools, not both.",
        ));
    }
    let logprobs = chat_logprobs_param(&req)?;
    let add_generation_prompt = req.own.add_generation_prompt.unwrap_or(true);
    // A prompt certain not to fit is refused before it is tokenized, unless it
    // is to be truncated.
    let bound = c
        .truncate_prompt_tokens
        .is_none()
        .then(|| state.prompt_bound());
    let (req, prepared) = {
        let engine = engine.clone();
        offload::run(&state.large_jobs, body.len(), move || {
            let prepared = render_and_tokenize(&engine, &req, add_generation_prompt, bound);
            (req, prepared)
        })
        .await?
    };
    let (rendered, mut ids) = prepared?;
    let c = &req.common;
    if let Some(plan) = &tool_plan {
        tools::check_auto(plan, &rendered.prompt)?;
    }
    keep_last(&mut ids, c.truncate_prompt_tokens);
    let requested_max = req.own.max_completion_tokens.or(c.max_tokens.flatten());
    let max_tokens = max_tokens(requested_max, ids.len(), engine.info().max_model_len)?;
    let params = EngineParams {
        prompt_ids: ids,
        max_tokens,
        default_temperature: DEFAULT_TEMPERATURE,
        logprobs,
        prompt_logprobs: None,
    };
    let request = chat_engine_request(c, params, tool_plan.as_ref(), forced_tools)?;
    let role = response_role(&state, &req, add_generation_prompt);
    // echo: the last message's content, when it is the role being generated.
    let echo_text = match rendered.conversation.last() {
        Some((r, content)) if c.echo == Some(true) && *r == role => content.clone(),
        _ => String::new(),
    };
    let id = format!("chatcmpl-{}", random_id());
    let generation = Generation::start(
        state.clone(),
        engine.clone(),
        id.clone(),
        &[request],
        &[rendered.prompt.as_str()],
    )?;
    let chat = Chat {
        engine,
        header: ChunkHeader::new(
            id,
            "chat.completion.chunk",
            unix_time(),
            state.model_name().into(),
            c,
        ),
        n: c.n.unwrap_or(1).max(1) as usize,
        role,
        echo_text,
        top_logprobs: logprobs.map(|n| n as usize),
        as_token_ids: c
            .return_tokens_as_token_ids
            .unwrap_or(state.config.return_tokens_as_token_ids),
        tools: tool_plan,
    };
    chat.respond(generation, c).await
}

/// The schema forced tool calls are generated under ("required" or a named
/// tool); "required" without parallel calls is exactly one call.
fn forced_tool_schema(req: &ChatRequest, plan: Option<&ToolPlan>) -> Option<Value> {
    let mut schema = plan.and_then(ToolPlan::schema)?;
    let parallel = req
        .own
        .parallel_tool_calls
        .as_ref()
        .and_then(Value::as_bool);
    if parallel == Some(false) && schema["type"] == "array" {
        schema["maxItems"] = json!(1);
    }
    Some(schema)
}

/// The engine request, with what the tools need of it.
fn chat_engine_request(
    c: &CommonFields,
    params: EngineParams,
    plan: Option<&ToolPlan>,
    forced_tools: Option<Value>,
) -> ApiResult<SubmitRequest> {
    let mut request = engine_request(c, params)?;
    if let Some(ToolChoice::Auto(parser)) = plan.map(|t| &t.choice) {
        if parser.keeps_special_tokens() {
            // Its marker is a special token (vLLM's parser does the same).
            request.skip_special_tokens = Some(false);
        }
    }
    if let Some(schema) = forced_tools {
        // The call's arguments (or the list of calls) are generated under its schema.
        request.guided_json = Some(schema);
    }
    Ok(request)
}

/// The role of the generated message: the server's, or the last message's
/// when the model continues it.
fn response_role(state: &AppState, req: &ChatRequest, add_generation_prompt: bool) -> String {
    let configured = &state.config.response_role;
    if add_generation_prompt {
        return configured.clone();
    }
    req.own
        .messages
        .last()
        .map_or_else(|| configured.clone(), |m| m.role.clone())
}

impl Chat {
    /// The whole response, or a stream of chunks.
    async fn respond(self, generation: Generation, c: &CommonFields) -> ApiResult<Response<Body>> {
        let chat = self;
        if c.stream != Some(true) {
            let response = chat.collect(generation).await?;
            return Ok(json_response(StatusCode::OK, &response));
        }
        let (tx, response) = sse_response();
        // Calls parsed out of the whole output ("required", "auto") come at the end.
        let incremental = streams_incrementally(c)
            && chat
                .tools
                .as_ref()
                .is_none_or(|t| matches!(t.choice, ToolChoice::None | ToolChoice::Named(_)));
        tokio::spawn(async move {
            let mut generation = generation;
            if incremental {
                chat.stream(&mut generation, &tx).await;
            } else {
                tokio::select! {
                    _ = chat.stream_at_end(generation, &tx) => {}
                    _ = tx.closed() => return,
                }
            }
            send_done(&tx).await;
        });
        Ok(response)
    }
}

/// The rendered conversation and its token ids (on the blocking pool).
fn render_and_tokenize(
    engine: &EngineHandle,
    req: &ChatRequest,
    add_generation_prompt: bool,
    bound: Option<PromptBound>,
) -> ApiResult<(RenderedChat, Vec<u32>)> {
    let rendered = render_chat(
        engine,
        &req.own.messages,
        add_generation_prompt,
        Some(&req.own),
    )?;
    if let Some(bound) = bound {
        bound.check(&rendered.prompt, engine.info().max_model_len)?;
    }
    let add_special_tokens = req.common.add_special_tokens.unwrap_or(false);
    let ids = engine.tokenize(&rendered.prompt, add_special_tokens)?;
    Ok((rendered, ids))
}

/// `logprobs` (bool) and `top_logprobs` (int) to the engine's logprobs count.
fn chat_logprobs_param(req: &ChatRequest) -> ApiResult<Option<i64>> {
    let wanted = req.own.logprobs == Some(true);
    if req.own.top_logprobs.is_some() && !wanted {
        return Err(ApiError::bad_request(
            "when using `top_logprobs`, `logprobs` must be set to true.",
        ));
    }
    if req.own.top_logprobs.is_some_and(|n| !(0..=20).contains(&n)) {
        return Err(ApiError::bad_request(
            "`top_logprobs` must be a value in the interval [0, 20].",
        ));
    }
    let logprobs = wanted.then(|| req.own.top_logprobs.unwrap_or(0));
    Ok(logprobs)
}

impl Chat {
    fn logprobs_json(&self, ids: &[u32], steps: Option<&[TokenLogprobs]>) -> Value {
        let (Some(top), Some(steps)) = (self.top_logprobs, steps) else {
            return Value::Null;
        };
        let decode = |id: u32| self.engine.detokenize(&[id], false).unwrap_or_default();
        let text = TokenText {
            as_ids: self.as_token_ids,
            decode: &decode,
        };
        json!({"content": chat_logprobs(ids, steps, top, &text)})
    }

    fn check_not_failed(&self, r: &SeqResult) -> ApiResult<()> {
        if r.finish_reason == FinishReason::Abort {
            self.engine.check()?;
        }
        Ok(())
    }

    async fn final_event(&self, generation: &mut Generation) -> ApiResult<Final> {
        let mut last = None;
        while let Some(next) = generation.next().await {
            if let (_, Event::Final(event)) = next? {
                last = Some(event);
            }
        }
        let event =
            last.ok_or_else(|| ApiError::internal("the engine ended a request without a result"))?;
        for r in &event.results {
            self.check_not_failed(r)?;
        }
        Ok(event)
    }

    async fn collect(&self, mut generation: Generation) -> ApiResult<Value> {
        let event = self.final_event(&mut generation).await?;
        let choices: Vec<Value> = event
            .results
            .iter()
            .enumerate()
            .map(|(index, r)| {
                let (message, finish_reason) = self.message(r);
                json!({
                    "index": index,
                    "message": message,
                    "logprobs": self.logprobs_json(&r.token_ids, r.logprobs.as_deref()),
                    "finish_reason": finish_reason,
                    "stop_reason": r.stop_reason,
                })
            })
            .collect();
        Ok(json!({
            "id": self.header.id,
            "object": "chat.completion",
            "created": self.header.created,
            "model": self.header.model,
            "choices": choices,
            "usage": usage(event.usage.prompt_tokens, event.usage.completion_tokens),
        }))
    }

    /// A finished choice's message and finish reason: its text, or the tool
    /// calls parsed from it.
    fn message(&self, r: &SeqResult) -> (Value, Option<String>) {
        let text = format!("{}{}", self.echo_text, r.text);
        let parsed = self.tools.as_ref().map(|t| (t.parse(&text), &t.choice));
        match parsed {
            Some(((content, Some(calls)), choice)) => {
                // A call the request forced by name ends as "stop", as OpenAI's do.
                let finish = match (choice, r.finish_reason) {
                    (ToolChoice::Named(_), f) => f.as_str(),
                    (_, FinishReason::Stop) => "tool_calls",
                    (_, f) => f.as_str(),
                };
                let message = json!({"role": self.role, "content": content, "tool_calls": calls});
                (message, Some(finish.to_string()))
            }
            _ => (
                json!({"role": self.role, "content": text}),
                Some(r.finish_reason.as_str().to_string()),
            ),
        }
    }

    /// A named tool's arguments stream as `delta.tool_calls`; the first delta
    /// names the function.
    fn content_delta(&self, text: &str, first: bool) -> Value {
        match self.tools.as_ref().map(|t| &t.choice) {
            Some(ToolChoice::Named(name)) if first => {
                let mut call = tools::call(name, text.to_string());
                call["index"] = json!(0);
                json!({"tool_calls": [call]})
            }
            Some(ToolChoice::Named(_)) => {
                json!({"tool_calls": [{"index": 0, "function": {"arguments": text}}]})
            }
            _ => json!({"content": text}),
        }
    }

    fn choice_chunk(
        &self,
        index: usize,
        delta: Value,
        logprobs: Value,
        finish: Option<&str>,
        stop: &Option<StopReason>,
    ) -> Value {
        json!({"index": index, "delta": delta, "logprobs": logprobs,
               "finish_reason": finish, "stop_reason": stop})
    }

    /// The role chunk (and the echoed content) every choice starts with.
    fn opening_chunks(&self) -> Vec<Value> {
        let mut chunks = Vec::new();
        for i in 0..self.n {
            let delta = json!({"role": self.role, "content": ""});
            chunks.push(self.header.chunk(
                vec![self.choice_chunk(i, delta, Value::Null, None, &None)],
                Some(usage(0, 0)),
            ));
            if !self.echo_text.is_empty() {
                let delta = json!({"content": self.echo_text});
                chunks.push(self.header.chunk(
                    vec![self.choice_chunk(i, delta, Value::Null, None, &None)],
                    Some(usage(0, 0)),
                ));
            }
        }
        chunks
    }

    async fn send(&self, tx: &mpsc::Sender<Bytes>, chunks: Vec<Value>) {
        for chunk in chunks {
            let _ = tx.send(sse_event(&chunk)).await;
        }
    }

    async fn stream(&self, generation: &mut Generation, tx: &mpsc::Sender<Bytes>) {
        self.send(tx, self.opening_chunks()).await;
        let mut finished = vec![false; self.n];
        let mut started = vec![false; self.n];
        let mut engine_stopped = false;
        let totals = pump(generation, tx, |_, event| {
            let event = match event {
                Event::Final(event) => event,
                Event::Delta(delta) => {
                    return self.delta_chunks(delta, &mut started, &mut finished)
                }
            };
            event
                .results
                .iter()
                .filter(|r| r.index < self.n && !std::mem::replace(&mut finished[r.index], true))
                .map(|r| {
                    engine_stopped |= self.check_not_failed(r).is_err();
                    let choice = self.choice_chunk(
                        r.index,
                        json!({}),
                        Value::Null,
                        Some(r.finish_reason.as_str()),
                        &r.stop_reason,
                    );
                    self.header.chunk(vec![choice], None)
                })
                .collect()
        })
        .await;
        if let Some(totals) = totals {
            end_stream(&self.header, &self.engine, tx, &totals, engine_stopped).await;
        }
    }

    /// The chunk of one sequence's delta (none for a choice beyond `n`, or for
    /// a delta with nothing to show yet).
    fn delta_chunks(
        &self,
        event: &Delta,
        started: &mut [bool],
        finished: &mut [bool],
    ) -> Vec<Value> {
        if event.index >= self.n {
            return Vec::new();
        }
        let logprobs = self.logprobs_json(&event.token_ids, event.logprobs.as_deref());
        if event.finish_reason.is_some() {
            finished[event.index] = true;
        } else if event.text.is_empty() && logprobs.is_null() {
            return Vec::new();
        }
        let first = !std::mem::replace(&mut started[event.index], true);
        let delta = self.content_delta(&event.text, first);
        let choice = self.choice_chunk(
            event.index,
            delta,
            logprobs,
            event.finish_reason.map(FinishReason::as_str),
            &event.stop_reason,
        );
        let seq_usage = usage(event.usage.prompt_tokens, event.usage.completion_tokens);
        vec![self.header.chunk(vec![choice], Some(seq_usage))]
    }

    /// best_of > n or beam search: the choices are known only at the end, so
    /// they come as one chunk (after the role chunks).
    async fn stream_at_end(&self, mut generation: Generation, tx: &mpsc::Sender<Bytes>) {
        let event = match self.final_event(&mut generation).await {
            Ok(e) => e,
            Err(e) => return send_error(tx, &self.header.id, &e).await,
        };
        let choices: Vec<Value> = event
            .results
            .iter()
            .enumerate()
            .map(|(index, r)| {
                let (mut delta, finish_reason) = self.message(r);
                // get_mut: indexing would add a "tool_calls": null to every delta.
                if let Some(calls) = delta.get_mut("tool_calls").and_then(Value::as_array_mut) {
                    for (i, call) in calls.iter_mut().enumerate() {
                        call["index"] = json!(i);
                    }
                }
                let logprobs = self.logprobs_json(&r.token_ids, r.logprobs.as_deref());
                self.choice_chunk(
                    index,
                    delta,
                    logprobs,
                    finish_reason.as_deref(),
                    &r.stop_reason,
                )
            })
            .collect();
        self.send(tx, vec![self.header.chunk(choices, None)]).await;
        if self.header.include_usage {
            let chunk = self
                .header
                .usage_chunk(event.usage.prompt_tokens, event.usage.completion_tokens);
            self.send(tx, vec![chunk]).await;
        }
    }
}
