"""Adapter lines (issue 15, item 4): a line is served as "line:NAME", i.e. its active
adapter at the moment of each request; activating another adapter or rolling back changes
the next answer of the same running chat service (no reload), every change is in the line's
history and the audit log, and what would break the line is refused with the reason.

Real parts: the tiny Llama and its codeword adapter (tests.integration.test_chat_engine),
registered in the adapter registry of a real database, and the real inference engine.
"""

from __future__ import annotations

import shutil

import pytest

from core.errors import Conflict
from core.learning.lines import (
    LineError,
    activate,
    create_line,
    get_line,
    list_lines,
    rollback,
)
from core.permissions import PermissionDenied
from core.serving.engine import AdapterUnavailable
from core.training.adapters import delete_adapter, register_adapter
from tests.api_training import audit_mark, audit_since
from tests.conftest import principal
from tests.integration.test_chat_engine import (
    CODEWORD,
    GREEDY,
    QUESTION,
    make_noop_adapter,
    shared_codeword_models,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return shared_codeword_models(tmp_path_factory)


def _register(engine, admin, settings, name: str, folder, base, fingerprint: str):
    copy = settings.data_path / "incoming" / name
    shutil.copytree(folder, copy)
    return register_adapter(
        engine,
        admin,
        name=name,
        files_dir=copy,
        base_model=str(base),
        base_model_fingerprint=fingerprint,
        method="lora",
        settings=settings,
    )


def test_a_line_serves_its_active_adapter_and_follows_activation_and_rollback(
    db_engine, admin, settings, models, tmp_path
):
    from core.serving.chat import ChatService
    from core.serving.engine import GenerationSettings, InferenceEngine
    from core.training.base_model import base_model_fingerprint

    base = models["base"]
    fingerprint = base_model_fingerprint(str(base))
    noop = make_noop_adapter(base, tmp_path / "noop")
    _register(db_engine, admin, settings, "plain", noop, base, fingerprint)
    _register(db_engine, admin, settings, "codeword", models["codeword"], base, fingerprint)
    _register(db_engine, admin, settings, "elsewhere", noop, "/models/other", "f" * 64)
    _register(db_engine, admin, settings, "bystander", noop, base, fingerprint)

    service = ChatService(db_engine, InferenceEngine(str(base)))
    greedy = GenerationSettings(**GREEDY)
    ask = [{"role": "user", "content": QUESTION}]

    def answer(model: str):
        reply = service.reply(admin, ask, model, greedy)
        return reply.adapter, reply.text()

    base_text = service.reply(admin, ask, None, greedy).text()
    mark = audit_mark(db_engine)
    line = create_line(db_engine, admin, "faq", "plain", "the FAQ assistant")
    assert line.served_as == "line:faq" and line.active_adapter == "plain"
    assert answer("line:faq") == ("plain", base_text)  # a no-op adapter answers as the base
    choices = {c.name: c for c in service.adapters(admin)}
    assert choices["line:faq"].compatible and choices["line:faq"].id == choices["plain"].id

    # Activation: the same running service answers from the new adapter at the next request.
    activate(db_engine, admin, "faq", "codeword", reason="cycle 1 passed its gate")
    used, text = answer("line:faq")
    assert used == "codeword" and CODEWORD in text

    # Rollback: back to an adapter the line served before, with who, when and why.
    rollback(db_engine, principal("trainer"), "faq", "plain", "answers got worse")
    assert answer("line:faq") == ("plain", base_text)
    history = get_line(db_engine, admin, "faq").history
    assert [(h.action, h.adapter_name, h.previous_adapter_name, h.actor) for h in history] == [
        ("rollback", "plain", "codeword", "trainer1"),
        ("activate", "codeword", "plain", "admin"),
        ("create", "plain", None, "admin"),
    ]
    assert history[0].reason == "answers got worse"
    assert [(a.action, a.target, a.outcome) for a in audit_since(db_engine, mark)] == [
        ("learning.line.create", "faq", "ok"),
        ("learning.line.activate", "faq", "ok"),
        ("learning.line.rollback", "faq", "ok"),
    ]

    # What would break the line is refused, naming why; nothing changes.
    with pytest.raises(LineError, match="never active in line 'faq'"):
        rollback(db_engine, admin, "faq", "bystander")
    with pytest.raises(LineError, match="trained on another base model"):
        activate(db_engine, admin, "faq", "elsewhere")
    with pytest.raises(Conflict, match="already active"):
        activate(db_engine, admin, "faq", "plain")
    with pytest.raises(Conflict, match="active adapter of line"):
        delete_adapter(db_engine, admin, "plain")
    with pytest.raises(Conflict, match="already exists"):
        create_line(db_engine, admin, "faq", "codeword")
    with pytest.raises(PermissionDenied):
        activate(db_engine, principal("user"), "faq", "codeword")
    with pytest.raises(AdapterUnavailable, match="'line:nope' is not available"):
        answer("line:nope")
    assert [(x.name, x.active_adapter) for x in list_lines(db_engine, admin)] == [("faq", "plain")]
    # An adapter the line no longer serves can go; its history keeps the name.
    delete_adapter(db_engine, admin, "codeword")
    assert get_line(db_engine, admin, "faq").history[1].adapter_name == "codeword"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_cli_creates_lists_activates_and_rolls_back(
    db_engine, admin, settings, models, tmp_path
):
    import json

    from tests.cli_run import clara

    noop = make_noop_adapter(models["base"], tmp_path / "noop")
    for name in ("first", "second"):
        _register(db_engine, admin, settings, name, noop, models["base"], "a" * 64)

    def run(*args: str):
        proc = clara(settings, "learn", *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    created = json.loads(run("line", "create", "faq", "--adapter", "first", "--json"))
    assert created["served_as"] == "line:faq" and created["line"]["active_adapter"] == "first"
    run("activate", "faq", "second", "--reason", "by hand")
    shown = run("line", "show", "faq")
    assert (
        "active adapter second" in shown
        and "activate second (was first) by admin: by hand" in shown
    )
    listed = json.loads(run("line", "list", "--json"))
    assert [(x["name"], x["active_adapter"]) for x in listed] == [("faq", "second")]
    run("rollback", "faq", "first")
    refused = clara(settings, "learn", "rollback", "faq", "nope")
    assert refused.returncode != 0 and "no adapter 'nope'" in refused.stderr
    assert json.loads(run("line", "show", "faq", "--json"))["line"]["active_adapter"] == "first"
