"""`clara admin cleanup` and the bind rule for hosts given on the command line, as real
`clara` processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.artifacts import HOST_TAG, STAGING_PREFIX
from core.audit import read_audit_log
from core.users import create_user
from tests.conftest import ROOT


def clara(*args: str, user: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if user:
        env["CLARA_CLI_USER"] = user
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cleanup_removes_dead_builds_only_and_is_audited(db_engine, admin, settings):
    models = settings.data_path / "models"
    models.mkdir(parents=True)
    dead = models / f"{STAGING_PREFIX}demo-llama-{HOST_TAG}-999999-00aa11bb"
    dead.mkdir()
    (dead / "half.bin").write_bytes(b"x")
    alive = models / f"{STAGING_PREFIX}onnx-{HOST_TAG}-{os.getpid()}-00cc22dd"
    alive.mkdir()
    keep = models / "demo-llama"
    keep.mkdir()

    r = clara("admin", "cleanup", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "would remove" in r.stdout and dead.exists()

    create_user(db_engine, admin, "ana", "ana-pass-1", "analyst")
    r = clara("admin", "cleanup", user="ana")
    assert r.returncode == 4 and "system:maintain" in r.stderr and dead.exists()

    r = clara("admin", "cleanup", "--json")
    assert r.returncode == 0, r.stderr
    assert not dead.exists() and alive.exists() and keep.exists()
    rows = read_audit_log(db_engine, admin, action_prefix="system.cleanup").rows
    assert rows.iloc[0].detail["removed"] == [f"models/{dead.name}"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("command", [["up", "--host", "0.0.0.0"], ["chat", "--host", "0.0.0.0"]])
def test_a_public_host_on_the_command_line_needs_an_explicit_secret(db_engine, command):
    r = clara(*command)
    assert r.returncode == 2
    assert "needs an explicit CLARA_AUTH_SECRET" in r.stderr


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cleanup_policy_old_checkpoints_orphaned_jobs_and_old_exports(db_engine, admin, settings):
    import json

    from core.db import writing
    from core.training.jobs import jobs_root
    from core.training.models import TrainingJob

    root = jobs_root(settings)
    with writing(db_engine) as s:
        for state in ("succeeded", "failed"):
            s.add(TrainingJob(name=f"job-{state}", owner="admin", state=state))
    for job_id in (1, 2, 99):  # 99: a folder whose job row is gone
        for step in (10, 20, 30):
            ckpt = root / str(job_id) / "checkpoints" / f"checkpoint-{step}"
            ckpt.mkdir(parents=True)
            (ckpt / "adapter_model.safetensors").write_bytes(b"w" * 1000)
    exports = settings.data_path / "exports" / "faq-v1"
    old, new = exports / "messages-jsonl", exports / "messages-parquet"
    for folder in (old, new):
        folder.mkdir(parents=True)
        (folder / "data.jsonl").write_text("{}\n")
    long_ago = time.time() - 40 * 86400
    for p in (old, old / "data.jsonl"):
        os.utime(p, (long_ago, long_ago))

    r = clara("admin", "cleanup", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    planned = json.loads(r.stdout)
    reasons = {
        Path(i["path"]).relative_to(settings.data_path).as_posix(): i["reason"]
        for i in planned["items"]
    }
    assert set(reasons) == {
        "training/jobs/1/checkpoints/checkpoint-10",
        "training/jobs/1/checkpoints/checkpoint-20",
        "training/jobs/99",
        "exports/faq-v1/messages-jsonl",
    }
    assert reasons["training/jobs/99"] == "job 99 no longer exists"
    assert reasons["exports/faq-v1/messages-jsonl"] == "export older than 30 days"
    assert "succeeded job 1" in reasons["training/jobs/1/checkpoints/checkpoint-10"]
    assert planned["bytes"] == 2 * 1000 + 3 * 1000 + 3
    assert (root / "1" / "checkpoints" / "checkpoint-10").exists()  # a dry run removes nothing

    r = clara("admin", "cleanup")
    assert r.returncode == 0, r.stderr
    assert "4 item(s) removed" in r.stdout
    assert sorted(p.name for p in (root / "1" / "checkpoints").iterdir()) == ["checkpoint-30"]
    # A failed job keeps every checkpoint: a retry resumes from the newest.
    assert len(list((root / "2" / "checkpoints").iterdir())) == 3
    assert not (root / "99").exists() and not old.exists() and new.exists()
    rows = read_audit_log(db_engine, admin, action_prefix="system.cleanup").rows
    assert rows.iloc[0].detail["bytes"] == planned["bytes"]
    assert clara("admin", "cleanup").stdout.strip() == "nothing to clean up"
