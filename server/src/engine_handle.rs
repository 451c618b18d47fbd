//! A thin safe wrapper over the C ABI (`include/engine.h`, bindings in the engine-sys crate):
//! the only place in the server with `unsafe`. Events arrive on the engine's
//! thread through a C callback and are forwarded, as raw JSON, into a tokio
//! channel per request.

use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr::{null, null_mut, NonNull};

use tokio::sync::mpsc;

use crate::sys;

/// A failed call: the ABI's status code and its message.
#[derive(Debug, Clone)]
pub struct EngineError {
    pub status: sys::engine_status,
    pub message: String,
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

type Result<T> = std::result::Result<T, EngineError>;

/// This thread's last error, as a `Result`.
fn check(status: sys::engine_status) -> Result<()> {
    if status == sys::ENGINE_OK {
        return Ok(());
    }
    // SAFETY: capacity 0 with a NULL buffer only queries the length.
    let len = unsafe { sys::engine_last_error(null_mut(), 0) };
    let mut buf = vec![0u8; len + 1];
    // SAFETY: `buf` has room for `len + 1` bytes.
    unsafe { sys::engine_last_error(buf.as_mut_ptr().cast(), buf.len()) };
    buf.truncate(len);
    Err(EngineError {
        status,
        message: String::from_utf8_lossy(&buf).into_owned(),
    })
}

/// Calls `fill(buf, capacity, &mut len)` twice when the first buffer is too
/// small: the ABI's "ask for the size, then copy" convention.
fn with_buffer<T: Copy + Default>(
    guess: usize,
    mut fill: impl FnMut(*mut T, usize, &mut usize) -> sys::engine_status,
) -> Result<Vec<T>> {
    let mut buf = vec![T::default(); guess.max(1)];
    let mut len = 0usize;
    let mut status = fill(buf.as_mut_ptr(), buf.len(), &mut len);
    if status == sys::ENGINE_ERR_BUFFER_TOO_SMALL {
        buf = vec![T::default(); len + 1];
        status = fill(buf.as_mut_ptr(), buf.len(), &mut len);
    }
    check(status)?;
    buf.truncate(len);
    Ok(buf)
}

/// Facts about the loaded model (`engine_model_info_t`, copied).
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub max_model_len: usize,
    pub vocab_size: usize,
    pub dtype: String,
    pub block_size: usize,
    pub num_kv_blocks: usize,
    /// Where the model runs, and why when the device was "auto".
    pub device: String,
}

/// One event of a request, as the engine's JSON (see `engine_event_t.json`),
/// with the tag the request was submitted with.
#[derive(Debug)]
pub struct RawEvent {
    pub tag: usize,
    pub is_final: bool,
    pub json: Vec<u8>,
}

/// Where a request's events go: several requests may share one channel, told
/// apart by their tags.
pub type EventSender = mpsc::UnboundedSender<RawEvent>;

/// A loaded engine. The ABI allows any number of threads to use it at once.
pub struct EngineHandle {
    handle: NonNull<sys::engine_t>,
    info: ModelInfo,
}

// SAFETY: engine.h states every function used here may be called from any
// thread concurrently, except engine_free, which only Drop calls.
unsafe impl Send for EngineHandle {}
// SAFETY: as above.
unsafe impl Sync for EngineHandle {}

/// Progress while weights load: `(done, total)`.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

unsafe extern "C" fn on_progress(user_data: *mut c_void, done: u64, total: u64) {
    // Never unwind into the library.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: user_data is the `&mut Progress` that `EngineHandle::load` passed,
        // alive for the whole engine_new call this runs inside.
        let progress = unsafe { &mut *(user_data as *mut Progress) };
        progress(done, total);
    }));
}

impl EngineHandle {
    /// Loads a model with `engine_options_set` pairs ("model", "dtype", ...).
    pub fn load(options: &[(&str, String)], mut progress: Progress) -> Result<EngineHandle> {
        let mut opts: *mut sys::engine_options_t = null_mut();
        // SAFETY: a valid out pointer.
        check(unsafe { sys::engine_options_new(&mut opts) })?;
        let result = (|| {
            for (key, value) in options {
                let key = cstring(key)?;
                let value = cstring(value)?;
                // SAFETY: a live options object and NUL-terminated strings.
                check(unsafe { sys::engine_options_set(opts, key.as_ptr(), value.as_ptr()) })?;
            }
            let user_data = &mut progress as *mut Progress as *mut c_void;
            // SAFETY: the callback and `progress` outlive engine_new, which is
            // the only caller.
            check(unsafe { sys::engine_options_set_progress(opts, Some(on_progress), user_data) })?;
            let mut handle: *mut sys::engine_t = null_mut();
            // SAFETY: a live options object and a valid out pointer.
            check(unsafe { sys::engine_new(opts, &mut handle) })?;
            NonNull::new(handle).ok_or_else(|| EngineError {
                status: sys::ENGINE_ERR_INTERNAL,
                message: "engine_new returned no engine".into(),
            })
        })();
        // SAFETY: the options object is ours; engine_new copied what it needs.
        unsafe { sys::engine_options_free(opts) };
        let handle = result?;
        let info = model_info(handle)?;
        Ok(EngineHandle { handle, info })
    }

    fn ptr(&self) -> *const sys::engine_t {
        self.handle.as_ptr()
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Queues a request (the engine's JSON body) and returns its id; its events,
    /// tagged with `tag`, go to `events`, the final one last.
    pub fn submit(&self, request_json: &str, tag: usize, events: &EventSender) -> Result<u64> {
        let user_data = Box::into_raw(Box::new((tag, events.clone()))) as *mut c_void;
        let mut id = 0u64;
        // SAFETY: a live engine; `on_event` follows the callback contract and
        // owns `user_data` from here until the final event.
        let status = unsafe {
            sys::engine_submit(
                self.ptr(),
                request_json.as_ptr().cast(),
                request_json.len(),
                Some(on_event),
                user_data,
                &mut id,
            )
        };
        if status != sys::ENGINE_OK {
            // On failure the callback is never called: the sender is still ours.
            // SAFETY: the pointer came from Box::into_raw above, unused since.
            drop(unsafe { Box::from_raw(user_data as *mut Tagged) });
        }
        check(status)?;
        Ok(id)
    }

    /// Aborts a request; an already finished one is not an error.
    pub fn abort(&self, request_id: u64) {
        // SAFETY: a live engine.
        let _ = unsafe { sys::engine_abort(self.ptr(), request_id) };
    }

    /// `Err` once the engine no longer serves (shut down, or a step failed).
    pub fn check(&self) -> Result<()> {
        // SAFETY: a live engine.
        check(unsafe { sys::engine_check(self.ptr()) })
    }

    pub fn stats(&self) -> sys::engine_stats_t {
        // SAFETY: engine_stats_t is plain old data; zeroed is a valid value.
        let mut stats: sys::engine_stats_t = unsafe { std::mem::zeroed() };
        stats.struct_size = std::mem::size_of::<sys::engine_stats_t>() as u32;
        // SAFETY: a live engine and a writable struct with its size set.
        let _ = unsafe { sys::engine_stats_get(self.ptr(), &mut stats) };
        stats
    }

    pub fn tokenize(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        with_buffer(text.len() + 8, |buf, cap, len| {
            // SAFETY: a live engine, `text` readable, `buf` has `cap` slots.
            unsafe {
                sys::engine_tokenize(
                    self.ptr(),
                    text.as_ptr().cast(),
                    text.len(),
                    add_special_tokens,
                    buf,
                    cap,
                    len,
                )
            }
        })
    }

    pub fn detokenize(&self, tokens: &[u32], skip_special_tokens: bool) -> Result<String> {
        let bytes = with_buffer::<u8>(tokens.len() * 8 + 16, |buf, cap, len| {
            // SAFETY: a live engine, `tokens` readable, `buf` has `cap` bytes.
            unsafe {
                sys::engine_detokenize(
                    self.ptr(),
                    if tokens.is_empty() {
                        null()
                    } else {
                        tokens.as_ptr()
                    },
                    tokens.len(),
                    skip_special_tokens,
                    buf.cast(),
                    cap,
                    len,
                )
            }
        })?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Renders chat messages (`engine_apply_chat_template`'s JSON) into a prompt.
    pub fn apply_chat_template(
        &self,
        messages_json: &str,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let bytes = with_buffer::<u8>(messages_json.len() * 2 + 256, |buf, cap, len| {
            // SAFETY: a live engine, the JSON readable, `buf` has `cap` bytes.
            unsafe {
                sys::engine_apply_chat_template(
                    self.ptr(),
                    messages_json.as_ptr().cast(),
                    messages_json.len(),
                    add_generation_prompt,
                    buf.cast(),
                    cap,
                    len,
                )
            }
        })?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Stops taking requests; `drain` lets the submitted ones finish, else they
    /// are aborted. Returns once every final event has been delivered.
    pub fn shutdown(&self, drain: bool) {
        // SAFETY: a live engine, called outside any event callback.
        let _ = unsafe { sys::engine_shutdown(self.ptr(), drain) };
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        // SAFETY: the last use of the handle.
        unsafe { sys::engine_free(self.handle.as_ptr()) };
    }
}

type Tagged = (usize, EventSender);

/// The engine's callback: copies the event's JSON into the request's channel and,
/// at the final event, releases the sender.
unsafe extern "C" fn on_event(user_data: *mut c_void, event: *const sys::engine_event_t) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: the event is valid during the call (engine.h).
        let event = unsafe { &*event };
        let is_final = event.kind == sys::ENGINE_EVENT_FINAL;
        // SAFETY: `json` points to `json_len` bytes during the call.
        let json = unsafe { std::slice::from_raw_parts(event.json as *const u8, event.json_len) };
        {
            // SAFETY: user_data is the Box<Tagged> from `submit`, alive until
            // the final event below.
            let (tag, tx) = unsafe { &*(user_data as *const Tagged) };
            // A dropped receiver (the client went away) is not an error here.
            let _ = tx.send(RawEvent {
                tag: *tag,
                is_final,
                json: json.to_vec(),
            });
        }
        if is_final {
            // SAFETY: the final event is the last call for the request.
            drop(unsafe { Box::from_raw(user_data as *mut Tagged) });
        }
    }));
}

fn cstring(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| EngineError {
        status: sys::ENGINE_ERR_INVALID_ARGUMENT,
        message: format!("option text contains a NUL byte: {s:?}"),
    })
}

fn model_info(handle: NonNull<sys::engine_t>) -> Result<ModelInfo> {
    // SAFETY: plain old data; zeroed is valid (NULL pointers, zero lengths).
    let mut info: sys::engine_model_info_t = unsafe { std::mem::zeroed() };
    info.struct_size = std::mem::size_of::<sys::engine_model_info_t>() as u32;
    // SAFETY: a live engine and a writable struct with its size set.
    check(unsafe { sys::engine_model_info_get(handle.as_ptr(), &mut info) })?;
    // SAFETY: the strings are valid until engine_free.
    let dtype = unsafe { text(info.dtype, info.dtype_len) };
    // SAFETY: as above.
    let device = unsafe { text(info.device, info.device_len) };
    Ok(ModelInfo {
        max_model_len: info.max_model_len as usize,
        vocab_size: info.vocab_size as usize,
        dtype,
        block_size: info.block_size as usize,
        num_kv_blocks: info.num_kv_blocks as usize,
        device,
    })
}

/// # Safety
/// `ptr` must be NULL or point to `len` readable bytes.
unsafe fn text(ptr: *const c_char, len: usize) -> String {
    if ptr.is_null() {
        return String::new();
    }
    // SAFETY: the caller's guarantee.
    let bytes = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
    String::from_utf8_lossy(bytes).into_owned()
}

/// The library's version string ("0.1.0").
pub fn library_version() -> String {
    // SAFETY: a static NUL-terminated string.
    unsafe { CStr::from_ptr(sys::engine_version()) }
        .to_string_lossy()
        .into_owned()
}
