"""The one base class of the failures a person can act on.

A `ClaraError` says which file, line, field or name is wrong and what to do; every shell
(CLI, pages, chat server) shows its message as it is, in one place each. Anything else that
escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class ClaraError(Exception):
    """An expected failure whose message is meant for a person."""
