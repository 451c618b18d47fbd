//! vLLM's sampling features through the engine: n / best_of forks, stop strings
//! while streaming, logprobs, min_tokens, penalties and seeds.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::fixture_dir;
use engine::backend::cpu::CpuBackend;
use engine::engine::{Engine, FinishReason, Prompt, RequestOutput, StopReason};
use engine::loader::{load_engine_core, LoadOptions};
use engine::sampling::SamplingParams;

fn start() -> Engine {
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
    Engine::start(core).unwrap()
}

/// Every output of one request, in order.
fn stream(engine: &Engine, prompt: &str, params: SamplingParams) -> Vec<RequestOutput> {
    let (tx, rx) = mpsc::channel();
    engine
        .submit(
            Prompt::Text(prompt.into()),
            params,
            Box::new(move |o| {
                let _ = tx.send(o);
            }),
        )
        .unwrap();
    let mut outs = Vec::new();
    loop {
        let o = rx.recv_timeout(Duration::from_secs(60)).expect("output");
        let done = o.is_finished();
        outs.push(o);
        if done {
            return outs;
        }
    }
}

/// The text streamed for sequence `index`.
fn streamed_text(outs: &[RequestOutput], index: usize) -> String {
    outs.iter()
        .flat_map(|o| &o.deltas)
        .filter(|d| d.index == index)
        .map(|d| d.text.as_str())
        .collect()
}

#[test]
fn best_of_returns_the_n_most_likely_and_seeds_repeat() {
    let engine = start();
    let params = SamplingParams {
        n: 2,
        best_of: Some(4),
        seed: Some(5),
        ignore_eos: true,
        ..SamplingParams::greedy(6)
    };
    let params = SamplingParams {
        temperature: 1.0,
        ..params
    };
    let outs = stream(&engine, "Hello, my name is", params.clone());
    let results = outs.last().unwrap().results.clone().unwrap();
    assert_eq!(results.len(), 2);
    assert!(results[0].cum_logprob >= results[1].cum_logprob);
    // All four sequences streamed; the two returned are the best of them.
    let mut all: Vec<f64> = (0..4)
        .map(|i| {
            outs.iter()
                .flat_map(|o| &o.deltas)
                .filter(|d| d.index == i)
                .map(|d| d.logprobs[0].chosen.logprob as f64)
                .sum()
        })
        .collect();
    all.sort_by(|a, b| b.total_cmp(a));
    assert!(
        (results[0].cum_logprob - all[0]).abs() < 1e-9
            && (results[1].cum_logprob - all[1]).abs() < 1e-9
    );
    let again = stream(&engine, "Hello, my name is", params)
        .last()
        .unwrap()
        .results
        .clone()
        .unwrap();
    assert_eq!(results, again, "a seed gives the same sequences");
}

#[test]
fn n_greater_than_one_gives_distinct_samples() {
    let engine = start();
    let params = SamplingParams {
        n: 3,
        temperature: 1.0,
        seed: Some(1),
        ignore_eos: true,
        ..SamplingParams::greedy(8)
    };
    let results = stream(&engine, "The capital of France is", params)
        .last()
        .unwrap()
        .results
        .clone()
        .unwrap();
    assert_eq!(results.len(), 3);
    assert!(
        results[0].token_ids != results[1].token_ids
            || results[1].token_ids != results[2].token_ids
    );
}

#[test]
fn stop_strings_cut_the_output_and_streaming_never_runs_ahead() {
    let engine = start();
    let greedy = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(32)
    };
    let full = stream(&engine, "Hello, my name is", greedy.clone())
        .last()
        .unwrap()
        .results
        .clone()
        .unwrap()
        .remove(0);
    // Pick a stop string from the middle of the greedy text.
    let stop = full.text[10..14].to_string();
    let cut = full.text.find(&stop).unwrap();
    let params = SamplingParams {
        stop: vec![stop.clone()].into(),
        ..greedy.clone()
    };
    let outs = stream(&engine, "Hello, my name is", params);
    let result = outs.last().unwrap().results.clone().unwrap().remove(0);
    assert_eq!(result.text, full.text[..cut]);
    assert_eq!(result.finish_reason, FinishReason::Stop);
    assert_eq!(result.stop_reason, Some(StopReason::Text(stop.clone())));
    assert_eq!(
        streamed_text(&outs, 0),
        result.text,
        "the stream equals the final text"
    );

    let params = SamplingParams {
        stop: vec![stop.clone()].into(),
        include_stop_str_in_output: true,
        ..greedy
    };
    let result = stream(&engine, "Hello, my name is", params)
        .last()
        .unwrap()
        .results
        .clone()
        .unwrap()
        .remove(0);
    assert_eq!(result.text, full.text[..cut + stop.len()]);
}

#[test]
fn logprobs_report_the_chosen_token_and_top_n() {
    let engine = start();
    let params = SamplingParams {
        logprobs: Some(3),
        ignore_eos: true,
        ..SamplingParams::greedy(4)
    };
    let outs = stream(&engine, "Hello", params);
    for d in outs.iter().flat_map(|o| &o.deltas) {
        let lp = &d.logprobs[0];
        assert_eq!(lp.top.len(), 3);
        assert_eq!(lp.chosen.token_id, d.token_ids[0]);
        assert_eq!(lp.chosen.rank, 1, "greedy picks the top token");
        assert!(lp.top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
        // Each reported token carries its text; the sampled one's is the delta.
        assert_eq!(lp.decoded.len(), lp.entries().len());
        assert_eq!(lp.decoded[0], d.text);
    }
    let err = engine.submit(
        Prompt::Text("x".into()),
        SamplingParams {
            logprobs: Some(21),
            ..SamplingParams::default()
        },
        Box::new(|_| {}),
    );
    assert!(err
        .unwrap_err()
        .to_string()
        .contains("Cannot request more than 20 logprobs."));
}

#[test]
fn min_tokens_holds_off_stop_tokens() {
    let engine = start();
    let greedy = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(12)
    };
    let full = stream(&engine, "Hello", greedy.clone())
        .last()
        .unwrap()
        .results
        .clone()
        .unwrap()
        .remove(0);
    let first = full.token_ids[0];
    // Stopping on the first greedy token ends after one token...
    let params = SamplingParams {
        stop_token_ids: vec![first],
        ..greedy.clone()
    };
    let r = stream(&engine, "Hello", params.clone())
        .last()
        .unwrap()
        .results
        .clone()
        .unwrap()
        .remove(0);
    assert_eq!(r.token_ids, vec![first]);
    // ...unless min_tokens forbids it: the stop token is masked for 5 tokens.
    let params = SamplingParams {
        min_tokens: 5,
        ..params
    };
    let r = stream(&engine, "Hello", params)
        .last()
        .unwrap()
        .results
        .clone()
        .unwrap()
        .remove(0);
    assert!(
        r.token_ids.len() >= 5 && !r.token_ids[..5].contains(&first),
        "{:?}",
        r.token_ids
    );
}

#[test]
fn repetition_penalty_changes_a_repetitive_continuation() {
    let engine = start();
    // The reference shows the model repeating "dict" after a bare BOS.
    let plain = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(12)
    };
    let a = stream(&engine, "", plain.clone())
        .last()
        .unwrap()
        .results
        .clone()
        .unwrap()
        .remove(0);
    let penalized = SamplingParams {
        repetition_penalty: 1.5,
        ..plain
    };
    let b = stream(&engine, "", penalized)
        .last()
        .unwrap()
        .results
        .clone()
        .unwrap()
        .remove(0);
    let distinct = |t: &[u32]| {
        let mut v = t.to_vec();
        v.sort();
        v.dedup();
        v.len()
    };
    assert!(
        distinct(&b.token_ids) > distinct(&a.token_ids),
        "{:?} vs {:?}",
        a.token_ids,
        b.token_ids
    );
}
