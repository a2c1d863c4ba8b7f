"""Fixtures of the unit layer: a fresh ``memory://`` app per test, isolated from the environment.

Every test runs in an empty folder with no ``CONVEYOR_*`` variables, so a developer's settings
never leak in. ``work`` runs the next ready job the way a worker does: fetch a lease, execute it
with the real :class:`~conveyor.worker.runner.Runner`, ack the outcome.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.brokers import Lease, Outcome
from conveyor.worker.runner import Runner

CONSUMER = "unit-consumer"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("CONVEYOR_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture
def app() -> Iterator[Conveyor]:
    made = Conveyor("memory://")
    yield made
    made.close()


@pytest.fixture
def runner(app: Conveyor) -> Runner:
    return Runner(app, app.broker, app.settings, CONSUMER)


@pytest.fixture
def lease_next(app: Conveyor) -> Callable[[], Lease]:
    """Lease the one next ready job (fails the test if there is none)."""

    def lease_next() -> Lease:
        leases = app.broker.fetch(app.queues, 1, 30.0, CONSUMER)
        assert len(leases) == 1, "expected a ready job"
        return leases[0]

    return lease_next


@pytest.fixture
def work(app: Conveyor, runner: Runner, lease_next: Callable[[], Lease]) -> Callable[[], Outcome]:
    """Run the next ready job to its outcome and ack it; returns the outcome."""

    def work() -> Outcome:
        outcome = runner.execute(lease_next())
        assert app.broker.ack([outcome]) == [True]
        return outcome

    return work
