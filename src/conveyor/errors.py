"""Exceptions raised by Conveyor. Every one names the problem it reports."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


class ConveyorError(Exception):
    """Base class of every Conveyor error."""


class ConfigError(ConveyorError):
    """A setting is missing, malformed or contradicts another."""


class BrokerError(ConveyorError):
    """The broker could not be opened or refused an operation (bad URL, unreachable, corrupt)."""


class UnknownTask(ConveyorError, LookupError):
    """No task is registered under the given name."""

    def __init__(self, name: str, known: Iterable[str] = ()) -> None:
        self.name = name
        self.known = sorted(known)
        message = f"unknown task {name!r}: no task is registered under that name"
        close = difflib.get_close_matches(name, self.known, n=1, cutoff=0.6)
        if not close:  # a module path the caller got wrong: compare the function names alone
            tails = {k.rsplit(".", 1)[-1]: k for k in self.known}
            close = [tails[t] for t in difflib.get_close_matches(name.rsplit(".", 1)[-1], list(tails), n=1)]
        self.suggestion: str | None = close[0] if close else None
        if self.suggestion:
            message += f"; did you mean {self.suggestion!r}?"
        if self.known:
            shown = ", ".join(self.known[:20]) + (f" and {len(self.known) - 20} more" if len(self.known) > 20 else "")
            message += f" (registered: {shown})"
        else:
            message += " (no tasks are registered: is the module that defines them imported?)"
        super().__init__(message)


class InvalidArguments(ConveyorError, ValueError):
    """The arguments do not fit the task's signature or type hints.

    Attributes:
        task: the task's name.
        errors: one dict per failing argument: ``{"argument", "expected", "message", "input"}``.
    """

    def __init__(self, task: str, errors: list[dict[str, Any]]) -> None:
        self.task = task
        self.errors = errors
        parts = [
            f"argument {e['argument']!r}" + (f" (expected {e['expected']})" if e.get("expected") else "")
            + f": {e['message']}"
            for e in errors
        ]
        super().__init__(f"invalid arguments for task {task!r}: " + "; ".join(parts))


class PayloadTooLarge(ConveyorError, ValueError):
    """The serialized arguments are larger than the configured ``max_payload``."""

    def __init__(self, task: str, size: int, limit: int) -> None:
        super().__init__(
            f"payload of task {task!r} is {size} bytes, over the limit of {limit} bytes (max_payload)"
        )
        self.task, self.size, self.limit = task, size, limit


class SerializationError(ConveyorError, TypeError):
    """A value could not be serialized to (or read back from) a message."""


class JobNotFound(ConveyorError, LookupError):
    """No job with that id exists in the store (never enqueued, or pruned)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}")
        self.job_id = job_id


class JobFailed(ConveyorError):
    """Raised by ``Job.result()`` when the job ended in ``failed`` (or ``cancelled``).

    Attributes:
        job_id: the job's id.
        error: the recorded error: ``{"type", "message", "traceback"}`` (may be empty).
    """

    def __init__(self, job_id: str, state: str, error: dict[str, Any] | None) -> None:
        self.job_id, self.state, self.error = job_id, state, error or {}
        detail = f"{self.error.get('type', '')}: {self.error.get('message', '')}".strip(": ")
        super().__init__(f"job {job_id} {state}" + (f": {detail}" if detail else ""))


class JobCancelled(JobFailed):
    """Raised by ``Job.result()`` when the job was cancelled."""


class StaleLease(ConveyorError):
    """An operation carried a lease token that is no longer current (the job was re-leased)."""


class Retry(ConveyorError):
    """Raise inside a task to retry it after ``delay`` seconds (default: the task's back-off).

    The run counts as an attempt; when it was the last one, the job ends ``failed``.
    """

    def __init__(self, delay: float | None = None, reason: str = "retry requested") -> None:
        super().__init__(reason)
        self.delay = delay
