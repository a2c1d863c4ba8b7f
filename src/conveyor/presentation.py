"""How jobs are shown to people: timestamps, durations, relative times, short ids and task names,
and the state a person should read. Shared by the command line and the web app; no I/O here.

The stored job states are the six of :data:`conveyor.brokers.STATES`. People see two refinements
of them, computed here from the record:

* ``reserved``: the job is ``running`` in the store (a worker leased it) but the task has not
  started yet (``started_at`` is not set for this attempt).
* a ``scheduled`` job whose last attempt failed is shown as ``failed, retry at …``.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .brokers import JobRecord

__all__ = [
    "display_state",
    "error_label",
    "format_duration",
    "format_timestamp",
    "is_reserved",
    "relative_time",
    "run_time",
    "short_id",
    "short_task",
    "shown_progress",
]


def format_timestamp(value: float | None, empty: str = "") -> str:
    """A Unix time as ``YYYY-MM-DD HH:MM:SS`` in UTC (``empty`` for None)."""
    if value is None:
        return empty
    return datetime.fromtimestamp(value, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def format_duration(seconds: float | None, empty: str = "") -> str:
    """A duration for people: ``850 ms``, ``12.4 s``, ``3 min 05 s``, ``2 h 03 min``, ``4 d 02 h``."""
    if seconds is None:
        return empty
    seconds = max(0.0, float(seconds))
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60:02d} min"
    return f"{whole // 86400} d {whole % 86400 // 3600:02d} h"


def relative_time(value: float | None, now: float | None = None, empty: str = "") -> str:
    """``value`` relative to ``now``: ``just now``, ``42 s ago``, ``5 min ago``, ``in 3 h``."""
    if value is None:
        return empty
    delta = (time.time() if now is None else now) - value
    ahead = delta < 0
    delta = abs(delta)
    if delta < 1:
        return "just now"
    if delta < 60:
        text = f"{delta:.0f} s"
    elif delta < 3600:
        text = f"{delta // 60:.0f} min"
    elif delta < 86400:
        text = f"{delta // 3600:.0f} h"
    else:
        text = f"{delta // 86400:.0f} d"
    return f"in {text}" if ahead else f"{text} ago"


def short_id(job_id: str, length: int = 8) -> str:
    """The last ``length`` characters of a job id: enough to tell jobs apart on one screen, and
    accepted wherever the full id is by the command line (as is a unique prefix).

    The end, not the start: ids are UUIDv7, whose first 12 hex digits are the creation time in
    milliseconds, so jobs enqueued within a minute share their first 8 characters; the last ones
    are random."""
    return job_id[-length:]


def short_task(name: str, width: int = 28) -> str:
    """A task name that fits ``width`` characters without hiding which task it is: the function
    name is kept whole and the leading module path is abbreviated first (``m.media.transcode``),
    then cut from the left (``…dia.transcode``)."""
    if len(name) <= width:
        return name
    parts = name.split(".")
    # Abbreviate module components from the left, keeping the last (the function) whole.
    for i in range(len(parts) - 1):
        parts[i] = parts[i][:1]
        candidate = ".".join(parts)
        if len(candidate) <= width:
            return candidate
    candidate = ".".join(parts)
    if len(candidate) <= width:
        return candidate
    return "…" + candidate[-(width - 1):] if width > 1 else candidate[-width:]


def is_reserved(job: JobRecord) -> bool:
    """Whether a worker holds the job but the task has not started yet."""
    return job.state == "running" and job.started_at is None


def display_state(job: JobRecord) -> str:
    """The state a person should read: ``reserved`` for a leased job not yet started, ``failed,
    retry at HH:MM:SS`` for a failed attempt waiting for its retry, else the stored state."""
    if is_reserved(job):
        return "reserved"
    if job.state == "scheduled" and job.error and job.attempts > 0:
        when = format_timestamp(job.run_at)[11:] if job.run_at is not None else "?"
        return f"failed, retry at {when}"
    return job.state


def shown_progress(job: JobRecord) -> tuple[float | None, str | None]:
    """The progress to show: a succeeded job is complete (1.0, no stale message)."""
    if job.state == "succeeded":
        return 1.0, None
    return job.progress, job.progress_message


def error_label(job: JobRecord) -> str | None:
    """What the job's stored error is: ``None`` when there is none; ``error`` when it is why the
    job is failed or cancelled; ``error of attempt N`` when the job went on after it (a retry that
    succeeded, or one that is waiting)."""
    if not job.error:
        return None
    if job.state in ("failed", "cancelled"):
        return "error"
    if job.error.get("type") == "UnknownTask":  # not an attempt: workers without the task handed it back
        return "handed back by workers without its task"
    attempt = _failed_attempt(job)
    return f"error of attempt {attempt}" if attempt else "earlier error"


def _failed_attempt(job: JobRecord) -> int | None:
    """The attempt whose error is stored: the last failed one in the history, else a guess from
    the attempt count (a succeeded job failed on the attempt before its last)."""
    for entry in reversed(job.history or []):
        if isinstance(entry, dict) and entry.get("error") and isinstance(entry.get("attempt"), int):
            return int(entry["attempt"])
    if job.state == "succeeded" and job.attempts > 1:
        return job.attempts - 1
    if job.state in ("scheduled", "queued", "running") and job.attempts >= 1:
        return job.attempts if job.state == "scheduled" else job.attempts - 1 or None
    return None


def run_time(job: JobRecord, now: float | None = None) -> float | None:
    """How long the job ran (so far, while it runs): None when it has not started."""
    if job.started_at is None:
        return None
    return (job.finished_at if job.finished_at is not None else (now or time.time())) - job.started_at


def summary(job: JobRecord, now: float | None = None) -> dict[str, Any]:
    """A job's one-line summary as plain values (the jobs lists of the CLI and the dashboard)."""
    run = run_time(job, now)
    return {
        "id": short_id(job.id), "task": short_task(job.task), "queue": job.queue, "state": display_state(job),
        "attempts": job.attempts, "duration": format_duration(run),
        "created": relative_time(job.created_at, now),
    }
