"""``PairedBroker``: a broker made of a transport (which moves deliveries) and a job store.

The store is the truth: every job, attempt, lease and outcome is written there, fenced exactly as
a store that claims natively would do it. The transport only carries job ids:

* **enqueue** writes the records, then sends them. The store keeps an *outbox*: every job that
  becomes ``queued`` (enqueued, due, handed back, recovered, retried by hand — by any process) is
  marked until a send of it succeeded. What is still marked is sent again by maintenance
  (``recover``), so nothing is lost between the write and the send.
* **fetch** receives deliveries and claims each one in the store (:meth:`JobStore.claim_jobs`).
  Duplicates, and deliveries of cancelled, deleted or already leased jobs, are settled and dropped.
  A claimed delivery is held until its outcome.
* **ack** writes the outcomes, then settles the held deliveries; a job handed back unstarted is
  requeued in the transport instead, so it keeps its place where the transport can.
* Everything else (control, queries, heartbeats) goes to the store.

A delivery may also carry a *job message* published by a client in another language (see
:mod:`~conveyor.brokers.wire`): ``fetch`` first adds that job to the store, then claims it as any
other (it is unmarked from the outbox, so it is not sent a second time). A body that does not fit
the format is recorded as a ``failed`` job with the reason, and its delivery settled.

Delays wait in the store's schedule, never in the transport; ``fetch`` and ``recover`` move due
jobs to the queue, and so into the outbox.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from ..errors import BrokerError, ConfigError
from .paired_queries import PairedQueries
from .records import (
    Check,
    Dispatch,
    ExtendResult,
    Lease,
    Message,
    Outcome,
)
from .store import Broker, JobStore
from .transport import Delivery, Transport
from .wire import MAX_PAYLOAD, WireError, failed_message, job_message

__all__ = ["PairedBroker"]

log = logging.getLogger(__name__)

#: Capabilities a paired broker takes from its transport.
_TRANSPORT_FLAGS = ("supports_blocking_fetch", "supports_priorities")
#: Most outbox entries one maintenance pass sends.
OUTBOX_BATCH = 1000
#: Seconds a fetch trusts the paused queues it read last (a pause made through this broker is seen
#: at once; one made elsewhere within this time: deliveries of the queue are handed back at claim).
PAUSED_FOR = 1.0
#: Store-clock seconds between two promotions of due jobs by fetch (maintenance promotes too).
PROMOTE_EVERY = 0.05
#: With a store that sends before the write is confirmed (``sends_before_written``), how long a
#: claim of a young job the store does not have yet is tried again (seconds), and how young (by the
#: time in its UUIDv7 id) a job must be for that; an older one was deleted, and is dropped at once.
WRITE_WAIT = 0.05
YOUNG_FOR = 10.0


class PairedBroker(PairedQueries, Broker):
    """The broker facade over ``transport`` and ``store`` (see the module docstring).

    Args:
        transport: carries deliveries; it keeps no job history.
        store: the job database; it must support pairing (``supports_pairing``).
        max_payload: the largest job message (body bytes) a client may publish; a larger one is
            recorded as ``failed`` (``PayloadTooLarge``).
    """

    supports_native_delays = False
    supports_notify = False
    supports_transactions = False

    def __init__(self, transport: Transport, store: JobStore, max_payload: int = MAX_PAYLOAD) -> None:
        if isinstance(store, PairedBroker) or not store.supports_pairing:
            raise ConfigError(f"the {store.scheme}:// store cannot be paired with a transport")
        super().__init__(transport.url, clock=store.clock)
        self.transport = transport
        self._store = store
        self.scheme = transport.scheme
        for name in _TRANSPORT_FLAGS:
            setattr(self, name, getattr(transport, name))
        self.shared_between_processes = transport.shared_between_processes and store.shared_between_processes
        self.supports_search = store.supports_search
        self.supports_start_marks = store.supports_start_marks
        store.use_outbox()
        self._lock = threading.Lock()
        self._held: dict[tuple[str, int], tuple[Delivery, str]] = {}  # (job id, token) -> (delivery, consumer)
        self._stash: list[Delivery] = []  # received by wait(), claimed by the next fetch()
        self.max_payload = max_payload
        self._paused: tuple[float, set[str]] = (-PAUSED_FOR, set())  # (read at, paused queues)
        self._promoted = float("-inf")  # store clock of the last promotion by fetch
        self._refused: dict[str, dict[str, Any]] = {}  # job id -> error: job messages to record as failed

    def __repr__(self) -> str:
        return f"<PairedBroker {self.transport.scheme}:// + {self._store.scheme}://>"

    @property
    def store(self) -> JobStore:
        """The job store (what the web app, the CLI and ``Job`` read)."""
        return self._store

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> None:
        """Connect both; with a transport whose deliveries died with the last process (memory),
        every queued job is sent again (duplicates of live deliveries are dropped at claim)."""
        self._store.open()
        self.transport.open()
        if not self.transport.durable:
            self._store.resend_queued()
            self._send()

    def close(self) -> None:
        with self._lock:
            stash, self._stash = self._stash, []
        try:
            if stash:
                self.transport.requeue(stash)
        finally:
            self.transport.close()
            self._store.close()

    def fork(self) -> PairedBroker:
        return PairedBroker(self.transport.fork(), self._store.fork(), self.max_payload)

    def enqueue_within(self, connection: Any, messages: Sequence[Message]) -> list[str]:
        """Refused: the transport's send cannot join the caller's transaction."""
        raise ConfigError(
            f"enqueue(connection=...) is not supported through a transport ({self.transport.scheme}:// + "
            f"{self._store.scheme}://store): the delivery is sent outside your transaction. Enqueue "
            f"inside a transaction with the store alone as the app's broker")

    def job_transaction(self, job_id: str, token: int) -> Any:
        """The store's: the lease and the outcome live there (the delivery settles at the ack)."""
        return self._store.job_transaction(job_id, token)

    def migrate(self) -> str:
        return self._store.migrate()

    def diagnose(self) -> list[Check]:
        """The store's findings, then the transport's."""
        return [*self._store.diagnose(), *self.transport.diagnose()]

    # -- the outbox --------------------------------------------------------------------------
    def _send(self) -> int:
        """Send what the store's outbox holds; how many. A failed send is logged, not raised: the
        outbox keeps the jobs for maintenance."""
        sent = 0
        while True:
            dispatches = self._store.outbox(OUTBOX_BATCH)
            if not dispatches or not self._carry(dispatches):
                return sent
            sent += len(dispatches)
            if len(dispatches) < OUTBOX_BATCH:
                return sent

    def _carry(self, dispatches: list[Dispatch]) -> bool:
        """Send marked jobs, then unmark them; False (logged) when the send failed."""
        if not self._send_now(dispatches):
            return False
        self._store.mark_sent(dispatches)
        return True

    def _send_now(self, dispatches: list[Dispatch]) -> bool:  # False (logged) when the send failed
        try:
            self.transport.send(dispatches)
        except BrokerError as exc:
            log.warning("%d job(s) written but not sent (%s); the outbox sends them again", len(dispatches), exc)
            return False
        return True

    # -- moving jobs -------------------------------------------------------------------------
    def enqueue(self, messages: Sequence[Message]) -> list[str]:
        """Write the jobs (marked in the outbox), send the new ones due now, then unmark them.

        The send does not read the outbox first: the jobs were written marked a moment ago, so
        reading them back would only add a store round trip to every enqueue's latency. What a
        concurrent maintenance pass sends too, or what was cancelled meanwhile, is a duplicate or
        a dead delivery, dropped at claim. A failed send leaves the marks for maintenance.
        Messages without a unique key make the jobs of their own ids, so their send need not wait
        for the write's answer: the store may send while the write is on its way
        (``JobStore.enqueue_sending``); the unmark still waits for the write."""
        now = self.clock()
        if messages and all(m.key is None for m in messages):
            due = list({m.id: Dispatch(m.id, m.queue, m.priority) for m in messages
                        if m.run_at is None or m.run_at <= now}.values())
            if due:
                sent: list[bool] = []
                ids = self._store.enqueue_sending(messages, lambda: sent.append(self._send_now(due)))
                if sent and sent[0]:
                    self._store.mark_sent(due)
                else:
                    self._store.keep_unsent(due)  # left to maintenance, as any unsent job
                return ids
        ids = self._store.enqueue(messages)
        fresh = list({m.id: Dispatch(m.id, m.queue, m.priority) for m, job_id in zip(messages, ids)
                      if job_id == m.id and (m.run_at is None or m.run_at <= now)}.values())
        if fresh and not self._carry(fresh):
            self._store.keep_unsent(fresh)  # left to maintenance, as any unsent job
        return ids

    def fetch(self, queues: Sequence[str], limit: int, lease: float, consumer: str) -> list[Lease]:
        if limit <= 0:
            return []
        wanted = [q for q in queues if q not in self._paused_queues()]
        if not wanted:
            return []
        now = self.clock()
        if not 0 <= now - self._promoted < PROMOTE_EVERY:
            self._promoted = now
            if self._store.promote(wanted):
                self._send()
        with self._lock:
            taken = [d for d in self._stash if d.queue in wanted][:limit]
            self._stash = [d for d in self._stash if d not in taken]
        deliveries = taken + self.transport.receive(wanted, limit - len(taken), 0.0)
        leases: list[Lease] = []
        while deliveries:  # dropped deliveries (duplicates, cancelled jobs) make room for more
            leases += self._claim(self._import(deliveries), lease, consumer)
            if len(leases) >= limit:
                break
            deliveries = self.transport.receive(wanted, limit - len(leases), 0.0)
        return leases

    def _import(self, deliveries: list[Delivery]) -> list[Delivery]:
        """Add the job messages among ``deliveries`` to the store; each becomes a delivery of its
        job (keeping its body: a hand-back sends a dispatch instead of requeueing it). A body that
        does not fit the format becomes a job failed with the reason (settled by :meth:`_claim`)."""
        if all(d.body is None for d in deliveries):
            return deliveries
        now = self.clock()
        messages: list[Message] = []
        refused: dict[str, dict[str, Any]] = {}
        for d in deliveries:
            if d.body is not None:
                try:
                    messages.append(job_message(d.body, d.queue, now, self.max_payload))
                except WireError as exc:
                    m = failed_message(d.body, d.queue, now)
                    refused[m.id] = exc.error()
                    log.error("refused a message on queue %r: %s (recorded as failed job %s)", d.queue, exc, m.id)
                    messages.append(m)
        try:
            ids = iter(self._store.enqueue(messages))
        except BaseException:
            self.transport.requeue(deliveries)
            raise
        made = iter(messages)
        out: list[Delivery] = []
        forwarded: list[Delivery] = []
        for d in deliveries:
            if d.body is None:
                out.append(d)
                continue
            m, job_id = next(made), next(ids)
            if m.queue != d.queue:  # a job for another queue: the outbox carries it there
                forwarded.append(d)
            else:
                out.append(replace(d, job_id=job_id, priority=m.priority))
        with self._lock:
            self._refused.update(refused)
        if forwarded:
            self.transport.settle(forwarded)
            self._send()
        return out

    def _claim(self, deliveries: list[Delivery], lease: float, consumer: str) -> list[Lease]:
        try:
            leases = self._store.claim_jobs([d.dispatch for d in deliveries], lease, consumer)
            if len(leases) < len(deliveries) and self._store.sends_before_written:
                leases += self._claim_unwritten(deliveries, {x.job_id for x in leases}, lease, consumer)
        except BaseException:
            self.transport.requeue(deliveries)
            raise
        by_id = {x.job_id: x for x in leases}
        drop: list[Delivery] = []
        with self._lock:
            for d in deliveries:
                got = by_id.pop(d.job_id, None)  # a second delivery of one job is a duplicate
                if got is None:
                    drop.append(d)
                else:
                    self._held[(got.job_id, got.token)] = (d, consumer)
            imported = [d.dispatch for d in deliveries if d.body is not None]
            refused = {x.job_id: self._refused.pop(x.job_id) for x in leases if x.job_id in self._refused}
        if imported:  # carried already, by the message that made them: not to be sent again
            self._store.mark_sent(imported)
        if drop:
            paused = self._paused_queues(fresh=True)
            back = [d for d in drop if d.queue in paused]  # paused since they were received: kept
            if back:
                self.transport.requeue(back)
                drop = [d for d in drop if d.queue not in paused]
            self.transport.settle(drop)
        if refused:
            now = self.clock()
            self.ack([Outcome(x.job_id, x.token, "failed", error=refused[x.job_id], started_at=now, finished_at=now)
                      for x in leases if x.job_id in refused])
            leases = [x for x in leases if x.job_id not in refused]
        return leases

    def _claim_unwritten(self, deliveries: list[Delivery], claimed: set[str], lease: float,
                         consumer: str) -> list[Lease]:
        """Claim again, for up to WRITE_WAIT seconds, the deliveries of young jobs the store does
        not have: sent while their write was on its way, they came first. A job that never comes
        is then dropped (written later after all, its delivery counts as lost: resent as such).
        One found queued was written since the claim: claimed again at once."""
        now = time.time()
        young = [d for d in deliveries if d.body is None and d.job_id not in claimed and _young(d.job_id, now)]
        if not young:
            return []
        records = self._store.get_many([d.job_id for d in young])
        waiting = list({d.job_id: d.dispatch for d, r in zip(young, records)
                        if r is None or r.state == "queued"}.values())
        out: list[Lease] = []
        delay, deadline = 0.0, time.monotonic() + WRITE_WAIT
        while waiting and (left := deadline - time.monotonic()) > 0:
            if delay:
                time.sleep(min(delay, left))
            delay = delay * 2 or 0.001
            more = self._store.claim_jobs(waiting, lease, consumer)
            got = {x.job_id for x in more}
            out += more
            waiting = [d for d in waiting if d.job_id not in got]
        return out

    def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Block until a delivery arrives (kept for the next fetch) or ``timeout``."""
        with self._lock:
            if self._stash:
                return
        wanted = [q for q in queues if q not in self._paused_queues()]
        if not wanted:
            super().wait(queues, timeout)
            return
        got = self.transport.receive(wanted, 1, timeout)
        with self._lock:
            self._stash.extend(got)

    def ack(self, outcomes: Sequence[Outcome]) -> list[bool]:
        accepted = self._store.ack(outcomes)
        if any(o.state == "scheduled" or o.run_at is not None for o in outcomes):
            self._promoted = float("-inf")  # a retry may be due at once: the next fetch promotes
        self.transport.outcomes(outcomes, accepted)
        now = self.clock()
        settle: list[Delivery] = []
        requeue: list[Delivery] = []
        with self._lock:
            for o, ok in zip(outcomes, accepted):
                held = self._held.pop((o.job_id, o.token), None)
                if held is None:
                    continue
                # A job message is not requeued as it is (it would make the job again): the
                # outbox sends a dispatch of the job instead.
                back = ok and o.state == "queued" and (o.run_at is None or o.run_at <= now) and held[0].body is None
                (requeue if back else settle).append(held[0])
        if settle:
            self.transport.settle(settle)
        if requeue:  # handed back unstarted: the same delivery, in its place
            self.transport.requeue(requeue)
            self._store.mark_sent([d.dispatch for d in requeue])
        if len(requeue) < sum(ok and o.state == "queued" for o, ok in zip(outcomes, accepted)):
            self._send()  # hand-backs of deliveries held elsewhere (e.g. by a stopped pool member)
        return accepted

    def _drop_held(self, keep: Any) -> None:
        """Settle the held deliveries for which ``keep(key, consumer)`` is false."""
        with self._lock:
            gone = [key for key, (_, consumer) in self._held.items() if not keep(key, consumer)]
            done = [self._held.pop(key)[0] for key in gone]
        if done:
            self.transport.settle(done)

    def extend(self, leases: Sequence[tuple[str, int]], lease: float) -> ExtendResult:
        result = self._store.extend(leases, lease)
        if result.lost:
            lost = {(j, t) for j, t in leases if j in result.lost}
            self._drop_held(lambda key, _: key not in lost)
        return result

    def mark_started(self, marks: Sequence[tuple[str, int, float]]) -> None:
        self._store.mark_started(marks)

    def reserved_counts(self) -> dict[str, int]:
        return self._store.reserved_counts()

    def progress(self, job_id: str, token: int, fraction: float | None, message: str | None) -> bool:
        return self._store.progress(job_id, token, fraction, message)

    def recover(self) -> int:
        """Expired leases back and due jobs to the queue (in the store), then send the outbox:
        those jobs, and any whose send was lost."""
        n = self._store.recover()
        self._send()
        return n

    def release(self, consumer: str, reason: str) -> int:
        n = self._store.release(consumer, reason)
        self._drop_held(lambda _, held_by: held_by != consumer)
        self._send()
        return n

    # -- control: the store's, then the outbox where a job was queued again -------------------
    def cancel(self, job_id: str) -> str:
        return self._store.cancel(job_id)

    def retry(self, job_id: str) -> str:
        state = self._store.retry(job_id)
        self._send()
        return state

    def delete(self, job_id: str) -> bool:
        return self._store.delete(job_id)

    def _paused_queues(self, fresh: bool = False) -> set[str]:
        """The paused queues, read at most every PAUSED_FOR seconds (or now, when ``fresh``)."""
        at, paused = self._paused
        now = time.monotonic()
        if fresh or not 0 <= now - at < PAUSED_FOR:
            paused = self._store.paused_queues()
            self._paused = (now, paused)
        return paused

    def pause(self, queue: str) -> None:
        self._store.pause(queue)
        self._paused = (-PAUSED_FOR, set())

    def resume(self, queue: str) -> None:
        self._store.resume(queue)
        self._paused = (-PAUSED_FOR, set())

    def purge(self, queue: str | None, states: Iterable[str] = ("queued", "scheduled")) -> int:
        """Deletes the jobs in the store; their deliveries are dropped when they arrive (purging
        the transport too could drop the delivery of a job enqueued meanwhile)."""
        return self._store.purge(queue, states)

    def prune(self, older_than: float) -> int:
        return self._store.prune(older_than)


def _young(job_id: str, now: float) -> bool:
    """Whether ``job_id`` is a UUIDv7 (Conveyor's ids) made within YOUNG_FOR seconds of ``now``."""
    if len(job_id) != 36 or job_id[14] != "7":
        return False
    try:
        made = int(job_id[:8] + job_id[9:13], 16) / 1000
    except ValueError:
        return False
    return abs(now - made) < YOUNG_FOR
