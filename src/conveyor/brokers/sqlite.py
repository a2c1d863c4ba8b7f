"""``sqlite:///path``: the embedded default broker and store, shared by every process on a host.

One database file in WAL mode holds jobs, queues and worker heartbeats. Writers take the lock with
``BEGIN IMMEDIATE`` and claim with ``UPDATE … RETURNING``, so two consumers never lease the same
job. Commits are durable (``synchronous=FULL``) unless the URL says ``?synchronous=normal``.
Idle consumers sleep on a Unix datagram socket in ``<db>-wake/``: every broker that commits work
that may be ready (enqueue, hand-back, retry, resume, recovered leases) wakes the waiters of its
database, so a new job is picked up at once at no idle cost. As the fallback, for writers that send
no wake, a waiter also checks ``PRAGMA data_version`` (which changes whenever another connection
commits) every ``poll`` seconds.

URL: ``sqlite:///relative.db``, ``sqlite:////absolute/path.db``; options as query parameters:
``synchronous`` (full|normal), ``busy_timeout`` (seconds, default 30), ``poll`` (seconds, default 0.5).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import groupby
from typing import Any
from urllib.parse import parse_qs, unquote

import orjson

from ..errors import BrokerError, JobNotFound
from . import Broker, Clock, ExtendResult, Lease, Message, Outcome
from ._local_wake import Waiter, Waker, wake_folder
from .memory import LOST_LEASE
from .sqlite_pairing import SQLitePairing
from .sqlite_reads import Q, SQLiteReads
from .sqlite_within import SQLiteTransactions

#: The change log keeps at most this many events, and none older than EVENT_AGE seconds.
EVENT_KEEP = 100_000
EVENT_AGE = 600.0




def parse_url(url: str) -> tuple[str, dict[str, str]]:
    """Split ``sqlite:///path?opt=v`` into the file path and its options."""
    if not url.startswith("sqlite://"):
        raise BrokerError(f"not a SQLite URL: {url!r}")
    rest = url[len("sqlite://"):]
    rest, _, query = rest.partition("?")
    if not rest.startswith("/") or rest == "/":
        raise BrokerError(f"SQLite URL {url!r} needs a path: sqlite:///relative.db or sqlite:////abs.db")
    path = unquote(rest[1:])
    options = {k: v[-1] for k, v in parse_qs(query).items()}
    unknown = set(options) - {"synchronous", "busy_timeout", "poll"}
    if unknown:
        raise BrokerError(f"unknown SQLite URL option(s) {sorted(unknown)} in {url!r}")
    return path, options


class SQLiteBroker(SQLiteTransactions, SQLitePairing, SQLiteReads, Broker):
    """Broker and job store in one SQLite file (WAL, durable commits)."""

    scheme = "sqlite"
    supports_transactions = True
    supports_search = True
    supports_start_marks = True

    def __init__(self, url: str = "sqlite:///conveyor.db", *, clock: Clock | None = None) -> None:
        super().__init__(url, clock=clock)
        self.path, options = parse_url(url)
        sync = options.get("synchronous", "full").upper()
        if sync not in ("FULL", "NORMAL", "EXTRA"):
            raise BrokerError(f"synchronous must be full, normal or extra, not {sync.lower()!r}")
        self._synchronous = sync
        try:
            self._busy_timeout = float(options.get("busy_timeout", 30))
            self.poll_interval = float(options.get("poll", 0.5))
        except ValueError as exc:
            raise BrokerError(f"bad number in SQLite URL {url!r}: {exc}") from None
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._seen_version = -1
        self._next_due: float | None = None
        self.wake_folder = wake_folder(self.path)
        self._waiter = Waiter(self.wake_folder)
        self._waker = Waker(self.wake_folder)

    # -- connection --------------------------------------------------------------------------
    def open(self) -> None:
        self._connect()

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        # A connection must never cross fork(): a child opens its own.
        self._pid = os.getpid()
        where = os.path.abspath(self.path)
        folder = os.path.dirname(where)
        if not os.path.isdir(folder):
            raise BrokerError(f"cannot open SQLite database {where}: folder {folder} does not exist")
        try:
            conn = sqlite3.connect(where, isolation_level=None, check_same_thread=False,
                                   timeout=self._busy_timeout)
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.executescript("BEGIN IMMEDIATE;\n" + Q["schema"] + "\nCOMMIT;")
            if conn.execute(Q["has_committed_at"]).fetchone() is None:
                try:
                    conn.execute(Q["add_committed_at"])
                except sqlite3.OperationalError as exc:  # another process added it meanwhile
                    if "duplicate column" not in str(exc):
                        raise
            self._install_outbox(conn)
        except sqlite3.Error as exc:
            raise BrokerError(f"cannot open SQLite database {where}: {exc}") from None
        self._conn = conn
        return conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
            self._waiter.close()
            self._waker.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. SQLite's own errors (locked past busy_timeout, disk full, I/O)
        become BrokerError, which the worker logs and retries; IntegrityError is left to callers."""
        with self._lock:
            conn = self._connect()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._failure(exc) from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                if isinstance(exc, sqlite3.Error) and not isinstance(exc, sqlite3.IntegrityError):
                    raise self._failure(exc) from exc
                raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._connect()
            except sqlite3.Error as exc:
                raise self._failure(exc) from exc

    def _failure(self, exc: sqlite3.Error) -> BrokerError:
        return BrokerError(f"SQLite database {os.path.abspath(self.path)}: {exc}")

    # -- moving jobs -------------------------------------------------------------------------
    def enqueue(self, messages: Sequence[Message]) -> list[str]:
        with self._write() as conn:
            ids = self._insert(conn, messages, self.clock())
        self._waker.wake()
        return ids

    def _insert(self, conn: sqlite3.Connection, messages: Sequence[Message], now: float) -> list[str]:
        """Insert ``messages`` on ``conn`` (in its transaction); each one's job id (an existing
        one for a duplicate key)."""
        rows = []
        for m in messages:
            scheduled = m.run_at is not None and m.run_at > now
            rows.append((m.id, m.task, m.queue, "scheduled" if scheduled else "queued", m.priority,
                         m.payload, m.key, m.max_attempts, m.timeout, m.created_at or now,
                         m.run_at if scheduled else now, now))
        ids = {}
        # Inserted in message order (seq is the FIFO order); runs without keys in one call.
        for has_key, run in groupby(rows, key=lambda row: row[6] is not None):
            if not has_key:
                conn.executemany(Q["insert"], run)
                continue
            for row in run:
                if conn.execute(Q["insert"], row).rowcount == 0:
                    found = conn.execute(Q["id_by_key"], (row[6],)).fetchone()
                    if found:
                        ids[row[0]] = found[0]
        return [ids.get(m.id, m.id) for m in messages]

    def fetch(self, queues: Sequence[str], limit: int, lease: float, consumer: str) -> list[Lease]:
        if limit <= 0:  # LIMIT -1 would mean "no limit" to SQLite
            return []
        now = self.clock()
        out: list[tuple[Any, ...]] = []
        with self._write() as conn:
            self._seen_version = conn.execute("PRAGMA data_version").fetchone()[0]
            conn.execute(Q["promote"], {"now": now})
            paused = {r[0] for r in conn.execute(Q["paused"])}
            for queue in queues:
                if queue in paused:
                    continue
                args = {"deadline": now + lease, "consumer": consumer, "now": now,
                        "queue": queue, "limit": limit - len(out)}
                got = conn.execute(Q["claim"], args).fetchall()
                got.sort(key=lambda r: (-r[10], r[0]))
                out.extend(got)
                if len(out) >= limit:
                    break
            if not out:
                self._next_due = conn.execute(Q["next_due"]).fetchone()[0]
        return [Lease(r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10]) for r in out]

    def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Sleep until a writer wakes us, another connection's commit is seen (every ``poll``
        seconds), a scheduled job falls due, or ``timeout``."""
        deadline = time.monotonic() + timeout
        if self._next_due is not None:
            deadline = min(deadline, time.monotonic() + max(0.0, self._next_due - self.clock()))
        self._waiter.ready()  # bound before the first look: a commit after it sends us a wake
        while True:
            with self._read() as conn:
                if conn.execute("PRAGMA data_version").fetchone()[0] != self._seen_version:
                    return
            left = deadline - time.monotonic()
            if left <= 0 or self._waiter.wait(min(self.poll_interval, left)):
                return

    def ack(self, outcomes: Sequence[Outcome]) -> list[bool]:
        if not outcomes:
            return []
        now = self.clock()
        with self._write() as conn:
            current = self._current(conn, [(o.job_id, o.token) for o in outcomes])
            accepted, settled = [], set()
            for o in outcomes:  # a lease is settled once, even if it comes twice in one batch
                ok = (o.job_id, o.token) in current and o.job_id not in settled
                accepted.append(ok)
                if ok:
                    settled.add(o.job_id)
            wins = [o for o, ok in zip(outcomes, accepted) if ok]
            conn.executemany(Q["succeed"], [
                (o.result, o.started_at, o.finished_at or now, now, o.job_id, o.token)
                for o in wins if o.state == "succeeded"])
            for o in wins:
                error = orjson.dumps(o.error).decode() if o.error is not None else None
                if o.state == "queued":
                    conn.execute(Q["hand_back"], {"id": o.job_id, "token": o.token, "now": now,
                                                  "run_at": o.run_at, "error": error})
                elif o.state != "succeeded":
                    entry = orjson.dumps({"attempt": None, "at": o.finished_at or now, "state": o.state,
                                          "error": o.error}).decode()
                    conn.execute(Q["settle"], {
                        "state": o.state, "result": o.result, "error": error, "started_at": o.started_at,
                        "finished_at": o.finished_at or now, "run_at": o.run_at, "now": now,
                        "entry": entry, "id": o.job_id, "token": o.token})
        if any(o.state in ("queued", "scheduled") for o in wins):
            self._waker.wake()
        return accepted

    def mark_started(self, marks: Sequence[tuple[str, int, float]]) -> None:
        if not marks:
            return
        now = self.clock()
        with self._write() as conn:
            conn.executemany(Q["mark_started"], [{"at": at, "now": now, "id": job_id, "token": token}
                                                 for job_id, token, at in marks])

    def reserved_counts(self) -> dict[str, int]:
        with self._read() as conn:
            return {queue: n for queue, n in conn.execute(Q["reserved"])}

    def _current(self, conn: sqlite3.Connection, leases: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The (id, token) pairs among ``leases`` that are still held, with their cancel flag."""
        held: dict[tuple[str, int], int] = {}
        ids = list({job_id for job_id, _ in leases})
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            sql = Q["current_tokens"].format(ids=",".join("?" * len(chunk)))
            for job_id, token, cancel in conn.execute(sql, chunk):
                held[(job_id, token)] = cancel
        return held

    def extend(self, leases: Sequence[tuple[str, int]], lease: float) -> ExtendResult:
        result = ExtendResult()
        if not leases:
            return result
        now = self.clock()
        with self._write() as conn:
            held = self._current(conn, leases)
            conn.executemany(Q["extend"], [{"deadline": now + lease, "id": j, "token": t}
                                           for j, t in leases if (j, t) in held])
        for job_id, token in leases:
            if (job_id, token) not in held:
                result.lost.add(job_id)
            elif held[(job_id, token)]:
                result.cancel_requested.add(job_id)
        return result

    def progress(self, job_id: str, token: int, fraction: float | None, message: str | None) -> bool:
        with self._write() as conn:
            args = {"fraction": fraction, "message": message, "now": self.clock(), "id": job_id, "token": token}
            return bool(conn.execute(Q["progress"], args).rowcount)

    def _lose(self, where: str, params: dict[str, Any], error: dict[str, str]) -> int:
        params = {**params, "now": self.clock(), "error": orjson.dumps(error).decode()}
        with self._write() as conn:
            n = conn.execute(Q["lose"].format(where=where), params).rowcount
            promoted = conn.execute(Q["promote"], {"now": params["now"]}).rowcount
        if n or promoted:
            self._waker.wake()
        return int(n)

    def recover(self) -> int:
        n = self._lose("lease_until < :now", {}, LOST_LEASE)
        self._prune_events()
        return n

    def _prune_events(self) -> None:
        """Trim the change log (cheap when there is nothing to trim: it runs every second)."""
        with self._write() as conn:
            conn.execute(Q["prune_events_by_count"], {"keep": EVENT_KEEP})
            oldest = conn.execute(Q["oldest_event"]).fetchone()
            cutoff = self.clock() - EVENT_AGE
            if oldest is not None and oldest[0] < cutoff:
                conn.execute(Q["prune_events_by_age"], {"cutoff": cutoff})

    def release(self, consumer: str, reason: str) -> int:
        return self._lose("consumer = :consumer", {"consumer": consumer},
                          {"type": "WorkerLost", "message": reason})

    # -- control -----------------------------------------------------------------------------
    def cancel(self, job_id: str) -> str:
        with self._write() as conn:
            args = {"id": job_id, "now": self.clock()}
            if not conn.execute(Q["cancel_waiting"], args).rowcount:
                conn.execute(Q["cancel_running"], args)
            row = conn.execute(Q["state_of"], (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return str(row[0])

    def retry(self, job_id: str) -> str:
        try:
            with self._write() as conn:
                queued = conn.execute(Q["retry_by_hand"], {"id": job_id, "now": self.clock()}).rowcount
                row = None if queued else conn.execute(Q["state_of"], (job_id,)).fetchone()
        except sqlite3.IntegrityError:
            raise ValueError(f"job {job_id}: another active job holds the same key") from None
        if queued:
            self._waker.wake()
            return "queued"
        if row is None:
            raise JobNotFound(job_id)
        raise ValueError(f"job {job_id} is {row[0]}; only failed or cancelled jobs can be retried")

    def delete(self, job_id: str) -> bool:
        with self._write() as conn:
            return bool(conn.execute(Q["delete"], (job_id,)).rowcount)

    def pause(self, queue: str) -> None:
        with self._write() as conn:
            conn.execute(Q["pause"], (queue, 1))

    def resume(self, queue: str) -> None:
        with self._write() as conn:
            conn.execute(Q["pause"], (queue, 0))
        self._waker.wake()

    def purge(self, queue: str | None, states: Sequence[str] | Any = ("queued", "scheduled")) -> int:
        wanted = [s for s in states if s != "running"]
        if not wanted:
            return 0
        sql = f"DELETE FROM conveyor_jobs WHERE state IN ({','.join('?' * len(wanted))})"
        params: list[Any] = list(wanted)
        if queue is not None:
            sql += " AND queue = ?"
            params.append(queue)
        with self._write() as conn:
            return int(conn.execute(sql, params).rowcount)

    def prune(self, older_than: float) -> int:
        with self._write() as conn:
            n = conn.execute(Q["prune"], (self.clock() - older_than,)).rowcount
            conn.execute(Q["forget_workers"], (self.clock() - max(older_than, 3600.0),))
        self._prune_events()
        return int(n)
