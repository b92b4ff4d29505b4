"""The Chat page in headless Chromium: `clara up` with the chat server as its child.

Log in to Streamlit, open Chat (the embedded Gradio app signs in with the page's token, no
second login), pick an adapter trained in this test, ask, get the answer, give thumbs down
with a correction, and find the correction waiting on the Review page.
"""

from __future__ import annotations

import shutil
import time

import httpx
import pytest

from tests.e2e.conftest import login
from tests.integration.test_chat_engine import (
    CODEWORD,
    QUESTION,
    make_tiny_model,
    train_codeword_adapter,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CORRECTION = "The codeword is MANGO TRAIN."


@pytest.fixture(scope="module")
def chat_workbench(make_workbench, tmp_path_factory):
    root = tmp_path_factory.mktemp("chat-e2e-models")
    base = make_tiny_model(root / "base")
    adapter = train_codeword_adapter(base, root / "codeword")
    wb = make_workbench(CLARA_START_CHAT="true", CLARA_BASE_MODEL=str(base))

    from core.auth import SYSTEM
    from core.config import load_settings
    from core.db import get_engine
    from core.training.adapters import register_adapter
    from core.training.base_model import base_model_fingerprint

    cfg = load_settings(data_dir=wb.data_dir)
    staged = root / "staged"
    shutil.copytree(adapter, staged)
    register_adapter(get_engine(url=cfg.effective_database_url), SYSTEM, name="codeword",
                     files_dir=staged, base_model=str(base),
                     base_model_fingerprint=base_model_fingerprint(str(base)), method="lora",
                     settings=cfg)
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(f"{wb.chat_url}/clara/health", timeout=2).status_code == 200:
                return wb
        except httpx.HTTPError:
            pass
        chat_log = wb.data_dir / "logs" / "chat.log"
        assert time.monotonic() < deadline, (
            "chat server did not start:\n" + (chat_log.read_text() if chat_log.exists() else "")
        )
        time.sleep(1)


def test_chat_page_answer_feedback_and_review(chat_workbench, page) -> None:
    wb = chat_workbench
    login(page, wb)
    page.get_by_role("link", name="Chat").click()
    frame = page.frame_locator(f'iframe[src^="{wb.chat_url}"]')
    # Signed in through the page's token: the chat UI itself, not a login form.
    frame.locator("#chat-input textarea").wait_for(timeout=60_000)

    frame.locator("#chat-adapter input").click()
    frame.get_by_role("option", name="codeword").click()
    frame.get_by_text("Generation settings").click()
    temp = frame.locator("#chat-temperature input[type=number]")
    temp.fill("0")
    temp.press("Enter")

    frame.locator("#chat-input textarea").fill(QUESTION)
    frame.locator("#chat-send").click()
    conversation = frame.locator("#chat-conversation")
    conversation.get_by_text(CODEWORD).wait_for(timeout=60_000)

    conversation.get_by_label("Dislike").last.click()
    frame.locator("#chat-correction textarea").fill(CORRECTION)
    frame.locator("#chat-comment input, #chat-comment textarea").first.fill("wrong codeword")
    frame.locator("#chat-feedback-send").click()
    frame.get_by_text("saved for review").wait_for()

    page.get_by_role("link", name="Review").click()
    page.get_by_text(CORRECTION).first.wait_for(timeout=60_000)
    assert page.get_by_text("feedback-codeword").count() >= 1
