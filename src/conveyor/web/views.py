"""What the dashboard's pages show, without HTTP: each function takes the Conveyor app and plain
values and returns the template's context. Jobs are shown as people should read them
(:mod:`conveyor.presentation`): reserved apart from running, an error the job went on from
labelled with its attempt, a succeeded job complete, a failed attempt with its retry time."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..app import Conveyor
from ..brokers import STATES, JobRecord
from ..presentation import error_label, run_time, short_task, shown_progress
from . import handlers

#: The states the overview and the queues page count, ``reserved`` (leased, not started yet)
#: apart from ``running`` (executing).
SHOWN_STATES = ("queued", "scheduled", "reserved", "running", "succeeded", "failed", "cancelled")
#: Longest task name in the jobs list (the whole name is in its title).
TASK_WIDTH = 28


def presented(r: JobRecord, now: float) -> dict[str, Any]:
    """How a job reads on a page, beside its JSON fields."""
    progress, message = shown_progress(r)
    label = error_label(r)
    return {"error_label": label, "error_is_why": label == "error",
            "shown_progress": progress, "shown_progress_message": message,
            "run_time": run_time(r, now), "task_short": short_task(r.task, TASK_WIDTH)}


def job_row(r: JobRecord, now: float) -> dict[str, Any]:
    """A job in a list: its summary and how it reads."""
    return {**handlers.job_summary(r), **presented(r, now)}


def shown_counts(counts: Mapping[str, int]) -> dict[str, int]:
    """A queue's counts with ``running`` as the jobs executing and ``reserved`` apart."""
    reserved = counts.get("reserved", 0)
    out = {s: counts.get(s, 0) for s in STATES}
    out["reserved"] = reserved
    out["running"] = max(0, out["running"] - reserved)
    return out


def queues_page(app: Conveyor) -> dict[str, Any]:
    """The Queues page: each queue's counts, reserved apart from running."""
    queues = handlers.list_queues(app)["queues"]
    return {"queues": [{**q, "shown": shown_counts(q["counts"])} for q in queues], "columns": SHOWN_STATES}


def chart(rows: Sequence[Mapping[str, Any]], since: float, bucket: float, n: int, field: str,
          width: float = 600.0, height: float = 120.0) -> dict[str, Any]:
    """Bars of ``field`` (summed over queues) per bucket, as SVG geometry for the templates."""
    totals = [0] * n
    for row in rows:
        i = int((row["bucket"] - since) // bucket)
        if 0 <= i < n:
            totals[i] += int(row[field])
    peak = max(totals) or 1
    step = width / n
    bars = []
    for i, value in enumerate(totals):
        h = value / peak * (height - 4)
        bars.append({"x": round(i * step, 2), "y": round(height - h, 2), "w": round(max(step - 1, 1), 2),
                     "h": round(h, 2), "value": value, "at": since + i * bucket})
    return {"bars": bars, "peak": max(totals), "total": sum(totals), "width": width, "height": height}


def overview(app: Conveyor) -> dict[str, Any]:
    """The Overview page: totals by state, charts of the last hour, queues and workers."""
    now = app.store.clock()
    bucket, n = 60.0, 60
    since = math.floor((now - bucket * (n - 1)) / bucket) * bucket
    rows = app.store.stats(since, bucket)
    queues = queues_page(app)["queues"]
    totals = {s: sum(q["shown"][s] for q in queues) for s in SHOWN_STATES}
    return {"totals": totals, "columns": SHOWN_STATES, "queues": queues,
            "workers": handlers.list_workers(app)["workers"],
            "throughput": chart(rows, since, bucket, n, "succeeded"),
            "failures": chart(rows, since, bucket, n, "failed"),
            "recent_failed": [job_row(r, now) for r in app.store.list_jobs(state="failed", limit=5).jobs]}


def jobs_page(app: Conveyor, query: Mapping[str, Any]) -> dict[str, Any]:
    """The Jobs (and Failed) list: one page of jobs as rows, and the filters that chose them.
    A bad filter is reported on the page (``error``, answered with 422), not raised."""
    now = app.store.clock()
    error = None
    try:
        filters = handlers.JobFilter.parse(query)
        limit = handlers.parse_int(query.get("limit"), "limit", 50, 1, 500)
        page = handlers.search(app, filters, limit, handlers.parse_name(query.get("cursor"), "cursor"))
        jobs, cursor = [job_row(r, now) for r in page.jobs], page.cursor
    except handlers.Problem as exc:
        jobs, cursor, filters, error = [], None, handlers.JobFilter(), exc.body()
    return {"jobs": jobs, "cursor": cursor, "filters": filters, "error": error, "now": now,
            "filter_states": handlers.FILTER_STATES, "tasks": sorted(app.tasks),
            "queues": [q["name"] for q in handlers.list_queues(app)["queues"]]}


def job_page(app: Conveyor, job_id: str) -> dict[str, Any]:
    """A job's page: everything about it, and how it reads."""
    record = app.store.get(job_id)
    if record is None:
        raise handlers.NotFound(f"no job with id {job_id!r}", field="id")
    now = app.store.clock()
    return {"job": {**handlers.job_detail(app, record), **presented(record, now)}, "now": now}
