"""engine-server --device cuda against engine-server --device cpu on the
fixtures: the same requests (a completion, a chat, a stream, n=2, beam search,
guided_json) to both, token ids compared. Standard library only (the GPU
machine has no network to install anything). Prints one table row per check.

usage: python3 e2e_requests.py ENGINE_SERVER FIXTURES_DIR OUT_DIR
"""
import json
import os
import subprocess
import sys
import time
import urllib.request

FIXTURES = ["tiny-llama", "tiny-mistral", "tiny-qwen2"]
# The device under test (ENGINE_E2E_DEVICE=cpu checks this script without a GPU:
# two CPU servers must agree).
DEVICE = os.environ.get("ENGINE_E2E_DEVICE", "cuda")


def post(port, path, body, stream=False):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        text = r.read().decode()
    if not stream:
        return json.loads(text)
    chunks = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert chunks[-1] == "[DONE]", chunks[-1]
    return [json.loads(c) for c in chunks[:-1]]


def wait_ready(port, proc, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server on port {port} not ready after {seconds} s")


def tokens(choice):
    """The token ids of a choice (the servers run with --return-tokens-as-token-ids)."""
    lp = choice.get("logprobs") or {}
    if "tokens" in lp:
        return [t for t in lp["tokens"]]
    return [c["token"] for c in lp.get("content") or []]


def requests_for(model):
    greedy = {"model": model, "temperature": 0, "max_tokens": 24, "ignore_eos": True}
    chat_msgs = [{"role": "user", "content": "Write a short greeting."}]
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    return [
        ("completion", "/v1/completions", {**greedy, "prompt": "The quick brown fox", "logprobs": 1}),
        ("chat", "/v1/chat/completions", {**greedy, "messages": chat_msgs, "logprobs": True}),
        ("stream", "/v1/completions", {**greedy, "prompt": "Once upon a time", "logprobs": 1, "stream": True}),
        ("n=2 seeded", "/v1/completions", {
            "model": model, "prompt": "Hello", "n": 2, "temperature": 0.8, "seed": 7,
            "max_tokens": 16, "ignore_eos": True, "logprobs": 1}),
        ("beam search", "/v1/completions", {
            "model": model, "prompt": "A list of colors:", "n": 2, "best_of": 3,
            "use_beam_search": True, "temperature": 0, "max_tokens": 12, "ignore_eos": True,
            "logprobs": 1}),
        ("guided_json", "/v1/completions", {
            **greedy, "prompt": "A person as JSON:", "guided_json": schema, "logprobs": 1}),
    ]


def answer(port, path, body):
    """Per choice: (text, token ids, finish_reason)."""
    if body.get("stream"):
        text, toks, finish = "", [], None
        for chunk in post(port, path, body, stream=True):
            for c in chunk["choices"]:
                text += c.get("text", "")
                toks += tokens(c)
                finish = c.get("finish_reason") or finish
        return [(text, toks, finish)]
    out = post(port, path, body)
    res = []
    for c in sorted(out["choices"], key=lambda c: c["index"]):
        text = c.get("text", (c.get("message") or {}).get("content"))
        res.append((text, tokens(c), c["finish_reason"]))
    return res


def main():
    server, fixtures, out_dir = sys.argv[1], sys.argv[2], sys.argv[3]
    rows, failed = [], 0
    for i, name in enumerate(FIXTURES):
        procs = []
        # The reference (the CPU) first, then the device under test.
        servers = [("cpu", 18000 + 2 * i), (DEVICE, 18001 + 2 * i)]
        try:
            for device, port in servers:
                log = open(os.path.join(out_dir, f"server-{name}-{port}-{device}.log"), "w")
                procs.append(subprocess.Popen(
                    [server, "--model", os.path.join(fixtures, name), "--device", device,
                     "--dtype", "float32", "--port", str(port), "--host", "127.0.0.1",
                     "--served-model-name", name, "--return-tokens-as-token-ids"],
                    stdout=log, stderr=subprocess.STDOUT))
            for (device, port), proc in zip(servers, procs):
                wait_ready(port, proc)
            for what, path, body in requests_for(name):
                try:
                    want = answer(servers[0][1], path, body)
                    got = answer(servers[1][1], path, body)
                    same = want == got and all(t for _, t, _ in want)
                    detail = "same tokens" if same else f"cpu {want} {DEVICE} {got}"
                except Exception as e:  # a failed request is a failed check, not a crash
                    same, detail = False, f"error: {e}"
                failed += not same
                rows.append(f"| {name} {what} | {'ok' if same else 'DIFF'} | {detail[:300]} |")
                print(f"{name} {what}: {'ok' if same else 'DIFF'}", flush=True)
        except Exception as e:
            failed += 1
            rows.append(f"| {name} | FAILED | {e} |")
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
    print("\n| server check | result | detail |")
    print("\n".join(rows))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
