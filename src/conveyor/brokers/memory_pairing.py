"""The pairing hooks of the memory store (see :class:`~conveyor.brokers.store.JobStore`): claim
delivered jobs by id, and the outbox. Once a memory store keeps an outbox, a job that becomes
``queued`` goes there instead of the ready heap (a transport carries it, not ``fetch``)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .records import Dispatch, JobRecord, Lease

if TYPE_CHECKING:
    from .records import Clock


class MemoryPairing:
    """Mixed into :class:`~conveyor.brokers.memory.MemoryBroker`."""

    supports_pairing = True

    if TYPE_CHECKING:
        clock: Clock
        _lock: threading.Condition
        _jobs: dict[str, JobRecord]
        _seq: dict[str, int]
        _ready: dict[str, list[tuple[int, int, str]]]
        _paused: set[str]
        _outbox: dict[str, None] | None

        def _lease(self, job: JobRecord, now: float, lease: float, consumer: str) -> Lease: ...
        def _promote(self, now: float) -> int: ...

    def claim_jobs(self, jobs: Sequence[Dispatch], lease: float, consumer: str) -> list[Lease]:
        now = self.clock()
        with self._lock:
            found = [self._jobs.get(d.job_id) for d in jobs]
            return [self._lease(job, now, lease, consumer) for job in found
                    if job is not None and job.state == "queued" and job.queue not in self._paused]

    def use_outbox(self) -> None:
        with self._lock:
            if self._outbox is None:
                self._outbox, self._ready = {}, {}
                self.resend_queued()

    def resend_queued(self) -> None:
        with self._lock:
            for job in sorted(self._jobs.values(), key=lambda j: self._seq[j.id]):
                if job.state == "queued" and self._outbox is not None:
                    self._outbox[job.id] = None

    def outbox(self, limit: int = 1000, among: Sequence[Dispatch] | None = None) -> list[Dispatch]:
        out: list[Dispatch] = []
        with self._lock:
            marked = self._outbox or {}
            for job_id in list(marked) if among is None else [d.job_id for d in among if d.job_id in marked]:
                job = self._jobs.get(job_id)
                if job is None or job.state != "queued":
                    marked.pop(job_id, None)  # cancelled or deleted since: nothing to carry
                elif len(out) < limit:
                    out.append(Dispatch(job.id, job.queue, job.priority, self._seq[job.id]))
        return out

    def mark_sent(self, jobs: Sequence[Dispatch]) -> None:
        with self._lock:
            marked = self._outbox or {}
            for d in jobs:
                marked.pop(d.job_id, None)

    def promote(self, queues: Sequence[str] | None = None) -> int:
        with self._lock:
            return self._promote(self.clock())
