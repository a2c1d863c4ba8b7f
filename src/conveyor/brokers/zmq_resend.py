"""How a ``zmq://`` worker's hub resends lost deliveries (see :mod:`~conveyor.brokers.zmq_hub`):
when members ask for work and the buffer is empty, it takes the jobs of their queues that the store
says have been ``queued`` for longer than ``resend_after`` seconds into its own buffer."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from .records import Dispatch, JobQuery
from .zmq_buffer import Buffer, HubOptions

if TYPE_CHECKING:
    from .store import JobStore

__all__ = ["Resending"]

log = logging.getLogger("conveyor.brokers.zmq")

#: A member is hungry for this long after its last unanswered request (seconds).
HUNGRY_FOR = 1.5
#: How often a hungry hub looks for lost deliveries in the store, at most (seconds).
LOOK_EVERY = 1.0
#: Queued jobs read per page when the hub looks for lost deliveries.
STEAL_PAGE = 500


class Resending(Buffer):
    """The hub's buffer, and its look for lost deliveries in the store (run by a thread of the hub)."""

    options: HubOptions
    store: JobStore | None

    def _resend_loop(self) -> None:
        """The resend thread (its store reads never hold up the sockets): once ``resend_after``
        has passed since the start, look once a second for lost deliveries while members are
        hungry (see the module docstring)."""
        assert self.store is not None
        if self._stop.wait(self.options.resend_after):
            return
        try:
            self.store.open()
            while not self._stop.wait(min(LOOK_EVERY, self.options.resend_after)):
                self._resend_once(time.monotonic())
        finally:
            self.store.close()

    def _resend_once(self, now: float) -> None:
        hungry = [q for q, at in list(self._hungry.items()) if now - at < HUNGRY_FOR]
        with self._cond:
            hungry = [q for q in hungry if not self._queues.get(q)]
        if not hungry:
            return
        try:
            found = self._stale_queued(hungry)
        except Exception as exc:  # the store may be down: try again later
            log.warning("could not look for lost zmq:// deliveries: %s", exc)
            return
        n = self.put(found, redelivered=True) if found else 0
        self.counters.resent += n
        if n:
            log.warning("resent %d job(s) queued for over %gs whose delivery was lost", n, self.options.resend_after)

    def _stale_queued(self, queues: list[str]) -> list[Dispatch]:
        """Jobs of ``queues`` queued in the store since over ``resend_after`` seconds ago (at most
        ``buffer`` a look). A job queued since then was created before then, so the store's
        search narrows by creation time and the hand-back time is checked here."""
        assert self.store is not None
        older_than = self.store.clock() - self.options.resend_after
        most = self.options.buffer
        out: list[Dispatch] = []
        paused = self.store.paused_queues()
        for queue in queues:
            if queue in paused:
                continue
            cursor = None
            while len(out) < most:
                page = self.store.search_jobs(JobQuery(state="queued", queue=queue, until=older_than,
                                                       limit=STEAL_PAGE, cursor=cursor))
                out += [Dispatch(r.id, r.queue, r.priority) for r in page.jobs
                        if (r.updated_at or r.created_at) <= older_than]
                if page.cursor is None:
                    break
                cursor = page.cursor
        out.sort(key=lambda d: d.job_id)  # ids are time-ordered: oldest first
        return out[:most]
