"""core.ops on both engines: heartbeats going stale and being replaced, health's queue and
process checks, the database's metric families and the activity frames. The processes that
write heartbeats are tested for real in test_ops_health.py (SQLite)."""

from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.ops.activity import audit_activity, job_activity
from core.ops.health import health_report
from core.ops.heartbeats import ProcessHeartbeat, forget_stale_processes, list_processes
from core.ops.metrics import DatabaseCollector, exposition, metrics_registry
from core.permissions import PermissionDenied
from core.training.jobs import submit_sleep_job
from tests.conftest import principal

STALE = 1.0


def samples(engine, settings) -> dict[tuple, float]:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(DatabaseCollector(engine, settings))
    text, _ = exposition(registry)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_a_silent_process_goes_stale_and_a_newer_one_replaces_it(db_engine, admin):
    old = ProcessHeartbeat(db_engine, "worker", lambda: {"kinds": ["sft", "sleep"]})
    old.start()
    (info,) = list_processes(db_engine, STALE)
    assert not info.stale and info.detail["kinds"] == ["sft", "sleep"]
    time.sleep(STALE + 0.2)  # old stops beating without a clean exit
    (info,) = list_processes(db_engine, STALE)
    assert info.stale and not info.replaced

    narrow = ProcessHeartbeat(db_engine, "worker", lambda: {"kinds": ["sleep"]})
    narrow.start()  # takes fewer kinds: not a replacement
    assert [p.replaced for p in list_processes(db_engine, STALE)] == [False, False]
    wide = ProcessHeartbeat(db_engine, "worker", lambda: {"kinds": ["sft", "sleep", "embed"]})
    wide.start()
    assert list_processes(db_engine, STALE)[0].replaced

    with pytest.raises(PermissionDenied):
        forget_stale_processes(db_engine, principal("auditor"), STALE)
    assert forget_stale_processes(db_engine, admin, STALE) == [info.name]
    narrow.stop()
    wide.stop()
    assert list_processes(db_engine, STALE) == []


def test_health_warns_about_jobs_no_live_worker_takes(db_engine, settings, admin):
    submit_sleep_job(db_engine, admin, 0)
    worker = ProcessHeartbeat(db_engine, "worker", lambda: {"kinds": ["score"]})
    worker.start()
    try:
        report = health_report(db_engine, principal("auditor"), settings, local_gpus=False)
    finally:
        worker.stop()
    checks = {c.name: c for c in report.checks}
    assert checks["queue"].status == "warn" and "1 sleep" in checks["queue"].detail
    assert report.queue["sleep"]["queued"] == 1
    assert report.status == "warn"
    with pytest.raises(PermissionDenied):
        health_report(db_engine, principal("trainer"), settings)


def test_database_families(db_engine, settings, admin):
    submit_sleep_job(db_engine, admin, 0)
    server = ProcessHeartbeat(db_engine, "api", lambda: {"url": "http://x"})
    server.start()
    try:
        found = samples(db_engine, settings)
    finally:
        server.stop()
    assert found[("clara_database_up", ())] == 1
    assert found[("clara_jobs", (("kind", "sleep"), ("state", "queued")))] == 1
    assert found[("clara_queue_oldest_job_age_seconds", (("kind", "sleep"),))] >= 0
    assert found[("clara_services", (("kind", "api"), ("status", "live")))] == 1
    assert found[("clara_corpus_documents", ())] == 0
    assert found[("clara_data_dir_free_bytes", ())] > 0
    assert b"clara_generation_requests_total" in exposition(metrics_registry())[0]


def test_activity_per_hour(db_engine, admin):
    submit_sleep_job(db_engine, admin, 0)
    jobs = job_activity(db_engine, admin, hours=3)
    assert list(jobs.columns) == ["hour", "kind", "event", "jobs"]
    assert len(jobs) == 3 and jobs["jobs"].tolist()[-1] == 1  # every hour, zeros kept
    audit = audit_activity(db_engine, admin, hours=3)
    assert audit.groupby("family")["entries"].sum()["training"] == 1
    with pytest.raises(PermissionDenied):
        job_activity(db_engine, principal("analyst"))
