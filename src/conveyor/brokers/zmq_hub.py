"""The hub of a ``zmq://`` worker: the sockets its supervisor runs for the pool.

A worker's supervisor starts one :class:`Hub` (``ZMQTransport.serve``). Its thread:

* takes pushed deliveries (and job messages of other clients, :mod:`~conveyor.brokers.wire`) from
  the worker's PULL socket (bound at the URL's address, or connected to a streamer device's
  ``--out``) into its :class:`~conveyor.brokers.zmq_buffer.Buffer` (one heap per queue, by
  priority then the store's order, so members take their queues in order of preference);
* hands them out on request to the pool members (a ROUTER socket on an ``ipc://`` path, answering
  on the member's datagram socket when it names one, see ``zmq_wire.answer_socket``; a thread
  member calls :meth:`Hub.take` directly), and remembers which member holds what until it settles
  or requeues it. A member process that dies holding deliveries it had not yet claimed has them put
  back at once. While a member process waits on the local push socket itself
  (:mod:`~conveyor.brokers.zmq_direct`), the thread leaves that socket to it;
* publishes job events on a PUB socket, when the URL names one;
* resends lost deliveries: when members ask for work and the buffer is empty, it takes the jobs of
  their queues that the store says have been ``queued`` for longer than ``resend_after`` seconds
  (their delivery died with a worker, or never arrived) into its own buffer. A thread of its own
  looks, once a second, from ``resend_after`` seconds after the start (so the outbox, sent by the
  worker's maintenance at once, goes first). Duplicates are dropped when claimed
  (:mod:`~conveyor.brokers.zmq_resend`).

No buffer here is durable: the store is the truth, and a delivery is only a hint to claim a job.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import zmq

from .transport import Delivery
from .zmq_buffer import TICK, HubOptions
from .zmq_resend import Resending
from .zmq_wire import (
    DATAGRAM_MAX,
    MAX_PUSH,
    answer_socket,
    can,
    decode_dispatches,
    encode_deliveries,
    push_name,
)

if TYPE_CHECKING:
    from .store import JobStore

__all__ = ["Hub", "HubOptions"]  # the hub's buffer: zmq_buffer.py

log = logging.getLogger("conveyor.brokers.zmq")


@dataclass(slots=True)
class _Parked:
    identity: bytes
    request: int
    queues: list[str]
    limit: int
    deadline: float
    answer_to: str | None


class Hub(Resending):
    """A worker's buffer of deliveries and its sockets (see the module docstring).

    Args:
        options: endpoints and limits.
        store: the job store, to resend lost deliveries (None: never resends).
    """

    def __init__(self, options: HubOptions, store: JobStore | None = None) -> None:
        super().__init__()
        self.options = options
        self.store = store
        self._parked: deque[_Parked] = deque()
        self._events: deque[list[Any]] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        self._pid = os.getpid()
        self._ctx: zmq.Context[Any] | None = None
        self._thread: threading.Thread | None = None
        self._resender: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        # The thread's socket for answers to members that gave a datagram address (see
        # zmq_wire.answer_socket), bound at ``member_name`` (Linux): members send it their
        # requests and notices as datagrams, ``kind NUL identity NUL body``.
        self._answers: socket.socket | None = None
        self.member_name: str | None = None
        # The socket at which producers on this host push (its descriptor is inherited by the pool
        # processes forked after the start, see zmq_direct), and its name.
        self.push_fd: int | None = None
        self.push_name: str | None = None
        # Members' notices that need not wake the thread (what a member took itself, settles): a
        # socket the thread does not poll, read each time it wakes, first, and every TICK.
        self._notes: socket.socket | None = None
        self.notes_name: str | None = None
        self._satisfied: dict[bytes, int] = {}  # member -> its last request that a "held" ended
        # Members waiting on the push socket themselves (zmq_direct): while there is one, the thread
        # does not read that socket. One stays here until it takes work (a "held" notice, or an
        # answer with deliveries), asks without waiting on the socket, or dies: between two of its
        # parked requests it is still taken to be waiting (pushes then wait in the kernel's queue
        # for the next member that parks).
        self._idle: set[bytes] = set()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Bind or connect the sockets and start the hub's thread. Raises zmq.ZMQError when an
        address cannot be bound (another worker holds it)."""
        self._ctx = zmq.Context()
        self._thread = threading.Thread(target=self._run, name="conveyor-zmq-hub", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            self._thread.join(5)
            self._ctx.term()
            raise self._error
        if self.store is not None:
            self._resender = threading.Thread(target=self._resend_loop, name="conveyor-zmq-resend", daemon=True)
            self._resender.start()

    def stop(self) -> None:
        """Stop the thread and close the sockets (buffered deliveries are dropped: the store keeps
        the jobs, and whoever serves the queue next resends them)."""
        self._stop.set()
        self._wake()
        for thread in (self._thread, self._resender):
            if thread is not None and thread is not threading.current_thread():
                thread.join(10)
        if self._ctx is not None and os.getpid() == self._pid:
            self._ctx.term()
            self._ctx = None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _arrived(self) -> None:
        """Deliveries came in: wake the thread when members wait (it answers them itself after
        what it read)."""
        if self._parked and not (self._thread is not None and self._thread.ident == threading.get_ident()):
            self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # a full pipe already wakes the thread; a closed one means it stopped

    def publish(self, events: list[list[Any]]) -> None:
        """Queue ``[topic, body]`` pairs for the PUB socket (sent by the hub's thread)."""
        if self.options.events is None or not events:
            return
        with self._cond:
            self._events.extend(events)
        self._wake()

    # -- the thread --------------------------------------------------------------------------
    def _run(self) -> None:
        assert self._ctx is not None
        sockets: list[zmq.Socket[Any]] = []
        try:
            pull = self._ctx.socket(zmq.PULL)
            sockets.append(pull)
            pull.setsockopt(zmq.RCVHWM, self.options.hwm)
            pull.setsockopt(zmq.MAXMSGSIZE, MAX_PUSH)  # a larger push drops its connection
            pull.setsockopt(zmq.LINGER, 0)
            self.options.jobs.attach(pull)
            router: zmq.Socket[Any] | None = None
            if self.options.members is not None:
                router = self._ctx.socket(zmq.ROUTER)
                sockets.append(router)
                router.setsockopt(zmq.LINGER, 0)
                router.setsockopt(zmq.ROUTER_MANDATORY, 0)
                router.bind(self.options.members)
            pub: zmq.Socket[Any] | None = None
            if self.options.events is not None:
                pub = self._ctx.socket(zmq.PUB)
                sockets.append(pub)
                pub.setsockopt(zmq.SNDHWM, self.options.hwm * 10)
                pub.setsockopt(zmq.LINGER, 0)
                self.options.events.attach(pub)
        except BaseException as exc:
            self._error = exc
            for s in sockets:
                s.close(0)
            self._ready.set()
            return
        local = self._local_pushes()  # before the hub is said ready: a push right after finds it
        if local is not None:
            self.push_fd, self.push_name = local.fileno(), push_name(self.options.jobs.address)
        self._answers, self.member_name = answer_socket("hub")  # members' datagrams come here too
        self._notes, self.notes_name = answer_socket("notes")
        self._ready.set()
        try:
            self._loop(pull, router, pub, local)
        except Exception:
            log.exception("the zmq:// hub failed; deliveries are resent from the store by the next hub")
        finally:
            self._answers.close()
            self._notes.close()
            if local is not None:
                local.close()
            for s in sockets:
                s.close(0)

    def _local_pushes(self) -> socket.socket | None:
        """The datagram socket at which producers on this host push (``zmq_wire.push_name``), when
        the hub binds its address; None when it cannot."""
        name = push_name(self.options.jobs.address) if self.options.jobs.bind else None
        if name is None:
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(name)
        except OSError as exc:  # taken: producers then push over ZeroMQ only
            log.debug("zmq:// local pushes off (%s)", exc)
            sock.close()
            return None
        sock.setblocking(False)
        return sock

    def _loop(self, pull: zmq.Socket[Any], router: zmq.Socket[Any] | None, pub: zmq.Socket[Any] | None,
              local: socket.socket | None) -> None:
        poller = zmq.Poller()
        if router is not None:
            poller.register(router, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        local_fd = local.fileno() if local is not None else None
        dgrams = self._answers.fileno() if self._answers is not None and self.member_name else None
        if dgrams is not None:
            poller.register(dgrams, zmq.POLLIN)
        reading: set[Any] = set()
        next_tick = 0.0
        while not self._stop.is_set():
            # Past the buffer, pushes wait (local ones in the kernel's queue); while a member waits
            # on the local push socket itself, it reads it alone.
            wanted: set[Any] = set()
            if self.depth() < self.options.buffer:
                wanted.add(pull)
                if local_fd is not None and not self._idle:
                    wanted.add(local_fd)
            if wanted != reading:
                for source in reading - wanted:
                    poller.unregister(source)
                for source in wanted - reading:
                    poller.register(source, zmq.POLLIN)
                reading = wanted
            timeout_ms = max(0.0, min(next_tick - time.monotonic(), self._next_deadline()))
            ready = dict(poller.poll(int(timeout_ms * 1000) + 1))
            if router is not None and self._notes is not None and self.notes_name:
                self._read_member_datagrams(router, self._notes)  # sent before what woke the thread
            if self._wake_r in ready:
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except (BlockingIOError, OSError):
                    pass
            if local is not None and local_fd in reading and local_fd in ready:
                self._read_local(local)
            if pull in reading and pull in ready:
                self._read_pushes(pull)
            if router is not None and router in ready:
                self._read_members(router)
            if router is not None and self._answers is not None and dgrams in ready:
                self._read_member_datagrams(router, self._answers)
            if pub is not None and self._events:
                self._send_events(pub)
            if router is not None and self._parked:
                self._answer_parked(router)
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + TICK
                self._bury_dead_members()

    def _next_deadline(self) -> float:
        if not self._parked:
            return TICK
        return max(0.0, min(p.deadline for p in self._parked) - time.monotonic())

    def _read_pushes(self, pull: zmq.Socket[Any]) -> None:
        for _ in range(100):  # a bounded batch, so members are served between reads
            if not can(pull, zmq.POLLIN):  # cheaper than a zmq.Again raised
                return
            self._pushed(pull.recv_multipart(zmq.NOBLOCK, copy=True))
            if self.depth() >= self.options.buffer:
                return

    def _pushed(self, frames: list[bytes]) -> None:
        try:
            dispatches = decode_dispatches(frames)
        except ValueError:
            # Not Conveyor's deliveries: a job message (or something to record as failed with the
            # reason), which the pool process that takes it adds to the store.
            self.counters.messages += 1
            self.put_message(b"".join(frames))
            return
        self.counters.received += len(dispatches)
        self.put(dispatches)

    def _read_local(self, local: socket.socket) -> None:
        """Pushes of producers on this host (datagrams: each one push frame)."""
        for _ in range(100):
            try:
                frame = local.recv(DATAGRAM_MAX + 1)
            except (BlockingIOError, InterruptedError):
                return
            self._pushed([frame])
            if self.depth() >= self.options.buffer:
                return

    def _read_members(self, router: zmq.Socket[Any]) -> None:
        for _ in range(1000):
            if not can(router, zmq.POLLIN):
                return
            frames = router.recv_multipart(zmq.NOBLOCK)
            if len(frames) < 3:
                continue
            identity, kind, body = frames[0], frames[1], frames[2]
            try:
                self._member_message(router, identity, kind, body)
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                log.error("dropped a malformed message from zmq:// member %r (%s)", identity, exc)

    def _read_member_datagrams(self, router: zmq.Socket[Any], sock: socket.socket) -> None:
        for _ in range(1000):
            try:
                frame = sock.recv(DATAGRAM_MAX + 1)
            except (BlockingIOError, InterruptedError):
                return
            identity = b"?"
            try:
                kind, identity, body = frame.split(b"\0", 2)
                self._member_message(router, identity, kind, body)
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                log.error("dropped a malformed message from zmq:// member %r (%s)", identity, exc)

    def _member_message(self, router: zmq.Socket[Any], identity: bytes, kind: bytes, body: bytes) -> None:
        if kind == b"take":
            request, queues, limit, timeout, *more = orjson.loads(body)
            answer_to = more[0] if more and isinstance(more[0], str) else None  # a datagram address
            with self._cond:
                got = self._take_now(queues, int(limit), identity)
            direct = answer_to is not None and len(more) > 1 and more[1] == 1 and timeout > 0 and not got
            (self._idle.add if direct else self._idle.discard)(identity)
            if got or timeout <= 0:
                self._reply(router, identity, int(request), got, queues, answer_to)
            elif int(request) <= self._satisfied.get(identity, 0):
                self._idle.discard(identity)  # it took a push itself meanwhile (its notice came first)
            else:
                self._parked.append(_Parked(identity, int(request), list(queues), int(limit),
                                            time.monotonic() + float(timeout), answer_to))
        elif kind == b"held":  # what a parked member took from the push socket itself (zmq_direct)
            request, items = orjson.loads(body)
            if self.hold(identity, items):
                self._idle.discard(identity)
                self._parked = deque(p for p in self._parked if p.identity != identity or p.request != request)
                self._satisfied[identity] = max(int(request), self._satisfied.get(identity, 0))
        elif kind == b"push":  # what such a member does not serve
            self._pushed([body])
        elif kind == b"settle":
            self.settle(orjson.loads(body))
        elif kind == b"requeue":
            self.requeue(orjson.loads(body))
        elif kind == b"events":  # [topic, body] pairs (a local process may send anything here)
            self.publish([e for e in orjson.loads(body) if isinstance(e, list) and len(e) == 2])
        elif kind == b"purge":
            request, queue = orjson.loads(body)
            router.send_multipart([identity, b"purged", orjson.dumps([request, self.purge(queue)])])
        else:
            raise ValueError(f"unknown message kind {kind[:20]!r}")

    def _reply(self, router: zmq.Socket[Any], identity: bytes, request: int, got: list[Delivery],
               queues: Sequence[str], answer_to: str | None) -> None:
        with self._cond:
            more = any(self._queues.get(q) for q in queues)
        body = encode_deliveries(request, got, more)
        if answer_to is not None and self._answers is not None and len(body) <= DATAGRAM_MAX:
            try:
                self._answers.sendto(body, answer_to)
                return
            except OSError:  # gone (then its deliveries come back as from any dead member), or full
                pass
        try:
            router.send_multipart([identity, b"give", body], zmq.NOBLOCK)
        except zmq.ZMQError:  # the member went away: what it was given goes back
            self.requeue([d.tag for d in got])

    def _answer_parked(self, router: zmq.Socket[Any]) -> None:
        now = time.monotonic()
        waiting: deque[_Parked] = deque()
        while self._parked:
            p = self._parked.popleft()
            with self._cond:
                got = self._take_now(p.queues, p.limit, p.identity)
            if got or now >= p.deadline:
                if got:
                    self._idle.discard(p.identity)
                self._reply(router, p.identity, p.request, got, p.queues, p.answer_to)
            else:
                waiting.append(p)
        self._parked = waiting

    def _send_events(self, pub: zmq.Socket[Any]) -> None:
        with self._cond:
            events, self._events = list(self._events), deque()
        for topic, body in events:
            try:
                pub.send_multipart([str(topic).encode(), orjson.dumps(body)], zmq.NOBLOCK)
            except zmq.Again:  # PUB drops for slow subscribers: events are at-most-once
                pass

    def _bury_dead_members(self) -> None:
        """Put back what member processes that died were given and had not settled."""
        with self._cond:
            owners = {owner for owner, _ in self._held.values() if owner is not None}
        dead = {owner for owner in owners | self._idle if not _pid_alive(owner, self._pid)}
        if not dead:
            return
        self._idle -= dead
        with self._cond:
            tags = [tag for tag, (owner, _) in self._held.items() if owner in dead]
            n = self._requeue_locked(tags)
            if n:
                self._cond.notify_all()
        self.counters.requeued_from_dead += n
        self._parked = deque(p for p in self._parked if p.identity not in dead)
        for identity in [i for i in self._satisfied if not _pid_alive(i, self._pid)]:
            del self._satisfied[identity]
        if n:
            log.info("%d delivery(ies) given to pool member(s) that died put back", n)


def _pid_alive(identity: bytes, own: int) -> bool:
    """Whether the process named by a member identity (``b"<pid>.<n>"``) still runs."""
    try:
        pid = int(identity.split(b".", 1)[0])
    except ValueError:
        return True
    if pid == own:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
