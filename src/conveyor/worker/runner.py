"""The core of one consumer: run leased jobs to their outcomes, batch their acks and heartbeats.

The runner never dies from a job: a malformed message or arguments that no longer fit the signature
put that job in ``failed`` with the reason and the loop goes on. A job for a task this worker does
not have is handed back for a worker that has it (see :meth:`Runner.refuse`). The consumer loops,
and the heartbeat and acker threads that serve a runner, are in :mod:`.consumer`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import fields
from functools import partial
from typing import TYPE_CHECKING, Any

from ..brokers import Broker, Lease, Outcome
from ..errors import ConveyorError, InvalidArguments, Retry, SerializationError
from ..job import CurrentJob, _current
from ..presentation import format_duration
from .dispatch import FETCH_AHEAD, RunTimes
from .logs import job_line, job_log
from .verdict import retry_verdict

if TYPE_CHECKING:
    from ..app import Conveyor
    from ..config import Settings
    from .slot import Slot

log = logging.getLogger("conveyor.worker")

EXIT_STOPPED = 0
EXIT_RECYCLE = 3
ACK_BATCH = 128
ACK_DELAY = 0.02  # seconds a finished job may wait for its ack to be batched with others
REFUSAL_BACKOFF_MAX = 30.0  # seconds at most between two hand-backs of a job for an unknown task
MARK_AFTER = 0.1  # seconds a job runs before its start is written on its own (else with its ack)
PROGRESS_EVERY = 0.1  # seconds between progress writes of one job


def error_info(exc: BaseException, with_traceback: bool = True) -> dict[str, Any]:
    """The stored form of an exception: type, message and (optionally) traceback."""
    info: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if with_traceback:
        info["traceback"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return info


def rss_bytes() -> int:
    """Resident memory of this process."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux
        import psutil

        return int(psutil.Process().memory_info().rss)


def _succeeded(job_id: str, token: int, result: bytes, started: float, finished: float) -> Outcome:
    """The outcome of a job that returned (built positionally: a third of the time of keywords)."""
    return Outcome(job_id, token, "succeeded", result, None, None, started, finished)


if tuple(f.name for f in fields(Outcome))[:8] != ("job_id", "token", "state", "result", "error", "run_at",
                                                  "started_at", "finished_at"):  # pragma: no cover
    def _succeeded(job_id: str, token: int, result: bytes, started: float, finished: float) -> Outcome:
        return Outcome(job_id, token, "succeeded", result=result, started_at=started, finished_at=finished)


class _Running:
    """Book-keeping of one job being executed, shared with the heartbeat thread."""

    __slots__ = ("began", "cancelled", "committed", "lease", "observed_cancel", "pending_progress", "progress_at")

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.began = time.monotonic()
        self.cancelled = False
        self.observed_cancel = False  # the task read current_job().cancelled as True
        self.committed = False  # current_job().transaction() committed the job's success
        self.progress_at = 0.0
        self.pending_progress: tuple[float | None, str | None] | None = None


def _is_cancelled(state: _Running) -> bool:
    """``current_job().cancelled`` of the job in ``state`` (remembering that the task saw it)."""
    if state.cancelled:
        state.observed_cancel = True
    return state.cancelled


class Runner:
    """Executes leases for one consumer: the shared core of every pool kind."""

    def __init__(self, app: Conveyor, broker: Broker, settings: Settings, consumer_id: str) -> None:
        self.app = app
        self.broker = broker
        self.settings = settings
        self.consumer_id = consumer_id
        self.running: dict[str, _Running] = {}
        self.held: dict[str, Lease] = {}  # leased and not yet acked
        # Leased and not started, in order. Taken by the consumer (next_lease) or handed back by
        # the heartbeat thread (shed); deque's append and popleft are atomic, so each lease goes
        # to exactly one of them without a lock.
        self.pending: deque[Lease] = deque()
        self.lock = threading.Lock()
        self.processed = 0
        self.failed = 0
        self.run_times = RunTimes()
        self.log_jobs = job_log.isEnabledFor(logging.INFO)
        self._marks: list[tuple[str, int, float]] = []  # (job id, token, started_at) to write
        self._refusals_logged: set[str] = set()
        self._acks: list[Outcome] = []
        self._acks_since = 0.0
        self._acks_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._acking: set[str] = set()  # the job ids of the ack on its way (see beat)

    # -- fair dispatch (see .dispatch) -------------------------------------------------------
    def fetch_size(self, queues: Sequence[str]) -> int:
        """How many jobs to lease next: up to ``prefetch``, but only about FETCH_AHEAD seconds of
        work (one job until a run time has been measured)."""
        return self.run_times.fetch_size(queues, self.settings.prefetch)

    def hold(self, leases: Sequence[Lease]) -> list[Lease]:
        """Take a fetched batch: keep what fits FETCH_AHEAD seconds of estimated work as pending
        and return the rest, to be handed back at once (uncounted) for idle siblings."""
        keep = self.run_times.cut(leases)
        with self.lock:
            self.held.update((lease.job_id, lease) for lease in leases)
        self.pending.extend(leases[:keep])
        return list(leases[keep:])

    def next_lease(self) -> Lease | None:
        """The next pending lease to run, or None when the batch is done (or was handed back)."""
        try:
            return self.pending.popleft()
        except IndexError:
            return None

    def shed(self) -> list[Lease]:
        """Take every pending (unstarted) lease, to hand back."""
        out = []
        while True:
            try:
                out.append(self.pending.popleft())
            except IndexError:
                return out

    def hand_back(self, leases: Sequence[Lease]) -> None:
        """Queue uncounted hand-backs of unstarted leases (acked with the next batch)."""
        for lease in leases:
            self.add_ack(Outcome(lease.job_id, lease.token, "queued"))

    def shed_if_stuck(self) -> bool:
        """Called by the heartbeat thread: when the running job has run longer than FETCH_AHEAD,
        hand back the jobs waiting behind it and ack that at once, so an idle sibling can start
        them. Also raises the run-time estimates at once. Returns whether anything went back."""
        with self.lock:
            states = list(self.running.values())
        if not states:
            return False
        now = time.monotonic()
        stuck = [s for s in states if now - s.began > FETCH_AHEAD]
        for state in stuck:
            self.run_times.record(state.lease.task, state.lease.queue, now - state.began)
        if not stuck or not self.pending:
            return False
        rest = self.shed()
        if not rest:
            return False
        log.debug("handing back %d job(s) waiting behind a slow one", len(rest))
        self.hand_back(rest)
        self.flush_acks()
        return True

    # -- started marks -----------------------------------------------------------------------
    def flush_marks(self) -> None:
        """Write when the running jobs really started, in one batch (``Broker.mark_started``).
        Jobs that already ended are left out: their ack carries ``started_at``. So are jobs that
        started less than MARK_AFTER ago: most end before then, and a drain of short jobs then
        writes no marks at all."""
        if not self._marks:
            return
        now = time.time()
        with self.lock:
            marks = [m for m in self._marks if m[0] in self.running]
            self._marks = [m for m in marks if now - m[2] < MARK_AFTER]
            marks = [m for m in marks if now - m[2] >= MARK_AFTER]
        if marks and self.broker.supports_start_marks:  # else the ack writes the start
            with self._flush_lock:  # never beside an ack of the same rows (see beat)
                self.broker.mark_started(marks)

    def add_ack(self, outcome: Outcome) -> int:
        """Queue an outcome for the next batched ack; returns how many wait."""
        with self._acks_lock:
            if not self._acks:
                self._acks_since = time.monotonic()
            self._acks.append(outcome)
            return len(self._acks)

    def acks_waiting(self, older_than: float) -> bool:
        """Whether outcomes wait for an ack, the oldest for ``older_than`` seconds or more."""
        return bool(self._acks) and time.monotonic() - self._acks_since >= older_than

    def flush_acks(self, older_than: float = 0.0) -> None:
        """Ack the waiting outcomes in one batch (only if the oldest waited ``older_than`` seconds).
        Called by the consumer loop and by the heartbeat thread, so a finished job's ack never waits
        for the next job to end."""
        # Lock-free look first (the consumer loop asks before every job); decided again under the locks.
        if not self._acks or (older_than and time.monotonic() - self._acks_since < older_than):
            return
        with self._flush_lock:
            with self._acks_lock:
                if not self._acks or time.monotonic() - self._acks_since < older_than:
                    return
                batch, self._acks = self._acks, []
                self._acking = {o.job_id for o in batch}
            try:
                accepted = self.broker.ack(batch)
            except ConveyorError as exc:
                log.error("ack of %d job(s) failed (their leases will expire and they will run again): %s",
                          len(batch), exc)
                accepted = [True] * len(batch)
            with self.lock:
                for outcome, ok in zip(batch, accepted):
                    self.held.pop(outcome.job_id, None)
                    if not ok:
                        log.warning("job %s: ack refused, the lease was lost (stale token %d)",
                                    outcome.job_id, outcome.token)
            with self._acks_lock:  # after held: beat never sees these as held and not acking
                self._acking = set()

    # -- one job -----------------------------------------------------------------------------
    def _decode(self, lease: Lease) -> tuple[Any, Sequence[Any], Mapping[str, Any]] | Outcome:
        task = self.app.tasks.get(lease.task)
        if task is None:
            return self.refuse(lease)
        try:
            data = self.app.serializer.loads(lease.payload)
            if not isinstance(data, dict):
                raise SerializationError("the payload is not {\"args\": [...], \"kwargs\": {...}}")
            args, kwargs = data.get("args", []), data.get("kwargs", {})
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise SerializationError("the payload is not {\"args\": [...], \"kwargs\": {...}}")
            args, kwargs = task.prepare(args, kwargs)
        except SerializationError as exc:
            return self._dead(lease, {"type": "MalformedMessage", "message": str(exc)})
        except InvalidArguments as exc:
            return self._dead(lease, {"type": "InvalidArguments", "message": str(exc)})
        except Exception as exc:  # e.g. unresolvable type hints, a validator raising: never the consumer's end
            return self._dead(lease, {"type": type(exc).__name__, "message": f"could not prepare the job: {exc}"})
        return task, args, kwargs

    def _enter(self, lease: Lease) -> Outcome | tuple[Any, Sequence[Any], Mapping[str, Any], _Running, Any, float]:
        """Decode the job and make it the current one; an Outcome when it cannot run at all."""
        decoded = self._decode(lease)
        if isinstance(decoded, Outcome):
            if decoded.state == "failed":
                self.failed += 1
            return decoded
        task, args, kwargs = decoded
        state = _Running(lease)
        token = _current.set(self._context(lease, state))
        started = time.time()
        with self.lock:
            self.running[lease.job_id] = state
            self._marks.append((lease.job_id, lease.token, started))
        return task, args, kwargs, state, token, started

    def _exit(self, lease: Lease, state: _Running, token: Any, started: float) -> None:
        """Undo ``_enter`` and write the job's last throttled progress report."""
        self.run_times.record(lease.task, lease.queue, time.monotonic() - state.began)
        _current.reset(token)
        with self.lock:
            self.running.pop(lease.job_id, None)
        if state.pending_progress is not None:
            self.broker.progress(lease.job_id, lease.token, *state.pending_progress)

    def _dead(self, lease: Lease, error: dict[str, Any]) -> Outcome:
        log.error("job %s (%s) attempt %d/%d failed: %s", lease.job_id, lease.task, lease.attempt,
                  lease.max_attempts, error["message"])
        now = time.time()
        return Outcome(lease.job_id, lease.token, "failed", error=error, started_at=now, finished_at=now)

    def refuse(self, lease: Lease) -> Outcome:
        """A job for a task this worker does not have (another application shares the queue, or
        a deploy is half done): hand it back uncounted, with a growing back-off, so a worker that
        has the task can take it. Only when none has claimed it within ``unknown_task_timeout``
        seconds of the first refusal does it fail, naming the workers that refused it."""
        now = time.time()
        timeout = self.settings.unknown_task_timeout
        prior: dict[str, Any] = {}
        if timeout > 0:
            try:
                record = self.broker.get(lease.job_id)  # a rare path: one read to learn earlier refusals
            except ConveyorError:
                record = None
            if record is not None and record.error and record.error.get("type") == "UnknownTask":
                prior = record.error
        since = float(prior.get("since", now))
        refused_by = [str(w) for w in prior.get("refused_by", []) if w != self.consumer_id] + [self.consumer_id]
        refusals = int(prior.get("refusals", 0)) + 1
        error: dict[str, Any] = {"type": "UnknownTask", "refused_by": refused_by, "since": since,
                                 "refusals": refusals}
        if now - since >= timeout:
            error["message"] = (f"no task named {lease.task!r}: no worker that has it claimed the job within "
                                f"{timeout:g}s (unknown_task_timeout); refused by {', '.join(refused_by)}")
            return self._dead(lease, error)
        delay = min(REFUSAL_BACKOFF_MAX, 0.5 * 2 ** (refusals - 1))
        error["message"] = (f"no task named {lease.task!r} in worker {self.consumer_id}; handed back for a "
                            f"worker that has it (fails at {since + timeout:.0f} if none claims it)")
        if lease.task not in self._refusals_logged:
            self._refusals_logged.add(lease.task)
            log.warning("job %s: this worker has no task %r; handing it back for a worker that has it "
                        "(it fails if none claims it within %gs)", lease.job_id, lease.task, timeout)
        return Outcome(lease.job_id, lease.token, "queued", error=error, run_at=min(now + delay, since + timeout))

    def report(self, lease: Lease, outcome: Outcome) -> None:
        """The INFO line of a finished job: task, id, attempt, duration, outcome. Retries and
        failures have their WARNING and ERROR lines (with the reason) instead."""
        if outcome.state in ("succeeded", "cancelled") and self.log_jobs:
            began, ended = outcome.started_at, outcome.finished_at
            took = format_duration(ended - began) if began is not None and ended is not None else "?"
            job_line(f"job {lease.job_id} ({lease.task}) attempt {lease.attempt}/{lease.max_attempts} "
                     f"{outcome.state} in {took}")

    def _context(self, lease: Lease, state: _Running) -> CurrentJob:
        # Bound partials of methods, not closures and a @contextmanager made per job: that made up
        # a few per cent of a short job's CPU in the worker.
        return CurrentJob(lease.job_id, lease.task, lease.queue, lease.attempt, lease.max_attempts,
                          partial(self._report_progress, lease, state), partial(_is_cancelled, state),
                          partial(self._job_transaction, lease, state))

    def _report_progress(self, lease: Lease, state: _Running, fraction: float | None, message: str | None) -> None:
        now = time.monotonic()
        if now - state.progress_at >= PROGRESS_EVERY:
            state.progress_at = now
            state.pending_progress = None
            self.broker.progress(lease.job_id, lease.token, fraction, message)
        else:
            state.pending_progress = (fraction, message)

    @contextmanager
    def _job_transaction(self, lease: Lease, state: _Running) -> Iterator[Any]:
        with self.broker.job_transaction(lease.job_id, lease.token) as conn:
            yield conn
        state.committed = True

    def _verdict(self, lease: Lease, task: Any, state: _Running, started: float,
                 result: Any = None, exc: BaseException | None = None) -> Outcome:
        finished = time.time()
        if exc is None and state.observed_cancel:
            # The task saw the cancellation and returned early: what it did is not the job's result.
            return Outcome(lease.job_id, lease.token, "cancelled", started_at=started, finished_at=finished,
                           error={"type": "JobCancelled", "message": "cancelled while running: the task stopped "
                                                                     "when it saw the cancellation"})
        if exc is None:
            try:
                body = self.app.serializer.dumps(result)
            except SerializationError as err:
                self.failed += 1
                log.error("job %s (%s) attempt %d/%d failed after %s: its result cannot be stored: %s",
                          lease.job_id, lease.task, lease.attempt, lease.max_attempts,
                          format_duration(finished - started), err)
                return Outcome(lease.job_id, lease.token, "failed", error=error_info(err, False),
                               started_at=started, finished_at=finished)
            self.processed += 1
            return _succeeded(lease.job_id, lease.token, body, started, finished)
        info = error_info(exc)
        if state.committed:  # its transaction committed its success: nothing after that can undo it
            log.warning("job %s (%s) raised %s after its transaction committed: it has succeeded: %s",
                        lease.job_id, lease.task, info["type"], info["message"])
            self.processed += 1
            return _succeeded(lease.job_id, lease.token, self.app.serializer.dumps(None), started, finished)
        self.failed += 1
        if isinstance(exc, TimeoutError) and not info["message"] and lease.timeout:
            info["message"] = f"the job exceeded its {lease.timeout:g}s timeout"  # injected into a thread bare
        if state.cancelled:
            return Outcome(lease.job_id, lease.token, "cancelled", error=info,
                           started_at=started, finished_at=finished)
        verdict, run_at = retry_verdict(lease.attempt, lease.max_attempts, finished, task.backoff,
                                      exc.delay if isinstance(exc, Retry) else None)
        if run_at is not None:
            log.warning("job %s (%s) attempt %d/%d raised %s after %s: %s; retry in %.1fs", lease.job_id,
                        lease.task, lease.attempt, lease.max_attempts, info["type"],
                        format_duration(finished - started), info["message"], run_at - finished)
            return Outcome(lease.job_id, lease.token, verdict, error=info, run_at=run_at,
                           started_at=started, finished_at=finished)
        log.error("job %s (%s) attempt %d/%d failed after %s: %s: %s", lease.job_id, lease.task,
                  lease.attempt, lease.max_attempts, format_duration(finished - started), info["type"],
                  info["message"])
        return Outcome(lease.job_id, lease.token, "failed", error=info, started_at=started, finished_at=finished)

    def execute(self, lease: Lease, slot: Slot | None = None, use_alarm: bool = False,
                loop: asyncio.AbstractEventLoop | None = None) -> Outcome:
        """Run one leased job to its outcome (never raises, except for interpreter exit)."""
        entered = self._enter(lease)
        if isinstance(entered, Outcome):
            return entered
        task, args, kwargs, state, token, started = entered
        timeout = lease.timeout
        if slot is not None:
            slot.start(lease, self.settings.kill_after)
        if use_alarm and timeout:
            signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            try:
                if task.is_async:
                    coro = task.fn(*args, **kwargs)
                    if timeout:
                        coro = asyncio.wait_for(coro, timeout)
                    result = (loop.run_until_complete(coro) if loop is not None else asyncio.run(coro))
                else:
                    result = task.fn(*args, **kwargs)
            finally:
                # Disarmed here, inside the try: an alarm firing just as the task returns is then
                # the job's TimeoutError, not an exception escaping the consumer loop.
                if use_alarm and timeout:
                    signal.setitimer(signal.ITIMER_REAL, 0)
        except Exception as exc:
            outcome = self._verdict(lease, task, state, started, exc=exc)
        else:
            outcome = self._verdict(lease, task, state, started, result=result)
        finally:
            if slot is not None:
                slot.clear()
            self._exit(lease, state, token, started)
        return outcome

    # -- heartbeats --------------------------------------------------------------------------
    def beat(self) -> None:
        """Extend every held lease and learn which jobs were cancelled or lost."""
        with self.lock:
            leases = [(lease.job_id, lease.token) for lease in self.held.values()]
        if not leases:
            return
        # Finished jobs waiting for their ack, or in the ack on its way, are left out: an extend and
        # an ack updating the same rows in different orders deadlock on PostgreSQL (which aborts
        # one after deadlock_timeout, 1 s). (A store's extend also skips rows another transaction
        # holds, for a job that ends between this look and the extend.) Never waiting for the ack
        # keeps a running job's lease fresh while an ack waits for a lost connection.
        with self._acks_lock:
            acking = self._acking | {o.job_id for o in self._acks}
        if acking:
            leases = [lease for lease in leases if lease[0] not in acking]
            if not leases:
                return
        result = self.broker.extend(leases, self.settings.lease)
        with self.lock:
            for job_id in result.cancel_requested:
                if job_id in self.running:
                    self.running[job_id].cancelled = True
            for job_id in result.lost:
                if job_id in self.running:
                    log.warning("job %s: lease lost (another worker may run it now)", job_id)

    def flush_progress(self) -> None:
        with self.lock:
            pending = [(s.lease, s.pending_progress) for s in self.running.values() if s.pending_progress]
            for s in self.running.values():
                s.pending_progress = None
        for lease, (fraction, message) in pending:
            self.broker.progress(lease.job_id, lease.token, fraction, message)
