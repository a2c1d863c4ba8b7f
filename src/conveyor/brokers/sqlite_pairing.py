"""The pairing hooks of the SQLite store (see :class:`~conveyor.brokers.store.JobStore`): claim
delivered jobs by id, and the outbox, so that a transport can carry a SQLite store's jobs.

The outbox is a table of job ids filled by TEMP triggers, which exist only on the connections of
a paired store: every path that makes a job ``queued`` (insert, promote, hand back, lost lease,
retry by hand) marks it in the same transaction, whichever process writes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from .named import read_blocks
from .records import Dispatch, Lease, live_dispatches

if TYPE_CHECKING:
    from .records import Clock

P = read_blocks(__package__, "sqlite_pairing.sql")
_PROMOTE = read_blocks(__package__, "sqlite_queries.sql")["promote"]
_CHUNK = 500  # ids per statement, well under SQLite's limit of bound parameters


class SQLitePairing:
    """Mixed into :class:`~conveyor.brokers.sqlite.SQLiteBroker`."""

    supports_pairing = True
    _outbox_on = False

    if TYPE_CHECKING:
        clock: Clock
        _conn: sqlite3.Connection | None
        _lock: Any

        def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...
        def _read(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def use_outbox(self) -> None:
        with self._lock:
            self._outbox_on = True
            if self._conn is not None:
                self._install_outbox(self._conn)

    def _install_outbox(self, conn: sqlite3.Connection) -> None:
        """Create the outbox and this connection's triggers (called on every new connection)."""
        if self._outbox_on:
            conn.executescript("BEGIN IMMEDIATE;\n" + P["outbox_schema"] + "\nCOMMIT;")

    def claim_jobs(self, jobs: Sequence[Dispatch], lease: float, consumer: str) -> list[Lease]:
        job_ids = [d.job_id for d in jobs]
        if not job_ids:
            return []
        now = self.clock()
        found: dict[str, Lease] = {}
        with self._write() as conn:
            for i in range(0, len(job_ids), _CHUNK):
                chunk = list(job_ids[i:i + _CHUNK])
                sql = P["claim_ids"].format(ids=",".join("?" * len(chunk)))
                for r in conn.execute(sql, [now + lease, consumer, now, *chunk]).fetchall():
                    found[r[0]] = Lease(*r)
        return [found.pop(j) for j in job_ids if j in found]

    def outbox(self, limit: int = 1000, among: Sequence[Dispatch] | None = None) -> list[Dispatch]:
        job_ids = None if among is None else [d.job_id for d in among]
        with self._read() as conn:
            if job_ids is None:
                rows = conn.execute(P["outbox"], (limit,)).fetchall()
            else:
                rows = []
                for i in range(0, len(job_ids), _CHUNK):
                    chunk = list(job_ids[i:i + _CHUNK])
                    rows += conn.execute(P["outbox_of"].format(ids=",".join("?" * len(chunk))), chunk).fetchall()
        live, stale = live_dispatches(rows, limit)
        if stale:  # cancelled or deleted since it was marked: nothing to carry
            self.mark_sent(stale)
        return live

    def resend_queued(self) -> None:
        with self._write() as conn:
            conn.execute(P["outbox_fill"])

    def mark_sent(self, jobs: Sequence[Dispatch]) -> None:
        if jobs:
            with self._write() as conn:
                conn.executemany(P["unmark"], [(d.job_id,) for d in jobs])

    def promote(self, queues: Sequence[str] | None = None) -> int:
        now = self.clock()
        with self._read() as conn:
            if conn.execute(P["any_due"], (now,)).fetchone() is None:
                return 0
        with self._write() as conn:
            return int(conn.execute(_PROMOTE, {"now": now}).rowcount)
