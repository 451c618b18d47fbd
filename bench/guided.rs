//! Guided decoding cost: the allowed-token mask per token for vLLM's test JSON
//! schema on generated 32k and 128k vocabularies, and the latency a step of a
//! batch of 32 constrained sequences adds (masks computed in parallel with
//! rayon, applied to the 32 logits rows, guides advanced).
//!
//! Each measured walk starts from a fresh clone of the compiled grammar (as a
//! new request does) and follows a token path recorded once by a seeded random
//! walk through the constraint, so the lexer builds its states as it would in
//! serving. `cargo bench --bench guided`; results in bench/RESULTS.md.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use engine::sampling::guided::{apply_token_bitmask, Guide, GuidedCompiler};
use engine::sampling::GuidedDecodingParams;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde_json::json;

/// Steps per measured walk.
const STEPS: usize = 64;
const BATCH: usize = 32;

/// A byte-level vocabulary of `size` tokens: the 256 bytes, JSON punctuation
/// runs, then words and word pieces (with and without a leading space) drawn
/// from a seeded generator; the last id is EOS (a special token).
fn vocabulary(size: usize) -> Vec<Vec<u8>> {
    let mut rng = ChaCha8Rng::seed_from_u64(size as u64);
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut tokens: Vec<Vec<u8>> = Vec::with_capacity(size);
    let mut push = |t: Vec<u8>, tokens: &mut Vec<Vec<u8>>| {
        if seen.insert(t.clone()) {
            tokens.push(t);
        }
    };
    for b in 0..=255u8 {
        push(vec![b], &mut tokens);
    }
    for p in [
        "{\"", "\":", "\": ", "\",", "\", \"", "\"}", "}", "],", "[\"", "\"]", " {", "\n", "  ",
        "    ",
    ] {
        push(p.as_bytes().to_vec(), &mut tokens);
    }
    let letters = b"etaoinshrdlucmfwypvbgkqjxz";
    let extra = b"0123456789_.-\"',:{}[] ";
    while tokens.len() < size - 1 {
        let len = rng.random_range(2..10usize);
        let mut t = Vec::with_capacity(len + 1);
        if rng.random_bool(0.5) {
            t.push(b' ');
        }
        for _ in 0..len {
            let c = if rng.random_bool(0.9) {
                letters[rng.random_range(0..letters.len())]
            } else {
                extra[rng.random_range(0..extra.len())]
            };
            t.push(c);
        }
        push(t, &mut tokens);
    }
    tokens.push(b"\xFF<eos>".to_vec());
    tokens
}

/// vLLM's guided-decoding test schema (tests/entrypoints).
fn test_schema() -> GuidedDecodingParams {
    GuidedDecodingParams {
        json: Some(json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer"},
                "skills": {"type": "array", "items": {"type": "string", "maxLength": 10}, "minItems": 3},
                "work history": {"type": "array", "items": {"type": "object", "properties": {
                    "company": {"type": "string"}, "duration": {"type": "string"},
                    "position": {"type": "string"}}, "required": ["company", "position"]}}
            },
            "required": ["name", "age", "skills", "work history"]
        })),
        ..Default::default()
    }
}

fn is_allowed(mask: &[u32], t: usize) -> bool {
    mask[t / 32] & (1 << (t % 32)) != 0
}

/// A seeded walk of `STEPS` allowed tokens (preferring tokens that close
/// strings, so the walk moves through the schema rather than one long string).
fn walk(guide: &Guide, vocab: &[Vec<u8>], seed: u64) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut g = guide.fork();
    let mut path = Vec::with_capacity(STEPS);
    for _ in 0..STEPS {
        let Some(mask) = g.compute_mask() else { break };
        let allowed: Vec<usize> = (0..vocab.len()).filter(|&t| is_allowed(&mask, t)).collect();
        let structural: Vec<usize> = allowed
            .iter()
            .copied()
            .filter(|&t| vocab[t].iter().any(|b| b"\"{}[],:".contains(b)))
            .collect();
        let pool = if !structural.is_empty() && rng.random_bool(0.3) {
            &structural
        } else {
            &allowed
        };
        let t = pool[rng.random_range(0..pool.len())] as u32;
        g.advance(t);
        path.push(t);
    }
    path
}

fn bench_guided(c: &mut Criterion) {
    let params = test_schema();
    for size in [32_000usize, 128_000] {
        let vocab = vocabulary(size);
        let eos = (vocab.len() - 1) as u32;
        let compiler = GuidedCompiler::from_token_bytes(vocab.clone(), &[eos]).unwrap();
        let start = compiler.compile(&params, &[]).unwrap().unwrap();
        let paths: Vec<Vec<u32>> = (0..BATCH as u64).map(|s| walk(&start, &vocab, s)).collect();

        let mut group = c.benchmark_group(format!("guided_mask/{}k", size / 1000));
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(8));
        // One sequence: mask + advance per token, from a fresh request state.
        group.throughput(Throughput::Elements(paths[0].len() as u64));
        group.bench_function(BenchmarkId::new("per_token", "test_schema"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let path = &paths[i as usize % BATCH];
                    let mut g = start.fork();
                    let t0 = Instant::now();
                    for &t in path {
                        std::hint::black_box(g.compute_mask());
                        g.advance(t);
                    }
                    total += t0.elapsed() * paths[0].len() as u32 / path.len().max(1) as u32;
                }
                total
            })
        });
        // A batch of 32: one step = the 32 masks in parallel, applied to 32 rows,
        // 32 advances. Throughput counts steps.
        group.throughput(Throughput::Elements(STEPS as u64));
        group.bench_function(BenchmarkId::new("batch32_step", "test_schema"), |b| {
            let mut rows = vec![vec![0.5f32; size]; BATCH];
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut guides: Vec<Guide> = (0..BATCH).map(|_| start.fork()).collect();
                    let t0 = Instant::now();
                    for step in 0..STEPS {
                        guides
                            .par_iter_mut()
                            .zip(rows.par_iter_mut())
                            .zip(paths.par_iter())
                            .for_each(|((g, row), path)| {
                                if let (Some(mask), Some(&t)) = (g.compute_mask(), path.get(step)) {
                                    apply_token_bitmask(row, &mask);
                                    g.advance(t);
                                }
                            });
                    }
                    total += t0.elapsed();
                }
                total
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench_guided);
criterion_main!(benches);
