"""The ``amqp://`` transport: RabbitMQ (AMQP 0-9-1) through pika, paired with a job store.

``Conveyor("amqp://guest:guest@127.0.0.1:5672/", store="redis://127.0.0.1:6379/0")``. Each Conveyor
queue is a durable RabbitMQ queue named ``<prefix><queue>`` (prefix ``conveyor.`` by default). A
message is a dispatch naming a job (``{"job": id}``, see :mod:`~conveyor.brokers.wire`), published
persistent and confirmed by the server (publisher confirms, many messages per confirm round trip).
Deliveries are acknowledged only once the store holds the job's outcome; one ``basic.ack`` with
``multiple`` settles a run of them. Delays and retries wait in the store's schedule, never in
RabbitMQ. When the connection is lost, the transport reconnects with back-off and declares its
queues again; whatever RabbitMQ requeued meanwhile is fenced by the store (a delivery of a job
that is already leased is dropped), so no job runs twice at once.

URL options (the query string; the others go to pika, e.g. ``heartbeat=30``):

* ``prefix`` — queue name prefix (default ``conveyor.``).
* ``queue_type`` — ``classic`` (default) or ``quorum`` (replicated; needs RabbitMQ ≥ 3.8).
* ``max_priority`` — declare queues with ``x-max-priority`` (classic only). Conveyor priorities
  ``-max/2 .. max/2`` then keep their order; without it, deliveries are FIFO.
* ``confirm`` — ``0`` turns publisher confirms off (faster, and a message lost by a crashing
  server is sent again only by the store's outbox after a restart of the sender).
* ``prefetch`` — most unacknowledged deliveries one consumer holds (default 1024). Below it, the
  prefetch follows what the worker asks for (about twice its batch), so a pool of slow jobs holds
  few deliveries and a drain of fast ones keeps the pipe full.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import pika
import pika.exceptions as pe
import uuid_utils
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from ..config import redact_url
from ..errors import BrokerError, ConfigError
from .amqp_publish import CONFIRM_TIMEOUT, AMQPPublishing, _wait_for
from .records import Check
from .transport import Delivery, Reconnect, Transport, prefetch_for, split_options
from .wire import read_delivery

__all__ = ["AMQPTransport"]

log = logging.getLogger("conveyor.brokers.amqp")

_OPTIONS = ("prefix", "queue_type", "max_priority", "confirm", "prefetch")
_LOST = (pe.AMQPError, OSError, AssertionError)  # pika asserts on a channel that died under it
KEEPALIVE_EVERY = 5.0  # seconds between services of an idle connection (heartbeats, deliveries)


class AMQPTransport(AMQPPublishing, Transport):
    """RabbitMQ through pika (see the module docstring for the URL options)."""

    scheme = "amqp"
    supports_blocking_fetch = True
    supports_priorities = False
    durable = True

    def __init__(self, url: str) -> None:
        super().__init__(url)
        options, rest = split_options(url, _OPTIONS)
        self.prefix = options.get("prefix", "conveyor.")
        self.queue_type = options.get("queue_type", "classic")
        try:
            self.max_priority = int(options.get("max_priority", 0))
            self.max_prefetch = int(options.get("prefetch", 1024))
        except ValueError as exc:
            raise ConfigError(f"bad option in {redact_url(url)!r}: {exc}") from None
        self.confirm = options.get("confirm", "1").lower() not in ("0", "false", "no", "off")
        if self.queue_type not in ("classic", "quorum"):
            raise ConfigError(f"queue_type must be classic or quorum, not {self.queue_type!r}")
        if not 0 <= self.max_priority <= 255:
            raise ConfigError(f"max_priority must be 0..255, not {self.max_priority}")
        if self.max_priority and self.queue_type == "quorum":
            raise ConfigError("quorum queues have no priorities (x-max-priority): drop max_priority or use classic")
        if self.max_prefetch < 1:
            raise ConfigError(f"prefetch must be >= 1, not {self.max_prefetch}")
        self.supports_priorities = self.max_priority > 0  # type: ignore[misc]
        try:
            self._params = pika.URLParameters(rest)
        except Exception as exc:
            raise ConfigError(f"bad AMQP URL {redact_url(url)!r}: {exc}") from None
        self._lock = threading.RLock()
        self._conn: BlockingConnection | None = None
        self._pub: BlockingChannel | None = None
        self._sub: BlockingChannel | None = None
        self._generation = 0
        self._declared: set[str] = set()
        self._made: set[str] = set()  # every queue this transport declared (drop() deletes them)
        self._consumers: dict[str, str] = {}  # queue -> consumer tag
        self._qos = 0
        self._limits: deque[int] = deque(maxlen=32)
        self._want = 2  # the prefetch the recent fetches call for (prefetch_for)
        self._fetches = 0
        self._buffer: dict[str, deque[Delivery]] = {}
        self._unacked: dict[int, str] = {}  # delivery tags held, ascending (this generation's) -> consumer
        self._outstanding: dict[str, int] = {}  # consumer tag -> its deliveries not settled yet
        self._pending_confirms: set[int] = set()
        self._published = 0
        self._nacked = 0
        self._returned: list[tuple[str, bytes, Any]] = []
        self._select_ok = False
        self._link = Reconnect(f"RabbitMQ at {redact_url(url)}", log)
        self._used = 0.0
        self._keeper: threading.Thread | None = None
        self._stop = threading.Event()

    def fork(self) -> AMQPTransport:
        return AMQPTransport(self.url)

    def name(self, queue: str) -> str:
        """The RabbitMQ queue that carries Conveyor queue ``queue``."""
        return self.prefix + queue

    # -- the connection ----------------------------------------------------------------------
    def open(self) -> None:
        with self._lock:
            self._connection()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            conn, self._conn = self._conn, None
            self._forget()
            if conn is not None and conn.is_open:
                try:
                    conn.close()  # RabbitMQ requeues what was held
                except _LOST:
                    pass
        if self._keeper is not None and self._keeper is not threading.current_thread():
            self._keeper.join(2)
        self._keeper = None
        self._stop.clear()

    def _forget(self) -> None:
        """Drop what belonged to the last connection (its held tags are RabbitMQ's again)."""
        self._pub = self._sub = None
        self._declared.clear()
        self._consumers.clear()
        self._buffer.clear()
        self._unacked.clear()
        self._outstanding.clear()
        self._pending_confirms.clear()
        self._returned.clear()
        self._qos = 0

    def _lost(self, exc: BaseException) -> None:
        conn, self._conn = self._conn, None
        self._forget()
        self._link.lost(str(exc or type(exc).__name__), None if conn is None or not conn.is_open else conn.close)

    def _connection(self) -> BlockingConnection:
        """The open connection, made now if needed (with back-off after failures). BrokerError."""
        if self._conn is not None and self._conn.is_open:
            return self._conn
        if self._conn is not None:
            self._lost(BrokerError("the connection was closed"))
        self._link.check()
        try:
            conn = pika.BlockingConnection(self._params)
            pub = conn.channel()
            pub._impl.add_on_return_callback(self._on_return)
            if self.confirm:
                # Confirms on the channel's own object: BlockingChannel.confirm_delivery would
                # wait for each message's confirm, one round trip per message.
                self._select_ok = False
                pub._impl.confirm_delivery(ack_nack_callback=self._on_confirm,
                                           callback=self._on_select_ok)
                if not _wait_for(conn, pub, lambda: self._select_ok, CONFIRM_TIMEOUT):
                    raise pe.AMQPChannelError("no answer to confirm.select")
            sub = conn.channel()
        except _LOST as exc:
            raise self._link.failed(str(exc or type(exc).__name__)) from exc
        self._link.up()
        self._conn, self._pub, self._sub = conn, pub, sub
        self._generation += 1
        self._published = 0
        if self._keeper is None:
            self._keeper = threading.Thread(target=self._keep, name="conveyor-amqp-keeper", daemon=True)
            self._keeper.start()
        return conn

    def _keep(self) -> None:
        """Service an idle connection now and then: heartbeats go out, and RabbitMQ does not drop
        a consumer whose worker runs a long job."""
        while not self._stop.wait(KEEPALIVE_EVERY / 5):
            if time.monotonic() - self._used < KEEPALIVE_EVERY or not self._lock.acquire(blocking=False):
                continue
            try:
                if self._conn is not None and self._conn.is_open:
                    self._conn.process_data_events(0)
                    self._used = time.monotonic()
            except _LOST as exc:
                self._lost(exc)
            finally:
                self._lock.release()

    def _call(self, what: str, fn: Callable[[], Any], again: bool = False) -> Any:
        """Run ``fn`` under the lock; a lost connection is dropped and raised as BrokerError
        (with ``again``, for an idempotent ``fn``: first tried once more on a new connection)."""
        with self._lock:
            self._used = time.monotonic()
            try:
                return fn()
            except BrokerError:
                raise
            except _LOST as exc:
                self._lost(exc)
                if again:
                    self._link.retry_at = 0.0
                    return self._call(what, fn)
                raise BrokerError(f"{what} failed: {exc or type(exc).__name__}") from exc

    # -- publishing (AMQPPublishing) and declaring ------------------------------------------
    def _declare(self, queue: str) -> str:
        name = self.name(queue)
        if name not in self._declared:
            assert self._pub is not None
            arguments: dict[str, Any] = {}
            if self.queue_type == "quorum":
                arguments["x-queue-type"] = "quorum"
            if self.max_priority:
                arguments["x-max-priority"] = self.max_priority
            self._pub.queue_declare(name, durable=True, arguments=arguments or None)
            self._declared.add(name)
            self._made.add(name)
        return name

    # -- consuming ---------------------------------------------------------------------------
    def _on_delivery(self, queue: str) -> Callable[..., None]:
        generation = self._generation

        def deliver(_channel: Any, method: Any, _properties: Any, body: bytes) -> None:
            if generation != self._generation:
                return
            tag, consumer = method.delivery_tag, method.consumer_tag
            self._unacked[tag] = consumer
            self._outstanding[consumer] = self._outstanding.get(consumer, 0) + 1
            self._buffer.setdefault(queue, deque()).append(
                read_delivery(body, queue, (generation, tag), method.redelivered))

        return deliver

    def _subscribe(self, queues: Sequence[str], refill: bool = False) -> None:
        """Consume exactly ``queues``, with the prefetch the recent fetches call for. With
        ``refill``, a consumer that holds its whole prefetch is made anew: the prefetch counts
        a consumer's own deliveries, so the new one gets more while the held ones stay held (a
        caller may lease more than it settles, as the store's fetch allows)."""
        assert self._sub is not None
        qos = self._want
        if self._consumers and (qos > self._qos or qos * 4 < self._qos):
            self._cancel(list(self._consumers), requeue=False)  # resubscribed below, held ones kept
        elif refill:
            full = [q for q in queues if q in self._consumers
                    and self._outstanding.get(self._consumers[q], 0) >= self._qos]
            if not full:
                return
            self._cancel(full, requeue=False)
        for queue in [q for q in self._consumers if q not in queues]:
            self._cancel([queue], requeue=True)  # e.g. paused: what it held goes back
        if self._qos != qos or not self._consumers:
            self._sub.basic_qos(prefetch_count=qos)
            self._qos = qos
        for queue in queues:
            if queue not in self._consumers:
                name = self._declare(queue)
                self._consumers[queue] = self._sub.basic_consume(name, self._on_delivery(queue))

    def _cancel(self, queues: list[str], requeue: bool) -> None:
        assert self._sub is not None
        for queue in queues:
            self._sub.basic_cancel(self._consumers.pop(queue))
            if requeue:
                self._reject(list(self._buffer.pop(queue, ())), requeue=True)

    def _sync(self, queues: Sequence[str]) -> None:
        """Make sure that what RabbitMQ has already handed to this consumer is in the buffer: a
        passive declare of each queue (its queue process answers after sending what it sent us),
        then one more channel round trip, which comes back after those deliveries."""
        assert self._pub is not None and self._sub is not None and self._conn is not None
        for queue in queues:
            self._sub.queue_declare(self.name(queue), passive=True)
        self._sub.basic_qos(prefetch_count=self._qos)
        self._conn.process_data_events(0)

    def _take(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        out: list[Delivery] = []
        for queue in queues:
            buffer = self._buffer.get(queue)
            while buffer and len(out) < limit:
                out.append(buffer.popleft())
        return out

    def _buffered(self, queues: Sequence[str]) -> int:
        return sum(len(self._buffer.get(q, ())) for q in queues)

    def receive(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        """Up to ``limit`` held deliveries from ``queues``, in that order of preference. Never
        raises for a lost connection: it reconnects (with back-off) on the next call."""
        if limit <= 0 or not queues:
            return []
        deadline = time.monotonic() + max(0.0, timeout)
        if timeout == 0:
            self._limits.append(limit)
            self._fetches += 1
            if limit * 2 > self._want or self._fetches % 32 == 0:  # grows at once, shrinks lazily
                self._want = prefetch_for(self._limits, self.max_prefetch)
        while True:
            with self._lock:
                self._used = time.monotonic()
                try:
                    conn = self._connection()
                    self._subscribe(queues)
                    conn.process_data_events(0)
                    if timeout == 0 and self._buffered(queues) < limit:
                        self._sync(queues)
                        if self._buffered(queues) < limit:
                            self._subscribe(queues, refill=True)
                            self._sync(queues)
                    out = self._take(queues, limit)
                    left = deadline - time.monotonic()
                    if out or left <= 0:
                        return out
                    conn.process_data_events(min(left, 0.05))
                    out = self._take(queues, limit)
                    if out:
                        return out
                except BrokerError:
                    pass  # unreachable: logged once by _connection, retried after the back-off
                except _LOST as exc:
                    self._lost(exc)
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            if self._conn is None:
                time.sleep(min(left, max(0.01, self._link.retry_at - time.monotonic())))

    def _tags(self, deliveries: Sequence[Delivery]) -> list[int]:
        """The tags of ``deliveries`` still held on this connection (others went back with a lost
        connection: RabbitMQ requeued them, and the store fences their redelivery)."""
        return [tag for generation, tag in (d.tag for d in deliveries)
                if generation == self._generation and tag in self._unacked]

    def _reject(self, deliveries: Sequence[Delivery], requeue: bool) -> None:
        """Ack (``requeue`` False) or nack-and-requeue the deliveries; the longest run of the
        oldest held tags goes in one frame (``multiple``), the rest one frame each."""
        tags = set(self._tags(deliveries))
        if not tags or self._sub is None or self._conn is None:
            return
        channel = self._sub._impl  # one flush for the batch, not one per frame
        last = None
        for tag in self._unacked:  # ascending
            if tag not in tags:
                break
            last = tag
        if last is not None:
            for tag in [t for t in self._unacked if t <= last]:
                self._release(tag)
                tags.discard(tag)
            if requeue:
                channel.basic_nack(last, multiple=True, requeue=True)
            else:
                channel.basic_ack(last, multiple=True)
        for tag in sorted(tags):
            self._release(tag)
            if requeue:
                channel.basic_nack(tag, requeue=True)
            else:
                channel.basic_ack(tag)
        self._conn.process_data_events(0)

    def _release(self, tag: int) -> None:
        consumer = self._unacked.pop(tag)
        left = self._outstanding.get(consumer, 0) - 1
        if left > 0:
            self._outstanding[consumer] = left
        else:
            self._outstanding.pop(consumer, None)

    def settle(self, deliveries: Sequence[Delivery]) -> None:
        with self._lock:
            try:
                self._reject(deliveries, requeue=False)
            except _LOST as exc:
                self._lost(exc)

    def requeue(self, deliveries: Sequence[Delivery]) -> None:
        """Nack the deliveries back to their queues, with the buffered ones of those queues
        (received after them): RabbitMQ puts each back in its place, so a hand-back keeps it."""
        with self._lock:
            try:
                queues = {d.queue for d in deliveries}
                behind = [d for q in queues for d in self._buffer.pop(q, ())]
                self._reject([*deliveries, *behind], requeue=True)
            except _LOST as exc:
                self._lost(exc)

    def purge(self, queue: str) -> int:
        def run() -> int:
            self._connection()
            assert self._pub is not None
            name = self._declare(queue)
            frame = self._pub.queue_purge(name)
            return int(frame.method.message_count)

        return int(self._call("purge", run, again=True))

    def depth(self, queue: str) -> int:
        """Messages ready in ``queue`` (not handed to a consumer)."""
        def run() -> int:
            self._connection()
            assert self._pub is not None
            return int(self._pub.queue_declare(self._declare(queue), passive=True).method.message_count)

        return int(self._call("depth", run, again=True))

    def drop(self) -> None:
        """Delete every queue this transport declared (tests; a shared server keeps no leftovers)."""
        def run() -> None:
            self._connection()
            assert self._pub is not None
            for name in sorted(self._made):
                self._pub.queue_delete(name)
            self._made.clear()
            self._declared.clear()

        self._call("drop", run, again=True)

    # -- conveyor doctor ---------------------------------------------------------------------
    def diagnose(self) -> list[Check]:
        """RabbitMQ reachable (and its version), publisher confirms, and the queue type and
        priorities the URL asks for, tried on a scratch queue."""
        where = redact_url(self.url)
        try:
            self.open()
        except BrokerError as exc:
            return [Check("RabbitMQ reachable", False, str(exc),
                          f"start RabbitMQ, or fix the host, port, user or vhost of {where}")]
        assert self._conn is not None
        props = getattr(self._conn._impl, "server_properties", {}) or {}
        version = props.get("version", b"?")
        version = version.decode() if isinstance(version, bytes) else str(version)
        checks = [Check("RabbitMQ reachable", True, f"{where}, RabbitMQ {version}")]
        checks.append(Check("publisher confirms", self.confirm, "on" if self.confirm else "off (confirm=0)",
                            "drop confirm=0 from the URL unless losing a send to a crash is acceptable"))
        arguments: dict[str, Any] = {}
        what = "classic durable queues"
        if self.queue_type == "quorum":
            arguments["x-queue-type"] = "quorum"
            what = "quorum queues supported"
        if self.max_priority:
            arguments["x-max-priority"] = self.max_priority
            what += f", x-max-priority {self.max_priority}"
        scratch = f"{self.prefix}doctor-{uuid_utils.uuid7().hex}"
        try:
            def trial() -> None:
                assert self._pub is not None
                self._pub.queue_declare(scratch, durable=True, arguments=arguments or None)
                self._pub.queue_delete(scratch)

            self._call("declare", trial)
            checks.append(Check(what, True))
        except BrokerError as exc:
            checks.append(Check(what, False, str(exc), "quorum queues need RabbitMQ 3.8+ with the quorum_queue "
                                                       "feature flag on (rabbitmqctl enable_feature_flag all)"))
        checks.append(Check("consumer_timeout", True, "RabbitMQ closes a channel holding a delivery longer "
                            "than consumer_timeout (30 min by default): set it above your longest job"))
        return checks
