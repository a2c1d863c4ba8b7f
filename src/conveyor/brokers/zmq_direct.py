"""A parked ``zmq://`` pool process takes its host's pushes itself (Linux).

Producers on a worker's host push through the hub's Unix datagram socket (``zmq_wire.push_name``).
Pool processes are forked from the supervisor after its hub started, so each inherits that socket;
the hub names its descriptor in ``CONVEYOR_ZMQ_HUBS``, and a pool process checks that the
descriptor it has under that number is bound at that name before it uses it.

A pool process with nothing to do asks its hub for work saying that it waits on that socket too
("direct"). Until it takes work, asks without waiting there, or dies, the hub's thread does not
read the socket, so a push wakes the waiting pool process alone instead of the hub's thread and
then the pool process (two wake-ups in a row, about 100-160 µs on a busy 2-core host). The pool
process keeps what it serves (up to the count it asked for), tells the hub at once (``held``), and
hands the hub the rest (``push``). The ``held`` notice goes to the hub's socket for notices that
need not wake it: read first whenever the thread wakes, and every tick, before it buries dead
members. The hub then puts those deliveries back if the process dies. A job taken this way costs
the hub's thread one wake-up (the next parked request) where it cost three or four.
Its deliveries carry tags of its own (negative, made of its pid), which settle and requeue as the
hub's do. A pool process that dies between reading a push and telling the hub (a few microseconds)
loses that delivery, as a dead worker does: the ``resend_after`` look brings it back.

The waiting pool processes wait in ``epoll`` with ``EPOLLEXCLUSIVE`` on the push socket, so that a
push wakes one of them, not all (the others would wake only to find it taken).
"""

from __future__ import annotations

import itertools
import os
import select
import socket
import time
from collections.abc import Sequence
from typing import Any

import zmq

from .records import Dispatch
from .transport import Delivery
from .zmq_wire import DATAGRAM_MAX, can, decode_dispatches

__all__ = ["SharedPushes"]


class SharedPushes:
    """A pool process's handle on its hub's push socket (see the module docstring)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._tags = itertools.count(1)
        self._base = os.getpid() << 32
        self._epoll: Any = None
        self._dealer: zmq.Socket[Any] | None = None
        self._dealer_fd = -1

    def watch(self, dealer: zmq.Socket[Any], answers: socket.socket) -> None:
        """Wait (:meth:`poll`) on ``dealer`` (a ZeroMQ socket), ``answers`` and the push socket."""
        self._epoll = select.epoll()
        self._dealer, self._dealer_fd = dealer, int(dealer.getsockopt(zmq.FD))
        self._epoll.register(self._dealer_fd, select.EPOLLIN)
        self._epoll.register(answers.fileno(), select.EPOLLIN)
        self._epoll.register(self.fileno(), select.EPOLLIN | getattr(select, "EPOLLEXCLUSIVE", 0))

    def poll(self, timeout_ms: int) -> list[tuple[Any, int]]:
        """As ``zmq.Poller.poll`` on what :meth:`watch` named: the DEALER, or the descriptors ready."""
        assert self._dealer is not None
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            if can(self._dealer, zmq.POLLIN):  # its descriptor only signals a change: look first
                return [(self._dealer, zmq.POLLIN)]
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            ready: list[tuple[Any, int]] = [(fd, zmq.POLLIN) for fd, _ in self._epoll.poll(left)
                                            if fd != self._dealer_fd]
            if ready:
                return ready

    @classmethod
    def inherited(cls, entry: Sequence[Any] | None) -> SharedPushes | None:
        """The push socket named by a hub's entry (``[members, pid, member name, fd, push name]``)
        when this process has it open; None otherwise (spawned, not forked; or not Linux)."""
        if not entry or len(entry) < 5 or type(entry[3]) is not int or not isinstance(entry[4], str):
            return None
        try:
            sock = socket.socket(fileno=os.dup(entry[3]))
        except OSError:
            return None
        try:
            name = sock.getsockname()
            ok = sock.family == socket.AF_UNIX and sock.type == socket.SOCK_DGRAM \
                and name in (entry[4], entry[4].encode())
        except OSError:
            ok = False
        if not ok:
            sock.close()
            return None
        return cls(sock)

    def fileno(self) -> int:
        return self.sock.fileno()

    def take(self, queues: Sequence[str], limit: int) -> tuple[list[Delivery], list[Dispatch]] | bytes | None:
        """Read one push: None when there was none (another process read it first); its bytes when
        it is not a push of deliveries (a job message: the hub's to buffer); else the deliveries
        kept for ``queues`` (in their order of preference, then by priority; tagged here) and the
        rest, for the hub."""
        try:
            frame = self.sock.recv(DATAGRAM_MAX + 1, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return None
        try:
            pushed = decode_dispatches([frame])
        except ValueError:
            return frame
        rank = {q: i for i, q in enumerate(queues)}
        ours = sorted((d for d in pushed if d.queue in rank), key=lambda d: (rank[d.queue], -d.priority, d.order))
        kept = ours[:limit]
        taken = {id(d) for d in kept}
        rest = [d for d in pushed if id(d) not in taken]
        return [Delivery(d.job_id, d.queue, d.priority, d.order, -(self._base | (next(self._tags) & 0xFFFFFFFF)),
                         False) for d in kept], rest

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
        self.sock.close()
