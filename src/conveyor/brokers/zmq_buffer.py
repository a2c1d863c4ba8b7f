"""The buffer of a ``zmq://`` worker's hub (:mod:`~conveyor.brokers.zmq_hub`): what was pushed to
the worker and not yet claimed, apart from the sockets that fill and empty it.

One heap per queue, by priority then the store's order (then arrival), so members take their
queues in order of preference; and what each member holds until it settles or requeues it. Any
thread may use it: a thread member takes directly, the hub's thread for its member processes.
Nothing here is durable: the store is the truth, and a delivery is only a hint to claim a job.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .records import Dispatch
from .transport import Delivery
from .zmq_wire import Endpoint, message_queue

__all__ = ["Buffer", "HubCounters", "HubOptions"]

#: Longest wait of a taker between two looks at the stop flag; how often the hub looks for dead
#: members and expired requests (seconds).
TICK = 0.2


@dataclass(slots=True)
class HubOptions:
    """What a hub binds and how much it holds (from the URL, see :mod:`conveyor.brokers.zmq`)."""

    #: Where pushed deliveries come in: bound (``@``) or connected (``>``, a streamer device).
    jobs: Endpoint
    #: The members' ROUTER endpoint (``ipc://`` under a private folder), or None for threads only.
    members: str | None = None
    #: Job events PUB endpoint, or None.
    events: Endpoint | None = None
    hwm: int = 1000
    #: Most deliveries buffered; past it the PULL socket is not read (pushes wait, then fail).
    buffer: int = 10_000
    resend_after: float = 5.0


@dataclass(slots=True)
class HubCounters:
    """What a hub has seen (for tests and logs)."""

    received: int = 0
    messages: int = 0
    duplicates: int = 0
    resent: int = 0
    requeued_from_dead: int = 0
    direct: int = 0  # deliveries members took from the push socket themselves (zmq_direct)


class Buffer:
    """Deliveries waiting in a worker, and those handed out (see the module docstring)."""

    def __init__(self) -> None:
        self.counters = HubCounters()
        self._cond = threading.Condition()
        self._queues: dict[str, list[tuple[int, int, int, Delivery]]] = {}
        self._buffered: set[str] = set()  # job ids waiting in a heap
        self._held: dict[int, tuple[bytes | None, Delivery]] = {}  # tag -> (member identity, delivery)
        self._tags = itertools.count(1)
        self._hungry: dict[str, float] = {}  # queue -> when a member last found it empty
        self._stop = threading.Event()

    def put(self, dispatches: Sequence[Dispatch], redelivered: bool = False) -> int:
        """Buffer deliveries of ``dispatches`` (a job already buffered is skipped); how many."""
        n = 0
        with self._cond:
            for d in dispatches:
                if d.job_id in self._buffered:
                    self.counters.duplicates += 1
                    continue
                self._push(Delivery(d.job_id, d.queue, d.priority, d.order, next(self._tags), redelivered))
                n += 1
            if n:
                self._cond.notify_all()
        if n:
            self._arrived()
        return n

    def put_message(self, body: bytes) -> None:
        """Buffer a job message (see :mod:`~conveyor.brokers.wire`) on the queue it names."""
        with self._cond:
            self._push(Delivery("", message_queue(body), 0, 0, next(self._tags), False, body))
            self._cond.notify_all()
        self._arrived()

    def _arrived(self) -> None:
        """Told (outside the lock) that deliveries came in; the hub wakes its thread."""

    def _push(self, d: Delivery) -> None:
        if d.job_id:
            self._buffered.add(d.job_id)
        heapq.heappush(self._queues.setdefault(d.queue, []), (-d.priority, d.order, d.tag, d))

    def _take_now(self, queues: Sequence[str], limit: int, owner: bytes | None) -> list[Delivery]:
        out: list[Delivery] = []
        for queue in queues:
            heap = self._queues.get(queue)
            while heap and len(out) < limit:
                d = heapq.heappop(heap)[3]
                self._buffered.discard(d.job_id)
                self._held[d.tag] = (owner, d)
                out.append(d)
            if len(out) >= limit:
                break
        if len(out) < limit:
            now = time.monotonic()
            for queue in queues:
                if not self._queues.get(queue):
                    self._hungry[queue] = now
        return out

    def take(self, queues: Sequence[str], limit: int, timeout: float, owner: bytes | None = None) -> list[Delivery]:
        """Up to ``limit`` deliveries of ``queues`` (in that order), waiting up to ``timeout``
        seconds for the first; held until :meth:`settle` or :meth:`requeue`."""
        if limit <= 0:
            return []
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while True:
                out = self._take_now(queues, limit, owner)
                left = deadline - time.monotonic()
                if out or left <= 0 or self._stop.is_set():
                    return out
                self._cond.wait(min(left, TICK))

    def hold(self, owner: bytes, items: Sequence[Sequence[object]]) -> int:
        """Record deliveries a member took itself (``[tag, job_id, queue, priority, order]``, its
        own negative tags); how many. Raises ValueError on a malformed item (nothing recorded)."""
        got = []
        for tag, job_id, queue, priority, order in items:
            if not (type(tag) is int and tag < 0 and isinstance(job_id, str) and isinstance(queue, str)
                    and type(priority) is int and type(order) is int):
                raise ValueError("a held delivery is [negative tag, job_id, queue, priority, order]")
            got.append(Delivery(job_id, queue, priority, order, tag, False))
        with self._cond:
            for d in got:
                self._held[d.tag] = (owner, d)
        self.counters.direct += len(got)
        return len(got)

    def settle(self, tags: Sequence[int]) -> None:
        """Forget held deliveries."""
        with self._cond:
            for tag in tags:
                self._held.pop(tag, None)

    def requeue(self, tags: Sequence[int]) -> None:
        """Put held deliveries back in their place."""
        with self._cond:
            n = self._requeue_locked(tags)
            if n:
                self._cond.notify_all()
        if n:
            self._arrived()

    def _requeue_locked(self, tags: Sequence[int]) -> int:
        n = 0
        for tag in tags:
            held = self._held.pop(tag, None)
            if held is not None and held[1].job_id not in self._buffered:
                d = held[1]
                self._push(Delivery(d.job_id, d.queue, d.priority, d.order, d.tag, True, d.body))
                n += 1
        return n

    def purge(self, queue: str) -> int:
        """Drop the buffered deliveries of ``queue``; how many."""
        with self._cond:
            heap = self._queues.pop(queue, [])
            for item in heap:
                self._buffered.discard(item[3].job_id)
            return len(heap)

    def depth(self, queue: str | None = None) -> int:
        """Buffered deliveries (of ``queue``, or in all)."""
        with self._cond:
            if queue is not None:
                return len(self._queues.get(queue, []))
            return sum(len(h) for h in self._queues.values())

    def held(self) -> int:
        """Deliveries handed out and not yet settled."""
        with self._cond:
            return len(self._held)
