"""What the jobs and adapters API tests share: storage for a whole test module on either
engine (one `clara api` server per module and engine), a frozen dataset version, the tiny
demo model, a real `clara worker`, the audit rows an action left, and Server-Sent Events
read off a streaming response.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from tests.cli_run import cli_env
from tests.conftest import ROOT, database_url, link_demo_model

# The training tests' proportions: the tiny demo model, one torch thread per job.
TRAINING_ENV = {"CLARA_DEMO_MODEL_SIZE": "tiny", "CLARA_TRAIN_THREADS": "1"}


@contextmanager
def module_storage(kind: str, tmp_path_factory, shared_demo_model: Path) -> Iterator:
    """Settings on a fresh data dir and database ("sqlite" or "postgres": a schema of its
    own), set in this process's environment until the module is done; the demo model is
    linked in, as `clara demo-model` leaves it."""
    from core.config import get_settings

    data = tmp_path_factory.mktemp(f"api-{kind}")
    with database_url(kind, data) as url, pytest.MonkeyPatch.context() as mp:
        env = {
            "CLARA_DATA_DIR": str(data),
            "CLARA_DATABASE_URL": url,
            "CLARA_ENV": "testing",
            **TRAINING_ENV,
        }
        for key, value in env.items():
            mp.setenv(key, value)
        get_settings.cache_clear()
        try:
            settings = get_settings()
            settings.ensure_dirs()
            link_demo_model(shared_demo_model, settings.data_path)
            yield settings
        finally:
            get_settings.cache_clear()


def frozen_version(engine, name: str = "faq", n: int = 48, offset: int = 0, actor=None):
    """A dataset version of `n` chat samples (a fifth held out for evaluation)."""
    from core.datasets.service import SampleIn, add_samples, create_dataset
    from core.datasets.versions import freeze
    from core.permissions import SYSTEM

    actor = actor or SYSTEM
    ds = create_dataset(engine, actor, name)
    samples = [
        SampleIn(
            kind="chat",
            status="accepted",
            messages=[
                {"role": "user", "content": f"Wie hoch ist die Hundesteuer für {k} Hunde?"},
                {
                    "role": "assistant",
                    "content": f"Für {k} Hunde beträgt die Hundesteuer {90 * k} Euro im Jahr.",
                },
            ],
        )
        for k in range(1 + offset, n + 1 + offset)
    ]
    add_samples(engine, actor, ds.id, samples)
    return freeze(engine, actor, ds.id, eval_ratio=0.2)


def short_spec(name: str, version: int | str = "faq@v1", method: str = "lora", **trainer) -> dict:
    """A preset spec made short (8 steps of 4 × 64 tokens unless `trainer` says else)."""
    from core.training.spec import preset

    kind = {"lora": "demo-lora", "qlora": "demo-qlora", "continue": "continue"}[method]
    data = preset(kind, name=name, dataset_version=version)
    data["trainer"].update(
        max_steps=8,
        per_device_train_batch_size=4,
        max_length=64,
        learning_rate=1e-2,
        logging_steps=2,
        save_steps=4,
        warmup_steps=0,
    )
    data["trainer"].update(trainer)
    return data


def spec_yaml(name: str, version: str = "faq@v1", **trainer) -> str:
    """short_spec as the YAML a client sends."""
    import yaml

    data = short_spec(name, version, **trainer)
    data.pop("description", None)
    return yaml.safe_dump(data, sort_keys=False)


YAML = {"Content-Type": "application/yaml"}


def worker_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", "worker", "--lease-seconds", "10", *args]


def run_worker_once(settings) -> None:
    """`clara worker --once`: runs what is queued, then exits."""
    r = subprocess.run(
        worker_command("--once"),
        cwd=ROOT,
        env={**cli_env(settings), **TRAINING_ENV},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr


@contextmanager
def running_worker(settings) -> Iterator[subprocess.Popen]:
    """A `clara worker` process until the block ends (stopped as an operator would, unless
    the test stopped or killed it already); its output is appended to data/worker.log."""
    log = settings.data_path / "worker.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            worker_command(),
            cwd=ROOT,
            env={**cli_env(settings), **TRAINING_ENV},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# Audit -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditRow:
    actor: str
    action: str
    target: str
    outcome: str
    detail: dict


def audit_mark(engine) -> int:
    """The newest audit row's id: `audit_since(engine, mark)` is what came after."""
    from core.db import reading
    from core.db.models import AuditEntry

    with reading(engine) as s:
        return s.scalar(select(func.max(AuditEntry.id))) or 0


def audit_since(engine, mark: int) -> list[AuditRow]:
    from core.db import reading
    from core.db.models import AuditEntry

    with reading(engine) as s:
        rows = s.scalars(select(AuditEntry).where(AuditEntry.id > mark).order_by(AuditEntry.id))
        return [AuditRow(r.actor, r.action, r.target, r.outcome, r.detail or {}) for r in rows]


# Server-Sent Events --------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    event: str
    data: dict


def sse_events(response: httpx.Response) -> Iterator[Event]:
    """The events of a text/event-stream response as they arrive (comments skipped)."""
    name, data = "message", []
    for line in response.iter_lines():
        if not line:
            if data:
                yield Event(name, json.loads("\n".join(data)))
            name, data = "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
