"""A slot: what one running job looks like to the supervisor, in memory it can read without
asking the consumer or the store.

Process members keep it in shared memory (no system call per job). It holds everything the
supervisor needs to act on the job alone: the id and fencing token, the task, the attempt, the
timeout and when the job started, and the soft and hard deadlines. The busy flag and deadlines are
written last and cleared first, so nothing acts on a half-written slot.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass
from multiprocessing.sharedctypes import RawArray, RawValue
from typing import Any

from ..brokers import Lease

__all__ = ["Slot", "SlotView"]

ID_BYTES = 64
TASK_BYTES = 256


@dataclass(frozen=True, slots=True)
class SlotView:
    """A consistent reading of a busy slot with a time limit."""

    job_id: str
    token: int
    task: str
    attempt: int
    max_attempts: int
    timeout: float
    started: float
    soft: float
    hard: float


class Slot:
    """One job a member can run at a time (see the module docstring).

    The supervisor's watchdog enforces hard time limits from it, and when a member dies it tells
    the job that was executing (counted as an attempt) from jobs only fetched ahead (handed back
    uncounted).
    """

    def __init__(self, shared: bool) -> None:
        def text(size: int) -> Any:
            return RawArray(ctypes.c_char, size) if shared else (ctypes.c_char * size)()

        def number(kind: Any, zero: Any) -> Any:
            return RawValue(kind, zero) if shared else kind(zero)

        self._id, self._task = text(ID_BYTES), text(TASK_BYTES)
        self._token = number(ctypes.c_longlong, 0)
        self._attempts = number(ctypes.c_longlong, 0)  # attempt * 2**20 + max_attempts
        self._busy = number(ctypes.c_int, 0)
        self._started = number(ctypes.c_double, 0.0)
        self._timeout = number(ctypes.c_double, 0.0)
        self._soft = number(ctypes.c_double, 0.0)
        self._hard = number(ctypes.c_double, 0.0)
        self.thread_id: int | None = None
        self.interrupted = False

    def start(self, lease: Lease, kill_after: float) -> None:
        """The consumer starts ``lease``'s job in this slot."""
        self._id.value = lease.job_id.encode()[:ID_BYTES - 1]  # a C string: NUL-terminated
        self._task.value = lease.task.encode()[:TASK_BYTES - 1]
        self._token.value = lease.token
        self._attempts.value = (lease.attempt << 20) + min(lease.max_attempts, (1 << 20) - 1)
        now = time.time()
        self._started.value = now
        self._timeout.value = lease.timeout or 0.0
        self._busy.value = 1
        if lease.timeout:
            self._soft.value = now + lease.timeout
            self._hard.value = now + lease.timeout + kill_after
            self.interrupted = False

    def clear(self) -> None:
        self._hard.value = 0.0
        self._soft.value = 0.0
        self._busy.value = 0

    def current(self) -> str | None:
        """The id of the job executing in this slot, if any."""
        if not self._busy.value:
            return None
        return self._id.value.decode() or None

    def read(self) -> SlotView | None:
        """The job with a time limit running here, or None (no job, no limit, or changing)."""
        hard = self._hard.value
        if not hard:
            return None
        attempts = self._attempts.value
        view = SlotView(self._id.value.decode(), self._token.value, self._task.value.decode(errors="replace"),
                        attempts >> 20, attempts & ((1 << 20) - 1), self._timeout.value, self._started.value,
                        self._soft.value, hard)
        if self._hard.value != hard:  # changed while reading: next round
            return None
        return view
