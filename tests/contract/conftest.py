"""Fixtures of the broker contract suite: every test in ``tests/contract`` runs against every broker.

A new broker joins the suite by adding one factory to ``BROKERS`` (a server-backed one calls
``conveyor.testing.require_service`` first, so a missing server skips locally and fails in CI).
Every broker gets the same :class:`FakeClock`, so tests move time instead of sleeping.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uuid_utils

from conveyor.brokers import Broker, Message
from conveyor.brokers.memory import MemoryBroker
from conveyor.brokers.sqlite import SQLiteBroker
from conveyor.testing import FakeClock

PAYLOAD = b'{"args":[],"kwargs":{}}'
START = 1_700_000_000.0


def _memory(tmp_path: Path, clock: FakeClock) -> Broker:
    return MemoryBroker(clock=clock)


def _sqlite(tmp_path: Path, clock: FakeClock) -> Broker:
    return SQLiteBroker(f"sqlite:///{tmp_path}/c.db", clock=clock)


BROKERS: dict[str, Callable[[Path, FakeClock], Broker]] = {
    "memory": _memory,
    "sqlite": _sqlite,
}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture(params=list(BROKERS))
def broker(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Iterator[Broker]:
    made = BROKERS[request.param](tmp_path, clock)
    made.open()
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def make(clock: FakeClock) -> Callable[..., Message]:
    """Build a Message: ``make(queue="media", priority=5, key="k", run_at=clock() + 60)``."""

    def make(queue: str = "default", task: str = "tests.noop", **fields: Any) -> Message:
        fields.setdefault("created_at", clock())
        return Message(id=str(uuid_utils.uuid7()), task=task, queue=queue, payload=PAYLOAD, **fields)

    return make
