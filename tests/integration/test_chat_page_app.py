"""The Chat page under Streamlit's AppTest: adapters and lineage beside the chat, and a clear
message (not a broken iframe) when the chat server is not running."""

from __future__ import annotations

import socket

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT
from tests.integration.test_chat_engine import make_tiny_model


@pytest.fixture
def db_url(data_dir):
    # The page only reads through core (tested on both engines elsewhere); SQLite suffices.
    return f"sqlite:///{data_dir / 'clara.db'}"


@pytest.fixture
def page_env(db_engine, settings, data_dir, monkeypatch, admin):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from core.config import get_settings
    from core.training.adapters import register_adapter
    from core.training.base_model import base_model_fingerprint

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    monkeypatch.setenv("CLARA_CHAT_PORT", str(closed_port))
    monkeypatch.setenv("CLARA_AUTH", "off")
    get_settings.cache_clear()
    base = make_tiny_model(data_dir / "base")
    lora = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    lora.save_pretrained(data_dir / "lora")
    register_adapter(
        db_engine,
        admin,
        name="town-history",
        files_dir=data_dir / "lora",
        base_model=str(base),
        base_model_fingerprint=base_model_fingerprint(str(base)),
        method="lora",
        metrics={"eval_loss": 1.25},
    )
    st.cache_resource.clear()
    yield closed_port
    st.cache_resource.clear()
    get_settings.cache_clear()


def test_chat_page_without_server_lists_adapters_and_explains(page_env) -> None:
    at = AppTest.from_file(str(ROOT / "pages" / "chat.py"), default_timeout=60).run()
    assert not at.exception, at.exception
    errors = " ".join(e.value for e in at.error)
    assert f"does not answer at http://127.0.0.1:{page_env}" in errors
    assert "clara chat" in errors
    assert at.selectbox(key="chat_lineage_pick").value == "town-history"
    text = " ".join(m.value for m in at.markdown)
    assert "**town-history** · lora" in text
    assert "base:" in text


def test_chat_page_shows_the_demo_model_builds_progress_while_the_server_waits(
    page_env, settings
) -> None:
    """Item 13 for the chat: while the demo model is built (the chat server's first start),
    the page shows a progress bar and an estimate instead of only an error."""
    import fcntl

    from core.training.demo_model import _lock_path, _status_path, _StatusWriter, demo_model_dir

    target = demo_model_dir(settings)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock_path(target).open("a+") as lock:  # a build holds the lock, as the builder does
        fcntl.flock(lock, fcntl.LOCK_EX)
        _StatusWriter(_status_path(target), "small").update(
            "pre-training", 0.5, "step 120 of 240", eta_seconds=150
        )
        at = AppTest.from_file(str(ROOT / "pages" / "chat.py"), default_timeout=60).run()
        fcntl.flock(lock, fcntl.LOCK_UN)
    assert not at.exception, at.exception
    [bar] = at.get("progress")
    assert 0 < bar.value < 100  # percent
    assert "pre-training" in bar.proto.text and "min left" in bar.proto.text
    assert "step 120 of 240" in " ".join(c.value for c in at.caption)
    assert not at.error  # no "does not answer" while the build is under way
