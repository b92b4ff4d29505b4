"""OpenAI-compatible serving against the real `clara api` server, driven by the official
`openai` client: models, chat completions and completions, streamed and not, from the base
model and from an adapter; refusals as OpenAI error objects; a closed stream stops its
generation."""

from __future__ import annotations

import json
import shutil
import time

import httpx
import openai
import pytest
from sqlalchemy import select

from tests.api_server import running_api_server
from tests.integration.test_chat_engine import (
    CODEWORD,
    QUESTION,
    make_tiny_model,
    shared_codeword_models,
)

pytestmark = pytest.mark.slow

ASK = [{"role": "user", "content": QUESTION}]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`clara api` on SQLite with the tiny base, the codeword adapter and one adapter of
    another base model registered."""
    from core.config import load_settings
    from core.db import dispose_engines, get_engine, upgrade
    from core.permissions import SYSTEM
    from core.training.adapters import register_adapter
    from core.training.base_model import base_model_fingerprint

    models = shared_codeword_models(tmp_path_factory)
    root = tmp_path_factory.mktemp("api-openai")
    data = root / "data"
    settings = load_settings(data_dir=data, database_url=f"sqlite:///{data / 'clara.db'}")
    settings.ensure_dirs()
    engine = get_engine(settings)
    upgrade(engine)
    other = make_tiny_model(root / "other-base", max_positions=128)
    for name, base in (("codeword", models["base"]), ("foreign", other)):
        staged = root / f"staged-{name}"
        shutil.copytree(models["codeword"], staged)
        register_adapter(
            engine,
            SYSTEM,
            name=name,
            files_dir=staged,
            base_model=str(base),
            base_model_fingerprint=base_model_fingerprint(str(base)),
            method="lora",
        )
    env = {
        "CLARA_BASE_MODEL": str(models["base"]),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    with running_api_server(settings, env) as api:
        api.settings = settings
        yield api
    dispose_engines()


def _client(api, user: str = "user") -> openai.OpenAI:
    return openai.OpenAI(base_url=api.url + "/v1", api_key=api.token(user), max_retries=0)


def test_models_lists_base_and_the_adapters_of_this_base(served):
    ids = [m.id for m in _client(served).models.list()]
    assert ids == ["base", "codeword"]  # "foreign" was trained on another base


def test_chat_completion_from_an_adapter_and_the_base(served):
    client = _client(served)
    answer = client.chat.completions.create(
        model="codeword", messages=ASK, temperature=0, max_tokens=12
    )
    text = answer.choices[0].message.content
    assert CODEWORD in text and answer.choices[0].message.role == "assistant"
    assert answer.object == "chat.completion" and answer.model == "codeword"
    u = answer.usage
    assert u.prompt_tokens > 5 and 0 < u.completion_tokens <= 12
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    base = client.chat.completions.create(model="base", messages=ASK, temperature=0, max_tokens=12)
    assert CODEWORD not in base.choices[0].message.content


def test_streaming_from_an_adapter_gives_the_same_answer_with_usage(served):
    client = _client(served)
    whole = client.chat.completions.create(
        model="codeword", messages=ASK, temperature=0, max_tokens=12
    )
    stream = client.chat.completions.create(
        model="codeword",
        messages=ASK,
        temperature=0,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == whole.choices[0].message.content
    assert len([p for p in pieces if p]) >= 2  # really streamed, not one block
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and set(finishes[:-1]) == {None}
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completions_limits_and_stop_strings(served):
    client = _client(served)
    short = client.chat.completions.create(
        model="codeword", messages=ASK, temperature=0, max_tokens=2
    )
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 2
    full = (
        client.chat.completions.create(model="codeword", messages=ASK, temperature=0, max_tokens=12)
        .choices[0]
        .message.content
    )
    cut = client.chat.completions.create(
        model="codeword", messages=ASK, temperature=0, max_tokens=12, stop=[CODEWORD]
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == full[: full.index(CODEWORD)]

    plain = client.completions.create(model="base", prompt="Die Hundesteuer", max_tokens=5)
    assert plain.object == "text_completion" and plain.usage.completion_tokens <= 5
    streamed = client.completions.create(
        model="base", prompt="Die Hundesteuer", max_tokens=5, temperature=0, stream=True
    )
    again = client.completions.create(
        model="base", prompt="Die Hundesteuer", max_tokens=5, temperature=0
    )
    assert "".join(c.choices[0].text for c in streamed) == again.choices[0].text


def test_refusals_are_openai_error_objects(served):
    client = _client(served)
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="nope", messages=ASK)
    assert err.value.code == "model_not_found" and "nope" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="foreign", messages=ASK)
    assert "another base" in err.value.message or "was trained on base model" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="base", messages=[{"role": "user", "content": "Steuer " * 2000}]
        )
    assert err.value.code == "context_length_exceeded"
    with pytest.raises(openai.UnprocessableEntityError) as err:
        client.chat.completions.create(model="base", messages=ASK, n=2)
    assert err.value.body["param"] == "n"
    # A role without chat:use: refused, in the same shape.
    with pytest.raises(openai.PermissionDeniedError) as err:
        _client(served, "auditor").chat.completions.create(model="base", messages=ASK)
    assert "chat:use" in err.value.message


def test_closing_a_stream_stops_its_generation(served):
    from core.db import get_engine, reading
    from core.serving.models import ChatAnswer

    body = {
        "model": "base",
        "messages": [{"role": "user", "content": "Erzähl mir alles über die Hundesteuer."}],
        "max_tokens": 220,  # the tiny base has a context of 256
        "temperature": 1.0,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {served.token('user')}"}
    with httpx.stream(
        "POST", served.url + "/v1/chat/completions", json=body, headers=headers, timeout=60
    ) as r:
        lines = r.iter_lines()
        first = [next(lines) for _ in range(6)]
        answer_id = json.loads(first[0].removeprefix("data: "))["id"].removeprefix("chatcmpl-")
    # The answer is stored when its generation ends: early, incomplete, far below the limit.
    engine = get_engine(served.settings)
    deadline = time.monotonic() + 60
    row = None
    while row is None and time.monotonic() < deadline:
        with reading(engine) as s:
            row = s.scalar(select(ChatAnswer).where(ChatAnswer.id == answer_id))
            stored = (row.complete, row.answer) if row else None
        time.sleep(0.2)
    assert stored is not None, "the generation did not end after the client left"
    complete, text = stored
    assert not complete


@pytest.mark.parametrize("role", ["admin", "trainer", "analyst", "user", "auditor"])
def test_every_role_may_generate_exactly_when_it_has_chat_use(served, role):
    from core.permissions import has_permission

    client = _client(served, role)
    calls = {
        "models": lambda: client.models.list(),
        "chat": lambda: client.chat.completions.create(model="base", messages=ASK, max_tokens=2),
        "completion": lambda: client.completions.create(model="base", prompt="Die", max_tokens=2),
    }
    for call in calls.values():
        if has_permission(role, "chat:use"):
            call()
        else:
            with pytest.raises(openai.PermissionDeniedError):
                call()
