"""Prometheus /metrics of the real `clara api`, `clara worker --metrics-port` and `clara
chat` processes: who may scrape them, and that the counters move after a search, a
generation and a job."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.api_server import free_port, running_api_server
from tests.api_training import TRAINING_ENV, module_storage, worker_command
from tests.cli_run import cli_env
from tests.conftest import ROOT
from tests.waiting import wait_until, wait_until_http

pytestmark = pytest.mark.slow

TOKEN = secrets.token_urlsafe(48)
SCRAPE = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def settings(tmp_path_factory, shared_demo_model):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLARA_METRICS_TOKEN", TOKEN)
        with module_storage("sqlite", tmp_path_factory, shared_demo_model) as settings:
            yield settings


@pytest.fixture(scope="module")
def api(settings):
    with running_api_server(settings) as server:
        yield server


@contextmanager
def metrics_worker(settings, port: int) -> Iterator[str]:
    """`clara worker --metrics-port PORT`; yields its metrics URL once it answers."""
    log = settings.data_path / "metrics-worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            worker_command("--metrics-port", str(port)),
            cwd=ROOT,
            env={**cli_env(settings), **TRAINING_ENV},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_until_http(url, proc=proc, log=log.read_text, ok=lambda r: r.status_code == 401)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def value(text: str, name: str, **labels: str) -> float:
    """The sample `name{labels}` of an exposition (0 when absent: nothing counted yet)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def scrape(url: str) -> str:
    r = httpx.get(url, headers=SCRAPE, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return r.text


def test_api_metrics_need_the_scrape_token_or_system_monitor(api):
    url = api.url + "/metrics"
    assert httpx.get(url, timeout=30).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}, timeout=30).status_code == 401
    with api.client("auditor") as auditor:
        refused = auditor.get("/metrics")
    assert refused.status_code == 403 and "system:monitor" in refused.text
    with api.client("admin") as admin:
        assert admin.get("/metrics").status_code == 200
    assert "clara_database_up 1.0" in scrape(url)


def test_search_generation_and_ingest_move_the_api_counters(api):
    url = api.url + "/metrics"
    before = scrape(url)
    with api.client("admin") as admin:
        upload = admin.post(
            "/api/v1/corpus/documents",
            files={"files": ("hund.md", "# Hundesteuer\n\nDer erste Hund kostet 120 Euro.\n")},
            data={"embed": "later"},
        )
        assert upload.status_code == 200, upload.text
        found = admin.post("/api/v1/corpus/search", json={"query": "Hund", "mode": "keyword"})
        assert found.status_code == 200, found.text
        ask = [{"role": "user", "content": "Hund?"}]
        answer = admin.post(
            "/v1/chat/completions", json={"model": "base", "max_tokens": 4, "messages": ask}
        )
        assert answer.status_code == 200, answer.text
    after = scrape(url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("clara_search_duration_seconds_count", mode="keyword") == 1
    assert moved("clara_generation_requests_total", outcome="complete") == 1
    assert moved("clara_generation_first_token_seconds_count") == 1
    usage = answer.json()["usage"]
    assert moved("clara_generation_tokens_sum", kind="prompt") == usage["prompt_tokens"]
    assert moved("clara_generation_tokens_sum", kind="completion") == usage["completion_tokens"]
    assert moved("clara_corpus_documents") == 1
    assert value(after, "clara_services", kind="api", status="live") == 1


def test_a_job_moves_the_worker_and_database_counters(api, settings):
    from core.db import get_engine
    from core.permissions import SYSTEM
    from core.training.jobs import load_job, submit_sleep_job

    engine = get_engine(settings)
    with metrics_worker(settings, free_port()) as url:
        before = scrape(url)
        job = submit_sleep_job(engine, SYSTEM, 0.2, name="metrics-sleep")
        wait_until(lambda: load_job(engine, job.id).state == "succeeded", "the sleep job", 120)
        counted = {"kind": "sleep", "outcome": "succeeded"}
        wait_until(
            lambda: value(scrape(url), "clara_worker_jobs_total", **counted), "the count", 30
        )
        after = scrape(url)
    assert value(before, "clara_worker_jobs_total", kind="sleep", outcome="succeeded") == 0
    assert value(after, "clara_worker_running_jobs") == 0
    assert value(after, "clara_jobs", kind="sleep", state="succeeded") == 1
    assert value(after, "clara_job_duration_seconds_count", kind="sleep", state="succeeded") == 1
    assert value(after, "clara_job_queue_wait_seconds_count", kind="sleep") == 1
    assert value(after, "clara_services", kind="worker", status="live") == 1
    # The API reads the same database: the same job counts, wherever Prometheus asks.
    assert value(scrape(api.url + "/metrics"), "clara_jobs", kind="sleep", state="succeeded") == 1


def test_worker_metrics_refuse_a_scraper_without_the_token(settings):
    with metrics_worker(settings, free_port()) as url:
        assert httpx.get(url, timeout=30).status_code == 401
        assert "clara_worker_running_jobs" in scrape(url)


def test_worker_metrics_beyond_loopback_need_a_token(settings):
    env = {**cli_env(settings), "CLARA_WORKER_METRICS_HOST": "0.0.0.0"}
    env.pop("CLARA_METRICS_TOKEN")
    r = subprocess.run(
        [sys.executable, "-m", "cli", "worker", "--once", "--metrics-port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert "CLARA_METRICS_TOKEN" in r.stderr


def test_chat_server_metrics_at_their_own_path(settings):
    port = free_port()
    env = {**cli_env(settings), "CLARA_CHAT_PORT": str(port)}
    log = settings.data_path / "chat.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "chat"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_http(base + "/clara/health", limit=180, proc=proc, log=log.read_text)
        assert httpx.get(base + "/clara/metrics", timeout=30).status_code == 401
        text = scrape(base + "/clara/metrics")
        assert "# TYPE clara_generation_requests_total counter" in text
        assert "clara_jobs" not in text  # the database's families come from the API and workers
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def test_every_metric_the_alert_rules_use_is_exported(api, settings):
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    used = {
        name
        for group in alerts["groups"]
        for rule in group["rules"]
        for name in re.findall(r"\bclara_\w+", rule["expr"])
    }
    exported = set(re.findall(r"^# TYPE (\S+)", scrape(api.url + "/metrics"), re.M))
    with metrics_worker(settings, free_port()) as url:
        exported |= set(re.findall(r"^# TYPE (\S+)", scrape(url), re.M))
    assert used, alerts
    assert {re.sub(r"_(bucket|count|sum)$", "", n) for n in used} <= exported
