"""The ``memory`` transport: in-process queues, the reference :class:`Transport`.

It pairs with any store (``Conveyor("memory://", store="sqlite:///jobs.db")``) and honours
everything a transport may promise: priorities, the store's FIFO order within a priority (a
requeued delivery keeps its place), blocking receive, held deliveries until settled. It lives in
one process (forks share it): use the thread or async pool with it.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Sequence
from dataclasses import replace

from .records import Dispatch
from .transport import Delivery, Transport

__all__ = ["MemoryTransport"]


class MemoryTransport(Transport):
    """In-process transport; deliveries wait in one heap per queue."""

    scheme = "memory"
    supports_blocking_fetch = True
    supports_priorities = True
    shared_between_processes = False
    durable = False

    def __init__(self, url: str = "memory://") -> None:
        super().__init__(url)
        self._ready = threading.Condition()
        # queue -> heap of (-priority, order, arrival, delivery); the arrival number is the tag.
        self._queues: dict[str, list[tuple[int, int, int, Delivery]]] = {}
        self._held: dict[int, Delivery] = {}
        self._arrivals = itertools.count(1)

    def fork(self) -> MemoryTransport:
        """The same queues (threads of one process share one memory transport)."""
        return self

    def _push(self, d: Delivery) -> None:
        heapq.heappush(self._queues.setdefault(d.queue, []), (-d.priority, d.order, d.tag, d))

    def send(self, dispatches: Sequence[Dispatch]) -> None:
        with self._ready:
            for x in dispatches:
                self._push(Delivery(x.job_id, x.queue, x.priority, x.order, next(self._arrivals)))
            self._ready.notify_all()

    def receive(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + max(0.0, timeout)
        out: list[Delivery] = []
        with self._ready:
            while True:
                for queue in queues:
                    heap = self._queues.get(queue)
                    while heap and len(out) < limit:
                        d = heapq.heappop(heap)[3]
                        self._held[d.tag] = d
                        out.append(d)
                left = deadline - time.monotonic()
                if out or limit <= 0 or left <= 0:
                    return out
                self._ready.wait(left)

    def settle(self, deliveries: Sequence[Delivery]) -> None:
        with self._ready:
            for d in deliveries:
                self._held.pop(d.tag, None)

    def requeue(self, deliveries: Sequence[Delivery]) -> None:
        with self._ready:
            for d in deliveries:
                if self._held.pop(d.tag, None) is not None:
                    self._push(replace(d, redelivered=True))
            self._ready.notify_all()

    def purge(self, queue: str) -> int:
        with self._ready:
            return len(self._queues.pop(queue, []))

    def depth(self, queue: str) -> int:
        """Deliveries waiting in ``queue`` (for tests)."""
        with self._ready:
            return len(self._queues.get(queue, []))
