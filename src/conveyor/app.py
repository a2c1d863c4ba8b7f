"""The application object: task registry, settings and the broker."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar, overload

from .brokers import Broker, JobStore, from_url
from .brokers.registry import preload
from .config import Settings, load_settings
from .errors import ConfigError, JobNotFound, UnknownTask
from .job import Job
from .serializer import Serializer, get_serializer
from .task import BackoffSpec, P, R, Task

F = TypeVar("F", bound=Callable[..., Any])


class TaskDecorator(Protocol):
    """What ``@app.task(...)`` returns: registers a function (an ``async def`` too) as a task."""

    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]], /) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...


class Conveyor:
    """A Conveyor application.

    Args:
        url: broker URL; default from ``CONVEYOR_URL`` or settings, else ``sqlite:///conveyor.db``.
        store: job store URL, for a transport ``url`` (which keeps no job history); default
            from ``CONVEYOR_STORE``. Given with a store ``url``, it must be the same URL.
        settings: a prebuilt :class:`~conveyor.config.Settings` (default: loaded from the
            environment and ``conveyor.toml``/``pyproject.toml``).
        clock: the time source of the broker (a ``conveyor.testing.FakeClock`` in tests).
        **options: any other setting (``max_payload=``, ``retries=``, ``lease=`` …).

    Nothing connects until first use or :meth:`open`.
    """

    def __init__(self, url: str | None = None, store: str | None = None, *,
                 settings: Settings | None = None, clock: Callable[[], float] | None = None,
                 **options: Any) -> None:
        base = settings or load_settings()
        self.clock = clock
        self.settings = base.replace("argument", url=url, store=store, **options)
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.serializer: Serializer = get_serializer(self.settings.serializer)
        self._broker: Broker | None = None
        for where in (self.settings.url, self.settings.store):
            preload(where)  # the client library now, not in the first enqueue (nothing connects)

    def __repr__(self) -> str:
        return f"<Conveyor {self.settings.url.split('://', 1)[0]}:// tasks={len(self.tasks)}>"

    # -- broker ------------------------------------------------------------------------------
    @property
    def broker(self) -> Broker:
        """The broker the worker uses, created on first use: the store itself when it claims
        natively, else the transport of ``url`` paired with ``store``. Raises ConfigError for a
        transport without a store, or a second store next to one that keeps its own jobs."""
        if self._broker is None:
            # (max_payload: job messages published by other clients onto a transport get the app's limit)
            self._broker = from_url(self.settings.url, self.settings.store, clock=self.clock,
                                    max_payload=self.settings.max_payload)
        return self._broker

    @property
    def store(self) -> JobStore:
        """The job database (what the web app, the CLI and :class:`Job` read): the broker itself
        for a store that claims natively, else the store paired with the transport."""
        return self.broker.store

    def open(self) -> Conveyor:
        """Connect now (raises BrokerError with the reason if the broker cannot be used)."""
        self.broker.open()
        return self

    def close(self) -> None:
        """Close connections; the app may be used again afterwards."""
        if self._broker is not None:
            self._broker.close()

    def __enter__(self) -> Conveyor:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- tasks -------------------------------------------------------------------------------
    @overload
    def task(self, fn: Callable[P, Awaitable[R]], /) -> Task[P, R]: ...
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    @overload
    def task(self, fn: None = None, /, *, name: str | None = None, queue: str = "default",
             retries: int | None = None,
             backoff: BackoffSpec = None, timeout: float | None = None,
             priority: int = 0) -> TaskDecorator: ...

    def task(self, fn: Callable[..., Any] | None = None, /, *, name: str | None = None,
             queue: str = "default", retries: int | None = None, backoff: BackoffSpec = None,
             timeout: float | None = None, priority: int = 0) -> Any:
        """Register a function as a task: ``@app.task`` or ``@app.task(queue=..., retries=...)``.

        Args:
            name: registered name (default ``module.function``).
            queue: queue its jobs go to (default ``default``).
            retries: retries after the first attempt raises (default: the ``retries`` setting).
            backoff: seconds (base of exponential back-off), a :class:`Backoff` or ``f(attempt)``.
            timeout: seconds before ``TimeoutError`` is raised in the task; it is killed
                ``kill_after`` seconds later if it has not returned.
            priority: default priority; higher runs first.
        """

        def register(f: Callable[..., Any]) -> Task[Any, Any]:
            t: Task[Any, Any] = Task(self, f, name=name, queue=queue, retries=retries, backoff=backoff,
                                     timeout=timeout, priority=priority)
            if t.name in self.tasks and self.tasks[t.name].fn is not f:
                raise ConfigError(f"a different task is already registered as {t.name!r}")
            self.tasks[t.name] = t
            return t

        return register(fn) if fn is not None else register

    def get_task(self, name: str) -> Task[Any, Any]:
        """The task registered as ``name``. Raises UnknownTask."""
        try:
            return self.tasks[name]
        except KeyError:
            raise UnknownTask(name, self.tasks) from None

    @property
    def queues(self) -> list[str]:
        """The queues of the registered tasks (what a worker consumes by default)."""
        return sorted({t.queue for t in self.tasks.values()} | {"default"})

    # -- jobs --------------------------------------------------------------------------------
    def enqueue(self, name: str, args: Sequence[Any] | None = None,
                kwargs: Mapping[str, Any] | None = None, **options: Any) -> Job[Any]:
        """Enqueue a task by name (for callers without its code object); options as in
        :meth:`Task.options` (``connection=conn`` writes the job inside the caller's transaction).
        Raises UnknownTask, InvalidArguments or PayloadTooLarge."""
        task = self.get_task(name)
        # list("in.mov") would silently become one argument per character
        if args is not None and (isinstance(args, (str, bytes)) or not isinstance(args, Sequence)):
            raise TypeError(f"args of {name!r} must be a list or tuple, not {type(args).__name__}")
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise TypeError(f"kwargs of {name!r} must be a dict, not {type(kwargs).__name__}")
        msg = task.message(list(args or ()), dict(kwargs or {}), options)
        connection = options.get("connection")
        (job_id,) = self.broker.enqueue([msg]) if connection is None else self.broker.enqueue_within(connection, [msg])
        return Job(self, job_id, task)

    def get_job(self, job_id: str) -> Job[Any]:
        """The job with that id, loaded from the store. Raises JobNotFound."""
        record = self.store.get(job_id)
        if record is None:
            raise JobNotFound(job_id)
        return Job(self, job_id, self.tasks.get(record.task), record)
