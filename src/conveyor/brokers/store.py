"""``JobStore``: the job database contract, and ``Broker``, the facade the worker and the app use.

Semantics every store honours (see ``docs/semantics.md``):

* A job leaves the queue only by an ack after its run, a cancel, or being dead-lettered (``failed``).
* ``fetch`` (claim) leases jobs: each lease has a deadline and a fencing token. ``extend`` pushes
  the deadline; ``recover`` (expire) puts jobs with expired leases back (counted as a delivery).
  Any ack, extend or progress carrying a token that is no longer current is refused.
* Delayed jobs wait in the schedule (state ``scheduled``), never under a lease.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from ..errors import BrokerError, ConfigError
from .records import (
    STATES,
    TERMINAL_STATES,
    Check,
    Clock,
    Dispatch,
    Event,
    ExtendResult,
    JobPage,
    JobRecord,
    Lease,
    Message,
    Outcome,
    QueueInfo,
    WorkerInfo,
)
from .store_queries import SCAN_LIMIT, DefaultQueries

__all__ = ["SCAN_LIMIT", "Broker", "JobStore"]




class JobStore(DefaultQueries, ABC):
    """The job database: the fenced lifecycle, operator control and the queries.

    Names. The lifecycle keeps the names every backend, test and worker has always used, and those
    are what a store implements: ``enqueue`` (add), ``fetch`` (claim from queues), ``ack``,
    ``extend``, ``progress``, ``recover`` (expire) and ``release``. The names of the design,
    :meth:`add`, :meth:`claim` and :meth:`expire`, are aliases of them, so a caller may use either.
    :meth:`enqueue_stream` (``enqueue_many``'s batches, built one by one) has a default that builds
    them all first; a store that can write while they are built overrides it (PostgreSQL's COPY).

    Pairing. A store that claims natively is a broker by itself (:class:`Broker`). To be paired
    with a :class:`~conveyor.brokers.transport.Transport` a store also implements the pairing
    hooks (:meth:`claim_jobs`, :meth:`use_outbox`, :meth:`outbox`, :meth:`mark_sent`,
    :meth:`promote`; :meth:`keep_unsent` and :meth:`enqueue_sending` have defaults) and sets
    ``supports_pairing``.

    Capabilities are declared as class attributes, never probed; the worker chooses blocking fetch,
    notification or polling from them (a paired broker takes them from its transport).
    """

    #: The URL scheme (a paired broker takes its transport's).
    scheme: str = ""
    supports_blocking_fetch: bool = False
    supports_native_delays: bool = False
    supports_priorities: bool = True
    supports_notify: bool = False
    supports_transactions: bool = False
    #: False for brokers living in one process (memory): the worker then refuses a process pool.
    shared_between_processes: bool = True
    #: True when ``list_jobs`` itself takes ``search``, ``since`` and ``until``: ``search_jobs``
    #: then hands the query straight to it instead of filtering pages here.
    supports_search: bool = False
    #: True when the store implements the pairing hooks (a transport can carry its jobs).
    supports_pairing: bool = False
    #: True when :meth:`enqueue_sending` may send the jobs before their write is confirmed.
    sends_before_written: bool = False
    #: True when :meth:`mark_started` records starts. Without it a worker sends none, and a job
    #: reads as reserved until its ack writes its start.
    supports_start_marks: bool = False

    def __init__(self, url: str, *, clock: Clock | None = None) -> None:
        self.url = url
        self.clock: Clock = clock or time.time
        # State of the default ``changes`` (snapshots by cursor), unused by stores with a change log.
        self._snapshot_lock = threading.Lock()
        self._snapshots: dict[str, tuple[dict[str, Any], list[Event]]] = {}

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> None:
        """Connect (and create the schema) now instead of on first use. Raises BrokerError."""

    def close(self) -> None:
        """Release connections. The broker may be opened again."""

    def fork(self) -> JobStore:
        """A new, unopened store on the same URL, for another process or thread."""
        return type(self)(self.url, clock=self.clock)

    def migrate(self) -> str:
        """Create or upgrade the schema (``conveyor migrate APP``); a line saying what was done.

        Default, for stores that create their schema when they open: open and close."""
        self.open()
        self.close()
        return f"the {self.scheme}:// store creates its schema when it opens: nothing to migrate"

    def diagnose(self) -> list[Check]:
        """What ``conveyor doctor`` reports of this store. Default: it opens and answers a count."""
        try:
            self.open()
            self.counts()
        except Exception as exc:
            return [Check(f"{self.scheme}:// store reachable", False, str(exc), "check the URL and the server")]
        return [Check(f"{self.scheme}:// store reachable", True)]

    # -- moving jobs -------------------------------------------------------------------------
    @abstractmethod
    def enqueue(self, messages: Sequence[Message]) -> list[str]:
        """Store the messages in one round trip; return each job's id (an existing one for a
        duplicate ``key``)."""

    @abstractmethod
    def fetch(self, queues: Sequence[str], limit: int, lease: float, consumer: str) -> list[Lease]:
        """Lease up to ``limit`` ready jobs from ``queues`` (in that order of preference) for
        ``lease`` seconds. Paused queues are skipped. Never blocks."""

    def enqueue_stream(self, messages: Iterable[Message]) -> list[str]:
        """:meth:`enqueue` of key-less messages that ``messages`` builds one by one, for
        ``enqueue_many``: a store may start writing before the last one is built (PostgreSQL
        streams a COPY). An exception raised by ``messages`` stores none of them. By default the
        messages are built first, then stored as one batch (none: no call)."""
        batch = list(messages)
        return self.enqueue(batch) if batch else []

    def enqueue_within(self, connection: Any, messages: Sequence[Message]) -> list[str]:
        """:meth:`enqueue` inside the caller's open transaction on ``connection`` (its own database
        connection: psycopg 3, SQLAlchemy, Django, sqlite3): the jobs exist if, and only if, that
        transaction commits, and workers are woken at the commit. Stores that are the
        application's database (``supports_transactions``) implement it; the others raise
        ConfigError."""
        raise ConfigError(
            f"enqueue(connection=...) joins your database transaction, so it needs a store that is that "
            f"database: postgresql:// or sqlite:// (this app's store is {self.scheme}://)")

    def job_transaction(self, job_id: str, token: int) -> AbstractContextManager[Any]:
        """For ``current_job().transaction()``: a connection in a transaction whose commit also
        records the job (leased with ``token``) as succeeded, atomically; a stale token rolls it
        back and raises StaleLease. Stores with ``supports_transactions`` implement it; the others
        raise ConfigError."""
        raise ConfigError(
            f"current_job().transaction() commits the task's effect and the job's success together, so it "
            f"needs a store that is the application's database: postgresql:// or sqlite:// "
            f"(this job's store is {self.scheme}://)")

    def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Block up to ``timeout`` seconds or until work may be ready. Default: sleep."""
        time.sleep(timeout)

    @abstractmethod
    def ack(self, outcomes: Sequence[Outcome]) -> list[bool]:
        """Record the outcomes; each is accepted only if its token is still current."""

    @abstractmethod
    def extend(self, leases: Sequence[tuple[str, int]], lease: float) -> ExtendResult:
        """Push the deadline of the given (job id, token) leases ``lease`` seconds from now."""

    def mark_started(self, marks: Sequence[tuple[str, int, float]]) -> None:
        """Record when leased jobs really began to run: ``(job id, token, started_at)`` each,
        ignored for a stale token. Until then a leased job is *reserved* (``running`` with no
        ``started_at``). Workers send these in batches with their heartbeats, never one round
        trip per job; the ack carries ``started_at`` too, for a job that ended before its mark.
        Stores that implement it declare ``supports_start_marks``; the default records nothing."""

    def reserved_counts(self) -> dict[str, int]:
        """``{queue: n}``: jobs leased by a worker that have not started yet (see
        :meth:`mark_started`); they are part of the ``running`` count of :meth:`counts`.

        Default: reads the running jobs through :meth:`list_jobs` (at most :data:`SCAN_LIMIT`)."""
        found: dict[str, int] = {}
        cursor: str | None = None
        scanned = 0
        while scanned < SCAN_LIMIT:
            page = self.list_jobs(state="running", limit=500, cursor=cursor)
            for job in page.jobs:
                if job.started_at is None:
                    found[job.queue] = found.get(job.queue, 0) + 1
            scanned += len(page.jobs)
            if page.cursor is None:
                break
            cursor = page.cursor
        return found

    @abstractmethod
    def progress(self, job_id: str, token: int, fraction: float | None, message: str | None) -> bool:
        """Record a running job's progress; refused (False) for a stale token."""

    @abstractmethod
    def recover(self) -> int:
        """Put jobs whose lease expired back in the queue (or in ``failed`` when out of attempts),
        and move due scheduled jobs to the queue. Returns how many leases were recovered."""

    @abstractmethod
    def release(self, consumer: str, reason: str) -> int:
        """Hand back every job leased by ``consumer`` at once (it died or was stopped), as lease
        expiry would, with ``reason`` recorded. Returns how many."""

    # -- control -----------------------------------------------------------------------------
    @abstractmethod
    def cancel(self, job_id: str) -> str:
        """Cancel a job: queued or scheduled → ``cancelled``; running → cancellation requested
        (the task sees ``current_job().cancelled``). Returns the state after. Raises JobNotFound."""

    @abstractmethod
    def retry(self, job_id: str) -> str:
        """Put a ``failed`` or ``cancelled`` job back in its queue with fresh attempts (a retry by
        hand). Returns the new state; raises JobNotFound, or ValueError for an active job."""

    @abstractmethod
    def delete(self, job_id: str) -> bool:
        """Delete a job that is not running. Returns whether one was deleted."""

    @abstractmethod
    def pause(self, queue: str) -> None:
        """Stop handing out jobs of ``queue`` (enqueueing still works)."""

    @abstractmethod
    def resume(self, queue: str) -> None:
        """Undo ``pause``."""

    @abstractmethod
    def purge(self, queue: str | None, states: Iterable[str] = ("queued", "scheduled")) -> int:
        """Delete jobs of ``queue`` (every queue when None) in ``states``. Returns how many."""

    @abstractmethod
    def prune(self, older_than: float) -> int:
        """Delete ``succeeded`` and ``cancelled`` jobs finished more than ``older_than`` seconds ago
        (retention). ``failed`` jobs are kept until deleted by hand."""

    # -- store queries -----------------------------------------------------------------------
    @abstractmethod
    def get(self, job_id: str) -> JobRecord | None:
        """One job, or None."""

    def get_many(self, job_ids: Sequence[str]) -> list[JobRecord | None]:
        """Several jobs, in the given order."""
        return [self.get(j) for j in job_ids]

    def wait_for(self, job_id: str, timeout: float | None) -> JobRecord | None:
        """Wait until the job has ended (succeeded, failed or cancelled) or ``timeout`` seconds have
        passed (None: no limit); return its record as last read, or None when there is no such job.

        Default: reads :meth:`get` with a back-off from 0.5 ms (x1.5, at most 50 ms). Brokers that
        can be told when a job ends override it to block instead (``Job.result`` uses it).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.0005
        while True:
            record = self.get(job_id)
            if record is None or record.state in TERMINAL_STATES:
                return record
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return record
            time.sleep(pause if left is None else min(pause, left))
            pause = min(pause * 1.5, 0.05)

    @abstractmethod
    def list_jobs(
        self,
        *,
        state: str | None = None,
        queue: str | None = None,
        task: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """Jobs newest first, filtered; ``cursor`` continues after the previous page."""

    @abstractmethod
    def counts(self) -> dict[str, dict[str, int]]:
        """``{queue: {state: n}}`` over every job in the store."""

    @abstractmethod
    def paused_queues(self) -> set[str]:
        """Names of the paused queues."""

    def queues(self) -> list[QueueInfo]:
        """Every known queue with its depth by state and paused flag."""
        counts, paused = self.counts(), self.paused_queues()
        names = sorted(set(counts) | paused)
        return [QueueInfo(n, n in paused, {s: counts.get(n, {}).get(s, 0) for s in STATES}) for n in names]

    @abstractmethod
    def heartbeat(self, worker: WorkerInfo) -> None:
        """Record that ``worker`` is alive (upsert)."""

    @abstractmethod
    def unregister(self, worker_id: str) -> None:
        """Remove a worker's heartbeat (clean shutdown)."""

    @abstractmethod
    def workers(self, max_age: float = 60.0) -> list[WorkerInfo]:
        """Workers heard from in the last ``max_age`` seconds."""

    # -- the names of the design (aliases of the historic ones above) -------------------------
    def add(self, messages: Sequence[Message]) -> list[str]:
        """Alias of :meth:`enqueue`: write the records (the outbox marks them when paired)."""
        return self.enqueue(messages)

    def claim(self, queues: Sequence[str], limit: int, lease: float, consumer: str) -> list[Lease]:
        """Alias of :meth:`fetch`: lease ready jobs of ``queues`` natively."""
        return self.fetch(queues, limit, lease, consumer)

    def expire(self) -> int:
        """Alias of :meth:`recover`: expired leases back, due scheduled jobs to the queue."""
        return self.recover()

    # -- pairing hooks (stores with ``supports_pairing``) ---------------------------------------
    def _not_pairable(self) -> BrokerError:
        """What the pairing hooks of a store without them raise (PairedBroker refuses such a store
        before it would call one)."""
        return BrokerError(f"the {self.scheme}:// store cannot be paired with a transport (no supports_pairing)")

    def claim_jobs(self, jobs: Sequence[Dispatch], lease: float, consumer: str) -> list[Lease]:
        """Lease the given jobs, delivered by a transport, exactly as :meth:`fetch` would lease
        them (a new fencing token, the attempt counted, reserved until marked started). A job
        that is not ``queued`` (cancelled, deleted, scheduled, or leased already: a duplicate
        delivery) or whose queue is paused is skipped. Leases come in the order of ``jobs``. (Each
        names its queue too, so that a store sharded by queue finds the job in one place.)"""
        raise self._not_pairable()

    def use_outbox(self) -> None:
        """Keep an outbox from now on: every job that becomes ``queued`` (enqueued, due, handed
        back, recovered, retried by hand) is marked to be sent until :meth:`mark_sent`. A paired
        broker calls this once; forks of the store carry it."""
        raise self._not_pairable()

    def outbox(self, limit: int = 1000, among: Sequence[Dispatch] | None = None) -> list[Dispatch]:
        """Up to ``limit`` marked jobs that are still ``queued`` (of ``among`` only, when given),
        oldest mark first, unmarking the others: cancelled or deleted jobs need no delivery."""
        raise self._not_pairable()

    def keep_unsent(self, jobs: Sequence[Dispatch]) -> None:
        """Jobs just written with their outbox marks, whose send failed: keep them marked, among
        the unsent jobs that maintenance sends (a store may keep the marks of jobs being sent apart
        from those, as Redis does). By default, an :meth:`outbox` read of these jobs, which does
        exactly that."""
        self.outbox(len(jobs), jobs)

    def enqueue_sending(self, messages: Sequence[Message], send: Callable[[], None]) -> list[str]:
        """:meth:`enqueue`, calling ``send`` once (a paired broker's send of the new jobs; it never
        raises, and calls no method of this store). By default after the write. A store with
        ``sends_before_written`` may call it while the write is on its way, before the store
        confirmed it: a transport's delivery may then reach a member before the job is visible
        there (see ``PairedBroker``: such a claim is tried again for a moment)."""
        ids = self.enqueue(messages)
        send()
        return ids

    def resend_queued(self) -> None:
        """Mark every ``queued`` job to be sent again (after a transport lost its deliveries)."""
        raise self._not_pairable()

    def mark_sent(self, jobs: Sequence[Dispatch]) -> None:
        """Unmark jobs whose delivery the transport accepted."""
        raise self._not_pairable()

    def promote(self, queues: Sequence[str] | None = None) -> int:
        """Move due scheduled jobs to the queue (into the outbox when kept); how many moved. With
        ``queues``, a store may move only theirs (a fetch needs no more)."""
        raise self._not_pairable()


class Broker(JobStore):
    """What the worker, the web app and the CLI use: a store that claims natively (memory, SQLite,
    Redis) is a broker by itself; :class:`~conveyor.brokers.paired.PairedBroker` makes one from a
    transport and a store."""

    def fork(self) -> Broker:
        """A new, unopened broker on the same URL, for another process or thread."""
        return type(self)(self.url, clock=self.clock)

    @property
    def store(self) -> JobStore:
        """The job database behind this broker: the broker itself, unless it is paired."""
        return self
