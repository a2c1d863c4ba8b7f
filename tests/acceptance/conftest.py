"""Fixtures of the acceptance suite (the machinery is in ``harness.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Project


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    """A project folder with the tasks module; every worker it started is SIGKILLed at teardown."""
    made = Project(tmp_path, monkeypatch)
    try:
        yield made
    finally:
        made.cleanup()
