//! Beam search on tiny hand-made next-token tables: a step-by-step hand trace,
//! the early-stopping variants, the bookkeeping of one selection, and an
//! exhaustive check (a beam wide enough to keep everything must return the
//! best complete sequences by score, for several length penalties).

use engine::sampling::beam::{
    beam_candidates, beam_search_score, can_stop_early, select_beams, top_n_outputs, BeamContext,
    BeamParent, CheckedCandidate, ScoredSeq,
};
use engine::sampling::processors::processed_logprobs;
use engine::sampling::stop::{OutputText, StopChecker};
use engine::sampling::{log_softmax, EarlyStopping, SamplingParams, SequenceTokens};

/// A next-token model given as P(next | last token).
struct Table {
    eos: u32,
    rows: Vec<Vec<f64>>,
}

impl Table {
    fn logits(&self, tokens: &[u32]) -> Vec<f32> {
        let last = *tokens.last().unwrap() as usize;
        self.rows[last].iter().map(|p| p.ln() as f32).collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Output {
    tokens: Vec<u32>,
    cumulative_logprob: f64,
}

/// A scheduler in miniature: runs beam search to the end with the sampling
/// functions and returns the chosen outputs (best first) and the steps taken.
#[allow(clippy::too_many_lines)] // a reference implementation kept in one piece
fn beam_search(
    table: &Table,
    params: &SamplingParams,
    prompt: &[u32],
    max_model_len: usize,
) -> (Vec<Output>, usize) {
    params.verify().unwrap();
    let eos = [table.eos];
    let ctx = BeamContext {
        params,
        eos_token_ids: &eos,
        prompt_len: prompt.len(),
        max_model_len,
    };
    let scored = |o: &Output| ScoredSeq {
        cumulative_logprob: o.cumulative_logprob,
        seq_len: prompt.len() + o.tokens.len(),
        last_token: *o.tokens.last().unwrap(),
    };
    let mut running = vec![Output {
        tokens: vec![],
        cumulative_logprob: 0.0,
    }];
    let mut finished: Vec<Output> = Vec::new();
    for step in 1..100 {
        let rows: Vec<Vec<f32>> = running
            .iter()
            .map(|b| {
                let all: Vec<u32> = prompt.iter().chain(&b.tokens).copied().collect();
                let mut logits = table.logits(&all);
                let tokens = SequenceTokens {
                    prompt,
                    output: &b.tokens,
                };
                processed_logprobs(&mut logits, params, tokens, &eos)
            })
            .collect();
        let parents: Vec<BeamParent> = running
            .iter()
            .zip(&rows)
            .map(|(b, r)| BeamParent {
                cumulative_logprob: b.cumulative_logprob,
                logprobs: r,
            })
            .collect();
        let candidates = beam_candidates(&parents, params.best_of());
        let checker = StopChecker::new(params, &eos, max_model_len);
        let mut children = Vec::new();
        let mut checked = Vec::new();
        for c in &candidates {
            let mut tokens = running[c.parent].tokens.clone();
            tokens.push(c.token);
            let child = Output {
                tokens,
                cumulative_logprob: c.cumulative_logprob,
            };
            let len = child.tokens.len();
            let done = checker.check(&mut OutputText::new(), c.token, len, prompt.len() + len, "");
            checked.push(CheckedCandidate {
                parent: c.parent,
                seq: scored(&child),
                finished: done.is_some(),
            });
            children.push(child);
        }
        let existing: Vec<ScoredSeq> = finished.iter().map(scored).collect();
        let selection = select_beams(&existing, &checked, &ctx);
        let mut dropped = selection.dropped_finished.clone();
        dropped.sort_unstable_by(|a, b| b.cmp(a));
        for i in dropped {
            finished.remove(i);
        }
        finished.extend(selection.finished.iter().map(|&i| children[i].clone()));
        running = selection
            .running
            .iter()
            .map(|&i| children[i].clone())
            .collect();
        if selection.done {
            let all: Vec<ScoredSeq> = finished.iter().map(scored).collect();
            let order = top_n_outputs(&all, params);
            return (
                order.into_iter().map(|i| finished[i].clone()).collect(),
                step,
            );
        }
    }
    panic!("beam search did not end");
}

fn beam_params(
    best_of: usize,
    n: usize,
    early_stopping: EarlyStopping,
    length_penalty: f64,
    max_tokens: usize,
) -> SamplingParams {
    SamplingParams {
        n,
        best_of: Some(best_of),
        use_beam_search: true,
        temperature: 0.0,
        early_stopping,
        length_penalty,
        max_tokens: Some(max_tokens),
        ..SamplingParams::default()
    }
}

fn tokens(outputs: &[Output]) -> Vec<Vec<u32>> {
    outputs.iter().map(|o| o.tokens.clone()).collect()
}

/// The table traced by hand below (EOS = 3).
fn traced_table() -> Table {
    Table {
        eos: 3,
        rows: vec![
            vec![0.05, 0.45, 0.3, 0.2],  // after 0 (and the prompt [0])
            vec![0.1, 0.1, 0.2, 0.6],    // after 1
            vec![0.45, 0.33, 0.12, 0.1], // after 2
            vec![0.25; 4],
        ],
    }
}

/// Beam width 2, n 2, length_penalty 1, max_tokens 3, prompt [0]:
/// step 1: candidates 1 (.45), 2 (.3), EOS (.2), 0 (.05). EOS finishes (score
///   ln .2 / 1: EOS does not count); [1], [2] continue.
/// step 2: [1,3] .27, [2,0] .135, [2,1] .099, [1,2] .09. [1,3] finishes (ln .27 / 2);
///   the best running [2,0] scores ln .135 / 3 > ln .2, so the search goes on
///   with [2,0] and [2,1].
/// step 3 (all finish): [2,0,1] .06075, [2,1,3] .0594, [2,0,2] .0405, [2,0,3] .027
///   score ln .06075 / 4, ln .0594 / 3, ln .0405 / 4, ln .027 / 3; with the earlier
///   ones the best two are [1,3] and [2,0,1]; [3] drops out.
#[test]
fn a_hand_traced_beam_search() {
    let table = traced_table();
    let params = beam_params(2, 2, EarlyStopping::False, 1.0, 3);
    let (out, steps) = beam_search(&table, &params, &[0], 16);
    assert_eq!(tokens(&out), vec![vec![1, 3], vec![2, 0, 1]]);
    assert_eq!(steps, 3);
    assert!((out[0].cumulative_logprob - (0.45f64 * 0.6).ln()).abs() < 1e-5);
    assert!((out[1].cumulative_logprob - (0.3f64 * 0.45 * 0.45).ln()).abs() < 1e-5);
    // The hand-traced scores behind the choices (ties would make the trace moot).
    let s = |p: f64, len: f64| p.ln() / len;
    assert!(s(0.135, 3.0) > s(0.2, 1.0), "step 2 continues");
    assert!(s(0.27, 2.0) > s(0.06075, 4.0) && s(0.06075, 4.0) > s(0.0405, 4.0));
    assert!(s(0.0405, 4.0) > s(0.0594, 3.0) && s(0.0594, 3.0) > s(0.2, 1.0));
    // "never" needs the same steps here (the best running beam could still win).
    let never = beam_params(2, 2, EarlyStopping::Never, 1.0, 3);
    assert_eq!(beam_search(&table, &never, &[0], 16), (out, 3));
}

#[test]
fn early_stopping_true_stops_at_beam_width_finished() {
    // After step 2 there are two finished beams ([3] and [1,3]): stop there. The
    // final order scores without the EOS correction: ln .27 / 3 > ln .2 / 2.
    let params = beam_params(2, 2, EarlyStopping::True, 1.0, 3);
    let (out, steps) = beam_search(&traced_table(), &params, &[0], 16);
    assert_eq!(tokens(&out), vec![vec![1, 3], vec![3]]);
    assert_eq!(steps, 2);
}

#[test]
fn early_stopping_false_stops_when_no_running_beam_can_win() {
    // Prompt row: EOS .2, 1 .4, 2 .38; then 1 and 2 are followed by EOS (.85).
    // Step 2 finishes [1,3] (ln .34 / 2) and [2,3] (ln .323 / 2); the best running
    // beam [1,0] scores ln .02 / 3, below both: False stops, "never" looks ahead to
    // max(prompt + max_tokens, max_model_len) = 16 tokens (ln .02 / 16 is higher)
    // and runs one more step, which cannot beat them.
    let table = Table {
        eos: 3,
        rows: vec![
            vec![0.02, 0.4, 0.38, 0.2],
            vec![0.05, 0.05, 0.05, 0.85],
            vec![0.05, 0.05, 0.05, 0.85],
            vec![0.25; 4],
        ],
    };
    let s = |p: f64, len: f64| p.ln() / len;
    assert!(s(0.323, 2.0) >= s(0.02, 3.0) && s(0.323, 2.0) < s(0.02, 16.0));
    let run = |early| beam_search(&table, &beam_params(2, 2, early, 1.0, 3), &[0], 16);
    let (heuristic, steps) = run(EarlyStopping::False);
    assert_eq!(tokens(&heuristic), vec![vec![1, 3], vec![2, 3]]);
    assert_eq!(steps, 2);
    let (never, steps) = run(EarlyStopping::Never);
    assert_eq!(tokens(&never), vec![vec![1, 3], vec![2, 3]]);
    assert_eq!(steps, 3);
}

#[test]
fn can_stop_early_variants() {
    let params = |early, lp| SamplingParams {
        early_stopping: early,
        length_penalty: lp,
        max_tokens: Some(10),
        ..beam_params(2, 1, early, lp, 10)
    };
    let best_running = ScoredSeq {
        cumulative_logprob: -2.0,
        seq_len: 3,
        last_token: 0,
    };
    let worst_finished = ScoredSeq {
        cumulative_logprob: -2.4,
        seq_len: 4,
        last_token: 0,
    };
    let check = |early, lp, max_model_len| {
        let p = params(early, lp);
        let ctx = BeamContext {
            params: &p,
            eos_token_ids: &[9],
            prompt_len: 1,
            max_model_len,
        };
        can_stop_early(&ctx, &best_running, &worst_finished)
    };
    // lp 1: worst finished -0.6 vs best running -0.667 now; vs -2/11 at length
    // max(1 + 10, 8) = 11 for "never".
    assert!(check(EarlyStopping::True, 1.0, 8));
    assert!(check(EarlyStopping::False, 1.0, 8));
    assert!(!check(EarlyStopping::Never, 1.0, 8));
    // lp 0: "never" uses the current score (cumulative): -2.4 < -2.0.
    assert!(!check(EarlyStopping::Never, 0.0, 8));
    assert!(!check(EarlyStopping::False, 0.0, 8));
    // lp -1: scores are cum * len: -9.6 vs -6.
    assert!(!check(EarlyStopping::Never, -1.0, 8));
    // With EOS last, the finished beam's length is one less: -2.4 / 3 = -0.8.
    let eos_finished = ScoredSeq {
        last_token: 9,
        ..worst_finished
    };
    let p = params(EarlyStopping::False, 1.0);
    let ctx = BeamContext {
        params: &p,
        eos_token_ids: &[9],
        prompt_len: 1,
        max_model_len: 8,
    };
    assert!(!can_stop_early(&ctx, &best_running, &eos_finished));
}

#[test]
fn one_selection_step() {
    let params = beam_params(2, 2, EarlyStopping::False, 1.0, 50);
    let eos = [9u32];
    let ctx = BeamContext {
        params: &params,
        eos_token_ids: &eos,
        prompt_len: 2,
        max_model_len: 64,
    };
    let seq = |cum: f64, len: usize, last: u32| ScoredSeq {
        cumulative_logprob: cum,
        seq_len: len,
        last_token: last,
    };
    let existing = [seq(-3.0, 4, 9), seq(-9.0, 4, 9)]; // scores -1.0, -3.0
    let candidates = [
        CheckedCandidate {
            parent: 1,
            seq: seq(-1.0, 5, 4),
            finished: false,
        }, // -0.2
        CheckedCandidate {
            parent: 0,
            seq: seq(-1.2, 5, 9),
            finished: true,
        }, // -0.3
        CheckedCandidate {
            parent: 1,
            seq: seq(-2.0, 5, 5),
            finished: false,
        }, // -0.4
        CheckedCandidate {
            parent: 0,
            seq: seq(-2.0, 5, 6),
            finished: false,
        }, // -0.4 (tie)
    ];
    let sel = select_beams(&existing, &candidates, &ctx);
    assert_eq!(sel.finished, vec![1]);
    assert_eq!(sel.dropped_finished, vec![1]);
    // Ties keep vLLM's child order: parent 0's children before parent 1's, even
    // though candidate 2 (parent 1) came first out of topk.
    assert_eq!(sel.running, vec![0, 3]);
    assert!(!sel.done);
    // No running candidate: done.
    let all_done: Vec<CheckedCandidate> = candidates
        .iter()
        .map(|c| CheckedCandidate {
            finished: true,
            ..*c
        })
        .collect();
    assert!(select_beams(&existing, &all_done, &ctx).done);
}

/// Every complete sequence of a 3-token vocabulary (EOS = 2) up to 3 tokens,
/// with its cumulative logprob, computed directly from the table.
fn enumerate(table: &Table, prompt: &[u32], max_tokens: usize) -> Vec<Output> {
    let mut done = Vec::new();
    let mut frontier = vec![Output {
        tokens: vec![],
        cumulative_logprob: 0.0,
    }];
    while let Some(o) = frontier.pop() {
        let all: Vec<u32> = prompt.iter().chain(&o.tokens).copied().collect();
        let row = log_softmax(&table.logits(&all));
        for t in 0..row.len() as u32 {
            let mut tokens = o.tokens.clone();
            tokens.push(t);
            let next = Output {
                tokens,
                cumulative_logprob: o.cumulative_logprob + row[t as usize] as f64,
            };
            if t == table.eos || next.tokens.len() == max_tokens {
                done.push(next);
            } else {
                frontier.push(next);
            }
        }
    }
    done
}

#[test]
fn a_wide_beam_returns_the_best_complete_sequences() {
    // Token 3 is the prompt: its row differs from the others', so that no two
    // sequences share a probability by symmetry.
    let table = Table {
        eos: 2,
        rows: vec![
            vec![0.37, 0.41, 0.22],
            vec![0.52, 0.17, 0.31],
            vec![0.3, 0.3, 0.4],
            vec![0.44, 0.34, 0.22],
        ],
    };
    let prompt = [3u32];
    let all = enumerate(&table, &prompt, 3);
    assert_eq!(all.len(), 15);
    for lp in [-1.0, 0.0, 0.5, 1.0, 2.0] {
        let params = beam_params(16, 5, EarlyStopping::Never, lp, 3);
        let (out, _) = beam_search(&table, &params, &prompt, 32);
        let mut want = all.clone();
        let final_score =
            |o: &Output| beam_search_score(o.cumulative_logprob, prompt.len() + o.tokens.len(), lp);
        want.sort_by(|a, b| final_score(b).total_cmp(&final_score(a)));
        for pair in want[..6].windows(2) {
            assert!(
                final_score(&pair[0]) - final_score(&pair[1]) > 1e-6,
                "a tie makes the order arbitrary"
            );
        }
        assert_eq!(tokens(&out), tokens(&want[..5]), "length_penalty {lp}");
        for (o, w) in out.iter().zip(&want) {
            assert!((o.cumulative_logprob - w.cumulative_logprob).abs() < 1e-9);
        }
    }
}
