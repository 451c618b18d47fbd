"""GET /v1/models, and the model names a server answers to."""

import openai
import pytest

from conftest import MAX_MODEL_LEN


def test_models_list_default_server(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["demo"]
    card = models.data[0]
    assert card.object == "model"
    assert card.owned_by == "vllm"
    # vLLM's extra field.
    assert card.max_model_len == MAX_MODEL_LEN


def test_models_list_served_model_names(key_client):
    assert [m.id for m in key_client.models.list().data] == ["demo", "alias"]


def test_every_served_name_is_answered_with_the_first(key_client):
    for name in ("demo", "alias"):
        r = key_client.completions.create(model=name, prompt="Hi", max_tokens=2, temperature=0)
        assert r.model == "demo"
        r = key_client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "Hi"}], max_tokens=2, temperature=0
        )
        assert r.model == "demo"


def test_alias_is_unknown_on_the_default_server(client):
    with pytest.raises(openai.NotFoundError, match="The model `alias` does not exist."):
        client.completions.create(model="alias", prompt="Hi", max_tokens=2)
