"""The worker's log output, and its one line per finished job at a cost a no-op job can afford.

Going through :mod:`logging` costs about 14 µs a line (a record, the caller's frame, the format, a
write and a flush); a no-op job costs Conveyor about 40 µs in all. So ``conveyor worker`` installs
:class:`WorkerLogHandler`: per-job lines are formatted into a buffer as they come, with the same
prefix the handler gives every other record, and written in one write about every 0.1 s (when
the consumer's heartbeat flushes it, or before any other record, so the order of lines is kept).

When the application configured logging itself (no :class:`WorkerLogHandler` installed), per-job
lines are plain ``logging`` records of the ``conveyor.worker.jobs`` logger.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from typing import ClassVar, TextIO

__all__ = ["FORMAT", "WorkerLogHandler", "job_line"]

#: The format of the worker's log lines.
FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
JOB_LOGGER = "conveyor.worker.jobs"
job_log = logging.getLogger(JOB_LOGGER)


_pid = os.getpid()  # os.getpid() is a system call: read once, and again in a forked child


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


class WorkerLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler with :data:`FORMAT` that also takes pre-formatted per-job lines in batches."""

    #: The handler ``conveyor worker`` installed in this process, if any.
    installed: ClassVar[WorkerLogHandler | None] = None

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.setFormatter(logging.Formatter(FORMAT))
        # Appended by consumer threads, drained by whoever flushes: deque's append and popleft are
        # atomic, so no line is lost between the two without a lock on the hot path.
        self._pending: deque[str] = deque()
        self._second = -1
        self._stamp = ""
        self._pid = -1
        self._prefix_tail = ""

    def install(self, level: int | str) -> None:
        """Make this the root logger's only handler, at ``level``."""
        root = logging.getLogger()
        for old in list(root.handlers):
            root.removeHandler(old)
        root.addHandler(self)
        root.setLevel(level)
        WorkerLogHandler.installed = self

    def job(self, message: str) -> None:
        """Buffer one per-job INFO line (``message`` is the text after the prefix)."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        pid = _pid
        if pid != self._pid:  # forked into a pool process: the pid in the prefix is its own
            self._pid = pid
            self._pending.clear()
            self._prefix_tail = f" INFO [{pid}] {JOB_LOGGER}: "
        self._pending.append(f"{self._stamp},{int((now - second) * 1000):03d}{self._prefix_tail}{message}\n")

    def flush_jobs(self) -> None:
        """Write the buffered per-job lines now, in one write."""
        if not self._pending:
            return
        self.acquire()
        try:
            pending, lines = self._pending, []
            while pending:
                lines.append(pending.popleft())
            if lines and self.stream is not None:
                self.stream.write("".join(lines))
                self.stream.flush()
        except Exception:  # as logging does: a broken stream must not end the worker
            pass
        finally:
            self.release()

    def emit(self, record: logging.LogRecord) -> None:
        self.flush_jobs()  # lines keep their order
        super().emit(record)

    def flush(self) -> None:
        self.flush_jobs()
        super().flush()


def job_line(message: str) -> None:
    """Log one per-job line: buffered by the worker's handler, else a ``logging`` record."""
    handler = WorkerLogHandler.installed
    if handler is not None:
        handler.job(message)
    else:
        job_log.info("%s", message)


def flush_job_lines() -> None:
    """Write buffered per-job lines (the heartbeat thread calls this every 0.1 s)."""
    handler = WorkerLogHandler.installed
    if handler is not None:
        handler.flush_jobs()
