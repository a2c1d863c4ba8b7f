"""Fixtures of the ``stomp://`` integration tests (the machinery is in ``../amqp/transport_support``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "amqp"))

from transport_support import Project, project_of


@pytest.fixture(params=["sqlite", "redis"])
def project(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Project]:
    """A project over ``stomp://`` with a destination prefix of its own, on a SQLite and a Redis store."""
    yield from project_of(tmp_path, "stomp", request.param)


@pytest.fixture
def redis_project(tmp_path: Path) -> Iterator[Project]:
    """A project over ``stomp://`` on a Redis store (the fault tests)."""
    yield from project_of(tmp_path, "stomp", "redis")
