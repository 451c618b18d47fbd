//! Text in and out: tokenize, detokenize, apply the chat template. Results go
//! into caller-provided buffers (call with capacity 0 to learn the size), so no
//! memory changes hands.

use std::ffi::c_char;

use engine_api::request::ChatTemplateRequest;

use super::engine::engine_t;
use super::engine_status::{self, *};
use super::request::{chat_spec, ChatSpec};
use super::{call, handle, slice_arg, str_arg, write_out, write_text, FfiError, FfiResult};
use crate::tokenizer::{RenderOptions, Tokenizer};

/// Renders chat messages with the model's chat template (or the "chat_template"
/// option's), as transformers' `apply_chat_template(tokenize=False)`.
pub(crate) fn render_chat(tokenizer: &Tokenizer, chat: &ChatSpec) -> FfiResult<String> {
    let template = tokenizer.select_chat_template(None, chat.tools.is_some())?;
    let options = RenderOptions {
        add_generation_prompt: chat.add_generation_prompt,
        continue_final_message: chat.continue_final_message,
        tools: chat.tools.as_ref(),
        documents: chat.documents.as_ref(),
        extra: chat.chat_template_kwargs.as_ref(),
    };
    Ok(template.render_with(&chat.messages, &options)?)
}

/// The chat of `engine_apply_chat_template`: an array of messages, or an object
/// with "messages" and the chat fields of a request.
fn parse_chat(text: &str, add_generation_prompt: bool) -> FfiResult<ChatSpec> {
    let chat = ChatTemplateRequest::from_json(text)?;
    if chat.messages.is_none() {
        return Err(FfiError::json("the chat object has no \"messages\""));
    }
    chat_spec(chat, add_generation_prompt)
}

/// Tokenizes `text_len` bytes of UTF-8 `text` into `tokens` (room for
/// `capacity` ids) and writes the number of ids to `*num_tokens`.
/// `add_special_tokens` applies the tokenizer's special tokens (a leading BOS
/// for Llama), as transformers' `add_special_tokens=True`. When the ids do not
/// fit, nothing is written to `tokens`, `*num_tokens` still gets the count and
/// the status is ENGINE_ERR_BUFFER_TOO_SMALL: call with `capacity` 0 (`tokens`
/// may then be NULL) to learn the size.
///
/// Thread safety: any thread, concurrently with everything but `engine_free`.
/// Errors: ENGINE_ERR_NULL, ENGINE_ERR_UTF8, ENGINE_ERR_TOKENIZER (no tokenizer),
/// ENGINE_ERR_BUFFER_TOO_SMALL.
///
/// # Safety
/// `engine` must be NULL or a live engine; `text` NULL or `text_len` readable
/// bytes; `tokens` NULL or room for `capacity` ids; `num_tokens` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn engine_tokenize(
    engine: *const engine_t,
    text: *const c_char,
    text_len: usize,
    add_special_tokens: bool,
    tokens: *mut u32,
    capacity: usize,
    num_tokens: *mut usize,
) -> engine_status {
    call("engine_tokenize", || {
        // SAFETY: NULL or a live engine (the caller's guarantee).
        let engine = unsafe { handle(engine, "engine") }?;
        // SAFETY: NULL or `text_len` readable bytes for this call.
        let text = unsafe { str_arg(text, text_len, "text") }?;
        if num_tokens.is_null() {
            return Err(FfiError::null("num_tokens"));
        }
        if tokens.is_null() && capacity > 0 {
            return Err(FfiError::null("tokens (with a non-zero capacity)"));
        }
        let ids = engine.tokenizer()?.encode(text, add_special_tokens)?;
        // SAFETY: `num_tokens` is non-NULL and writable (the caller's guarantee).
        unsafe { write_out(num_tokens, ids.len(), "num_tokens") }?;
        if ids.len() > capacity {
            return Err(FfiError::new(
                ENGINE_ERR_BUFFER_TOO_SMALL,
                format!(
                    "the text has {} tokens; the buffer holds {capacity}",
                    ids.len()
                ),
            ));
        }
        if !ids.is_empty() {
            // SAFETY: `tokens` is non-NULL (capacity >= ids.len() > 0) with room for
            // `capacity` ids; `ids` is our own vector, so they cannot overlap.
            unsafe { std::ptr::copy_nonoverlapping(ids.as_ptr(), tokens, ids.len()) };
        }
        Ok(())
    })
}

/// Decodes `num_tokens` ids into text: writes the UTF-8 text and a NUL into
/// `buf` (room for `capacity` bytes) and its length, without the NUL, to
/// `*text_len`. `skip_special_tokens` drops special tokens (BOS, EOS, ...), as
/// vLLM's default. Ids outside the vocabulary decode to nothing. When the text
/// and its NUL do not fit, nothing is written to `buf`, `*text_len` still gets
/// the length and the status is ENGINE_ERR_BUFFER_TOO_SMALL (capacity 0 and a
/// NULL `buf` query the length).
///
/// Thread safety: any thread, concurrently with everything but `engine_free`.
/// Errors: ENGINE_ERR_NULL, ENGINE_ERR_TOKENIZER, ENGINE_ERR_BUFFER_TOO_SMALL.
///
/// # Safety
/// `engine` must be NULL or a live engine; `tokens` NULL (only with
/// `num_tokens` 0) or `num_tokens` readable ids; `buf` NULL or `capacity`
/// writable bytes; `text_len` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn engine_detokenize(
    engine: *const engine_t,
    tokens: *const u32,
    num_tokens: usize,
    skip_special_tokens: bool,
    buf: *mut c_char,
    capacity: usize,
    text_len: *mut usize,
) -> engine_status {
    call("engine_detokenize", || {
        // SAFETY: NULL or a live engine (the caller's guarantee).
        let engine = unsafe { handle(engine, "engine") }?;
        // SAFETY: NULL or `num_tokens` readable ids for this call.
        let ids = unsafe { slice_arg(tokens, num_tokens, "tokens") }?;
        let text = engine.tokenizer()?.decode(ids, skip_special_tokens, true)?;
        // SAFETY: `buf` NULL or `capacity` writable bytes, `text_len` NULL or writable.
        unsafe { write_text(&text, buf, capacity, text_len) }
    })
}

/// Renders chat messages into a prompt with the chat template, as transformers'
/// `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`.
/// `messages_json` (`messages_len` bytes of UTF-8) is either a JSON array of
/// messages ([{"role": "user", "content": "Hi"}]) or an object with
/// "messages" and any of "continue_final_message", "tools", "documents" and
/// "chat_template_kwargs" (as in `engine_submit`). The prompt and a NUL go to
/// `buf` like `engine_detokenize`'s text, its length to `*prompt_len`.
///
/// Thread safety: any thread, concurrently with everything but `engine_free`.
/// Errors: ENGINE_ERR_NULL, ENGINE_ERR_UTF8, ENGINE_ERR_JSON,
/// ENGINE_ERR_TOKENIZER (no tokenizer), ENGINE_ERR_CHAT_TEMPLATE (no template,
/// or it raised: the message is the template's), ENGINE_ERR_BUFFER_TOO_SMALL.
///
/// # Safety
/// `engine` must be NULL or a live engine; `messages_json` NULL or
/// `messages_len` readable bytes; `buf` NULL or `capacity` writable bytes;
/// `prompt_len` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn engine_apply_chat_template(
    engine: *const engine_t,
    messages_json: *const c_char,
    messages_len: usize,
    add_generation_prompt: bool,
    buf: *mut c_char,
    capacity: usize,
    prompt_len: *mut usize,
) -> engine_status {
    call("engine_apply_chat_template", || {
        // SAFETY: NULL or a live engine (the caller's guarantee).
        let engine = unsafe { handle(engine, "engine") }?;
        // SAFETY: NULL or `messages_len` readable bytes for this call.
        let text = unsafe { str_arg(messages_json, messages_len, "messages_json") }?;
        let chat = parse_chat(text, add_generation_prompt)?;
        let prompt = render_chat(engine.tokenizer()?, &chat)?;
        // SAFETY: `buf` NULL or `capacity` writable bytes, `prompt_len` NULL or writable.
        unsafe { write_text(&prompt, buf, capacity, prompt_len) }
    })
}
