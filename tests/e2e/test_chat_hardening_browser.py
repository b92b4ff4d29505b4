"""The chat server in Chromium (issue 10, items 7 and 16): a prompt with a Markdown image
or an <img> tag makes the browser fetch nothing and shows as typed; every answer names the
model that wrote it and says when earlier turns were left out; compare answers are labelled
with their adapter and grow with their text instead of being cut off.

`clara chat` runs alone (the Streamlit page is tested in test_chat_page.py), signed in
through its own login form.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import set_number
from tests.integration.test_chat_engine import CODEWORD, QUESTION, shared_codeword_models
from tests.integration.test_chat_server import ChatServer, running_chat_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def chat(tmp_path_factory) -> Iterator[ChatServer]:
    shared = shared_codeword_models(tmp_path_factory)
    models = {"base": shared["base"], "codeword": shared["codeword"]}
    with running_chat_server("sqlite", models, tmp_path_factory) as srv:
        yield srv


@pytest.fixture
def pixel_server() -> Iterator[tuple[str, list[str]]]:
    """A server that records every request: any fetch of an image named in chat text."""
    hits: list[str] = []

    class Record(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Record)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}", hits
    srv.shutdown()


def _sign_in(page, chat: ChatServer) -> None:
    page.goto(chat.url + "login")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "alice-pass-1")
    page.click("button[type=submit]")
    page.locator("#chat-input textarea").wait_for(timeout=60_000)


def _ask(page, text: str) -> None:
    page.locator("#chat-input textarea").fill(text)
    page.locator("#chat-send").click()


def _pick(page, elem: str, name: str) -> None:
    page.locator(f"#{elem} input").click()
    page.get_by_role("option", name=name, exact=True).click()


def test_images_and_html_in_chat_text_are_shown_as_text_and_fetch_nothing(
    chat, page, pixel_server
) -> None:
    pixel, hits = pixel_server
    _sign_in(page, chat)
    page.get_by_text("Generation settings").click()
    set_number(page, "chat-max-new-tokens", "8")
    prompt = (
        f'Look ![md]({pixel}/markdown.png) and <img src="{pixel}/tag.png"> '
        f"and ![ref][r]\n\n[r]: {pixel}/reference.png"
    )
    _ask(page, prompt)
    conversation = page.locator("#chat-conversation")
    conversation.get_by_text("**base**", exact=False).or_(
        conversation.locator("strong", has_text="base")
    ).first.wait_for(timeout=60_000)
    page.wait_for_timeout(1500)  # time for any image the page would load
    assert hits == []
    assert conversation.locator("img[src^='http://127.0.0.1']").count() == 0
    shown = conversation.inner_text()
    assert f"![md]({pixel}/markdown.png)" in shown
    assert f'<img src="{pixel}/tag.png">' in shown


def test_answers_name_their_model_and_say_when_turns_were_left_out(chat, page) -> None:
    _sign_in(page, chat)
    page.get_by_text("Generation settings").click()
    set_number(page, "chat-temperature", "0")
    set_number(page, "chat-max-new-tokens", "12")
    _pick(page, "chat-adapter", "codeword")
    _ask(page, QUESTION)
    conversation = page.locator("#chat-conversation")
    conversation.get_by_text(CODEWORD).wait_for(timeout=60_000)
    bubbles = conversation.locator(".bot, [data-testid='bot']")
    assert "codeword" in bubbles.last.inner_text()
    _pick(page, "chat-adapter", "base")
    # A long question: with the context of 256 tokens, the earlier exchange must go.
    _ask(page, " ".join(["the quick brown fox jumps over the lazy dog"] * 40))
    bubbles.nth(1).wait_for(timeout=60_000)
    last = bubbles.last
    last.get_by_text("left out to fit the context", exact=False).wait_for(timeout=60_000)
    text = last.inner_text()
    assert text.lstrip().startswith("base")
    assert "codeword" in bubbles.first.inner_text()  # the first answer keeps its label


def test_compare_answers_are_labelled_and_not_cut_off(chat, page) -> None:
    _sign_in(page, chat)
    page.get_by_text("Generation settings").click()  # shared by both tabs
    set_number(page, "chat-temperature", "1")
    set_number(page, "chat-max-new-tokens", "240")
    page.get_by_role("tab", name="Compare").click()
    _pick(page, "compare-a", "codeword")
    page.get_by_text("Adapter A: codeword").wait_for()
    page.get_by_text("Adapter B: none chosen").wait_for()
    page.locator("#compare-prompt textarea").fill(QUESTION)
    base_box = page.locator("#compare-out-base textarea")
    # The tiny model samples (temperature 1) and may stop early: compare again until the base
    # answer is long enough that a fixed-height box would have cut it off.
    for _ in range(4):
        page.evaluate("() => { document.querySelector('#compare-out-b textarea').value = '' }")
        page.locator("#compare-run").click()
        page.wait_for_function(  # the last box is filled when the whole comparison is done
            "() => document.querySelector('#compare-out-b textarea').value.includes('no adapter')",
            timeout=180_000,
        )
        if len(base_box.input_value()) > 200:
            break
    assert len(base_box.input_value()) > 200
    # The box grew to hold the whole answer: nothing hidden below its edge.
    fits = base_box.evaluate("el => el.scrollHeight <= el.clientHeight + 2")
    assert fits, base_box.evaluate("el => [el.scrollHeight, el.clientHeight]")
