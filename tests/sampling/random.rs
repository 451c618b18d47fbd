//! Random sampling: the draws follow the processed distribution (a chi-square
//! test against probabilities computed by the naive vLLM transcription),
//! masked tokens never appear, and seeded sequences are reproducible and
//! independent of every other sequence.

use crate::sampling_reference;

use engine::sampling::processors::processed_logprobs;
use engine::sampling::{Sampler, SamplingParams, SequenceTokens};

const LOGITS: [f32; 8] = [0.3, 2.0, -1.0, 1.2, 0.0, 1.9, -0.5, 0.8];

/// Pearson's chi-square of `counts` against `probs` (over the tokens with p > 0),
/// and the number of draws that fell on tokens with p = 0.
fn chi_square(counts: &[usize], probs: &[f64]) -> (f64, usize, usize) {
    let n: usize = counts.iter().sum();
    let mut chi = 0.0;
    let mut cells = 0;
    let mut impossible = 0;
    for (&c, &p) in counts.iter().zip(probs) {
        if p == 0.0 {
            impossible += c;
        } else {
            let expected = p * n as f64;
            chi += (c as f64 - expected).powi(2) / expected;
            cells += 1;
        }
    }
    (chi, cells - 1, impossible)
}

/// The 0.999 quantile of chi-square for 1..=7 degrees of freedom.
const CHI2_999: [f64; 8] = [0.0, 10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32];

fn check_distribution(params: SamplingParams, seed: u64) {
    let want = sampling_reference::probabilities(&sampling_reference::process(
        &LOGITS,
        &params,
        &[],
        &[],
        &[],
    ));
    let mut row = LOGITS;
    let processed = processed_logprobs(&mut row, &params, SequenceTokens::default(), &[]);
    let mut sampler = Sampler::new(Some(seed));
    let mut counts = vec![0usize; LOGITS.len()];
    let draws = 40_000;
    for _ in 0..draws {
        counts[sampler.sample(&processed, &params) as usize] += 1;
    }
    let (chi, df, impossible) = chi_square(&counts, &want);
    assert_eq!(
        impossible, 0,
        "masked tokens were drawn: {counts:?} {want:?}"
    );
    if df > 0 {
        assert!(
            chi < CHI2_999[df],
            "chi2 {chi:.2} with {df} dof: {counts:?} vs {want:?} ({params:?})"
        );
    }
}

#[test]
fn draws_follow_the_processed_distribution() {
    let d = SamplingParams::default;
    let cases = [
        d(),
        SamplingParams {
            temperature: 0.6,
            ..d()
        },
        SamplingParams {
            temperature: 1.8,
            ..d()
        },
        SamplingParams { top_k: 3, ..d() },
        SamplingParams { top_p: 0.7, ..d() },
        SamplingParams { min_p: 0.3, ..d() },
        SamplingParams {
            top_k: 5,
            top_p: 0.8,
            min_p: 0.1,
            temperature: 1.3,
            ..d()
        },
    ];
    for (i, params) in cases.into_iter().enumerate() {
        check_distribution(params, 100 + i as u64);
    }
}

#[test]
fn the_distribution_test_can_fail() {
    // Sampling the unprocessed row while expecting top_k = 3 must be caught.
    let params = SamplingParams {
        top_k: 3,
        ..SamplingParams::default()
    };
    let want = sampling_reference::probabilities(&sampling_reference::process(
        &LOGITS,
        &params,
        &[],
        &[],
        &[],
    ));
    let raw = engine::sampling::log_softmax(&LOGITS);
    let mut sampler = Sampler::new(Some(1));
    let mut counts = vec![0usize; LOGITS.len()];
    for _ in 0..40_000 {
        counts[sampler.sample(&raw, &params) as usize] += 1;
    }
    let (_, _, impossible) = chi_square(&counts, &want);
    assert!(impossible > 0);
    // And a temperature mismatch is caught by the statistic itself.
    let hot = SamplingParams {
        temperature: 1.2,
        ..SamplingParams::default()
    };
    let want = sampling_reference::probabilities(&sampling_reference::process(
        &LOGITS,
        &hot,
        &[],
        &[],
        &[],
    ));
    let mut counts = vec![0usize; LOGITS.len()];
    for _ in 0..40_000 {
        counts[sampler.sample(&raw, &hot) as usize] += 1;
    }
    let (chi, df, _) = chi_square(&counts, &want);
    assert!(chi > CHI2_999[df], "chi2 {chi}");
}

/// A toy "model": the next logits depend on the tokens so far.
fn logits_after(tokens: &[u32]) -> Vec<f32> {
    let h = tokens
        .iter()
        .fold(7u32, |h, &t| h.wrapping_mul(31).wrapping_add(t));
    (0..16)
        .map(|i| ((h.wrapping_mul(i + 3) % 97) as f32) / 20.0)
        .collect()
}

/// Generates `steps` tokens for one sequence with penalties on, one call per step.
fn generate(
    sampler: &mut Sampler,
    params: &SamplingParams,
    prompt: &[u32],
    steps: usize,
) -> Vec<u32> {
    let mut output = Vec::new();
    for _ in 0..steps {
        let all: Vec<u32> = prompt.iter().chain(&output).copied().collect();
        let mut logits = logits_after(&all);
        let tokens = SequenceTokens {
            prompt,
            output: &output,
        };
        output.push(sampler.next_token(&mut logits, params, tokens, &[]).token);
    }
    output
}

#[test]
fn seeded_sequences_repeat_and_ignore_other_sequences() {
    let params = SamplingParams {
        seed: Some(1234),
        temperature: 0.9,
        presence_penalty: 0.5,
        repetition_penalty: 1.2,
        ..SamplingParams::default()
    };
    let prompt = [1u32, 2, 3];
    let alone = generate(&mut Sampler::new(params.seed), &params, &prompt, 40);
    assert_eq!(
        alone,
        generate(&mut Sampler::new(params.seed), &params, &prompt, 40)
    );
    // Interleaved step by step with an unseeded sequence and another seeded one.
    let mut a = Sampler::new(params.seed);
    let mut b = Sampler::new(None);
    let mut c = Sampler::new(Some(99));
    let mut interleaved = Vec::new();
    for _ in 0..40 {
        generate(&mut b, &params, &[5], 1);
        generate(&mut c, &params, &[6, 7], 2);
        let so_far: Vec<u32> = interleaved.clone();
        let all: Vec<u32> = prompt.iter().chain(&so_far).copied().collect();
        let mut logits = logits_after(&all);
        let tokens = SequenceTokens {
            prompt: &prompt,
            output: &so_far,
        };
        interleaved.push(a.next_token(&mut logits, &params, tokens, &[]).token);
    }
    assert_eq!(alone, interleaved);
    let other_seed = generate(&mut Sampler::new(Some(1235)), &params, &prompt, 40);
    assert_ne!(alone, other_seed);
}

#[test]
fn best_of_children_get_their_own_reproducible_streams() {
    let params = SamplingParams {
        seed: Some(7),
        n: 3,
        temperature: 1.0,
        ..SamplingParams::default()
    };
    let prompt = [4u32, 4];
    let run = || {
        let root = Sampler::new(params.seed);
        (0..3)
            .map(|i| generate(&mut root.fork(i), &params, &prompt, 30))
            .collect::<Vec<_>>()
    };
    let first = run();
    assert_eq!(first, run());
    assert_ne!(first[0], first[1]);
    assert_ne!(first[1], first[2]);
    // A child's stream does not depend on its siblings having been run.
    let root = Sampler::new(params.seed);
    assert_eq!(generate(&mut root.fork(2), &params, &prompt, 30), first[2]);
}

#[test]
fn unseeded_samplers_differ() {
    let params = SamplingParams::default();
    let a = generate(&mut Sampler::new(None), &params, &[1], 40);
    let b = generate(&mut Sampler::new(None), &params, &[1], 40);
    assert_ne!(a, b);
}

#[test]
fn greedy_ignores_the_generator_and_takes_the_argmax() {
    let params = SamplingParams::greedy(10);
    let a = generate(&mut Sampler::new(Some(1)), &params, &[3], 10);
    let b = generate(&mut Sampler::new(Some(2)), &params, &[3], 10);
    assert_eq!(a, b);
    let mut tokens = vec![3u32];
    for &t in &a {
        let logits = logits_after(&tokens);
        assert_eq!(t, engine::sampling::argmax(&logits));
        tokens.push(t);
    }
}
