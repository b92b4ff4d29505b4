"""The demo model build shows its progress (issue 10, item 13): the chat server answered only
after 472 s of building with nothing on screen. A real build (`clara demo-model`, tiny size)
in another process; `demo_build_status` reads its progress while it runs, and is None before
and after."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from core.training.demo_model import demo_build_status, demo_model_dir
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_status_of_a_running_build(settings):
    assert demo_build_status(settings) is None  # nothing builds
    env = {**os.environ, "CLARA_DEMO_MODEL_SIZE": "tiny"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "demo-model", "--json"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    seen = []
    try:
        while proc.poll() is None:
            status = demo_build_status(settings)
            if status is not None:
                seen.append(status)
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate()[0]
    assert proc.returncode == 0
    assert json.loads(out)["size"] == "tiny"
    assert seen, "no status while the build ran"
    training = [s for s in seen if s.phase == "pre-training"]
    assert training, [s.phase for s in seen]
    assert all(0.0 <= s.fraction <= 1.0 and s.message for s in seen)
    fractions = [s.fraction for s in seen]
    assert fractions == sorted(fractions)  # it only moves forward
    late = [s for s in training if s.fraction > 0.5]
    assert late and late[-1].eta_seconds is not None and late[-1].eta_seconds >= 0
    assert "pre-training step" in training[-1].message
    assert demo_build_status(settings) is None  # done


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_no_status_from_a_build_that_was_killed(settings):
    """A status file left behind by a killed build (its lock no longer held) is no build."""
    folder = demo_model_dir(settings)
    folder.parent.mkdir(parents=True, exist_ok=True)
    (folder.parent / ".demo-llama.lock").touch()
    (folder.parent / ".demo-llama.status.json").write_text(
        json.dumps({"phase": "pre-training", "fraction": 0.4, "message": "step 40/100"})
    )
    assert demo_build_status(settings) is None
