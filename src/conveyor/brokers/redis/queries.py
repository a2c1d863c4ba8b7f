"""The Redis store's queries: jobs, counts, paused queues, workers."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import asdict

import orjson
from redis.exceptions import RedisError

from .. import TERMINAL_STATES, JobPage, JobRecord, WorkerInfo
from .base import RedisBase
from .codec import _as_dict, _f, record

SCAN_BUDGET = 10_000  # index entries list_jobs examines per queue and page when filtering


class RedisQueries(RedisBase):
    """What the dashboard, the CLI and ``Job`` read."""

    # -- store queries -----------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord | None:
        return self.get_many([job_id])[0]

    def wait_for(self, job_id: str, timeout: float | None) -> JobRecord | None:
        """Block until the job ends, told by the script that ends it: the waiter is counted in
        ``{P:Q}:waiters`` and blocks on ``{P:Q}:w:<id>``, where that script pushes a token. It looks
        at the job again at least every second, so a token lost (a Redis restart) costs a second.

        One round trip a look: the ``watch`` script, BLPOP and HGETALL are pipelined, and Redis runs
        each as soon as the one before returns (a blocked client's next commands wait for it). When
        the job has already ended, the script pushes a token to the waiter's own key, which the
        BLPOP also waits on: it returns at once."""
        deadline = None if timeout is None else time.monotonic() + timeout
        mine = secrets.token_hex(6)
        while True:
            queue = self._locate([job_id]).get(job_id)
            left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if queue is None or left < 0.001:
                return None if queue is None else self.get(job_id)
            base = self._base(queue)
            wake, key = base + ":w:" + job_id, base + ":j:" + job_id
            state, woken, found = self._script("watch", [queue], self.clock(), [job_id, "1", mine],
                                               then=[("BLPOP", wake, f"{wake}:{mine}", _f(left)), ("HGETALL", key)])
            ended = state.decode() in TERMINAL_STATES or not state
            if not woken and not ended:
                self._script("watch", [queue], self.clock(), [job_id, "-1"])
            h = _as_dict(found) if woken else {}
            got = record(job_id, queue, h) if b"state" in h else self.get(job_id)
            if got is None or got.state in TERMINAL_STATES:
                return got
            if deadline is not None and time.monotonic() >= deadline:
                return got

    def get_many(self, job_ids: Sequence[str]) -> list[JobRecord | None]:
        return [None if got is None else record(job_id, *got)
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
                     ("ZADD", self.prefix + ":seen", _f(now), worker.id),
                     self._feed_entry(w=worker.id, s="seen", t=_f(now))])

    def unregister(self, worker_id: str) -> None:
        self._flags([("HDEL", self.prefix + ":workers", worker_id), ("ZREM", self.prefix + ":seen", worker_id),
                     self._feed_entry(w=worker_id, s="gone", t=_f(self.clock()))])

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
