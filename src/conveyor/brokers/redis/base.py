"""What every part of the Redis broker shares: the URL, the connection, the key names of a queue,
the script call, and where each known job lives."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from typing import Any

from ...errors import BrokerError
from .. import Broker, Clock
from .codec import _as_dict, _f
from .link import RedisLink, parse_url

LAYOUT = "1"  # the key layout of docs/brokers/redis.md; stored in <prefix>:layout at open()
WHERE_MAX = 200_000  # job id -> queue entries remembered by one broker
FEED_KEEP = 5_000  # entries the change feed keeps, about (as FEED_KEEP in lua/prelude.lua)


class RedisBase(Broker):
    """The state and helpers the lifecycle, control and query parts of
    :class:`~conveyor.brokers.redis.RedisBroker` share."""

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
                pipe_before: Sequence[tuple[Any, ...]] = (), meanwhile: Callable[[], None] | None = None,
                then: Sequence[tuple[Any, ...]] = ()) -> Any:
        """Run a script over ``queues`` (one slot on a cluster), after ``pipe_before`` commands sent
        in the same round trip, and before ``then`` commands; ``meanwhile`` runs while it is on its
        way (see ``RedisLink.script``)."""
        keys = [self._keymap(queues[0]), *(self._base(q) for q in queues)]
        return self._link.script(name, keys, (self.prefix, _f(now), *queues, *args), pipe_before, meanwhile, then)


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

    def _flags(self, commands: Sequence[tuple[Any, ...]]) -> None:
        self._link.many(commands, atomic=True)

    def _feed_entry(self, **fields: str) -> tuple[Any, ...]:
        """The XADD of one entry of queue or worker changes, to go with the change it tells."""
        flat = [x for pair in fields.items() for x in pair]
        return ("XADD", self.prefix + ":feed", "MAXLEN", "~", FEED_KEEP, "*", *flat)
