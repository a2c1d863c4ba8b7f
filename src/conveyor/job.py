"""Jobs: a handle on one enqueued call, and ``current_job()`` inside a running task."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast

from .brokers import TERMINAL_STATES, JobRecord
from .errors import JobCancelled, JobFailed, JobNotFound

if TYPE_CHECKING:
    from ._app_protocol import AppLike

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class TaskLike(Protocol[R_co]):
    """What a job needs of its task (a :class:`~conveyor.task.Task`): its name, and how to turn a
    stored result back into the task's return type. A Protocol, so that ``job`` does not import
    ``task``, which imports ``job``."""

    @property
    def name(self) -> str: ...

    def decode_result(self, value: Any) -> R_co: ...


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=timezone.utc)


class Job(Generic[R]):
    """A handle on one job. ``status`` is read fresh from the store on every access; the other
    attributes come from the last :meth:`refresh` (done on first use)."""

    __slots__ = ("_record", "_task", "app", "id")

    def __init__(self, app: AppLike, job_id: str, task: TaskLike[R] | None = None,
                 record: JobRecord | None = None) -> None:
        self.app = app
        self.id = job_id
        self._task = task
        self._record = record

    def __repr__(self) -> str:
        state = self._record.state if self._record else "?"
        return f"<Job {self.id} {self.task_name or ''} {state}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    # -- reading -----------------------------------------------------------------------------
    def refresh(self) -> Job[R]:
        """Reload the job's record from the store. Raises JobNotFound."""
        record = self.app.store.get(self.id)
        if record is None:
            raise JobNotFound(self.id)
        self._record = record
        return self

    @property
    def record(self) -> JobRecord:
        """The store's record as of the last refresh."""
        if self._record is None:
            self.refresh()
        assert self._record is not None
        return self._record

    @property
    def status(self) -> str:
        """The job's state, read now: queued, scheduled, running, succeeded, failed or cancelled."""
        return self.refresh().record.state

    @property
    def task_name(self) -> str | None:
        return self._task.name if self._task else (self._record.task if self._record else None)

    @property
    def queue(self) -> str:
        return self.record.queue

    @property
    def attempts(self) -> int:
        """Deliveries so far (a run that started counts, even if its worker died)."""
        return self.record.attempts

    @property
    def max_attempts(self) -> int:
        return self.record.max_attempts

    @property
    def progress(self) -> float | None:
        """Last reported progress fraction, 0..1."""
        return self.record.progress

    @property
    def progress_message(self) -> str | None:
        return self.record.progress_message

    @property
    def error(self) -> dict[str, Any] | None:
        """The last error: ``{"type", "message", "traceback"}``."""
        return self.record.error

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every attempt that did not succeed, in order."""
        return self.record.history

    @property
    def created_at(self) -> datetime | None:
        return _dt(self.record.created_at)

    @property
    def run_at(self) -> datetime | None:
        return _dt(self.record.run_at)

    @property
    def started_at(self) -> datetime | None:
        return _dt(self.record.started_at)

    @property
    def finished_at(self) -> datetime | None:
        return _dt(self.record.finished_at)

    @property
    def args(self) -> list[Any]:
        return list(self.app.serializer.loads(self.record.payload).get("args", []))

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.app.serializer.loads(self.record.payload).get("kwargs", {}))

    # -- waiting and acting ------------------------------------------------------------------
    def result(self, timeout: float | None = None) -> R:
        """Wait for the job to end and return its value.

        Raises:
            JobFailed: the job ended in ``failed`` (``.error`` has type, message and traceback).
            JobCancelled: the job was cancelled.
            TimeoutError: it had not ended after ``timeout`` seconds.
        """
        # The store blocks until the job ends where it can be told so (Redis), else polls.
        record = self.app.store.wait_for(self.id, timeout)
        if record is None:
            raise JobNotFound(self.id)
        self._record = record
        if record.state not in TERMINAL_STATES:
            raise TimeoutError(f"job {self.id} still {record.state} after {timeout}s")
        if record.state == "cancelled":
            raise JobCancelled(self.id, record.state, record.error)
        if record.state == "failed":
            raise JobFailed(self.id, record.state, record.error)
        value: Any = None if record.result is None else self.app.serializer.loads(record.result)
        task = self._task or self.app.tasks.get(record.task)
        if task is not None:
            value = task.decode_result(value)
        return cast(R, value)

    def cancel(self) -> str:
        """Cancel the job: at once if it waits; a running job is asked to stop (its task sees
        ``current_job().cancelled``). Returns the state after."""
        return self.app.broker.cancel(self.id)

    def retry(self) -> str:
        """Run a failed or cancelled job again, with fresh attempts."""
        return self.app.broker.retry(self.id)


class CurrentJob:
    """What a running task knows about its own job (see :func:`current_job`)."""

    def __init__(self, job_id: str, task: str, queue: str, attempt: int, max_attempts: int,
                 report: Callable[[float | None, str | None], None],
                 is_cancelled: Callable[[], bool],
                 transaction: Callable[[], AbstractContextManager[Any]] | None = None) -> None:
        self.id = job_id
        self.task = task
        self.queue = queue
        self.attempt = attempt
        self.max_attempts = max_attempts
        self._report = report
        self._is_cancelled = is_cancelled
        self._transaction = transaction

    def __repr__(self) -> str:
        return f"<CurrentJob {self.id} {self.task} attempt {self.attempt}/{self.max_attempts}>"

    def progress(self, fraction: float | None, message: str | None = None) -> None:
        """Report progress (0..1) and an optional message; shown live by the CLI and dashboard."""
        if fraction is not None and not 0.0 <= fraction <= 1.0:
            raise ValueError(f"progress fraction must be within 0..1, not {fraction}")
        self._report(fraction, message)

    def transaction(self) -> AbstractContextManager[Any]:
        """A connection to the store's database in a transaction whose commit also records this
        job's success, atomically: ``with current_job().transaction() as conn: conn.execute(...)``.

        If the process dies before the commit, neither the effect nor the success happened and the
        job runs again; after it, both happened and the job never runs again (what the task does
        after the block cannot fail the job any more). On PostgreSQL the connection is a psycopg
        3 connection; on SQLite a ``sqlite3.Connection`` to the store's file. An exception in the
        block rolls back. Raises ConfigError on other stores, and StaleLease (rolled back) when
        the job's lease was lost meanwhile (another worker has it).
        """
        if self._transaction is None:
            raise RuntimeError("this job was not started by a worker: it has no transaction")
        return self._transaction()

    @property
    def cancelled(self) -> bool:
        """True once someone asked to cancel this job; the task should stop soon."""
        return self._is_cancelled()

    @property
    def is_last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts


_current: ContextVar[CurrentJob | None] = ContextVar("conveyor_current_job", default=None)


def current_job() -> CurrentJob:
    """The job the calling task runs as. Raises RuntimeError outside a worker."""
    job = _current.get()
    if job is None:
        raise RuntimeError("current_job() is only available inside a task run by a worker")
    return job
