//! The C ABI: the `extern "C"` functions and `#[repr(C)]` types that
//! `include/engine.h` declares. The header is generated from this module by
//! cbindgen (`tests/header.rs` fails when they differ; `UPDATE_HEADER=1` rewrites
//! it), so every doc comment here is also the header's documentation.
//!
//! Rules every exported function follows:
//! - it runs inside [`call`] (or [`call_or`]), the one panic boundary: a panic
//!   becomes `ENGINE_ERR_INTERNAL` plus a message, never an unwind into C;
//! - it checks every pointer for NULL before use and reports
//!   `ENGINE_ERR_NULL` instead of dereferencing it;
//! - on failure it records a message in this thread's last-error slot
//!   ([`engine_last_error`]) and returns a status code.

// The C names (engine_t, engine_status, ...) are the header's.
#![allow(non_camel_case_types)]

pub mod engine;
pub mod events;
pub mod options;
pub mod request;
pub mod tokenize;

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::Error;

/// The ABI version this header describes. It grows by one with every addition
/// (a function, a struct field appended, an option key, a request field, an
/// enum value). Nothing is ever removed or moved: existing functions keep their
/// signatures, struct fields their offsets and enum constants their values (as in
/// ONNX Runtime's C API), so a program compiled against version V works with
/// any library whose `engine_abi_version()` is V or more.
pub const ENGINE_ABI_VERSION: u32 = 5;

/// A status code. Every function that can fail returns one; `ENGINE_OK` (0) is
/// success, anything else an error whose message `engine_last_error` returns.
/// Values are stable; new ones may be added, so treat unknown non-zero values as
/// errors.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum engine_status {
    /// Success.
    ENGINE_OK = 0,
    /// A required pointer argument (handle, string, output pointer) is NULL.
    ENGINE_ERR_NULL = 1,
    /// A string argument is not valid UTF-8.
    ENGINE_ERR_UTF8 = 2,
    /// A JSON argument is malformed or does not have the documented shape: not an
    /// object where one is expected, an unknown field (the message names it), a
    /// field of the wrong type.
    ENGINE_ERR_JSON = 3,
    /// An argument is well-formed but not acceptable: an unknown option key, an
    /// option value out of range, a sampling parameter out of range (the message
    /// is vLLM's), a prompt longer than the model allows, a token id outside the
    /// vocabulary.
    ENGINE_ERR_INVALID_ARGUMENT = 4,
    /// The request id is not one of this engine's unfinished requests (never
    /// submitted, or already finished or aborted).
    ENGINE_ERR_UNKNOWN_REQUEST = 5,
    /// The model directory could not be loaded (missing or unreadable files, a
    /// bad config.json, weights of the wrong shape, an unsupported architecture);
    /// the message names the file and the problem.
    ENGINE_ERR_MODEL = 6,
    /// The request needs something this build does not have (a device other
    /// than "cpu").
    ENGINE_ERR_UNSUPPORTED = 7,
    /// The model has no tokenizer (text in or out was asked for), or the
    /// tokenizer failed.
    ENGINE_ERR_TOKENIZER = 8,
    /// The model has no chat template, or the template failed to compile or
    /// raised an error while rendering.
    ENGINE_ERR_CHAT_TEMPLATE = 9,
    /// The KV cache cannot ever hold the request (its prompt, or its sequences
    /// of prompt plus max_tokens, need more blocks than the whole cache has).
    ENGINE_ERR_CAPACITY = 10,
    /// The engine has been shut down (`engine_shutdown`), or a step failed and it
    /// stopped serving; the message says which.
    ENGINE_ERR_STOPPED = 11,
    /// A caller-provided buffer is too small; the length it needs was written to
    /// the function's length output.
    ENGINE_ERR_BUFFER_TOO_SMALL = 12,
    /// The function may not be called from where it was called: `engine_shutdown`
    /// or `engine_free` from inside an event callback.
    ENGINE_ERR_WRONG_THREAD = 13,
    /// The compute device is missing or failed: no usable driver or library,
    /// a failed kernel launch or copy, or a tensor-parallel rank that stopped.
    /// A failure during a step also stops the engine (ENGINE_ERR_STOPPED after).
    ENGINE_ERR_DEVICE = 14,
    /// A bug in the library (an internal panic, caught at the boundary). The
    /// engine may keep working, but please report the message.
    ENGINE_ERR_INTERNAL = 100,
}

use engine_status::*;

/// An error on its way to C: the status to return and the message to record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FfiError {
    pub status: engine_status,
    pub message: String,
}

impl FfiError {
    pub fn new(status: engine_status, message: impl Into<String>) -> FfiError {
        FfiError {
            status,
            message: message.into(),
        }
    }

    pub fn null(what: &str) -> FfiError {
        FfiError::new(ENGINE_ERR_NULL, format!("{what} is NULL"))
    }

    pub fn invalid(message: impl Into<String>) -> FfiError {
        FfiError::new(ENGINE_ERR_INVALID_ARGUMENT, message)
    }

    pub fn json(message: impl Into<String>) -> FfiError {
        FfiError::new(ENGINE_ERR_JSON, message)
    }
}

impl From<Error> for FfiError {
    /// The status for an engine error outside model loading (see
    /// `engine::load_error` for that).
    fn from(e: Error) -> FfiError {
        let status = match &e {
            Error::Io { .. } | Error::BadFile { .. } | Error::Model(_) => ENGINE_ERR_MODEL,
            Error::Tokenizer(_) => ENGINE_ERR_TOKENIZER,
            Error::ChatTemplate(_) => ENGINE_ERR_CHAT_TEMPLATE,
            Error::InvalidArgument(_) => ENGINE_ERR_INVALID_ARGUMENT,
            Error::OutOfBlocks(_) => ENGINE_ERR_CAPACITY,
            Error::Device(_) => ENGINE_ERR_DEVICE,
        };
        FfiError::new(status, message(&e))
    }
}

/// An engine error's message for C: `InvalidArgument`'s without the "invalid
/// argument: " prefix (the status says so, and the rest is vLLM's wording).
pub(crate) fn message(e: &Error) -> String {
    match e {
        Error::InvalidArgument(m) => m.clone(),
        other => other.to_string(),
    }
}

pub(crate) type FfiResult<T> = Result<T, FfiError>;

thread_local! {
    /// This thread's last error message (the one `engine_last_error` returns).
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
    /// How many event callbacks are running on this thread (nested engines make it
    /// more than one): `engine_shutdown` and `engine_free` refuse to run inside one.
    static IN_CALLBACK: Cell<u32> = const { Cell::new(0) };
}

fn set_last_error(message: String) {
    LAST_ERROR.with(|e| *e.borrow_mut() = message);
}

pub(crate) fn in_callback() -> bool {
    IN_CALLBACK.with(Cell::get) > 0
}

/// Runs `f` with this thread marked as inside an event callback.
pub(crate) fn as_callback<R>(f: impl FnOnce() -> R) -> R {
    struct Mark;
    impl Drop for Mark {
        fn drop(&mut self) {
            IN_CALLBACK.with(|c| c.set(c.get().saturating_sub(1)));
        }
    }
    IN_CALLBACK.with(|c| c.set(c.get() + 1));
    let _mark = Mark;
    f()
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// The panic boundary every status-returning function runs in: `Ok` becomes
/// `ENGINE_OK`; an error or a panic is recorded as this thread's last error and
/// becomes its status code.
pub(crate) fn call(function: &str, f: impl FnOnce() -> FfiResult<()>) -> engine_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => ENGINE_OK,
        Ok(Err(e)) => {
            set_last_error(e.message);
            e.status
        }
        Err(panic) => {
            set_last_error(format!(
                "internal error in {function}: {} (please report this)",
                panic_message(&panic)
            ));
            ENGINE_ERR_INTERNAL
        }
    }
}

/// The panic boundary for functions that return a value rather than a status:
/// a panic is recorded as the last error and `fallback` is returned.
pub(crate) fn call_or<T>(function: &str, fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        set_last_error(format!(
            "internal error in {function}: {} (please report this)",
            panic_message(&panic)
        ));
        fallback
    })
}

/// `s` as bytes with a NUL appended: a buffer whose pointer C can read as both
/// a (pointer, length) string and a NUL-terminated one.
pub(crate) fn nul_terminated(s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    v
}

/// Borrows `len` bytes at `ptr` as UTF-8 text; `what` names the argument in errors.
///
/// # Safety
/// `ptr` must be NULL or point to `len` readable bytes that stay valid and
/// unmodified for `'a`.
pub(crate) unsafe fn str_arg<'a>(ptr: *const c_char, len: usize, what: &str) -> FfiResult<&'a str> {
    if ptr.is_null() {
        return Err(FfiError::null(what));
    }
    // SAFETY: non-NULL, and the caller guarantees `len` readable bytes living for 'a.
    let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) };
    std::str::from_utf8(bytes).map_err(|e| {
        FfiError::new(
            ENGINE_ERR_UTF8,
            format!("{what} is not valid UTF-8 (at byte {})", e.valid_up_to()),
        )
    })
}

/// Borrows a NUL-terminated string as UTF-8 text.
///
/// # Safety
/// `ptr` must be NULL or point to a NUL-terminated string valid for `'a`.
pub(crate) unsafe fn cstr_arg<'a>(ptr: *const c_char, what: &str) -> FfiResult<&'a str> {
    if ptr.is_null() {
        return Err(FfiError::null(what));
    }
    // SAFETY: non-NULL, and the caller guarantees a NUL-terminated string living for 'a.
    let cstr = unsafe { CStr::from_ptr(ptr) };
    cstr.to_str().map_err(|e| {
        FfiError::new(
            ENGINE_ERR_UTF8,
            format!("{what} is not valid UTF-8 (at byte {})", e.valid_up_to()),
        )
    })
}

/// Borrows `len` elements at `ptr`; NULL is accepted when `len` is 0.
///
/// # Safety
/// `ptr` must be NULL or point to `len` readable, initialised `T`s valid for `'a`.
pub(crate) unsafe fn slice_arg<'a, T>(ptr: *const T, len: usize, what: &str) -> FfiResult<&'a [T]> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(FfiError::null(what));
    }
    // SAFETY: non-NULL, and the caller guarantees `len` initialised elements living for 'a.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// Borrows a handle.
///
/// # Safety
/// `ptr` must be NULL or a live handle of type `T` (from its `_new` function,
/// not yet freed), used only through shared references for `'a`.
pub(crate) unsafe fn handle<'a, T>(ptr: *const T, what: &str) -> FfiResult<&'a T> {
    // SAFETY: the caller guarantees a NULL or live pointer; `as_ref` checks NULL.
    unsafe { ptr.as_ref() }.ok_or_else(|| FfiError::null(what))
}

/// Writes `value` through an output pointer.
///
/// # Safety
/// `ptr` must be NULL or valid for writing one `T` (alignment included).
pub(crate) unsafe fn write_out<T>(ptr: *mut T, value: T, what: &str) -> FfiResult<()> {
    if ptr.is_null() {
        return Err(FfiError::null(what));
    }
    // SAFETY: non-NULL and writable per the caller's guarantee; `write` does not
    // drop the (possibly uninitialised) old value.
    unsafe { ptr.write(value) };
    Ok(())
}

/// Copies a versioned struct (one whose first field is `uint32_t struct_size`)
/// to the caller: as many bytes as both sides know (the caller's `struct_size`
/// and ours), then sets `struct_size` to that count.
///
/// # Safety
/// `out` must be NULL or point to a writable object whose first 4 bytes are an
/// initialised `uint32_t` saying how many bytes it has, and that many bytes must
/// be writable; `T` must be `#[repr(C)]` with a `u32` first field.
pub(crate) unsafe fn write_versioned<T>(out: *mut T, value: &T, what: &str) -> FfiResult<()> {
    if out.is_null() {
        return Err(FfiError::null(what));
    }
    // SAFETY: `out` is non-NULL and its first field is an initialised u32 (caller's guarantee).
    let caller_size = unsafe { out.cast::<u32>().read() } as usize;
    if caller_size < std::mem::size_of::<u32>() {
        return Err(FfiError::invalid(format!(
            "{what}->struct_size is {caller_size}: set it to sizeof the struct before the call"
        )));
    }
    let n = caller_size.min(std::mem::size_of::<T>());
    // SAFETY: `value` is a whole T (n <= size_of::<T>() bytes readable), the caller
    // guarantees `caller_size >= n` writable bytes at `out`, and the two cannot
    // overlap (`value` is our own local). A byte copy may carry padding bytes,
    // which is allowed for `copy_nonoverlapping`.
    unsafe {
        std::ptr::copy_nonoverlapping((value as *const T).cast::<u8>(), out.cast::<u8>(), n);
        out.cast::<u32>().write(n as u32);
    }
    Ok(())
}

/// Copies `text` and a terminating NUL into a caller's buffer of `capacity`
/// bytes, and its length (without the NUL) to `len_out`. With too small a
/// buffer nothing is copied, `len_out` still gets the length, and the status is
/// `ENGINE_ERR_BUFFER_TOO_SMALL`.
///
/// # Safety
/// `buf` must be NULL (only with `capacity` 0) or valid for writing `capacity`
/// bytes; `len_out` must be NULL or valid for writing a `usize`.
pub(crate) unsafe fn write_text(
    text: &str,
    buf: *mut c_char,
    capacity: usize,
    len_out: *mut usize,
) -> FfiResult<()> {
    if len_out.is_null() {
        return Err(FfiError::null("the length output"));
    }
    if buf.is_null() && capacity > 0 {
        return Err(FfiError::null(
            "the output buffer (with a non-zero capacity)",
        ));
    }
    // SAFETY: non-NULL and writable per the caller's guarantee.
    unsafe { len_out.write(text.len()) };
    if text.len() >= capacity {
        return Err(FfiError::new(
            ENGINE_ERR_BUFFER_TOO_SMALL,
            format!(
                "the buffer holds {capacity} bytes; the text needs {} (its length plus a NUL)",
                text.len() + 1
            ),
        ));
    }
    // SAFETY: `buf` is non-NULL (capacity > text.len() >= 0) and has `capacity`
    // writable bytes, more than the text plus its NUL; our `text` cannot overlap it.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), text.len());
        buf.add(text.len()).write(0);
    }
    Ok(())
}

/// The version of the ABI the library implements (`ENGINE_ABI_VERSION` of the
/// header it was built with). A program compiled against header version V can
/// use the library when this returns V or more.
///
/// Thread safety: any thread, any time. Never fails.
#[no_mangle]
pub extern "C" fn engine_abi_version() -> u32 {
    ENGINE_ABI_VERSION
}

/// The library's version ("0.1.0"), a static NUL-terminated string; do not free it.
///
/// Thread safety: any thread, any time. Never fails.
#[no_mangle]
pub extern "C" fn engine_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The name of a status code ("ENGINE_ERR_JSON"), a static NUL-terminated
/// string; do not free it. Unknown codes give "ENGINE_ERR_UNKNOWN".
///
/// Thread safety: any thread, any time. Never fails.
#[no_mangle]
pub extern "C" fn engine_status_name(status: i32) -> *const c_char {
    let name: &'static str = match status {
        0 => "ENGINE_OK\0",
        1 => "ENGINE_ERR_NULL\0",
        2 => "ENGINE_ERR_UTF8\0",
        3 => "ENGINE_ERR_JSON\0",
        4 => "ENGINE_ERR_INVALID_ARGUMENT\0",
        5 => "ENGINE_ERR_UNKNOWN_REQUEST\0",
        6 => "ENGINE_ERR_MODEL\0",
        7 => "ENGINE_ERR_UNSUPPORTED\0",
        8 => "ENGINE_ERR_TOKENIZER\0",
        9 => "ENGINE_ERR_CHAT_TEMPLATE\0",
        10 => "ENGINE_ERR_CAPACITY\0",
        11 => "ENGINE_ERR_STOPPED\0",
        12 => "ENGINE_ERR_BUFFER_TOO_SMALL\0",
        13 => "ENGINE_ERR_WRONG_THREAD\0",
        14 => "ENGINE_ERR_DEVICE\0",
        100 => "ENGINE_ERR_INTERNAL\0",
        _ => "ENGINE_ERR_UNKNOWN\0",
    };
    name.as_ptr().cast()
}

/// Copies the calling thread's last error message (UTF-8, from the most recent
/// failed call on this thread) into `buf` and returns its full length in bytes,
/// without the NUL. At most `capacity - 1` bytes are copied, cut at a character
/// boundary, followed by a NUL; with `capacity` 0 (`buf` may then be NULL)
/// nothing is copied, so call once with 0 to size a buffer. Returns 0 when no
/// call on this thread has failed yet. Successful calls leave the message as it
/// was.
///
/// Thread safety: any thread; each thread has its own message.
///
/// # Safety
/// `buf` must be NULL or valid for writing `capacity` bytes.
#[no_mangle]
pub unsafe extern "C" fn engine_last_error(buf: *mut c_char, capacity: usize) -> usize {
    call_or("engine_last_error", 0, || {
        LAST_ERROR.with(|e| {
            let message = e.borrow();
            if !buf.is_null() && capacity > 0 {
                let mut n = message.len().min(capacity - 1);
                while !message.is_char_boundary(n) {
                    n -= 1;
                }
                // SAFETY: `buf` is non-NULL with `capacity > n` writable bytes (the
                // caller's guarantee); the message is ours, so no overlap.
                unsafe {
                    std::ptr::copy_nonoverlapping(message.as_ptr(), buf.cast::<u8>(), n);
                    buf.add(n).write(0);
                }
            }
            message.len()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_error() -> String {
        LAST_ERROR.with(|e| e.borrow().clone())
    }

    #[test]
    fn a_device_failure_has_its_own_status() {
        let e = FfiError::from(Error::Device("cuda: launch failed".into()));
        assert_eq!(e.status, ENGINE_ERR_DEVICE);
        assert_eq!(e.message, "cuda: launch failed");
    }

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        let status = call("engine_test", || panic!("boom {}", 1));
        assert_eq!(status, ENGINE_ERR_INTERNAL);
        assert!(last_error().contains("internal error in engine_test: boom 1"));
        assert_eq!(call_or("engine_test", 7, || panic!("x")), 7);
    }

    #[test]
    fn last_error_is_cut_at_a_character_boundary() {
        set_last_error("né".into()); // 3 bytes
        let mut buf = [0x7f as c_char; 8];
        // SAFETY: `buf` has 8 writable bytes; capacity 3 fits in it.
        let len = unsafe { engine_last_error(buf.as_mut_ptr(), 3) };
        assert_eq!(len, 3);
        assert_eq!(buf[0] as u8, b'n');
        assert_eq!(buf[1], 0, "é does not fit in 2 bytes: it is left out whole");
        // SAFETY: NULL with capacity 0 writes nothing.
        assert_eq!(unsafe { engine_last_error(std::ptr::null_mut(), 0) }, 3);
    }

    #[test]
    fn status_names_match_the_enum() {
        let all = [
            ENGINE_OK,
            ENGINE_ERR_NULL,
            ENGINE_ERR_UTF8,
            ENGINE_ERR_JSON,
            ENGINE_ERR_INVALID_ARGUMENT,
            ENGINE_ERR_UNKNOWN_REQUEST,
            ENGINE_ERR_MODEL,
            ENGINE_ERR_UNSUPPORTED,
            ENGINE_ERR_TOKENIZER,
            ENGINE_ERR_CHAT_TEMPLATE,
            ENGINE_ERR_CAPACITY,
            ENGINE_ERR_STOPPED,
            ENGINE_ERR_BUFFER_TOO_SMALL,
            ENGINE_ERR_WRONG_THREAD,
            ENGINE_ERR_DEVICE,
            ENGINE_ERR_INTERNAL,
        ];
        for s in all {
            // SAFETY: the names are static NUL-terminated strings.
            let name = unsafe { CStr::from_ptr(engine_status_name(s as i32)) };
            assert_eq!(name.to_str().unwrap(), format!("{s:?}"));
        }
    }
}
