"""Transactions shared with the application: enqueue on the caller's connection, and a task's
effect committed with its success (``current_job().transaction()``).

Mixed into :class:`~conveyor.brokers.postgres.PostgresBroker`. The caller's connection may be a
psycopg 3 connection, a SQLAlchemy ``Session`` or ``Connection``, Django's ``connection``, or any
DB-API connection of a driver with ``pyformat`` parameters (psycopg 2). The jobs are rows of that
transaction: they exist if, and only if, it commits; the NOTIFY that wakes workers is sent by the
same transaction, so PostgreSQL delivers it at the commit and never before.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psycopg

from ...errors import BrokerError, StaleLease
from ..records import Message
from .lifecycle import insert_jobs

if TYPE_CHECKING:
    from ..records import Clock


def statement_runner(connection: Any) -> tuple[Any, Any]:
    """``(target, execute)`` for the caller's connection: ``execute(target, query, params)``
    runs one statement in the caller's transaction and returns its rows."""
    if isinstance(connection, psycopg.Connection):
        return connection, _on_psycopg
    module = type(connection).__module__
    if module.startswith("sqlalchemy"):
        # A Session joins (or begins) its transaction through .connection(); a Connection is one.
        target = connection.connection() if hasattr(connection, "get_bind") else connection
        if not hasattr(target, "exec_driver_sql"):
            raise TypeError(f"connection=: expected a SQLAlchemy Session or Connection, "
                            f"not {type(connection).__name__}")
        return target, _on_sqlalchemy
    if module.startswith("django"):
        return connection, _on_dbapi  # django.db.connection: its cursor() is in the request's transaction
    if hasattr(connection, "cursor"):
        return connection, _on_dbapi
    raise TypeError(f"connection= takes a database connection (psycopg, SQLAlchemy, Django), "
                    f"not {type(connection).__name__}")


def _on_psycopg(conn: psycopg.Connection[Any], query: str, params: dict[str, Any]) -> list[Any]:
    return conn.execute(query, params).fetchall()


def _on_sqlalchemy(conn: Any, query: str, params: dict[str, Any]) -> list[Any]:
    return list(conn.exec_driver_sql(query, params).fetchall())


def _on_dbapi(conn: Any, query: str, params: dict[str, Any]) -> list[Any]:
    cursor = conn.cursor()
    try:
        cursor.execute(query, params)
        return list(cursor.fetchall()) if cursor.description else []
    finally:
        cursor.close()


class PostgresTransactions:
    """``enqueue_within`` and ``job_transaction`` of the PostgreSQL store."""

    supports_transactions = True

    if TYPE_CHECKING:
        clock: Clock
        q: dict[str, str]
        schema: str

        @contextmanager
        def _transaction(self) -> Iterator[psycopg.Connection[Any]]: ...

    def enqueue_within(self, connection: Any, messages: Sequence[Message]) -> list[str]:
        if not messages:
            return []
        target, execute = statement_runner(connection)
        try:
            return insert_jobs(target, self.q, messages, self.clock(), execute)
        except Exception as exc:
            if "UndefinedTable" in type(exc).__name__ or "does not exist" in str(exc):
                raise BrokerError(
                    f"enqueue(connection=...): that connection's database has no Conveyor tables in schema "
                    f"{self.schema!r}; it must be a connection to the store's own database ({exc})") from exc
            raise

    @contextmanager
    def job_transaction(self, job_id: str, token: int) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection in a transaction; its commit also records the job's success."""
        with self._transaction() as conn:
            yield conn
            done = conn.execute(self.q["commit_success"],
                                {"id": job_id, "token": token, "now": self.clock()}).rowcount
            if not done:  # raised inside the transaction: the effect is rolled back with it
                raise StaleLease(f"job {job_id}: its lease was lost, or its transaction already committed; "
                                 "the effect was rolled back")
