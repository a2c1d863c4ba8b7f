"""Fair dispatch: how much work one consumer may hold ahead of what it is running.

A consumer leases jobs in batches so that short jobs cost one round trip per batch, not per job.
A batch must never hold a job that an idle sibling could start now, so a consumer keeps about
:data:`FETCH_AHEAD` seconds of work ahead, judged from run times it has measured:

* per task and per queue, an estimate that **rises at once** to any longer run (a slow job
  shrinks the next fetch to one job immediately) and decays slowly as shorter runs follow;
* a fetched batch is cut where the estimated work ahead passes :data:`FETCH_AHEAD`, and the
  rest is handed back at once, uncounted;
* while a job runs longer than :data:`FETCH_AHEAD`, the heartbeat thread hands back the jobs
  still waiting behind it (see ``Runner.shed``), so a surprise slow job holds nobody else up.

This is what Celery's ``-O fair`` and Sidekiq's one-job-per-thread fetch give, without giving up
batched fetches for short jobs.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..brokers import Lease

__all__ = ["DECAY", "FETCH_AHEAD", "RunTimes"]

#: Seconds of estimated work a consumer leases ahead of the job it runs.
FETCH_AHEAD = 0.1
#: Weight of the old estimate when a shorter run is recorded (rises are taken at once).
DECAY = 0.8


class RunTimes:
    """Run-time estimates of one consumer, per task and per queue (seconds)."""

    __slots__ = ("by_queue", "by_task")

    def __init__(self) -> None:
        self.by_task: dict[str, float] = {}
        self.by_queue: dict[str, float] = {}

    def record(self, task: str, queue: str, seconds: float) -> None:
        """A job of ``task`` in ``queue`` ran for ``seconds`` (or has run that long so far)."""
        for table, name in ((self.by_task, task), (self.by_queue, queue)):
            old = table.get(name)
            table[name] = seconds if old is None or seconds >= old else DECAY * old + (1 - DECAY) * seconds

    def fetch_size(self, queues: Sequence[str], prefetch: int) -> int:
        """How many jobs to lease next from ``queues``: one until a run time was measured there,
        then about :data:`FETCH_AHEAD` seconds of work at the slowest queue's pace, at most
        ``prefetch``."""
        known = [self.by_queue[q] for q in queues if q in self.by_queue]
        if not known:
            return 1
        slowest = max(known)
        if slowest <= 0:
            return prefetch
        return max(1, min(prefetch, int(FETCH_AHEAD / slowest)))

    def estimate(self, lease: Lease) -> float:
        """Expected run time of a leased job: its task's, else a whole :data:`FETCH_AHEAD` (a task
        this consumer never ran ends the batch: it may be slow)."""
        return self.by_task.get(lease.task, FETCH_AHEAD)

    def cut(self, leases: Sequence[Lease]) -> int:
        """How many of a fetched batch to keep: the first always, then while the work estimated
        ahead of the next job stays under :data:`FETCH_AHEAD`."""
        ahead = 0.0
        for i, lease in enumerate(leases):
            if i and ahead >= FETCH_AHEAD:
                return i
            ahead += self.estimate(lease)
        return len(leases)
