"""Browser tests: the workbench started with `clara up` as the README says, driven by Chromium.

Fixtures
- `workbench`: module-scoped `clara up` in a temp data dir on free ports, training worker and
  chat server off (fast); the API server on. Attributes: url, chat_url, api_url, data_dir, env,
  admin_password, cli().
- `make_workbench(**env)`: module-scoped factory for a workbench with other settings, e.g.
  `make_workbench(CLARA_START_CHAT="true", CLARA_START_WORKER="true")`. Every started
  workbench is stopped (SIGTERM, as Ctrl-C would) at the end of the module.
- `browser`: one headless Debian Chromium per session, i.e. per pytest-xdist worker (Playwright,
  never `playwright install`), its profile in that session's temp dir.
- `page`: a fresh browser context and page per test; a screenshot lands in test-artifacts/
  when the test fails.
- `login(page, workbench, username, password)`: logs in through the real login form.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.waiting import WaitTimeout, wait_until_http

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("CLARA_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ADMIN_PASSWORD = "e2e-admin-pass"

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clara_command() -> list[str]:
    exe = Path(sys.executable).with_name("clara")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "cli"]


@dataclass
class Workbench:
    url: str
    chat_url: str
    api_url: str
    data_dir: Path
    env: dict[str, str]
    admin_password: str
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    _closed: bool = field(default=False, repr=False)

    def cli(self, *args: str, timeout: float = 600, input: str | None = None):
        """Run `clara ARGS` against this workbench's data dir and database."""
        return subprocess.run(
            [*clara_command(), *args],
            env={**os.environ, **self.env},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self) -> None:
        if self._closed or self.proc is None:
            return
        self._closed = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start_workbench(base_dir: Path, **extra_env: str) -> Workbench:
    data_dir = base_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    ui_port, chat_port, api_port = free_port(), free_port(), free_port()
    env = {
        "CLARA_DATA_DIR": str(data_dir),
        "CLARA_UI_PORT": str(ui_port),
        "CLARA_CHAT_PORT": str(chat_port),
        "CLARA_API_PORT": str(api_port),
        "CLARA_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "CLARA_ENV": "testing",
        "CLARA_START_WORKER": "false",
        "CLARA_START_CHAT": "false",
        "CLARA_LOAD_SAMPLE": "no",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        **extra_env,
    }
    wb = Workbench(
        url=f"http://127.0.0.1:{ui_port}",
        chat_url=f"http://127.0.0.1:{chat_port}",
        api_url=f"http://127.0.0.1:{api_port}",
        data_dir=data_dir,
        env=env,
        admin_password=env["CLARA_ADMIN_PASSWORD"],
        log_path=base_dir / "clara-up.log",
    )
    log = open(wb.log_path, "wb")  # noqa: SIM115 - closed when the process ends
    wb.proc = subprocess.Popen(
        [*clara_command(), "up"],
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until_http(f"{wb.url}/_stcore/health", limit=120, proc=wb.proc, log=wb.log)
    except WaitTimeout as err:
        wb.stop()
        raise RuntimeError(f"`clara up` did not start: {err}") from None
    return wb


@pytest.fixture(scope="module")
def make_workbench(tmp_path_factory) -> Iterator:
    started: list[Workbench] = []

    def factory(**env: str) -> Workbench:
        wb = start_workbench(tmp_path_factory.mktemp("workbench"), **env)
        started.append(wb)
        return wb

    yield factory
    for wb in started:
        wb.stop()


@pytest.fixture(scope="module")
def workbench(make_workbench) -> Workbench:
    return make_workbench()


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        msg = f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    from playwright.sync_api import sync_playwright

    # Playwright's driver puts each Chromium profile in its temp dir: give it one of this
    # session's own, so that parallel workers and other runs never touch each other's.
    profiles = tmp_path_factory.mktemp("chromium-profiles")
    old_tmpdir = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(profiles)
    try:
        manager = sync_playwright()
        p = manager.__enter__()  # starts the driver, which keeps this TMPDIR
    finally:
        if old_tmpdir is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old_tmpdir
    try:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()
    finally:
        manager.__exit__(None, None, None)
        shutil.rmtree(profiles, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call = rep


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(30_000)
    pg = context.new_page()
    yield pg
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        try:
            pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
        except Exception:  # the screenshot is a debugging aid only
            pass
    context.close()


def login(page, workbench: Workbench, username: str = "admin", password: str | None = None):
    """Log in through the real streamlit-authenticator form and wait for the sidebar."""
    page.goto(workbench.url)
    page.get_by_role("textbox", name="Username").fill(username)
    page.get_by_role("textbox", name="Password").fill(password or workbench.admin_password)
    page.get_by_role("button", name="Login").click()
    page.get_by_test_id("stSidebar").get_by_text(username, exact=False).first.wait_for()
    return page


def set_number(scope, elem: str, value: str, attempts: int = 10) -> None:
    """Type `value` into the number box of Gradio component `#elem` until it stays there.

    Right after an accordion opens, under load, Gradio may still mount the component and
    put its current value back over what was typed; the test must not go on with the old
    setting (a temperature of 0.7 instead of 0 made answers random)."""
    box = scope.locator(f"#{elem} input[type=number]")
    for _ in range(attempts):
        box.fill(value)
        box.press("Enter")
        time.sleep(0.5)
        if box.input_value() == value:
            time.sleep(0.5)
            if box.input_value() == value:
                return
    raise AssertionError(f"#{elem} did not keep the value {value!r} (shows {box.input_value()!r})")


def wait_idle(page, quiet_s: float = 1.0, timeout_s: float = 120.0) -> None:
    """Wait until the Streamlit script has finished its rerun and no stale element is left.

    Under load a rerun replaces the elements piece by piece: a form of the previous run can
    still be on screen, and what is typed into it and submitted goes nowhere."""
    busy = page.locator('[data-testid="stStatusWidgetRunningIcon"], [data-stale="true"]')
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    while time.monotonic() < deadline:
        if busy.count():
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return
        time.sleep(0.2)
    raise AssertionError(f"the page was still running after {timeout_s:.0f} s")
