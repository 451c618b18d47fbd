//! A sequence's outputs do not depend on what else runs in its batch: on CPUs
//! with the AVX-512 kernels, bf16 and f16 models give bitwise the same tokens
//! and logprobs for a request alone and alongside others (which changes how
//! many rows every matmul of its prefill and decode steps has: 7 alone, 1 per
//! decode step; 155 and then 9 together). The kernels, and so this test, are
//! x86-64 only.
#![cfg(target_arch = "x86_64")]

mod common;

use common::fixture_dir;
use engine::backend::cpu::matmul::packed::PackedMatrix;
use engine::generate::{Llm, Prompt, Request};
use engine::loader::LoadOptions;
use engine::sampling::SamplingParams;

fn request(prompt: Vec<u32>) -> Request {
    Request {
        prompt: Prompt::Tokens(prompt),
        params: SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(12)
        },
    }
}

#[test]
fn half_precision_outputs_do_not_depend_on_the_batch() {
    for (dtype, supported) in [
        ("bfloat16", PackedMatrix::bf16_supported()),
        ("float16", PackedMatrix::f16_supported()),
    ] {
        if !supported {
            eprintln!("no AVX-512 {dtype} kernel on this CPU: rows may depend on the batch");
            continue;
        }
        let options = LoadOptions {
            dtype: dtype.into(),
            ..LoadOptions::default()
        };
        let mut llm = Llm::load(&fixture_dir("tiny-llama"), &options).expect("fixture loads");
        let target = vec![5, 17, 42, 9, 300, 7, 88];
        let alone = llm.generate(&[request(target.clone())]).expect("generates");
        // Enough company that every step has more rows than one register tile
        // (so k is blocked and rows are tiled), with prompts of mixed lengths.
        let others: Vec<Vec<u32>> = (0..8u32)
            .map(|i| (0..1 + 5 * i).map(|t| (t * 31 + i * 7) % 500 + 3).collect())
            .collect();
        let mut batch: Vec<Request> = others.iter().cloned().map(request).collect();
        batch.insert(1, request(target));
        let together = llm.generate(&batch).expect("generates");
        let (a, b) = (alone[0].best(), together[1].best());
        assert_eq!(a.token_ids, b.token_ids, "{dtype}: tokens differ");
        let bits = |r: &engine::engine::SeqResult| {
            r.logprobs
                .iter()
                .map(|l| l.chosen.logprob.to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(a), bits(b), "{dtype}: logprobs differ");
    }
}
