"""``memory://``: the reference broker, complete and in-process.

It honours every rule of the contract (leases, fencing, delays, priorities, retries, pause) with
an injectable clock, so tests can move time instead of sleeping. It lives in one process: use the
thread or async pool with it, or the SQLite broker to share jobs between processes.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from ..errors import JobNotFound
from .memory_pairing import MemoryPairing
from .records import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    Clock,
    Event,
    ExtendResult,
    JobPage,
    JobRecord,
    Lease,
    Message,
    Outcome,
    WorkerInfo,
    job_event_data,
    job_matches,
    summarize,
)
from .store import Broker

#: Changes kept for :meth:`MemoryBroker.changes` (a ring: older ones are forgotten).
EVENT_RING = 10_000

LOST_LEASE = {"type": "LeaseExpired", "message": "the lease expired: the worker stopped heartbeating"}


class MemoryBroker(MemoryPairing, Broker):
    """In-process broker and store; the reference implementation of the contract."""

    scheme = "memory"
    supports_blocking_fetch = True
    supports_notify = True
    shared_between_processes = False
    supports_search = True
    supports_start_marks = True

    def __init__(self, url: str = "memory://", *, clock: Clock | None = None) -> None:
        super().__init__(url, clock=clock)
        self._lock = threading.Condition()
        self._jobs: dict[str, JobRecord] = {}
        self._seq: dict[str, int] = {}
        self._counter = itertools.count()
        self._ready: dict[str, list[tuple[int, int, str]]] = {}  # queue -> heap(-priority, seq, id)
        self._schedule: list[tuple[float, int, str]] = []  # heap(run_at, seq, id)
        self._keys: dict[str, str] = {}  # unique key -> active job id
        self._paused: set[str] = set()
        self._workers: dict[str, WorkerInfo] = {}
        self._events: deque[Event] = deque(maxlen=EVENT_RING)
        self._event_ids = itertools.count(1)
        self._last_event = 0
        self._outbox: dict[str, None] | None = None  # paired: queued jobs to send, in that order

    def fork(self) -> Broker:
        """The same in-process state (threads share one memory broker)."""
        return self

    # -- helpers -----------------------------------------------------------------------------
    def _emit(self, kind: str, data: dict[str, Any]) -> None:
        """Record a change (the lock is held)."""
        self._last_event = next(self._event_ids)
        self._events.append(Event(str(self._last_event), kind, data, self.clock()))

    def _changed(self, job: JobRecord) -> None:
        self._emit("job", job_event_data(job))

    def _push_ready(self, job: JobRecord) -> None:
        if self._outbox is not None:  # paired: a transport carries it, not the ready heap
            self._outbox[job.id] = None
            return
        heapq.heappush(self._ready.setdefault(job.queue, []), (-job.priority, self._seq[job.id], job.id))

    def _push_schedule(self, job: JobRecord) -> None:
        assert job.run_at is not None
        heapq.heappush(self._schedule, (job.run_at, next(self._counter), job.id))

    def _settle(self, job: JobRecord, state: str, now: float) -> None:
        job.state = state
        job.updated_at = now
        job.lease_until = None
        job.consumer = None
        if state in TERMINAL_STATES:
            job.finished_at = now
            if job.key and self._keys.get(job.key) == job.id:
                del self._keys[job.key]
        elif state == "queued":
            job.run_at = now
            self._push_ready(job)
        elif state == "scheduled":
            self._push_schedule(job)
        self._changed(job)

    def _promote(self, now: float) -> int:
        n = 0
        while self._schedule and self._schedule[0][0] <= now:
            run_at, _, job_id = heapq.heappop(self._schedule)
            job = self._jobs.get(job_id)
            if job is not None and job.state == "scheduled" and job.run_at == run_at:
                job.state = "queued"
                job.updated_at = now
                self._push_ready(job)
                self._changed(job)
                n += 1
        return n

    def _lose(self, job: JobRecord, now: float, error: Mapping[str, object]) -> None:
        """A running job whose worker is gone: back to the queue, or failed when out of attempts
        (cancelled instead when its cancellation was requested: it must not run again)."""
        job.history.append({"attempt": job.attempts, "at": now, "state": "lost", "error": error})
        if job.cancel_requested:
            self._settle(job, "cancelled", now)
        elif job.attempts >= job.max_attempts:
            job.error = dict(error)
            self._settle(job, "failed", now)
        else:
            self._settle(job, "queued", now)

    # -- moving jobs -------------------------------------------------------------------------
    def enqueue(self, messages: Sequence[Message]) -> list[str]:
        now = self.clock()
        ids: list[str] = []
        with self._lock:
            for m in messages:
                if m.key is not None and m.key in self._keys:
                    ids.append(self._keys[m.key])
                    continue
                if m.id in self._jobs:  # enqueued before: never overwrite a job
                    ids.append(m.id)
                    continue
                scheduled = m.run_at is not None and m.run_at > now
                job = JobRecord(
                    id=m.id, task=m.task, queue=m.queue, payload=m.payload,
                    state="scheduled" if scheduled else "queued", priority=m.priority, key=m.key,
                    max_attempts=m.max_attempts, timeout=m.timeout, created_at=m.created_at or now,
                    run_at=m.run_at if scheduled else now, updated_at=now,
                )
                self._jobs[job.id] = job
                self._seq[job.id] = next(self._counter)
                if m.key is not None:
                    self._keys[m.key] = job.id
                if scheduled:
                    self._push_schedule(job)
                else:
                    self._push_ready(job)
                self._changed(job)
                ids.append(job.id)
            self._lock.notify_all()
        return ids

    def fetch(self, queues: Sequence[str], limit: int, lease: float, consumer: str) -> list[Lease]:
        now = self.clock()
        out: list[Lease] = []
        with self._lock:
            self._promote(now)
            for queue in queues:
                if queue in self._paused:
                    continue
                heap = self._ready.get(queue)
                while heap and len(out) < limit:
                    _, seq, job_id = heapq.heappop(heap)
                    job = self._jobs.get(job_id)
                    if job is None or job.state != "queued" or self._seq[job_id] != seq:
                        continue
                    out.append(self._lease(job, now, lease, consumer))
                if len(out) >= limit:
                    break
        return out

    def _lease(self, job: JobRecord, now: float, lease: float, consumer: str) -> Lease:
        job.state, job.consumer = "running", consumer
        job.attempts += 1
        job.token += 1
        job.lease_until = now + lease
        job.updated_at = now
        job.started_at = None  # reserved until the worker marks the start
        job.cancel_requested = False
        self._changed(job)
        return Lease(job.id, job.token, job.task, job.queue, job.payload, job.attempts,
                     job.max_attempts, job.timeout, job.lease_until, job.priority)

    def wait(self, queues: Sequence[str], timeout: float) -> None:
        with self._lock:
            if any(self._ready.get(q) for q in queues if q not in self._paused):
                return
            if self._schedule and self._schedule[0][0] <= self.clock():
                return
            self._lock.wait(timeout)

    def mark_started(self, marks: Sequence[tuple[str, int, float]]) -> None:
        with self._lock:
            for job_id, token, at in marks:
                job = self._current(job_id, token)
                if job is not None:
                    job.started_at, job.updated_at = at, self.clock()
                    self._changed(job)

    def reserved_counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        with self._lock:
            for job in self._jobs.values():
                if job.state == "running" and job.started_at is None:
                    found[job.queue] = found.get(job.queue, 0) + 1
        return found

    def _current(self, job_id: str, token: int) -> JobRecord | None:
        job = self._jobs.get(job_id)
        if job is None or job.state != "running" or job.token != token:
            return None
        return job

    def ack(self, outcomes: Sequence[Outcome]) -> list[bool]:
        now = self.clock()
        accepted: list[bool] = []
        with self._lock:
            for o in outcomes:
                job = self._current(o.job_id, o.token)
                if job is None:
                    accepted.append(False)
                    continue
                state = o.state
                if job.cancel_requested and state in ("queued", "scheduled"):
                    state = "cancelled"  # its cancellation was requested: never queue it again
                if o.state == "queued":  # handed back unstarted: not an attempt
                    job.attempts -= 1
                    if o.error is not None:  # e.g. who refused it (UnknownTask), for the next worker
                        job.error = o.error
                    if state == "queued" and o.run_at is not None and o.run_at > now:
                        state, job.run_at = "scheduled", o.run_at
                    self._settle(job, state, now)
                    accepted.append(True)
                    continue
                job.started_at = o.started_at or job.started_at
                if o.result is not None:
                    job.result = o.result
                if o.error is not None:
                    job.error = o.error
                if o.state != "succeeded":
                    job.history.append({"attempt": job.attempts, "at": o.finished_at or now,
                                        "state": o.state, "error": o.error})
                if state == "scheduled":
                    job.run_at = o.run_at if o.run_at is not None else now
                self._settle(job, state, now)
                if o.finished_at is not None and state in TERMINAL_STATES:
                    job.finished_at = o.finished_at
                accepted.append(True)
            self._lock.notify_all()
        return accepted

    def extend(self, leases: Sequence[tuple[str, int]], lease: float) -> ExtendResult:
        now = self.clock()
        result = ExtendResult()
        with self._lock:
            for job_id, token in leases:
                job = self._current(job_id, token)
                if job is None:
                    result.lost.add(job_id)
                    continue
                job.lease_until = now + lease
                if job.cancel_requested:
                    result.cancel_requested.add(job_id)
        return result

    def progress(self, job_id: str, token: int, fraction: float | None, message: str | None) -> bool:
        with self._lock:
            job = self._current(job_id, token)
            if job is None:
                return False
            job.progress, job.progress_message = fraction, message
            job.updated_at = self.clock()
            self._changed(job)
            return True

    def recover(self) -> int:
        now = self.clock()
        n = 0
        with self._lock:
            for job in list(self._jobs.values()):
                if job.state == "running" and job.lease_until is not None and job.lease_until < now:
                    self._lose(job, now, LOST_LEASE)
                    n += 1
            self._promote(now)
            self._lock.notify_all()
        return n

    def release(self, consumer: str, reason: str) -> int:
        now = self.clock()
        n = 0
        with self._lock:
            for job in list(self._jobs.values()):
                if job.state == "running" and job.consumer == consumer:
                    self._lose(job, now, {"type": "WorkerLost", "message": reason})
                    n += 1
            self._lock.notify_all()
        return n

    # -- control -----------------------------------------------------------------------------
    def cancel(self, job_id: str) -> str:
        now = self.clock()
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise JobNotFound(job_id)
            if job.state in ("queued", "scheduled"):
                self._settle(job, "cancelled", now)
            elif job.state == "running":
                job.cancel_requested = True
                job.updated_at = now
                self._changed(job)
            return job.state

    def retry(self, job_id: str) -> str:
        now = self.clock()
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise JobNotFound(job_id)
            if job.state in ACTIVE_STATES or job.state == "succeeded":
                raise ValueError(f"job {job_id} is {job.state}; only failed or cancelled jobs can be retried")
            if job.key is not None:
                if job.key in self._keys:
                    raise ValueError(f"job {job_id}: another active job holds key {job.key!r}")
                self._keys[job.key] = job.id
            job.attempts, job.error, job.finished_at = 0, None, None
            job.cancel_requested = False
            self._settle(job, "queued", now)
            self._lock.notify_all()
            return job.state

    def delete(self, job_id: str) -> bool:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state == "running":
                return False
            if job.key and self._keys.get(job.key) == job_id:
                del self._keys[job.key]
            del self._jobs[job_id]
            self._emit("job", {**job_event_data(job), "state": "deleted"})
            return True

    def pause(self, queue: str) -> None:
        with self._lock:
            self._paused.add(queue)
            self._emit("queue", {"name": queue, "paused": True})

    def resume(self, queue: str) -> None:
        with self._lock:
            self._paused.discard(queue)
            self._emit("queue", {"name": queue, "paused": False})
            self._lock.notify_all()

    def purge(self, queue: str | None, states: Iterable[str] = ("queued", "scheduled")) -> int:
        wanted = set(states) - {"running"}
        with self._lock:
            doomed = [j.id for j in self._jobs.values()
                      if j.state in wanted and (queue is None or j.queue == queue)]
        return sum(self.delete(j) for j in doomed)

    def prune(self, older_than: float) -> int:
        now = self.clock()
        cutoff = now - older_than
        with self._lock:
            doomed = [j.id for j in self._jobs.values() if j.state in ("succeeded", "cancelled")
                      and j.finished_at is not None and j.finished_at < cutoff]
            quiet = now - max(older_than, 3600.0)  # as the SQLite store: forget long-silent workers
            for worker_id in [w.id for w in self._workers.values() if w.last_seen < quiet]:
                del self._workers[worker_id]
                self._emit("worker", {"id": worker_id, "state": "gone"})
        return sum(self.delete(j) for j in doomed)

    # -- store queries -----------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else replace(job, history=list(job.history))

    def list_jobs(self, *, state: str | None = None, queue: str | None = None, task: str | None = None,
                  limit: int = 50, cursor: str | None = None, search: str | None = None,
                  since: float | None = None, until: float | None = None) -> JobPage:
        with self._lock:
            rows = [j for j in self._jobs.values()
                    if (state is None or j.state == state) and (queue is None or j.queue == queue)
                    and (task is None or j.task == task) and (cursor is None or j.id < cursor)
                    and job_matches(j, search, since, until)]
        rows.sort(key=lambda j: j.id, reverse=True)
        page = [replace(j, history=list(j.history)) for j in rows[:limit]]
        return JobPage(page, page[-1].id if len(rows) > limit and page else None)

    def find_by_key(self, key: str) -> JobRecord | None:
        with self._lock:
            found = [j for j in self._jobs.values() if j.key == key]
            if not found:
                return None
            job = max(found, key=lambda j: self._seq[j.id])
            return replace(job, history=list(job.history))

    def stats(self, since: float, bucket: float) -> list[dict[str, Any]]:
        if bucket <= 0:
            raise ValueError(f"bucket must be > 0 seconds, not {bucket}")
        with self._lock:
            rows = [(j.queue, j.finished_at, j.state,
                     None if j.started_at is None else j.finished_at - j.started_at,
                     None if j.started_at is None else j.started_at - j.created_at, j.created_at)
                    for j in self._jobs.values()
                    if j.state in ("succeeded", "failed") and j.finished_at is not None and j.finished_at >= since]
        return summarize(rows, since, bucket)

    def changes(self, after: str | None, limit: int = 500) -> tuple[list[Event], str]:
        with self._lock:
            last = self._last_event
            if after is None:
                return [], str(last)
            try:
                start = int(after)
            except ValueError:
                start = -1
            if start > last or start < 0:
                return [Event(str(last), "reset", {}, self.clock())], str(last)
            oldest = int(self._events[0].id) if self._events else last + 1
            if start < oldest - 1:  # some of what came after the cursor was forgotten
                return [Event(str(last), "reset", {}, self.clock())], str(last)
            # Ids are consecutive, so the position in the ring follows from the id.
            skip = start - oldest + 1
            out = list(itertools.islice(self._events, skip, skip + max(0, limit)))
        return out, out[-1].id if out else after

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        with self._lock:
            for j in self._jobs.values():
                per = out.setdefault(j.queue, {})
                per[j.state] = per.get(j.state, 0) + 1
        return out

    def paused_queues(self) -> set[str]:
        with self._lock:
            return set(self._paused)

    def heartbeat(self, worker: WorkerInfo) -> None:
        with self._lock:
            self._workers[worker.id] = replace(worker, last_seen=self.clock())
            self._emit("worker", {"id": worker.id, "state": "seen"})

    def unregister(self, worker_id: str) -> None:
        with self._lock:
            if self._workers.pop(worker_id, None) is not None:
                self._emit("worker", {"id": worker_id, "state": "gone"})

    def workers(self, max_age: float = 60.0) -> list[WorkerInfo]:
        now = self.clock()
        with self._lock:
            return [replace(w) for w in self._workers.values() if now - w.last_seen <= max_age]
