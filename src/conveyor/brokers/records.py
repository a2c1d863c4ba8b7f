"""The plain records that stores, transports and the worker pass around, and helpers on them.

No I/O here: every record is a dataclass with slots, shared by every backend.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "ACTIVE_STATES",
    "STATES",
    "TERMINAL_STATES",
    "Check",
    "Clock",
    "Dispatch",
    "Event",
    "ExtendResult",
    "JobPage",
    "JobQuery",
    "JobRecord",
    "Lease",
    "Message",
    "Outcome",
    "QueueInfo",
    "WorkerInfo",
    "job_event_data",
    "job_matches",
    "live_dispatches",
    "logged_event",
    "percentile",
    "summarize",
]

State = Literal["queued", "scheduled", "running", "succeeded", "failed", "cancelled"]
STATES: tuple[str, ...] = ("queued", "scheduled", "running", "succeeded", "failed", "cancelled")
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
ACTIVE_STATES = frozenset({"queued", "scheduled", "running"})

Clock = Callable[[], float]


@dataclass(slots=True, frozen=True)
class Check:
    """One finding of ``conveyor doctor``: what was checked, whether it is fine, and what to do."""

    what: str
    ok: bool
    detail: str = ""
    #: What the user should do when ``ok`` is False (one line).
    advice: str = ""


@dataclass(slots=True)
class Message:
    """A job to enqueue, already validated and serialized.

    ``run_at`` later than now puts the job in the schedule (``scheduled``) instead of the queue.
    ``key``, when set, makes the job unique among active jobs: enqueueing another job with the same
    key while one is queued, scheduled or running returns the existing job's id.
    """

    id: str
    task: str
    queue: str
    payload: bytes
    priority: int = 0
    run_at: float | None = None
    key: str | None = None
    max_attempts: int = 1
    timeout: float | None = None
    created_at: float = 0.0


@dataclass(slots=True)
class Lease:
    """A job handed to one consumer until ``deadline``; ``token`` fences every later write."""

    job_id: str
    token: int
    task: str
    queue: str
    payload: bytes
    attempt: int
    max_attempts: int
    timeout: float | None
    deadline: float
    priority: int = 0


@dataclass(slots=True)
class Outcome:
    """The verdict on a leased job.

    ``state`` is ``succeeded``, ``failed``, ``cancelled``, ``scheduled`` (retry at ``run_at``) or
    ``queued`` (handed back unstarted: the delivery is not counted as an attempt). A hand-back with
    a later ``run_at`` waits in the schedule until then (a back-off), and its ``error``, when given,
    is kept on the job (a worker without the task records who refused it, and since when).
    """

    job_id: str
    token: int
    state: str
    result: bytes | None = None
    error: dict[str, Any] | None = None
    run_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None


@dataclass(slots=True)
class ExtendResult:
    """What ``extend`` learned: leases no longer held, and jobs whose cancellation was requested."""

    lost: set[str] = field(default_factory=set)
    cancel_requested: set[str] = field(default_factory=set)


@dataclass(slots=True)
class JobRecord:
    """Everything the store keeps about one job."""

    id: str
    task: str
    queue: str
    state: str
    payload: bytes
    priority: int = 0
    key: str | None = None
    attempts: int = 0
    max_attempts: int = 1
    timeout: float | None = None
    created_at: float = 0.0
    run_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float | None = None
    lease_until: float | None = None
    token: int = 0
    consumer: str | None = None
    cancel_requested: bool = False
    progress: float | None = None
    progress_message: str | None = None
    result: bytes | None = None
    error: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class JobPage:
    """One page of ``list_jobs``; pass ``cursor`` back to get the next (None: no more)."""

    jobs: list[JobRecord]
    cursor: str | None


@dataclass(slots=True)
class QueueInfo:
    """A queue's depth by state and whether it is paused."""

    name: str
    paused: bool = False
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class WorkerInfo:
    """A consumer's heartbeat: who it is, where, and what it holds."""

    id: str
    hostname: str
    pid: int
    queues: list[str]
    started_at: float
    last_seen: float = 0.0
    supervisor: str | None = None
    pool: str = "process"
    current: list[str] = field(default_factory=list)
    rss: int = 0
    processed: int = 0
    failed: int = 0
    #: Names of the tasks this worker has registered (a worker warns when it shares a queue with
    #: workers that have other tasks).
    tasks: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Event:
    """One change in the store, as returned by :meth:`~conveyor.brokers.store.JobStore.changes`.

    ``kind`` is ``job`` (``data``: id, task, queue, state, progress, progress_message, attempts,
    started_at — None while a running job is only reserved; state ``deleted`` when the job was
    removed), ``queue`` (``data``: name, paused) or ``worker``
    (``data``: id, state ``seen`` or ``gone``). ``id`` is the cursor just after this event.
    """

    id: str
    kind: str
    data: dict[str, Any]
    at: float


@dataclass(slots=True, frozen=True)
class JobQuery:
    """The filters of :meth:`~conveyor.brokers.store.JobStore.search_jobs`: exact ``state``,
    ``queue`` and ``task``; ``search``, a case-insensitive substring of the arguments or the error;
    ``since <= created_at < until``; a page of ``limit`` jobs after ``cursor`` (newest first)."""

    state: str | None = None
    queue: str | None = None
    task: str | None = None
    search: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 50
    cursor: str | None = None


@dataclass(slots=True, frozen=True)
class Dispatch:
    """A queued job a store wants a transport to carry (see :class:`~conveyor.brokers.paired.PairedBroker`).

    A delivery names the job only: its arguments stay in the store. ``order`` is the job's place in
    its queue (the store's FIFO order, kept across hand-backs); transports that can order by it do.
    """

    job_id: str
    queue: str
    priority: int = 0
    order: int = 0


def job_event_data(job: JobRecord) -> dict[str, Any]:
    """The ``data`` of a ``job`` :class:`Event` for the job as it is now."""
    return {"id": job.id, "task": job.task, "queue": job.queue, "state": job.state,
            "progress": job.progress, "progress_message": job.progress_message, "attempts": job.attempts,
            "started_at": job.started_at}


def logged_event(event_id: str, at: float, kind: str, ref: str, state: str, task: str | None, queue: str | None,
                 progress: float | None, message: str | None, attempts: int | None,
                 started_at: float | None) -> Event:
    """An :class:`Event` from a row of a SQL store's change log (joined with the job it names)."""
    data: dict[str, Any]
    if kind == "job":
        data = {"id": ref, "task": task, "queue": queue, "state": state, "progress": progress,
                "progress_message": message, "attempts": attempts, "started_at": started_at}
    elif kind == "queue":
        data = {"name": ref, "paused": state == "paused"}
    else:
        data = {"id": ref, "state": state}
    return Event(event_id, kind, data, at)


def live_dispatches(rows: Iterable[Sequence[Any]], limit: int) -> tuple[list[Dispatch], list[Dispatch]]:
    """Outbox rows ``(job id, queue, priority, seq, state)`` split into the jobs still queued (at
    most ``limit``: to send) and the others (cancelled or deleted since marked: to unmark)."""
    live, stale = [], []
    for job_id, queue, priority, seq, state in rows:
        if state == "queued":
            live.append(Dispatch(job_id, queue, priority, seq))
        else:
            stale.append(Dispatch(job_id, queue or ""))
    return live[:limit], stale


def job_matches(job: JobRecord, search: str | None, since: float | None, until: float | None) -> bool:
    """Whether ``job`` passes the text and time filters of
    :meth:`~conveyor.brokers.store.JobStore.search_jobs`: ``search`` is a case-insensitive
    substring of its payload (arguments) or of its error's text; ``since`` and ``until`` bound its
    ``created_at`` (``since <= created_at < until``)."""
    if since is not None and job.created_at < since:
        return False
    if until is not None and job.created_at >= until:
        return False
    if search:
        needle = search.lower()
        if needle in job.payload.decode("utf-8", "replace").lower():
            return True
        error = job.error or {}
        text = " ".join(str(error.get(k) or "") for k in ("type", "message", "traceback"))
        return needle in text.lower()
    return True


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile (``fraction`` in 0..1) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summarize(rows: Iterable[tuple[str, float, str, float | None, float | None, float]],
              since: float, bucket: float) -> list[dict[str, Any]]:
    """Turn ``(queue, finished_at, state, run_seconds, wait_seconds, created_at)`` rows of finished
    jobs into :meth:`~conveyor.brokers.store.JobStore.stats` entries."""
    groups: dict[tuple[str, float], dict[str, Any]] = {}
    for queue, finished_at, state, run, wait, _ in rows:
        start = since + math.floor((finished_at - since) / bucket) * bucket
        g = groups.setdefault((queue, start), {"succeeded": 0, "failed": 0, "runs": [], "waits": []})
        g[state] += 1
        if run is not None:
            g["runs"].append(run)
        if wait is not None:
            g["waits"].append(wait)
    out = []
    for (queue, start), g in sorted(groups.items(), key=lambda item: (item[0][1], item[0][0])):
        runs, waits = g["runs"], g["waits"]
        out.append({"queue": queue, "bucket": start, "succeeded": g["succeeded"], "failed": g["failed"],
                    "run_mean": sum(runs) / len(runs) if runs else None, "run_p95": percentile(runs, 0.95),
                    "wait_mean": sum(waits) / len(waits) if waits else None})
    return out
