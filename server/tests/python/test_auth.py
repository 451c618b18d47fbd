"""--api-key: every route needs `Authorization: Bearer <key>` but /health, /metrics
and /version."""

import json

import openai
import pytest

from conftest import API_KEY, assert_serves


@pytest.fixture(autouse=True)
def still_serves(key_server):
    yield
    assert_serves(key_server, API_KEY)


def test_right_key(key_server):
    c = key_server.client(API_KEY)
    r = c.completions.create(model="demo", prompt="Hi", max_tokens=2)
    assert r.usage.completion_tokens == 2
    r = c.chat.completions.create(model="alias", messages=[{"role": "user", "content": "Hi"}],
                                  max_tokens=2)
    assert r.usage.completion_tokens == 2
    assert [m.id for m in c.models.list().data] == ["demo", "alias"]


@pytest.mark.parametrize("key", ["wrong-key", "secret-key-but-longer", "secret-ke"])
def test_wrong_key(key_server, key):
    c = key_server.client(key)
    with pytest.raises(openai.AuthenticationError) as e:
        c.completions.create(model="demo", prompt="Hi", max_tokens=2)
    assert e.value.status_code == 401
    assert e.value.response.json()["error"]["code"] == 401
    with pytest.raises(openai.AuthenticationError):
        c.chat.completions.create(model="demo", messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(openai.AuthenticationError):
        c.models.list()


def test_missing_key(key_server):
    for method, path, body in [
        ("GET", "/v1/models", None),
        ("POST", "/v1/completions", {"model": "demo", "prompt": "Hi", "max_tokens": 2}),
        ("POST", "/v1/chat/completions",
         {"model": "demo", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
    ]:
        status, _, raw = key_server.http(method, path, body)
        assert status == 401, path
        assert json.loads(raw)["error"]["type"] == "AuthenticationError"
    # Not a Bearer token.
    status, _, _ = key_server.http("GET", "/v1/models", headers={"Authorization": API_KEY})
    assert status == 401


def test_key_with_plain_http(key_server):
    status, _, raw = key_server.http("GET", "/v1/models",
                                     headers={"Authorization": f"Bearer {API_KEY}"})
    assert status == 200
    assert [m["id"] for m in json.loads(raw)["data"]] == ["demo", "alias"]


def test_open_endpoints_need_no_key(key_server):
    status, _, _ = key_server.http("GET", "/health")
    assert status == 200
    status, _, body = key_server.http("GET", "/metrics")
    assert status == 200
    assert b"vllm:" in body
    status, _, body = key_server.http("GET", "/version")
    assert status == 200


def test_tokenize_needs_the_key(key_server):
    status, body = key_server.post_json("/tokenize", {"prompt": "Hi"})
    assert status == 401 and body["error"]["type"] == "AuthenticationError"
    status, body = key_server.post_json("/detokenize", {"tokens": [5]})
    assert status == 401
    status, body = key_server.post_json("/tokenize", {"prompt": "Hi"},
                                        headers={"Authorization": f"Bearer {API_KEY}"})
    assert status == 200 and body["count"] > 0
