"""The real `clara` CLI in a child process, against one test's data dir and database."""

from __future__ import annotations

import os
import subprocess
import sys


def cli_env(settings, user: str = "admin") -> dict[str, str]:
    """This process's environment pointed at the test's storage, acting as `user`."""
    return {
        **os.environ,
        "CLARA_DATA_DIR": str(settings.data_path),
        "CLARA_DATABASE_URL": settings.effective_database_url,
        "CLARA_ENV": "testing",
        "CLARA_ADMIN_PASSWORD": "adminpass1",
        "CLARA_CLI_USER": user,
    }


def clara(
    settings, *args: str, user: str = "admin", stdin: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run `clara ARGS`; without `stdin` there is no input at all, so a prompt reads
    end-of-file and aborts instead of waiting."""
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env=cli_env(settings, user),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL if stdin is None else None,
        input=stdin,
    )
