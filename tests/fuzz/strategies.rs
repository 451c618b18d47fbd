//! Strategies for the fuzz targets over requests (tests/c_abi/fuzz.rs and
//! server/tests/fuzz.rs): the real field names of vLLM's requests with values of
//! their own kind most of the time and hostile ones otherwise.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use serde_json::{json, Map, Value};

/// Every field `engine_submit` reads, and one it does not.
pub const ABI_FIELDS: &[&str] = &[
    "prompt",
    "messages",
    "max_tokens",
    "min_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "n",
    "best_of",
    "use_beam_search",
    "length_penalty",
    "early_stopping",
    "seed",
    "stop",
    "stop_token_ids",
    "include_stop_str_in_output",
    "ignore_eos",
    "logprobs",
    "prompt_logprobs",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "logit_bias",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "truncate_prompt_tokens",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "guided_whitespace_pattern",
    "guided_decoding_backend",
    "response_format",
    "add_generation_prompt",
    "continue_final_message",
    "tools",
    "documents",
    "chat_template_kwargs",
    "no_such_field",
];

/// Fields only the server reads (the C ABI refuses them as unknown).
#[allow(dead_code)] // The C ABI's target does not use them.
pub const SERVER_FIELDS: &[&str] = &[
    "model",
    "stream",
    "stream_options",
    "user",
    "suffix",
    "max_completion_tokens",
    "tool_choice",
    "parallel_tool_calls",
    "return_tokens_as_token_ids",
    "echo",
    "add_special_tokens",
];

pub fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(256);
    Config {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x5eed_0013),
        ..Config::default()
    }
}

/// Numbers at and past every edge a field may check.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-3i64..70).prop_map(Value::from),
        prop::sample::select(vec![
            json!(0),
            json!(-1),
            json!(i64::MIN),
            json!(i64::MAX),
            json!(u64::MAX),
            json!(4294967296u64),
            json!(1e308),
            json!(-1e308),
            json!(5e-324),
            json!(-0.0),
            json!(0.5),
            json!(1.0000001),
            json!(2),
            json!(100000),
            json!(1e9),
        ]),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |x| x.is_finite())
            .prop_map(Value::from),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z ]{0,12}",
        any::<String>(),
        prop::sample::select(vec![
            "<|im_start|>".to_string(),
            "\u{0}".into(),
            "\u{FFFD}\u{200B}\u{202E}".into(),
            "{{ raise_exception('x') }}".into(),
            "(a+)+$".into(),
            "[".into(),
            "🦀".repeat(50),
            "x".repeat(5000),
        ]),
    ]
}

/// Any JSON value, a few levels deep.
pub fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        number(),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::vec((text(), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A message: mostly well formed, sometimes not.
pub fn message() -> impl Strategy<Value = Value> {
    let role = prop::sample::select(vec!["user", "assistant", "system", "tool", "", "🦀"]);
    prop_oneof![
        3 => (role, text()).prop_map(|(r, c)| json!({"role": r, "content": c})),
        1 => value(),
    ]
}

/// A value for `field`: one of its own kind most of the time, anything otherwise.
fn field_value(field: &'static str) -> BoxedStrategy<Value> {
    let own: BoxedStrategy<Value> = match field {
        "prompt" => prop_oneof![
            text().prop_map(Value::from),
            prop::collection::vec(number(), 0..8).prop_map(Value::from),
        ]
        .boxed(),
        "messages" => prop::collection::vec(message(), 0..4).prop_map(Value::from).boxed(),
        "stop" | "guided_choice" => prop::collection::vec(text(), 0..4).prop_map(Value::from).boxed(),
        "guided_json" => prop_oneof![
            Just(json!({"type": "object", "properties": {"a": {"type": "integer"}}})),
            Just(json!({"type": "string", "pattern": "(a+)+$"})),
            value(),
        ]
        .boxed(),
        "guided_regex" | "guided_grammar" | "guided_whitespace_pattern" => {
            text().prop_map(Value::from).boxed()
        }
        "response_format" => prop_oneof![
            Just(json!({"type": "json_object"})),
            Just(json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer"}}})),
            value(),
        ]
        .boxed(),
        "use_beam_search" | "early_stopping" | "include_stop_str_in_output" | "ignore_eos"
        | "skip_special_tokens" | "spaces_between_special_tokens" | "add_generation_prompt"
        | "continue_final_message" | "stream" | "echo" | "add_special_tokens"
        | "return_tokens_as_token_ids" | "parallel_tool_calls" => {
            any::<bool>().prop_map(Value::from).boxed()
        }
        "stop_token_ids" => prop::collection::vec(number(), 0..4).prop_map(Value::from).boxed(),
        "guided_decoding_backend" | "tool_choice" | "model" | "user" | "suffix" => {
            prop::sample::select(vec!["outlines", "llguidance", "auto", "none", "demo", "x"])
                .prop_map(Value::from)
                .boxed()
        }
        "logit_bias" => prop::collection::vec((number(), number()), 0..4)
            .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
            .boxed(),
        _ => number().boxed(),
    };
    prop_oneof![8 => own, 1 => value()].boxed()
}

/// A request object: a prompt or messages, then some of `fields`.
pub fn request(fields: Vec<&'static str>) -> impl Strategy<Value = Value> {
    let fields = prop::sample::subsequence(fields, 0..5);
    fields.prop_flat_map(|names| {
        let values: Vec<BoxedStrategy<(String, Value)>> = names
            .into_iter()
            .map(|n| field_value(n).prop_map(move |v| (n.to_string(), v)).boxed())
            .collect();
        (prop::bool::ANY, values).prop_map(|(chat, pairs)| {
            let mut m = Map::new();
            if chat {
                m.insert(
                    "messages".into(),
                    json!([{"role": "user", "content": "Hi"}]),
                );
            } else {
                m.insert("prompt".into(), json!("Hello"));
            }
            m.extend(pairs);
            Value::Object(m)
        })
    })
}

/// The request's bytes, sometimes cut short or with a byte changed.
pub fn bytes_of(request: Value) -> impl Strategy<Value = Vec<u8>> {
    let text = request.to_string().into_bytes();
    let len = text.len();
    prop_oneof![
        6 => Just(text.clone()),
        1 => (0..=len).prop_map({ let t = text.clone(); move |cut| t[..cut].to_vec() }),
        1 => (0..len.max(1), any::<u8>()).prop_map(move |(at, b)| {
            let mut t = text.clone();
            if let Some(x) = t.get_mut(at) { *x = b; }
            t
        }),
    ]
}
