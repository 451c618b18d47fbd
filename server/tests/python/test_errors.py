"""Requests the server must refuse, in vLLM's words, as the client's exception
types; after each one the server still serves."""

import json

import openai
import pytest

from conftest import MAX_MODEL_LEN, assert_serves

MESSAGES = [{"role": "user", "content": "Hi"}]


@pytest.fixture(autouse=True)
def still_serves(server):
    yield
    assert_serves(server)


def complete(client, **kw):
    args = dict(model="demo", prompt="Hello", max_tokens=3)
    args.update(kw)
    return client.completions.create(**args)


def chat(client, **kw):
    args = dict(model="demo", messages=MESSAGES, max_tokens=3)
    args.update(kw)
    return client.chat.completions.create(**args)


def check_body(e: openai.APIStatusError, status: int, kind: str):
    assert e.status_code == status
    body = e.response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == kind
    assert body["error"]["code"] == status


@pytest.mark.parametrize("call", [complete, chat], ids=["completions", "chat"])
def test_unknown_field(client, call):
    with pytest.raises(openai.BadRequestError) as e:
        call(client, extra_body={"no_such_field": 1})
    check_body(e.value, 400, "BadRequestError")
    message = e.value.body["message"]
    assert "extra_forbidden" in message
    assert "no_such_field" in message


@pytest.mark.parametrize("call", [complete, chat], ids=["completions", "chat"])
def test_negative_temperature(client, call):
    with pytest.raises(openai.BadRequestError, match="temperature must be non-negative") as e:
        call(client, temperature=-1)
    check_body(e.value, 400, "BadRequestError")


def test_wrong_type(client):
    with pytest.raises(openai.BadRequestError) as e:
        complete(client, extra_body={"max_tokens": "many"})
    assert "'max_tokens'" in e.value.body["message"]
    assert "valid integer" in e.value.body["message"]


def test_prompt_too_long(client):
    with pytest.raises(openai.BadRequestError, match="maximum context length") as e:
        complete(client, prompt="Hello " * MAX_MODEL_LEN)
    assert f"maximum context length is {MAX_MODEL_LEN} tokens" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        chat(client, messages=[{"role": "user", "content": "Hello " * MAX_MODEL_LEN}])


def test_prompt_plus_max_tokens_too_long(client):
    with pytest.raises(openai.BadRequestError, match="maximum context length") as e:
        complete(client, max_tokens=MAX_MODEL_LEN)
    assert f"{MAX_MODEL_LEN} in the completion" in e.value.body["message"]


@pytest.mark.parametrize("call", [complete, chat], ids=["completions", "chat"])
def test_stream_options_without_stream(client, call):
    with pytest.raises(openai.BadRequestError,
                       match="Stream options can only be defined when stream is true"):
        call(client, stream_options={"include_usage": True})


@pytest.mark.parametrize("call", [complete, chat], ids=["completions", "chat"])
def test_unknown_model(client, call):
    with pytest.raises(openai.NotFoundError) as e:
        call(client, model="nope")
    check_body(e.value, 404, "NotFoundError")
    assert e.value.body["message"] == "The model `nope` does not exist."


def test_too_many_logprobs(client):
    with pytest.raises(openai.BadRequestError, match="Cannot request more than 20 logprobs"):
        complete(client, logprobs=21)
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        chat(client, logprobs=True, top_logprobs=21)
    with pytest.raises(openai.BadRequestError, match="`logprobs` must be set to true"):
        chat(client, top_logprobs=2)


def test_out_of_range_sampling_parameters(client):
    for kw, words in [
        ({"top_p": 0}, "top_p must be in (0, 1]"),
        ({"n": 0}, "n must be at least 1"),
        ({"max_tokens": 0}, "max_tokens must be at least 1"),
        ({"presence_penalty": 3}, "presence_penalty must be in [-2, 2]"),
        ({"extra_body": {"top_k": -2}}, "top_k must be 0 (disable), or at least 1"),
        ({"extra_body": {"min_p": 1.5}}, "min_p must be in [0, 1]"),
        ({"extra_body": {"repetition_penalty": 0}}, "repetition_penalty must be greater than zero"),
        ({"n": 3, "temperature": 1, "extra_body": {"best_of": 2}},
         "best_of must be greater than or equal to n"),
    ]:
        with pytest.raises(openai.BadRequestError) as e:
            complete(client, **kw)
        assert words in e.value.body["message"], (kw, e.value.body["message"])


def test_guided_decoding_and_tools_errors(client):
    with pytest.raises(openai.BadRequestError, match="guided_regex"):
        complete(client, extra_body={"guided_regex": "(unclosed"})
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError, match="requires --enable-auto-tool-choice"):
        chat(client, tools=[tool], tool_choice="auto")
    with pytest.raises(openai.BadRequestError, match="requires --enable-auto-tool-choice"):
        chat(client, tools=[tool])
    with pytest.raises(openai.BadRequestError, match="not in `tools`"):
        chat(client, tools=[tool], tool_choice={"type": "function", "function": {"name": "g"}})


def test_structured_output_through_the_client(client):
    out = chat(client, response_format={"type": "json_object"}, max_tokens=60, seed=2)
    if out.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(out.choices[0].message.content), dict)
    picked = complete(client, extra_body={"guided_choice": ["yes", "no"]}, max_tokens=5)
    assert picked.choices[0].text in ("yes", "no")
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}}}
    out = chat(client, tools=[tool], tool_choice={"type": "function", "function": {"name": "f"}},
               max_tokens=40, seed=1)
    call = out.choices[0].message.tool_calls[0]
    assert call.function.name == "f"
    if out.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(call.function.arguments)["x"], int)


def test_malformed_bodies(server):
    for raw in (b"{not json", b"[1, 2]", b""):
        status, _, body = server.http_raw("POST", "/v1/completions", raw)
        assert status == 400, raw
        assert json.loads(body)["error"]["type"] == "BadRequestError"
