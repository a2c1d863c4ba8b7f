"""The ``zmq://`` transport: brokerless ZeroMQ push/pull between producers and workers.

There is no broker process. ``conveyor worker`` runs the sockets in its supervisor (a
:class:`~conveyor.brokers.zmq_hub.Hub`): it binds a PULL socket at the URL's address (or connects
to a streamer device, ``pull=``), buffers what is pushed, hands it to its pool members on request,
and publishes job events on a PUB socket (``events=``). Producers (the web app, the CLI,
``enqueue()``) connect a PUSH socket to the workers' addresses and push job ids; the jobs
themselves are in the store the transport is paired with.

URL (see docs/brokers/zmq.md)::

    zmq://HOST:PORT[,HOST:PORT...][?options]    producers push to every HOST:PORT (round robin)
    zmq:///run/conveyor/jobs.sock               the same over ipc:// (one host)

    bind=ENDPOINT        where a worker binds its PULL (default: the only HOST:PORT)
    pull=ENDPOINT        a streamer device's output: workers connect there instead of binding
    events=ENDPOINT      job events PUB: bound by the worker (``@`` or bare) or connected to a
                         forwarder device's input (``>tcp://…``)
    hwm=1000             high-water mark of every socket, in messages (one message: one batch)
    buffer=10000         most deliveries a worker holds in memory before it stops reading
    send_timeout=0.5     seconds a push waits for room under the HWM (and a process's first
                         push for its connection) before it fails and the store's outbox keeps
                         the jobs; with no worker connected a push fails at once
    resend_after=5       seconds after which a worker with nothing to do resends jobs still
                         queued in the store (their delivery was lost)

ZeroMQ delivers at most once: a message in a dead worker's memory or socket buffers is gone, and
a full HWM refuses new ones. The store makes it at-least-once: a refused push stays in the outbox
(resent every second by the workers' maintenance), a claimed job whose worker died comes back
when its lease expires, and a delivery lost before its claim is resent by a hungry worker after
``resend_after`` seconds. Duplicates are dropped when claimed, so nothing runs twice at once.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import orjson
import zmq

from ..errors import BrokerError
from .records import Check, Dispatch, Outcome
from .transport import Delivery, Transport
from .zmq_direct import SharedPushes
from .zmq_doctor import diagnose
from .zmq_hub import Hub, HubOptions
from .zmq_process import HUBS_ENV, HubService, context, exported, local_hub
from .zmq_push import Pusher
from .zmq_wire import (
    DATAGRAM_MAX,
    ZMQOptions,
    answer_socket,
    decode_deliveries,
    encode_dispatches,
    outcome_event,
)

if TYPE_CHECKING:
    from .store import Broker

__all__ = ["HubService", "ZMQOptions", "ZMQTransport"]

log = logging.getLogger("conveyor.brokers.zmq")

#: For this long after the hub answered that nothing more waited for some queues, a pool process
#: does not ask it again without waiting (the next wait is answered as soon as a push arrives).
DRAINED_FOR = 0.005
#: Most deliveries a worker's own sends (its maintenance sending the outbox) put in its buffer;
#: the outbox keeps the rest until there is room.
LOCAL_MOST = 100_000

_identities = itertools.count(1)


class ZMQTransport(Transport):
    """Push/pull over ZeroMQ, through the hub of each worker (see the module docstring).

    In a worker's supervisor (and its thread members) the transport uses the hub in-process; in a
    pool process it asks its supervisor's hub over ``ipc://``; anywhere else it only pushes.

    Args:
        url: the ``zmq://`` URL.
    """

    scheme = "zmq"
    supports_blocking_fetch = True
    #: Within a worker's buffer, higher priorities are handed out first.
    supports_priorities = True
    #: True, although ZeroMQ keeps nothing: with False every process that opens (each web process,
    #: each pool member) would send every queued job again. Deliveries lost with a dead worker are
    #: resent by the hubs from the store instead (``resend_after``).
    durable: ClassVar[bool] = True

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.options = ZMQOptions(url)
        self._request_lock = threading.Lock()
        self._notify_lock = threading.Lock()
        self._pid = 0
        self._pusher = Pusher(self.options)
        self._dealer: zmq.Socket[Any] | None = None  # take/purge requests to the supervisor's hub
        # this process's datagram socket: the hub answers there (when it has an address), and
        # requests and notices go from there to the hub's own (when it has one)
        self._answers: tuple[socket.socket, str | None] | None = None
        self._by_datagram = False  # the take requests too: once the DEALER had an answer (see _ask)
        self._waiting: zmq.Poller | None = None  # on the dealer and the answers socket
        self._direct: SharedPushes | None = None  # the hub's push socket, inherited (see zmq_direct)
        self._notify: zmq.Socket[Any] | None = None  # settle/requeue/events to it (no answers)
        self._requests = itertools.count(1)
        self._spare: list[Delivery] = []  # late answers: deliveries the hub holds for us
        # job id -> (queue, deliveries held): for events (a duplicate delivery is settled apart)
        self._queue_of: dict[str, tuple[str, int]] = {}
        self._own: HubService | None = None
        self._drained: tuple[frozenset[str], float] | None = None  # queues the hub had emptied, when
        self._hubs_seen: tuple[str | None, Any] = (None, None)  # (HUBS_ENV's value, our entry in it)

    def __repr__(self) -> str:
        return f"<ZMQTransport {self.options.key}>"

    # -- where the hub is --------------------------------------------------------------------
    def _local_hub(self) -> Hub | None:
        return local_hub(self.options.key)

    def _parent_hub(self) -> str | None:
        """The ipc:// endpoint of the supervisor's hub, when this is one of its pool processes.
        (Asked on every receive and settle: the variable is parsed again only when it changed.)"""
        raw = os.environ.get(HUBS_ENV)
        if raw != self._hubs_seen[0]:
            self._hubs_seen = (raw, exported().get(self.options.key))
        entry = self._hubs_seen[1]
        if entry and entry[1] == os.getppid() and entry[1] != os.getpid():
            return str(entry[0])
        return None

    def _to_hub(self, kind: bytes, identity: bytes, body: bytes, quiet: bool = False) -> bool:
        """Send a message to the supervisor's hub as a datagram (no ZeroMQ I/O thread on the way);
        False when the hub has no datagram address, or the message is too big or finds the hub's
        queue full: it then goes over ZeroMQ. A ``quiet`` one (a settle, what this process took
        itself) goes where the hub reads it the next time it wakes, within TICK, without waking it."""
        entry = self._hubs_seen[1]
        if not entry or len(entry) < 3:
            return False
        frame = b"\0".join((kind, identity, body))
        if len(frame) > DATAGRAM_MAX:
            return False
        with self._notify_lock:
            if self._answers is None:
                self._answers = answer_socket()
        for address in (entry[5], entry[2]) if quiet and len(entry) > 5 and entry[5] else (entry[2],):
            try:
                self._answers[0].sendto(frame, address)
                return True
            except OSError:
                continue
        return False

    def _check_fork(self) -> None:
        if self._pid != os.getpid():  # ZeroMQ sockets inherited through fork are never touched
            self._close_plain()  # plain file descriptors: the parent keeps its own
            self._pusher.forget()
            self._dealer = self._notify = None
            self._by_datagram = False
            self._spare, self._queue_of, self._own = [], {}, None
            self._pid = os.getpid()

    def open(self) -> None:
        self._check_fork()

    def close(self) -> None:
        """Close this transport's sockets (pushes still queued get up to 2 s to leave). A hub it
        started itself (no supervisor: it received first) stops too."""
        self._check_fork()
        if self._spare:
            self.requeue(self._spare)
            self._spare = []
        self._pusher.close()
        for sock in (self._dealer, self._notify):
            if sock is not None:
                sock.close()
        self._close_plain()
        self._dealer = self._notify = None
        if self._own is not None:
            self._own.close()
            self._own = None

    def _close_plain(self) -> None:
        for own in (self._answers[0] if self._answers is not None else None, self._direct):
            if own is not None:
                own.close()
        self._answers = self._waiting = self._direct = None
        self._by_datagram = False

    def drop(self) -> None:
        """Stop a hub this transport started (tests)."""
        self.close()

    def fork(self) -> ZMQTransport:
        return ZMQTransport(self.url)

    # -- the worker side ---------------------------------------------------------------------
    def serve(self, broker: Broker | None = None, queues: Sequence[str] | None = None) -> HubService:
        """Start this process's hub: bind (or connect) the worker's sockets and, with ``broker``
        (a paired broker or its store), resend lost deliveries from its store. The supervisor of
        ``conveyor worker`` calls it before starting its pool; ``close()`` the result to stop.
        Raises BrokerError when the address cannot be bound."""
        self._check_fork()
        jobs = self.options.jobs  # a ConfigError when the URL does not say where to listen
        store = None
        if broker is not None:
            store = broker.store.fork()
        folder = tempfile.mkdtemp(prefix="conveyor-zmq-")
        hub = Hub(HubOptions(jobs=jobs, members=f"ipc://{folder}/members",
                             events=self.options.events, hwm=self.options.hwm, buffer=self.options.buffer,
                             resend_after=self.options.resend_after), store)
        try:
            hub.start()
        except zmq.ZMQError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise BrokerError(f"zmq:// worker cannot listen on {self.options.jobs} ({exc}); is another worker "
                              "bound there? Give each worker its own bind=, or use a streamer device (pull=)") from exc
        service = HubService.register(self.options.key, hub, folder, f"ipc://{folder}/members")
        log.info("zmq:// worker takes deliveries from %s%s", self.options.jobs,
                 f", publishes job events on {self.options.events}" if self.options.events else "")
        if broker is None:
            self._own = service
        return service

    # -- moving deliveries -------------------------------------------------------------------
    def send(self, dispatches: Sequence[Dispatch]) -> None:
        """Push ``dispatches`` (a worker in this process takes them directly). Raises BrokerError
        when no worker took them within ``send_timeout`` (the outbox keeps them)."""
        if not dispatches:
            return
        self._check_fork()
        hub = self._local_hub()
        if hub is not None:
            if hub.depth() >= LOCAL_MOST:
                raise BrokerError(f"this worker's zmq:// buffer holds {LOCAL_MOST} deliveries already")
            hub.put(dispatches)
            return
        self._pusher.send(dispatches)

    def receive(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        """Deliveries from this worker's hub (started here when this process has none and is not
        a pool process of a worker: it then binds the worker's address itself)."""
        if limit <= 0:
            return []
        self._check_fork()
        out: list[Delivery] = []
        if self._spare:
            out, self._spare = self._spare[:limit], self._spare[limit:]
            if len(out) >= limit:
                return self._remember(out)
            timeout = 0.0
        hub = self._local_hub()
        if hub is None:
            endpoint = self._parent_hub()
            if endpoint is not None:
                if timeout <= 0 and self._drained is not None and set(queues) <= self._drained[0] \
                        and time.monotonic() - self._drained[1] < DRAINED_FOR:
                    return self._remember(out)  # the hub has just said it had nothing more for them
                return self._remember(out + self._ask(endpoint, queues, limit - len(out), timeout))
            self.serve()
            hub = self._local_hub()
            assert hub is not None
        return self._remember(out + hub.take(queues, limit - len(out), timeout))

    def _remember(self, deliveries: list[Delivery]) -> list[Delivery]:
        if self.options.events is not None:
            for d in deliveries:
                self._queue_of[d.job_id] = (d.queue, self._queue_of.get(d.job_id, ("", 0))[1] + 1)
        return deliveries

    def _member_socket(self, endpoint: str, kind: str) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = context().socket(zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, f"{os.getpid()}.{next(_identities)}{kind}".encode())
        sock.setsockopt(zmq.LINGER, 1000)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.connect(endpoint)
        return sock

    def _ask(self, endpoint: str, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        """Take deliveries from the supervisor's hub. The request goes over the DEALER socket; the
        answer comes to this process's datagram socket when it fits one (the kernel wakes this
        thread directly: no ZeroMQ I/O thread on the way, see ``zmq_wire.answer_socket``), else
        over the DEALER."""
        with self._request_lock:
            if self._dealer is None:
                self._dealer = self._member_socket(endpoint, "")
                with self._notify_lock:
                    if self._answers is None:
                        self._answers = answer_socket()
                self._waiting = zmq.Poller()
                self._waiting.register(self._dealer, zmq.POLLIN)
                if self._answers[1] is not None:
                    self._waiting.register(self._answers[0], zmq.POLLIN)
                    self._direct = SharedPushes.inherited(self._hubs_seen[1])
                if self._direct is not None:
                    self._direct.watch(self._dealer, self._answers[0])
            assert self._waiting is not None and self._answers is not None
            request = next(self._requests)
            ask: list[Any] = [request, list(queues), limit, timeout]
            if self._answers[1] is not None:
                ask.append(self._answers[1])
            # The first request goes over the DEALER: an answer too big for a datagram comes back
            # over it, which needs the DEALER connected (the hub's ROUTER drops it otherwise). A
            # parking request by datagram may say that this process waits on the push socket too.
            identity = self._dealer.get(zmq.ROUTING_ID)
            direct = self._direct if timeout > 0 and self._by_datagram and isinstance(identity, bytes) else None
            # A parking request wakes the hub even when it had nothing a moment ago: it may have
            # buffered a push since (read while no process waited on the push socket).
            if not (self._by_datagram and isinstance(identity, bytes)
                    and self._to_hub(b"take", identity, orjson.dumps([*ask, 1] if direct else ask))):
                direct = None
                self._dealer.send_multipart([b"take", orjson.dumps(ask)])
            waiting: Any = direct if direct is not None else self._waiting
            deadline = time.monotonic() + timeout + 2.0  # the hub answers by then unless it is gone
            while True:
                left = deadline - time.monotonic()
                ready = dict(waiting.poll(int(left * 1000) + 1)) if left > 0 else {}
                if not ready:
                    log.warning("the worker's zmq:// hub did not answer within %.1fs", timeout + 2.0)
                    return []
                if direct is not None and direct.fileno() in ready:
                    assert isinstance(identity, bytes)
                    took = self._took(direct, identity, request, queues, limit)
                    if took:
                        return took
                    continue
                if self._dealer in ready:
                    kind, body = self._dealer.recv_multipart()
                    if kind != b"give":
                        continue
                else:
                    assert self._answers is not None
                    try:
                        body = self._answers[0].recv(DATAGRAM_MAX + 1)
                    except BlockingIOError:
                        continue
                try:
                    answered, got, more = decode_deliveries(body)
                except (ValueError, TypeError, IndexError):  # any local process may write to the socket
                    log.warning("dropped a malformed answer on the zmq:// member socket")
                    continue
                self._by_datagram = True
                if answered == request:
                    self._drained = (frozenset(queues), time.monotonic()) if not more else None
                    return got
                self._spare.extend(got)  # the answer to a request we stopped waiting for

    def _took(self, direct: SharedPushes, identity: bytes, request: int, queues: Sequence[str],
              limit: int) -> list[Delivery]:
        """Take a push from the hub's socket (see zmq_direct): tell the hub what this process keeps
        (which ends its parked request), and hand it the rest."""
        taken = direct.take(queues, limit)
        if taken is None:
            return []  # another pool process read it first
        got, rest = ([], taken) if isinstance(taken, bytes) else taken
        if got:
            body = orjson.dumps([request, [[d.tag, d.job_id, d.queue, d.priority, d.order] for d in got]])
            if not self._to_hub(b"held", identity, body, quiet=True):
                self._to_hub_or_dealer(b"held", identity, body)
        if rest:
            self._to_hub_or_dealer(b"push", identity, rest if isinstance(rest, bytes) else encode_dispatches(rest))
        if got:
            wanted = set(queues)
            more = isinstance(rest, list) and any(d.queue in wanted for d in rest)
            self._drained = None if more else (frozenset(queues), time.monotonic())
        return got

    def _to_hub_or_dealer(self, kind: bytes, identity: bytes, body: bytes) -> None:
        if not self._to_hub(kind, identity, body):
            assert self._dealer is not None
            self._dealer.send_multipart([kind, body])

    def _tell(self, kind: bytes, body: Any) -> bool:
        """Send a message to the supervisor's hub (no answer); False when there is none."""
        endpoint = self._parent_hub()
        if endpoint is None:
            return False
        if self._to_hub(kind, f"{os.getpid()}.n".encode(), orjson.dumps(body), quiet=kind == b"settle"):
            return True
        with self._notify_lock:
            if self._notify is None:
                self._notify = self._member_socket(endpoint, "n")
            self._notify.send_multipart([kind, orjson.dumps(body)])
        return True

    def settle(self, deliveries: Sequence[Delivery]) -> None:
        self._settle(b"settle", deliveries)

    def requeue(self, deliveries: Sequence[Delivery]) -> None:
        self._settle(b"requeue", deliveries)

    def _settle(self, kind: bytes, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        self._check_fork()
        for d in deliveries:
            queue, held = self._queue_of.pop(d.job_id, ("", 0))
            if held > 1:
                self._queue_of[d.job_id] = (queue, held - 1)
        tags = [d.tag for d in deliveries]
        hub = self._local_hub()
        if hub is not None:
            (hub.settle if kind == b"settle" else hub.requeue)(tags)
        else:
            self._tell(kind, tags)

    def outcomes(self, outcomes: Sequence[Outcome], accepted: Sequence[bool]) -> None:
        """Publish an event for every accepted outcome on the worker's PUB socket (``events=``)."""
        if self.options.events is None:
            return
        events = [outcome_event(o, self._queue_of.get(o.job_id, (None, 0))[0]) for o, ok in zip(outcomes, accepted)
                  if ok]
        if not events:
            return
        try:
            self._check_fork()
            hub = self._local_hub()
            if hub is not None:
                hub.publish(events)
            else:
                self._tell(b"events", events)
        except Exception as exc:  # events are best effort: never fail an ack for them
            log.debug("job events not published: %s", exc)

    def purge(self, queue: str) -> int:
        """Drop the deliveries of ``queue`` buffered by this process's hub (0 elsewhere: each
        worker's buffer is its own, and a delivery of a purged job is dropped at claim)."""
        hub = self._local_hub()
        return hub.purge(queue) if hub is not None else 0

    # -- conveyor doctor ---------------------------------------------------------------------
    def diagnose(self) -> list[Check]:
        """Whether a worker (or streamer device) accepts pushes at the URL's addresses; when none
        does, whether a worker could bind there; and the settings in force."""
        return diagnose(self.options)
