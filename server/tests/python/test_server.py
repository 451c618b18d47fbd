"""The plain HTTP endpoints: /health, /version, /metrics."""

import json
import re

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text


def metric(text, name):
    m = re.search(rf'^{re.escape(name)}\{{model_name="demo"\}} ([0-9.e+-]+)$', text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def test_health_and_version(server):
    status, _, body = server.http("GET", "/health")
    assert status == 200
    status, _, body = server.http("GET", "/version")
    assert status == 200
    assert isinstance(json.loads(body)["version"], str)


def test_metrics_count_tokens(server, client):
    status, headers, body = server.http("GET", "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    before = body.decode()
    r = client.completions.create(model="demo", prompt="Count me", max_tokens=7,
                                  extra_body={"ignore_eos": True})
    _, _, body = server.http("GET", "/metrics")
    after = body.decode()
    assert metric(after, "vllm:generation_tokens_total") - metric(
        before, "vllm:generation_tokens_total") == 7
    assert metric(after, "vllm:prompt_tokens_total") - metric(
        before, "vllm:prompt_tokens_total") == r.usage.prompt_tokens


# vLLM v0.5's metrics and their types, as prometheus_client names the families.
VLLM_FAMILIES = {
    "vllm:cache_config": "info",
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:num_requests_swapped": "gauge",
    "vllm:gpu_cache_usage_perc": "gauge",
    "vllm:cpu_cache_usage_perc": "gauge",
    "vllm:num_preemptions": "counter",
    "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:time_per_output_token_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
    "vllm:request_prompt_tokens": "histogram",
    "vllm:request_generation_tokens": "histogram",
    "vllm:request_params_best_of": "histogram",
    "vllm:request_params_n": "histogram",
    "vllm:request_success": "counter",
    "vllm:avg_prompt_throughput_toks_per_s": "gauge",
    "vllm:avg_generation_throughput_toks_per_s": "gauge",
}


def test_metrics_parse_with_prometheus_client(server, client):
    client.completions.create(model="demo", prompt="Parse me", max_tokens=3, n=2)
    # What Prometheus asks for: OpenMetrics, read by the strict parser.
    status, headers, body = server.http(
        "GET", "/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    families = {f.name: f for f in parse_openmetrics(body.decode())}
    for name, kind in VLLM_FAMILIES.items():
        assert families[name].type == kind, name
    n = {s.labels["le"]: s.value for s in families["vllm:request_params_n"].samples
         if s.name.endswith("_bucket")}
    # The server is shared: other tests' requests had n=1; this one n=2.
    assert n["2.0"] - n["1.0"] >= 1
    success = {s.labels["finished_reason"] for s in families["vllm:request_success"].samples}
    assert success == {"stop", "length"}
    # A plain client gets the classic format, with the same families.
    _, headers, body = server.http("GET", "/metrics")
    assert headers["Content-Type"].startswith("text/plain")
    classic = {f.name: f for f in parse_text(body.decode())}
    for name, kind in VLLM_FAMILIES.items():
        # The classic format writes an info as a gauge named with `_info`.
        if kind == "info":
            name, kind = name + "_info", "gauge"
        assert classic[name].type == kind, name


def test_unknown_path_and_wrong_method(server):
    status, _, body = server.http("GET", "/v1/nothing-here")
    assert status == 404
    assert json.loads(body)["error"]["type"] == "NotFoundError"
    status, headers, body = server.http("GET", "/v1/completions")
    assert status == 405
    assert headers["Allow"] == "POST"
