"""The fenced lifecycle on Redis: enqueue, fetch (and the blocking wait), ack, extend, mark
started, progress, and the recovery of expired or released leases."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import orjson
from redis.exceptions import NoScriptError, ResponseError

from ...errors import BrokerError
from .. import ExtendResult, Lease, Message, Outcome
from .base import RedisBase
from .codec import _f, _floats, _header
from .scripts import SCRIPTS, SHAS

log = logging.getLogger("conveyor.brokers.redis")

OUTCOME_STATES = frozenset({"succeeded", "failed", "cancelled", "scheduled", "queued"})
BATCH = 1000  # jobs per purge / prune / recover script call, so no call blocks Redis for long
INDEX_CALLS = 100  # recover calls at most that one recover() makes to index new ids (BATCH each)
# Messages per enqueue script when a large usual batch is streamed (see _enqueue_chunks): small
# enough that Redis starts storing while Python still encodes, large enough that the script's
# fixed cost (~30 us) stays under 0.2 us per job.
CHUNK = 250


class RedisLifecycle(RedisBase):
    """Moving jobs: the operations a worker and a producer call."""

    # -- moving jobs -------------------------------------------------------------------------
    def enqueue(self, messages: Sequence[Message]) -> list[str]:
        return self._enqueue(messages, None)

    def _enqueue(self, messages: Sequence[Message], meanwhile: Callable[[], None] | None) -> list[str]:
        """``enqueue``; ``meanwhile`` (when given) is called once: while the usual single enqueue is
        on its way to Redis (before its reply is read), else after the write."""
        if not messages:
            if meanwhile is not None:
                meanwhile()
            return []
        now = self.clock()
        ids = [m.id for m in messages]
        heads: dict[tuple[Any, ...], bytes] = {}  # the header line of field m, alike within a batch

        def fixed(m: Message) -> bytes:
            spec = (m.task, m.priority, m.max_attempts, m.timeout, m.created_at)
            head = heads.get(spec)
            if head is None:
                head = heads[spec] = orjson.dumps([m.task, int(m.priority), int(m.max_attempts), m.timeout,
                                                   m.created_at or now, now]) + b"\n"
            return head + m.payload

        if len(messages) == 1:
            m = messages[0]
            if m.key is None and (m.run_at is None or m.run_at <= now):  # the usual single enqueue
                self._script("enqueue_one", [m.queue], now, [m.id, str(int(m.priority)), fixed(m)],
                             self._register([m.queue]), meanwhile)
                self._remember(((m.id, m.queue),))
                return ids
        for group in self._groups([m.queue for m in messages]):
            positions: list[int] = []
            args: list[Any] = []
            if len(group) == 1 and len(set(ids)) == len(ids):
                # the usual batch (one queue, one priority, queued now, no unique keys): 2 fields each
                queue, priority = group[0], messages[0].priority
                usual = True
                for m in messages:
                    if (m.queue != queue or m.key is not None or m.priority != priority
                            or (m.run_at is not None and m.run_at > now)):
                        usual = False
                        break
                if usual and len(messages) > CHUNK and not self.cluster:
                    for pos, job_id in self._enqueue_chunks(queue, priority, now, messages, fixed):
                        ids[pos] = job_id
                    continue
                if usual:
                    args = ["u", 1, str(int(priority))]
                    for m in messages:
                        args += (m.id, fixed(m))
                    positions = list(range(len(messages)))
            if not positions:
                index = {q: i + 1 for i, q in enumerate(group)}
                args = ["r"]
                for pos, m in enumerate(messages):
                    qi = index.get(m.queue)
                    if qi is None:
                        continue
                    positions.append(pos)
                    scheduled = m.run_at is not None and m.run_at > now
                    args += [qi, m.id, m.key or "", _f(m.run_at) if scheduled and m.run_at is not None else "",
                             str(int(m.priority)), fixed(m)]
            out = self._script("enqueue", group, now, args, self._register(group))
            for k in range(0, len(out), 2):
                ids[positions[out[k] - 1]] = out[k + 1].decode()
        self._remember((job_id, m.queue) for job_id, m in zip(ids, messages) if job_id == m.id)
        if meanwhile is not None:
            meanwhile()
        return ids

    def _enqueue_chunks(self, queue: str, priority: int, now: float, messages: Sequence[Message],
                        fixed: Callable[[Message], bytes]) -> list[tuple[int, str]]:
        """The usual batch, when large, as one ``enqueue`` script per CHUNK messages, streamed on one
        connection: Redis stores a chunk while Python encodes the next. Each chunk is atomic, the
        batch is not: a connection lost for good part-way leaves the chunks before it stored. Sent
        again (a lost connection, scripts lost by a restart), a chunk creates nothing twice: the ids
        are fixed, and a job that exists is reported, not written. Returns (position, existing id)
        of the messages that did not create a job."""
        keys = (self._keymap(queue), self._base(queue))
        head = ("EVALSHA", SHAS["enqueue"], 2, *keys, self.prefix, _f(now), queue, "u", 1, str(int(priority)))
        register = self._register([queue])

        def commands() -> Iterator[tuple[Any, ...]]:
            yield from register
            for start in range(0, len(messages), CHUNK):
                args: list[Any] = []
                for m in messages[start:start + CHUNK]:
                    args += (m.id, fixed(m))
                yield (*head, *args)

        for attempt in (1, 2):
            replies = self._link.stream(commands())[len(register):]
            errors = [r for r in replies if isinstance(r, ResponseError)]
            if not errors:
                break
            if attempt == 2 or not all(isinstance(r, NoScriptError) for r in errors):
                raise BrokerError(f"Redis at {self._link.where} refused the operation: {errors[0]}")
            self._link.exec("SCRIPT", "LOAD", SCRIPTS["enqueue"])  # then all again: stored chunks stay as they are
        existing: list[tuple[int, str]] = []
        for c, out in enumerate(replies):
            for k in range(0, len(out), 2):
                existing.append((c * CHUNK + out[k] - 1, out[k + 1].decode()))
        return existing

    def fetch(self, queues: Sequence[str], limit: int, lease: float, consumer: str) -> list[Lease]:
        if limit <= 0 or not queues:
            return []
        now = self.clock()
        deadline = now + lease
        out: list[Lease] = []
        due: list[float] = []
        unreadable: list[Outcome] = []
        for group in self._groups(queues):
            reply = self._script("fetch", group, now, [limit - len(out), _f(deadline), consumer])
            if reply[0]:
                due.append(float(reply[0]))
            heads: dict[bytes, tuple[str, int, int, float | None]] = {}  # alike for jobs enqueued together
            for k in range(1, len(reply), 5):
                job_id, token, qi, attempt, m = reply[k:k + 5]
                job_id = job_id.decode()
                head, newline, payload = m.partition(b"\n")
                try:
                    if not newline:
                        raise ValueError("field m has no header line")
                    fields = heads.get(head)
                    if fields is None:
                        fields = heads[head] = _header(head)
                    task, priority, max_attempts, timeout = fields
                except ValueError as exc:
                    log.error("job %s: unreadable record in Redis (%s): failed", job_id, exc)
                    error = {"type": "MalformedMessage", "message": f"unreadable job record in Redis: {exc}"}
                    unreadable.append(Outcome(job_id, token, "failed", error=error, finished_at=now))
                    self._where[job_id] = group[qi - 1]
                    continue
                out.append(Lease(job_id, token, task, group[qi - 1], payload, attempt, max_attempts, timeout,
                                 deadline, priority))
            if len(out) >= limit:
                break
        if unreadable:
            self.ack(unreadable)
        self._next_due = min(due) if due else None
        self._remember((lease.job_id, lease.queue) for lease in out)
        return out

    def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Block on the queues' wake lists (pushed by enqueue, promotion, recovery, hand-back) until
        one is pushed, a scheduled job falls due, or ``timeout``. Never raises: a lost connection
        is logged and the next fetch reports it."""
        if self._next_due is not None:
            timeout = min(timeout, self._next_due - self.clock())
        timeout = min(timeout, 5.0)
        groups = self._groups(queues)
        if timeout < 0.001 or not groups:
            return
        try:
            for group in groups:
                if self._link.exec("BLPOP", *(self._base(q) + ":wake" for q in group), _f(timeout / len(groups))):
                    break
        except BrokerError:  # logged by _error; the next fetch raises
            time.sleep(min(timeout, 1.0))

    def ack(self, outcomes: Sequence[Outcome]) -> list[bool]:
        if not outcomes:
            return []
        for o in outcomes:
            if o.state not in OUTCOME_STATES:
                raise ValueError(f"outcome state must be one of {sorted(OUTCOME_STATES)}, not {o.state!r}")
        now = self.clock()
        accepted = [False] * len(outcomes)
        where, groups = self._by_queue([o.job_id for o in outcomes])
        for group in groups:
            index = {q: i + 1 for i, q in enumerate(group)}
            plain: list[tuple[int, int, Outcome]] = []  # successes with a result and times, no error
            positions: list[int] = []
            args: list[Any] = []
            for pos, o in enumerate(outcomes):
                qi = index.get(where.get(o.job_id, ""))
                if qi is None:
                    continue
                if (o.state == "succeeded" and o.result and o.error is None and o.started_at
                        and o.finished_at is not None):
                    plain.append((pos, qi, o))
                    continue
                positions.append(pos)
                at = o.finished_at or now
                args += [qi, o.job_id, str(o.token), o.state, o.result or b"",
                         orjson.dumps(o.error, default=str) if o.error is not None else "",
                         _f(o.started_at) if o.started_at else "",
                         _f(o.finished_at) if o.finished_at is not None else "",
                         _f(o.run_at) if o.run_at is not None else "", _f(at)]
            times = _floats([t for _, _, o in plain for t in (o.started_at, o.finished_at)])
            head: list[Any] = [len(plain)]
            for k, (_, qi, o) in enumerate(plain):
                head += (qi, o.job_id, str(o.token), o.result, times[2 * k], times[2 * k + 1])
            order = [pos for pos, _, _ in plain] + positions
            for pos, ok in zip(order, self._script("ack", group, now, head + args)):
                accepted[pos] = bool(ok)
        return accepted

    def extend(self, leases: Sequence[tuple[str, int]], lease: float) -> ExtendResult:
        result = ExtendResult()
        if not leases:
            return result
        now = self.clock()
        where, groups = self._by_queue([job_id for job_id, _ in leases])
        result.lost.update(job_id for job_id, _ in leases if job_id not in where)
        for group in groups:
            index = {q: i + 1 for i, q in enumerate(group)}
            chosen = [(j, t) for j, t in leases if index.get(where.get(j, "")) is not None]
            args: list[Any] = [_f(now + lease)]
            for job_id, token in chosen:
                args += [index[where[job_id]], job_id, str(token)]
            for (job_id, _), code in zip(chosen, self._script("extend", group, now, args)):
                if code == 0:
                    result.lost.add(job_id)
                elif code == 2:
                    result.cancel_requested.add(job_id)
        return result

    def mark_started(self, marks: Sequence[tuple[str, int, float]]) -> None:
        if not marks:
            return
        now = self.clock()
        where, groups = self._by_queue([job_id for job_id, _, _ in marks])
        for group in groups:
            index = {q: i + 1 for i, q in enumerate(group)}
            args: list[Any] = []
            for job_id, token, at in marks:
                qi = index.get(where.get(job_id, ""))
                if qi is not None:
                    args += [qi, job_id, str(token), _f(at)]
            self._script("mark", group, now, args)

    def reserved_counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for group in self._groups(self._all_queues(fresh=True)):
            for queue, n in zip(group, self._script("reserved", group, self.clock(), [])):
                if n:
                    found[queue] = int(n)
        return found

    def progress(self, job_id: str, token: int, fraction: float | None, message: str | None) -> bool:
        queue = self._locate([job_id]).get(job_id)
        if queue is None:
            return False
        args = [job_id, str(token), "" if fraction is None else _f(fraction), message or "",
                "0" if message is None else "1"]
        return bool(self._script("progress", [queue], self.clock(), args))

    def recover(self) -> int:
        from ..memory import LOST_LEASE  # here: the worker's children need not import the memory broker

        return self._lose_all("recover", [orjson.dumps(LOST_LEASE), BATCH])

    def release(self, consumer: str, reason: str) -> int:
        return self._lose_all("release", [consumer, orjson.dumps({"type": "WorkerLost", "message": reason})])

    def _lose_all(self, name: str, args: list[Any]) -> int:
        n = 0
        for group in self._groups(self._all_queues(fresh=True)):
            calls = 0
            while True:
                reply = self._script(name, group, self.clock(), args)
                if name == "release":
                    n += reply
                    break
                n += reply[0]
                calls += 1
                # new ids are indexed up to INDEX_CALLS * BATCH per recover (the rest next time)
                if not reply[1] and not (reply[2] and calls < INDEX_CALLS):
                    break
        return n
