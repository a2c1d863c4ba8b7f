"""``redis://host:port/db`` (``rediss://`` for TLS): the production broker and job store.

Each queue's keys share one hash tag, ``{prefix:queue}``, so they live on one Redis Cluster slot and
every atomic step is one Lua script (``redis.lua``, loaded once) over one queue's keys. A fetch moves
a batch from the queue's ready lists to its lease set (scored by deadline) and bumps each job's
fencing token; acks, extends and progress carrying a stale token are refused; ``recover`` (run
every second by every worker's supervisor) brings expired leases back and promotes due jobs from
the schedule. Idle consumers block on ``BLPOP`` of per-queue wake lists. Every state change is
published on ``<prefix>:events``. The key layout, for readers in other languages, is in
``docs/brokers/redis.md``.

URL options (query parameters): ``prefix`` (key prefix, default ``conveyor``), ``cluster`` (``1`` to
use Redis Cluster) and redis-py's own (``socket_timeout``, ``socket_connect_timeout``,
``health_check_interval``, ``max_connections``, ...).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict
from itertools import islice
from typing import Any

import orjson
from redis.exceptions import NoScriptError, RedisError, ResponseError

from ..errors import BrokerError, JobNotFound
from . import TERMINAL_STATES, Broker, Clock, ExtendResult, JobPage, JobRecord, Lease, Message, Outcome, WorkerInfo
from ._redis_link import SCRIPTS, SHAS, RedisLink, parse_url

log = logging.getLogger(__name__)

OUTCOME_STATES = frozenset({"succeeded", "failed", "cancelled", "scheduled", "queued"})
LAYOUT = "1"  # the key layout of docs/brokers/redis.md; stored in <prefix>:layout at open()
BATCH = 1000  # jobs per purge / prune / recover script call, so no call blocks Redis for long
INDEX_CALLS = 100  # recover calls at most that one recover() makes to index new ids (BATCH each)
SCAN_BUDGET = 10_000  # index entries list_jobs examines per queue and page when filtering
WHERE_MAX = 200_000  # job id -> queue entries remembered by one broker
# Messages per enqueue script when a large usual batch is streamed (see _enqueue_chunks): small
# enough that Redis starts storing while Python still encodes, large enough that the script's
# fixed cost (~30 us) stays under 0.2 us per job.
CHUNK = 250




def _f(x: float) -> str:
    """A float as the exact decimal string the scripts store and compare."""
    return repr(float(x))


def _num(v: bytes | None) -> float | None:
    try:
        return float(v) if v else None
    except ValueError:
        return None


def _int(v: bytes | None, default: int) -> int:
    try:
        return int(v) if v else default
    except ValueError:
        return default


def _as_dict(reply: Any) -> dict[bytes, bytes]:
    """HGETALL's raw reply (a flat list in RESP2, a map in RESP3) as a dict."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2])) if reply else {}


def _text(v: bytes | None) -> str | None:
    return v.decode() if v else None


def _floats(values: Sequence[Any]) -> list[bytes]:
    """Many floats as the exact decimal strings :func:`_f` gives, in one call (orjson writes the
    shortest round-tripping form too, ten times faster than ``repr`` one by one)."""
    return orjson.dumps(values)[1:-1].split(b",") if values else []


def _header(head: bytes) -> tuple[str, int, int, float | None]:
    """The JSON header line of field m, [task, priority, max_attempts, timeout, created_at,
    enqueued_at] -> (task, priority, max_attempts, timeout). Raises ValueError."""
    try:
        task, priority, max_attempts, timeout = orjson.loads(head)[:4]
        return str(task), int(priority), int(max_attempts), None if timeout is None else float(timeout)
    except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
        raise ValueError(f"bad header line in field m: {exc}") from None


class RedisBroker(Broker):
    """Broker and job store on one Redis server, or on a Redis Cluster with ``?cluster=1``."""

    scheme = "redis"
    supports_blocking_fetch = True
    supports_native_delays = True
    supports_notify = True

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, clock: Clock | None = None) -> None:
        super().__init__(url, clock=clock)
        client_url, options = parse_url(url)
        self.prefix = options["prefix"]
        self.cluster = options.get("cluster", "").lower() in ("1", "true", "yes")
        self._link = RedisLink(client_url, self.cluster, options.get("sentinel_password"))
        self._lock = threading.Lock()
        self._where: dict[str, str] = {}  # job id -> queue, for jobs this broker enqueued or leased
        self._queues: tuple[float, list[str]] = (0.0, [])
        self._registered: dict[str, float] = {}  # queue -> when this broker last listed it
        self._next_due: float | None = None

    # -- connection --------------------------------------------------------------------------
    def open(self) -> None:
        """Connect, load the scripts, check the server's durability settings and the key layout: a
        prefix written by a Conveyor with another layout is refused, not read wrongly."""
        self._link.open()
        key = self.prefix + ":layout"
        found = self._link.exec("GET", key)
        if found is None:  # a new prefix (or one of before the layout had a number: the same layout)
            try:
                self._link.exec("SET", key, LAYOUT, "NX")
            except BrokerError as exc:
                if "no permissions" not in str(exc):  # a user who may only read (NOPERM): nothing to write
                    raise
            found = self._link.exec("GET", key) or LAYOUT.encode()
        if found != LAYOUT.encode():
            layout = found.decode(errors="replace") if found else "(none)"
            raise BrokerError(f"Redis at {self._link.where} holds Conveyor data of key layout {layout} under prefix "
                              f"{self.prefix!r}; this Conveyor reads layout {LAYOUT}: finish those jobs with the "
                              f"Conveyor that wrote them, or use another prefix")

    def close(self) -> None:
        self._link.close()


    # -- helpers -----------------------------------------------------------------------------
    def _base(self, queue: str) -> str:
        return "{" + self.prefix + ":" + queue + "}"

    def _keymap(self, queue: str) -> str:
        # Unique keys are global on one server; on a cluster each queue keeps its own (one slot).
        return self._base(queue) + ":keys" if self.cluster else self.prefix + ":keys"

    def _groups(self, queues: Sequence[str]) -> list[list[str]]:
        """Queues one script call may cover: all of them on one server, one each on a cluster."""
        unique = list(dict.fromkeys(queues))
        if self.cluster:
            return [[q] for q in unique]
        return [unique[i:i + 100] for i in range(0, len(unique), 100)]

    def _script(self, name: str, queues: Sequence[str], now: float, args: Sequence[Any],
                pipe_before: Sequence[tuple[Any, ...]] = ()) -> Any:
        """Run a script over ``queues`` (one slot on a cluster), after ``pipe_before`` commands sent
        in the same round trip."""
        keys = [self._keymap(queues[0]), *(self._base(q) for q in queues)]
        return self._link.script(name, keys, (self.prefix, _f(now), *queues, *args), pipe_before)


    def _register(self, queues: Sequence[str]) -> list[tuple[Any, ...]]:
        """The SADD that lists new queues in <prefix>:queues (sent again now and then, in case the set
        was deleted), to go in the same round trip as the enqueue."""
        at = time.monotonic()
        new = [q for q in queues if at - self._registered.get(q, -1e9) > 60.0]
        if not new:
            return []
        self._registered.update(dict.fromkeys(new, at))
        return [("SADD", self.prefix + ":queues", *new)]

    def _remember(self, pairs: Iterable[tuple[str, str]]) -> None:
        where = self._where
        where.update(pairs)
        if len(where) > WHERE_MAX:
            with self._lock:
                for job_id in list(islice(where, len(where) - WHERE_MAX // 2)):
                    where.pop(job_id, None)

    def _all_queues(self, fresh: bool = False) -> list[str]:
        at, known = self._queues
        if fresh or time.monotonic() - at > 5.0:
            known = sorted(n.decode() for n in self._link.exec("SMEMBERS", self.prefix + ":queues"))
            self._queues = (time.monotonic(), known)
        return known

    def _records(self, job_ids: Sequence[str]) -> list[tuple[str, dict[bytes, bytes]] | None]:
        """(queue, hash) of each job: HGETALL in the queue we know it is in, else in every queue
        (one pipelined round trip; again with a fresh list of queues for the ones not found)."""
        out: list[tuple[str, dict[bytes, bytes]] | None] = [None] * len(job_ids)
        todo = {i: [self._where[j]] if j in self._where else None for i, j in enumerate(job_ids)}
        for _ in (1, 2):
            queues = self._all_queues()
            plan = [(i, q) for i, known in todo.items() for q in (known or queues)]
            if not plan:
                break
            replies = self._link.many([("HGETALL", self._base(q) + ":j:" + job_ids[i]) for i, q in plan])
            for (i, queue), h in zip(plan, map(_as_dict, replies)):
                if h and b"state" in h and out[i] is None:
                    out[i] = (queue, h)
                    self._where[job_ids[i]] = queue
            # not found: look in every queue once more (the queue list may be newer than ours)
            todo = {i: known for i, known in todo.items() if out[i] is None}
            if todo:
                latest = self._all_queues(fresh=True)
                todo = {i: None for i, known in todo.items() if known is not None or latest != queues}
        return out

    def _locate(self, job_ids: Sequence[str]) -> dict[str, str]:
        """The queue of each job that exists (from memory, else asked of Redis)."""
        found = {j: self._where[j] for j in job_ids if j in self._where}
        unknown = [j for j in dict.fromkeys(job_ids) if j not in found]
        if unknown:
            for job_id, got in zip(unknown, self._records(unknown)):
                if got is not None:
                    found[job_id] = got[0]
        return found

    def _by_queue(self, job_ids: Sequence[str]) -> tuple[dict[str, str], list[list[str]]]:
        where = self._locate(job_ids)
        return where, self._groups([where[j] for j in job_ids if j in where])

    # -- moving jobs -------------------------------------------------------------------------
    def enqueue(self, messages: Sequence[Message]) -> list[str]:
        if not messages:
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
                             self._register([m.queue]))
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
        from .memory import LOST_LEASE  # here: the worker's children need not import the memory broker

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

    # -- control -----------------------------------------------------------------------------
    def _one(self, name: str, job_id: str) -> tuple[str, Any]:
        queue = self._locate([job_id]).get(job_id)
        if queue is None:
            return "", None
        return queue, self._script(name, [queue], self.clock(), [job_id])

    def cancel(self, job_id: str) -> str:
        _, state = self._one("cancel", job_id)
        if not state:
            raise JobNotFound(job_id)
        return str(state.decode())

    def retry(self, job_id: str) -> str:
        _, reply = self._one("retry", job_id)
        verdict = reply.decode() if reply else ""
        if not verdict:
            raise JobNotFound(job_id)
        if verdict == "key":
            raise ValueError(f"job {job_id}: another active job holds the same key")
        if verdict.startswith("state:"):
            raise ValueError(f"job {job_id} is {verdict[6:]}; only failed or cancelled jobs can be retried")
        return verdict

    def delete(self, job_id: str) -> bool:
        _, n = self._one("delete", job_id)
        return bool(n)

    def _flags(self, commands: Sequence[tuple[Any, ...]]) -> None:
        self._link.many(commands, atomic=True)

    def pause(self, queue: str) -> None:
        self._flags([("SADD", self.prefix + ":paused", queue), ("SET", self._base(queue) + ":paused", "1")])

    def resume(self, queue: str) -> None:
        wake = self._base(queue) + ":wake"
        self._flags([("SREM", self.prefix + ":paused", queue), ("DEL", self._base(queue) + ":paused"),
                     ("RPUSH", wake, "1"), ("LTRIM", wake, 0, 15)])

    def purge(self, queue: str | None, states: Iterable[str] = ("queued", "scheduled")) -> int:
        wanted = [s for s in dict.fromkeys(states) if s != "running"]
        if not wanted:
            return 0
        n = 0
        for name in [queue] if queue is not None else self._all_queues(fresh=True):
            while True:
                deleted, more = self._script("purge", [name], self.clock(), [BATCH, *wanted])
                n += deleted
                if not more:
                    break
        return n

    def prune(self, older_than: float) -> int:
        now = self.clock()
        n = 0
        for name in self._all_queues(fresh=True):
            while True:
                deleted, more = self._script("prune", [name], now, [_f(now - older_than), BATCH])
                n += deleted
                if not more:
                    break
        quiet = now - max(older_than, 3600.0)  # as the other stores: forget long-silent workers
        r = self._link.client()
        try:
            gone = r.zrangebyscore(self.prefix + ":seen", "-inf", f"({_f(quiet)}")
            if gone:
                self._flags([("HDEL", self.prefix + ":workers", *gone), ("ZREM", self.prefix + ":seen", *gone)])
        except RedisError as exc:
            raise self._link.error(exc) from None
        return n

    # -- store queries -----------------------------------------------------------------------
    @staticmethod
    def _record(job_id: str, queue: str, h: dict[bytes, bytes]) -> JobRecord:
        head, _, payload = (h.get(b"m") or b"").partition(b"\n")
        try:
            task, priority, max_attempts, timeout, created_at, enqueued_at = orjson.loads(head)
            priority, max_attempts, created_at = int(priority), int(max_attempts), float(created_at)
            timeout = None if timeout is None else float(timeout)
        except (orjson.JSONDecodeError, TypeError, ValueError):  # a record written by hand: shown as it is
            task, priority, max_attempts, timeout, created_at, enqueued_at = "", 0, 1, None, 0.0, None
            payload = h.get(b"m") or b""
        error, history = h.get(b"error"), h.get(b"history")
        message = h.get(b"progress_message")
        return JobRecord(
            id=job_id, task=str(task), queue=queue, state=h[b"state"].decode(), payload=payload,
            priority=priority, key=_text(h.get(b"key")), attempts=_int(h.get(b"attempts"), 0),
            max_attempts=max_attempts, timeout=timeout, created_at=created_at,
            run_at=_num(h.get(b"run_at")) or enqueued_at, started_at=_num(h.get(b"started_at")),
            finished_at=_num(h.get(b"finished_at")), updated_at=_num(h.get(b"updated_at")) or enqueued_at,
            lease_until=_num(h.get(b"lease_until")), token=_int(h.get(b"token"), 0),
            consumer=_text(h.get(b"consumer")), cancel_requested=h.get(b"cancel_requested") == b"1",
            progress=_num(h.get(b"progress")), progress_message=None if message is None else message.decode(),
            result=h.get(b"result") or None, error=orjson.loads(error) if error else None,
            history=orjson.loads(history) if history else [],
        )

    def get(self, job_id: str) -> JobRecord | None:
        return self.get_many([job_id])[0]

    def wait_for(self, job_id: str, timeout: float | None) -> JobRecord | None:
        """Block until the job ends, told by the script that ends it: the waiter is counted in
        ``{P:Q}:waiters`` and blocks on ``{P:Q}:w:<id>``, where that script pushes a token. It looks
        at the job again at least every second, so a token lost (a Redis restart) costs a second."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            queue = self._locate([job_id]).get(job_id)
            if queue is None:
                return None
            state = self._script("watch", [queue], self.clock(), [job_id, "1"]).decode()
            left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if state in TERMINAL_STATES or not state:
                return self.get(job_id)
            woken = left >= 0.001 and self._link.exec("BLPOP", self._base(queue) + ":w:" + job_id, _f(left))
            if not woken:
                self._script("watch", [queue], self.clock(), [job_id, "-1"])
            record = self.get(job_id)
            if record is None or record.state in TERMINAL_STATES:
                return record
            if deadline is not None and time.monotonic() >= deadline:
                return record

    def get_many(self, job_ids: Sequence[str]) -> list[JobRecord | None]:
        return [None if got is None else self._record(job_id, *got)
                for job_id, got in zip(job_ids, self._records(job_ids))]

    def list_jobs(self, *, state: str | None = None, queue: str | None = None, task: str | None = None,
                  limit: int = 50, cursor: str | None = None) -> JobPage:
        if limit <= 0:
            return JobPage([], None)
        which = "leases" if state == "running" else f"s:{state}" if state in ("failed", "cancelled") else "ids"
        found: list[tuple[str, str]] = []
        floor: str | None = None  # a queue whose scan ran out of budget was examined down to here
        for name in [queue] if queue is not None else self._all_queues(fresh=True):
            reply = self._script("page", [name], self.clock(),
                                 [which, cursor or "", limit, state or "", task or "", SCAN_BUDGET])
            ids = [i.decode() for i in reply[1:]]
            if which == "leases":
                ids = sorted((i for i in ids if cursor is None or i < cursor), reverse=True)[:limit + 1]
            found += [(i, name) for i in ids]
            if reply[0]:
                stop = reply[0].decode()
                floor = stop if floor is None else max(floor, stop)
        found.sort(reverse=True)
        if floor is not None:
            found = [f for f in found if f[0] >= floor]
        page = found[:limit]
        self._remember(page)
        records = [r for r in self.get_many([i for i, _ in page]) if r is not None]
        more = len(found) > limit
        return JobPage(records, page[-1][0] if more and page else floor)

    def counts(self) -> dict[str, dict[str, int]]:
        queues = self._all_queues(fresh=True)
        replies = self._link.many([("HGETALL", self._base(name) + ":counts") for name in queues]) if queues else []
        out: dict[str, dict[str, int]] = {}
        for name, h in zip(queues, map(_as_dict, replies)):
            per = {k.decode(): int(v) for k, v in h.items() if int(v) > 0}
            if per:
                out[name] = per
        return out

    def paused_queues(self) -> set[str]:
        return {n.decode() for n in self._link.exec("SMEMBERS", self.prefix + ":paused")}

    def heartbeat(self, worker: WorkerInfo) -> None:
        now = self.clock()
        info = orjson.dumps(asdict(worker) | {"last_seen": now})
        self._flags([("HSET", self.prefix + ":workers", worker.id, info),
                     ("ZADD", self.prefix + ":seen", _f(now), worker.id)])

    def unregister(self, worker_id: str) -> None:
        self._flags([("HDEL", self.prefix + ":workers", worker_id), ("ZREM", self.prefix + ":seen", worker_id)])

    def workers(self, max_age: float = 60.0) -> list[WorkerInfo]:
        r = self._link.client()
        try:
            ids = r.zrangebyscore(self.prefix + ":seen", _f(self.clock() - max_age), "+inf")
            infos = r.hmget(self.prefix + ":workers", ids) if ids else []
        except RedisError as exc:
            raise self._link.error(exc) from None
        return [WorkerInfo(**orjson.loads(info)) for info in infos if info]

    def drop(self) -> int:
        """Delete every key under this broker's prefix: all its jobs, queues and workers (tests,
        tear-down). Returns how many keys were deleted."""
        r = self._link.client()
        n = 0
        try:
            for pattern in (f"{self.prefix}:*", f"{{{self.prefix}:*"):
                keys = list(r.scan_iter(match=pattern, count=1000))
                if self.cluster:  # one key at a time: a multi-key DEL must stay within one slot
                    n += sum(r.delete(k) for k in keys)
                else:
                    n += sum(r.delete(*keys[i:i + 500]) for i in range(0, len(keys), 500))
        except RedisError as exc:
            raise self._link.error(exc) from None
        return n

    # -- events ------------------------------------------------------------------------------
    def events(self, poll: float = 1.0) -> Iterator[dict[str, Any]]:
        """Every state change, as published: ``{"queue", "state", "at", "ids"}`` (``state`` is
        ``deleted`` for removed jobs). Runs until the caller stops iterating."""
        pubsub = self._link.client().pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.prefix + ":events")
            while True:
                message = pubsub.get_message(timeout=poll)
                if message is not None and message.get("type") == "message":
                    yield orjson.loads(message["data"])
        except RedisError as exc:
            raise self._link.error(exc) from None
        finally:
            pubsub.close()
