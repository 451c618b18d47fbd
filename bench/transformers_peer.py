"""Hugging Face transformers (torch on the CPU, bf16) as the decode bench's peer.

Run by bench/decode.rs when TRANSFORMERS_PYTHON names a Python with torch and
transformers: measures the same things as ours on the same model directory and
prints one JSON line {"prefill": tok/s, "decode": [[batch, tok/s], ...],
"long_context": tok/s}.

usage: transformers_peer.py MODEL_DIR THREADS PROMPT DECODE_TOKENS BATCHED_TOKENS PREFILL
       LONG_CONTEXT LONG_TOKENS BATCH...
"""

import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM


def seconds(f):
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def main():
    model_dir = sys.argv[1]
    threads, prompt, decode_tokens, batched_tokens, prefill, long_context, long_tokens = map(
        int, sys.argv[2:9]
    )
    batches = [int(b) for b in sys.argv[9:]]
    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.bfloat16, attn_implementation="sdpa"
    ).eval()
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)

    def ids(batch, length):
        return torch.randint(0, vocab, (batch, length), generator=gen)

    def generate(x, tokens):
        # Exactly `tokens` new tokens, greedy, as ours with ignore_eos.
        return model.generate(
            x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            pad_token_id=0,
        )

    with torch.inference_mode():
        model(ids(1, 8))  # warm-up: one-time allocations and kernel choices
        x = ids(1, prefill)
        prefill_tps = prefill / seconds(lambda: model(x, logits_to_keep=1))
        def decode_tps(batch, length, tokens):
            x = ids(batch, length)
            # Time of 1 + N tokens minus time of 1: the N decode steps alone.
            first = seconds(lambda: generate(x, 1))
            total = seconds(lambda: generate(x, 1 + tokens))
            return batch * tokens / max(total - first, 1e-9)

        decode = []
        for batch in batches:
            tokens = decode_tokens if batch == 1 else batched_tokens
            decode.append([batch, decode_tps(batch, prompt, tokens)])
        long = decode_tps(1, long_context, long_tokens)
    print(json.dumps({"prefill": prefill_tps, "decode": decode, "long_context": long}))


if __name__ == "__main__":
    main()
