"""`clara`: every UI action is also a command. Sub-command groups live in cli/*.py."""

from __future__ import annotations

import sys

# Each import registers its commands on `app` (typer sub-apps or plain commands).
from cli import api as _api  # noqa: F401
from cli import backup as _backup  # noqa: F401
from cli import chat as _chat  # noqa: F401
from cli import corpus as _corpus  # noqa: F401
from cli import datasets as _datasets  # noqa: F401
from cli import embed_tune as _embed_tune  # noqa: F401
from cli import health as _health  # noqa: F401
from cli import learn as _learn  # noqa: F401
from cli import migrate as _migrate  # noqa: F401
from cli import system as _system  # noqa: F401
from cli import training as _training  # noqa: F401
from cli import users as _users  # noqa: F401
from cli.common import app, fail_cleanly


def main() -> None:
    with fail_cleanly():
        app()


if __name__ == "__main__":
    sys.exit(main())
