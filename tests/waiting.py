"""Waiting in tests, one way: for a condition, or for a server of ours to answer.

A server that exits or never answers fails the test with its own log, not with a bare
timeout, so a failed start says why.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

import httpx

T = TypeVar("T")


class WaitTimeout(AssertionError):
    pass


def wait_until(
    predicate: Callable[[], T], what: str, limit: float = 300.0, every: float = 0.2
) -> T:
    """The first truthy value of `predicate()`; WaitTimeout naming `what` after `limit` s."""
    deadline = time.monotonic() + limit
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"gave up waiting for {what} after {limit:.0f} s")
        time.sleep(every)


def wait_until_http(
    url: str,
    *,
    limit: float = 120.0,
    proc: subprocess.Popen | None = None,
    log: Callable[[], str] | None = None,
    ok: Callable[[httpx.Response], bool] = lambda r: r.status_code == 200,
) -> None:
    """Until GET `url` answers `ok`; fails at once, with the log, if `proc` has exited."""

    def answered() -> bool:
        if proc is not None and proc.poll() is not None:
            tail = log()[-4000:] if log else ""
            raise WaitTimeout(
                f"the server exited with {proc.returncode} before {url} answered\n{tail}"
            )
        try:
            return ok(httpx.get(url, timeout=2))
        except httpx.HTTPError:
            return False

    try:
        wait_until(answered, url, limit, every=0.5)
    except WaitTimeout as err:
        if log and "exited" not in str(err):
            raise WaitTimeout(f"{err}\n{log()[-4000:]}") from None
        raise
