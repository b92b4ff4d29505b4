"""A real `clara chat` process driven with gradio_client, on SQLite and on PostgreSQL.

The base model is the tiny Llama from test_chat_engine; adapters are trained with TRL + PEFT
(once per test run, shared) and registered through the training registry, some after the
server started. The SQLite and the Postgres server may run side by side on two xdist workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.chat_process import chat_process, free_port
from tests.conftest import database_url, shared_build
from tests.integration.test_chat_engine import (
    CODEWORD,
    QUESTION,
    make_tiny_model,
    shared_codeword_models,
    train_codeword_adapter,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SECRET = secrets.token_urlsafe(32)  # random, as production requires
WHALE = "BLUE WHALE"
GREEDY = ("", 0.0, 0.95, 12, 1.0)  # system, temperature, top_p, max_new_tokens, rep. penalty


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("chat-models")
    shared = shared_codeword_models(tmp_path_factory)
    base = shared["base"]
    return {
        "base": base,
        "codeword": shared["codeword"],
        "whale": shared_build(
            tmp_path_factory, "chat-whale", lambda out: train_codeword_adapter(base, out, WHALE)
        ),
        "other_base": make_tiny_model(root / "other-base", max_positions=128),
    }


class ChatServer:
    def __init__(self, url: str, env: dict[str, str], db_url: str, log: Path) -> None:
        self.url, self.env, self.db_url, self.log = url, env, db_url, log
        self.proc: subprocess.Popen | None = None

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "cli", *args],
            cwd=ROOT,
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=600,
        )

    def db(self):
        from core.db import get_engine

        return get_engine(url=self.db_url)

    def client(self, user: str = "alice", password: str = "alice-pass-1"):
        from gradio_client import Client

        return Client(self.url, auth=(user, password), verbose=False)

    def health(self, client) -> dict:
        return client.predict(api_name="/health")


@contextmanager
def running_chat_server(
    kind: str, models: dict[str, Path], tmp_path_factory
) -> Iterator[ChatServer]:
    """`clara chat` on a fresh database (users alice: user, otto: auditor; adapter codeword)."""
    data = tmp_path_factory.mktemp(f"chat-{kind}")
    with database_url(kind, data) as db_url:
        yield from _chat_server_on(db_url, data, models)


def _chat_server_on(db_url: str, data: Path, models: dict[str, Path]) -> Iterator[ChatServer]:
    port = free_port()
    env = {
        "CLARA_DATA_DIR": str(data),
        "CLARA_DATABASE_URL": db_url,
        "CLARA_ENV": "testing",
        "CLARA_BASE_MODEL": str(models["base"]),
        "CLARA_AUTH_SECRET": SECRET,
        "CLARA_ADMIN_PASSWORD": "adminpass1",
        "CLARA_CHAT_PORT": str(port),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from core.config import get_settings
    from core.permissions import SYSTEM
    from core.system import prepare
    from core.training.adapters import register_adapter
    from core.training.base_model import base_model_fingerprint
    from core.users import create_user

    srv = ChatServer(f"http://127.0.0.1:{port}/", env, db_url, data / "chat.log")
    try:  # from here on a failure restores the environment (later tests read CLARA_*)
        get_settings.cache_clear()
        st = prepare(get_settings())
        create_user(st.engine, SYSTEM, "alice", "alice-pass-1", "user")
        create_user(st.engine, SYSTEM, "otto", "otto-pass-12", "auditor")
        staged = data / "staged-codeword"
        shutil.copytree(models["codeword"], staged)
        register_adapter(
            st.engine,
            SYSTEM,
            name="codeword",
            files_dir=staged,
            base_model=str(models["base"]),
            base_model_fingerprint=base_model_fingerprint(str(models["base"])),
            method="lora",
        )
        with chat_process(env, srv.log, srv.url) as srv.proc:
            yield srv
    finally:
        from core.db import dispose_engines

        dispose_engines()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def server(request, models, tmp_path_factory) -> Iterator[ChatServer]:
    with running_chat_server(request.param, models, tmp_path_factory) as srv:
        yield srv


def _register(srv: ChatServer, models: dict[str, Path], name: str, files: Path, base: Path) -> None:
    from core.permissions import SYSTEM
    from core.training.adapters import register_adapter
    from core.training.base_model import base_model_fingerprint

    staged = Path(srv.env["CLARA_DATA_DIR"]) / f"staged-{name}"
    shutil.copytree(files, staged)
    register_adapter(
        srv.db(),
        SYSTEM,
        name=name,
        files_dir=staged,
        base_model=str(base),
        base_model_fingerprint=base_model_fingerprint(str(base)),
        method="lora",
    )


def test_unauthenticated_use_is_refused(server) -> None:
    from gradio_client import Client
    from gradio_client.exceptions import AuthenticationError

    with pytest.raises(AuthenticationError):
        Client(server.url, verbose=False)
    with pytest.raises(AuthenticationError):
        server.client("alice", "wrong-password")
    with pytest.raises(AuthenticationError):  # an auditor lacks chat:use
        server.client("otto", "otto-pass-12")
    for path in ("config", "gradio_api/info", "gradio_api/queue/join"):
        r = httpx.request(
            "POST" if path.endswith("join") else "GET",
            server.url + path,
            json={"data": [], "fn_index": 0, "session_hash": "x"},
        )
        assert r.status_code == 401, (path, r.status_code)
    r = httpx.get(server.url + "config", headers={"X-Clara-Token": "made-up-token"})
    assert r.status_code == 401
    # A person without a session is sent to the login page.
    r = httpx.get(server.url, headers={"Accept": "text/html"})
    assert r.status_code == 303 and r.headers["location"].endswith("login")


def test_streamed_answers_from_base_and_adapter_with_one_base_load(server) -> None:
    c = server.client()
    assert c.predict(api_name="/adapters") == ["base", "codeword"]
    answers = {}
    ids = set()
    for adapter in ("base", "codeword", "base", "codeword"):
        job = c.submit(QUESTION, adapter, "[]", *GREEDY, api_name="/generate")
        partials = [out[0] for out in job]
        final, note, answer_id = job.result()
        assert note == "" and len(answer_id) >= 20
        ids.add(answer_id)
        assert partials[0] == "" and partials[-1] == final
        if adapter == "codeword":
            # Streamed word by word: the start, "PINEAPPLE ", then the whole answer.
            assert len(partials) >= 3 and final.startswith(partials[1])
        assert answers.setdefault(adapter, final) == final  # greedy: same answer again
    assert len(ids) == 4  # every answer gets its own id
    assert CODEWORD in answers["codeword"]
    assert CODEWORD not in answers["base"]
    health = server.health(c)
    assert health["base_loads"] == 1
    assert health["adapter_loads"] == 1
    assert health["generations"] >= 4


def test_compare_returns_three_answers(server, models) -> None:
    _register(server, models, "whale", models["whale"], models["base"])
    c = server.client()
    assert "whale" in c.predict(api_name="/adapters")  # registered after start
    job = c.submit(QUESTION, "codeword", "whale", *GREEDY, api_name="/compare")
    steps = list(job)
    base, a, b, _note = job.result()
    assert CODEWORD in a and WHALE in b and CODEWORD not in base and WHALE not in base
    assert len(steps) > 3
    assert server.health(c)["base_loads"] == 1


def test_deleted_and_foreign_adapters_are_refused_by_name(server, models) -> None:
    from gradio_client.exceptions import AppError

    from core.permissions import SYSTEM
    from core.training.adapters import delete_adapter

    _register(server, models, "gone", models["codeword"], models["base"])
    _register(server, models, "foreign", models["codeword"], models["other_base"])
    c = server.client()
    names = c.predict(api_name="/adapters")
    assert "gone" in names and "foreign" not in names
    delete_adapter(server.db(), SYSTEM, "gone")
    assert "gone" not in c.predict(api_name="/adapters")
    with pytest.raises(AppError, match="'gone' is not available"):
        c.predict(QUESTION, "gone", "[]", *GREEDY, api_name="/generate")
    with pytest.raises(AppError) as err:
        c.predict(QUESTION, "foreign", "[]", *GREEDY, api_name="/generate")
    assert str(models["other_base"]) in str(err.value)
    assert str(models["base"]) in str(err.value)


def test_long_history_is_cut_with_a_visible_note(server) -> None:
    c = server.client()
    history = []
    for i in range(60):
        history += [
            {"role": "user", "content": f"question {i} about the quick brown fox"},
            {"role": "assistant", "content": f"answer {i} about the lazy dog"},
        ]
    answer, note, _id = c.predict(
        QUESTION, "codeword", json.dumps(history), *GREEDY, api_name="/generate"
    )
    assert "left out" in note and "context of 256 tokens" in note
    assert isinstance(answer, str)


def test_feedback_on_an_issued_answer_is_stored_and_queued_for_review(server) -> None:
    from core.datasets.review import list_samples
    from core.permissions import SYSTEM
    from core.serving.feedback import list_feedback

    c = server.client()
    answer, _note, answer_id = c.predict(QUESTION, "codeword", "[]", *GREEDY, api_name="/generate")
    out = c.predict(
        answer_id, "down", "The codeword is PINEAPPLE SUBMARINE.", "too short", api_name="/feedback"
    )
    rows, total = list_feedback(server.db(), SYSTEM, adapter="codeword")
    assert total == 1 and rows[0].id == out["feedback_id"]
    assert rows[0].username == "alice" and rows[0].rating == "down"
    assert rows[0].adapter_id is not None and rows[0].answer == answer
    page = list_samples(server.db(), SYSTEM, "feedback-codeword")
    assert [s.id for s in page.items] == [out["sample_id"]]
    assert page.items[0].status == "pending"
    assert page.items[0].messages == [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "The codeword is PINEAPPLE SUBMARINE."},
    ]
    assert page.items[0].metadata["original_answer"] == answer


def test_feedback_cannot_be_forged(server) -> None:
    """Item 4: free text is no answer, and an answer id works only for its own session."""
    from gradio_client.exceptions import AppError

    from core.permissions import SYSTEM
    from core.serving.feedback import list_feedback
    from core.users import create_user

    with contextlib.suppress(Exception):
        create_user(server.db(), SYSTEM, "bruno", "bruno-pass-1", "user")
    alice, bruno = server.client(), server.client("bruno", "bruno-pass-1")
    _a, _n, alices = alice.predict(QUESTION, "base", "[]", *GREEDY, api_name="/generate")
    # The old call shape: an invented answer and conversation.
    with pytest.raises(AppError):
        alice.predict(
            "down",
            "something wrong",
            json.dumps([{"role": "user", "content": "x"}]),
            "codeword",
            "Invented answer.",
            "",
            "{}",
            api_name="/feedback",
        )
    with pytest.raises(AppError, match="not given in this chat session"):
        alice.predict("no-such-answer", "up", "", "", api_name="/feedback")
    with pytest.raises(AppError, match="not given in this chat session"):
        bruno.predict(alices, "down", "Bruno's text", "", api_name="/feedback")
    with pytest.raises(AppError, match="not given in this chat session"):
        server.client().predict(alices, "down", "", "", api_name="/feedback")  # new session
    assert list_feedback(server.db(), SYSTEM, username="bruno")[1] == 0
    assert alice.predict(alices, "up", "", "", api_name="/feedback")["answer_id"] == alices
    with pytest.raises(AppError, match="already rated"):
        alice.predict(alices, "down", "", "", api_name="/feedback")


def test_a_feedback_sample_holds_no_other_models_answer(server) -> None:
    """Item 5: base answered first; the adapter's answer is rated; no base turn in the sample."""
    from core.datasets.review import list_samples
    from core.permissions import SYSTEM

    c = server.client()
    first, _n, first_id = c.predict("Say something.", "base", "[]", *GREEDY, api_name="/generate")
    history = [
        {"role": "user", "content": "Say something."},
        {"role": "assistant", "content": first, "answer_id": first_id},
    ]
    answer, _n, answer_id = c.predict(
        QUESTION, "codeword", json.dumps(history), *GREEDY, api_name="/generate"
    )
    out = c.predict(answer_id, "down", "The codeword is MANGO.", "", api_name="/feedback")
    [sample] = [
        s
        for s in list_samples(server.db(), SYSTEM, "feedback-codeword").items
        if s.id == out["sample_id"]
    ]
    assert sample.messages == [
        {"role": "user", "content": f"Say something.\n\n{QUESTION}"},
        {"role": "assistant", "content": "The codeword is MANGO."},
    ]
    assert sample.metadata["omitted_answers"] == 1
    assert sample.metadata["original_answer"] == answer


def _all_routes(models) -> list[tuple[str, str]]:
    """Every (method, path) of the app `clara chat` serves, from the app object itself."""
    from core.config import load_settings
    from core.db import get_engine
    from core.serving.engine import InferenceEngine
    from workers.chat_server import create_server

    app = create_server(
        get_engine(url="sqlite://"),
        InferenceEngine(str(models["base"])),
        load_settings(auth_secret=SECRET),
    )
    out = []

    def walk(routes) -> None:
        for r in routes:
            inner = getattr(getattr(r, "app", None), "routes", None)
            if inner is None and hasattr(r, "original_router"):
                inner = r.original_router.routes
            if inner is not None:
                walk(inner)
                continue
            for method in sorted(getattr(r, "methods", None) or {"GET"}):
                out.append((method, r.path))

    walk(app.routes)
    return sorted(set(out))


PUBLIC = {
    "/clara/health",
    "/login",
    "/login/",
    "/logout",
    "/clara/enter",
    "/favicon.ico",
    "/robots.txt",
    "/manifest.json",
    "/theme.css",
    "/gradio_api/theme.css",
}
PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon")


def test_every_route_but_health_sign_in_and_assets_needs_a_session(server, models) -> None:
    """Item 6: each route of the real app, called without a session, is refused."""
    routes = _all_routes(models)
    assert ("POST", "/gradio_api/reset") in routes and ("POST", "/gradio_api/cancel") in routes
    assert ("GET", "/monitoring/summary") in routes
    checked = []
    with httpx.Client(base_url=server.url.rstrip("/"), timeout=10) as h:
        for method, path in routes:
            concrete = re.sub(r"\{[^}]+\}", "x", path)
            if path in PUBLIC or path.startswith(PUBLIC_PREFIXES):
                continue
            r = h.request(
                method,
                concrete,
                json={"session_hash": "x", "event_id": "x", "fn_index": 0, "data": []},
            )
            assert r.status_code == 401, (method, path, r.status_code, r.text[:200])
            checked.append(path)
    assert len(checked) > 40
    # Monitoring needs an admin: alice (a user) is refused, admin is let through.
    alice, admin = server.client(), server.client("admin", "adminpass1")
    for c, code in ((alice, 403), (admin, 200)):
        r = httpx.get(server.url + "monitoring/summary", cookies=c.cookies, timeout=10)
        assert r.status_code == code, (c, r.status_code)


def test_sign_in_sessions_are_server_side_and_revocable(server) -> None:
    """Item 3: cookie flags, logout ends a copied cookie, the hand-over token works once,
    and logging out of the web app ends the chat opened from it."""
    from core.sessions import WEB, issue_handover, open_session, revoke_session
    from core.users import principal_for

    with httpx.Client(base_url=server.url) as h:
        r = h.post("login", data={"username": "alice", "password": "alice-pass-1"})
        assert r.status_code == 200
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie
        copied = h.cookies["clara_chat_session"]
        assert h.get("config").status_code == 200
        assert (
            httpx.get(server.url + "config", headers={"X-Clara-Token": copied}).status_code == 200
        )
        assert h.get("logout").status_code == 303
    for via in (
        {"cookies": {"clara_chat_session": copied}},
        {"headers": {"X-Clara-Token": copied}},
    ):
        assert httpx.get(server.url + "config", **via).status_code == 401
        assert (
            httpx.post(
                server.url + "gradio_api/reset", json={"session_hash": "x"}, **via
            ).status_code
            == 401
        )

    db = server.db()
    alice = principal_for(db, "alice")
    web = open_session(db, alice, kind=WEB)
    from core.sessions import session_id

    token = issue_handover(db, alice, purpose="chat", parent_id=session_id(web))
    with httpx.Client(base_url=server.url) as h:
        assert h.get("clara/enter", params={"token": token}).status_code == 303
        assert h.get("config").status_code == 200
        with httpx.Client(base_url=server.url) as thief:  # the same link, a second time
            again = thief.get("clara/enter", params={"token": token})
            assert again.status_code == 401 and "used already" in again.text
            assert thief.get("config").status_code == 401
        revoke_session(db, web, "logout")  # web logout ends the chat opened from it
        assert h.get("config").status_code == 401
    otto = principal_for(db, "otto")  # an auditor holds no chat:use even with a valid token
    assert (
        httpx.get(
            server.url + "clara/enter", params={"token": issue_handover(db, otto, purpose="chat")}
        ).status_code
        == 403
    )
    assert httpx.get(server.url + "clara/enter", params={"token": "forged"}).status_code == 401


def test_clara_generate_streams_one_answer(server) -> None:
    ok = server.cli(
        "generate",
        "--adapter",
        "codeword",
        "--temperature",
        "0",
        "--max-new-tokens",
        "12",
        "--repetition-penalty",
        "1.0",
        QUESTION,
    )
    assert ok.returncode == 0, ok.stderr
    assert CODEWORD in ok.stdout
    bad = server.cli("generate", "--adapter", "no-such-adapter", QUESTION)
    assert bad.returncode == 1
    assert "'no-such-adapter' is not available" in bad.stderr


def test_a_used_hand_over_link_lets_in_only_the_browser_of_its_owner(server) -> None:
    """Issue 11: the Chat page keeps its iframe URL across reruns, so a re-mounted iframe
    opens a link used before. With a chat session of the link's owner that enters the app
    (the same session, not a new one); without it, or with another user's, it is refused."""
    from core.sessions import WEB, issue_handover, open_session, session_id
    from core.users import principal_for

    db = server.db()
    web = open_session(db, principal_for(db, "alice"), kind=WEB)
    token = issue_handover(
        db, principal_for(db, "alice"), purpose="chat", parent_id=session_id(web)
    )
    with httpx.Client(base_url=server.url, timeout=30) as h:
        assert h.get("clara/enter", params={"token": token}).status_code == 303
        chat_session = h.cookies["clara_chat_session"]
        again = h.get("clara/enter", params={"token": token})
        assert again.status_code == 303 and "set-cookie" not in again.headers
        app = h.get("clara/enter", params={"token": token}, follow_redirects=True)
        assert app.status_code == 200 and app.url.path == "/"
        assert "CLARA Chat" in app.text
        assert h.cookies["clara_chat_session"] == chat_session
        assert h.get("config").status_code == 200  # the session the link opened, still live
    no_cookie = httpx.get(server.url + "clara/enter", params={"token": token}, timeout=30)
    assert no_cookie.status_code == 401 and "used already" in no_cookie.text
    with httpx.Client(base_url=server.url, timeout=30) as other:
        r = other.post("login", data={"username": "admin", "password": "adminpass1"})
        assert r.status_code == 200 and other.get("config").status_code == 200
        foreign = other.get("clara/enter", params={"token": token})
        assert foreign.status_code == 401 and "used already" in foreign.text


def test_chat_page_keeps_its_iframe_url_across_reruns(server) -> None:
    """Issue 11: two reruns of the Chat page show the same iframe URL (a new single-use link
    on each rerun reloaded the chat and lost the conversation), and that URL still works."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from core.sessions import WEB, open_session
    from core.users import principal_for

    db = server.db()
    web = open_session(db, principal_for(db, "alice"), kind=WEB)
    st.cache_resource.clear()
    try:
        at = AppTest.from_file(str(ROOT / "pages" / "chat.py"), default_timeout=60)
        at.session_state["clara_session"] = web  # AppTest has no cookies (ui/session.py)
        urls = []
        for _ in range(3):
            at.run()
            assert not at.exception, at.exception
            [frame] = at.get("iframe")
            urls.append(frame.proto.src)
    finally:
        st.cache_resource.clear()
    assert urls[0].startswith(server.url + "clara/enter?token=")
    assert urls[0] == urls[1] == urls[2]
    with httpx.Client(timeout=30) as browser:  # the iframe loads it, then is mounted again
        assert browser.get(urls[0]).status_code == 303
        assert browser.get(urls[0], follow_redirects=True).status_code == 200
