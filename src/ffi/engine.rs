//! `engine_t`: a loaded model on its engine thread. Create, submit, abort,
//! statistics, model information, shutdown, free.

use std::ffi::{c_char, c_void};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::engine_status::{self, *};
use super::events::{engine_event_fn, EventSink};
use super::options::{engine_options_t, Device};
use super::request::{parse_request, PromptSpec};
use super::tokenize::render_chat;
use super::{
    call, handle, in_callback, message, nul_terminated, str_arg, write_out, write_versioned,
    FfiError, FfiResult,
};
use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
use crate::engine::{Engine, EngineCore};
use crate::error::Error;
use crate::loader::{load_engine_core, LoadOptions};
use crate::sampling::SamplingType;
use crate::tokenizer::Tokenizer;

/// A running engine (an opaque handle): a model, its KV cache and the thread
/// that runs the batch. Create with `engine_new`, release with `engine_free`.
pub struct engine_t {
    pub(crate) engine: Engine,
    info: ModelInfo,
    /// Seeds requests that come without a seed (the "seed" option).
    seeds: Mutex<ChaCha8Rng>,
}

// The header promises that an engine may be used from any number of threads.
const _: () = {
    const fn shared_between_threads<T: Send + Sync>() {}
    shared_between_threads::<engine_t>();
};

/// What `engine_model_info_get` points into, owned by the engine.
struct ModelInfo {
    served_model_name: Vec<u8>,
    architecture: Vec<u8>,
    dtype: Vec<u8>,
    max_model_len: u64,
    vocab_size: u64,
    bos_token_id: Option<u32>,
    eos_token_ids: Vec<u32>,
    has_tokenizer: bool,
    has_chat_template: bool,
    block_size: u64,
    num_kv_blocks: u64,
    max_num_seqs: u64,
    max_num_batched_tokens: u64,
    device: Vec<u8>,
}

/// Facts about the loaded model and the engine's sizing. Strings are UTF-8 with
/// explicit lengths (and NUL-terminated); they and `eos_token_ids` are owned by
/// the engine and valid until `engine_free`. Grows at the end like
/// `engine_event_t`: set `struct_size` before the call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct engine_model_info_t {
    /// In: sizeof(engine_model_info_t) as the caller knows it. Out: the bytes filled.
    pub struct_size: u32,
    /// The model has a tokenizer.json (text prompts, text output, tokenize).
    pub has_tokenizer: bool,
    /// A chat template is available (the model's or the "chat_template" option's).
    pub has_chat_template: bool,
    /// The "served_model_name" option, else the "model" option.
    pub served_model_name: *const c_char,
    pub served_model_name_len: usize,
    /// config.json's architecture ("LlamaForCausalLM").
    pub architecture: *const c_char,
    pub architecture_len: usize,
    /// The dtype the weights are kept in ("float32", "float16", "bfloat16").
    pub dtype: *const c_char,
    pub dtype_len: usize,
    /// Longest sequence (prompt plus output) in tokens.
    pub max_model_len: u64,
    /// Rows of the model's output (valid token ids are below this).
    pub vocab_size: u64,
    /// The BOS token id, or -1 when the model has none.
    pub bos_token_id: i64,
    /// Every token id that ends generation (EOS and generation_config's).
    pub eos_token_ids: *const u32,
    pub num_eos_token_ids: usize,
    pub block_size: u64,
    pub num_kv_blocks: u64,
    pub max_num_seqs: u64,
    pub max_num_batched_tokens: u64,
    /// Where the model runs ("cpu", "cuda:0 (NVIDIA H200, 140 GiB)"), why when
    /// the "device" option was "auto", and the threads of the engine's compute
    /// pool: "cpu (auto: ...; CPU threads: 8)".
    pub device: *const c_char,
    pub device_len: usize,
}

/// The engine's counters (vLLM's metrics). Grows at the end like
/// `engine_event_t`: set `struct_size` before the call.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct engine_stats_t {
    /// In: sizeof(engine_stats_t) as the caller knows it. Out: the bytes filled.
    pub struct_size: u32,
    /// Requests submitted and not yet finished (queued, running or just submitted).
    pub num_requests: u64,
    /// Requests in the running batch.
    pub num_running: u64,
    /// Requests waiting for KV cache space or a batch slot.
    pub num_waiting: u64,
    /// Preemptions since start (a preempted request is recomputed later).
    pub num_preemptions: u64,
    pub kv_blocks_used: u64,
    pub kv_blocks_total: u64,
    /// kv_blocks_used / kv_blocks_total, 0 to 1.
    pub kv_usage: f64,
    /// Share of prefix-cache lookups that found a cached block, 0 to 1; -1 when
    /// prefix caching is off.
    pub prefix_cache_hit_rate: f64,
    /// Tokens prefilled (prompts) and generated since start.
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
    /// Finished sequences by finish reason, since start.
    pub finished_stop: u64,
    pub finished_length: u64,
    pub finished_abort: u64,
    /// Sums over finished requests, in seconds, and how many requests they cover:
    /// time to first token, time per output token after the first, end to end.
    pub time_to_first_token_sum: f64,
    pub time_per_output_token_sum: f64,
    pub e2e_latency_sum: f64,
    pub latency_count: u64,
}

/// The status for a failure while loading: anything about the files is
/// ENGINE_ERR_MODEL, with the directory named.
fn load_error(dir: &str, e: Error) -> FfiError {
    let status = match &e {
        Error::Io { .. } | Error::BadFile { .. } | Error::Model(_) | Error::Tokenizer(_) => {
            ENGINE_ERR_MODEL
        }
        Error::ChatTemplate(_) => ENGINE_ERR_CHAT_TEMPLATE,
        Error::InvalidArgument(_) => ENGINE_ERR_INVALID_ARGUMENT,
        Error::OutOfBlocks(_) => ENGINE_ERR_CAPACITY,
        Error::Device(_) => ENGINE_ERR_DEVICE,
    };
    FfiError::new(
        status,
        format!("cannot load the model in \"{dir}\": {}", message(&e)),
    )
}

/// The engine's compute pool: `threads` threads, or rayon's default
/// (RAYON_NUM_THREADS, else the CPUs this process may run on).
fn compute_pool(threads: Option<usize>) -> FfiResult<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.unwrap_or(0))
        .thread_name(|i| format!("engine-cpu-{i}"))
        .build()
        .map_err(|e| {
            FfiError::new(
                ENGINE_ERR_INVALID_ARGUMENT,
                format!("cannot start the engine's {threads:?} compute threads: {e}"),
            )
        })
}

/// Loads on `pool` (weight conversion is parallel) while this thread calls
/// `report`: the progress callback runs on the thread that called engine_new,
/// as documented.
fn load_on<B: Backend>(
    pool: &rayon::ThreadPool,
    dir: &str,
    load: &LoadOptions,
    backend: B,
    report: &mut dyn FnMut(usize, usize),
) -> crate::error::Result<EngineCore<B>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let loader = s.spawn(move || {
            pool.install(move || {
                load_engine_core(Path::new(dir), load, backend, &mut |done, total| {
                    let _ = tx.send((done, total));
                })
            })
        });
        // Ends when the loader drops its sender, i.e. when the load is over.
        for (done, total) in rx {
            report(done, total);
        }
        loader
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

impl engine_t {
    fn load(options: &engine_options_t) -> FfiResult<engine_t> {
        let dir = options.model.as_deref().ok_or_else(|| {
            FfiError::invalid("option \"model\" is not set: set it to a model directory")
        })?;
        let (progress, user_data) = (options.progress, options.progress_user_data);
        let mut report = |done: usize, total: usize| {
            if let Some(f) = progress {
                // SAFETY: the caller's progress function with its own user_data, on
                // the thread that called engine_new, as engine_options_set_progress
                // documents.
                unsafe { f(user_data, done as u64, total as u64) }
            }
        };
        let (device, why) = options.device.resolve();
        let pool = compute_pool(options.threads)?;
        // The load runs on the pool too (weight conversion is parallel).
        match device {
            Device::Cpu | Device::Auto => {
                let core = load_on(&pool, dir, &options.load, CpuBackend, &mut report)
                    .map_err(|e| load_error(dir, e))?;
                engine_t::start(core, options, dir, why, pool)
            }
            #[cfg(feature = "cuda")]
            Device::Cuda => {
                let backend =
                    crate::backend::cuda::CudaBackend::new(0).map_err(|e| load_error(dir, e))?;
                let core = load_on(&pool, dir, &options.load, backend, &mut report)
                    .map_err(|e| load_error(dir, e))?;
                engine_t::start(core, options, dir, why, pool)
            }
        }
    }

    /// Starts the engine thread on a loaded core.
    fn start<B: Backend>(
        core: EngineCore<B>,
        options: &engine_options_t,
        dir: &str,
        device_choice: Option<String>,
        pool: rayon::ThreadPool,
    ) -> FfiResult<engine_t> {
        let model = core.model();
        let tokenizer = core.tokenizer();
        let threads = pool.current_num_threads();
        let device = match device_choice {
            Some(why) => format!(
                "{} ({why}; CPU threads: {threads})",
                model.backend().describe()
            ),
            None => format!("{} (CPU threads: {threads})", model.backend().describe()),
        };
        let info = ModelInfo {
            device: nul_terminated(&device),
            served_model_name: nul_terminated(options.served_model_name.as_deref().unwrap_or(dir)),
            architecture: nul_terminated(model.config.arch.hf_name()),
            dtype: nul_terminated(model.dtype.name()),
            max_model_len: model.max_positions as u64,
            vocab_size: model.config.vocab_size as u64,
            bos_token_id: tokenizer
                .and_then(|t| t.bos_token_id())
                .or(model.config.bos_token_id),
            eos_token_ids: core.stop_token_ids(),
            has_tokenizer: tokenizer.is_some(),
            has_chat_template: tokenizer.is_some_and(|t| t.chat_template().is_ok()),
            block_size: options.load.block_size as u64,
            num_kv_blocks: core.num_blocks() as u64,
            max_num_seqs: options.load.max_num_seqs as u64,
            max_num_batched_tokens: options.load.max_num_batched_tokens as u64,
        };
        let engine = Engine::start_in(core, Some(pool))?;
        Ok(engine_t {
            engine,
            info,
            seeds: Mutex::new(ChaCha8Rng::seed_from_u64(options.seed)),
        })
    }

    pub(crate) fn tokenizer(&self) -> FfiResult<&Arc<Tokenizer>> {
        self.engine.validator().tokenizer.as_ref().ok_or_else(|| {
            FfiError::new(
                ENGINE_ERR_TOKENIZER,
                "this engine has no tokenizer (the model has no tokenizer.json, or skip_tokenizer_init is set): give prompts as token ids",
            )
        })
    }

    /// ENGINE_ERR_STOPPED once the engine no longer serves, else `e`'s own status.
    fn submit_error(&self, e: Error) -> FfiError {
        match self.engine.check_serving() {
            Err(why) => FfiError::new(ENGINE_ERR_STOPPED, message(&why)),
            Ok(()) => e.into(),
        }
    }

    fn submit(
        &self,
        body: &str,
        callback: unsafe extern "C" fn(*mut c_void, *const super::events::engine_event_t),
        user_data: *mut c_void,
    ) -> FfiResult<u64> {
        let spec = parse_request(body)?;
        self.engine
            .check_serving()
            .map_err(|e| FfiError::new(ENGINE_ERR_STOPPED, message(&e)))?;
        let tokens = match spec.prompt {
            PromptSpec::Tokens(t) => t,
            PromptSpec::Text {
                text,
                add_special_tokens,
            } => self.tokenizer()?.encode(&text, add_special_tokens)?,
            PromptSpec::Chat {
                chat,
                add_special_tokens,
            } => {
                let tokenizer = self.tokenizer()?;
                tokenizer.encode(&render_chat(tokenizer, &chat)?, add_special_tokens)?
            }
        };
        let mut params = spec.params;
        // Only unseeded random sampling draws (as vLLM's global generator).
        if params.sampling_type() == SamplingType::Random {
            let mut seeds = self.seeds.lock().unwrap_or_else(PoisonError::into_inner);
            params.seed = Some(seeds.next_u64());
        }
        let mut sink = EventSink::new(callback, user_data, params.logprobs.is_some());
        self.engine
            .submit(
                crate::engine::Prompt::Tokens(tokens),
                params,
                Box::new(move |out| sink.deliver(out)),
            )
            .map_err(|e| self.submit_error(e))
    }

    fn stats(&self) -> engine_stats_t {
        let s = self.engine.stats();
        engine_stats_t {
            struct_size: std::mem::size_of::<engine_stats_t>() as u32,
            num_requests: self.engine.num_live_requests() as u64,
            num_running: s.num_running as u64,
            num_waiting: s.num_waiting as u64,
            num_preemptions: s.num_preemptions,
            kv_blocks_used: s.kv_blocks_used as u64,
            kv_blocks_total: s.kv_blocks_total as u64,
            kv_usage: s.kv_usage(),
            prefix_cache_hit_rate: s.prefix_cache_hit_rate.unwrap_or(-1.0),
            prompt_tokens: s.prompt_tokens,
            generation_tokens: s.generation_tokens,
            finished_stop: s.finished_stop,
            finished_length: s.finished_length,
            finished_abort: s.finished_abort,
            time_to_first_token_sum: s.time_to_first_token_sum,
            time_per_output_token_sum: s.time_per_output_token_sum,
            e2e_latency_sum: s.e2e_latency_sum,
            latency_count: s.latency_count,
        }
    }

    fn model_info(&self) -> engine_model_info_t {
        let i = &self.info;
        let text = |v: &Vec<u8>| (v.as_ptr().cast::<c_char>(), v.len() - 1);
        let (served_model_name, served_model_name_len) = text(&i.served_model_name);
        let (architecture, architecture_len) = text(&i.architecture);
        let (dtype, dtype_len) = text(&i.dtype);
        let (device, device_len) = text(&i.device);
        engine_model_info_t {
            struct_size: std::mem::size_of::<engine_model_info_t>() as u32,
            has_tokenizer: i.has_tokenizer,
            has_chat_template: i.has_chat_template,
            served_model_name,
            served_model_name_len,
            architecture,
            architecture_len,
            dtype,
            dtype_len,
            max_model_len: i.max_model_len,
            vocab_size: i.vocab_size,
            bos_token_id: i.bos_token_id.map_or(-1, i64::from),
            eos_token_ids: if i.eos_token_ids.is_empty() {
                std::ptr::null()
            } else {
                i.eos_token_ids.as_ptr()
            },
            num_eos_token_ids: i.eos_token_ids.len(),
            block_size: i.block_size,
            num_kv_blocks: i.num_kv_blocks,
            max_num_seqs: i.max_num_seqs,
            max_num_batched_tokens: i.max_num_batched_tokens,
            device,
            device_len,
        }
    }
}

/// Loads the model `options` names and starts the engine thread; stores the
/// engine in `*out` (left untouched on failure). Blocks while the weights load,
/// calling the progress function, if one is set, on this thread.
///
/// Ownership: the caller owns `*out` and releases it with `engine_free`. The
/// options object is only read; free it whenever convenient.
/// Thread safety: any thread; several engines may exist at once.
/// Errors: ENGINE_ERR_NULL, ENGINE_ERR_INVALID_ARGUMENT ("model" not set, a bad
/// size such as a KV cache smaller than one block), ENGINE_ERR_MODEL (the
/// directory does not load: the message names the file and the problem),
/// ENGINE_ERR_CHAT_TEMPLATE (the "chat_template" option does not compile).
///
/// # Safety
/// `options` must be NULL or a live options object; `out` NULL or valid for
/// writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn engine_new(
    options: *const engine_options_t,
    out: *mut *mut engine_t,
) -> engine_status {
    call("engine_new", || {
        // SAFETY: NULL or a live options object (the caller's guarantee).
        let options = unsafe { handle(options, "options") }?;
        if out.is_null() {
            return Err(FfiError::null("out"));
        }
        let engine = Box::into_raw(Box::new(engine_t::load(options)?));
        // SAFETY: `out` is non-NULL and writable (the caller's guarantee).
        unsafe { write_out(out, engine, "out") }
    })
}

/// Submits a request. `request_json` (`request_len` bytes of UTF-8, no NUL
/// needed) is a JSON object, open-ended so that fields can be added without
/// changing this function. Its fields, all optional but the prompt:
///
/// The prompt, exactly one of:
/// - "prompt": text (tokenized with the model's tokenizer) or an array of token ids.
/// - "messages": chat messages, an array of objects such as
///   {"role": "user", "content": "Hi"}, rendered with the chat template
///   (see `engine_apply_chat_template`) and then tokenized.
///
/// With "messages" only:
/// - "add_generation_prompt" (bool, default true): end with the assistant header.
/// - "continue_final_message" (bool, default false): leave the last message open.
/// - "tools", "documents" (arrays): passed to the template.
/// - "chat_template_kwargs" (object): extra template variables.
///
/// With text or "messages":
/// - "add_special_tokens" (bool): tokenize with the tokenizer's special tokens
///   (e.g. a leading BOS); default true for "prompt" text, false for "messages"
///   (chat templates write their own).
///
/// Sampling parameters: every field of vLLM's SamplingParams (v0.4.3), with its
/// name, meaning, default and checks:
/// - "n" (integer >= 1, default 1): sequences returned.
/// - "best_of" (integer >= n, default n): sequences generated; the n most likely
///   are returned (the FINAL event's "results", best first). It (the beam width
///   with beam search) may be at most the "max_num_seqs" option
///   (ENGINE_ERR_INVALID_ARGUMENT naming the limit).
/// - "presence_penalty", "frequency_penalty" (numbers in [-2, 2], default 0).
/// - "repetition_penalty" (number in (0, 2], default 1).
/// - "temperature" (number >= 0, default 1; below 1e-5 is greedy).
/// - "top_p" (number in (0, 1], default 1), "top_k" (integer, -1 or 0 for
///   off, or >= 1; default -1), "min_p" (number in [0, 1], default 0).
/// - "seed" (integer; default: drawn, for random sampling, from the engine's
///   "seed" option in submission order).
/// - "use_beam_search" (bool, default false), "length_penalty" (number, default 1),
///   "early_stopping" (true, false or "never", default false).
/// - "stop" (string or array of strings, at most 65536 bytes together): stop
///   strings, cut from the text unless "include_stop_str_in_output" (bool,
///   default false).
/// - "stop_token_ids" (array of token ids), "ignore_eos" (bool, default false).
/// - "max_tokens" (integer >= 1, default 16; null: up to the model's length).
/// - "min_tokens" (integer <= max_tokens, default 0).
/// - "logprobs" (integer, at most the "max_logprobs" option, 20 by default):
///   report the sampled token's and this many top tokens' logprobs per token, in
///   the events' JSON.
/// - "prompt_logprobs" (integer, at most "max_logprobs"): the same for every
///   prompt token, in the first event's JSON.
/// - "detokenize", "skip_special_tokens", "spaces_between_special_tokens" (bools,
///   default true).
/// - "logit_bias" (object: token id as a string -> number, clamped to [-100, 100]).
/// - "truncate_prompt_tokens" (integer >= 1): keep only the prompt's last ones.
///
/// Guided decoding (structured output; vLLM's fields, served by llguidance):
/// at most one of "guided_json", "guided_regex", "guided_choice",
/// "guided_grammar" (more fails with ENGINE_ERR_INVALID_ARGUMENT and vLLM's
/// message "You can only use one kind of guided decoding ('guided_json',
/// 'guided_regex' or 'guided_choice')."):
/// - "guided_json" (object, or a string holding one): the output is JSON valid
///   under this JSON schema.
/// - "guided_regex" (string): the output fullmatches the regex.
/// - "guided_choice" (array of strings): the output is exactly one of them.
/// - "guided_grammar" (string): a grammar in llguidance's Lark dialect (README).
/// - "guided_whitespace_pattern" (string): regex for the whitespace allowed
///   between JSON tokens; default "[ ]" (at most one space, as outlines).
/// - "guided_decoding_backend" ("outlines", "lm-format-enforcer" or
///   "llguidance"; all served by llguidance).
/// - "response_format" (object): {"type": "text"} (no constraint),
///   {"type": "json_object"} (any JSON object) or {"type": "json_schema",
///   "json_schema": {"name": ..., "description": ..., "schema": {...},
///   "strict": ...}}; a guided_* field takes precedence over it.
///
/// A constraint is compiled inside `engine_submit`, on a thread of the library's
/// with a large stack while the calling thread waits (compiled grammars are
/// cached by their text): a bad schema, regex or grammar fails with
/// ENGINE_ERR_INVALID_ARGUMENT and the parser's message, naming the field; so
/// does one too large (over 4 MiB of text, or a JSON schema with over 5000
/// property names) or too slow to compile (10 s), naming the limit. Under a constraint EOS is allowed only where the output is complete;
/// reported logprobs are those of the constrained distribution (-9999.0 for
/// disallowed tokens, never -inf). A sequence whose constraint can go no further
/// (e.g. "min_tokens" forbids the only allowed EOS) ends with finish reason STOP.
///
/// A field set to null counts as absent. An unknown field, a field of the wrong
/// type or malformed JSON fails with ENGINE_ERR_JSON naming the field; a value
/// out of range with ENGINE_ERR_INVALID_ARGUMENT and vLLM's message
/// ("temperature must be non-negative, got -1.0.").
///
/// On success the request is queued, its id (unique in this engine, never 0) is
/// written to `*request_id` (when not NULL) and `on_event` will be called for it: one DELTA event per step per
/// sequence that progressed, then exactly one FINAL event, also when the request
/// is aborted or the engine shuts down or fails (finish reason ABORT). Events
/// may start before `engine_submit` returns. On failure `on_event` is never
/// called for the request.
///
/// The callback contract: `on_event(user_data, event)` runs on the engine's own
/// thread, for all requests of the engine one at a time. It must return quickly
/// and not block (the whole batch waits for it), must not throw or longjmp, and
/// must not call `engine_shutdown` or `engine_free` (they fail with
/// ENGINE_ERR_WRONG_THREAD there); it may call `engine_submit`, `engine_abort`,
/// `engine_stats_get` and the other functions. The event and all it points to
/// are valid only during the call. `user_data` is passed through untouched; it
/// must stay valid until the callback's FINAL call has returned (the callback is
/// never called again for the request after that): a per-request `user_data`
/// is best released by the callback itself, at the FINAL event.
///
/// Thread safety: any thread, concurrently with other calls on the same engine
/// (except `engine_free`).
/// Errors: ENGINE_ERR_NULL, ENGINE_ERR_UTF8, ENGINE_ERR_JSON,
/// ENGINE_ERR_INVALID_ARGUMENT, ENGINE_ERR_TOKENIZER (text given, no tokenizer),
/// ENGINE_ERR_CHAT_TEMPLATE, ENGINE_ERR_CAPACITY (the request can never fit in
/// the KV cache: its prompt, or its best_of sequences of prompt plus
/// "max_tokens" tokens with the prompt's full blocks shared; the message names
/// the sizes), ENGINE_ERR_STOPPED. A request without "max_tokens" (null), or
/// with one that reaches the model's length, that outgrows the whole cache ends
/// with finish reason LENGTH.
///
/// # Safety
/// `engine` must be NULL or a live engine; `request_json` NULL or
/// `request_len` readable bytes; `request_id` NULL or writable; `on_event` must
/// follow the callback contract above.
#[no_mangle]
pub unsafe extern "C" fn engine_submit(
    engine: *const engine_t,
    request_json: *const c_char,
    request_len: usize,
    on_event: engine_event_fn,
    user_data: *mut c_void,
    request_id: *mut u64,
) -> engine_status {
    call("engine_submit", || {
        // SAFETY: NULL or a live engine (the caller's guarantee).
        let engine = unsafe { handle(engine, "engine") }?;
        // SAFETY: NULL or `request_len` readable bytes for this call.
        let body = unsafe { str_arg(request_json, request_len, "request_json") }?;
        let callback = on_event.ok_or_else(|| FfiError::null("on_event"))?;
        let id = engine.submit(body, callback, user_data)?;
        if !request_id.is_null() {
            // SAFETY: non-NULL and writable (the caller's guarantee).
            unsafe { write_out(request_id, id, "request_id") }?;
        }
        Ok(())
    })
}

/// Aborts an unfinished request: its KV cache blocks are freed and its callback
/// gets the FINAL event with finish reason ABORT soon after (on the engine
/// thread, possibly before this returns).
///
/// Thread safety: any thread, including inside an event callback.
/// Errors: ENGINE_ERR_NULL, ENGINE_ERR_UNKNOWN_REQUEST (never submitted, already
/// finished, or already aborted), ENGINE_ERR_STOPPED.
///
/// # Safety
/// `engine` must be NULL or a live engine.
#[no_mangle]
pub unsafe extern "C" fn engine_abort(engine: *const engine_t, request_id: u64) -> engine_status {
    call("engine_abort", || {
        // SAFETY: NULL or a live engine (the caller's guarantee).
        let engine = unsafe { handle(engine, "engine") }?;
        engine.engine.abort(request_id).map_err(|_| {
            FfiError::new(
                ENGINE_ERR_UNKNOWN_REQUEST,
                format!("request {request_id} is unknown or already finished"),
            )
        })
    })
}

/// Whether the engine serves: ENGINE_OK while `engine_submit` can accept
/// requests; ENGINE_ERR_STOPPED (the message says why) once it was shut down
/// or a step failed. For health checks.
///
/// Thread safety: any thread, including inside an event callback.
/// Errors: ENGINE_ERR_NULL, ENGINE_ERR_STOPPED.
///
/// # Safety
/// `engine` must be NULL or a live engine.
#[no_mangle]
pub unsafe extern "C" fn engine_check(engine: *const engine_t) -> engine_status {
    call("engine_check", || {
        // SAFETY: NULL or a live engine (the caller's guarantee).
        let engine = unsafe { handle(engine, "engine") }?;
        engine
            .engine
            .check_serving()
            .map_err(|e| FfiError::new(ENGINE_ERR_STOPPED, message(&e)))
    })
}

/// Fills `*out` with the engine's counters as of its last step. Set
/// `out->struct_size = sizeof(engine_stats_t)` first; on return it holds the
/// bytes filled. Works after `engine_shutdown` too (the final counters).
///
/// Thread safety: any thread, including inside an event callback.
/// Errors: ENGINE_ERR_NULL, ENGINE_ERR_INVALID_ARGUMENT (`struct_size` not set).
///
/// # Safety
/// `engine` must be NULL or a live engine; `out` NULL or a writable
/// `engine_stats_t` of `out->struct_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn engine_stats_get(
    engine: *const engine_t,
    out: *mut engine_stats_t,
) -> engine_status {
    call("engine_stats_get", || {
        // SAFETY: NULL or a live engine (the caller's guarantee).
        let engine = unsafe { handle(engine, "engine") }?;
        let stats = engine.stats();
        // SAFETY: NULL or writable with its struct_size set (the caller's guarantee).
        unsafe { write_versioned(out, &stats, "out") }
    })
}

/// Fills `*out` with facts about the model and the engine's sizing. Set
/// `out->struct_size = sizeof(engine_model_info_t)` first; on return it holds
/// the bytes filled.
///
/// Ownership: the strings and arrays it points to belong to the engine and stay
/// valid until `engine_free`.
/// Thread safety: any thread.
/// Errors: ENGINE_ERR_NULL, ENGINE_ERR_INVALID_ARGUMENT (`struct_size` not set).
///
/// # Safety
/// `engine` must be NULL or a live engine; `out` NULL or a writable
/// `engine_model_info_t` of `out->struct_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn engine_model_info_get(
    engine: *const engine_t,
    out: *mut engine_model_info_t,
) -> engine_status {
    call("engine_model_info_get", || {
        // SAFETY: NULL or a live engine (the caller's guarantee).
        let engine = unsafe { handle(engine, "engine") }?;
        let info = engine.model_info();
        // SAFETY: NULL or writable with its struct_size set (the caller's guarantee).
        unsafe { write_versioned(out, &info, "out") }
    })
}

/// Stops the engine: from now on `engine_submit` fails with ENGINE_ERR_STOPPED.
/// With `drain` true the requests already submitted run to completion; with
/// false they are aborted (each gets its FINAL event with finish reason ABORT).
/// Returns once the engine thread has exited, so every FINAL event has been
/// delivered. The handle stays valid for `engine_stats_get`, model info and
/// tokenization until `engine_free`. Calling it again does nothing more.
///
/// Thread safety: any thread except inside an event callback
/// (ENGINE_ERR_WRONG_THREAD there: the engine thread would wait for itself).
/// Errors: ENGINE_ERR_NULL, ENGINE_ERR_WRONG_THREAD.
///
/// # Safety
/// `engine` must be NULL or a live engine.
#[no_mangle]
pub unsafe extern "C" fn engine_shutdown(engine: *const engine_t, drain: bool) -> engine_status {
    call("engine_shutdown", || {
        // SAFETY: NULL or a live engine (the caller's guarantee).
        let engine = unsafe { handle(engine, "engine") }?;
        if in_callback() {
            return Err(FfiError::new(
                ENGINE_ERR_WRONG_THREAD,
                "engine_shutdown cannot be called from an event callback",
            ));
        }
        engine.engine.stop(drain);
        Ok(())
    })
}

/// Aborts whatever is unfinished (each request gets its FINAL event with finish
/// reason ABORT before this returns), stops the engine thread and releases the
/// engine. NULL is a no-op. Called from inside an event callback it does nothing
/// but record an ENGINE_ERR_WRONG_THREAD message for `engine_last_error` (the
/// engine cannot free itself from its own thread).
///
/// Thread safety: any thread, but no other call on the same engine may be running
/// or start (from other threads) while it runs or after.
///
/// # Safety
/// `engine` must be NULL or a live engine, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn engine_free(engine: *mut engine_t) {
    let _ = call("engine_free", || {
        if engine.is_null() {
            return Ok(());
        }
        if in_callback() {
            return Err(FfiError::new(
                ENGINE_ERR_WRONG_THREAD,
                "engine_free cannot be called from an event callback; the engine was not freed",
            ));
        }
        // SAFETY: a live engine (the caller's guarantee); stopping first goes through
        // a shared reference, so callbacks that still run may use the handle.
        unsafe { &*engine }.engine.stop(false);
        // SAFETY: from `engine_new` (Box::into_raw), freed once; the engine thread
        // has exited, so nothing else refers to it.
        drop(unsafe { Box::from_raw(engine) });
        Ok(())
    });
}
