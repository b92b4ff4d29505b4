"""`clara chat` as a real process for a test: started with the given environment, waited
for until its health route answers, stopped (SIGTERM, then SIGKILL) when the block ends."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def chat_process(env: dict[str, str], log: Path, url: str) -> Iterator[subprocess.Popen]:
    """`clara chat` with `env` (on top of this process's environment), output into `log`;
    `url` is where it serves (CLARA_CHAT_PORT in `env`)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "chat"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, f"clara chat exited:\n{log.read_text()}"
            try:
                if httpx.get(url + "clara/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"no answer in 300 s:\n{log.read_text()}"
            time.sleep(1)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
