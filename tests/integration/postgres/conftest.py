"""Fixtures of the PostgreSQL fault tests (helpers in ``pg_support``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pg_support import POSTGRES_URL, Project, require_postgres


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    """A project on the shared server in a migrated schema of its own, dropped at teardown; its
    workers are SIGKILLed first."""
    require_postgres()
    made = Project(tmp_path, POSTGRES_URL).migrate()
    try:
        yield made
    finally:
        made.cleanup()
