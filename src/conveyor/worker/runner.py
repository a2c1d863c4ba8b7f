"""One pool member's loop: lease jobs on its own connection, run them, ack in batches.

The runner never dies from a job: an unknown task, a malformed message or arguments that no longer
fit the signature put that job in ``failed`` with the reason and the loop goes on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from ..brokers import Broker, Lease, Outcome, WorkerInfo
from ..errors import ConveyorError, InvalidArguments, Retry, SerializationError
from ..job import CurrentJob, _current

if TYPE_CHECKING:
    from ..app import Conveyor
    from ..config import Settings
    from .pools import Slot

log = logging.getLogger("conveyor.worker")

EXIT_STOPPED = 0
EXIT_RECYCLE = 3
ACK_BATCH = 128
ACK_DELAY = 0.02  # seconds a finished job may wait for its ack to be batched with others
# Seconds of work a consumer leases ahead. Prefetching more would let one consumer hoard slow
# jobs while its siblings idle; short jobs still go in batches of up to ``prefetch``.
FETCH_AHEAD = 0.1
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

    __slots__ = ("cancelled", "lease", "observed_cancel", "pending_progress", "progress_at")

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.cancelled = False
        self.observed_cancel = False  # the task read current_job().cancelled as True
        self.progress_at = 0.0
        self.pending_progress: tuple[float | None, str | None] | None = None


class Runner:
    """Executes leases for one consumer: the shared core of every pool kind."""

    def __init__(self, app: Conveyor, broker: Broker, settings: Settings, consumer_id: str) -> None:
        self.app = app
        self.broker = broker
        self.settings = settings
        self.consumer_id = consumer_id
        self.running: dict[str, _Running] = {}
        self.held: dict[str, Lease] = {}  # leased and not yet acked
        self.lock = threading.Lock()
        self.processed = 0
        self.failed = 0
        self.mean_run: float | None = None  # moving average of job run time, seconds
        self._acks: list[Outcome] = []
        self._acks_since = 0.0
        self._acks_lock = threading.Lock()
        self._flush_lock = threading.Lock()

    # -- batching ----------------------------------------------------------------------------
    def fetch_size(self) -> int:
        """How many jobs to lease next: up to ``prefetch``, but only about FETCH_AHEAD seconds of
        work (one job until a run time has been measured)."""
        if self.mean_run is None:
            return 1
        if self.mean_run <= 0:
            return self.settings.prefetch
        return max(1, min(self.settings.prefetch, int(FETCH_AHEAD / self.mean_run)))

    def timed(self, seconds: float) -> None:
        """Record the run time of one job."""
        self.mean_run = seconds if self.mean_run is None else 0.8 * self.mean_run + 0.2 * seconds

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

    # -- one job -----------------------------------------------------------------------------
    def _decode(self, lease: Lease) -> tuple[Any, Sequence[Any], Mapping[str, Any]] | Outcome:
        task = self.app.tasks.get(lease.task)
        if task is None:
            return self._dead(lease, {"type": "UnknownTask",
                                      "message": f"no task named {lease.task!r} is registered in this worker"})
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
            self.failed += 1
            return decoded
        task, args, kwargs = decoded
        state = _Running(lease)
        with self.lock:
            self.running[lease.job_id] = state
        token = _current.set(self._context(lease, state))
        return task, args, kwargs, state, token, time.time()

    def _exit(self, lease: Lease, state: _Running, token: Any, started: float) -> None:
        """Undo ``_enter`` and write the job's last throttled progress report."""
        self.timed(time.time() - started)
        _current.reset(token)
        with self.lock:
            self.running.pop(lease.job_id, None)
        if state.pending_progress is not None:
            self.broker.progress(lease.job_id, lease.token, *state.pending_progress)

    def _dead(self, lease: Lease, error: dict[str, Any]) -> Outcome:
        log.error("job %s (%s) failed: %s", lease.job_id, lease.task, error["message"])
        now = time.time()
        return Outcome(lease.job_id, lease.token, "failed", error=error, started_at=now, finished_at=now)

    def _context(self, lease: Lease, state: _Running) -> CurrentJob:
        def report(fraction: float | None, message: str | None) -> None:
            now = time.monotonic()
            if now - state.progress_at >= PROGRESS_EVERY:
                state.progress_at = now
                state.pending_progress = None
                self.broker.progress(lease.job_id, lease.token, fraction, message)
            else:
                state.pending_progress = (fraction, message)

        def is_cancelled() -> bool:
            if state.cancelled:
                state.observed_cancel = True
            return state.cancelled

        return CurrentJob(lease.job_id, lease.task, lease.queue, lease.attempt, lease.max_attempts,
                          report, is_cancelled)

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
                return Outcome(lease.job_id, lease.token, "failed", error=error_info(err, False),
                               started_at=started, finished_at=finished)
            self.processed += 1
            return _succeeded(lease.job_id, lease.token, body, started, finished)
        self.failed += 1
        info = error_info(exc)
        if isinstance(exc, TimeoutError) and not info["message"] and lease.timeout:
            info["message"] = f"the job exceeded its {lease.timeout:g}s timeout"  # injected into a thread bare
        if state.cancelled:
            return Outcome(lease.job_id, lease.token, "cancelled", error=info,
                           started_at=started, finished_at=finished)
        if lease.attempt < lease.max_attempts:
            delay = exc.delay if isinstance(exc, Retry) and exc.delay is not None else task.backoff(lease.attempt)
            log.warning("job %s (%s) attempt %d/%d raised %s: %s; retry in %.1fs", lease.job_id, lease.task,
                        lease.attempt, lease.max_attempts, info["type"], info["message"], delay)
            return Outcome(lease.job_id, lease.token, "scheduled", error=info, run_at=finished + delay,
                           started_at=started, finished_at=finished)
        log.error("job %s (%s) failed after %d attempt(s): %s: %s", lease.job_id, lease.task,
                  lease.attempt, info["type"], info["message"])
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
            slot.start(lease.job_id, lease.token, timeout, self.settings.kill_after)
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


class Heartbeat(threading.Thread):
    """Background thread of a consumer: extends leases, flushes throttled progress, reports the
    worker's heartbeat, and stops the consumer if its supervisor is gone."""

    def __init__(self, runner: Runner, info: WorkerInfo, stop: threading.Event,
                 parent_pid: int | None = None) -> None:
        super().__init__(name=f"conveyor-heartbeat-{runner.consumer_id}", daemon=True)
        self.runner, self.info, self.stop_event, self.parent_pid = runner, info, stop, parent_pid
        self.done = threading.Event()

    def run(self) -> None:
        lease_every = min(self.runner.settings.lease / 3.0, 1.0)
        next_lease = next_info = 0.0
        while not self.done.wait(0.1):
            try:
                now = time.monotonic()
                self.runner.flush_acks(older_than=ACK_DELAY)
                self.runner.flush_progress()
                if now >= next_lease:
                    next_lease = now + lease_every
                    self.runner.beat()
                if now >= next_info:
                    next_info = now + 5.0
                    self.report()
                if self.parent_pid is not None and os.getppid() != self.parent_pid \
                        and not self.stop_event.is_set():
                    log.error("supervisor %d is gone; stopping after the current job", self.parent_pid)
                    self.stop_event.set()
            except ConveyorError as exc:
                log.warning("heartbeat failed: %s", exc)
            except Exception:
                log.exception("heartbeat failed")

    def report(self) -> None:
        with self.runner.lock:
            self.info.current = list(self.runner.running)
        self.info.rss = rss_bytes()
        self.info.processed = self.runner.processed
        self.info.failed = self.runner.failed
        self.runner.broker.heartbeat(self.info)


class Acker(threading.Thread):
    """Background thread of a consumer that acks full batches, so that their round trip overlaps
    with the next jobs instead of stalling the consumer (the consumer acks itself, at once, when
    its queues run dry: a lone job's round trip must not wait for a thread switch)."""

    def __init__(self, runner: Runner) -> None:
        super().__init__(name=f"conveyor-acker-{runner.consumer_id}", daemon=True)
        self.runner = runner
        self.wanted = threading.Event()
        self.done = False

    def run(self) -> None:
        while not self.done:
            self.wanted.wait()
            self.wanted.clear()
            try:
                self.runner.flush_acks()
            except Exception:  # flush_acks logs broker errors; anything else must not end the acks
                log.exception("ack failed")

    def stop(self) -> None:
        self.done = True
        self.wanted.set()
        self.join(timeout=5)


def worker_info(consumer_id: str, queues: Sequence[str], pool: str, supervisor: str | None) -> WorkerInfo:
    return WorkerInfo(id=consumer_id, hostname=socket.gethostname(), pid=os.getpid(), queues=list(queues),
                      started_at=time.time(), supervisor=supervisor, pool=pool)


def consume(app: Conveyor, settings: Settings, queues: Sequence[str], consumer_id: str,
            stop: threading.Event, *, slot: Slot | None = None, use_alarm: bool = False,
            supervisor: str | None = None, pool: str = "process", parent_pid: int | None = None,
            max_jobs: int | None = None, max_memory: int | None = None,
            on_job: Callable[[], None] | None = None) -> int:
    """The synchronous consumer loop (process and thread pools). Returns an exit code:
    EXIT_STOPPED when ``stop`` was set, EXIT_RECYCLE when a recycling limit was reached."""
    broker = app.broker.fork()
    runner = Runner(app, broker, settings, consumer_id)
    beat = Heartbeat(runner, worker_info(consumer_id, queues, pool, supervisor), stop, parent_pid)
    beat.start()
    acker = Acker(runner)
    acker.start()
    loop = asyncio.new_event_loop()
    done_jobs = 0
    next_memory_check = 0.0
    exit_code = EXIT_STOPPED
    handoff = False  # the last full batch's acks wait for the next fetch's answer (see below)

    try:
        while not stop.is_set():
            limit = runner.fetch_size()
            if max_jobs:
                limit = max(1, min(limit, max_jobs - done_jobs))  # do not lease what recycling hands back
            try:
                leases = broker.fetch(queues, limit, settings.lease, consumer_id)
            except ConveyorError as exc:
                log.error("fetch failed: %s; retrying in 1s", exc)
                stop.wait(1.0)
                continue
            if not leases:
                runner.flush_acks()
                handoff = False
                broker.wait(queues, 0.5)
                continue
            if handoff:
                acker.wanted.set()
                handoff = False
            with runner.lock:
                runner.held.update((lease.job_id, lease) for lease in leases)
            for i, lease in enumerate(leases):
                if stop.is_set() or exit_code == EXIT_RECYCLE:
                    for rest in leases[i:]:  # handed back unstarted: not counted as an attempt
                        runner.add_ack(Outcome(rest.job_id, rest.token, "queued"))
                    break
                if runner.acks_waiting(ACK_DELAY):
                    acker.wanted.set()
                outcome = runner.execute(lease, slot=slot, use_alarm=use_alarm, loop=loop)
                if runner.add_ack(outcome) >= ACK_BATCH and i + 1 < len(leases):
                    acker.wanted.set()
                done_jobs += 1
                if on_job is not None:
                    on_job()
                if max_jobs and done_jobs >= max_jobs:
                    log.info("recycling after %d jobs (max_jobs_per_child)", done_jobs)
                    exit_code = EXIT_RECYCLE
                if max_memory and time.monotonic() >= next_memory_check:
                    next_memory_check = time.monotonic() + 0.5
                    if rss_bytes() > max_memory * 1024 * 1024:
                        log.info("recycling at %d MB RSS (max_memory %d MB)", rss_bytes() >> 20, max_memory)
                        exit_code = EXIT_RECYCLE
            if len(leases) < limit or stop.is_set() or exit_code == EXIT_RECYCLE:
                runner.flush_acks()  # the queues ran dry (the next fetch may block) or we stop: ack now
            else:
                # More work waits: ack while running it, once the next fetch is answered, so that
                # the broker serves that fetch first instead of queueing it behind these acks.
                handoff = True
            if exit_code == EXIT_RECYCLE:
                break
    finally:
        acker.stop()
        runner.flush_acks()
        _sign_off(beat, broker, consumer_id)
        loop.close()
    return exit_code


def _sign_off(beat: Heartbeat, broker: Broker, consumer_id: str) -> None:
    """A consumer's last words: stop its heartbeat and remove its worker record."""
    beat.done.set()
    beat.join(timeout=2)
    try:
        broker.unregister(consumer_id)
    except ConveyorError:
        pass


def consume_async(app: Conveyor, settings: Settings, queues: Sequence[str], consumer_id: str,
                  stop: threading.Event, *, slots: Sequence[Slot], supervisor: str | None = None,
                  parent_pid: int | None = None, concurrency: int = 10) -> int:
    """The asyncio consumer: one event loop running up to ``concurrency`` jobs at once.

    ``async def`` tasks run on the loop (their timeout cancels them with TimeoutError); plain
    functions run in the loop's thread pool so they never block it.
    """
    broker = app.broker.fork()
    runner = Runner(app, broker, settings, consumer_id)
    beat = Heartbeat(runner, worker_info(consumer_id, queues, "async", supervisor), stop, parent_pid)
    beat.start()
    free_slots = list(slots)

    async def run_one(lease: Lease) -> Outcome:
        entered = runner._enter(lease)
        if isinstance(entered, Outcome):
            return entered
        task, args, kwargs, state, token, started = entered
        slot = free_slots.pop()
        slot.start(lease.job_id, lease.token, lease.timeout, settings.kill_after)
        try:
            if task.is_async:
                call = task.fn(*args, **kwargs)
            else:
                call = asyncio.get_running_loop().run_in_executor(None, lambda: task.fn(*args, **kwargs))
            result = await (asyncio.wait_for(call, lease.timeout) if lease.timeout else call)
        except Exception as exc:
            return runner._verdict(lease, task, state, started, exc=exc)
        else:
            return runner._verdict(lease, task, state, started, result=result)
        finally:
            slot.clear()
            free_slots.append(slot)
            runner._exit(lease, state, token, started)

    async def main() -> None:
        inflight: set[asyncio.Task[Outcome]] = set()
        done_outcomes: list[Outcome] = []

        async def flush() -> None:
            if not done_outcomes:
                return
            batch = list(done_outcomes)
            done_outcomes.clear()
            try:
                await asyncio.to_thread(broker.ack, batch)
            except ConveyorError as exc:
                log.error("ack of %d job(s) failed: %s", len(batch), exc)
            with runner.lock:
                for o in batch:
                    runner.held.pop(o.job_id, None)

        def collect(finished: set[asyncio.Task[Outcome]]) -> None:
            for t in finished:
                inflight.discard(t)
                done_outcomes.append(t.result())

        while not stop.is_set():
            room = concurrency - len(inflight)
            leases: list[Lease] = []
            if room > 0:
                try:
                    leases = await asyncio.to_thread(broker.fetch, queues, room, settings.lease, consumer_id)
                except ConveyorError as exc:
                    log.error("fetch failed: %s; retrying in 1s", exc)
                    await asyncio.sleep(1.0)
                    continue
            with runner.lock:
                runner.held.update((lease.job_id, lease) for lease in leases)
            for lease in leases:
                inflight.add(asyncio.ensure_future(run_one(lease)))
            if inflight:
                finished, _ = await asyncio.wait(inflight, timeout=0.05 if len(inflight) < concurrency else None,
                                                 return_when=asyncio.FIRST_COMPLETED)
                collect(finished)
                await flush()
            else:
                await flush()
                await asyncio.to_thread(broker.wait, queues, 0.5)
        if inflight:
            finished, _ = await asyncio.wait(inflight)
            collect(finished)
        await flush()

    try:
        asyncio.run(main())
    finally:
        _sign_off(beat, broker, consumer_id)
    return EXIT_STOPPED
