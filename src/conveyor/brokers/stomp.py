"""The ``stomp://`` transport: STOMP 1.2 through stomp.py (RabbitMQ's STOMP plugin, ActiveMQ, Artemis).

``Conveyor("stomp://guest:guest@127.0.0.1:61613/", store="redis://127.0.0.1:6379/0")``. Each
Conveyor queue is the destination ``<destination_prefix><prefix><queue>`` (``/queue/conveyor.default``
by default). A message is a dispatch naming a job (see :mod:`~conveyor.brokers.wire`), sent with
``persistent:true`` and a ``receipt`` that the server returns once it holds the message (on
RabbitMQ, after its publisher confirm): a send waits for every receipt of its batch. Subscriptions
use ``client-individual`` acks; a delivery is acknowledged only once the store holds the job's
outcome. Heart-beats both ways; a lost connection is made again with back-off and its
subscriptions renewed; what the server redelivers meanwhile is fenced by the store.

URL options (the query string):

* ``prefix`` — name prefix of the destinations (default ``conveyor.``).
* ``destination_prefix`` — ``/queue/`` (default; RabbitMQ and ActiveMQ). Artemis wants none
  (``destination_prefix=``) or its own anycast prefix.
* ``heartbeat`` — seconds between heart-beats each way (default 10; 0 turns them off).
* ``prefetch`` — most unacknowledged messages one subscription holds (default 1024; below it the
  prefetch follows the worker's fetch size, as for ``amqp://``). Sent as ``prefetch-count``.
* ``queue_type`` (``quorum``) and ``max_priority`` — RabbitMQ's queue arguments, sent on SEND and
  SUBSCRIBE as ``x-queue-type`` and ``x-max-priority``.

STOMP has no purge: :meth:`STOMPTransport.purge` drops nothing (the store's purge deletes the jobs,
and their deliveries are dropped when they arrive).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import stomp

from ..config import redact_url
from ..errors import BrokerError, ConfigError
from .records import Check, Dispatch
from .transport import Delivery, Reconnect, Transport, prefetch_for, split_options
from .wire import dispatch_body, read_delivery

__all__ = ["STOMPTransport"]

log = logging.getLogger("conveyor.brokers.stomp")

_OPTIONS = ("prefix", "destination_prefix", "heartbeat", "prefetch", "queue_type", "max_priority")
RECEIPT_TIMEOUT = 30.0  # seconds a send waits for the server's receipts
QUIET = 0.02  # a fetch that has less than it asked waits this long for one more message
SETTLE_MAX = 0.2  # ... but no longer than this in all (just subscribed)


_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", ":": "\\c", "\r": "\\r"})


def _frame(command: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    """One STOMP 1.2 frame (header values escaped; ``content-length`` given with a body)."""
    lines = [command, *(f"{k}:{str(v).translate(_ESCAPES)}" for k, v in headers.items())]
    if body:
        lines.append(f"content-length:{len(body)}")
    return ("\n".join(lines) + "\n\n").encode() + body + b"\x00"


class _Listener(stomp.ConnectionListener):  # type: ignore[misc]
    """stomp.py's receiver thread tells the transport what came, for one connection (generation)."""

    def __init__(self, owner: STOMPTransport, generation: int) -> None:
        self.owner, self.generation = owner, generation

    def on_message(self, frame: Any) -> None:
        self.owner._on_message(self.generation, frame.headers, frame.body)

    def on_receipt(self, frame: Any) -> None:
        self.owner._on_receipt(frame.headers.get("receipt-id", ""))

    def on_error(self, frame: Any) -> None:
        self.owner._on_error(self.generation, frame.headers.get("message", ""), frame.body)

    def on_disconnected(self) -> None:
        self.owner._on_disconnected(self.generation)

    def on_heartbeat_timeout(self) -> None:
        self.owner._on_disconnected(self.generation)


class STOMPTransport(Transport):
    """STOMP 1.2 through stomp.py (see the module docstring for the URL options)."""

    scheme = "stomp"
    supports_blocking_fetch = True
    supports_priorities = False
    durable = True

    def __init__(self, url: str) -> None:
        super().__init__(url)
        options, rest = split_options(url, _OPTIONS)
        parts = urlsplit(rest)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 61613
        self.login, self.passcode = unquote(parts.username or "guest"), unquote(parts.password or "guest")
        self.vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        self.ssl = parts.scheme.lower() == "stomp+ssl"
        self.prefix = options.get("prefix", "conveyor.")
        self.destination_prefix = options.get("destination_prefix", "/queue/")
        try:
            self.heartbeat = float(options.get("heartbeat", 10))
            self.max_prefetch = int(options.get("prefetch", 1024))
            self.max_priority = int(options.get("max_priority", 0))
        except ValueError as exc:
            raise ConfigError(f"bad option in {redact_url(url)!r}: {exc}") from None
        self.queue_type = options.get("queue_type", "")
        if self.max_priority and self.queue_type == "quorum":
            raise ConfigError("quorum queues have no priorities (x-max-priority): drop max_priority or use classic")
        self.supports_priorities = self.max_priority > 0  # type: ignore[misc]
        self._queue_headers = {"durable": "true", "auto-delete": "false"}
        if self.queue_type:
            self._queue_headers["x-queue-type"] = self.queue_type
        if self.max_priority:
            self._queue_headers["x-max-priority"] = str(self.max_priority)
        self._lock = threading.RLock()  # one operation at a time (never held by the listener)
        self._cond = threading.Condition()  # what the listener writes
        self._conn: Any = None
        self._generation = 0
        self._broken = False
        self._error = ""
        self._subs: dict[str, list[str]] = {}  # queue -> subscription ids
        self._queue_of: dict[str, str] = {}  # subscription id -> queue
        self._outstanding: dict[str, int] = {}  # subscription id -> deliveries not settled
        self._unacked: dict[str, str] = {}  # ack id -> subscription id
        self._buffer: dict[str, deque[Delivery]] = {}
        self._arrived = 0
        self._receipts: set[str] = set()
        self._ids = itertools.count(1)
        self._limits: deque[int] = deque(maxlen=32)
        self._qos = 0
        self._made: set[str] = set()  # queue names (without the destination prefix) used
        self._link = Reconnect(f"the STOMP server at {self.host}:{self.port}", log)

    def fork(self) -> STOMPTransport:
        return STOMPTransport(self.url)

    def destination(self, queue: str) -> str:
        """The destination of Conveyor queue ``queue``."""
        self._made.add(self.prefix + queue)
        return self.destination_prefix + self.prefix + queue

    # -- what the listener is told ------------------------------------------------------------
    def _on_message(self, generation: int, headers: dict[str, str], body: bytes) -> None:
        with self._cond:
            queue = self._queue_of.get(headers.get("subscription", ""))
            if generation != self._generation or queue is None:
                return
            ack, sub = headers.get("ack") or headers.get("message-id", ""), headers["subscription"]
            self._unacked[ack] = sub
            self._outstanding[sub] = self._outstanding.get(sub, 0) + 1
            tag = (generation, ack)
            redelivered = headers.get("redelivered") == "true"
            self._buffer.setdefault(queue, deque()).append(read_delivery(body or b"", queue, tag, redelivered))
            self._arrived += 1
            self._cond.notify_all()

    def _on_receipt(self, receipt: str) -> None:
        with self._cond:
            self._receipts.add(receipt)
            self._cond.notify_all()

    def _on_error(self, generation: int, message: str, body: Any) -> None:
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
        log.error("STOMP server error: %s %s", message, text.strip()[:500])
        with self._cond:
            if generation == self._generation:
                self._error = message or text.strip()[:200]
                self._cond.notify_all()

    def _on_disconnected(self, generation: int) -> None:
        with self._cond:
            if generation == self._generation:
                self._broken = True
                self._cond.notify_all()

    # -- the connection ----------------------------------------------------------------------
    def open(self) -> None:
        with self._lock:
            self._connection()

    def close(self) -> None:
        with self._lock:
            conn = self._conn
            self._forget()
            self._conn = None
            if conn is not None:
                try:
                    if conn.is_connected():
                        conn.disconnect()  # the server requeues what was held
                except Exception:
                    pass

    def _forget(self) -> None:
        with self._cond:
            self._generation += 1  # deliveries and tags of the old connection are ignored
            self._broken = False
            self._subs.clear()
            self._queue_of.clear()
            self._outstanding.clear()
            self._unacked.clear()
            self._buffer.clear()
            self._qos = 0

    def _lost(self, why: str) -> None:
        conn, self._conn = self._conn, None
        self._forget()
        self._link.lost(why, None if conn is None else conn.disconnect)

    def _connection(self) -> Any:
        """The connected client, made now if needed (with back-off after failures). BrokerError."""
        with self._cond:
            broken = self._broken or (self._conn is not None and not self._conn.is_connected())
        if self._conn is not None and not broken:
            return self._conn
        if self._conn is not None:
            self._lost(self._error or "disconnected")
        self._link.check()
        beat = int(self.heartbeat * 1000)
        conn = stomp.Connection12([(self.host, self.port)], heartbeats=(beat, beat), auto_decode=False,
                                  reconnect_attempts_max=1, vhost=self.vhost, timeout=10)
        if self.ssl:
            conn.set_ssl(for_hosts=[(self.host, self.port)])
        with self._cond:
            self._generation += 1
            self._broken, self._error = False, ""
            generation = self._generation
        conn.set_listener("conveyor", _Listener(self, generation))
        try:
            conn.connect(self.login, self.passcode, wait=True)
        except Exception as exc:
            try:
                conn.disconnect()
            except Exception:
                pass
            raise self._link.failed(str(self._error or exc or type(exc).__name__)) from exc
        self._link.up()
        self._conn = conn
        return conn

    def _wait_receipts(self, receipts: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not receipts <= self._receipts:
                left = deadline - time.monotonic()
                if self._broken or self._error or left <= 0:
                    missing = len(receipts - self._receipts)
                    self._receipts -= receipts
                    why = self._error or ("connection lost" if self._broken else f"no receipt in {timeout:.0f}s")
                    raise BrokerError(f"the STOMP server did not take {missing} message(s): {why}")
                self._cond.wait(min(left, 0.5))
            self._receipts -= receipts

    # -- sending -----------------------------------------------------------------------------
    def send(self, dispatches: Sequence[Dispatch]) -> None:
        """SEND each dispatch persistent with a receipt, then wait for all the receipts. A lost
        connection is made again once and the batch sent again (duplicates are fenced by the
        store). Raises BrokerError."""
        if not dispatches:
            return
        for attempt in (1, 2):
            with self._lock:
                try:
                    conn = self._connection()
                    receipts = set()
                    frames = []
                    for d in dispatches:
                        receipt = f"s{next(self._ids)}"
                        receipts.add(receipt)
                        headers = {"destination": self.destination(d.queue), "content-type": "application/json",
                                   "persistent": "true", "receipt": receipt, **self._queue_headers}
                        if self.max_priority:
                            headers["priority"] = str(max(0, min(self.max_priority,
                                                                 d.priority + (self.max_priority + 1) // 2)))
                        frames.append(_frame("SEND", headers, dispatch_body(d)))
                    conn.transport.send(b"".join(frames))  # the batch in one write, not one per frame
                    self._wait_receipts(receipts, RECEIPT_TIMEOUT)
                    return
                except BrokerError:
                    if attempt == 2:
                        raise
                    self._lost("a send failed")
                except Exception as exc:  # stomp.py's socket errors
                    self._lost(str(exc) or type(exc).__name__)
                    if attempt == 2:
                        raise BrokerError(f"STOMP send failed: {exc}") from exc

    # -- receiving ---------------------------------------------------------------------------
    def _subscribe(self, conn: Any, queues: Sequence[str], refill: bool = False) -> tuple[Any, bool]:
        """Subscribe to ``queues`` with the prefetch recent fetches call for (see
        :func:`~conveyor.brokers.transport.prefetch_for`); with ``refill``, add a subscription to
        a queue whose subscriptions hold their whole prefetch (a caller may lease more than it
        settles). The connection (a new one when needed), and whether a subscription was made.

        A STOMP subscription cannot be ended while it holds unacknowledged messages (their ACK
        would name a subscription the server no longer knows), so a new prefetch, or a queue to
        leave (paused), makes the connection anew: the server takes back what it held, and the
        store fences the redeliveries. That happens when a worker starts, and seldom after."""
        qos = prefetch_for(self._limits, self.max_prefetch)
        with self._cond:
            current = dict(self._subs)
        if current and (qos > self._qos or qos * 4 < self._qos or any(q not in queues for q in current)):
            self._renew()
            conn, current = self._connection(), {}
        wanted = [q for q in queues if q not in current]
        if refill:
            with self._cond:
                wanted += [q for q in queues if q in current and sum(
                    self._outstanding.get(sub, 0) for sub in current[q]) >= self._qos * len(current[q])]
        receipts = set()
        for queue in wanted:
            sub = f"{queue}#{next(self._ids)}"
            with self._cond:
                self._subs.setdefault(queue, []).append(sub)
                self._queue_of[sub] = queue
                self._qos = qos
            receipt = f"s{next(self._ids)}"
            receipts.add(receipt)
            conn.subscribe(self.destination(queue), id=sub, ack="client-individual",
                           headers={"prefetch-count": str(qos), "receipt": receipt, **self._queue_headers})
        if receipts:
            self._wait_receipts(receipts, RECEIPT_TIMEOUT)
        return conn, bool(receipts)

    def _renew(self) -> None:
        """Make the connection anew (see :meth:`_subscribe`)."""
        conn, self._conn = self._conn, None
        self._forget()
        if conn is not None:
            try:
                conn.disconnect()
            except Exception:
                pass

    def _take(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        out: list[Delivery] = []
        with self._cond:
            for queue in queues:
                buffer = self._buffer.get(queue)
                while buffer and len(out) < limit:
                    out.append(buffer.popleft())
        return out

    def _settle_wait(self, queues: Sequence[str], limit: int, longest: float) -> None:
        """Wait while messages keep coming (each within QUIET of the last), until ``limit`` are
        buffered or ``longest`` seconds: STOMP has no round trip that says "that was all"."""
        deadline = time.monotonic() + longest
        with self._cond:
            while sum(len(self._buffer.get(q, ())) for q in queues) < limit and not self._broken:
                seen = self._arrived
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(min(QUIET, left))
                if self._arrived == seen:
                    return

    def receive(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        """Up to ``limit`` held deliveries from ``queues``, in that order of preference. Never
        raises for a lost connection: it reconnects (with back-off) on the next call."""
        if limit <= 0 or not queues:
            return []
        deadline = time.monotonic() + max(0.0, timeout)
        if timeout == 0:
            self._limits.append(limit)
        while True:
            with self._lock:
                try:
                    conn, fresh = self._subscribe(self._connection(), queues)
                    out = self._take(queues, limit)
                    if len(out) < limit and timeout == 0:
                        self._settle_wait(queues, limit - len(out), SETTLE_MAX if fresh else QUIET * 3)
                        if self._subscribe(conn, queues, refill=True)[1]:
                            self._settle_wait(queues, limit - len(out), SETTLE_MAX)
                        out += self._take(queues, limit - len(out))
                    if out or timeout == 0:
                        return out
                except BrokerError:
                    pass  # unreachable: logged once, retried after the back-off
                except Exception as exc:  # stomp.py's socket errors
                    self._lost(str(exc) or type(exc).__name__)
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            with self._cond:
                if self._conn is not None and not self._broken:
                    if not any(self._buffer.get(q) for q in queues):
                        self._cond.wait(min(left, 0.5))
                    continue
            time.sleep(min(left, max(0.01, self._link.retry_at - time.monotonic())))

    def _nack(self, conn: Any, deliveries: Sequence[Delivery]) -> None:
        held = self._held(deliveries)
        if held:
            conn.transport.send(b"".join(_frame("NACK", {"id": ack, "requeue": "true"}) for ack in held))

    def _held(self, deliveries: Sequence[Delivery]) -> list[str]:
        """The ack ids of ``deliveries`` still held on this connection, now released."""
        out = []
        with self._cond:
            for generation, ack in (d.tag for d in deliveries):
                sub = self._unacked.pop(ack, None) if generation == self._generation else None
                if sub is not None:
                    out.append(ack)
                    left = self._outstanding.get(sub, 0) - 1
                    if left > 0:
                        self._outstanding[sub] = left
                    else:
                        self._outstanding.pop(sub, None)
        return out

    def settle(self, deliveries: Sequence[Delivery]) -> None:
        with self._lock:
            if self._conn is None:
                return
            try:
                held = self._held(deliveries)
                if held:  # one write for the batch (STOMP acks one message per frame)
                    self._conn.transport.send(b"".join(_frame("ACK", {"id": ack}) for ack in held))
            except Exception as exc:
                self._lost(str(exc) or type(exc).__name__)

    def requeue(self, deliveries: Sequence[Delivery]) -> None:
        """NACK the deliveries back, with the buffered ones of their queues (received after them),
        so that the server puts each back in its place."""
        with self._lock:
            if self._conn is None:
                return
            with self._cond:
                behind = [d for q in {d.queue for d in deliveries} for d in self._buffer.pop(q, ())]
            try:
                self._nack(self._conn, [*deliveries, *behind])
            except Exception as exc:
                self._lost(str(exc) or type(exc).__name__)

    def purge(self, queue: str) -> int:
        """STOMP cannot purge a destination: nothing is dropped (0)."""
        return 0

    def queue_names(self) -> list[str]:
        """The server-side names of the queues this transport used (for clean-up by tests)."""
        return sorted(self._made)

    # -- conveyor doctor ---------------------------------------------------------------------
    def diagnose(self) -> list[Check]:
        """The STOMP server (RabbitMQ's STOMP plugin) answers and takes a receipted message."""
        where = f"{self.host}:{self.port}"
        try:
            self.open()
        except BrokerError as exc:
            advice = ("on RabbitMQ, turn the STOMP plugin on: rabbitmq-plugins enable rabbitmq_stomp"
                      if self.port == 61613 else "start the STOMP server, or fix the host, port or login")
            return [Check("STOMP server reachable (RabbitMQ: the rabbitmq_stomp plugin on)", False, str(exc), advice)]
        checks = [Check("STOMP server reachable (RabbitMQ: the rabbitmq_stomp plugin on)", True,
                        f"{where}, vhost {self.vhost}")]
        beats = f"every {self.heartbeat:g}s" if self.heartbeat else "off"
        checks.append(Check("heart-beats", self.heartbeat > 0, beats,
                            "set heartbeat= to a few seconds, or a dead server goes unnoticed"))
        return checks
