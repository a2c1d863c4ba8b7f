"""Acceptance: fair dispatch. A consumer never sits on jobs that an idle sibling could start now,
whatever the jobs before them taught it about run times (issue #10, section 1)."""

from __future__ import annotations

import time

import pytest

from harness import Project

pytestmark = pytest.mark.slow

SLOW = 2.0


def _slow_batch(project: Project) -> tuple[float, set[int]]:
    """Enqueue 4 slow jobs; seconds until all four are done, and the pids that ran them."""
    nap = project.app.get_task("nap")
    started = time.monotonic()
    jobs = nap.enqueue_many([(SLOW,) for _ in range(4)])
    pids = {job.result(timeout=30) for job in jobs}
    return time.monotonic() - started, pids


def test_slow_jobs_after_fast_ones_spread_over_idle_processes(project: Project) -> None:
    fresh = project.worker("-c", "2")
    fresh_time, fresh_pids = _slow_batch(project)
    fresh.kill_group()
    assert len(fresh_pids) == 2

    project.worker("-c", "2")
    add = project.app.get_task("add")
    fast = add.enqueue_many([(i, 1) for i in range(30)])
    assert [job.result(timeout=15) for job in fast] == [i + 1 for i in range(30)]
    trained_time, trained_pids = _slow_batch(project)

    assert len(trained_pids) == 2, "the slow jobs ran on one process while the other idled"
    print(f"fresh {fresh_time:.2f}s, after fast jobs {trained_time:.2f}s")
    assert trained_time <= 1.3 * fresh_time, (
        f"4 x {SLOW}s after 30 fast jobs took {trained_time:.2f}s; on a fresh worker {fresh_time:.2f}s")


def test_slow_jobs_queued_behind_fast_ones_are_not_hoarded(project: Project) -> None:
    """The slow jobs wait in the queue right behind the fast ones, so the batch that a consumer
    leases for the fast ones may take slow ones too: it must hand them back to its idle sibling."""
    project.worker("-c", "2")
    add, nap = project.app.get_task("add"), project.app.get_task("nap")
    warm = add.enqueue_many([(i, 1) for i in range(30)])
    for job in warm:
        job.result(timeout=15)

    started = time.monotonic()
    add.enqueue_many([(i, 1) for i in range(30)])
    slow = nap.enqueue_many([(SLOW,) for _ in range(4)])
    pids = {job.result(timeout=30) for job in slow}
    elapsed = time.monotonic() - started

    print(f"30 fast + 4 slow: {elapsed:.2f}s")
    assert len(pids) == 2, "the slow jobs ran on one process while the other idled"
    # Two rounds of two slow jobs, plus a generous allowance for the hand-back and start-up.
    assert elapsed <= 1.3 * 2 * SLOW + 0.5, f"30 fast + 4 x {SLOW}s took {elapsed:.2f}s"
