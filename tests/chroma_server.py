"""A real Chroma server (`chroma run`, from the same pip package as the embedded store) for
the tests that need one: started on a free port, stopped afterwards, its log in a failure."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.api_server import free_port
from tests.waiting import WaitTimeout, wait_until_http


@contextmanager
def running_chroma_server(path: Path) -> Iterator[str]:
    """A server storing under `path`; yields its URL (http://127.0.0.1:PORT)."""
    exe = Path(sys.executable).with_name("chroma")
    if not exe.exists():
        exe = Path(shutil.which("chroma") or "chroma")
    port = free_port()
    path.mkdir(parents=True, exist_ok=True)
    log_path = path / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(exe), "run", "--path", str(path / "db"), "--host", "127.0.0.1"]
            + ["--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            try:  # a failure to start fails the fixture, not a timing test
                wait_until_http(
                    f"{url}/api/v2/heartbeat", limit=120, proc=proc, log=log_path.read_text
                )
            except WaitTimeout as err:
                pytest.fail(f"chroma server: {err}")
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)
