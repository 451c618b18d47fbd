//! The engine thread under load: continuous batching from several threads,
//! preemption, abort, chunked prefill and prefix caching — each checked against
//! the same requests run one at a time.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::fixture_dir;
use engine::backend::cpu::CpuBackend;
use engine::engine::{Engine, FinishReason, Prompt, RequestOutput};
use engine::generate::{Llm, Request};
use engine::loader::{load_engine_core, LoadOptions};
use engine::sampling::{GuidedDecodingParams, SamplingParams};
use rand::{RngExt, SeedableRng};

fn options() -> LoadOptions {
    LoadOptions {
        dtype: "float32".into(),
        ..LoadOptions::default()
    }
}

fn start(options: &LoadOptions) -> Engine {
    let core = load_engine_core(
        &fixture_dir("tiny-llama"),
        options,
        CpuBackend,
        &mut |_, _| {},
    )
    .unwrap();
    Engine::start(core).unwrap()
}

/// Submits and waits for the final output.
fn run(engine: &Engine, prompt: Vec<u32>, params: SamplingParams) -> RequestOutput {
    let (tx, rx) = mpsc::channel();
    engine
        .submit(
            Prompt::Tokens(prompt),
            params,
            Box::new(move |out| {
                if out.is_finished() {
                    let _ = tx.send(out);
                }
            }),
        )
        .unwrap();
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the request finishes")
}

fn solo(prompts: &[(Vec<u32>, SamplingParams)], options: &LoadOptions) -> Vec<Vec<u32>> {
    let mut llm = Llm::load(&fixture_dir("tiny-llama"), options).unwrap();
    prompts
        .iter()
        .map(|(p, params)| {
            let r = Request {
                prompt: Prompt::Tokens(p.clone()),
                params: params.clone(),
            };
            llm.generate(&[r])
                .unwrap()
                .remove(0)
                .best()
                .token_ids
                .clone()
        })
        .collect()
}

fn random_requests(count: usize, seed: u64) -> Vec<(Vec<u32>, SamplingParams)> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let len = rng.random_range(1..200);
            let prompt = (0..len).map(|_| rng.random_range(5..3000)).collect();
            let params = SamplingParams {
                ignore_eos: true,
                ..SamplingParams::greedy(rng.random_range(1..24))
            };
            (prompt, params)
        })
        .collect()
}

/// Runs `requests` through `engine` from four threads at random moments.
fn concurrent(engine: &Engine, requests: &[(Vec<u32>, SamplingParams)]) -> Vec<Vec<u32>> {
    let mut results = vec![Vec::new(); requests.len()];
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                scope.spawn(move || {
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(t);
                    let mut waiting = Vec::new();
                    for (i, (prompt, params)) in
                        requests.iter().enumerate().skip(t as usize).step_by(4)
                    {
                        std::thread::sleep(Duration::from_millis(rng.random_range(0..15)));
                        let (tx, rx) = mpsc::channel();
                        let cb = Box::new(move |out: RequestOutput| {
                            if out.is_finished() {
                                let _ = tx.send(out);
                            }
                        });
                        engine
                            .submit(Prompt::Tokens(prompt.clone()), params.clone(), cb)
                            .unwrap();
                        waiting.push((i, rx));
                    }
                    waiting
                        .into_iter()
                        .map(|(i, rx)| {
                            (
                                i,
                                rx.recv_timeout(Duration::from_secs(120)).expect("finishes"),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for (i, out) in h.join().unwrap() {
                results[i] = out.results.unwrap().remove(0).token_ids;
            }
        }
    });
    results
}

fn wait_idle(engine: &Engine) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while engine.num_live_requests() > 0
        || engine.stats().num_running + engine.stats().num_waiting > 0
    {
        assert!(Instant::now() < deadline, "the engine never went idle");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The stats snapshot is taken after each step; give the loop one more turn.
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn sixty_four_concurrent_requests_equal_their_solo_runs() {
    let requests = random_requests(64, 7);
    let engine = start(&options());
    let got = concurrent(&engine, &requests);
    assert_eq!(got, solo(&requests, &options()));
    wait_idle(&engine);
    let stats = engine.stats();
    assert_eq!(stats.kv_blocks_used, 0);
    assert_eq!(stats.finished_length, 64);
}

#[test]
fn preemption_keeps_outputs_and_counts() {
    let requests = random_requests(24, 11);
    // 40 blocks of 16: every request fits alone, far from all at once.
    let tight = LoadOptions {
        num_kv_blocks: Some(40),
        ..options()
    };
    let engine = start(&tight);
    let got = concurrent(&engine, &requests);
    assert_eq!(got, solo(&requests, &options()));
    wait_idle(&engine);
    // Whether this threaded run overcommits depends on arrival timing; the
    // preemption counter is asserted deterministically in tests/generate.rs.
    assert_eq!(engine.stats().kv_blocks_used, 0);
}

#[test]
fn abort_mid_generation_frees_every_block() {
    let engine = start(&options());
    let (tx, rx) = mpsc::channel();
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(1500)
    };
    let id = engine
        .submit(
            Prompt::Tokens(vec![1; 300]),
            params,
            Box::new(move |out| {
                let _ = tx.send(out);
            }),
        )
        .unwrap();
    // Wait for a few tokens, then abort.
    for _ in 0..3 {
        rx.recv_timeout(Duration::from_secs(30)).unwrap();
    }
    engine.abort(id).unwrap();
    let last = rx.iter().find(RequestOutput::is_finished).unwrap();
    assert_eq!(last.results.unwrap()[0].finish_reason, FinishReason::Abort);
    assert!(engine
        .abort(id)
        .unwrap_err()
        .to_string()
        .contains("unknown or already finished"));
    wait_idle(&engine);
    assert_eq!(engine.stats().kv_blocks_used, 0);
    assert_eq!(engine.stats().finished_abort, 1);
    // And it keeps serving.
    let out = run(&engine, vec![1, 2, 3], SamplingParams::greedy(2));
    assert_eq!(out.results.unwrap()[0].token_ids.len(), 2);
}

#[test]
fn chunked_prefill_equals_whole_prompts_and_lets_decodes_run() {
    let requests = random_requests(8, 3);
    let small_steps = LoadOptions {
        max_num_batched_tokens: 24,
        ..options()
    };
    let engine = start(&small_steps);
    assert_eq!(concurrent(&engine, &requests), solo(&requests, &options()));

    // A decoding request keeps producing tokens while a long prompt is prefilled in chunks.
    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    let decode = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(40)
    };
    engine
        .submit(
            Prompt::Tokens(vec![1, 2, 3]),
            decode,
            Box::new(move |o| {
                let _ = tx.send(("short", o.is_finished()));
            }),
        )
        .unwrap();
    rx.recv().unwrap();
    engine
        .submit(
            Prompt::Tokens(vec![5; 600]),
            SamplingParams::greedy(1),
            Box::new(move |o| {
                let _ = tx2.send(("long", o.is_finished()));
            }),
        )
        .unwrap();
    let order: Vec<&str> = rx
        .iter()
        .take_while(|(who, done)| !(*who == "long" && *done))
        .map(|(w, _)| w)
        .collect();
    assert!(
        order.iter().filter(|w| **w == "short").count() >= 10,
        "decodes ran during the 25 prefill steps: {order:?}"
    );
}

#[test]
fn prefix_caching_reuses_blocks_with_identical_outputs() {
    let shared: Vec<u32> = (0..200).map(|i| 5 + (i * 37) % 2900).collect();
    let requests: Vec<(Vec<u32>, SamplingParams)> = (0..4)
        .map(|i| {
            let mut p = shared.clone();
            p.extend([100 + i, 200 + i, 300 + i]);
            (
                p,
                SamplingParams {
                    ignore_eos: true,
                    ..SamplingParams::greedy(8)
                },
            )
        })
        .collect();
    let cached = LoadOptions {
        enable_prefix_caching: true,
        ..options()
    };
    let engine = start(&cached);
    let got: Vec<Vec<u32>> = requests
        .iter()
        .map(|(p, s)| {
            run(&engine, p.clone(), s.clone())
                .results
                .unwrap()
                .remove(0)
                .token_ids
        })
        .collect();
    assert_eq!(got, solo(&requests, &options()));
    wait_idle(&engine);
    let stats = engine.stats();
    assert!(stats.prefix_cache_hit_rate.unwrap() > 0.5, "{stats:?}");
    assert_eq!(
        stats.kv_blocks_used, 0,
        "cached blocks nobody holds do not count as used"
    );
}

#[test]
fn bad_requests_are_refused_at_submit_and_the_engine_keeps_serving() {
    let engine = start(&LoadOptions {
        max_model_len: Some(64),
        ..options()
    });
    let noop = || Box::new(|_: RequestOutput| {});
    let err = engine
        .submit(
            Prompt::Tokens(vec![1; 65]),
            SamplingParams::greedy(1),
            noop(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("maximum model length 64"), "{err}");
    let err = engine
        .submit(
            Prompt::Tokens(vec![9999]),
            SamplingParams::greedy(1),
            noop(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
    let err = engine
        .submit(
            Prompt::Tokens(vec![1]),
            SamplingParams {
                top_k: -2, // 0 means off, as in later vLLM
                ..SamplingParams::default()
            },
            noop(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("top_k"), "{err}");
    assert!(engine.abort(12345).is_err());
    let out = run(&engine, vec![1, 2, 3], SamplingParams::greedy(3));
    assert_eq!(out.results.unwrap()[0].token_ids.len(), 3);
}

#[test]
fn shutdown_aborts_in_flight_requests_and_delivers_their_final_outputs() {
    let engine = start(&options());
    let (tx, rx) = mpsc::channel();
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(2000)
    };
    engine
        .submit(
            Prompt::Tokens(vec![1; 10]),
            params,
            Box::new(move |o| {
                let _ = tx.send(o);
            }),
        )
        .unwrap();
    rx.recv_timeout(Duration::from_secs(30)).unwrap();
    engine.shutdown(false);
    let last = rx
        .iter()
        .find(RequestOutput::is_finished)
        .expect("a final output");
    assert_eq!(last.results.unwrap()[0].finish_reason, FinishReason::Abort);
}

/// Submits racing a shutdown: every submit that returned an id gets exactly one
/// final output by the time the shutdown returns (a submit whose command
/// landed after the engine thread's last read was accepted and never answered;
/// slow final callbacks widened the window).
#[test]
fn every_request_accepted_while_shutting_down_gets_its_final_output() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let mut total = 0;
    for round in 0..10 {
        let engine = Arc::new(start(&options()));
        let (accepted, finals) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let submitters: Vec<_> = (0..3)
            .map(|_| {
                let (engine, accepted, finals) = (engine.clone(), accepted.clone(), finals.clone());
                std::thread::spawn(move || {
                    // Up to 40 each; a refusal (the shutdown) ends the thread.
                    for i in 0..40 {
                        let finals = finals.clone();
                        let on_output = Box::new(move |o: RequestOutput| {
                            // The first final output is slow: the shutdown's
                            // aborts then outlast a submit still compiling.
                            if o.is_finished() && finals.fetch_add(1, Ordering::SeqCst) == 0 {
                                std::thread::sleep(Duration::from_millis(50));
                            }
                        });
                        // A schema of its own: compiling it (milliseconds, while
                        // the shutdown may land) is what widened the window.
                        let schema = serde_json::json!({"type": "object",
                            "properties": {format!("k{i}"): {"type": "integer"}}});
                        let params = SamplingParams {
                            ignore_eos: true,
                            guided_decoding: Some(GuidedDecodingParams {
                                json: Some(schema),
                                ..Default::default()
                            }),
                            ..SamplingParams::greedy(500)
                        };
                        match engine.submit(Prompt::Tokens(vec![1; 8]), params, on_output) {
                            Ok(_) => accepted.fetch_add(1, Ordering::SeqCst),
                            Err(_) => return,
                        };
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(2 + 4 * round));
        engine.stop(false);
        for t in submitters {
            t.join().unwrap();
        }
        let (a, f) = (
            accepted.load(Ordering::SeqCst),
            finals.load(Ordering::SeqCst),
        );
        assert_eq!(f, a, "round {round}: {a} accepted, {f} final outputs");
        total += a;
    }
    assert!(total > 0, "nothing was accepted");
}

#[test]
fn a_request_that_outgrows_the_whole_cache_ends_alone() {
    // 3 blocks: the prompt fits, but four forks cannot all grow past it.
    let engine = start(&LoadOptions {
        num_kv_blocks: Some(3),
        ..options()
    });
    let params = SamplingParams {
        n: 1,
        best_of: Some(4),
        temperature: 1.0,
        seed: Some(3),
        ignore_eos: true,
        ..SamplingParams::greedy(30)
    };
    // With max_tokens, it can never fit: refused up front, naming the sizes.
    let err = engine
        .submit(
            Prompt::Tokens(vec![7; 40]),
            params.clone(),
            Box::new(|_| {}),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("needs 14 KV cache blocks") && err.contains("has 3 blocks of 16 tokens"),
        "{err}"
    );
    // Without, it runs until the cache is full and ends "length", never "abort".
    let params = SamplingParams {
        max_tokens: None,
        ..params
    };
    let out = run(&engine, vec![7; 40], params);
    assert_eq!(out.results.unwrap()[0].finish_reason, FinishReason::Length);
    engine.check_serving().expect("the engine keeps serving");
    let out = run(&engine, vec![1, 2, 3], SamplingParams::greedy(2));
    assert_eq!(out.results.unwrap()[0].token_ids.len(), 2);
    wait_idle(&engine);
    assert_eq!(engine.stats().kv_blocks_used, 0);
}

/// Red-team findings on the C ABI's options: limits a step enforces are
/// checked when the engine is made (a max_num_seqs past what a step samples,
/// or a max_logprobs past what a row reports, let one request stop the
/// engine), and a token budget near usize::MAX means no limit (it overflowed
/// the scheduler's chunk end).
#[test]
fn option_values_a_step_cannot_serve_are_load_errors() {
    let load = |options: LoadOptions| {
        load_engine_core(
            &fixture_dir("tiny-llama"),
            &options,
            CpuBackend,
            &mut |_, _| {},
        )
    };
    let refused = |options| load(options).err().expect("an error").to_string();
    let e = refused(LoadOptions {
        max_num_seqs: (1 << 16) + 1,
        ..options()
    });
    assert!(e.contains("max_num_seqs 65537 is more than 65536"), "{e}");
    let e = refused(LoadOptions {
        max_logprobs: 1025,
        ..options()
    });
    assert!(e.contains("max_logprobs 1025 is more than 1024"), "{e}");

    let core = load(LoadOptions {
        max_num_batched_tokens: usize::MAX,
        ..options()
    })
    .unwrap();
    let mut llm = Llm::from_core(core);
    let out = llm
        .generate(&[Request {
            prompt: engine::generate::Prompt::Tokens(vec![5; 9]),
            params: SamplingParams {
                ignore_eos: true,
                ..SamplingParams::greedy(6)
            },
        }])
        .unwrap();
    assert_eq!(out[0].best().token_ids.len(), 6);
}
