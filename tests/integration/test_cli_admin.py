"""`clara admin cleanup` and the bind rule for hosts given on the command line, as real
`clara` processes."""

from __future__ import annotations

import os
import subprocess
import sys

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
