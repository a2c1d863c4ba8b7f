"""Moving jobs in the PostgreSQL store: enqueue, the batch claim, acks, leases, recovery.

Mixed into :class:`~conveyor.brokers.postgres.PostgresBroker`. Every batch is one statement over
arrays (``unnest``), so a batch costs one round trip whatever its size.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
from psycopg.rows import dict_row

from ..memory import LOST_LEASE
from ..records import TERMINAL_STATES, ExtendResult, JobRecord, Lease, Message, Outcome
from ..store import JobStore

if TYPE_CHECKING:
    from ..records import Clock


#: Batches of at least this many key-less messages are written with COPY (fewer: one INSERT).
COPY_MIN = 16
_COPY_TYPES = ["text", "text", "text", "text", "int4", "bytea", "int4", "float8", "float8", "float8", "float8"]


def insert_params(messages: Sequence[Message], now: float) -> dict[str, list[Any]]:
    """The arrays of the ``insert`` query for ``messages``."""
    cols: dict[str, list[Any]] = {name: [] for name in (
        "id", "task", "queue", "state", "priority", "payload", "key", "max_attempts", "timeout",
        "created_at", "run_at", "updated_at")}
    for m in messages:
        scheduled = m.run_at is not None and m.run_at > now
        cols["id"].append(m.id)
        cols["task"].append(m.task)
        cols["queue"].append(m.queue)
        cols["state"].append("scheduled" if scheduled else "queued")
        cols["priority"].append(m.priority)
        cols["payload"].append(m.payload)
        cols["key"].append(m.key)
        cols["max_attempts"].append(m.max_attempts)
        cols["timeout"].append(m.timeout)
        cols["created_at"].append(m.created_at or now)
        cols["run_at"].append(m.run_at if scheduled else now)
        cols["updated_at"].append(now)
    return cols


def insert_jobs(conn: Any, q: dict[str, str], messages: Sequence[Message], now: float,
                execute: Any = None) -> list[str]:
    """Insert ``messages`` on ``conn``; each one's job id (an existing one for a duplicate key).
    ``execute(conn, query, params) -> rows`` runs a statement (a psycopg connection by default;
    callers with another driver pass their own)."""
    run = execute or _psycopg_rows
    params = insert_params(messages, now)
    inserted = {row[0] for row in run(conn, q["insert"], params)}
    if len(inserted) == len(messages):
        return [m.id for m in messages]
    missing = [m for m in messages if m.id not in inserted]
    found = {row[0]: row[1] for row in run(conn, q["existing"], {
        "id": [m.id for m in missing], "key": [m.key for m in missing]})}
    return [m.id if m.id in inserted else (found.get(m.id) or m.id) for m in messages]


def _psycopg_rows(conn: psycopg.Connection[Any], query: str, params: dict[str, Any]) -> list[Any]:
    return conn.execute(query, params).fetchall()


class PostgresLifecycle:
    """The fenced lifecycle of the PostgreSQL store."""

    if TYPE_CHECKING:
        clock: Clock
        q: dict[str, str]
        _next_due: float | None
        _due_known: bool  # _next_due was read (by a fetch of this process)

        def _run(self, work: Any) -> Any: ...
        def _exec(self, name: str, params: dict[str, Any] | None = None, *, fetch: str = "all") -> Any: ...
        def _wait_notify(self, queues: Sequence[str], timeout: float) -> bool: ...
        def _trim_changes(self) -> None: ...
        def _waits(self) -> Waits: ...
        def get(self, job_id: str) -> JobRecord | None: ...
        @staticmethod
        def _record(row: dict[str, Any]) -> JobRecord: ...
        notify: bool
        async_acks: bool

    def enqueue(self, messages: Sequence[Message]) -> list[str]:
        if not messages:
            return []
        now = self.clock()
        if len(messages) == 1:
            return self._run(lambda conn: self._insert_one(conn, messages[0], now))  # type: ignore[no-any-return]
        if len(messages) >= COPY_MIN and all(m.key is None for m in messages):
            return self._run(lambda conn: self._copy(conn, messages, now))  # type: ignore[no-any-return]
        return self._run(lambda conn: insert_jobs(conn, self.q, messages, now))  # type: ignore[no-any-return]

    def _insert_one(self, conn: psycopg.Connection[Any], m: Message, now: float) -> list[str]:
        if m.key is not None:  # unique: the job holding the key may answer instead
            return insert_jobs(conn, self.q, [m], now)
        scheduled = m.run_at is not None and m.run_at > now
        try:
            conn.execute(self.q["insert_one"], {
                "id": m.id, "task": m.task, "queue": m.queue, "state": "scheduled" if scheduled else "queued",
                "priority": m.priority, "payload": m.payload, "max_attempts": m.max_attempts, "timeout": m.timeout,
                "created_at": m.created_at or now, "run_at": m.run_at if scheduled else now, "updated_at": now})
        except psycopg.errors.UniqueViolation:  # a retried enqueue of a stored message: as a batch does
            return insert_jobs(conn, self.q, [m], now)
        return [m.id]

    def enqueue_stream(self, messages: Iterable[Message]) -> list[str]:
        """Key-less messages streamed into one COPY while they are built: the server stores the
        first rows while the client builds the next ones. The COPY is one statement: an exception
        raised while building aborts it, and nothing is stored. Fewer than COPY_MIN: ``enqueue``."""
        source = iter(messages)
        head = list(itertools.islice(source, COPY_MIN))
        if len(head) < COPY_MIN:
            return self.enqueue(head)
        now = self.clock()
        built: list[Message] = []  # what an earlier attempt took from ``source`` (a lost connection)

        def work(conn: psycopg.Connection[Any]) -> list[str]:
            return self._copy(conn, itertools.chain(head, list(built), _recorded(source, built)), now)

        return self._run(work)  # type: ignore[no-any-return]

    def _copy(self, conn: psycopg.Connection[Any], messages: Iterable[Message], now: float) -> list[str]:
        written: list[Message] = []
        rows = iter(messages)
        try:
            with conn.cursor() as cur, cur.copy(self.q["copy"]) as copy:
                copy.set_types(_COPY_TYPES)
                write, keep = copy.write_row, written.append
                for m in rows:
                    if m.key is not None:
                        raise ValueError(f"job {m.id} has a key: it needs the INSERT of enqueue(), not COPY")
                    keep(m)
                    scheduled = m.run_at is not None and m.run_at > now
                    write((m.id, m.task, m.queue, "scheduled" if scheduled else "queued", m.priority, m.payload,
                           m.max_attempts, m.timeout, m.created_at or now, m.run_at if scheduled else now, now))
        except psycopg.errors.UniqueViolation:  # a retried batch (or a reused id): row by row, as INSERT does
            written.extend(rows)
            return insert_jobs(conn, self.q, written, now)
        return [m.id for m in written]

    def fetch(self, queues: Sequence[str], limit: int, lease: float, consumer: str) -> list[Lease]:
        if limit <= 0 or not queues:
            return []
        now = self.clock()
        params = {"queues": list(queues), "limit": limit, "deadline": now + lease, "consumer": consumer, "now": now}

        def work(conn: psycopg.Connection[Any]) -> list[Any]:
            due = self._next_due
            if self._due_known and not self.async_acks and (due is None or due > now):
                # Nothing scheduled is due: the claim alone, one statement (a pipeline of three
                # cost a pick-up 0.4 ms more). Its rows say when the next scheduled job falls due;
                # an empty claim asks, and promotes at once if a job fell due meanwhile.
                rows = conn.execute(self.q["claim"], params).fetchall()
                if rows:
                    self._next_due = rows[0][11]
                    return rows
                self._next_due = due = conn.execute(self.q["next_due"]).fetchone()[0]  # type: ignore[index]
                if due is None or due > now:
                    return rows
            with conn.pipeline(), self._lifecycle_tx(conn):  # promote and claim: one round trip
                conn.execute(self.q["promote"], {"now": now})
                claimed = conn.execute(self.q["claim"], params)
                next_due = conn.execute(self.q["next_due"])
            rows = claimed.fetchall()
            self._next_due = next_due.fetchone()[0]  # type: ignore[index]
            self._due_known = True
            return rows

        rows = self._run(work)
        order = {name: i for i, name in enumerate(queues)}
        rows.sort(key=lambda r: (order.get(r[3], 0), -r[9], r[10]))
        return [Lease(*r[:10]) for r in rows]

    def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Sleep until a NOTIFY names one of ``queues``, a scheduled job falls due, a poll
        interval passed, or ``timeout``."""
        if self._next_due is not None:
            timeout = min(timeout, max(0.0, self._next_due - self.clock()))
        if timeout > 0:
            self._wait_notify(queues, timeout)

    def wait_for(self, job_id: str, timeout: float | None) -> JobRecord | None:
        """Block until the job ends: the job is listed in ``conveyor_waiters``, whose rows the jobs
        table's trigger NOTIFYs (payload: the job's id) when they end; a re-read after 2 ms, doubling up to
        1 s covers a notification missed: a job whose ack was being committed while this wait was
        registered (the ack's trigger did not see the waiter yet, and this read did not see the ack
        yet). That window is one commit's WAL flush, so the first re-read comes after 2 ms."""
        waits = self._waits() if self.notify else None
        if waits is None or not waits.listening():
            polled: JobRecord | None = JobStore.wait_for(self, job_id, timeout)  # type: ignore[arg-type]
            return polled
        deadline = None if timeout is None else time.monotonic() + timeout
        now = self.clock()
        done, waits.done = waits.done, []

        def register(conn: psycopg.Connection[Any]) -> JobRecord | None:
            row = conn.cursor(row_factory=dict_row).execute(
                self.q["wait_on"], {"id": job_id, "now": now, "done": done, "stale": now - 3600.0}).fetchone()
            return self._record(row) if row else None

        record: JobRecord | None = self._run(register)
        waits.done.append(job_id)
        pause = 0.002
        while record is not None and record.state not in TERMINAL_STATES:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            if not waits.wait(job_id, pause if left is None else min(pause, left)):
                pause = min(pause * 2, 1.0)
            record = self.get(job_id)
        return record

    def ack(self, outcomes: Sequence[Outcome]) -> list[bool]:
        if not outcomes:
            return []
        now = self.clock()
        seen: set[str] = set()
        first = []  # a lease is settled once, even if it comes twice in one batch
        for o in outcomes:
            first.append(o.job_id not in seen)
            seen.add(o.job_id)
        wins = [o for o, ok in zip(outcomes, first) if ok and o.state == "succeeded"]
        others = [o for o, ok in zip(outcomes, first) if ok and o.state != "succeeded"]
        succeed = {"id": [o.job_id for o in wins], "token": [o.token for o in wins],
                   "result": [o.result for o in wins], "started_at": [o.started_at for o in wins],
                   "finished_at": [o.finished_at or now for o in wins], "now": now}

        def work(conn: psycopg.Connection[Any]) -> set[tuple[str, int]]:
            accepted: set[tuple[str, int]] = set()
            if not others and not self.async_acks:  # the common batch: one statement, no pipeline to set up
                ids = {row[0] for row in conn.execute(self.q["succeed"], succeed)}
                return {(o.job_id, o.token) for o in wins if o.job_id in ids}
            with conn.pipeline(), self._lifecycle_tx(conn):
                done = conn.execute(self.q["succeed"], succeed) if wins else None
                cursors = [(o, conn.execute(*self._settle(o, now))) for o in others]
            if done is not None:
                ids = {row[0] for row in done.fetchall()}
                accepted |= {(o.job_id, o.token) for o in wins if o.job_id in ids}
            accepted |= {(o.job_id, o.token) for o, cur in cursors if cur.rowcount}
            return accepted

        accepted = self._run(work)
        return [ok and (o.job_id, o.token) in accepted for o, ok in zip(outcomes, first)]

    def _lifecycle_tx(self, conn: psycopg.Connection[Any]) -> AbstractContextManager[Any]:
        """With ``async_acks``: one transaction whose commit does not wait for the WAL flush (in the
        same round trip as its statements); else nothing (each statement commits by itself)."""
        if not self.async_acks:
            return nullcontext()
        tx = conn.transaction()
        return _AsyncCommit(conn, tx)

    def _settle(self, o: Outcome, now: float) -> tuple[Any, dict[str, Any]]:
        error = orjson.dumps(o.error).decode() if o.error is not None else None
        if o.state == "queued":
            return self.q["hand_back"], {"id": o.job_id, "token": o.token, "now": now, "run_at": o.run_at or now,
                                         "error": error}
        entry = orjson.dumps({"at": o.finished_at or now, "state": o.state, "error": o.error}).decode()
        return self.q["settle"], {
            "state": o.state, "result": o.result, "error": error, "started_at": o.started_at,
            "finished_at": o.finished_at or now, "run_at": o.run_at, "now": now, "entry": entry,
            "id": o.job_id, "token": o.token}

    def mark_started(self, marks: Sequence[tuple[str, int, float]]) -> None:
        if marks:
            self._exec("mark_started", {"id": [m[0] for m in marks], "token": [m[1] for m in marks],
                                        "at": [m[2] for m in marks], "now": self.clock()}, fetch="count")

    def reserved_counts(self) -> dict[str, int]:
        return {queue: n for queue, n in self._exec("reserved")}

    def extend(self, leases: Sequence[tuple[str, int]], lease: float) -> ExtendResult:
        result = ExtendResult()
        if not leases:
            return result
        params = {"id": [j for j, _ in leases], "token": [t for _, t in leases], "deadline": self.clock() + lease}

        def work(conn: psycopg.Connection[Any]) -> list[Any]:
            with conn.pipeline(), conn.transaction():  # one round trip; a longer lease is no news
                conn.execute(self.q["quiet"])
                cur = conn.execute(self.q["extend"], params)
            return cur.fetchall()

        rows = self._run(work)
        held = {job_id: cancel for job_id, cancel in rows}
        skipped = [(job_id, token) for job_id, token in leases if job_id not in held]
        if skipped:  # locked by another transaction (skipped), or really lost: which?
            held.update(self._exec("still_held", {"id": [j for j, _ in skipped], "token": [t for _, t in skipped]}))
        for job_id, _ in leases:
            if job_id not in held:
                result.lost.add(job_id)
            elif held[job_id]:
                result.cancel_requested.add(job_id)
        return result

    def progress(self, job_id: str, token: int, fraction: float | None, message: str | None) -> bool:
        return bool(self._exec("progress", {"fraction": fraction, "message": message, "now": self.clock(),
                                            "id": job_id, "token": token}, fetch="count"))

    def _lose(self, where: str, params: dict[str, Any], error: dict[str, str]) -> int:
        now = self.clock()
        query = self.q["lose"].replace("{where}", where)
        params = {**params, "now": now, "error": orjson.dumps(error).decode()}

        def work(conn: psycopg.Connection[Any]) -> int:
            with conn.pipeline():
                lost = conn.execute(query, params)
                conn.execute(self.q["promote"], {"now": now})
            return lost.rowcount

        return self._run(work)  # type: ignore[no-any-return]

    def recover(self) -> int:
        n = self._lose("lease_until < %(now)s", {}, LOST_LEASE)
        self._trim_changes()
        return n

    def release(self, consumer: str, reason: str) -> int:
        return self._lose("lease_until IS NOT NULL AND consumer = %(consumer)s", {"consumer": consumer},
                          {"type": "WorkerLost", "message": reason})


def _recorded(source: Iterator[Message], into: list[Message]) -> Iterator[Message]:
    """``source``'s messages, each also appended to ``into`` as it is taken."""
    for m in source:
        into.append(m)
        yield m


class Waits:
    """The LISTEN connection of the clients waiting in :meth:`PostgresLifecycle.wait_for` (one per
    process, shared by its threads: whoever holds the lock reads the notifications for all)."""

    def __init__(self, conninfo: str, channel: str) -> None:
        self.conninfo, self.channel = conninfo, channel
        self.lock = threading.Lock()
        self.conn: psycopg.Connection[Any] | None = None
        self.ended: set[str] = set()  # ids (and queue names) notified while another thread read
        self.done: list[str] = []  # ids whose waiter rows the next registration removes

    def listening(self) -> bool:
        with self.lock:
            return self._connect() is not None

    def _connect(self) -> psycopg.Connection[Any] | None:
        if self.conn is not None and not self.conn.closed:
            return self.conn
        try:
            conn = psycopg.connect(self.conninfo, autocommit=True)
            conn.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(self.channel)))
        except psycopg.OperationalError:
            return None
        self.conn = conn
        return conn

    def wait(self, job_id: str, timeout: float) -> bool:
        """Up to ``timeout`` for the job's notification; True when it came (or the connection was
        lost: look now). The lock is taken in slices of 50 ms, so threads take turns."""
        end = time.monotonic() + timeout
        while True:
            with self.lock:
                if job_id in self.ended:
                    self.ended.discard(job_id)
                    return True
                conn = self._connect()
                if conn is None:
                    time.sleep(max(0.0, min(end - time.monotonic(), 0.05)))
                    return False
                try:
                    for note in conn.notifies(timeout=max(0.0, min(end - time.monotonic(), 0.05))):
                        if note.payload == job_id:
                            return True
                        if len(self.ended) > 10000:
                            self.ended.clear()
                        self.ended.add(note.payload)
                except psycopg.OperationalError:
                    self.close()
                    return True
            if time.monotonic() >= end:
                return False

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except psycopg.Error:
                pass
            self.conn = None


class _AsyncCommit:
    """``conn.transaction()`` that first sets ``synchronous_commit = off`` for itself."""

    def __init__(self, conn: psycopg.Connection[Any], tx: Any) -> None:
        self.conn, self.tx = conn, tx

    def __enter__(self) -> Any:
        entered = self.tx.__enter__()
        self.conn.execute("SET LOCAL synchronous_commit = off")
        return entered

    def __exit__(self, *exc: Any) -> Any:
        return self.tx.__exit__(*exc)
