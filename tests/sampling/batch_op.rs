//! The batched sampling op (`Backend::sample_rows`) on the CPU backend against
//! the per-row path it replaced in the engine (bitmask, then
//! `Sampler::next_token`): same tokens, same logprobs, ranks and top-N, and the
//! same draws afterwards, over a grid of parameters, several steps and the
//! forks of an `n` > 1 request.

use std::collections::BTreeMap;

use engine::backend::cpu::CpuBackend;
use engine::backend::{Backend, SampleBatch};
use engine::sampling::batch::{sample_output, sample_row_for, HostSampler, RowRequest};
use engine::sampling::guided::apply_token_bitmask;
use engine::sampling::{SampleOutput, Sampler, SamplingParams, SequenceTokens};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

const VOCAB: usize = 300; // not a multiple of 32: the bitmask's last word is partial
const EOS: [u32; 1] = [7];

fn grid() -> Vec<SamplingParams> {
    let mut out = Vec::new();
    for random in [false, true] {
        for penalties in 0..3 {
            for truncation in 0..4 {
                for logprobs in [None, Some(0), Some(1), Some(5), Some(20)] {
                    let mut p = if random {
                        SamplingParams {
                            temperature: 0.8,
                            seed: Some(11),
                            ..SamplingParams::default()
                        }
                    } else {
                        SamplingParams::greedy(1)
                    };
                    p.logprobs = logprobs;
                    if penalties >= 1 {
                        p.presence_penalty = 0.5;
                        p.frequency_penalty = 0.3;
                        p.repetition_penalty = 1.3;
                    }
                    if penalties == 2 {
                        p.logit_bias = BTreeMap::from([(3, 5.0), (9, -200.0), (299, 2.5)]);
                        p.min_tokens = 2;
                        p.stop_token_ids = vec![4];
                    }
                    match truncation {
                        1 => p.top_k = 5,
                        2 => p.top_p = 0.8,
                        3 => (p.top_k, p.top_p, p.min_p) = (40, 0.9, 0.05),
                        _ => {}
                    }
                    out.push(p);
                }
            }
        }
    }
    out
}

/// The old engine path for one sequence's row.
fn per_row(
    row: &[f32],
    mask: Option<&[u32]>,
    sampler: &mut Sampler,
    params: &SamplingParams,
    tokens: SequenceTokens,
) -> SampleOutput {
    let mut row = row.to_vec();
    if let Some(mask) = mask {
        apply_token_bitmask(&mut row, mask);
    }
    sampler.next_token(&mut row, params, tokens, &EOS)
}

struct Seq {
    tokens: Vec<u32>,
    old: Sampler,
    new: Sampler,
}

/// Three steps of a request with three sequences (the first step: all from
/// logits row 0, as a best_of group's first sample).
fn check(params: &SamplingParams, mask: Option<&[u32]>, rng: &mut ChaCha8Rng) {
    let prompt: Vec<u32> = (0..12).map(|_| rng.random_range(0..VOCAB as u32)).collect();
    let root = Sampler::new(params.seed);
    let mut seqs: Vec<Seq> = (0..3)
        .map(|i| Seq {
            tokens: prompt.clone(),
            old: root.fork(i),
            new: root.fork(i),
        })
        .collect();
    for step in 0..3 {
        let logits: Vec<f32> = (0..3 * VOCAB)
            .map(|_| rng.random_range(-4.0..4.0))
            .collect();
        let mut batch = SampleBatch {
            vocab: VOCAB,
            rows: Vec::new(),
        };
        for (i, s) in seqs.iter().enumerate() {
            let tokens = SequenceTokens {
                prompt: &s.tokens[..prompt.len()],
                output: &s.tokens[prompt.len()..],
            };
            let request = RowRequest {
                logits_row: if step == 0 { 0 } else { i },
                vocab: VOCAB,
                params,
                tokens,
                eos_token_ids: &EOS,
                bitmask: mask,
            };
            batch.rows.push(sample_row_for(&request, &s.new));
        }
        let sampled = CpuBackend
            .sample_rows(&logits, &batch, &HostSampler)
            .unwrap();
        assert_eq!(sampled.len(), seqs.len());
        for ((s, got), row) in seqs.iter_mut().zip(&sampled).zip(&batch.rows) {
            let start = row.logits_row * VOCAB;
            let tokens = SequenceTokens {
                prompt: &s.tokens[..prompt.len()],
                output: &s.tokens[prompt.len()..],
            };
            let want = per_row(
                &logits[start..start + VOCAB],
                mask,
                &mut s.old,
                params,
                tokens,
            );
            let got = sample_output(got);
            assert_eq!(
                got,
                want,
                "step {step}, {params:?}, mask {}",
                mask.is_some()
            );
            if row.draw.is_some() {
                s.new.advance();
            }
            assert_eq!(s.new.position(), s.old.position());
            s.tokens.push(got.token);
        }
    }
}

#[test]
fn the_cpu_op_equals_the_per_row_path_over_the_grid() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    // Every third token allowed, and nothing past the mask's end (word 8 of 10).
    let mut mask: Vec<u32> = vec![0x4924_9249; VOCAB.div_ceil(32)];
    mask.truncate(8);
    let grid = grid();
    assert_eq!(grid.len(), 120);
    for params in &grid {
        check(params, None, &mut rng);
        check(params, Some(&mask), &mut rng);
    }
}

#[test]
fn the_op_rejects_rows_outside_the_logits() {
    let batch = SampleBatch {
        vocab: VOCAB,
        rows: vec![engine::backend::SampleRow::greedy(2)],
    };
    let err = CpuBackend
        .sample_rows(&vec![0.0; 2 * VOCAB], &batch, &HostSampler)
        .unwrap_err();
    assert!(err.to_string().contains("logits row 2 of 2"), "{err}");
}
