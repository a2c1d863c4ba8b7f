"""``postgresql://``: the job store in the application's own PostgreSQL database.

A complete store that claims natively (a broker by itself), and the store that AMQP, STOMP and
ZeroMQ pair with. On psycopg 3 and psycopg_pool; its SQL is in ``queries.sql`` and versioned
``migrations/*.sql``, applied by ``conveyor migrate APP`` (a worker refuses an older schema).

* **Claiming:** one statement leases a batch: per wanted queue, ``ORDER BY priority DESC, seq
  LIMIT n FOR UPDATE SKIP LOCKED`` in a CTE, then ``UPDATE … RETURNING`` sets the lease deadline,
  the fencing token and the attempt. A partial index holds the claimable rows only.
* **Waking:** the jobs table's statement triggers send one NOTIFY per queue per transaction (at
  its commit); idle consumers LISTEN, and poll as a fallback (``?notify=0`` for PgBouncer).
* **Change feed:** triggers log every change in the same transaction; ``changes()`` reads the log
  in commit-safe order, so the dashboard is exact across restarts.
* **Transactions:** ``enqueue(connection=conn)`` writes jobs in the caller's transaction;
  ``current_job().transaction()`` commits a task's effect with its success.

See ``docs/brokers/postgres.md`` and :mod:`conveyor.brokers.postgres.link` for the URL options.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from ...config import redact_url
from ...errors import BrokerError
from ..records import Check, Clock, Lease
from ..store import Broker
from . import schema
from .lifecycle import PostgresLifecycle
from .link import PostgresLink, _cause
from .pairing import PostgresPairing
from .reads import PostgresReads
from .within import PostgresTransactions

__all__ = ["PostgresBroker"]


class PostgresBroker(PostgresTransactions, PostgresPairing, PostgresLifecycle, PostgresReads, PostgresLink, Broker):
    """Broker and job store in PostgreSQL (see the module docstring)."""

    scheme = "postgresql"
    supports_notify = True
    supports_transactions = True
    supports_search = True
    supports_start_marks = True

    def __init__(self, url: str = "postgresql://127.0.0.1/postgres", *, clock: Clock | None = None) -> None:
        super().__init__(url, clock=clock)
        self._setup_link(url)
        self._next_due: float | None = None
        self._due_known = False  # until the first fetch, every fetch promotes what fell due
        self._checked = False

    def __repr__(self) -> str:
        return f"<PostgresBroker {redact_url(self.url)} schema={self.schema}>"

    def fork(self) -> PostgresBroker:
        forked = type(self)(self.url, clock=self.clock)
        forked._outbox_wanted = getattr(self, "_outbox_wanted", False)
        return forked

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> None:
        """Connect and check the schema's version (raises BrokerError: run ``conveyor migrate``)."""
        self._pool_now()
        if not self._checked:
            self._run(lambda conn: schema.check(conn, self.schema, redact_url(self.conninfo)))
            self._checked = True
            self._turn_outbox_on()

    def fetch(self, queues: Sequence[str], limit: int, lease: float, consumer: str) -> list[Lease]:
        """As every store's; a consumer's first fetch LISTENs before it claims, so a job
        enqueued after a claim that found nothing always wakes it (producers never LISTEN)."""
        if self.notify and self._listener is None:
            with self._listen_lock:
                self._listen()
        return super().fetch(queues, limit, lease, consumer)

    def close(self) -> None:
        self._close_link()

    def migrate(self) -> str:
        """Apply the missing migrations (idempotent, under an advisory lock)."""
        try:
            with psycopg.connect(self.conninfo, autocommit=True) as conn:
                before, after = schema.migrate(conn, self.schema, self.channel)
                if getattr(self, "_outbox_wanted", False):  # a paired app: its triggers, made by the migrating role
                    conn.execute(self.q["outbox_on"])
        except psycopg.Error as exc:
            raise BrokerError(f"cannot migrate PostgreSQL at {redact_url(self.url)}: {_cause(exc)}") from None
        where = f"schema {self.schema!r} of {redact_url(self.conninfo)}"
        if before == after:
            return f"Conveyor tables in {where} are up to date (version {after})"
        return f"Conveyor tables in {where} migrated from version {before} to {after}"

    def drop(self) -> None:
        """Delete this store's schema and everything in it (tests; never the ``public`` schema)."""
        if self.schema == "public":
            raise BrokerError("drop() deletes a schema: not the public one")
        self.close()
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            drop = psycopg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE")
            conn.execute(drop.format(psycopg.sql.Identifier(self.schema)))

    def diagnose(self) -> list[Check]:
        checks = super().diagnose()
        if not checks[0].ok:
            return checks
        checks.append(Check("LISTEN/NOTIFY wakes idle workers" if self.notify else "notify=0: workers poll",
                            True, f"poll every {self.poll_interval:g}s"))
        return checks
