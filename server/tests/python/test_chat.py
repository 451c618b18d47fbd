"""POST /v1/chat/completions through the official client."""

import pytest

MESSAGES = [{"role": "user", "content": "Hi there"}]
EOS = 2  # the demo model's eos_token_id


def chat(client, max_tokens=12, **kw):
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(
        model="demo", messages=MESSAGES, max_tokens=max_tokens, **kw
    )


def content(r):
    return r.choices[0].message.content


def token_ids(client, **kw):
    """The generated token ids, read from logprobs with return_tokens_as_token_ids."""
    extra = {"return_tokens_as_token_ids": True, **kw.pop("extra_body", {})}
    r = chat(client, logprobs=True, extra_body=extra, **kw)
    tokens = [e.token for e in r.choices[0].logprobs.content]
    assert all(t.startswith("token_id:") for t in tokens)
    return [int(t.removeprefix("token_id:")) for t in tokens]


def test_greedy_stream_matches_non_stream(client):
    full = chat(client, extra_body={"ignore_eos": True})
    choice = full.choices[0]
    assert full.object == "chat.completion"
    assert full.id.startswith("chatcmpl-")
    assert full.model == "demo"
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "length"
    assert full.usage.completion_tokens == 12
    assert full.usage.total_tokens == full.usage.prompt_tokens + 12

    chunks = list(chat(client, stream=True, extra_body={"ignore_eos": True}))
    assert len({c.id for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" and c.model == "demo" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:])
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == choice.message.content
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert all(c.usage is None for c in chunks)


def test_n_2_streams_each_choice(client):
    kw = dict(temperature=1.0, seed=11, n=2, max_tokens=8, extra_body={"ignore_eos": True})
    full = chat(client, **kw)
    assert [c.index for c in full.choices] == [0, 1]
    assert full.usage.completion_tokens == 16
    roles, texts, finishes = {}, {}, {}
    for chunk in chat(client, stream=True, **kw):
        for c in chunk.choices:
            if c.delta.role is not None:
                roles[c.index] = c.delta.role
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason is not None:
                finishes[c.index] = c.finish_reason
    assert roles == {0: "assistant", 1: "assistant"}
    assert texts == {0: full.choices[0].message.content, 1: full.choices[1].message.content}
    assert finishes == {0: "length", 1: "length"}


def test_logprobs_shape(client):
    r = chat(client, max_tokens=8, logprobs=True, top_logprobs=2)
    entries = r.choices[0].logprobs.content
    assert len(entries) == r.usage.completion_tokens == 8
    for e in entries:
        assert isinstance(e.token, str)
        assert e.logprob <= 0
        assert e.bytes == list(e.token.encode("utf-8"))
        assert len(e.top_logprobs) == 2
        assert e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob
        for alt in e.top_logprobs:
            assert alt.bytes == list(alt.token.encode("utf-8"))
        # Greedy: the chosen token is the most likely one.
        assert e.top_logprobs[0].token == e.token
        assert e.top_logprobs[0].logprob == pytest.approx(e.logprob)
    # The tokens' bytes make up the message.
    assert b"".join(bytes(e.bytes) for e in entries) == content(r).encode("utf-8")

    # Without logprobs there are none.
    assert chat(client, max_tokens=2).choices[0].logprobs is None

    # Streamed, each chunk carries its tokens' entries.
    streamed = []
    for chunk in chat(client, max_tokens=8, logprobs=True, top_logprobs=2, stream=True):
        if chunk.choices[0].logprobs is not None:
            streamed += chunk.choices[0].logprobs.content
    assert [e.token for e in streamed] == [e.token for e in entries]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in entries])


def test_top_k_1_and_min_p_1_are_greedy(client):
    greedy = content(chat(client))
    sampled = {content(chat(client, temperature=1.0, seed=s)) for s in (1, 2)}
    assert greedy not in sampled  # sampling at temperature 1 is not greedy...
    for s in (1, 2):
        # ...unless only the most likely token is left.
        assert content(chat(client, temperature=1.0, seed=s, extra_body={"top_k": 1})) == greedy
        assert content(chat(client, temperature=1.0, seed=s, extra_body={"min_p": 1.0})) == greedy


def test_repetition_penalty(client):
    plain = token_ids(client, max_tokens=40, extra_body={"ignore_eos": True})
    penalized = token_ids(
        client, max_tokens=40, extra_body={"ignore_eos": True, "repetition_penalty": 2.0}
    )
    repeats = lambda ids: len(ids) - len(set(ids))  # noqa: E731
    assert repeats(plain) > 0, "the greedy text should repeat itself for this test to mean anything"
    assert penalized != plain
    assert repeats(penalized) < repeats(plain)


def test_ignore_eos(client):
    # The random-weight model rarely ends by itself: a logit bias makes it.
    bias = {str(EOS): 100}
    r = chat(client, logit_bias=bias)
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].stop_reason == EOS
    assert r.usage.completion_tokens == 1
    assert content(r) == ""

    r = chat(client, logit_bias=bias, extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 12


def test_min_tokens(client):
    greedy = content(chat(client))
    r = chat(client, logit_bias={str(EOS): 100}, extra_body={"min_tokens": 5})
    # EOS is held back for 5 tokens (which are the greedy ones), then comes.
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 6
    assert greedy.startswith(content(r))
    assert len(content(r)) > 0


def test_seed_reproducibility(client):
    a = content(chat(client, temperature=1.0, seed=1234))
    b = content(chat(client, temperature=1.0, seed=1234))
    c = content(chat(client, temperature=1.0, seed=1235))
    assert a == b
    assert a != c


def test_stop_string(client):
    greedy = content(chat(client, max_tokens=16))
    # A 5-character piece of the greedy text (not at its start) as the stop string.
    start = next(i for i in range(2, len(greedy) - 5)
                 if greedy[i:i + 5].isprintable() and "\ufffd" not in greedy[i:i + 5])
    stop = greedy[start:start + 5]
    r = chat(client, max_tokens=16, stop=[stop])
    assert content(r) == greedy[:greedy.find(stop)]
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].stop_reason == stop
    assert r.usage.completion_tokens < 16
    # Streaming holds back text that may start the stop string: nothing of it leaks.
    streamed = "".join(c.choices[0].delta.content or ""
                       for c in chat(client, max_tokens=16, stop=[stop], stream=True))
    assert streamed == content(r)


def test_stream_include_usage(client):
    full = chat(client, max_tokens=5)
    chunks = list(chat(client, max_tokens=5, stream=True, stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.prompt_tokens == full.usage.prompt_tokens
    assert last.usage.completion_tokens == 5
    assert last.usage.total_tokens == full.usage.total_tokens
    assert all(c.choices and c.usage is None for c in chunks[:-1])


def test_best_of_streams_one_chunk_and_usage(client):
    kw = dict(temperature=1.0, seed=5, max_tokens=5, extra_body={"best_of": 3, "ignore_eos": True})
    full = chat(client, **kw)
    assert len(full.choices) == 1
    chunks = list(chat(client, stream=True, stream_options={"include_usage": True}, **kw))
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in with_choices) == content(full)
    assert with_choices[-1].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5


def test_content_parts_are_joined(client):
    parts = [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]
    as_parts = client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": parts}], max_tokens=6, temperature=0)
    as_text = client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "Hi\nthere"}], max_tokens=6,
        temperature=0)
    assert content(as_parts) == content(as_text)
    assert as_parts.usage.prompt_tokens == as_text.usage.prompt_tokens


def test_echo_continues_the_assistant_message(client):
    messages = MESSAGES + [{"role": "assistant", "content": "Sure"}]
    kw = dict(model="demo", messages=messages, max_tokens=4, temperature=0,
              extra_body={"add_generation_prompt": False, "ignore_eos": True})
    plain = client.chat.completions.create(**kw)
    kw["extra_body"]["echo"] = True
    echoed = client.chat.completions.create(**kw)
    assert echoed.choices[0].message.role == "assistant"
    assert echoed.choices[0].message.content == "Sure" + plain.choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or ""
                       for c in client.chat.completions.create(stream=True, **kw))
    assert streamed == echoed.choices[0].message.content
