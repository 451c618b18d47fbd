"""A torch reference for bench/engine_shapes.rs on the GPU machine (which has
PyTorch): a Llama-shaped decoder with random bf16 weights, decode steps over a
static KV cache with scaled_dot_product_attention, each batch size captured in
a CUDA graph -- the stand-in for a vLLM-class engine's decode step. The cells
are engine_shapes' (batch-1 decode at contexts 128 and 2048, decode throughput
at batch 64/128/256 x context 1024/4096); a cell whose cache does not fit the
GPU's free memory is skipped. The cache holds random values: a decode step's
cost depends on the context's length, not on what it holds. No sampling: the
step ends at the logits.

Prints one markdown row per cell, after the same "| row | ... |" names
engine_shapes prints, so the two tables line up.

usage: python3 bench/torch_decode.py [llama3-8b|llama2-7b|tiny] [--device cpu]
(--device cpu runs the tiny shape's math without graphs, as a smoke test).
"""
import sys
import time

import torch
import torch.nn.functional as F

# (hidden, intermediate, layers, heads, kv heads, vocab), as engine_shapes.rs.
SHAPES = {
    "llama3-8b": (4096, 14336, 32, 32, 8, 128256),
    "llama2-7b": (4096, 11008, 32, 32, 32, 32000),
    "tiny": (256, 512, 2, 4, 2, 1024),
}
STEPS = {1: 64}  # decode steps timed per cell (batched cells: 16)


class Decoder:
    """The weights, and one decode step over a cache of `max_ctx` positions."""

    def __init__(self, shape, dev):
        h, inter, layers, heads, kvh, vocab = SHAPES[shape]
        self.heads, self.kvh, self.hd = heads, kvh, h // heads
        dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
        w = lambda *s: (torch.rand(*s, device=dev, dtype=dt) - 0.5) * 2e-3
        self.embed = w(vocab, h)
        self.layers = [
            dict(
                qkv=w((heads + 2 * kvh) * self.hd, h),
                o=w(h, heads * self.hd),
                gate_up=w(2 * inter, h),
                down=w(h, inter),
                n1=torch.ones(h, device=dev, dtype=dt),
                n2=torch.ones(h, device=dev, dtype=dt),
            )
            for _ in range(layers)
        ]
        self.norm = torch.ones(h, device=dev, dtype=dt)
        self.lm_head = w(vocab, h)
        self.dev, self.dt, self.inter = dev, dt, inter

    def cache(self, batch, max_ctx):
        shape = (len(self.layers), 2, batch, self.kvh, max_ctx, self.hd)
        return torch.rand(shape, device=self.dev, dtype=self.dt)

    def cache_bytes(self, batch, max_ctx):
        return len(self.layers) * 2 * batch * self.kvh * max_ctx * self.hd * 2

    def step(self, tokens, pos, cache, cos, sin, mask):
        """tokens [B], pos [B] (the positions written), mask [B, 1, 1, max_ctx]."""
        x = self.embed[tokens]
        b = x.shape[0]
        rows = torch.arange(b, device=self.dev)
        for i, l in enumerate(self.layers):
            y = F.rms_norm(x, (x.shape[-1],), l["n1"], 1e-5)
            qkv = (y @ l["qkv"].T).view(b, self.heads + 2 * self.kvh, self.hd)
            q, k, v = qkv.split([self.heads, self.kvh, self.kvh], dim=1)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
            cache[i, 0, rows, :, pos] = k
            cache[i, 1, rows, :, pos] = v
            att = F.scaled_dot_product_attention(
                q.unsqueeze(2), cache[i, 0], cache[i, 1], attn_mask=mask, enable_gqa=True
            )
            x = x + att.reshape(b, -1) @ l["o"].T
            y = F.rms_norm(x, (x.shape[-1],), l["n2"], 1e-5)
            g, u = (y @ l["gate_up"].T).split(self.inter, dim=-1)
            x = x + (F.silu(g) * u) @ l["down"].T
        x = F.rms_norm(x, (x.shape[-1],), self.norm, 1e-5)
        return (x @ self.lm_head.T).float()


def rotate(x, cos, sin):
    """Neox rotary; cos/sin [B, 1, hd/2]."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


def cell(model, batch, ctx, steps):
    """Seconds a decode step at `batch` sequences of context `ctx`."""
    dev, max_ctx = model.dev, ctx + steps
    cache = model.cache(batch, max_ctx)
    tokens = torch.randint(3, model.embed.shape[0], (batch,), device=dev)
    pos = torch.full((batch,), ctx, device=dev, dtype=torch.long)
    half = model.hd // 2
    freq = 1.0 / (10000 ** (torch.arange(half, device=dev, dtype=torch.float32) / half))
    angle = (pos.float()[:, None] * freq)[:, None, :]
    cos, sin = angle.cos().to(model.dt), angle.sin().to(model.dt)
    # Positions at or before `pos` are visible.
    seen = torch.arange(max_ctx, device=dev)[None, :] <= pos[:, None]
    mask = seen[:, None, None, :]
    run = lambda: model.step(tokens, pos, cache, cos, sin, mask)
    if dev.type != "cuda":
        run()
        t = time.perf_counter()
        for _ in range(steps):
            run()
        return (time.perf_counter() - t) / steps
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            run()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / steps


def main():
    args = sys.argv[1:]
    dev = torch.device("cpu" if "--device" in args and "cpu" in args else "cuda")
    shapes = [a for a in args if a in SHAPES]
    shape = shapes[0] if shapes else ("tiny" if dev.type == "cpu" else "llama3-8b")
    torch.manual_seed(0)
    model = Decoder(shape, dev)
    cells = [(1, 128), (1, 2048)]
    if dev.type == "cuda":
        cells += [(b, c) for c in (1024, 4096) for b in (64, 128, 256)]
    else:
        cells += [(64, 1024)]
    print(f"torch {torch.__version__} on {dev}, {shape}, {model.dt}")
    print("| row | torch (bf16, SDPA, CUDA graph) | |\n|---|---|---|")
    with torch.inference_mode():
        for batch, ctx in cells:
            steps = STEPS.get(batch, 16)
            name = (
                f"decode, batch 1, context {ctx}"
                if batch == 1
                else f"decode throughput, batch {batch}, context {ctx}"
            )
            if dev.type == "cuda":
                free, _ = torch.cuda.mem_get_info()
                if model.cache_bytes(batch, ctx + steps) > 0.8 * free:
                    print(f"| {name} | skipped | its KV cache does not fit |")
                    continue
            s = cell(model, batch, ctx, steps)
            if batch == 1:
                print(f"| {name} | {s * 1e3:.3f} ms/token | |", flush=True)
            else:
                print(f"| {name} | {batch / s:.0f} tok/s | {s * 1e3:.2f} ms a step |", flush=True)
            if dev.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
