"""POST /tokenize and /detokenize (vLLM's extras; plain HTTP, the client has no
methods for them)."""

from conftest import MAX_MODEL_LEN

BOS = 1


def test_round_trip_without_special_tokens(server):
    text = "Hello world, how are you?"
    status, body = server.post_json("/tokenize", {"model": "demo", "prompt": text,
                                                  "add_special_tokens": False})
    assert status == 200, body
    assert body["count"] == len(body["tokens"]) > 0
    assert body["max_model_len"] == MAX_MODEL_LEN
    assert BOS not in body["tokens"]
    status, back = server.post_json("/detokenize", {"model": "demo", "tokens": body["tokens"]})
    assert status == 200, back
    assert back == {"prompt": text}


def test_special_tokens_are_added_by_default(server):
    _, plain = server.post_json("/tokenize", {"prompt": "Hello", "add_special_tokens": False})
    _, with_bos = server.post_json("/tokenize", {"prompt": "Hello"})
    assert with_bos["tokens"] == [BOS] + plain["tokens"]
    _, back = server.post_json("/detokenize", {"tokens": with_bos["tokens"]})
    assert back["prompt"] == "<s>Hello"


def test_tokenize_counts_match_completion_usage(server, client):
    _, body = server.post_json("/tokenize", {"prompt": "The quick brown fox"})
    r = client.completions.create(model="demo", prompt="The quick brown fox", max_tokens=1)
    assert r.usage.prompt_tokens == body["count"]


def test_tokenize_chat_messages_matches_chat_usage(server, client):
    messages = [{"role": "user", "content": "Hi there"}]
    status, body = server.post_json("/tokenize", {"model": "demo", "messages": messages})
    assert status == 200, body
    r = client.chat.completions.create(model="demo", messages=messages, max_tokens=1)
    assert r.usage.prompt_tokens == body["count"]
    _, back = server.post_json("/detokenize", {"tokens": body["tokens"]})
    assert "Hi there" in back["prompt"]


def test_bad_tokenize_requests(server):
    status, body = server.post_json("/detokenize", {"tokens": [10**9]})
    assert status == 400
    assert "out of range" in body["error"]["message"]
    status, body = server.post_json("/tokenize", {"prompt": "x", "model": "nope"})
    assert status == 404
    assert body["error"]["message"] == "The model `nope` does not exist."
