"""What a :class:`~conveyor.job.Job` and a :class:`~conveyor.task.Task` need of their application.

``app.py`` imports ``job`` and ``task``; they annotate against this Protocol instead of importing
``app`` back, so there is no import circle, not even one hidden behind ``TYPE_CHECKING``.
:class:`~conveyor.app.Conveyor` satisfies it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .brokers import Broker, JobStore
    from .config import Settings
    from .serializer import Serializer

__all__ = ["AppLike"]


class AppLike(Protocol):
    """The application as jobs and tasks see it."""

    @property
    def broker(self) -> Broker:
        """What moves jobs (enqueue, cancel, retry)."""

    @property
    def store(self) -> JobStore:
        """The job database (reads)."""

    @property
    def serializer(self) -> Serializer: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def tasks(self) -> Mapping[str, Any]:
        """The registered tasks by name (typed loosely: this module must not import ``task``)."""
