//! SamplingParams validation (every vLLM v0.4.3 message), the logits processors
//! against hand-computed values and against a naive transcription of vLLM's
//! sampler, the order they are applied in, and logprobs (ranks, top-N, -9999).

use crate::sampling_reference;

use std::collections::BTreeMap;

use engine::sampling::logprobs::{prompt_logprobs, top_logprobs, API_MIN_LOGPROB};
use engine::sampling::processors::{process_logits, processed_logprobs};
use engine::sampling::{
    log_softmax, EarlyStopping, Sampler, SamplingParams, SamplingType, SequenceTokens,
    TokenLogprobs,
};
use engine::Error;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sampling_reference as reference;
use sampling_reference::NEG;

fn message(params: &SamplingParams) -> String {
    match params.verify() {
        Err(Error::InvalidArgument(m)) => m,
        other => panic!("expected a rejection of {params:?}, got {other:?}"),
    }
}

fn beam(best_of: usize) -> SamplingParams {
    SamplingParams {
        use_beam_search: true,
        best_of: Some(best_of),
        temperature: 0.0,
        ..SamplingParams::default()
    }
}

#[allow(clippy::too_many_lines)] // a table of cases
#[test]
fn every_verify_message_is_vllms() {
    let d = SamplingParams::default;
    let cases: Vec<(SamplingParams, &str)> = vec![
        (SamplingParams { n: 0, ..d() }, "n must be at least 1, got 0."),
        (
            SamplingParams { n: 2, best_of: Some(1), ..d() },
            "best_of must be greater than or equal to n, got n=2 and best_of=1.",
        ),
        (
            SamplingParams { presence_penalty: 2.5, ..d() },
            "presence_penalty must be in [-2, 2], got 2.5.",
        ),
        (
            SamplingParams { presence_penalty: -3.0, ..d() },
            "presence_penalty must be in [-2, 2], got -3.0.",
        ),
        (
            SamplingParams { frequency_penalty: 2.01, ..d() },
            "frequency_penalty must be in [-2, 2], got 2.01.",
        ),
        (
            SamplingParams { repetition_penalty: 0.0, ..d() },
            "repetition_penalty must be greater than zero, got 0.0.",
        ),
        (
            SamplingParams { repetition_penalty: f64::INFINITY, ..d() },
            "repetition_penalty must be a finite number, got inf.",
        ),
        (
            SamplingParams { temperature: -1.0, ..d() },
            "temperature must be non-negative, got -1.0.",
        ),
        (
            SamplingParams { temperature: f64::NAN, ..d() },
            "temperature must be a finite number, got nan.",
        ),
        (SamplingParams { top_p: 0.0, ..d() }, "top_p must be in (0, 1], got 0.0."),
        (SamplingParams { top_p: 1.5, ..d() }, "top_p must be in (0, 1], got 1.5."),
        (
            SamplingParams { top_k: -2, ..d() },
            "top_k must be 0 (disable), or at least 1, got -2.",
        ),
        (SamplingParams { min_p: 1.5, ..d() }, "min_p must be in [0, 1], got 1.5."),
        (SamplingParams { min_p: -0.00001, ..d() }, "min_p must be in [0, 1], got -1e-05."),
        (
            SamplingParams { max_tokens: Some(0), ..d() },
            "max_tokens must be at least 1, got 0.",
        ),
        (
            SamplingParams { min_tokens: 5, max_tokens: Some(4), ..d() },
            "min_tokens must be less than or equal to max_tokens=4, got 5.",
        ),
        (
            SamplingParams { truncate_prompt_tokens: Some(0), ..d() },
            "truncate_prompt_tokens must be >= 1, got 0",
        ),
        (
            SamplingParams { stop: vec!["a".into(), String::new()].into(), ..d() },
            "stop cannot contain an empty string.",
        ),
        (
            SamplingParams { stop: vec!["a".into()].into(), detokenize: false, ..d() },
            "stop strings are only supported when detokenize is True. Set detokenize=True to use stop.",
        ),
        (beam(1), "best_of must be greater than 1 when using beam search. Got 1."),
        (
            SamplingParams { temperature: 1.0, ..beam(2) },
            "temperature must be 0 when using beam search.",
        ),
        (SamplingParams { top_p: 0.5, ..beam(2) }, "top_p must be 1 when using beam search."),
        (SamplingParams { top_k: 5, ..beam(2) }, "top_k must be -1 when using beam search."),
        (
            SamplingParams { early_stopping: EarlyStopping::True, ..d() },
            "early_stopping is not effective and must be False when not using beam search.",
        ),
        (
            SamplingParams { early_stopping: EarlyStopping::Never, ..d() },
            "early_stopping is not effective and must be False when not using beam search.",
        ),
        (
            SamplingParams { length_penalty: 2.0, ..d() },
            "length_penalty is not effective and must be the default value of 1.0 when not using beam search.",
        ),
        (
            SamplingParams { best_of: Some(2), ..SamplingParams::greedy(4) },
            "best_of must be 1 when using greedy sampling.Got 2.",
        ),
        (
            // Below 1e-5 counts as greedy.
            SamplingParams { temperature: 1e-6, n: 3, ..d() },
            "best_of must be 1 when using greedy sampling.Got 3.",
        ),
        // The first failing check wins, in vLLM's order.
        (
            SamplingParams { n: 0, temperature: -1.0, ..d() },
            "n must be at least 1, got 0.",
        ),
        (
            SamplingParams { frequency_penalty: 9.0, presence_penalty: 9.0, ..d() },
            "presence_penalty must be in [-2, 2], got 9.0.",
        ),
        (
            SamplingParams { top_k: 3, temperature: 1.0, best_of: Some(1), ..beam(1) },
            "best_of must be greater than 1 when using beam search. Got 1.",
        ),
    ];
    for (params, want) in &cases {
        assert_eq!(message(params), *want, "{params:?}");
    }
}

#[test]
fn valid_params_pass_and_greedy_is_normalised() {
    let ok = [
        SamplingParams::default(),
        SamplingParams::greedy(1),
        beam(2),
        // Later vLLM's relaxations: any repetition_penalty above 0, top_k 0 = off.
        SamplingParams {
            repetition_penalty: 3.5,
            top_k: 0,
            ..SamplingParams::default()
        },
        SamplingParams {
            top_k: 0,
            ..beam(2)
        },
        SamplingParams {
            min_p: 0.5,
            ..beam(3)
        },
        SamplingParams {
            max_tokens: None,
            min_tokens: 1000,
            ..SamplingParams::default()
        },
        SamplingParams {
            temperature: 2e-5,
            best_of: Some(4),
            n: 2,
            ..SamplingParams::default()
        },
        SamplingParams {
            presence_penalty: -2.0,
            frequency_penalty: 2.0,
            ..SamplingParams::default()
        },
        SamplingParams {
            length_penalty: 1.000001,
            ..SamplingParams::default()
        },
    ];
    for p in ok {
        assert!(p.verify().is_ok(), "{p:?}");
    }
    let greedy = SamplingParams {
        top_k: 5,
        top_p: 0.5,
        min_p: 0.2,
        ..SamplingParams::greedy(3)
    }
    .verified()
    .unwrap();
    assert_eq!((greedy.top_k, greedy.top_p, greedy.min_p), (-1, 1.0, 0.0));
    // Beam search keeps its min_p: vLLM only normalises non-beam greedy requests.
    assert_eq!(
        SamplingParams {
            min_p: 0.5,
            ..beam(2)
        }
        .verified()
        .unwrap()
        .min_p,
        0.5
    );
    let default = SamplingParams::default();
    assert_eq!(default.max_tokens, Some(16));
    assert_eq!((default.n, default.best_of(), default.top_k), (1, 1, -1));
}

#[test]
fn engine_level_checks() {
    let p = SamplingParams {
        logprobs: Some(6),
        ..SamplingParams::default()
    };
    let err = p.verify_for_model(100, 5).unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument(m) if m == "Cannot request more than 5 logprobs.")
    );
    let p = SamplingParams {
        prompt_logprobs: Some(5),
        ..SamplingParams::default()
    };
    assert!(p.verify_for_model(100, 5).is_ok());
    let p = SamplingParams {
        logit_bias: BTreeMap::from([(100, 1.0)]),
        ..SamplingParams::default()
    };
    assert!(p.verify_for_model(100, 5).is_err());
    assert!(p.verify_for_model(101, 5).is_ok());
    let neg = |f, v| match SamplingParams::negative_integer_error(f, v) {
        Some(Error::InvalidArgument(m)) => m,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        neg("logprobs", -1),
        "logprobs must be non-negative, got -1."
    );
    assert_eq!(
        neg("min_tokens", -2),
        "min_tokens must be greater than or equal to 0, got -2."
    );
    assert_eq!(
        neg("max_tokens", -5),
        "max_tokens must be at least 1, got -5."
    );
    assert!(SamplingParams::negative_integer_error("top_k", -3).is_none());
}

#[test]
fn sampling_type_buffer_length_and_generation_config() {
    let d = SamplingParams::default;
    assert_eq!(
        SamplingParams::greedy(1).sampling_type(),
        SamplingType::Greedy
    );
    assert_eq!(d().sampling_type(), SamplingType::Random);
    assert_eq!(
        SamplingParams {
            seed: Some(1),
            ..d()
        }
        .sampling_type(),
        SamplingType::RandomSeed
    );
    assert_eq!(
        SamplingParams {
            seed: Some(1),
            ..SamplingParams::greedy(1)
        }
        .sampling_type(),
        SamplingType::Greedy
    );
    assert_eq!(beam(2).sampling_type(), SamplingType::Beam);
    let stop = SamplingParams {
        stop: vec!["ab".into(), "héllo".into()].into(),
        ..d()
    };
    assert_eq!(
        stop.output_text_buffer_length(),
        "héllo".chars().count() - 1
    );
    let include = SamplingParams {
        include_stop_str_in_output: true,
        ..stop.clone()
    };
    assert_eq!(include.output_text_buffer_length(), 0);
    let mut p = SamplingParams {
        stop_token_ids: vec![5],
        ..d()
    };
    p.update_from_generation_config(&[5, 7]);
    assert_eq!(p.stop_token_ids, vec![5, 7]);
    let mut p = SamplingParams {
        ignore_eos: true,
        ..d()
    };
    p.update_from_generation_config(&[7]);
    assert!(p.stop_token_ids.is_empty());
}

#[test]
fn processors_on_a_hand_computed_row() {
    // One of everything, in vLLM's order, on a 5-token row.
    let params = SamplingParams {
        logit_bias: BTreeMap::from([(0, 1.5), (4, -500.0)]),
        min_tokens: 3,
        stop_token_ids: vec![3],
        repetition_penalty: 2.0,
        frequency_penalty: 0.5,
        presence_penalty: 0.25,
        temperature: 0.5,
        ..SamplingParams::default()
    };
    let prompt = [1u32];
    let output = [2u32, 2];
    let mut row = [1.0f32, 4.0, -2.0, 0.5, 3.0];
    process_logits(
        &mut row,
        &params,
        SequenceTokens {
            prompt: &prompt,
            output: &output,
        },
        &[4],
    );
    let want = [
        (1.0 + 1.5) / 0.5,                     // bias, then temperature
        (4.0 / 2.0) / 0.5,                     // prompt token: repetition only
        (-2.0 * 2.0 - 0.5 * 2.0 - 0.25) / 0.5, // output twice: all three penalties
        NEG,                                   // stop token before min_tokens
        NEG,                                   // EOS before min_tokens (bias irrelevant)
    ];
    assert_eq!(row, want);
}

#[test]
fn penalties_come_before_temperature_and_repetition_before_frequency() {
    let prompt: [u32; 0] = [];
    let output = [0u32];
    let tokens = SequenceTokens {
        prompt: &prompt,
        output: &output,
    };
    let run = |params: SamplingParams| {
        let mut row = [3.0f32, 1.0];
        process_logits(&mut row, &params, tokens, &[]);
        row[0]
    };
    let presence = SamplingParams {
        presence_penalty: 1.0,
        temperature: 2.0,
        ..SamplingParams::default()
    };
    assert_eq!(run(presence), (3.0 - 1.0) / 2.0);
    assert_ne!(
        (3.0 - 1.0) / 2.0,
        3.0 / 2.0 - 1.0,
        "the test distinguishes the orders"
    );
    let rep_freq = SamplingParams {
        repetition_penalty: 2.0,
        frequency_penalty: 1.0,
        ..SamplingParams::default()
    };
    assert_eq!(run(rep_freq), 3.0 / 2.0 - 1.0);
    assert_ne!(3.0 / 2.0 - 1.0, (3.0 - 1.0) / 2.0);
}

#[test]
fn top_p_sees_the_temperature_and_min_p_comes_after_top_p() {
    // p = (0.5, 0.3, 0.12, 0.08): min_p 0.2 removes 0.08; top_p 0.85 on the full
    // row keeps three, but after min_p had removed 0.08 it would keep two.
    let ln = |x: f64| x.ln() as f32;
    let row = [ln(0.5), ln(0.3), ln(0.12), ln(0.08)];
    let params = SamplingParams {
        top_p: 0.85,
        min_p: 0.2,
        ..SamplingParams::default()
    };
    let mut got = row;
    process_logits(&mut got, &params, SequenceTokens::default(), &[]);
    let kept = |r: &[f32]| r.iter().filter(|x| x.is_finite()).count();
    assert_eq!(kept(&got), 3);
    // A hot temperature flattens the row, so the same top_p keeps everything.
    let hot = SamplingParams {
        top_p: 0.85,
        temperature: 100.0,
        ..SamplingParams::default()
    };
    let mut got = row;
    process_logits(&mut got, &hot, SequenceTokens::default(), &[]);
    assert_eq!(kept(&got), 4);
}

/// Random rows and parameters against the naive transcription of vLLM.
#[test]
fn processors_match_the_reference_on_random_rows() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for case in 0..300 {
        let vocab = rng.random_range(2..200usize);
        let mut row: Vec<f32> = (0..vocab).map(|_| rng.random_range(-8.0..8.0f32)).collect();
        // Some exact ties, which top-k keeps together.
        for _ in 0..vocab / 10 {
            let (a, b) = (rng.random_range(0..vocab), rng.random_range(0..vocab));
            row[a] = row[b];
        }
        let ids = |rng: &mut ChaCha8Rng, n: usize| -> Vec<u32> {
            (0..n).map(|_| rng.random_range(0..vocab as u32)).collect()
        };
        let (prompt_len, output_len) = (rng.random_range(0..20), rng.random_range(0..20));
        let prompt = ids(&mut rng, prompt_len);
        let output = ids(&mut rng, output_len);
        let eos = ids(&mut rng, 1);
        let params = SamplingParams {
            temperature: [0.0, 0.3, 1.0, 1.7][case % 4],
            top_k: if rng.random_bool(0.5) {
                rng.random_range(1..vocab as i32 + 3)
            } else {
                -1
            },
            top_p: if rng.random_bool(0.5) {
                rng.random_range(0.05..1.0)
            } else {
                1.0
            },
            min_p: if rng.random_bool(0.3) {
                rng.random_range(0.0..0.5)
            } else {
                0.0
            },
            presence_penalty: rng.random_range(-2.0..2.0),
            frequency_penalty: rng.random_range(-2.0..2.0),
            repetition_penalty: rng.random_range(0.5..2.0),
            min_tokens: rng.random_range(0..25),
            stop_token_ids: ids(&mut rng, 2),
            logit_bias: BTreeMap::from([(ids(&mut rng, 1)[0], rng.random_range(-150.0..150.0))]),
            ..SamplingParams::default()
        };
        let want = reference::process(&row, &params, &prompt, &output, &eos);
        let mut got = row.clone();
        process_logits(
            &mut got,
            &params,
            SequenceTokens {
                prompt: &prompt,
                output: &output,
            },
            &eos,
        );
        for i in 0..vocab {
            let (g, w) = (got[i], want[i]);
            assert!(
                g == w || (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                "case {case} token {i}: {g} vs {w}\n{params:?}"
            );
        }
    }
}

#[test]
fn logprobs_come_from_the_processed_row() {
    let logits = [1.0f32, 3.0, 2.0, 0.0];
    let params = SamplingParams {
        temperature: 0.5,
        logprobs: Some(2),
        seed: Some(3),
        ..SamplingParams::default()
    };
    let out = Sampler::new(Some(3)).next_token(
        &mut logits.clone(),
        &params,
        SequenceTokens::default(),
        &[],
    );
    let scaled: Vec<f32> = logits.iter().map(|x| x / 0.5).collect();
    let want = log_softmax(&scaled);
    assert_eq!(out.logprobs.chosen.logprob, want[out.token as usize]);
    let ranks_above = want
        .iter()
        .filter(|&&x| x > want[out.token as usize])
        .count();
    assert_eq!(out.logprobs.chosen.rank, ranks_above + 1);
    let top: Vec<u32> = out.logprobs.top.iter().map(|l| l.token_id).collect();
    assert_eq!(top, vec![1, 2]);
    assert_eq!(out.logprobs.top[0].logprob, want[1]);
}

#[test]
fn top_k_one_makes_everything_else_minus_9999() {
    let mut logits = [0.5f32, 2.0, 1.0, -1.0];
    let params = SamplingParams {
        top_k: 1,
        logprobs: Some(3),
        ..SamplingParams::default()
    };
    let row = processed_logprobs(&mut logits, &params, SequenceTokens::default(), &[]);
    assert_eq!(row, [NEG, 0.0, NEG, NEG]);
    // A masked chosen token (as a stop-string test or a forced token would give).
    let lp = TokenLogprobs::new(&row, 2, params.logprobs);
    assert_eq!(lp.chosen.logprob, NEG, "the raw value stays -inf for sums");
    assert_eq!(lp.chosen.rank, 2, "1 + the one finite entry");
    let entries = lp.entries();
    let got: Vec<(u32, f32, usize)> = entries
        .iter()
        .map(|l| (l.token_id, l.logprob, l.rank))
        .collect();
    assert_eq!(
        got,
        vec![
            (2, API_MIN_LOGPROB, 3),
            (1, 0.0, 1),
            (0, API_MIN_LOGPROB, 2)
        ],
        "chosen first (with its top-N rank), then the rest of the top 3"
    );
}

#[test]
fn top_n_matches_a_full_sort() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let row: Vec<f32> = (0..1000).map(|_| rng.random_range(-5.0..0.0f32)).collect();
    let mut sorted: Vec<u32> = (0..1000).collect();
    sorted.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
    for n in [1, 5, 20, 1000] {
        let top = top_logprobs(&row, n);
        let ids: Vec<u32> = top.iter().map(|l| l.token_id).collect();
        assert_eq!(ids, sorted[..n].to_vec());
    }
}

#[test]
fn prompt_logprobs_per_position() {
    let vocab = 4;
    // Row i predicts prompt[i + 1]; the last row (the sampling row) is unused.
    let rows: Vec<f32> = vec![
        0.0, 2.0, 1.0, -1.0, // predicts token 1 (the argmax)
        3.0, 0.0, 0.0, 1.0, // predicts token 2 (not the argmax)
        9.0, 9.0, 9.0, 9.0,
    ];
    let prompt = [0u32, 1, 2];
    let plain = SamplingParams {
        prompt_logprobs: Some(1),
        ..SamplingParams::greedy(1)
    };
    let got = prompt_logprobs(&rows, vocab, &prompt, &plain);
    assert_eq!(got.len(), 3);
    assert!(got[0].is_none());
    for (pos, row) in rows.chunks(vocab).take(2).enumerate() {
        let lp = got[pos + 1].as_ref().unwrap();
        let want = log_softmax(row);
        assert_eq!(lp.chosen.token_id, prompt[pos + 1]);
        assert_eq!(lp.chosen.logprob, want[prompt[pos + 1] as usize]);
        assert_eq!(lp.top.len(), 1);
    }
    // With top_k = 1 the prompt rows are truncated too: a non-argmax prompt token
    // gets -inf, reported as -9999.
    let top1 = SamplingParams {
        prompt_logprobs: Some(0),
        top_k: 1,
        ..SamplingParams::default()
    };
    let got = prompt_logprobs(&rows, vocab, &prompt, &top1);
    assert_eq!(got[1].as_ref().unwrap().chosen.logprob, 0.0);
    let second = got[2].as_ref().unwrap();
    assert_eq!(second.chosen.logprob, NEG);
    assert_eq!(second.entries()[0].logprob, API_MIN_LOGPROB);
    assert!(second.top.is_empty());
}
