"""The worker supervisor: spawns the pool, watches it, and shuts down without losing work.

It never runs jobs itself. It restarts crashed members with back-off, replaces recycled ones at
once, hard-kills a job past ``timeout + kill_after`` (recording it as timed out), hands back the
jobs of a member that died, recovers expired leases of any worker, and prunes old jobs.
On SIGTERM or SIGINT it stops fetching, gives running jobs ``grace`` seconds, hands back the
rest and exits 0; a second signal stops at once, still handing jobs back.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import uuid_utils

from ..brokers import JobRecord, Outcome
from ..brokers.paired import PairedBroker
from ..errors import ConfigError, ConveyorError
from .pools import POOLS, Member, ProcessMember, ThreadMember
from .runner import EXIT_RECYCLE, EXIT_STOPPED
from .slot import SlotView
from .verdict import retry_verdict

if TYPE_CHECKING:
    from ..app import Conveyor
    from ..brokers.store import Broker
    from ..brokers.transport import Service
    from ..config import Settings

log = logging.getLogger("conveyor.worker")

MAINTENANCE_EVERY = 1.0
PRUNE_EVERY = 60.0
BACKOFF_MAX = 30.0


class Supervisor:
    """Runs a pool of consumers for ``app`` until stopped.

    Args:
        app: the application whose tasks the pool runs.
        settings: worker settings (pool, concurrency, queues, limits).
    """

    def __init__(self, app: Conveyor, settings: Settings | None = None) -> None:
        self.app = app
        self.settings = settings or app.settings
        s = self.settings
        if s.pool not in POOLS:
            raise ConfigError(f"pool must be one of {', '.join(POOLS)}, not {s.pool!r}")
        if s.concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, not {s.concurrency}")
        if s.pool != "thread" and not app.broker.shared_between_processes:
            raise ConfigError(f"the {app.broker.scheme}:// broker lives in one process: use --pool thread")
        self.queues: list[str] = list(s.queues or app.queues)
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid_utils.uuid7().hex[-6:]}"
        self.members: dict[int, Member] = {}
        self.generation = 0
        self.failures: dict[int, int] = {}
        self.restart_at: dict[int, float] = {}
        self.stopping = threading.Event()
        self.forced = threading.Event()
        self.broker = app.broker.fork()
        self.sockets: Service | None = None  # what _serve_sockets started

    # -- members -----------------------------------------------------------------------------
    def _spawn(self, index: int) -> None:
        self.generation += 1
        consumer_id = f"{self.id}/{index}.{self.generation}"
        s = self.settings
        member: Member
        if s.pool == "thread":
            member = ThreadMember(index, consumer_id, self.app, s, self.queues, self.id)
        else:
            member = ProcessMember(index, consumer_id, self.app, s, self.queues, self.id, s.pool)
        member.start()
        self.members[index] = member
        log.debug("started %s member %d (pid %d)", s.pool, index, member.pid)

    def _size(self) -> int:
        return 1 if self.settings.pool == "async" else self.settings.concurrency

    def _reap(self, index: int, member: Member, killed_for: str | None = None) -> None:
        """A member ended: hand back its jobs and schedule its replacement (at once when it was
        recycled, or killed by the watchdog for ``killed_for``; with back-off when it crashed)."""
        code = member.exitcode
        released = self._release(member, killed_for or f"worker process {member.pid} exited with code {code}")
        del self.members[index]
        if self.stopping.is_set():
            return
        if killed_for or code in (EXIT_RECYCLE, EXIT_STOPPED):
            self.failures[index] = 0
            self.restart_at[index] = 0.0
            what = "replaced after the watchdog killed it" if killed_for else "recycled"
            log.info("member %d %s (pid %d); %d other job(s) handed back", index, what, member.pid, released)
            return
        n = self.failures.get(index, 0) + 1
        self.failures[index] = n if time.monotonic() - member.started < 60 else 1
        delay = min(BACKOFF_MAX, 0.5 * 2 ** (self.failures[index] - 1))
        self.restart_at[index] = time.monotonic() + delay
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        log.error("member %d (pid %d) died (%s); %d job(s) handed back; restarting in %.1fs",
                  index, member.pid, how, released, delay)

    def _release(self, member: Member, reason: str, count_executing: bool = True) -> int:
        """Hand back every job ``member`` still holds. Jobs it only fetched ahead go back as if never
        delivered; the job it was executing counts as an attempt (``count_executing``), because it may
        be what killed the member; at shutdown nothing counts. Returns how many went back."""
        executing = {job_id for slot in member.slots if (job_id := slot.current())}
        try:
            held = self._held_by(member.consumer_id)
            back = [Outcome(r.id, r.token, "queued") for r in held
                    if not (count_executing and r.id in executing)]
            returned = sum(self.broker.ack(back)) if back else 0
            return returned + self.broker.release(member.consumer_id, reason)
        except ConveyorError as exc:
            log.error("could not hand back jobs of %s (they return when their leases expire): %s",
                      member.consumer_id, exc)
            return 0

    def _held_by(self, consumer_id: str) -> list[JobRecord]:
        """The running jobs leased by one consumer (few: at most its prefetch)."""
        held: list[JobRecord] = []
        cursor = None
        while True:
            page = self.broker.list_jobs(state="running", limit=1000, cursor=cursor)
            held.extend(r for r in page.jobs if r.consumer == consumer_id)
            if page.cursor is None:
                return held
            cursor = page.cursor

    def _watchdog(self) -> None:
        now = time.time()
        for index, member in list(self.members.items()):
            for slot in member.slots:
                seen = slot.read()
                if seen is None:
                    continue
                if now >= seen.hard:
                    self._hard_kill(index, member, seen)
                    break
                if now >= seen.soft:
                    member.soft_timeout(slot)

    def _hard_kill(self, index: int, member: Member, job: SlotView) -> None:
        """Kill a member whose job ran past its hard limit, and record the job's verdict from what
        its slot says (no store read: the store may be what is slow)."""
        kill_after = job.hard - job.soft
        log.error("job %s (%s) attempt %d/%d still running %.1fs past its %.1fs timeout: killing pool member %d "
                  "(pid %d)", job.job_id, job.task, job.attempt, job.max_attempts, kill_after, job.timeout,
                  index, member.pid)
        member.kill()
        member.join(5.0)
        now = time.time()
        error = {"type": "TimeoutError",
                 "message": f"hard time limit: the job ran past its {job.timeout:g}s timeout and did not stop "
                            f"within {kill_after:g}s, so its worker was killed"}
        task = self.app.tasks.get(job.task)
        state, run_at = retry_verdict(job.attempt, job.max_attempts, now, task.backoff if task else None)
        outcome = Outcome(job.job_id, job.token, state, error=error, run_at=run_at, started_at=job.started,
                          finished_at=now)
        try:
            self.broker.ack([outcome])
        except ConveyorError as exc:
            log.error("could not record the timeout of job %s: %s", job.job_id, exc)
        if index in self.members:
            self._reap(index, member,
                       killed_for=f"its worker was killed: job {job.job_id} ran past its hard time limit")

    # -- main loop ---------------------------------------------------------------------------
    def _signal(self, signum: int, frame: Any) -> None:
        if self.stopping.is_set():
            log.warning("second %s: stopping now, handing running jobs back", signal.Signals(signum).name)
            self.forced.set()
        else:
            log.info("%s: finishing running jobs (grace %.0fs), then exiting; send again to stop now",
                     signal.Signals(signum).name, self.settings.grace)
            self.stopping.set()

    def run(self, install_signals: bool = True) -> int:
        """Run until stopped. Returns the process exit code (0 after a clean shutdown)."""
        self.sockets = _serve_sockets(self.broker, self.queues)
        self.broker.open()
        if install_signals:
            signal.signal(signal.SIGTERM, self._signal)
            signal.signal(signal.SIGINT, self._signal)
        s = self.settings
        log.info("conveyor worker %s: %s pool x %d, queues %s, %s", self.id, s.pool, s.concurrency,
                 ",".join(self.queues), s.where())
        self._check_neighbours()
        for i in range(self._size()):
            self._spawn(i)
        next_maintenance = next_prune = 0.0
        while not self.stopping.is_set():
            for index, member in list(self.members.items()):
                if not member.alive():
                    self._reap(index, member)
            for index, when in list(self.restart_at.items()):
                if time.monotonic() >= when and index not in self.members:
                    del self.restart_at[index]
                    self._spawn(index)
            self._watchdog()
            now = time.monotonic()
            try:
                if now >= next_maintenance:
                    next_maintenance = now + MAINTENANCE_EVERY
                    recovered = self.broker.recover()
                    if recovered:
                        log.warning("recovered %d job(s) whose lease expired", recovered)
                if now >= next_prune:
                    next_prune = now + PRUNE_EVERY
                    pruned = self.broker.prune(s.retention)
                    if pruned:
                        log.info("pruned %d finished job(s) older than %.0fs", pruned, s.retention)
            except ConveyorError as exc:
                log.error("maintenance failed: %s", exc)
            self.stopping.wait(0.1)
        return self._shutdown()

    def _check_neighbours(self) -> None:
        """Warn once when workers with other task sets consume one of our queues: a job for a task
        only they have will be handed back by us until one of them takes it (and the reverse)."""
        try:
            others = [w for w in self.broker.workers() if w.supervisor != self.id and w.tasks]
        except ConveyorError:
            return
        mine = set(self.app.tasks)
        differ: dict[str, tuple[set[str], set[str], set[str]]] = {}  # supervisor -> (queues, theirs, ours)
        for w in others:
            shared = set(w.queues) & set(self.queues)
            if not shared or set(w.tasks) == mine:
                continue
            key = w.supervisor or w.id
            queues, theirs, ours = differ.setdefault(key, (set(), set(), set()))
            queues |= shared
            theirs |= set(w.tasks) - mine
            ours |= mine - set(w.tasks)
        for key, (queues, theirs, ours) in sorted(differ.items()):
            parts = []
            if theirs:
                parts.append(f"it has {_names(theirs)} that this worker lacks")
            if ours:
                parts.append(f"it lacks {_names(ours)}")
            log.warning("queue(s) %s shared with worker %s whose tasks differ: %s. Jobs for a task one of "
                        "you lacks are handed back until a worker that has it takes them (they fail after "
                        "unknown_task_timeout=%gs)", ",".join(sorted(queues)), key, "; ".join(parts),
                        self.settings.unknown_task_timeout)

    def stop(self) -> None:
        """Ask for a graceful shutdown (what SIGTERM does)."""
        self.stopping.set()

    def _shutdown(self) -> int:
        members = list(self.members.items())
        for _, member in members:
            member.stop()
        deadline = time.monotonic() + self.settings.grace
        while not self.forced.is_set() and time.monotonic() < deadline:
            if not any(m.alive() for _, m in members):
                break
            self._watchdog()
            self.forced.wait(0.05)
        for _, member in members:
            if member.alive():
                log.warning("pool member %d (pid %d) still busy: killing it and handing its jobs back",
                            member.index, member.pid)
                member.kill()
        for _, member in members:
            member.join(5.0)
            self._release(member, "the worker shut down before the job finished", count_executing=False)
        self.members.clear()
        self.broker.close()
        if self.sockets is not None:
            self.sockets.close()
        log.info("conveyor worker %s stopped", self.id)
        return 0


def _serve_sockets(broker: Broker, queues: Sequence[str]) -> Service | None:
    """Start what a paired broker's transport runs in the worker for its pool (``Transport.serve``;
    zmq://: the PULL socket, the pool's hub, the events PUB), before the pool starts; None for other
    brokers. Returns what to close() at shutdown."""
    if isinstance(broker, PairedBroker):
        return broker.transport.serve(broker, queues)
    return None


def _names(tasks: set[str], most: int = 5) -> str:
    shown = ", ".join(sorted(tasks)[:most])
    return shown + (f" and {len(tasks) - most} more" if len(tasks) > most else "")


def run_worker(app: Conveyor, settings: Settings | None = None, queues: Sequence[str] | None = None) -> int:
    """Run a worker for ``app`` in this process until SIGTERM/SIGINT; returns the exit code."""
    s = settings or app.settings
    if queues:
        s = s.replace(queues=list(queues))
    return Supervisor(app, s).run()
