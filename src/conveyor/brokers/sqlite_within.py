"""Transactions shared with the application on the SQLite store: enqueue on the caller's
``sqlite3.Connection`` to the store's own file, and a task's effect committed with its success
(``current_job().transaction()``).

Mixed into :class:`~conveyor.brokers.sqlite.SQLiteBroker`. SQLite has no commit hook that reaches
other processes, so a job enqueued on the caller's connection wakes no worker at its commit:
idle workers see it at their next look (``?poll=``, 0.5 s by default).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, StaleLease
from .records import Message
from .sqlite_reads import Q

if TYPE_CHECKING:
    from .records import Clock


class SQLiteTransactions:
    """``enqueue_within`` and ``job_transaction`` of the SQLite store."""

    if TYPE_CHECKING:
        clock: Clock
        path: str
        _busy_timeout: float

        def _connect(self) -> sqlite3.Connection: ...
        def _insert(self, conn: sqlite3.Connection, messages: Sequence[Message], now: float) -> list[str]: ...

    def enqueue_within(self, connection: Any, messages: Sequence[Message]) -> list[str]:
        if not isinstance(connection, sqlite3.Connection):
            raise TypeError(f"connection= on a SQLite store takes a sqlite3.Connection to its file, "
                            f"not {type(connection).__name__}")
        main = next((row[2] for row in connection.execute("PRAGMA database_list") if row[1] == "main"), "")
        where = os.path.abspath(self.path)
        if not main or os.path.realpath(main) != os.path.realpath(where):
            raise ConfigError(f"enqueue(connection=...): that connection is to {main or 'an in-memory database'}, "
                              f"not to the store's file {where}")
        self._connect()  # the schema exists before the caller's transaction writes to it
        if not messages:
            return []
        return self._insert(connection, messages, self.clock())

    @contextmanager
    def job_transaction(self, job_id: str, token: int) -> Iterator[sqlite3.Connection]:
        """A connection of its own to the store's file, in ``BEGIN IMMEDIATE``; its commit also
        records the job's success. Do not commit inside the block: leaving it commits."""
        conn = sqlite3.connect(os.path.abspath(self.path), isolation_level=None, timeout=self._busy_timeout)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                done = conn.execute(Q["commit_success"], {"id": job_id, "token": token, "now": self.clock()}).rowcount
                if not done:
                    raise StaleLease(f"job {job_id}: its lease was lost, or its transaction already committed; "
                                     "the effect was rolled back")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        finally:
            conn.close()
