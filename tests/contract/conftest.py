"""Fixtures of the broker contract suite: every test in ``tests/contract`` runs against every broker.

A new broker joins the suite by adding one factory to ``BROKERS`` (a server-backed one calls
``conveyor.testing.require_service`` first, so a missing server skips locally and fails in CI).
Every broker gets the same :class:`FakeClock`, so tests move time instead of sleeping.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uuid_utils

from conveyor.brokers import Broker, Message
from conveyor.brokers.memory import MemoryBroker
from conveyor.brokers.sqlite import SQLiteBroker
from conveyor.testing import FakeClock, require_service

PAYLOAD = b'{"args":[],"kwargs":{}}'
START = 1_700_000_000.0
REDIS_URL = os.environ.get("CONVEYOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _memory(tmp_path: Path, clock: FakeClock) -> Broker:
    return MemoryBroker(clock=clock)


def _sqlite(tmp_path: Path, clock: FakeClock) -> Broker:
    return SQLiteBroker(f"sqlite:///{tmp_path}/c.db", clock=clock)


def _redis(tmp_path: Path, clock: FakeClock) -> Broker:
    """Database 15 (never 0: the benchmark harness flushes it) and a key prefix of its own per test."""
    require_service(REDIS_URL, "Redis")
    from conveyor.brokers.redis import RedisBroker

    prefix = f"contract-{uuid_utils.uuid7().hex}"
    separator = "&" if "?" in REDIS_URL else "?"
    broker = RedisBroker(f"{REDIS_URL}{separator}prefix={prefix}", clock=clock)
    _CLEANUPS.append(lambda: _drop_keys(REDIS_URL, prefix))
    return broker


def _drop_keys(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        for pattern in (f"{prefix}:*", f"{{{prefix}:*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            for i in range(0, len(keys), 500):
                client.delete(*keys[i:i + 500])
    finally:
        client.close()


_CLEANUPS: list[Callable[[], None]] = []

BROKERS: dict[str, Callable[[Path, FakeClock], Broker]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "redis": _redis,
}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture(params=list(BROKERS))
def broker(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Iterator[Broker]:
    made = BROKERS[request.param](tmp_path, clock)
    try:
        made.open()
        yield made
    finally:
        made.close()
        while _CLEANUPS:
            _CLEANUPS.pop()()


@pytest.fixture
def make(clock: FakeClock) -> Callable[..., Message]:
    """Build a Message: ``make(queue="media", priority=5, key="k", run_at=clock() + 60)``."""

    def make(queue: str = "default", task: str = "tests.noop", **fields: Any) -> Message:
        fields.setdefault("created_at", clock())
        return Message(id=str(uuid_utils.uuid7()), task=task, queue=queue, payload=PAYLOAD, **fields)

    return make
