"""Pool members: the three ways a worker runs consumers (processes, threads, asyncio).

A member is one consumer with its own broker connection. Each exposes *slots* (one per job it can
run at a time) that the supervisor's watchdog reads to enforce hard time limits.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .consumer import consume
from .runner import EXIT_RECYCLE, EXIT_STOPPED
from .slot import Slot

if TYPE_CHECKING:
    from ..app import Conveyor
    from ..config import Settings

log = logging.getLogger("conveyor.worker")

POOLS = ("process", "thread", "async")


class Member(ABC):
    """One consumer of the pool, as the supervisor sees it."""

    def __init__(self, index: int, consumer_id: str, slots: Sequence[Slot]) -> None:
        self.index = index
        self.consumer_id = consumer_id
        self.slots = list(slots)
        self.started = time.monotonic()

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def alive(self) -> bool: ...

    @property
    @abstractmethod
    def exitcode(self) -> int | None: ...

    @property
    @abstractmethod
    def pid(self) -> int: ...

    @abstractmethod
    def stop(self) -> None:
        """Ask the member to finish its current job, hand back the rest and exit."""

    @abstractmethod
    def kill(self) -> None:
        """Stop it now, whatever it is doing."""

    def soft_timeout(self, slot: Slot) -> None:  # noqa: B027 - processes raise it themselves
        """Raise TimeoutError in the job of ``slot`` (only threads need the watchdog for this)."""

    @abstractmethod
    def join(self, timeout: float) -> None: ...


def _alarm(signum: int, frame: Any) -> None:
    raise TimeoutError("the job exceeded its timeout")


def _process_main(app: Conveyor, settings: Settings, queues: Sequence[str], consumer_id: str,
                  slots: Sequence[Slot], supervisor: str, parent_pid: int, pool: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the supervisor decides
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGALRM, _alarm)
    if pool == "async":
        from .consumer import consume_async

        code = consume_async(app, settings, queues, consumer_id, stop, slots=slots, supervisor=supervisor,
                             parent_pid=parent_pid, concurrency=settings.concurrency)
    else:
        code = consume(app, settings, queues, consumer_id, stop, slot=slots[0], use_alarm=True,
                       supervisor=supervisor, pool=pool, parent_pid=parent_pid,
                       max_jobs=settings.max_jobs_per_child, max_memory=settings.max_memory)
    sys.stdout.flush()
    sys.exit(code)


class ProcessMember(Member):
    """A forked child process running one consumer (or, for the async pool, one event loop)."""

    def __init__(self, index: int, consumer_id: str, app: Conveyor, settings: Settings,
                 queues: Sequence[str], supervisor: str, pool: str = "process") -> None:
        n = settings.concurrency if pool == "async" else 1
        super().__init__(index, consumer_id, [Slot(shared=True) for _ in range(n)])
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        ctx: Any = multiprocessing.get_context(method)
        self.process: multiprocessing.process.BaseProcess = ctx.Process(
            target=_process_main, name=f"conveyor-{pool}-{index}", daemon=False,
            args=(app, settings, list(queues), consumer_id, self.slots, supervisor, os.getpid(), pool),
        )

    def start(self) -> None:
        self.process.start()

    def alive(self) -> bool:
        return self.process.is_alive()

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode

    @property
    def pid(self) -> int:
        return self.process.pid or 0

    def stop(self) -> None:
        if self.process.pid and self.process.is_alive():
            os.kill(self.process.pid, signal.SIGTERM)

    def kill(self) -> None:
        if self.process.pid and self.process.is_alive():
            os.kill(self.process.pid, signal.SIGKILL)

    def join(self, timeout: float) -> None:
        self.process.join(timeout)


class ThreadMember(Member):
    """A thread of the supervisor's process running one consumer. A thread cannot be killed: a job
    past its hard limit is recorded as timed out and the thread is abandoned (its late ack is refused
    by the fencing token) while a new member takes its place."""

    def __init__(self, index: int, consumer_id: str, app: Conveyor, settings: Settings,
                 queues: Sequence[str], supervisor: str) -> None:
        super().__init__(index, consumer_id, [Slot(shared=False)])
        self.stop_event = threading.Event()
        self._code: int | None = None
        self._abandoned = False

        def run() -> None:
            self.slots[0].thread_id = threading.get_ident()
            try:
                self._code = consume(app, settings, queues, consumer_id, self.stop_event, slot=self.slots[0],
                                     supervisor=supervisor, pool="thread",
                                     max_jobs=settings.max_jobs_per_child)
            except BaseException:
                log.exception("consumer thread %s crashed", consumer_id)
                self._code = 1

        self.thread = threading.Thread(target=run, name=f"conveyor-thread-{index}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def alive(self) -> bool:
        return not self._abandoned and self.thread.is_alive()

    @property
    def exitcode(self) -> int | None:
        if self._abandoned:
            return -9
        return None if self.thread.is_alive() else (self._code if self._code is not None else 1)

    @property
    def pid(self) -> int:
        return os.getpid()

    def stop(self) -> None:
        self.stop_event.set()

    def kill(self) -> None:
        self.stop_event.set()
        self._abandoned = True

    def soft_timeout(self, slot: Slot) -> None:
        if slot.thread_id is not None and not slot.interrupted:
            slot.interrupted = True
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(slot.thread_id),
                                                       ctypes.py_object(TimeoutError))

    def join(self, timeout: float) -> None:
        if not self._abandoned:
            self.thread.join(timeout)


__all__ = ["EXIT_RECYCLE", "EXIT_STOPPED", "POOLS", "Member", "ProcessMember", "Slot", "ThreadMember"]
