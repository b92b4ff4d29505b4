"""The real `clara api` server in a child process, on one test's storage, with a user of
every role; and an httpx client per user.

    with running_api_server(settings) as api:
        r = api.client("trainer").get("/api/v1/jobs")

Users: `admin` (password adminpass1) and one user per other role, named after it
(`trainer`, `analyst`, `user`, `auditor`; password `<name>-pass-1`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.cli_run import cli_env
from tests.waiting import wait_until_http

ROOT = Path(__file__).resolve().parents[1]
ROLES = ("admin", "trainer", "analyst", "user", "auditor")


def password_of(name: str) -> str:
    return "adminpass1" if name == "admin" else f"{name}-pass-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ApiServer:
    def __init__(self, url: str, env: dict[str, str], log: Path) -> None:
        self.url, self.env, self.log = url, env, log
        self.proc: subprocess.Popen | None = None
        self._tokens: dict[str, str] = {}

    def token(self, user: str = "admin") -> str:
        """An access token of `user` (signed in once per server, then reused)."""
        if user not in self._tokens:
            r = httpx.post(
                self.url + "/api/v1/auth/token",
                json={"username": user, "password": password_of(user)},
                timeout=30,
            )
            assert r.status_code == 200, r.text
            self._tokens[user] = r.json()["access_token"]
        return self._tokens[user]

    def client(self, user: str | None = "admin", timeout: float = 120) -> httpx.Client:
        """A client signed in as `user` (None: no credentials)."""
        headers = {"Authorization": f"Bearer {self.token(user)}"} if user else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def add_role_users(settings) -> None:
    """One user per role besides the bootstrap admin (storage must be prepared)."""
    from core.db import get_engine
    from core.permissions import SYSTEM
    from core.users import create_user, get_user

    engine = get_engine(settings)
    for role in ROLES[1:]:
        if get_user(engine, role) is None:
            create_user(engine, SYSTEM, role, password_of(role), role)


@contextmanager
def running_api_server(settings, extra_env: dict[str, str] | None = None) -> Iterator[ApiServer]:
    """`clara api` on the test's data dir and database (migrated, with the role users)."""
    from core.db import get_engine, upgrade
    from core.users import ensure_admin

    env = {**cli_env(settings), **(extra_env or {})}
    settings.ensure_dirs()
    engine = get_engine(settings)
    upgrade(engine)
    ensure_admin(engine, "adminpass1")
    add_role_users(settings)
    port = free_port()
    env["CLARA_API_PORT"] = str(port)
    log = settings.data_path / f"api-{port}.log"
    server = ApiServer(f"http://127.0.0.1:{port}", env, log)
    with log.open("wb") as out:
        server.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "api"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_http(
            server.url + "/api/v1/health", limit=120, proc=server.proc, log=server.log_text
        )
        yield server
    finally:
        # A server that exited already (its start failed) has nothing left to stop; its
        # failure, with the log, is what the test reports.
        if server.proc.poll() is None:
            os.killpg(server.proc.pid, signal.SIGTERM)
            try:
                server.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.proc.pid, signal.SIGKILL)
                server.proc.wait()
