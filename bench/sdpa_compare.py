"""Paged-attention decode next to torch's scaled_dot_product_attention on the
same shapes (run on the GPU machine, which has PyTorch; scripts/device/kernels.sh
runs it in the same call as the kernel benches).

Shapes: batch 64, context 4096, 32 query heads / 8 KV heads, head_dim 128,
bf16. torch gets the dense [batch, kv_heads, context, head_dim] K/V (its best
case: no block table); the bytes counted are K and V read once, as for the
paged kernel. Prints one markdown row per variant.

usage: python3 bench/sdpa_compare.py [copy_GBps]
"""
import sys

import torch
import torch.nn.functional as F

BATCH, CONTEXT, HEADS, KV_HEADS, HD = 64, 4096, 32, 8, 128


def median_ms(fn, warmup=5, reps=50):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def main():
    copy = float(sys.argv[1]) * 1e9 if len(sys.argv) > 1 else None
    dev = torch.device("cuda")
    torch.manual_seed(0)
    q = torch.randn(BATCH, HEADS, 1, HD, device=dev, dtype=torch.bfloat16)
    k = torch.randn(BATCH, KV_HEADS, CONTEXT, HD, device=dev, dtype=torch.bfloat16)
    v = torch.randn(BATCH, KV_HEADS, CONTEXT, HD, device=dev, dtype=torch.bfloat16)
    kv_bytes = 2 * BATCH * KV_HEADS * CONTEXT * HD * 2
    variants = {
        "torch sdpa (enable_gqa)": lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
    }
    # The same with K/V repeated per query head (what older torch needs for GQA).
    kr, vr = k.repeat_interleave(HEADS // KV_HEADS, 1), v.repeat_interleave(HEADS // KV_HEADS, 1)
    variants["torch sdpa (K/V repeated to 32 heads)"] = lambda: F.scaled_dot_product_attention(q, kr, vr)
    want = F.scaled_dot_product_attention(q, kr, vr)
    for name, fn in variants.items():
        got = fn()
        err = ((got.float() - want.float()).norm() / want.float().norm()).item()
        ms = median_ms(fn)
        bw = kv_bytes / (ms / 1e3)
        pct = f"{100 * bw / copy:.0f}%" if copy else "-"
        print(f"| {name} b{BATCH}_ctx{CONTEXT}_h{HEADS}_kv{KV_HEADS}_d{HD} bf16 | {ms * 1e3:.1f} | {bw / 1e9:.0f} | {pct} | rel err vs repeated {err:.1e} |")


if __name__ == "__main__":
    main()
