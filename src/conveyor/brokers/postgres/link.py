"""The PostgreSQL store's connections: the URL, a psycopg_pool pool per process, a retry after a
lost connection, and the LISTEN connection that wakes idle consumers.

Connections lost together (the server restarted, an administrator ran ``pg_terminate_backend``)
are one incident: the first loss says so in one log line per process, the pool's other dead
connections are checked out at once instead of failing one statement each, and psycopg's own
warnings about Conveyor's connections are not repeated. Connections say
``application_name=conveyor`` (in ``pg_stat_activity``) unless the URL names another.

URL: ``postgresql://user:password@host:5432/dbname`` (anything libpq takes, e.g. ``?sslmode=``),
plus Conveyor's own options, which are taken out before the URL reaches libpq:

* ``schema`` (default ``public``): where Conveyor's tables live, beside the application's.
* ``notify`` (``1``/``0``, default 1): wake idle consumers with LISTEN/NOTIFY. ``0`` for PgBouncer
  in transaction mode (LISTEN needs a session): consumers then poll.
* ``poll`` (seconds; default 5 with notify, 0.25 without): how often an idle consumer looks anyway.
* ``pool`` (default 4): most connections of one process.
* ``prepare`` (``1``/``0``, default 1): server-side prepared statements (off for old PgBouncers).
* ``async_acks`` (``1``/``0``, default 0): a worker's claims and acks commit without waiting for
  their WAL flush (``SET LOCAL synchronous_commit = off`` in those transactions only). A crash of
  the *server* (not of a worker) can forget the last few hundred milliseconds of them: those jobs
  are leased or run again (at-least-once still holds, a result already read may be recorded once
  more). Enqueues, ``enqueue(connection=...)`` and ``current_job().transaction()`` stay durable.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from ...config import redact_url
from ...errors import BrokerError
from ..named import read_blocks
from .lifecycle import Waits

log = logging.getLogger("conveyor.brokers.postgres")

T = TypeVar("T")
_OPTIONS = {"schema", "notify", "poll", "pool", "prepare", "async_acks"}
_QUERIES = read_blocks(__package__, "queries.sql")
_POOL_NAME = "conveyor"
#: Losses closer together than this (seconds) are one incident: said once.
QUIET_AFTER_LOSS = 10.0
#: How long (seconds) a pool keeps trying, with back-off, to replace the connections it lost: a
#: statement waiting for one gets it as soon as the server is back (with no retries it waited for
#: its whole timeout, 10 s, after an outage of 2).
RECONNECT_FOR = 300.0


def parse_url(url: str) -> tuple[str, dict[str, str]]:
    """Split a ``postgresql://`` URL into what libpq gets and Conveyor's own options."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise BrokerError(f"not a PostgreSQL URL: {redact_url(url)!r}")
    ours: dict[str, str] = {}
    theirs: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        (ours.__setitem__(name, value) if name in _OPTIONS else theirs.append((name, value)))
    return urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(theirs), "")), ours


def _flag(value: str, name: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise BrokerError(f"PostgreSQL URL option {name} must be 1 or 0, not {value!r}")


class PostgresLink:
    """Mixed into :class:`~conveyor.brokers.postgres.PostgresBroker`: connections and queries."""

    url: str

    def _setup_link(self, url: str) -> None:
        self.conninfo, options = parse_url(url)
        self.schema = options.get("schema") or "public"
        try:
            self.notify = _flag(options.get("notify", "1"), "notify")
            self.prepare = _flag(options.get("prepare", "1"), "prepare")
            self.async_acks = _flag(options.get("async_acks", "0"), "async_acks")
            self.poll_interval = float(options.get("poll", 5.0 if self.notify else 0.25))
            self.pool_size = int(options.get("pool", 4))
        except ValueError as exc:
            raise BrokerError(f"bad number in PostgreSQL URL {redact_url(url)!r}: {exc}") from None
        if self.poll_interval <= 0 or self.pool_size < 1:
            raise BrokerError(f"poll must be > 0 and pool >= 1 in {redact_url(url)!r}")
        quoted = sql.Identifier(self.schema).as_string(None)
        #: The NOTIFY channel of this schema's queues (the payload is the queue's name).
        self.channel = f"conveyor_{self.schema}"[:63]
        self.q = {name: text.replace("{s}", quoted) for name, text in _QUERIES.items()}
        self._pool: ConnectionPool | None = None
        self._pool_pid = 0
        self._pool_lock = threading.Lock()
        self._listener: psycopg.Connection[Any] | None = None
        self._listen_lock = threading.Lock()
        self._woken = False
        self._waits_of: tuple[int, Waits] | None = None  # (pid, the LISTEN connection of Job.result())

    # -- connections -------------------------------------------------------------------------
    def _connect_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"autocommit": True, "prepare_threshold": 5 if self.prepare else None}
        if "application_name" not in conninfo_to_dict(self.conninfo):
            kwargs["application_name"] = "conveyor"
        return kwargs

    def _pool_now(self) -> ConnectionPool:
        pool = self._pool
        if pool is not None and self._pool_pid == os.getpid():
            return pool
        with self._pool_lock:
            if self._pool is not None and self._pool_pid == os.getpid():
                return self._pool
            # A pool (its connections and threads) never crosses fork(): a child makes its own.
            _LOSSES.install()
            pool = ConnectionPool(self.conninfo, min_size=1, max_size=self.pool_size, open=False,
                                  kwargs=self._connect_kwargs(), name=_POOL_NAME, timeout=10.0,
                                  reconnect_timeout=RECONNECT_FOR, configure=_LOSSES.ours.add)
            try:
                pool.open(wait=True, timeout=10.0)
            except PoolTimeout as exc:
                pool.close()
                raise BrokerError(f"cannot connect to PostgreSQL at {redact_url(self.url)}: {_cause(exc)}") from None
            self._pool, self._pool_pid = pool, os.getpid()
            return pool

    def _close_link(self) -> None:
        with self._pool_lock:
            if self._pool is not None and self._pool_pid == os.getpid():
                self._pool.close()
            self._pool = None
        with self._listen_lock:
            if self._listener is not None and self._pool_pid in (0, os.getpid()):
                try:
                    self._listener.close()
                except psycopg.Error:
                    pass
            self._listener = None
        waits = self._waits_of
        self._waits_of = None
        if waits is not None and waits[0] == os.getpid():
            with waits[1].lock:
                waits[1].close()

    def _waits(self) -> Waits:
        """The waiters' LISTEN connection of this process (made on first use; never crosses fork())."""
        waits = self._waits_of
        if waits is None or waits[0] != os.getpid():
            with self._pool_lock:
                waits = self._waits_of
                if waits is None or waits[0] != os.getpid():
                    waits = self._waits_of = (os.getpid(), Waits(self.conninfo, self.channel))
        return waits[1]

    def _run(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``work(connection)`` on a pooled connection (autocommit: each statement commits, unless
        ``work`` opens a transaction). A lost connection is retried on a new one (see ``_lost``).
        getconn/putconn, not the pool's ``connection()``: its ``with conn`` (a commit call, no-op in
        autocommit) and context managers cost 15 µs of CPU per statement (``putconn`` still rolls
        back a connection left in a transaction, and replaces a broken one)."""
        for attempt in (1, 2, 3):
            try:
                pool = self._pool_now()
                conn = pool.getconn()
                try:
                    return work(conn)
                finally:
                    pool.putconn(conn)
            except PoolTimeout as exc:  # (an OperationalError too) no connection came: the server is down
                raise BrokerError(f"PostgreSQL at {redact_url(self.url)}: {_cause(exc)}") from None
            except psycopg.OperationalError as exc:
                if attempt == 3 or not _is_lost(exc):
                    raise BrokerError(f"PostgreSQL at {redact_url(self.url)}: {_cause(exc)}") from None
                self._lost(exc)
        raise AssertionError("unreachable")

    def _exec(self, name: str, params: dict[str, Any] | None = None, *, fetch: str = "all") -> Any:
        """Run the named query; ``fetch`` is "all" (rows), "one" (a row or None) or "count"."""
        query = self.q[name]

        def work(conn: psycopg.Connection[Any]) -> Any:
            cur = conn.execute(query, params)  # trusted text from queries.sql
            if fetch == "count":
                return cur.rowcount
            if fetch == "one":
                return cur.fetchone()
            return cur.fetchall() if cur.description else []

        return self._run(work)

    def _lost(self, exc: BaseException) -> None:
        """A connection died: say so (once per incident), and check the pool's idle connections
        now, so that those lost with it are replaced instead of failing one statement each."""
        _LOSSES.said(self.url, exc)
        pool = self._pool
        if pool is not None and self._pool_pid == os.getpid():
            try:
                pool.check()
            except (psycopg.Error, PoolTimeout):
                pass  # the server is gone: the next statement says so

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """One transaction on a pooled connection (for statements that must commit together). A
        connection found lost at its BEGIN, before any statement of the caller, is replaced."""
        for attempt in (1, 2, 3):
            with ExitStack() as stack:
                try:
                    conn = stack.enter_context(self._pool_now().connection())
                    stack.enter_context(conn.transaction())
                except PoolTimeout as exc:
                    raise BrokerError(f"PostgreSQL at {redact_url(self.url)}: {_cause(exc)}") from None
                except psycopg.OperationalError as exc:
                    if attempt == 3 or not _is_lost(exc):
                        raise BrokerError(f"PostgreSQL at {redact_url(self.url)}: {_cause(exc)}") from None
                    self._lost(exc)
                    continue
                yield conn
                return

    # -- waking idle consumers ---------------------------------------------------------------
    def _listen(self) -> psycopg.Connection[Any] | None:
        """The LISTEN connection of this process (None with ``notify=0``); made on first use and
        again after it was lost."""
        if not self.notify:
            return None
        if self._listener is not None and not self._listener.closed:
            return self._listener
        try:
            conn = psycopg.connect(self.conninfo, **self._connect_kwargs())
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        except psycopg.OperationalError as exc:
            # Polled meanwhile; said once per incident (the pool's connections fail alike).
            _LOSSES.said(self.url, exc)
            return None
        self._listener = conn
        return conn

    def _wait_notify(self, queues: Sequence[str], timeout: float) -> bool:
        """Wait up to ``timeout`` (at most one ``poll`` interval) for a NOTIFY naming one of
        ``queues``; True when one came. Without a LISTEN connection this is a poll's sleep."""
        wait = min(timeout, self.poll_interval)
        with self._listen_lock:
            fresh = self._listener is None or self._listener.closed
            conn = self._listen()
            if conn is None:
                time.sleep(wait)
                return False
            if fresh:
                # LISTEN starts now: a job enqueued since the caller's last look woke nobody, so
                # look again at once (a new consumer's first idle moment used to sleep `timeout`).
                return True
            wanted = set(queues)
            try:
                for note in conn.notifies(timeout=max(wait, 0.0)):
                    if note.payload in wanted:
                        return True
            except psycopg.OperationalError as exc:
                self._lost(exc)
                try:
                    conn.close()
                finally:
                    self._listener = None
                return True  # look at the queue now: notifications may have been missed
            return False


class _Losses:
    """Lost connections of this process's stores, said in one log line per incident: a loss within
    :data:`QUIET_AFTER_LOSS` seconds of the previous one is part of the same incident. Also keeps
    psycopg's own warnings about these connections (one per connection discarded, per pipeline
    ended, per failed reconnection) out of the log: this line says it once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last = -QUIET_AFTER_LOSS
        self.ours: weakref.WeakSet[Any] = weakref.WeakSet()  # the pooled connections
        self.installed = False

    def said(self, url: str, exc: BaseException) -> None:
        with self.lock:
            now = time.monotonic()
            new = now - self.last >= QUIET_AFTER_LOSS
            self.last = now
        if new:
            log.warning("lost the connection(s) to PostgreSQL at %s (%s); reconnecting (further losses "
                        "within %gs are this incident)", redact_url(url), _cause(exc), QUIET_AFTER_LOSS)

    def install(self) -> None:
        """Filter psycopg's warnings about Conveyor's connections (once per process)."""
        with self.lock:
            if not self.installed:
                self.installed = True
                for name in ("psycopg", "psycopg.pool"):
                    logging.getLogger(name).addFilter(self._not_ours)

    def _not_ours(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.WARNING or not isinstance(record.args, tuple):
            return True
        for arg in record.args:
            if arg == _POOL_NAME:  # "error connecting in 'conveyor'", "reconnection attempt in pool 'conveyor'"
                return False
            conn = getattr(arg, "_conn", arg)  # a pipeline names its connection
            try:
                if conn in self.ours:
                    return False
            except TypeError:  # not weakly referenceable: not one of ours
                pass
        return True


_LOSSES = _Losses()


def _is_lost(exc: psycopg.OperationalError) -> bool:
    """A connection that died (server gone, terminated, network) rather than a bad statement."""
    return exc.sqlstate in (None, "57P01", "57P02", "57P03", "08000", "08003", "08006")


def _cause(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
