"""The plain HTTP endpoints: /health, /version, /metrics."""

import json
import re


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


def test_unknown_path_and_wrong_method(server):
    status, _, body = server.http("GET", "/v1/nothing-here")
    assert status == 404
    assert json.loads(body)["error"]["type"] == "NotFoundError"
    status, headers, body = server.http("GET", "/v1/completions")
    assert status == 405
    assert headers["Allow"] == "POST"
