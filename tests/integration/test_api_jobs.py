"""/api/v1/jobs against the real `clara api` server, on SQLite and on PostgreSQL: who may do
what (as core/permissions.py says, denied and done actions in the audit log), refused specs
naming their field, logs, and the live event stream of a real training job run by a real
`clara worker`, cancelled while it runs.

One server per engine for the module; the worker starts only for the tests that train, so
the jobs queued before stay queued.
"""

from __future__ import annotations

import time

import httpx
import psutil
import pytest

from core.permissions import has_permission
from tests.api_server import ROLES, running_api_server
from tests.api_training import (
    YAML,
    audit_mark,
    audit_since,
    frozen_version,
    module_storage,
    running_worker,
    spec_yaml,
    sse_events,
)

pytestmark = pytest.mark.slow

JOBS = "/api/v1/jobs"


class Env:
    def __init__(self, api, settings, engine, kind: str) -> None:
        self.api, self.settings, self.engine, self.kind = api, settings, engine, kind

    def once(self, why: str) -> None:
        """Run the calling test on one engine only (the behaviour does not depend on it)."""
        if self.kind != "sqlite":
            pytest.skip(why)

    def submit(self, name: str, user: str = "admin", **trainer) -> int:
        r = self.api.client(user).post(JOBS, content=spec_yaml(name, **trainer), headers=YAML)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def job(self, job_id: int) -> dict:
        r = self.api.client("admin").get(f"{JOBS}/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def env(request, tmp_path_factory, shared_demo_model):
    from core.db import get_engine

    with (
        module_storage(request.param, tmp_path_factory, shared_demo_model) as settings,
        running_api_server(settings) as api,
    ):
        engine = get_engine(settings)
        frozen_version(engine)
        yield Env(api, settings, engine, request.param)


def _allowed(role: str, permission: str, ok: int = 200) -> int:
    return ok if has_permission(role, permission) else 403


def _one_audit(env: Env, mark: int, action: str, actor: str, outcome: str):
    rows = [r for r in audit_since(env.engine, mark) if r.action == action]
    assert [(r.actor, r.outcome) for r in rows] == [(actor, outcome)], rows
    return rows[0]


def test_every_route_needs_credentials(env: Env) -> None:
    job_id = env.submit("anon-target")
    routes = [
        ("POST", JOBS),
        ("GET", JOBS),
        ("GET", f"{JOBS}/{job_id}"),
        ("POST", f"{JOBS}/{job_id}/cancel"),
        ("POST", f"{JOBS}/{job_id}/retry"),
        ("GET", f"{JOBS}/{job_id}/logs"),
        ("GET", f"{JOBS}/{job_id}/events"),
    ]
    anonymous = env.api.client(None)
    forged = httpx.Client(
        base_url=env.api.url, headers={"Authorization": "Bearer not-a-token"}, timeout=30
    )
    for method, path in routes:
        for client in (anonymous, forged):
            r = client.request(method, path, content=spec_yaml("anon"), headers=YAML)
            assert r.status_code == 401, (method, path, r.status_code, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
    assert env.job(job_id)["job"]["state"] == "queued"  # nothing happened to it
    env.api.client("admin").post(f"{JOBS}/{job_id}/cancel").raise_for_status()


def _first_state(client: httpx.Client, job_id: int) -> tuple[int, dict | None]:
    with client.stream("GET", f"{JOBS}/{job_id}/events") as r:
        if r.status_code != 200:
            r.read()
            return r.status_code, r.json()
        assert r.headers["content-type"].startswith("text/event-stream")
        for event in sse_events(r):
            if event.event == "state":
                return 200, event.data
    raise AssertionError("the stream ended without a state event")


@pytest.mark.parametrize("role", ROLES)
def test_each_role_may_do_what_its_permissions_allow(env: Env, role: str) -> None:
    """Every route, as `role`: allowed exactly when core/permissions.py says so; a refused
    change is 403 with a 'denied' audit row, a done one has an 'ok' row."""
    client = env.api.client(role)
    target = env.submit(f"target-{role}")  # a queued job for this role to act on

    read = _allowed(role, "training:read")
    r = client.get(JOBS)
    assert r.status_code == read, r.text
    if read == 200:
        assert target in [j["id"] for j in r.json()["jobs"]]
    else:
        assert "training:read" in r.json()["detail"]
    r = client.get(f"{JOBS}/{target}")
    assert r.status_code == read, r.text
    if read == 200:
        shown = r.json()
        assert shown["job"]["state"] == "queued"
        assert shown["job"]["spec"]["name"] == f"target-{role}"
        assert shown["progress"] == 0.0 and shown["adapter"] is None
        assert shown["metrics"]["rows"] == 0 and shown["metrics"]["last_loss"] is None
    r = client.get(f"{JOBS}/{target}/logs")
    assert r.status_code == read, r.text
    if read == 200:
        assert r.text == "" and r.headers["x-log-next-offset"] == "0"
    status, first = _first_state(client, target)
    assert status == read, first
    if read == 200:
        assert first["id"] == target and first["state"] == "queued"

    # Submit.
    mark = audit_mark(env.engine)
    r = client.post(JOBS, content=spec_yaml(f"own-{role}"), headers=YAML)
    assert r.status_code == _allowed(role, "training:create", 201), r.text
    if r.status_code == 201:
        own = r.json()
        assert own["state"] == "queued" and own["owner"] == role and own["name"] == f"own-{role}"
        assert r.headers["location"].endswith(f"{JOBS}/{own['id']}")
        row = _one_audit(env, mark, "training.submit", role, "ok")
        assert row.target == f"own-{role}" and row.detail["job_id"] == own["id"]
        env.api.client("admin").post(f"{JOBS}/{own['id']}/cancel").raise_for_status()
    else:
        assert "training:create" in r.json()["detail"]
        _one_audit(env, mark, "training.submit", role, "denied")

    # Cancel, then retry, then (as admin) cancel again: nothing stays queued.
    may_cancel = has_permission(role, "training:cancel")
    mark = audit_mark(env.engine)
    r = client.post(f"{JOBS}/{target}/cancel")
    assert r.status_code == (200 if may_cancel else 403), r.text
    if may_cancel:
        assert r.json()["state"] == "cancelled"
        _one_audit(env, mark, "training.cancel", role, "ok")
    else:
        _one_audit(env, mark, "training.cancel", role, "denied")
        env.api.client("admin").post(f"{JOBS}/{target}/cancel").raise_for_status()
    mark = audit_mark(env.engine)
    r = client.post(f"{JOBS}/{target}/retry")
    assert r.status_code == (200 if may_cancel else 403), r.text
    if may_cancel:
        assert r.json()["state"] == "queued"
        _one_audit(env, mark, "training.retry", role, "ok")
        env.api.client("admin").post(f"{JOBS}/{target}/cancel").raise_for_status()
    else:
        _one_audit(env, mark, "training.retry", role, "denied")
    assert env.job(target)["job"]["state"] == "cancelled"


def test_a_refused_spec_names_its_field_and_nothing_is_queued(env: Env) -> None:
    client = env.api.client("trainer")
    before = client.get(JOBS, params={"limit": 500}).json()["jobs"]

    typo = spec_yaml("typo").replace("learning_rate:", "learnig_rate:")
    mark = audit_mark(env.engine)
    r = client.post(JOBS, content=typo, headers={"Content-Type": "text/yaml; charset=utf-8"})
    assert r.status_code == 422, r.text
    body = r.json()
    line = next(i for i, t in enumerate(typo.splitlines(), 1) if "learnig_rate" in t)
    assert body["error"] == "SpecError"
    assert body["fields"] == [
        {
            "field": "trainer.learnig_rate",
            "problem": "unknown key 'learnig_rate'; did you mean 'learning_rate'?",
            "line": line,
            "suggestion": "learning_rate",
        }
    ]
    assert body["detail"] == (
        f"spec:{line}: trainer.learnig_rate: unknown key 'learnig_rate'; "
        "did you mean 'learning_rate'?"
    )
    _one_audit(env, mark, "training.submit", "trainer", "failed")

    # The same as JSON; a misspelt top-level key; a value of the wrong type.
    import yaml

    data = yaml.safe_load(spec_yaml("typo"))
    data["dataset_verison"] = data.pop("dataset_version")
    r = client.post(JOBS, json=data)
    assert r.status_code == 422, r.text
    (field,) = r.json()["fields"]
    assert field["field"] == "dataset_verison" and field["suggestion"] == "dataset_version"
    assert field["line"] is not None
    data = yaml.safe_load(spec_yaml("typo"))
    data["trainer"]["max_steps"] = "many"
    r = client.post(JOBS, json=data)
    assert r.status_code == 422 and r.json()["fields"][0]["field"] == "trainer.max_steps"

    # Malformed text: the problem and its line.
    r = client.post(JOBS, content="name: x\n  bad: [", headers=YAML)
    assert r.status_code == 422 and "not valid YAML" in r.json()["detail"], r.text
    r = client.post(
        JOBS, content='{"name": "x",\n "trainer": }', headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("spec:2: not valid JSON")
    r = client.post(JOBS, content=b"name: \xff\xfe", headers=YAML)
    assert r.status_code == 422 and "not UTF-8" in r.json()["detail"]
    r = client.post(JOBS, content="- a list", headers=YAML)
    assert r.status_code == 422 and "YAML mapping" in r.json()["detail"]

    # Valid, but what it names is missing.
    r = client.post(JOBS, content=spec_yaml("typo", version="faq@v9"), headers=YAML)
    assert r.status_code == 422, r.text
    (field,) = r.json()["fields"]
    assert field["field"] == "dataset_version" and "no dataset version 'faq@v9'" in field["problem"]

    # Neither YAML nor JSON.
    r = client.post(JOBS, content=spec_yaml("typo"), headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and "application/yaml" in r.json()["detail"]
    assert client.get(JOBS, params={"limit": 500}).json()["jobs"] == before


def test_list_filters_and_pages(env: Env) -> None:
    client = env.api.client("auditor")
    queued = env.submit("listed")
    everything = client.get(JOBS, params={"limit": 500}).json()["jobs"]
    ids = [j["id"] for j in everything]
    assert ids == sorted(ids, reverse=True) and len(ids) >= 4
    r = client.get(JOBS, params={"state": "queued"}).json()
    assert [j["id"] for j in r["jobs"]] == [queued]
    r = client.get(JOBS, params=[("state", "queued"), ("state", "cancelled")]).json()
    assert sorted(j["id"] for j in r["jobs"]) == sorted(ids)
    assert client.get(JOBS, params={"kind": "sft"}).json()["jobs"] == everything
    assert client.get(JOBS, params={"kind": "score"}).json()["jobs"] == []
    page1 = client.get(JOBS, params={"limit": 2}).json()
    page2 = client.get(JOBS, params={"limit": 2, "offset": page1["next_offset"]}).json()
    assert [j["id"] for j in page1["jobs"] + page2["jobs"]] == ids[:4]
    last = client.get(JOBS, params={"limit": 500}).json()
    assert last["next_offset"] is None
    r = client.get(JOBS, params={"state": "runing"})
    assert r.status_code == 422 and r.json()["fields"][0]["field"] == "state.0"
    r = client.get(JOBS, params={"limit": 0})
    assert r.status_code == 422 and r.json()["fields"][0]["field"] == "limit"
    assert client.get(f"{JOBS}/999999").status_code == 404
    assert client.get(f"{JOBS}/999999/events").status_code == 404
    assert client.get(f"{JOBS}/999999/logs").status_code == 404
    trainer = env.api.client("trainer")
    assert trainer.post(f"{JOBS}/999999/cancel").status_code == 404
    r = trainer.post(f"{JOBS}/{queued}/retry")
    assert r.status_code == 409 and "only failed or cancelled" in r.json()["detail"]
    trainer.post(f"{JOBS}/{queued}/cancel").raise_for_status()
    r = trainer.post(f"{JOBS}/{queued}/cancel")
    assert r.status_code == 409 and "is cancelled" in r.json()["detail"]


def _cpu_seconds(proc: psutil.Process, seconds: float) -> float:
    before = sum(proc.cpu_times()[:2])
    time.sleep(seconds)
    return sum(proc.cpu_times()[:2]) - before


def test_a_client_that_leaves_stops_the_polling(env: Env) -> None:
    """Open streams of a job that does not end poll the database; once their clients are
    gone the server is as quiet as before they came (its CPU time says so)."""
    env.once("closing a stream is the server's, not the database's")
    job_id = env.submit("watched")
    server = psutil.Process(env.api.proc.pid)
    client = env.api.client("analyst", timeout=30)
    streams, readers = [], []
    try:
        for _ in range(30):
            cm = client.stream("GET", f"{JOBS}/{job_id}/events")
            streams.append(cm)
            # Kept: a reader dropped closes its connection (httpx), so the client leaves.
            readers.append(sse_events(cm.__enter__()))
            assert next(readers[-1]).event == "state"
        watching = _cpu_seconds(server, 4)
    finally:
        for cm in streams:
            cm.__exit__(None, None, None)
    time.sleep(2)  # each stream notices within one poll interval
    left = _cpu_seconds(server, 4)
    assert watching > 0.05 and left < watching / 4, (left, watching)
    assert env.api.client("admin").get(JOBS).status_code == 200
    env.api.client("admin").post(f"{JOBS}/{job_id}/cancel").raise_for_status()


@pytest.fixture(scope="module")
def worker(env: Env):
    with running_worker(env.settings) as proc:
        yield proc


def test_events_follow_a_real_training_job_to_its_end(env: Env, worker) -> None:
    job_id = env.submit("live", user="trainer")
    events = []
    with env.api.client("auditor", timeout=600).stream("GET", f"{JOBS}/{job_id}/events") as r:
        assert r.status_code == 200
        reader = sse_events(r)
        for event in reader:
            events.append(event)
            if event.event == "end":
                break
        rest = list(reader)
    assert rest == []  # the stream closed after "end"
    states = [e.data["state"] for e in events if e.event == "state"]
    assert states[0] in ("queued", "running") and "running" in states, states
    assert states[-1] == "succeeded"
    assert events[-1].event == "end" and events[-1].data["state"] == "succeeded"
    assert events[-1].data["adapter_id"] is not None and events[-1].data["progress"] == 1.0
    metrics = [e.data for e in events if e.event == "metric"]
    assert [m["step"] for m in metrics if m["phase"] == "train"] == [2, 4, 6, 8]
    train = [m for m in metrics if m["phase"] == "train"]
    assert all(m["job_id"] == job_id and isinstance(m["loss"], float) for m in train)
    assert {"eval_before", "eval_after"} <= {m["phase"] for m in metrics}
    steps = [e.data["step"] for e in events if e.event == "state"]
    assert steps == sorted(steps)

    shown = env.job(job_id)
    assert shown["job"]["state"] == "succeeded" and shown["progress"] == 1.0
    assert shown["adapter"] == {"id": events[-1].data["adapter_id"], "name": "live"}
    summary = shown["metrics"]
    assert summary["rows"] == len(metrics) and summary["last_step"] == 8
    assert summary["last_loss"] < summary["first_loss"]
    assert summary["eval_perplexity_after"] < summary["eval_perplexity_before"]

    # Reconnecting after the last metric seen: no history again, the final state at once.
    again = env.api.client("trainer")
    with again.stream(
        "GET", f"{JOBS}/{job_id}/events", params={"since_metric": metrics[-1]["id"]}
    ) as r:
        replay = list(sse_events(r))
    assert [e.event for e in replay] == ["state", "end"]

    # The log: its tail, then read from the start in parts.
    r = again.get(f"{JOBS}/{job_id}/logs", params={"tail": 3})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    size = int(r.headers["x-log-size"])
    assert size > 0 and int(r.headers["x-log-next-offset"]) == size
    assert 1 <= len(r.text.splitlines()) <= 3
    whole = again.get(f"{JOBS}/{job_id}/logs", params={"offset": 0}).text
    assert (
        whole.encode()
        == (env.settings.data_path / "logs" / "training")
        .joinpath(f"job-{job_id}.log")
        .read_bytes()[: len(whole.encode())]
    )
    assert r.text.splitlines()[-1] in whole
    part = again.get(f"{JOBS}/{job_id}/logs", params={"offset": 10})
    assert part.headers["x-log-offset"] == "10"
    assert part.text.startswith(whole.encode()[10:].decode())
    past = again.get(f"{JOBS}/{job_id}/logs", params={"offset": 10**9})
    assert past.text == "" and past.headers["x-log-offset"] == past.headers["x-log-size"]


def test_cancel_of_a_running_job_ends_its_stream_cancelled(env: Env, worker) -> None:
    env.once("cancel is one core path on both engines (core.training.queue.request_cancel)")
    job_id = env.submit("long", user="trainer", max_steps=400, save_steps=200, logging_steps=1)
    events, cancelled_at = [], None
    with env.api.client("trainer", timeout=600).stream("GET", f"{JOBS}/{job_id}/events") as r:
        for event in sse_events(r):
            events.append(event)
            training = event.event == "metric" and event.data["phase"] == "train"
            if training and cancelled_at is None:  # it trains: cancel it, once
                cancelled_at = event.data["step"]
                mark = audit_mark(env.engine)
                c = env.api.client("trainer").post(f"{JOBS}/{job_id}/cancel")
                assert c.status_code == 200, c.text
                assert c.json()["state"] == "running" and c.json()["cancel_requested"] is True
                _one_audit(env, mark, "training.cancel", "trainer", "ok")
            if event.event == "end":
                break
    final = events[-1].data
    assert events[-1].event == "end" and final["state"] == "cancelled", final
    assert final["checkpoint"] and cancelled_at <= final["step"] < 400
    assert final["error"] == f"cancelled at step {final['step']}, checkpoint saved"
    assert final["adapter_id"] is None
    shown = env.job(job_id)
    assert shown["job"]["state"] == "cancelled" and shown["adapter"] is None


def test_a_live_stream_ends_when_its_credentials_are_revoked(env: Env) -> None:
    """A revoked key (or a disabled user) must not keep watching a job: the open stream
    re-checks its caller and ends with an `error` event, as the next request would be
    refused."""
    from core.api_keys import create_api_key, revoke_api_key
    from core.permissions import SYSTEM

    env.once("the re-check is the server's, not the database's")
    job_id = env.submit("watched-by-a-key")  # no worker here: it stays queued
    info, key = create_api_key(env.engine, SYSTEM, "dashboard", username="analyst")
    headers = {"Authorization": f"Bearer {key}"}
    seen = []
    started = time.monotonic()
    with httpx.stream(
        "GET", f"{env.api.url}{JOBS}/{job_id}/events", headers=headers, timeout=60
    ) as r:
        assert r.status_code == 200
        for event in sse_events(r):
            seen.append(event)
            if len(seen) == 1:
                assert event.event == "state"
                revoke_api_key(env.engine, SYSTEM, info.id)
            if event.event == "error":
                break
    assert seen[-1].event == "error" and {e.event for e in seen[:-1]} == {"state"}, seen
    assert seen[-1].data == {"detail": "credentials no longer valid"}
    assert time.monotonic() - started < 30
