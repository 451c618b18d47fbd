//! Guided decoding on the random-weight fixture at temperature 1.0 (the model
//! wants to emit garbage, so only the constraint keeps the output in shape):
//! 100 seeds per constraint, every output satisfies it — or ran out of
//! max_tokens and is then a valid prefix. Plus n > 1, beam search, logprobs,
//! malformed constraints and an engine that keeps serving after them.
//!
//! Outputs are checked independently of llguidance where it is practical:
//! regexes (and the SQL grammar, a finite language) with regex-automata, JSON
//! with serde_json and the small schema validator in `common/json_schema.rs`.
//! Only the prefix of a JSON output cut by max_tokens is checked by a fresh
//! llguidance matcher.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::fixture_dir;
use common::json_schema::{parse_lenient, validate};
use engine::backend::cpu::CpuBackend;
use engine::engine::{Engine, FinishReason, Prompt, SeqResult};
use engine::error::Error;
use engine::generate::{Completion, Llm, Request};
use engine::loader::{load_engine_core, LoadOptions};
use engine::sampling::guided::GuidedCompiler;
use engine::sampling::{GuidedDecodingParams, SamplingParams};
use regex_automata::hybrid::dfa::DFA;
use regex_automata::{Anchored, Input};
use serde_json::{json, Value};

const SEEDS: u64 = 100;

fn llm() -> Llm {
    let options = LoadOptions {
        dtype: "float32".into(),
        ..LoadOptions::default()
    };
    Llm::load(&fixture_dir("tiny-llama"), &options).unwrap()
}

fn params(guided: GuidedDecodingParams, seed: u64, max_tokens: usize) -> SamplingParams {
    SamplingParams {
        temperature: 1.0,
        seed: Some(seed),
        max_tokens: Some(max_tokens),
        guided_decoding: Some(guided),
        ..SamplingParams::default()
    }
}

/// One request per seed, all in one batch.
fn run(
    llm: &mut Llm,
    prompt: &str,
    guided: GuidedDecodingParams,
    max_tokens: usize,
) -> Vec<SeqResult> {
    let requests: Vec<Request> = (0..SEEDS)
        .map(|seed| Request {
            prompt: Prompt::Text(prompt.into()),
            params: params(guided.clone(), seed, max_tokens),
        })
        .collect();
    let completions: Vec<Completion> = llm.generate(&requests).unwrap();
    completions.into_iter().map(|c| c.best().clone()).collect()
}

/// Ran out of tokens: finish "length" with exactly max_tokens tokens.
fn ran_out(r: &SeqResult, max_tokens: usize) -> bool {
    r.finish_reason == FinishReason::Length && r.token_ids.len() == max_tokens
}

/// A regex checked with a lazy DFA: full match, or (`prefix`) some continuation
/// can still match.
struct Checker {
    dfa: DFA,
}

impl Checker {
    fn new(pattern: &str) -> Checker {
        Checker {
            dfa: DFA::new(&format!("^(?:{pattern})$")).unwrap(),
        }
    }

    fn fullmatch(&self, text: &str) -> bool {
        let mut cache = self.dfa.create_cache();
        let input = Input::new(text).anchored(Anchored::Yes);
        self.dfa
            .try_search_fwd(&mut cache, &input)
            .unwrap()
            .is_some_and(|m| m.offset() == text.len())
    }

    fn is_prefix(&self, text: &str) -> bool {
        let mut cache = self.dfa.create_cache();
        let mut sid = self
            .dfa
            .start_state_forward(&mut cache, &Input::new(text).anchored(Anchored::Yes))
            .unwrap();
        for &b in text.as_bytes() {
            sid = self.dfa.next_state(&mut cache, sid, b).unwrap();
            if sid.is_dead() {
                return false;
            }
        }
        true
    }
}

/// Every output fullmatches, or ran out of tokens as a valid prefix. Returns
/// how many completed.
fn check_regex_outputs(results: &[SeqResult], checker: &Checker, max_tokens: usize) -> usize {
    let mut complete = 0;
    for (seed, r) in results.iter().enumerate() {
        if r.finish_reason == FinishReason::Stop {
            assert!(
                checker.fullmatch(&r.text),
                "seed {seed}: {:?} does not match",
                r.text
            );
            complete += 1;
        } else {
            assert!(ran_out(r, max_tokens), "seed {seed}: {r:?}");
            assert!(
                checker.is_prefix(&r.text),
                "seed {seed}: {:?} is no prefix",
                r.text
            );
        }
    }
    complete
}

const IPV4: &str = r"((25[0-5]|(2[0-4]|1\d|[1-9]|)\d)\.){3}(25[0-5]|(2[0-4]|1\d|[1-9]|)\d)";

fn choices() -> Vec<String> {
    [
        "Python",
        "Java",
        "JavaScript",
        "C++",
        "C#",
        "PHP",
        "TypeScript",
        "Ruby",
        "Swift",
        "Kotlin",
    ]
    .map(String::from)
    .to_vec()
}

/// vLLM's SQL test grammar (tests/entrypoints), which llguidance's Lark reads as is.
const SQL_GRAMMAR: &str = r#"
start: select_statement
select_statement: "SELECT" column "from" table "where" condition
column: "col_1" | "col_2"
table: "table_1" | "table_2"
condition: column "=" number
number: "1" | "2"
"#;

/// The same language (no %ignore: no whitespace), as a regex.
const SQL_REGEX: &str = "SELECT(col_1|col_2)from(table_1|table_2)where(col_1|col_2)=(1|2)";

/// vLLM's guided-decoding test schema (tests/entrypoints).
fn test_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "skills": {"type": "array", "items": {"type": "string", "maxLength": 10}, "minItems": 3},
            "work history": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "company": {"type": "string"},
                        "duration": {"type": "string"},
                        "position": {"type": "string"}
                    },
                    "required": ["company", "position"]
                }
            }
        },
        "required": ["name", "age", "skills", "work history"]
    })
}

/// Nested arrays, enums, required fields and closed objects.
fn nested_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "status": {"enum": ["active", "inactive", "banned"]},
            "matrix": {
                "type": "array",
                "items": {"type": "array", "items": {"type": "integer"}, "maxItems": 3},
                "maxItems": 3
            },
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "minItems": 1, "maxItems": 4},
            "owner": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 12},
                    "role": {"enum": ["admin", "user"]}
                },
                "required": ["name", "role"],
                "additionalProperties": false
            }
        },
        "required": ["id", "status", "matrix", "owner"],
        "additionalProperties": false
    })
}

/// A fresh llguidance matcher accepts the text as a prefix of `schema`'s language.
fn json_prefix_ok(
    compiler: &GuidedCompiler,
    guided: &GuidedDecodingParams,
    tokens: &[u32],
) -> bool {
    let mut guide = compiler.compile(guided, &[]).unwrap().unwrap();
    tokens.iter().all(|&t| guide.advance(t))
}

fn check_json_outputs(
    llm: &Llm,
    results: &[SeqResult],
    guided: &GuidedDecodingParams,
    schema: &Value,
    max_tokens: usize,
) -> usize {
    let tok = llm.tokenizer().unwrap();
    let compiler =
        GuidedCompiler::from_tokenizer(tok, llm.model().config.vocab_size, &llm.stop_token_ids())
            .unwrap();
    let mut complete = 0;
    for (seed, r) in results.iter().enumerate() {
        if r.finish_reason == FinishReason::Stop {
            let value: Value = parse_lenient(&r.text)
                .unwrap_or_else(|e| panic!("seed {seed}: {:?} is not JSON: {e}", r.text));
            if let Err(e) = validate(schema, &value) {
                panic!("seed {seed}: {} fails the schema: {e}", r.text);
            }
            complete += 1;
        } else {
            assert!(ran_out(r, max_tokens), "seed {seed}: {r:?}");
            assert!(
                r.text.trim_start().starts_with('{'),
                "seed {seed}: {:?}",
                r.text
            );
            assert!(
                json_prefix_ok(&compiler, guided, &r.token_ids),
                "seed {seed}: {:?}",
                r.text
            );
        }
    }
    complete
}

#[test]
fn regex_choice_and_grammar_hold_for_every_seed() {
    let mut llm = llm();
    let ipv4 = GuidedDecodingParams {
        regex: Some(IPV4.into()),
        ..Default::default()
    };
    let results = run(&mut llm, "Give an example IPv4 address: ", ipv4, 40);
    let complete = check_regex_outputs(&results, &Checker::new(IPV4), 40);
    assert!(complete >= 90, "only {complete} complete IPv4 addresses");

    let choice = GuidedDecodingParams {
        choice: Some(choices()),
        ..Default::default()
    };
    let results = run(&mut llm, "The best language is ", choice, 20);
    for (seed, r) in results.iter().enumerate() {
        assert_eq!(r.finish_reason, FinishReason::Stop, "seed {seed}: {r:?}");
        assert!(choices().contains(&r.text), "seed {seed}: {:?}", r.text);
    }

    let sql = GuidedDecodingParams {
        grammar: Some(SQL_GRAMMAR.into()),
        ..Default::default()
    };
    let results = run(&mut llm, "Generate a sql statement: ", sql, 40);
    let complete = check_regex_outputs(&results, &Checker::new(SQL_REGEX), 40);
    assert_eq!(complete, SEEDS as usize);
}

#[test]
fn json_schemas_and_json_object_hold_for_every_seed() {
    let mut llm = llm();
    let max_tokens = 300;
    for (name, schema) in [
        ("vLLM's test schema", test_schema()),
        ("nested", nested_schema()),
    ] {
        let guided = GuidedDecodingParams {
            json: Some(schema.clone()),
            ..Default::default()
        };
        let results = run(
            &mut llm,
            "Give an example JSON: ",
            guided.clone(),
            max_tokens,
        );
        let complete = check_json_outputs(&llm, &results, &guided, &schema, max_tokens);
        eprintln!("{name}: {complete}/{SEEDS} complete within {max_tokens} tokens");
        assert!(complete > 0, "{name}: no output completed");
    }
    let object = GuidedDecodingParams {
        json_object: true,
        ..Default::default()
    };
    let results = run(
        &mut llm,
        "Give an example JSON: ",
        object.clone(),
        max_tokens,
    );
    let complete = check_json_outputs(
        &llm,
        &results,
        &object,
        &json!({"type": "object"}),
        max_tokens,
    );
    eprintln!("json_object: {complete}/{SEEDS} complete within {max_tokens} tokens");
}

#[test]
fn forks_and_beams_keep_their_constraint() {
    let mut llm = llm();
    let choice = GuidedDecodingParams {
        choice: Some(choices()),
        ..Default::default()
    };
    let sampled = SamplingParams {
        n: 3,
        best_of: Some(5),
        logprobs: Some(5),
        ..params(choice.clone(), 7, 20)
    };
    let beam = SamplingParams {
        n: 3,
        best_of: Some(4),
        use_beam_search: true,
        temperature: 0.0,
        ..params(choice.clone(), 0, 20)
    };
    let out = llm
        .generate(&[
            Request {
                prompt: Prompt::Text("Pick one: ".into()),
                params: sampled,
            },
            Request {
                prompt: Prompt::Text("Pick one: ".into()),
                params: beam,
            },
        ])
        .unwrap();
    for c in &out {
        assert_eq!(c.outputs.len(), 3);
        for r in &c.outputs {
            assert_eq!(r.finish_reason, FinishReason::Stop, "{r:?}");
            assert!(choices().contains(&r.text), "{:?}", r.text);
        }
    }
    let beams: Vec<&str> = out[1].outputs.iter().map(|r| r.text.as_str()).collect();
    let mut distinct = beams.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), beams.len(), "beams {beams:?}");
    // Logprobs come from the constrained distribution: finite, clamped at -9999.
    for r in &out[0].outputs {
        for step in &r.logprobs {
            assert!(step.chosen.logprob.is_finite());
            for e in step.entries() {
                assert!(e.logprob >= -9999.0, "{e:?}");
            }
        }
        let first = &r.logprobs[0];
        let mass: f64 = first
            .entries()
            .iter()
            .filter(|e| e.logprob > -9999.0)
            .map(|e| (e.logprob as f64).exp())
            .sum();
        assert!(mass <= 1.0 + 1e-4, "{mass}");
    }
}

#[allow(clippy::too_many_lines)] // a table of cases
#[test]
fn malformed_constraints_are_request_errors_and_the_engine_keeps_serving() {
    let options = LoadOptions {
        dtype: "float32".into(),
        ..LoadOptions::default()
    };
    let core = load_engine_core(
        &fixture_dir("tiny-llama"),
        &options,
        CpuBackend,
        &mut |_, _| {},
    )
    .unwrap();
    let engine = Engine::start(core).unwrap();
    let submit = |guided: GuidedDecodingParams| {
        engine.submit(
            Prompt::Text("x".into()),
            params(guided, 0, 8),
            Box::new(|_| {}),
        )
    };
    let cases = [
        (
            GuidedDecodingParams {
                json: Some(json!({"type": "object", "properties": {"a": {"type": "no-such-type"}}})),
                ..Default::default()
            },
            "guided_json",
        ),
        (
            GuidedDecodingParams {
                json: Some(json!({"type": "integer", "minimum": 5, "maximum": 1})),
                ..Default::default()
            },
            "guided_json",
        ),
        (
            GuidedDecodingParams {
                regex: Some("(unclosed".into()),
                ..Default::default()
            },
            "guided_regex",
        ),
        (
            // A lone backslash got through llguidance's conversion (an empty output).
            GuidedDecodingParams {
                regex: Some("\\".into()),
                ..Default::default()
            },
            "guided_regex",
        ),
        (
            GuidedDecodingParams {
                grammar: Some("start: missing_rule".into()),
                ..Default::default()
            },
            "guided_grammar",
        ),
        (
            GuidedDecodingParams {
                grammar: Some("start: (\"a\"".into()),
                ..Default::default()
            },
            "guided_grammar",
        ),
        (
            GuidedDecodingParams {
                choice: Some(Vec::new()),
                ..Default::default()
            },
            "guided_choice",
        ),
        (
            GuidedDecodingParams {
                regex: Some("a".into()),
                choice: Some(vec!["a".into()]),
                ..Default::default()
            },
            "You can only use one kind of guided decoding ('guided_json', 'guided_regex' or 'guided_choice').",
        ),
        (
            GuidedDecodingParams {
                regex: Some("a".into()),
                backend: Some("xgrammar".into()),
                ..Default::default()
            },
            "guided_decoding_backend",
        ),
    ];
    for (guided, needle) in cases {
        let message = match submit(guided.clone()) {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("{guided:?}: expected an invalid-argument error, got {other:?}"),
        };
        assert!(message.contains(needle), "{guided:?}: {message}");
    }
    // Still serving: a constrained request runs to the end.
    let (tx, rx) = mpsc::channel();
    engine
        .submit(
            Prompt::Text("The best language is ".into()),
            params(
                GuidedDecodingParams {
                    choice: Some(choices()),
                    ..Default::default()
                },
                3,
                20,
            ),
            Box::new(move |o| {
                let _ = tx.send(o);
            }),
        )
        .unwrap();
    loop {
        let out = rx.recv_timeout(Duration::from_secs(60)).expect("output");
        if let Some(results) = out.results {
            assert!(
                choices().contains(&results[0].text),
                "{:?}",
                results[0].text
            );
            break;
        }
    }
}
