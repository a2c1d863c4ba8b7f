"""Acceptance: the thread and asyncio pools run jobs (the process pool is covered everywhere else)."""

from __future__ import annotations

import time

import pytest

from harness import Project

pytestmark = pytest.mark.slow


def test_thread_pool_runs_jobs_in_the_worker_process(project: Project) -> None:
    worker = project.worker("--pool", "thread", "-c", "4")
    naps = project.app.get_task("nap").enqueue_many([(0.2,) for _ in range(8)])
    sums = project.app.get_task("add").enqueue_many([(i, 1) for i in range(10)])

    started = time.monotonic()
    assert [job.result(timeout=15) for job in naps] == [worker.pid] * 8  # threads: no child processes
    assert time.monotonic() - started < 8 * 0.2  # four at a time
    assert [job.result(timeout=15) for job in sums] == [i + 1 for i in range(10)]
    assert worker.children() == []


def test_async_pool_runs_async_tasks_concurrently(project: Project) -> None:
    project.worker("--pool", "async", "-c", "10")
    started = time.monotonic()
    jobs = project.app.get_task("async_nap").enqueue_many([(0.3,) for _ in range(20)])

    starts = [job.result(timeout=15) for job in jobs]

    elapsed = time.monotonic() - started
    assert elapsed < 20 * 0.3 / 2, f"20 jobs of 0.3s took {elapsed:.1f}s"
    assert max(starts) - min(starts) < 20 * 0.3 / 2
    assert project.counts() == {"succeeded": 20}
