"""The one base class of the failures a person can act on.

A `ClaraError` says which file, line, field or name is wrong and what to do; every shell
(CLI, pages, chat server) shows its message as it is, in one place each. Anything else that
escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class ClaraError(Exception):
    """An expected failure whose message is meant for a person."""


class NotFound(ClaraError, LookupError):
    """The named thing (document, dataset, job, adapter, ...) does not exist, or no longer.

    A marker besides the specific class, so that every shell maps the whole family at once
    (the HTTP API answers 404 for it) without a list of classes to keep in step.
    """


class Conflict(ClaraError):
    """The request clashes with the current state (changed by someone else meanwhile, or a
    job in a state that does not allow the action); the HTTP API answers 409."""
