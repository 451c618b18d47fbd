//! A fuzz target over what a client hands the C ABI (issue 13): request JSON
//! for `engine_submit` (completion and chat requests, so the chat-template path
//! too), `engine_apply_chat_template`'s messages and `engine_tokenize`'s text,
//! built by proptest from the real field names and hostile values (extreme
//! numbers, wrong types, deep nesting, odd Unicode, broken JSON). The property:
//! every call returns a documented status (never ENGINE_ERR_INTERNAL, which a
//! panic becomes), every accepted request gets its final event, and afterwards
//! the engine still serves with no request running and no KV block in use.
//!
//! Bounded for CI: a fixed seed and `PROPTEST_CASES` cases (default 256 per
//! property); raise it locally to search longer.

use crate::common;
#[path = "../fuzz/strategies.rs"]
mod strategies;

use std::time::Duration;

use common::c_engine::{last_error, Engine};
use engine::ffi::engine::*;
use engine::ffi::engine_status::{self, *};
use engine::ffi::engine_status_name;
use engine::ffi::tokenize::{engine_apply_chat_template, engine_tokenize};
use proptest::prelude::*;
use serde_json::{json, Value};
use strategies::{bytes_of, config, message, request, value, ABI_FIELDS};

/// Statuses a caller may see from these calls; ENGINE_ERR_INTERNAL is a bug.
fn documented(s: engine_status) -> bool {
    s != ENGINE_ERR_INTERNAL && s != ENGINE_ERR_NULL && s != ENGINE_ERR_STOPPED
}

fn engine() -> Engine {
    // A short model length and a small cache bound every accepted request's work.
    Engine::with(&[
        ("max_model_len", "64"),
        ("num_kv_blocks", "64"),
        ("max_num_seqs", "8"),
    ])
}

/// No request left running, no KV block held, and a greedy request still works.
fn assert_clean(e: &Engine) {
    let mut stats = engine_stats_t {
        struct_size: std::mem::size_of::<engine_stats_t>() as u32,
        ..Default::default()
    };
    for _ in 0..200 {
        // SAFETY: a live engine and a writable struct with its size set.
        assert_eq!(unsafe { engine_stats_get(e.0, &mut stats) }, ENGINE_OK);
        if stats.num_running == 0 && stats.num_waiting == 0 && stats.kv_blocks_used == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        (stats.num_running, stats.num_waiting, stats.kv_blocks_used),
        (0, 0, 0)
    );
    e.assert_serves();
}

#[test]
fn hostile_requests_get_a_status_and_a_final_event() {
    let e = engine();
    let strategy = request(ABI_FIELDS.to_vec()).prop_flat_map(bytes_of);
    proptest!(config(), |(body in strategy)| {
        let json = String::from_utf8_lossy(&body).into_owned();
        let (s, id, rx) = e.submit(&json);
        prop_assert!(documented(s), "{} for {json}: {}", engine_status_name_of(s), last_error());
        if s == ENGINE_OK {
            // Accepted: cut it short, and its final event must still come.
            // SAFETY: a live engine.
            let a = unsafe { engine_abort(e.0, id) };
            prop_assert!(a == ENGINE_OK || a == ENGINE_ERR_UNKNOWN_REQUEST);
            let finished = std::iter::from_fn(|| rx.recv_timeout(Duration::from_secs(30)).ok())
                .any(|ev| ev["kind"] == "final");
            prop_assert!(finished, "no final event for {json}");
        }
    });
    assert_clean(&e);
}

#[test]
fn hostile_chats_and_texts_get_a_status() {
    let e = engine();
    let chats = prop_oneof![
        prop::collection::vec(message(), 0..5).prop_map(Value::from),
        (prop::collection::vec(message(), 0..3), value())
            .prop_map(|(m, kw)| json!({"messages": m, "chat_template_kwargs": kw})),
        value(),
    ]
    .prop_flat_map(bytes_of);
    proptest!(config(), |(body in chats, add in any::<bool>())| {
        let mut buf = vec![0u8; 1 << 16];
        let mut len = 0;
        // SAFETY: a live engine, readable input, `buf.len()` writable bytes.
        let s = unsafe {
            engine_apply_chat_template(e.0, body.as_ptr().cast(), body.len(), add,
                buf.as_mut_ptr().cast(), buf.len(), &mut len)
        };
        prop_assert!(documented(s), "{}: {}", engine_status_name_of(s), last_error());
        let mut ids = vec![0u32; 1 << 14];
        let mut n = 0;
        // SAFETY: as above, `ids.len()` writable ids.
        let s = unsafe {
            engine_tokenize(e.0, body.as_ptr().cast(), body.len(), add, ids.as_mut_ptr(), ids.len(), &mut n)
        };
        prop_assert!(documented(s), "{}: {}", engine_status_name_of(s), last_error());
    });
    assert_clean(&e);
}

fn engine_status_name_of(s: engine_status) -> String {
    // SAFETY: returns a static NUL-terminated string for any code.
    unsafe { std::ffi::CStr::from_ptr(engine_status_name(s as i32)) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn the_fuzz_target_can_fail() {
    // The property's own check must reject what it is meant to reject.
    assert!(!documented(ENGINE_ERR_INTERNAL));
    assert!(documented(ENGINE_ERR_JSON) && documented(ENGINE_OK));
}
