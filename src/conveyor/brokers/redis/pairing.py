"""The pairing hooks of the Redis store (see :class:`~conveyor.brokers.store.JobStore`), so that a
transport can carry a Redis store's jobs: claim delivered jobs by id, and the outbox.

The outbox needs no new structure: every path that makes a job ``queued`` already pushes it to its
ready list, and in a paired store nothing else reads those lists. The outbox takes jobs from them
into ``<base>:sending`` until their send is marked done; maintenance sends what is left there
again. The scripts (``lua/pairing.lua``) are loaded and run by SHA1 as every other script of the
Redis store (:mod:`~conveyor.brokers.redis.scripts`). A mixin of
:class:`~conveyor.brokers.redis.RedisBroker`.

Marking the send of a few jobs done (:meth:`RedisPairing.mark_sent`) costs no round trip of its
own: its commands go with the next store call of the process, in the same pipeline (a producer's
next enqueue, or the ``watch`` of ``Job.result()``), or at the latest ``UNMARK_WITHIN`` seconds
later from a thread of their own (and at ``close()``). Until then a maintenance pass may send the
job again: a duplicate delivery, dropped at claim, as in the moment between a send and its mark on
every store. A process that dies first leaves the marks: maintenance takes them (a job claimed
meanwhile is not sent). A bigger batch is unmarked at once, by one script call.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..records import Dispatch, Lease, Message, Outcome
from .codec import _f, _header

if TYPE_CHECKING:
    from ..records import Clock

log = logging.getLogger("conveyor.brokers.redis")
PURGE_BATCH = 1000  # jobs per purge script call, so no call blocks Redis for long
#: Batches of sent jobs up to this size are unmarked lazily (with the next store call); bigger ones
#: at once, by one script call.
LAZY_UNMARK_MAX = 16
#: Longest a done send stays marked when no store call of the process comes to carry the unmark.
UNMARK_WITHIN = 0.02
#: A thread that sent unmarks ends after this long without any to send.
UNMARKER_IDLE = 5.0


class _Unmarks:
    """Unmark commands waiting for a store call of this process to go with (see the module docstring)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.commands: list[tuple[Any, ...]] = []
        self.armed = False  # the thread will send what is left within UNMARK_WITHIN
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None

    def take(self) -> list[tuple[Any, ...]]:
        with self.lock:
            commands, self.commands = self.commands, []
            return commands


class RedisPairing:
    """Mixed into :class:`~conveyor.brokers.redis.RedisBroker` (see the module docstring)."""

    supports_pairing = True
    #: The send of a single enqueue leaves before its reply from Redis is read (``enqueue_sending``).
    sends_before_written = True
    _outbox_on = False

    if TYPE_CHECKING:
        clock: Clock

        def _groups(self, queues: Sequence[str]) -> list[list[str]]: ...
        def _all_queues(self, fresh: bool = False) -> list[str]: ...
        _link: Any
        cluster: bool

        def _base(self, queue: str) -> str: ...
        def _enqueue(self, messages: Sequence[Message], meanwhile: Callable[[], None] | None) -> list[str]: ...
        def _remember(self, pairs: Any) -> None: ...
        def ack(self, outcomes: Sequence[Outcome]) -> list[bool]: ...

    def _by_group(self, jobs: Sequence[Dispatch]) -> list[tuple[list[str], list[Dispatch]]]:
        out = []
        for group in self._groups([d.queue for d in jobs]):
            wanted = set(group)
            out.append((group, [d for d in jobs if d.queue in wanted]))
        return out

    def use_outbox(self) -> None:
        """Nothing to set up: the ready lists are the outbox."""
        self._outbox_on = True

    def purge(self, queue: str | None, states: Iterable[str] = ("queued", "scheduled")) -> int:
        """As the store's own, but the queued jobs of a paired store are found through the index of
        every id: they are not in the ready lists (a transport carries them)."""
        wanted = list(dict.fromkeys(states))
        n = 0
        if self._outbox_on and "queued" in wanted:
            wanted.remove("queued")
            for name in [queue] if queue is not None else self._all_queues(fresh=True):
                while True:
                    deleted, more = self._script("pair_purge", [name], self.clock(), [PURGE_BATCH])
                    n += int(deleted)
                    if not more:
                        break
        return n + (int(super().purge(queue, wanted)) if wanted else 0)  # type: ignore[misc]

    def enqueue_sending(self, messages: Sequence[Message], send: Callable[[], None]) -> list[str]:
        """``enqueue``, with ``send`` called while the usual single enqueue is on its way to Redis:
        the transport's delivery travels while Redis writes (see ``sends_before_written``)."""
        return self._enqueue(messages, send)

    def claim_jobs(self, jobs: Sequence[Dispatch], lease: float, consumer: str) -> list[Lease]:
        now = self.clock()
        deadline = now + lease
        found: dict[str, Lease] = {}
        unreadable: list[Outcome] = []
        for group, some in self._by_group(jobs):
            index = {q: i + 1 for i, q in enumerate(group)}
            args: list[Any] = [_f(deadline), consumer]
            for d in some:
                args += (index[d.queue], d.job_id)
            reply = self._script("pair_claim", group, now, args)
            for k in range(0, len(reply), 5):
                job_id, token, qi, attempt, m = reply[k:k + 5]
                job_id, queue = job_id.decode(), group[qi - 1]
                self._remember(((job_id, queue),))
                head, newline, payload = m.partition(b"\n")
                try:
                    if not newline:
                        raise ValueError("field m has no header line")
                    task, priority, max_attempts, timeout = _header(head)
                except ValueError as exc:
                    log.error("job %s: unreadable record in Redis (%s): failed", job_id, exc)
                    error = {"type": "MalformedMessage", "message": f"unreadable job record in Redis: {exc}"}
                    unreadable.append(Outcome(job_id, token, "failed", error=error, finished_at=now))
                    continue
                found[job_id] = Lease(job_id, token, task, queue, payload, attempt, max_attempts, timeout,
                                      deadline, priority)
        if unreadable:
            self.ack(unreadable)
        return [found.pop(d.job_id) for d in jobs if d.job_id in found]

    def outbox(self, limit: int = 1000, among: Sequence[Dispatch] | None = None) -> list[Dispatch]:
        now = self.clock()
        out: list[Dispatch] = []
        groups: list[tuple[list[str], list[Dispatch]]]
        if among is None:
            groups = [(group, []) for group in self._groups(self._all_queues(fresh=True))]
        else:
            groups = self._by_group(among)
        for group, some in groups:
            if len(out) >= limit:
                break
            index = {q: i + 1 for i, q in enumerate(group)}
            args: list[Any] = [limit - len(out)]
            for d in some:
                args += (index[d.queue], d.job_id, str(int(d.priority)))
            reply = self._script("pair_take", group, now, args)
            for k in range(0, len(reply), 3):
                qi, job_id, priority = reply[k:k + 3]
                out.append(Dispatch(job_id.decode(), group[int(qi) - 1], int(priority)))
        return out

    def mark_sent(self, jobs: Sequence[Dispatch]) -> None:
        """Unmark jobs whose send is done: with the next store call (see the module docstring)."""
        if not jobs:
            return
        # On a cluster the keys of the commands may live on other nodes than the next call's. A
        # big batch (maintenance resending the outbox, a bulk enqueue) is one script call as well:
        # two raw commands a job cost more CPU than that round trip saves (the supervisor, which
        # resends, also serves the zmq:// hub).
        if self.cluster or len(jobs) > LAZY_UNMARK_MAX:
            now = self.clock()
            for group, some in self._by_group(jobs):
                index = {q: i + 1 for i, q in enumerate(group)}
                args: list[Any] = []
                for d in some:
                    args += (index[d.queue], d.job_id, str(int(d.priority)))
                self._script("pair_sent", group, now, args)
            return
        # What the pair_sent script does: out of <base>:sending, and out of the ready list (from its
        # end: a job just enqueued was pushed there; a hand-back returns to its front).
        commands: list[tuple[Any, ...]] = []
        for d in jobs:
            base = self._base(d.queue)
            commands.append(("ZREM", base + ":sending", d.job_id))
            commands.append(("LREM", f"{base}:ready:{int(d.priority)}", "-1", d.job_id))
        unmarks = self._unmarks()
        with unmarks.lock:
            unmarks.commands += commands
            if unmarks.armed:
                return
            unmarks.armed = True
            if unmarks.thread is None:
                unmarks.thread = threading.Thread(target=self._unmarker, args=(unmarks,),
                                                  name="conveyor-redis-unmark", daemon=True)
                unmarks.thread.start()
        unmarks.wake.set()

    def _unmarks(self) -> _Unmarks:
        unmarks: _Unmarks | None = self.__dict__.get("_unmarks_state")
        if unmarks is None or unmarks.pid != os.getpid():  # a forked child's are its parent's to send
            unmarks = self.__dict__["_unmarks_state"] = _Unmarks()
        return unmarks

    def _unmarker(self, unmarks: _Unmarks) -> None:
        """The thread that sends unmarks no store call carried within UNMARK_WITHIN seconds."""
        while True:
            if not unmarks.wake.wait(UNMARKER_IDLE):
                with unmarks.lock:
                    if not unmarks.armed:
                        unmarks.thread = None
                        return
                continue
            unmarks.wake.clear()
            time.sleep(UNMARK_WITHIN)
            with unmarks.lock:
                unmarks.armed = False
            self._send_unmarks(unmarks.take())

    def _send_unmarks(self, commands: list[tuple[Any, ...]]) -> None:
        if not commands:
            return
        try:
            self._link.many(commands)
        except Exception as exc:  # the marks stay: maintenance sends those jobs again, or drops them
            log.warning("could not unmark %d sent job(s) in Redis: %s", len(commands) // 2, exc)

    def _script(self, name: str, queues: Sequence[str], now: float, args: Sequence[Any],
                pipe_before: Sequence[tuple[Any, ...]] = (), meanwhile: Callable[[], None] | None = None,
                then: Sequence[tuple[Any, ...]] = ()) -> Any:
        """Every store script, with the unmarks waiting in this process sent before it in the same
        round trip. If the call fails they may not have been applied: the marks then stay for
        maintenance (which sends those jobs again, or drops them when they are no longer queued)."""
        unmarks = self.__dict__.get("_unmarks_state")
        if unmarks is not None and unmarks.commands and unmarks.pid == os.getpid():
            pipe_before = [*unmarks.take(), *pipe_before]
        return super()._script(name, queues, now, args, pipe_before, meanwhile, then)  # type: ignore[misc]

    def close(self) -> None:
        """Send the unmarks still waiting, then close."""
        unmarks = self.__dict__.get("_unmarks_state")
        if unmarks is not None and unmarks.pid == os.getpid():
            self._send_unmarks(unmarks.take())
        super().close()  # type: ignore[misc]

    def promote(self, queues: Sequence[str] | None = None) -> int:
        now = self.clock()
        names = self._all_queues(fresh=True) if queues is None else queues
        return sum(int(self._script("pair_promote", group, now, [])) for group in self._groups(names))

    def resend_queued(self) -> None:
        now = self.clock()
        for group in self._groups(self._all_queues(fresh=True)):
            self._script("pair_resend", group, now, [])
