"""`clara up`'s process supervisor: start children, restart crashed ones, stop all on signal.

Children run in their own process groups (so a stop reaches their own children too) with
their output in log files under the data dir. A child that keeps crashing is given up on
and everything is stopped, rather than restarting forever.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.config import Settings

# The Streamlit app behind the sign-in server (ui/server.py wraps app.py).
APP_PATH = Path(__file__).resolve().parent.parent / "ui" / "server.py"


class PortTaken(Exception):
    pass


def check_port(host: str, port: int, variable: str = "") -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            hint = f" or set {variable}" if variable else ""
            raise PortTaken(
                f"port {port} on {host} is already in use ({err.strerror}); stop whatever "
                f"listens there (another `clara up`?){hint}"
            ) from None


@dataclass
class ChildSpec:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int | None = None
    port_variable: str = ""


def children_for_up(
    cfg: Settings,
    host: str,
    port: int,
    *,
    worker: bool = True,
    chat: bool = True,
    api: bool = True,
) -> list[ChildSpec]:
    env = {"CLARA_UI_PORT": str(port), "CLARA_HOST": host}
    streamlit_argv = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP_PATH),
        "--server.port",
        str(port),
        "--server.address",
        host,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
    if cfg.env != "development":
        # No file watcher outside development: it only costs inotify watches on the venv.
        streamlit_argv += ["--server.fileWatcherType", "none", "--server.runOnSave", "false"]
    children = [ChildSpec("ui", streamlit_argv, env, host, port, "CLARA_UI_PORT")]
    if worker and cfg.start_worker and importlib.util.find_spec("workers.trainer"):
        children.append(
            ChildSpec(
                "worker",
                [
                    sys.executable,
                    "-m",
                    "cli",
                    "worker",
                    "--concurrency",
                    str(cfg.worker_concurrency),
                ],
            )
        )
    if chat and cfg.start_chat and importlib.util.find_spec("workers.chat"):
        children.append(
            ChildSpec(
                "chat",
                [sys.executable, "-m", "cli", "chat"],
                host=cfg.chat_host,
                port=cfg.chat_port,
                port_variable="CLARA_CHAT_PORT",
            )
        )
    if api and cfg.start_api:
        children.append(
            ChildSpec(
                "api",
                [sys.executable, "-m", "cli", "api"],
                host=cfg.api_host,
                port=cfg.api_port,
                port_variable="CLARA_API_PORT",
            )
        )
    return children


@dataclass
class _Running:
    spec: ChildSpec
    proc: subprocess.Popen
    started: float
    restarts: list[float] = field(default_factory=list)


class Supervisor:
    MAX_RESTARTS = 5  # within RESTART_WINDOW seconds, then give up
    RESTART_WINDOW = 60.0
    STOP_GRACE = 10.0

    def __init__(self, children: list[ChildSpec], log_dir: Path) -> None:
        self.children = children
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.running: dict[str, _Running] = {}
        self._stop = False

    def _start(self, spec: ChildSpec) -> subprocess.Popen:
        log = open(self.log_dir / f"{spec.name}.log", "ab")  # noqa: SIM115 - owned by child
        env = {**os.environ, **spec.env}
        proc = subprocess.Popen(
            spec.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        log.close()
        return proc

    def _on_signal(self, signum, _frame) -> None:
        self._stop = True

    def run(self) -> int:
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        code = 0
        try:
            for spec in self.children:
                self.running[spec.name] = _Running(spec, self._start(spec), time.monotonic())
                print(
                    f"  started {spec.name} (pid {self.running[spec.name].proc.pid}, "
                    f"log {self.log_dir / (spec.name + '.log')})",
                    flush=True,
                )
            while not self._stop:
                time.sleep(0.5)
                for name, r in list(self.running.items()):
                    rc = r.proc.poll()
                    if rc is None or self._stop:
                        continue
                    now = time.monotonic()
                    r.restarts = [t for t in r.restarts if now - t < self.RESTART_WINDOW]
                    if len(r.restarts) >= self.MAX_RESTARTS:
                        print(
                            f"  {name} keeps exiting (last code {rc}); stopping everything. "
                            f"See {self.log_dir / (name + '.log')}",
                            flush=True,
                        )
                        self._stop, code = True, 1
                        break
                    r.restarts.append(now)
                    print(f"  {name} exited with code {rc}; restarting", flush=True)
                    r.proc = self._start(r.spec)
        finally:
            self.stop_all()
            for s, h in old.items():
                signal.signal(s, h)
        return code

    def stop_all(self) -> None:
        for r in self.running.values():
            _signal_group(r.proc, signal.SIGTERM)
        deadline = time.monotonic() + self.STOP_GRACE
        for r in self.running.values():
            try:
                r.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(r.proc, signal.SIGKILL)
                r.proc.wait()
        print("  stopped", flush=True)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
