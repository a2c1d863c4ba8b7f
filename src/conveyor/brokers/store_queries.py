"""The default web-app queries of every :class:`~conveyor.brokers.store.JobStore`: a text search,
lookup by key, statistics and the change feed, built on the store's own operations. A store with
faster ways (an index, a change log) overrides them.
"""

from __future__ import annotations

import itertools
import threading
from typing import TYPE_CHECKING, Any

from .records import (
    Clock,
    Event,
    JobPage,
    JobQuery,
    JobRecord,
    WorkerInfo,
    job_event_data,
    job_matches,
    summarize,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["SCAN_LIMIT", "DefaultQueries"]

#: How many jobs the base class's default queries read at most, for stores without their own.
SCAN_LIMIT = 10_000
_CURSORS = itertools.count(1)


class DefaultQueries:
    """Mixed into :class:`~conveyor.brokers.store.JobStore` (see the module docstring)."""

    supports_search: bool = False
    clock: Clock
    _snapshot_lock: threading.Lock
    _snapshots: dict[str, tuple[dict[str, Any], list[Event]]]

    if TYPE_CHECKING:
        def list_jobs(self, *, state: str | None = None, queue: str | None = None, task: str | None = None,
                      limit: int = 50, cursor: str | None = None) -> JobPage: ...
        def counts(self) -> dict[str, dict[str, int]]: ...
        def paused_queues(self) -> set[str]: ...
        def workers(self, max_age: float = 60.0) -> list[WorkerInfo]: ...
        def get_many(self, job_ids: Sequence[str]) -> list[JobRecord | None]: ...

    # -- queries of the web app (each has a default built on the operations above) -------------
    def search_jobs(
        self,
        query: JobQuery | None = None,
        /,
        *,
        state: str | None = None,
        queue: str | None = None,
        task: str | None = None,
        search: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """:meth:`list_jobs` with a text search (a substring of the arguments or the error, any
        case) and a time range on ``created_at`` (``since <= created_at < until``).

        Brokers declaring ``supports_search`` answer it in ``list_jobs``. Otherwise this pages
        through :meth:`list_jobs` and filters here, reading at most :data:`SCAN_LIMIT` jobs per
        call; a page cut short by that budget still carries a cursor to continue from.

        The filters come as one :class:`JobQuery` or as keywords (not both).
        """
        if query is not None:
            state, queue, task, search = query.state, query.queue, query.task, query.search
            since, until, limit, cursor = query.since, query.until, query.limit, query.cursor
        if self.supports_search:
            return self.list_jobs(state=state, queue=queue, task=task, limit=limit,  # type: ignore[call-arg]
                                  cursor=cursor, search=search, since=since, until=until)
        if search is None and since is None and until is None:
            return self.list_jobs(state=state, queue=queue, task=task, limit=limit, cursor=cursor)
        found: list[JobRecord] = []
        scanned = 0
        while scanned < SCAN_LIMIT:
            page = self.list_jobs(state=state, queue=queue, task=task, limit=200, cursor=cursor)
            for job in page.jobs:
                scanned += 1
                if job_matches(job, search, since, until):
                    found.append(job)
                    if len(found) > limit:
                        return JobPage(found[:limit], found[limit - 1].id)
            cursor = page.cursor
            if cursor is None:
                return JobPage(found, None)
        return JobPage(found, cursor)

    def find_by_key(self, key: str) -> JobRecord | None:
        """The newest job enqueued with unique ``key``, in any state (for idempotent enqueues).

        Default: scans :meth:`list_jobs` newest first, at most :data:`SCAN_LIMIT` jobs.
        """
        cursor: str | None = None
        scanned = 0
        while scanned < SCAN_LIMIT:
            page = self.list_jobs(limit=500, cursor=cursor)
            for job in page.jobs:
                if job.key == key:
                    return job
            scanned += len(page.jobs)
            if page.cursor is None:
                return None
            cursor = page.cursor
        return None

    def stats(self, since: float, bucket: float) -> list[dict[str, Any]]:
        """Finished jobs per queue per time bucket since ``since``: one dict per (queue, bucket)
        that had any, ordered by bucket then queue: ``queue``, ``bucket`` (its start, Unix
        seconds), ``succeeded`` and ``failed`` counts, ``run_mean`` and ``run_p95`` (seconds from
        start to finish), ``wait_mean`` (seconds from creation to start). Buckets start at
        ``since`` and are ``bucket`` seconds long.

        Default: reads succeeded and failed jobs from :meth:`list_jobs` (newest first, at most
        :data:`SCAN_LIMIT` of each), so on a busy broker it covers only the latest of them.
        """
        if bucket <= 0:
            raise ValueError(f"bucket must be > 0 seconds, not {bucket}")
        rows = []
        for state in ("succeeded", "failed"):
            cursor: str | None = None
            scanned = 0
            while scanned < SCAN_LIMIT:
                page = self.list_jobs(state=state, limit=500, cursor=cursor)
                for job in page.jobs:
                    if job.finished_at is not None and job.finished_at >= since:
                        rows.append(_stat_row(job))
                scanned += len(page.jobs)
                # Ids grow with creation time: a page wholly created an hour before ``since``
                # cannot hold jobs that finished after it, short of hour-long runs.
                if page.cursor is None or (page.jobs and page.jobs[-1].created_at < since - 3600):
                    break
                cursor = page.cursor
        return summarize(rows, since, bucket)

    def changes(self, after: str | None, limit: int = 500) -> tuple[list[Event], str]:
        """Changes of jobs (state, progress), queues (pause, resume) and workers (heartbeats) after
        the cursor ``after``, oldest first, at most ``limit``, and the cursor to pass next time.
        ``after=None`` returns no events, only the current cursor.

        A cursor older than the broker keeps (about ten minutes) yields a single ``reset`` event:
        the caller should reload what it shows.

        Default, for brokers without a change log: compares snapshots taken on each call — the
        counts per queue and state, the paused queues, the workers, and the newest 200 jobs —
        and reports what differs (several changes of one job between two calls come as one).
        Cursors are then only meaningful to this broker object, which keeps the last 64.
        """
        with self._snapshot_lock:
            snap = self._take_snapshot()
            now = self.clock()
            events: list[Event] = []
            if after is not None:
                if after not in self._snapshots:
                    events.append(Event("", "reset", {}, now))
                else:
                    previous, backlog = self._snapshots[after]
                    events = backlog + _diff_snapshots(previous, snap, now, self)
                    if not events and previous == snap:
                        return [], after  # nothing new: the same cursor
            cursor = str(next(_CURSORS))
            head, rest = events[:max(0, limit)], events[max(0, limit):]
            self._snapshots[cursor] = (snap, rest)  # what did not fit comes with the next call
            while len(self._snapshots) > 64:
                del self._snapshots[next(iter(self._snapshots))]
            for e in head:
                e.id = cursor
            return head, cursor

    def _take_snapshot(self) -> dict[str, Any]:
        jobs = self.list_jobs(limit=200).jobs
        return {
            "counts": self.counts(),
            "paused": sorted(self.paused_queues()),
            "workers": {w.id: (tuple(w.current), w.processed, w.failed) for w in self.workers()},
            "jobs": {j.id: job_event_data(j) for j in jobs},
        }


def _stat_row(job: JobRecord) -> tuple[str, float, str, float | None, float | None, float]:
    assert job.finished_at is not None
    run = job.finished_at - job.started_at if job.started_at is not None else None
    wait = job.started_at - job.created_at if job.started_at is not None else None
    return job.queue, job.finished_at, job.state, run, wait, job.created_at


def _diff_snapshots(old: dict[str, Any], new: dict[str, Any], now: float, broker: DefaultQueries) -> list[Event]:
    events: list[Event] = []
    for job_id, data in new["jobs"].items():
        if old["jobs"].get(job_id) != data:
            events.append(Event("", "job", data, now))
    gone = [job_id for job_id in old["jobs"] if job_id not in new["jobs"]]
    for job_id, record in zip(gone, broker.get_many(gone) if gone else []):
        if record is None:  # deleted, not merely pushed out of the newest 200
            events.append(Event("", "job", {**old["jobs"][job_id], "state": "deleted"}, now))
    for name in sorted(set(old["paused"]) ^ set(new["paused"])):
        events.append(Event("", "queue", {"name": name, "paused": name in new["paused"]}, now))
    for name in sorted(set(old["counts"]) | set(new["counts"])):
        if old["counts"].get(name) != new["counts"].get(name) and not any(
                e.kind == "job" and e.data["queue"] == name for e in events):
            events.append(Event("", "queue", {"name": name, "counts": new["counts"].get(name, {})}, now))
    for worker_id in sorted(set(old["workers"]) | set(new["workers"])):
        if old["workers"].get(worker_id) != new["workers"].get(worker_id):
            state = "seen" if worker_id in new["workers"] else "gone"
            events.append(Event("", "worker", {"id": worker_id, "state": state}, now))
    return events
