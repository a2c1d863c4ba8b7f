"""The pairing hooks of the PostgreSQL store (see :class:`~conveyor.brokers.store.JobStore`), so
that a transport (AMQP, STOMP, ZeroMQ) can carry its jobs.

The outbox is a table filled by the jobs table's triggers once a paired broker turned it on
(``conveyor_turn_outbox_on()``: an insert trigger of its own, and a row in ``conveyor_settings``
for the UPDATE trigger): every path that makes a job ``queued`` (insert, promote, hand back, lost lease,
retry by hand), in any process, marks it in the same transaction. Turning it on creates a trigger,
which takes the TRIGGER privilege on ``conveyor_jobs`` (its owner has it); ``conveyor migrate`` of
a paired application does it too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..records import Dispatch, Lease, live_dispatches

if TYPE_CHECKING:
    from ..records import Clock


class PostgresPairing:
    """Mixed into :class:`~conveyor.brokers.postgres.PostgresBroker`."""

    supports_pairing = True

    if TYPE_CHECKING:
        clock: Clock

        def _exec(self, name: str, params: dict[str, Any] | None = None, *, fetch: str = "all") -> Any: ...

    def use_outbox(self) -> None:
        self._outbox_wanted = True

    def _turn_outbox_on(self) -> None:
        """Called when the store opens (the schema is known to be there by then)."""
        if getattr(self, "_outbox_wanted", False):
            self._exec("outbox_on", fetch="count")

    def claim_jobs(self, jobs: Sequence[Dispatch], lease: float, consumer: str) -> list[Lease]:
        job_ids = [d.job_id for d in jobs]
        if not job_ids:
            return []
        now = self.clock()
        rows = self._exec("claim_ids", {"ids": job_ids, "deadline": now + lease, "consumer": consumer, "now": now})
        found = {r[0]: Lease(*r) for r in rows}
        return [found.pop(j) for j in job_ids if j in found]

    def outbox(self, limit: int = 1000, among: Sequence[Dispatch] | None = None) -> list[Dispatch]:
        if among is None:
            rows = self._exec("outbox", {"limit": limit})
        else:
            rows = self._exec("outbox_of", {"ids": [d.job_id for d in among]})
        live, stale = live_dispatches(rows, limit)
        if stale:  # cancelled or deleted since it was marked: nothing to carry
            self.mark_sent(stale)
        return live

    def resend_queued(self) -> None:
        self._exec("outbox_fill", fetch="count")

    def mark_sent(self, jobs: Sequence[Dispatch]) -> None:
        if jobs:
            self._exec("unmark", {"ids": [d.job_id for d in jobs]}, fetch="count")

    def promote(self, queues: Sequence[str] | None = None) -> int:
        now = self.clock()
        if not self._exec("any_due", {"now": now}):
            return 0
        return int(self._exec("promote", {"now": now}, fetch="count"))
