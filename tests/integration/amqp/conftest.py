"""Fixtures of the ``amqp://`` integration tests (the machinery is in ``transport_support``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from transport_support import Project, project_of


@pytest.fixture(params=["sqlite", "redis"])
def project(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Project]:
    """A project over ``amqp://`` with a queue prefix of its own, on a SQLite and on a Redis store."""
    yield from project_of(tmp_path, "amqp", request.param)


@pytest.fixture
def redis_project(tmp_path: Path) -> Iterator[Project]:
    """A project over ``amqp://`` on a Redis store (the fault tests)."""
    yield from project_of(tmp_path, "amqp", "redis")
