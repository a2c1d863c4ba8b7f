"""Acceptance: a job's stored start is when its task really began, written with the worker's
batched heartbeats, and a leased job not yet started reads as reserved (issue #10, section 2)."""

from __future__ import annotations

import time

import pytest

from conveyor.presentation import display_state
from harness import Project

pytestmark = pytest.mark.slow


def test_started_at_is_when_the_task_began_and_is_known_while_it_runs(project: Project) -> None:
    project.worker("-c", "1")
    nap = project.app.get_task("stamped_nap")
    first, second = nap.enqueue(1.5), nap.enqueue(0.2)

    running = project.wait_state(first.id, "running")
    # While it runs, the start is written with the next heartbeat batch (every 0.1 s).
    deadline = time.monotonic() + 1.0
    while running.started_at is None and time.monotonic() < deadline:
        time.sleep(0.05)
        running = project.app.broker.get(first.id)
    assert running.started_at is not None and display_state(running) == "running"

    behind = project.app.broker.get(second.id)
    assert behind.state in ("queued", "running") and behind.started_at is None
    assert display_state(behind) in ("queued", "reserved")  # never "running" before it started

    real_first = first.result(timeout=10)
    real_second = second.result(timeout=10)
    for job, real in ((first, real_first), (second, real_second)):
        record = project.app.broker.get(job.id)
        assert record.started_at == pytest.approx(real, abs=0.05), (record.started_at, real)
    assert project.app.broker.get(second.id).started_at >= real_first + 1.5 - 0.05
