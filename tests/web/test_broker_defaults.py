"""The web queries' default implementations in the ``Broker`` base class (what a broker without
its own search, change log or stats gets), run through the same contract tests as every broker."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import uuid_utils

# The contract tests, collected here once more with the fixtures below.
from contract.test_web_queries import *  # noqa: F403
from conveyor.brokers import Broker, Message
from conveyor.brokers.memory import MemoryBroker
from conveyor.testing import FakeClock

START = 1_700_000_000.0
PAYLOAD = b'{"args":[],"kwargs":{}}'


class DefaultQueries(MemoryBroker):
    """The memory broker with the base class's queries instead of its own."""

    search_jobs = Broker.search_jobs
    find_by_key = Broker.find_by_key
    stats = Broker.stats
    changes = Broker.changes


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def broker(clock: FakeClock) -> Broker:
    return DefaultQueries(clock=clock)


@pytest.fixture
def make(clock: FakeClock) -> Callable[..., Message]:
    def make(queue: str = "default", task: str = "tests.noop", **fields: Any) -> Message:
        fields.setdefault("created_at", clock())
        return Message(id=str(uuid_utils.uuid7()), task=task, queue=queue, payload=PAYLOAD, **fields)

    return make
