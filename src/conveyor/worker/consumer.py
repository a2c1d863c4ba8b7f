"""The consumer loops of a pool member: lease jobs on its own connection, run them through a
:class:`~.runner.Runner`, ack in batches. ``consume`` serves the process and thread pools,
``consume_async`` the asyncio pool.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..brokers import Broker, Lease, Outcome, WorkerInfo
from ..errors import ConveyorError
from .logs import flush_job_lines
from .runner import ACK_BATCH, ACK_DELAY, EXIT_RECYCLE, EXIT_STOPPED, Runner, rss_bytes

if TYPE_CHECKING:
    from ..app import Conveyor
    from ..config import Settings
    from .slot import Slot

log = logging.getLogger("conveyor.worker")


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
                self.runner.shed_if_stuck()
                self.runner.flush_acks(older_than=ACK_DELAY)
                self.runner.flush_marks()
                self.runner.flush_progress()
                flush_job_lines()
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


def worker_info(app: Conveyor, consumer_id: str, queues: Sequence[str], pool: str,
                supervisor: str | None) -> WorkerInfo:
    """The heartbeat record of one consumer (with its task names, so that workers sharing a queue
    can tell when their task sets differ)."""
    return WorkerInfo(id=consumer_id, hostname=socket.gethostname(), pid=os.getpid(), queues=list(queues),
                      started_at=time.time(), supervisor=supervisor, pool=pool, tasks=sorted(app.tasks))


def consume(app: Conveyor, settings: Settings, queues: Sequence[str], consumer_id: str,
            stop: threading.Event, *, slot: Slot | None = None, use_alarm: bool = False,
            supervisor: str | None = None, pool: str = "process", parent_pid: int | None = None,
            max_jobs: int | None = None, max_memory: int | None = None,
            on_job: Callable[[], None] | None = None) -> int:
    """The synchronous consumer loop (process and thread pools). Returns an exit code:
    EXIT_STOPPED when ``stop`` was set, EXIT_RECYCLE when a recycling limit was reached."""
    broker = app.broker.fork()
    runner = Runner(app, broker, settings, consumer_id)
    beat = Heartbeat(runner, worker_info(app, consumer_id, queues, pool, supervisor), stop, parent_pid)
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
            limit = runner.fetch_size(queues)
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
            extra = runner.hold(leases)
            if extra:  # more estimated work than FETCH_AHEAD: back at once, for idle siblings
                runner.hand_back(extra)
                acker.wanted.set()
            elif handoff:
                acker.wanted.set()
            handoff = False
            while (lease := runner.next_lease()) is not None:
                if stop.is_set() or exit_code == EXIT_RECYCLE:
                    # handed back unstarted: not counted as an attempt
                    runner.hand_back([lease, *runner.shed()])
                    break
                if runner.acks_waiting(ACK_DELAY):
                    acker.wanted.set()
                outcome = runner.execute(lease, slot=slot, use_alarm=use_alarm, loop=loop)
                runner.report(lease, outcome)
                if runner.add_ack(outcome) >= ACK_BATCH and runner.pending:
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
            if len(leases) < limit or extra or stop.is_set() or exit_code == EXIT_RECYCLE:
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
    flush_job_lines()
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
    beat = Heartbeat(runner, worker_info(app, consumer_id, queues, "async", supervisor), stop, parent_pid)
    beat.start()
    free_slots = list(slots)

    async def run_one(lease: Lease) -> Outcome:
        outcome = await run_lease(lease)
        runner.report(lease, outcome)
        return outcome

    async def run_lease(lease: Lease) -> Outcome:
        entered = runner._enter(lease)
        if isinstance(entered, Outcome):
            return entered
        task, args, kwargs, state, token, started = entered
        slot = free_slots.pop()
        slot.start(lease, settings.kill_after)
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
            for lease in leases:  # never more than free room: nothing waits behind a slow job here
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
