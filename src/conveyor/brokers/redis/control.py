"""Operator control on Redis: cancel, retry, delete, pause, resume, purge and prune."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from redis.exceptions import RedisError

from ...errors import JobNotFound
from .base import RedisBase
from .codec import _f
from .lifecycle import BATCH


class RedisControl(RedisBase):
    """What an operator does to jobs and queues (the CLI, the dashboard, the HTTP API)."""

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

    def pause(self, queue: str) -> None:
        self._flags([("SADD", self.prefix + ":paused", queue), ("SET", self._base(queue) + ":paused", "1"),
                     self._feed_entry(q=queue, p="1", t=_f(self.clock()))])

    def resume(self, queue: str) -> None:
        wake = self._base(queue) + ":wake"
        self._flags([("SREM", self.prefix + ":paused", queue), ("DEL", self._base(queue) + ":paused"),
                     ("RPUSH", wake, "1"), ("LTRIM", wake, 0, 15),
                     self._feed_entry(q=queue, p="0", t=_f(self.clock()))])

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
                self._flags([("HDEL", self.prefix + ":workers", *gone), ("ZREM", self.prefix + ":seen", *gone),
                             *(self._feed_entry(w=w.decode(), s="gone", t=_f(now)) for w in gone)])
        except RedisError as exc:
            raise self._link.error(exc) from None
        return n
