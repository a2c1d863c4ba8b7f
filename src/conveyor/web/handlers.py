"""What the web app does, without HTTP: each handler takes the Conveyor app and plain values
(a query mapping, a decoded JSON body) and returns plain values, or raises a :class:`Problem`
that the WSGI adapter turns into a 4xx response. The dashboard's pages and the JSON API share them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from ..app import Conveyor
from ..brokers import STATES, JobPage, JobQuery, JobRecord
from ..errors import ConveyorError, InvalidArguments, JobNotFound, PayloadTooLarge, UnknownTask
from ..presentation import display_state, is_reserved

#: Jobs a bulk action touches at most per request (call again for the rest).
BULK_LIMIT = 10_000
#: Longest accepted strings for names and search text.
MAX_NAME = 200
MAX_STATS_BUCKETS = 1440
ENQUEUE_FIELDS = frozenset({"task", "args", "kwargs", "queue", "priority", "delay", "key"})
BULK_ACTIONS = ("retry", "cancel", "delete")
#: What the ``state`` filter takes: a stored state, or ``reserved`` (running, not started yet).
FILTER_STATES = (*STATES, "reserved")
#: Running jobs a ``reserved`` filter reads at most per page it answers, in at most so many reads.
RESERVED_SCAN, RESERVED_READS = 5_000, 50
QUEUE_ACTIONS = ("pause", "resume", "purge")


class Problem(Exception):
    """An error the client caused, reported as an RFC 9457 problem body."""

    status = 400
    title = "Bad Request"

    def __init__(self, detail: str, *, field: str | None = None, errors: list[dict[str, Any]] | None = None,
                 extra: Mapping[str, Any] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.errors = errors
        self.extra = dict(extra or {})

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "about:blank", "title": self.title, "status": self.status,
                               "detail": self.detail}
        if self.field is not None:
            out["field"] = self.field
        if self.errors is not None:
            out["errors"] = self.errors
        return {**out, **self.extra}


class BadRequest(Problem):
    status, title = 400, "Bad Request"


class Forbidden(Problem):
    status, title = 403, "Forbidden"


class NotFound(Problem):
    status, title = 404, "Not Found"


class Conflict(Problem):
    status, title = 409, "Conflict"


class TooLarge(Problem):
    status, title = 413, "Content Too Large"


class Unprocessable(Problem):
    status, title = 422, "Unprocessable Content"


# -- values in and out ------------------------------------------------------------------------------
def parse_time(value: str | float | None, name: str) -> float | None:
    """A Unix timestamp or an ISO 8601 date-time (UTC unless it says otherwise)."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        text = str(value).strip()
        try:
            number = float(text)
        except ValueError:
            try:
                when = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise Unprocessable(f"{name} must be a Unix timestamp or an ISO 8601 date-time, not {text!r}",
                                    field=name) from None
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            number = when.timestamp()
    if not math.isfinite(number):
        raise Unprocessable(f"{name} must be a finite number", field=name)
    return number


def parse_int(value: str | None, name: str, default: int, low: int, high: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise Unprocessable(f"{name} must be an integer, not {value!r}", field=name) from None
    if not low <= number <= high:
        raise Unprocessable(f"{name} must be within {low}..{high}, not {number}", field=name)
    return number


def parse_name(value: Any, name: str, *, required: bool = False) -> str | None:
    if value is None or value == "":
        if required:
            raise Unprocessable(f"{name} is required", field=name)
        return None
    if not isinstance(value, str):
        raise Unprocessable(f"{name} must be a string, not {type(value).__name__}", field=name)
    if len(value) > MAX_NAME:
        raise Unprocessable(f"{name} is longer than {MAX_NAME} characters", field=name)
    return value


@dataclass
class JobFilter:
    """The filters of the jobs list (all optional)."""

    state: str | None = None
    queue: str | None = None
    task: str | None = None
    search: str | None = None
    since: float | None = None
    until: float | None = None

    def query(self, limit: int, cursor: str | None, state: str | None = None) -> JobQuery:
        """The store's query for one page of these filters (``state`` replaces the filter's)."""
        return JobQuery(state=state or self.state, queue=self.queue, task=self.task, search=self.search,
                        since=self.since, until=self.until, limit=limit, cursor=cursor)

    @classmethod
    def parse(cls, values: Mapping[str, Any]) -> JobFilter:
        state = parse_name(values.get("state"), "state")
        if state is not None and state not in FILTER_STATES:
            raise Unprocessable(f"state must be one of {', '.join(FILTER_STATES)}, not {state!r}", field="state")
        return cls(state=state, queue=parse_name(values.get("queue"), "queue"),
                   task=parse_name(values.get("task"), "task"), search=parse_name(values.get("search"), "search"),
                   since=parse_time(values.get("since"), "since"), until=parse_time(values.get("until"), "until"))

    def is_empty(self) -> bool:
        return all(v is None for v in asdict(self).values())

    def as_query(self) -> dict[str, str]:
        return {k: (str(v) if not isinstance(v, float) else repr(v)) for k, v in asdict(self).items() if v is not None}


def search(app: Conveyor, filters: JobFilter, limit: int, cursor: str | None = None) -> JobPage:
    """One page of the jobs matching ``filters``, newest first. ``reserved`` is not a stored
    state: its jobs are read among the running ones (few: what workers hold), asking each time
    for no more than the page still lacks, so that the cursor never skips one."""
    if filters.state != "reserved":
        return app.store.search_jobs(filters.query(limit, cursor))
    found: list[JobRecord] = []
    scanned = reads = 0
    while len(found) < limit and scanned < RESERVED_SCAN and reads < RESERVED_READS:
        reads += 1
        page = app.store.search_jobs(filters.query(limit - len(found), cursor, state="running"))
        found += [r for r in page.jobs if is_reserved(r)]
        scanned += len(page.jobs)
        cursor = page.cursor
        if cursor is None:
            break
    return JobPage(found, cursor)


def decode(app: Conveyor, data: bytes | None) -> Any:
    """A stored payload or result as plain data (undecodable bytes as text)."""
    if data is None:
        return None
    try:
        return app.serializer.loads(data)
    except ConveyorError:
        return data.decode("utf-8", "replace")


def job_summary(r: JobRecord) -> dict[str, Any]:
    """A job as listed: no arguments, result or traceback."""
    error = {"type": r.error.get("type"), "message": r.error.get("message")} if r.error else None
    return {"id": r.id, "task": r.task, "queue": r.queue, "state": r.state, "priority": r.priority,
            "attempts": r.attempts, "max_attempts": r.max_attempts, "created_at": r.created_at,
            "run_at": r.run_at, "started_at": r.started_at, "finished_at": r.finished_at,
            "progress": r.progress, "progress_message": r.progress_message,
            "cancel_requested": r.cancel_requested, "error": error,
            "reserved": is_reserved(r), "display_state": display_state(r)}


def job_detail(app: Conveyor, r: JobRecord) -> dict[str, Any]:
    """Everything about a job, arguments and result decoded."""
    payload = decode(app, r.payload)
    args, kwargs = ([], {}) if not isinstance(payload, dict) else (payload.get("args", []), payload.get("kwargs", {}))
    return {**job_summary(r), "key": r.key, "timeout": r.timeout, "updated_at": r.updated_at,
            "lease_until": r.lease_until, "worker": r.consumer, "args": args, "kwargs": kwargs,
            "result": decode(app, r.result), "error": r.error, "history": r.history}


def _record(app: Conveyor, job_id: str) -> JobRecord:
    record = app.store.get(job_id)
    if record is None:
        raise NotFound(f"no job with id {job_id!r}", field="id")
    return record


# -- jobs -------------------------------------------------------------------------------------------
def enqueue(app: Conveyor, body: Any, idempotency_key: str | None = None) -> tuple[int, dict[str, Any]]:
    """``POST /api/jobs``: validate and enqueue. Returns (201, job) for a new job and (200, job)
    for a repeat: the same ``Idempotency-Key`` (a job with that key in any state), or a ``key``
    held by an active job."""
    if not isinstance(body, dict):
        raise Unprocessable("the body must be a JSON object with at least \"task\"", field="body")
    unknown = sorted(set(body) - ENQUEUE_FIELDS)
    if unknown:
        raise Unprocessable(f"unknown field {unknown[0]!r}; known: {', '.join(sorted(ENQUEUE_FIELDS))}",
                            field=unknown[0])
    name = parse_name(body.get("task"), "task", required=True)
    assert name is not None
    task = app.tasks.get(name)
    if task is None:
        unknown_task = UnknownTask(name, app.tasks)
        raise NotFound(str(unknown_task), field="task",
                       extra={"known": unknown_task.known, "suggestion": unknown_task.suggestion})
    args = body.get("args", [])
    if args is None:
        args = []
    if not isinstance(args, list):
        raise Unprocessable("args must be a JSON array", field="args")
    kwargs = body.get("kwargs", {})
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict):
        raise Unprocessable("kwargs must be a JSON object", field="kwargs")
    options: dict[str, Any] = {}
    queue = parse_name(body.get("queue"), "queue")
    if queue is not None:
        options["queue"] = queue
    priority = body.get("priority")
    if priority is not None:
        if not isinstance(priority, int) or isinstance(priority, bool) or abs(priority) > 2**31:
            raise Unprocessable("priority must be an integer", field="priority")
        options["priority"] = priority
    delay = body.get("delay")
    if delay is not None:
        if (not isinstance(delay, (int, float)) or isinstance(delay, bool) or not math.isfinite(delay)
                or not 0 <= delay <= 10 * 365 * 86400):
            raise Unprocessable("delay must be a number of seconds >= 0", field="delay")
        options["delay"] = float(delay)
    key = parse_name(body.get("key"), "key")
    if idempotency_key is not None:
        if not idempotency_key or len(idempotency_key) > MAX_NAME:
            raise Unprocessable(f"Idempotency-Key must be 1..{MAX_NAME} characters", field="Idempotency-Key")
        if key is not None and key != idempotency_key:
            raise Unprocessable("key and the Idempotency-Key header differ; give one", field="key")
        key = idempotency_key
        existing = app.store.find_by_key(key)
        if existing is not None:
            return 200, job_detail(app, existing)
    if key is not None:
        options["key"] = key
    try:
        msg = task.message(args, kwargs, options)
    except InvalidArguments as exc:
        first = exc.errors[0]["argument"] if exc.errors else None
        raise Unprocessable(str(exc), field=first, errors=exc.errors) from None
    except PayloadTooLarge as exc:
        raise TooLarge(str(exc), field="args") from None
    except (ValueError, TypeError) as exc:
        raise Unprocessable(str(exc), field="body") from None
    (job_id,) = app.broker.enqueue([msg])
    return (201 if job_id == msg.id else 200), job_detail(app, _record(app, job_id))


def list_jobs(app: Conveyor, query: Mapping[str, Any]) -> dict[str, Any]:
    """``GET /api/jobs``: newest first, filtered, one page; ``cursor`` continues."""
    filters = JobFilter.parse(query)
    limit = parse_int(query.get("limit"), "limit", 50, 1, 500)
    cursor = parse_name(query.get("cursor"), "cursor")
    page = search(app, filters, limit, cursor)
    return {"jobs": [job_summary(r) for r in page.jobs], "cursor": page.cursor}


def get_job(app: Conveyor, job_id: str) -> dict[str, Any]:
    """``GET /api/jobs/{id}``."""
    return job_detail(app, _record(app, job_id))


def cancel_job(app: Conveyor, job_id: str) -> dict[str, Any]:
    """``POST /api/jobs/{id}/cancel``: queued or scheduled → cancelled; running → asked to stop."""
    try:
        app.broker.cancel(job_id)
    except JobNotFound:
        raise NotFound(f"no job with id {job_id!r}", field="id") from None
    return job_detail(app, _record(app, job_id))


def retry_job(app: Conveyor, job_id: str) -> dict[str, Any]:
    """``POST /api/jobs/{id}/retry``: a failed or cancelled job runs again."""
    try:
        app.broker.retry(job_id)
    except JobNotFound:
        raise NotFound(f"no job with id {job_id!r}", field="id") from None
    except ValueError as exc:
        raise Conflict(str(exc), field="id") from None
    return job_detail(app, _record(app, job_id))


def delete_job(app: Conveyor, job_id: str) -> dict[str, Any]:
    """``DELETE /api/jobs/{id}``: any job that is not running."""
    record = _record(app, job_id)
    if not app.broker.delete(job_id):
        raise Conflict(f"job {job_id} is {record.state}; a running job cannot be deleted", field="id")
    return {"id": job_id, "deleted": True}


def bulk(app: Conveyor, body: Any) -> dict[str, Any]:
    """``POST /api/jobs/bulk``: retry, cancel or delete the jobs given by ``ids`` or matching
    ``filter``, at most :data:`BULK_LIMIT` per call (``more`` says whether some were left)."""
    if not isinstance(body, dict):
        raise Unprocessable("the body must be a JSON object with \"action\"", field="body")
    action = body.get("action")
    if action not in BULK_ACTIONS:
        raise Unprocessable(f"action must be one of {', '.join(BULK_ACTIONS)}", field="action")
    ids, raw_filter = body.get("ids"), body.get("filter")
    if (ids is None) == (raw_filter is None):
        raise Unprocessable("give either ids or filter", field="ids")
    targets: list[str] = []
    more = False
    if ids is not None:
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or len(ids) > BULK_LIMIT:
            raise Unprocessable(f"ids must be a list of at most {BULK_LIMIT} job ids", field="ids")
        targets = list(dict.fromkeys(ids))
    else:
        if not isinstance(raw_filter, dict):
            raise Unprocessable("filter must be a JSON object", field="filter")
        filters = JobFilter.parse(raw_filter)
        if filters.is_empty():
            raise Unprocessable("an empty filter would match every job; give at least one criterion",
                                field="filter")
        cursor: str | None = None
        while len(targets) < BULK_LIMIT:
            page = search(app, filters, min(500, BULK_LIMIT - len(targets)), cursor)
            targets += [r.id for r in page.jobs]
            cursor = page.cursor
            if cursor is None:
                break
        more = cursor is not None
    changed = 0
    skipped: list[dict[str, str]] = []
    for job_id in targets:
        try:
            if action == "retry":
                app.broker.retry(job_id)
            elif action == "cancel":
                before = app.store.get(job_id)
                if before is None:
                    raise JobNotFound(job_id)
                if before.state not in ("queued", "scheduled", "running"):
                    raise ValueError(f"job {job_id} is {before.state}")
                app.broker.cancel(job_id)
            elif not app.broker.delete(job_id):
                raise ValueError(f"job {job_id} is running or gone")
            changed += 1
        except (JobNotFound, ValueError) as exc:
            if len(skipped) < 100:
                skipped.append({"id": job_id, "reason": str(exc)})
    return {"action": action, "matched": len(targets), "changed": changed,
            "skipped": len(targets) - changed, "skipped_sample": skipped, "more": more}


# -- queues, workers, stats ---------------------------------------------------------------------------
def list_queues(app: Conveyor) -> dict[str, Any]:
    """``GET /api/queues``: every queue (the app's own too, when empty), depth by state, paused.
    ``counts.reserved`` is the part of ``counts.running`` that has not started yet."""
    infos = {q.name: q for q in app.store.queues()}
    reserved = app.store.reserved_counts()
    names = sorted(set(infos) | set(app.queues))
    out = []
    for name in names:
        info = infos.get(name)
        counts = {s: (info.counts.get(s, 0) if info else 0) for s in STATES}
        counts["reserved"] = min(reserved.get(name, 0), counts["running"])
        out.append({"name": name, "paused": bool(info and info.paused), "counts": counts,
                    "depth": counts["queued"] + counts["scheduled"]})
    return {"queues": out}


def queue_action(app: Conveyor, name: str, action: str, body: Any = None) -> dict[str, Any]:
    """``POST /api/queues/{name}/pause|resume|purge`` (purge: queued and scheduled jobs, or
    ``{"states": [...]}``; running jobs are never deleted)."""
    parse_name(name, "name", required=True)
    if action == "pause":
        app.broker.pause(name)
        return {"name": name, "paused": True}
    if action == "resume":
        app.broker.resume(name)
        return {"name": name, "paused": False}
    if action == "purge":
        states: Sequence[str] = ("queued", "scheduled")
        if isinstance(body, dict) and body.get("states") is not None:
            states = body["states"]
            if (not isinstance(states, list) or not states
                    or any(s not in STATES or s == "running" for s in states)):
                raise Unprocessable("states must be a non-empty list of states other than running",
                                    field="states")
        return {"name": name, "deleted": app.broker.purge(name, list(states))}
    raise NotFound(f"unknown queue action {action!r}", field="action")


def list_workers(app: Conveyor) -> dict[str, Any]:
    """``GET /api/workers``: workers heard from in the last minute."""
    now = app.store.clock()
    workers = []
    for w in sorted(app.store.workers(), key=lambda w: (w.hostname, w.pid, w.id)):
        data = asdict(w)
        data["uptime"] = max(0.0, now - w.started_at)
        workers.append(data)
    return {"workers": workers}


def stats(app: Conveyor, query: Mapping[str, Any]) -> dict[str, Any]:
    """``GET /api/stats``: finished jobs per queue per bucket (counts, run and wait times)."""
    now = app.store.clock()
    bucket = parse_int(query.get("bucket"), "bucket", 60, 1, 86400)
    since = parse_time(query.get("since"), "since")
    if since is None:
        since = now - 3600
    if (now - since) / bucket > MAX_STATS_BUCKETS:
        raise Unprocessable(f"since and bucket give more than {MAX_STATS_BUCKETS} buckets; widen the bucket",
                            field="bucket")
    return {"since": since, "until": now, "bucket": bucket, "series": app.store.stats(since, float(bucket)),
            "reserved": {q: n for q, n in sorted(app.store.reserved_counts().items()) if n}}
