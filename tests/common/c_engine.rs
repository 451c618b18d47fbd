//! An engine on the fixture model driven through the exported C functions, for
//! the C-ABI tests: options, submit with a channel per request, the final event.

use std::ffi::{c_void, CString};
use std::ptr::null_mut;
use std::sync::mpsc::{self, Sender};
use std::time::Duration;

use engine::ffi::engine::*;
use engine::ffi::engine_last_error;
use engine::ffi::engine_status::{self, *};
use engine::ffi::events::*;
use engine::ffi::options::*;

use super::fixture_dir;

/// This thread's last error message.
pub fn last_error() -> String {
    // SAFETY: a NULL buffer with capacity 0 only queries the length.
    let len = unsafe { engine_last_error(null_mut(), 0) };
    let mut buf = vec![0u8; len + 1];
    // SAFETY: `buf` has `len + 1` writable bytes.
    unsafe { engine_last_error(buf.as_mut_ptr().cast(), buf.len()) };
    buf.truncate(len);
    String::from_utf8(buf).unwrap()
}

/// Asserts `status` and that the message contains `needle`.
#[track_caller]
pub fn assert_error(status: engine_status, expected: engine_status, needle: &str) {
    assert_eq!(status, expected, "message: {}", last_error());
    let message = last_error();
    assert!(message.contains(needle), "{needle:?} not in {message:?}");
}

pub fn options(pairs: &[(&str, &str)]) -> *mut engine_options_t {
    let mut o = null_mut();
    // SAFETY: `o` is a writable pointer.
    assert_eq!(unsafe { engine_options_new(&mut o) }, ENGINE_OK);
    for (k, v) in pairs {
        let (k, v) = (CString::new(*k).unwrap(), CString::new(*v).unwrap());
        // SAFETY: a live options object and NUL-terminated strings.
        let s = unsafe { engine_options_set(o, k.as_ptr(), v.as_ptr()) };
        assert_eq!(s, ENGINE_OK, "{}", last_error());
    }
    o
}

/// An engine on the fixture model, freed on drop.
pub struct Engine(pub *mut engine_t);

impl Engine {
    pub fn new() -> Engine {
        Engine::with(&[])
    }

    /// An engine with these options besides the fixture model in float32.
    pub fn with(extra: &[(&str, &str)]) -> Engine {
        let model = fixture_dir("tiny-llama").display().to_string();
        let mut pairs = vec![("model", model.as_str()), ("dtype", "float32")];
        pairs.extend_from_slice(extra);
        let o = options(&pairs);
        let mut e = null_mut();
        // SAFETY: a live options object and a writable pointer.
        let s = unsafe { engine_new(o, &mut e) };
        // SAFETY: the options object is live and not used again.
        unsafe { engine_options_free(o) };
        assert_eq!(s, ENGINE_OK, "{}", last_error());
        Engine(e)
    }

    /// Submits with a fresh event channel; the request owns its sender (the final
    /// event frees it), as a C caller hands `user_data` to the request.
    pub fn submit(&self, json: &str) -> (engine_status, u64, mpsc::Receiver<serde_json::Value>) {
        let (tx, rx) = mpsc::channel();
        let sink = Box::into_raw(Box::new(tx));
        let mut id = 0;
        // SAFETY: a live engine, `json.len()` readable bytes, a callback that follows
        // the contract, and `sink` valid until the final event releases it.
        let s = unsafe {
            engine_submit(
                self.0,
                json.as_ptr().cast(),
                json.len(),
                Some(on_event),
                sink.cast(),
                &mut id,
            )
        };
        if s != ENGINE_OK {
            // SAFETY: the request was refused, so the callback never runs: the box is ours.
            drop(unsafe { Box::from_raw(sink) });
        }
        (s, id, rx)
    }

    /// Runs a request to its final event; returns the final event's JSON.
    pub fn generate(&self, json: &str) -> serde_json::Value {
        let (s, _, rx) = self.submit(json);
        assert_eq!(s, ENGINE_OK, "{}", last_error());
        loop {
            let ev = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("the final event");
            if ev["kind"] == "final" {
                return ev;
            }
        }
    }

    /// Runs a request to its final event, or returns the refusal and its message.
    pub fn run(&self, json: &str) -> Result<serde_json::Value, (engine_status, String)> {
        let (s, _, rx) = self.submit(json);
        if s != ENGINE_OK {
            return Err((s, last_error()));
        }
        loop {
            let ev = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("the final event");
            if ev["kind"] == "final" {
                return Ok(ev);
            }
        }
    }

    /// The engine still serves: a small greedy request completes.
    #[track_caller]
    pub fn assert_serves(&self) {
        let ev = self.generate(
            r#"{"prompt": "Hello", "max_tokens": 2, "temperature": 0, "ignore_eos": true}"#,
        );
        assert_eq!(ev["finish_reason"], "length", "{ev}");
        assert_eq!(ev["usage"]["completion_tokens"], 2, "{ev}");
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // SAFETY: a live engine, freed once.
        unsafe { engine_free(self.0) };
    }
}

/// Sends each event's JSON to the `Sender` in `user_data`, and frees that sender
/// with the final event.
pub unsafe extern "C" fn on_event(user_data: *mut c_void, event: *const engine_event_t) {
    let tx = user_data as *mut Sender<serde_json::Value>;
    // SAFETY: the event is valid during the call, its json pointing to json_len bytes.
    let (kind, json) = unsafe {
        let ev = &*event;
        (
            ev.kind,
            std::slice::from_raw_parts(ev.json.cast::<u8>(), ev.json_len),
        )
    };
    let value: serde_json::Value = serde_json::from_slice(json).unwrap();
    // SAFETY: `tx` is the live sender `Engine::submit` boxed for this request.
    let _ = unsafe { &*tx }.send(value);
    if kind == engine_event_kind::ENGINE_EVENT_FINAL {
        // SAFETY: the final event is the request's last call: the box is released once.
        drop(unsafe { Box::from_raw(tx) });
    }
}
