"""POST /v1/completions through the official client."""

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from conftest import tokenize

PROMPT = "Hello world"


def greedy(client, prompt=PROMPT, max_tokens=16, **kw):
    return client.completions.create(
        model="demo", prompt=prompt, max_tokens=max_tokens, temperature=0, **kw
    )


def cumulative_logprob(choice):
    return sum(choice.logprobs.token_logprobs)


def test_greedy_stream_matches_non_stream(server, client):
    full = greedy(client, extra_body={"ignore_eos": True})
    choice = full.choices[0]
    assert full.object == "text_completion"
    assert full.model == "demo"
    assert full.id.startswith("cmpl-")
    assert choice.index == 0
    assert choice.finish_reason == "length"
    assert full.usage.completion_tokens == 16
    assert full.usage.prompt_tokens == len(tokenize(server, PROMPT))
    assert full.usage.total_tokens == full.usage.prompt_tokens + 16

    chunks = list(greedy(client, stream=True, extra_body={"ignore_eos": True}))
    assert len({c.id for c in chunks}) == 1
    assert all(c.object == "text_completion" and c.model == "demo" for c in chunks)
    assert all(len(c.choices) == 1 and c.choices[0].index == 0 for c in chunks)
    assert "".join(c.choices[0].text for c in chunks) == choice.text
    # Only the last chunk finishes.
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].choices[0].finish_reason == "length"
    # No usage in chunks unless stream_options asks for it.
    assert all(c.usage is None for c in chunks)


def test_greedy_is_deterministic(client):
    assert greedy(client).choices[0].text == greedy(client).choices[0].text


def test_n_2_gives_two_choices(client):
    kw = dict(model="demo", prompt=PROMPT, max_tokens=8, temperature=1.0, n=2, seed=7,
              extra_body={"ignore_eos": True})
    r = client.completions.create(**kw)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.usage.completion_tokens == 16
    assert all(c.finish_reason == "length" for c in r.choices)
    assert r.choices[0].text != r.choices[1].text

    texts = {}
    for chunk in client.completions.create(stream=True, **kw):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
    assert texts == {0: r.choices[0].text, 1: r.choices[1].text}


def test_n_greater_than_1_with_greedy_sampling_is_refused(client):
    with pytest.raises(openai.BadRequestError, match="best_of must be 1 when using greedy sampling"):
        greedy(client, n=2)


def test_prompt_as_list_of_strings(server, client):
    prompts = [PROMPT, "The quick brown fox"]
    r = greedy(client, prompt=prompts, max_tokens=6)
    assert [c.index for c in r.choices] == [0, 1]
    for prompt, choice in zip(prompts, r.choices):
        assert choice.text == greedy(client, prompt=prompt, max_tokens=6).choices[0].text
    assert r.usage.prompt_tokens == sum(len(tokenize(server, p)) for p in prompts)
    assert r.usage.completion_tokens == 12


def test_prompt_as_token_ids(server, client):
    ids = tokenize(server, PROMPT)
    assert ids and all(isinstance(i, int) for i in ids)
    by_text = greedy(client, max_tokens=8)
    by_ids = greedy(client, prompt=ids, max_tokens=8)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage.prompt_tokens == len(ids)

    other = tokenize(server, "The quick brown fox")
    both = greedy(client, prompt=[ids, other], max_tokens=8)
    assert [c.text for c in both.choices] == [
        by_text.choices[0].text,
        greedy(client, prompt="The quick brown fox", max_tokens=8).choices[0].text,
    ]
    assert both.usage.prompt_tokens == len(ids) + len(other)


def test_logprobs_shape(client):
    r = greedy(client, max_tokens=8, logprobs=2, extra_body={"ignore_eos": True})
    choice = r.choices[0]
    lp = choice.logprobs
    n = r.usage.completion_tokens
    assert n == 8
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert lp.text_offset[0] == 0
    for i in range(n - 1):
        # Each token's text starts where the previous one's ends.
        assert lp.text_offset[i + 1] == lp.text_offset[i] + len(lp.tokens[i])
    assert lp.text_offset == sorted(lp.text_offset)
    assert lp.text_offset[-1] > lp.text_offset[0]
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert logprob <= 0
        # The 2 most likely tokens, plus the chosen one when it is not among them.
        assert 2 <= len(top) <= 3
        assert top[token] == pytest.approx(logprob)
        # Greedy: the chosen token is the most likely one.
        assert logprob >= max(top.values()) - 1e-6


def test_logprobs_stream_like_non_stream(client):
    full = greedy(client, max_tokens=6, logprobs=1).choices[0].logprobs
    tokens, offsets, token_logprobs = [], [], []
    for chunk in greedy(client, max_tokens=6, logprobs=1, stream=True):
        lp = chunk.choices[0].logprobs
        if lp is not None:
            tokens += lp.tokens
            offsets += lp.text_offset
            token_logprobs += lp.token_logprobs
    assert tokens == full.tokens
    assert offsets == full.text_offset
    assert token_logprobs == pytest.approx(full.token_logprobs)


def test_echo(client):
    plain = greedy(client, max_tokens=4).choices[0].text
    r = greedy(client, max_tokens=4, echo=True)
    assert r.choices[0].text.startswith(PROMPT)
    assert r.choices[0].text == PROMPT + plain
    assert r.usage.completion_tokens == 4

    # With logprobs, the prompt's tokens come first (the first one unscored).
    r = greedy(client, max_tokens=4, echo=True, logprobs=1)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == r.usage.prompt_tokens + r.usage.completion_tokens
    assert lp.token_logprobs[0] is None
    assert all(x is not None for x in lp.token_logprobs[1:])

    streamed = "".join(c.choices[0].text for c in greedy(client, max_tokens=4, echo=True, stream=True))
    assert streamed == PROMPT + plain


def pick_stop_token(client, max_tokens=16):
    """A greedy completion and a token of it (from the logprobs) that first occurs
    at its own offset, usable as a stop string."""
    r = greedy(client, max_tokens=max_tokens, logprobs=0, extra_body={"ignore_eos": True})
    choice = r.choices[0]
    lp = choice.logprobs
    assert "".join(lp.tokens) == choice.text
    for i in range(2, len(lp.tokens)):
        token, offset = lp.tokens[i], lp.text_offset[i]
        if len(token.strip()) >= 2 and token.isprintable() and choice.text.find(token) == offset:
            return choice.text, token, offset
    raise AssertionError(f"no usable stop string in {lp.tokens}")


def test_stop_string(client):
    text, stop, offset = pick_stop_token(client)
    r = greedy(client, stop=[stop])
    assert r.choices[0].text == text[:offset]
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].stop_reason == stop
    assert r.usage.completion_tokens < 16

    # A single string works as well as a list, and streaming stops at the same place.
    streamed = list(greedy(client, stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == text[:offset]
    assert streamed[-1].choices[0].finish_reason == "stop"

    kept = greedy(client, stop=[stop], extra_body={"include_stop_str_in_output": True})
    assert kept.choices[0].text == text[: offset + len(stop)]
    assert kept.choices[0].finish_reason == "stop"


def test_stop_token_ids(client):
    r = greedy(client, max_tokens=8, logprobs=0,
               extra_body={"return_tokens_as_token_ids": True, "ignore_eos": True})
    tokens = r.choices[0].logprobs.tokens
    assert all(t.startswith("token_id:") for t in tokens)
    ids = [int(t.removeprefix("token_id:")) for t in tokens]
    stop_id = ids[3]
    first = ids.index(stop_id)
    stopped = greedy(client, max_tokens=8, extra_body={"stop_token_ids": [stop_id]})
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].stop_reason == stop_id
    assert stopped.usage.completion_tokens == first + 1

    # min_tokens holds the stop token back until that many tokens are out.
    held = greedy(client, max_tokens=8, extra_body={"stop_token_ids": [stop_id], "min_tokens": 8})
    assert held.usage.completion_tokens == 8
    assert held.choices[0].finish_reason == "length"


def test_max_tokens_respected(client):
    for max_tokens in (1, 5, 12):
        r = greedy(client, max_tokens=max_tokens, extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == max_tokens
        assert r.choices[0].finish_reason == "length"
    # vLLM's default for completions is 16 tokens.
    r = client.completions.create(model="demo", prompt=PROMPT, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 16


def test_best_of_returns_the_most_likely_of_the_candidates(client):
    kw = dict(model="demo", prompt=PROMPT, max_tokens=6, temperature=1.0, seed=1, logprobs=0)
    candidates = client.completions.create(n=3, **kw, extra_body={"ignore_eos": True})
    assert len(candidates.choices) == 3
    best = client.completions.create(**kw, extra_body={"best_of": 3, "ignore_eos": True})
    assert len(best.choices) == 1
    top = max(candidates.choices, key=cumulative_logprob)
    assert best.choices[0].text == top.text
    assert cumulative_logprob(best.choices[0]) == pytest.approx(cumulative_logprob(top))

    # best_of > n streams its result in one piece at the end.
    streamed = list(client.completions.create(
        stream=True, **kw, extra_body={"best_of": 3, "ignore_eos": True}))
    texts = [c.choices[0].text for c in streamed if c.choices]
    assert "".join(texts) == top.text


def test_beam_search(client):
    kw = dict(model="demo", prompt=PROMPT, max_tokens=6, temperature=0, n=2, logprobs=0,
              extra_body={"use_beam_search": True, "best_of": 3, "ignore_eos": True})
    r = client.completions.create(**kw)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].text != r.choices[1].text
    assert all(len(c.logprobs.tokens) == 6 for c in r.choices)
    # Beams come best first.
    assert cumulative_logprob(r.choices[0]) >= cumulative_logprob(r.choices[1]) - 1e-6
    again = client.completions.create(**kw)
    assert [c.text for c in again.choices] == [c.text for c in r.choices]

    texts = {}
    for chunk in client.completions.create(stream=True, **kw):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
    assert texts == {0: r.choices[0].text, 1: r.choices[1].text}


@pytest.mark.parametrize(
    "extra", [{}, {"best_of": 2}], ids=["incremental", "best_of"]
)
def test_stream_include_usage(client, extra):
    kw = dict(model="demo", prompt=PROMPT, max_tokens=5, temperature=1.0, seed=3,
              extra_body={"ignore_eos": True, **extra})
    full = client.completions.create(**kw)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens == full.usage.prompt_tokens
    assert last.usage.completion_tokens == full.usage.completion_tokens == 5
    assert last.usage.total_tokens == full.usage.total_tokens
    # Every other chunk has choices and a null usage.
    assert all(c.choices and c.usage is None for c in chunks[:-1])
    assert "".join(c.choices[0].text for c in chunks[:-1]) == full.choices[0].text


def test_echo_without_generation(client):
    # vLLM: echo with max_tokens 0 returns the prompt alone.
    r = greedy(client, max_tokens=0, echo=True)
    assert r.choices[0].text == PROMPT


def test_truncate_prompt_tokens(server, client):
    long_prompt = "Hello " * 300
    assert len(tokenize(server, long_prompt)) > 256
    r = client.completions.create(model="demo", prompt=long_prompt, max_tokens=3,
                                  extra_body={"truncate_prompt_tokens": 10})
    assert r.usage.prompt_tokens == 10
    assert r.usage.completion_tokens <= 3


def test_concurrent_requests(client):
    def one(i):
        if i % 2:
            chunks = list(client.completions.create(
                model="demo", prompt=f"Request {i}", max_tokens=12, temperature=0, stream=True,
                extra_body={"ignore_eos": True}))
            return chunks[0].id, "".join(c.choices[0].text for c in chunks), None
        r = client.completions.create(model="demo", prompt=f"Request {i}", max_tokens=12,
                                      temperature=0, extra_body={"ignore_eos": True})
        return r.id, r.choices[0].text, r.usage.completion_tokens

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(16)))
    assert len({rid for rid, _, _ in results}) == 16
    assert all(n == 12 for _, _, n in results if n is not None)
    assert all(text for _, text, _ in results)
