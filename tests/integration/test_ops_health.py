"""`clara admin health` and the Operations page against a real worker and API server: live
processes with their heartbeats, a worker killed hard, the disk threshold, who may look."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from streamlit.testing.v1 import AppTest

from tests.api_server import running_api_server
from tests.api_training import running_worker
from tests.cli_run import cli_env
from tests.conftest import ROOT, database_url
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

# Heartbeats twice a second, dead after 3 s of silence: a killed worker shows within seconds.
FAST = {"CLARA_HEARTBEAT_SECONDS": "0.5", "CLARA_HEALTH_STALE_SECONDS": "3"}


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    from core.config import get_settings

    data = tmp_path_factory.mktemp("ops-health")
    with database_url("sqlite", data) as url, pytest.MonkeyPatch.context() as mp:
        env = {"CLARA_DATA_DIR": str(data), "CLARA_DATABASE_URL": url, "CLARA_ENV": "testing"}
        for key, value in {**env, **FAST}.items():
            mp.setenv(key, value)
        get_settings.cache_clear()
        yield get_settings()
        get_settings.cache_clear()


@pytest.fixture(scope="module")
def api(settings):
    with running_api_server(settings) as server:
        yield server


def registered(settings, kind: str, pid: int):
    from core.db import get_engine
    from core.ops.heartbeats import list_processes

    found = list_processes(get_engine(settings), settings.health_stale_seconds)
    return next((p for p in found if p.kind == kind and p.pid == pid and not p.stale), None)


def health(settings, *args: str, user: str = "admin", **env: str):
    """`clara admin health --json` (as `user`, with extra environment): rc, report, stderr."""
    r = subprocess.run(
        [sys.executable, "-m", "cli", "admin", "health", "--json", *args],
        cwd=ROOT,
        env={**cli_env(settings, user), **env},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    return r.returncode, (json.loads(r.stdout) if r.stdout.strip() else {}), r.stderr


def check(report: dict, name: str) -> dict:
    return next(c for c in report["checks"] if c["name"] == name)


def test_health_lists_the_worker_and_the_api_with_their_heartbeats(api, settings):
    with running_worker(settings) as proc:
        wait_until(lambda: registered(settings, "worker", proc.pid), "the worker's heartbeat", 60)
        wait_until(lambda: registered(settings, "api", api.proc.pid), "the API's heartbeat", 30)
        rc, report, err = health(settings)
        assert rc == 0, (report, err)
        assert report["status"] == "ok", report["checks"]
        procs = {p["kind"]: p for p in report["processes"]}
        assert procs["worker"]["pid"] == proc.pid and "sft" in procs["worker"]["detail"]["kinds"]
        assert procs["worker"]["detail"]["jobs"] == [] and procs["worker"]["heartbeat_at"]
        assert procs["api"]["pid"] == api.proc.pid
        assert procs["api"]["detail"]["url"] == api.url
        name = f"worker {procs['worker']['host']}:{proc.pid}"
        assert check(report, name)["status"] == "ok"
        for store in ("database", "schema", "vector store", "graph store", "disk", "gpu"):
            assert check(report, store)["status"] == "ok", report["checks"]
        assert check(report, "gpu")["detail"].startswith("none")
    # A clean exit removes the worker's row: nothing is left to look dead.
    rc, report, _ = health(settings)
    assert rc == 0 and [p["kind"] for p in report["processes"]] == ["api"]
    assert check(report, "workers")["status"] == "warn"


def test_a_worker_killed_hard_fails_health_by_name(api, settings):
    from core.audit import read_audit_log
    from core.db import get_engine
    from core.permissions import SYSTEM

    with running_worker(settings) as proc:
        live = wait_until(lambda: registered(settings, "worker", proc.pid), "the heartbeat", 60)
        os.killpg(proc.pid, signal.SIGKILL)
    name = f"worker {live.host}:{proc.pid}"
    wait_until(lambda: registered(settings, "worker", proc.pid) is None, "it to go stale", 30)
    rc, report, _ = health(settings)
    assert rc == 1 and report["status"] == "fail"
    assert check(report, name)["status"] == "fail"
    assert "died or hangs" in check(report, name)["detail"]

    rc, report, err = health(settings, "--forget-stale")
    assert rc == 0, (report, err)
    assert report["forgotten"] == [name]
    assert name not in [c["name"] for c in report["checks"]]
    rows = read_audit_log(get_engine(settings), SYSTEM, action_prefix="system.forget").rows
    assert rows.iloc[0].detail["processes"] == [name]


def test_a_worker_started_after_a_dead_one_on_this_host_clears_it(api, settings):
    from core.db import get_engine
    from core.ops.heartbeats import list_processes

    with running_worker(settings) as dead:
        wait_until(lambda: registered(settings, "worker", dead.pid), "the heartbeat", 60)
        os.killpg(dead.pid, signal.SIGKILL)
    with running_worker(settings) as proc:
        wait_until(lambda: registered(settings, "worker", proc.pid), "the new heartbeat", 60)
        pids = [p.pid for p in list_processes(get_engine(settings), 3) if p.kind == "worker"]
        assert pids == [proc.pid]  # the dead one's pid runs nothing: certainly gone
        rc, report, err = health(settings)
        assert rc == 0, (report, err)


def test_too_little_free_disk_fails(api, settings):
    rc, report, _ = health(settings, CLARA_HEALTH_MIN_FREE_GB="1000000")
    assert rc == 1
    disk = check(report, "disk")
    assert disk["status"] == "fail" and "CLARA_HEALTH_MIN_FREE_GB" in disk["detail"]


def test_auditors_may_look_analysts_may_not(api, settings):
    rc, report, err = health(settings, user="auditor")
    assert rc == 0, err
    assert check(report, "database")["status"] == "ok"
    rc, _, err = health(settings, user="analyst")
    assert rc == 4 and "system:health" in err


# The Operations page ---------------------------------------------------------------------


def page_as(settings, username: str) -> AppTest:
    """The app signed in as `username` with a real session (AppTest has no cookies)."""
    import streamlit as st

    from core import sessions
    from core.db import get_engine
    from core.users import principal_for

    st.cache_resource.clear()
    engine = get_engine(settings)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["clara_session"] = sessions.open_session(
        engine, principal_for(engine, username)
    )
    at.run()
    assert not at.exception, at.exception
    return at


def operations(settings, username: str) -> AppTest:
    at = page_as(settings, username)
    at.switch_page("pages/operations.py").run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["Operations"]
    return at


def test_operations_page_for_admins_and_auditors(api, settings):
    from core.db import get_engine
    from core.permissions import SYSTEM
    from core.training.jobs import submit_sleep_job

    submit_sleep_job(get_engine(settings), SYSTEM, 0, name="charted")  # something to chart
    with running_worker(settings) as proc:
        live = wait_until(lambda: registered(settings, "worker", proc.pid), "the heartbeat", 60)
        os.killpg(proc.pid, signal.SIGKILL)
    wait_until(lambda: registered(settings, "worker", proc.pid) is None, "it to go stale", 30)
    name = f"worker {live.host}:{proc.pid}"

    auditor = operations(settings, "auditor")
    shown = " ".join(m.value for m in auditor.markdown)
    assert f"**{name}**" in shown and "died or hangs" in shown
    assert [b.key for b in auditor.button] == []  # reads only
    charts = [c.key for c in auditor.get("plotly_chart")]
    assert charts == ["ops_chart_jobs", "ops_chart_audit"]

    admin = operations(settings, "admin")
    admin.button(key="ops_forget").click().run()
    assert not admin.exception, admin.exception
    assert f"**{name}**" not in " ".join(m.value for m in admin.markdown)


@pytest.mark.parametrize("role", ["trainer", "analyst", "user"])
def test_operations_page_is_absent_for_other_roles(api, settings, role):
    at = page_as(settings, role)
    assert "Operations" not in at.session_state["nav_pages"]
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page("pages/operations.py")
