"""Fixtures of the ``zmq://`` integration tests (helpers in ``zmq_support``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from zmq_support import Project, free_port, store_url


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The job store of the project: a SQLite file, or a Redis key prefix of its own."""
    return store_url(request.param, tmp_path)


@pytest.fixture
def ports() -> tuple[int, int]:
    """Free local ports: jobs, events."""
    return free_port(), free_port()


@pytest.fixture
def project(tmp_path: Path, store: str, ports: tuple[int, int]) -> Iterator[Project]:
    """A project on ``zmq://127.0.0.1:JOBS?events=tcp://127.0.0.1:EVENTS&resend_after=2``; its
    workers and devices are SIGKILLed at teardown, its Redis keys deleted."""
    jobs, events = ports
    made = Project(tmp_path, f"zmq://127.0.0.1:{jobs}?events=tcp://127.0.0.1:{events}&resend_after=2", store)
    try:
        yield made
    finally:
        made.cleanup()
