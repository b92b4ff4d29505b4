"""The Chat page in headless Chromium: `clara up` with the chat server as its child.

Log in to Streamlit, open Chat (the embedded Gradio app signs in with the page's token, no
second login), pick an adapter trained in this test, ask, get the answer, give thumbs down
with a correction, and find the correction waiting on the Review page. A rerun keeps the
conversation, and coming back to the page opens the chat again with the same link.
"""

from __future__ import annotations

import shutil
import time

import httpx
import pytest

from tests.e2e.conftest import login, set_number
from tests.integration.test_chat_engine import (
    CODEWORD,
    QUESTION,
    shared_codeword_models,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CORRECTION = "The codeword is MANGO TRAIN."


@pytest.fixture(scope="module")
def chat_workbench(make_workbench, tmp_path_factory):
    root = tmp_path_factory.mktemp("chat-e2e-models")
    shared = shared_codeword_models(tmp_path_factory)
    base, adapter = shared["base"], shared["codeword"]
    wb = make_workbench(CLARA_START_CHAT="true", CLARA_BASE_MODEL=str(base))

    from core.config import load_settings
    from core.db import get_engine
    from core.permissions import SYSTEM
    from core.training.adapters import register_adapter
    from core.training.base_model import base_model_fingerprint

    cfg = load_settings(data_dir=wb.data_dir)
    staged = root / "staged"
    shutil.copytree(adapter, staged)
    register_adapter(
        get_engine(url=cfg.effective_database_url),
        SYSTEM,
        name="codeword",
        files_dir=staged,
        base_model=str(base),
        base_model_fingerprint=base_model_fingerprint(str(base)),
        method="lora",
        settings=cfg,
    )
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(f"{wb.chat_url}/clara/health", timeout=2).status_code == 200:
                return wb
        except httpx.HTTPError:
            pass
        chat_log = wb.data_dir / "logs" / "chat.log"
        assert time.monotonic() < deadline, "chat server did not start:\n" + (
            chat_log.read_text() if chat_log.exists() else ""
        )
        time.sleep(1)


def _open(page, title: str) -> None:
    """Click a sidebar page link; on a busy machine a click during a rerun can be lost."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _ in range(3):
        page.get_by_test_id("stSidebar").get_by_role("link", name=title).click()
        try:
            page.get_by_role("heading", name=title, exact=True).wait_for(timeout=30_000)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError(f"the {title} page did not open")


def test_chat_page_answer_feedback_and_review(chat_workbench, page) -> None:
    wb = chat_workbench
    login(page, wb)
    _open(page, "Chat")
    iframe = f'iframe[src^="{wb.chat_url}"]'
    frame = page.frame_locator(iframe)
    # Signed in through the page's token: the chat UI itself, not a login form.
    frame.locator("#chat-input textarea").wait_for(timeout=60_000)

    frame.locator("#chat-adapter input").click()
    frame.get_by_role("option", name="codeword").click()
    frame.get_by_text("Generation settings").click()
    set_number(frame, "chat-temperature", "0")

    frame.locator("#chat-input textarea").fill(QUESTION)
    frame.locator("#chat-send").click()
    conversation = frame.locator("#chat-conversation")
    conversation.get_by_text(CODEWORD).wait_for(timeout=60_000)

    conversation.get_by_label("Dislike").last.click()
    frame.locator("#chat-correction textarea").fill(CORRECTION)
    frame.locator("#chat-comment input, #chat-comment textarea").first.fill("wrong codeword")
    frame.locator("#chat-feedback-send").click()
    frame.get_by_text("saved for review").wait_for()

    # A rerun of the page (here: Streamlit's "r" shortcut) keeps the iframe and with it the
    # conversation; it used to get a new sign-in link and reload the chat (issue 11).
    src = page.locator(iframe).get_attribute("src")
    page.get_by_role("heading", name="Chat", exact=True).click()
    page.keyboard.press("r")
    page.get_by_text("1 in all").wait_for(timeout=60_000)  # the rerun lists the feedback
    assert page.locator(iframe).get_attribute("src") == src
    conversation.get_by_text(CODEWORD).wait_for(timeout=10_000)
    frame.get_by_text("saved for review").wait_for(timeout=10_000)

    _open(page, "Review")
    # The sample card (not the canvas grid, whose cells are hidden from the DOM's view).
    page.get_by_text(CORRECTION).filter(visible=True).first.wait_for(timeout=60_000)
    # ...and it is the pending sample of the adapter's feedback dataset, thumbs down.
    from core.config import load_settings
    from core.datasets.review import list_samples
    from core.db import get_engine
    from core.permissions import SYSTEM

    db = get_engine(url=load_settings(data_dir=wb.data_dir).effective_database_url)
    [sample] = list_samples(db, SYSTEM, "feedback-codeword").items
    assert sample.status == "pending"
    assert sample.messages[-1]["content"] == CORRECTION
    assert sample.provenance["rating"] == "down" and sample.provenance["user"] == "admin"
    assert CODEWORD in sample.metadata["original_answer"]

    # Back on the Chat page the iframe is mounted again with the link it used before: the
    # browser holds that user's chat session, so the chat opens (not a refusal).
    _open(page, "Chat")
    assert page.locator(iframe).get_attribute("src") == src
    frame.locator("#chat-input textarea").wait_for(timeout=60_000)
