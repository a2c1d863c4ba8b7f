"""Acceptance: killed pool processes, SIGTERM and a second SIGTERM, recycling — no job is lost."""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter

import pytest

from harness import Project, wait_for

pytestmark = pytest.mark.slow


def test_job_of_a_pool_process_killed_mid_job_runs_again_and_completes(project: Project) -> None:
    worker = project.worker("-c", "1")
    job = project.app.enqueue("crash_once")
    first = wait_for(lambda: project.lines("crash_once.log"), 10, "the first attempt to start")
    attempt, pid = first[0].split()
    assert attempt == "1"

    os.kill(int(pid), signal.SIGKILL)

    assert job.result(timeout=15) != int(pid)
    record = job.refresh().record
    assert record.state == "succeeded"
    assert record.attempts == 2
    assert [h["state"] for h in record.history] == ["lost"]
    assert record.history[0]["error"]["type"] == "WorkerLost"
    worker.wait_log("killed by signal 9")
    assert worker.alive()


def test_no_job_is_lost_when_a_pool_process_is_killed_during_a_drain(project: Project) -> None:
    worker = project.worker("-c", "2")
    jobs = project.app.get_task("ledger").enqueue_many([(i,) for i in range(200)])
    ids = {job.id for job in jobs}
    wait_for(lambda: len(project.lines("ledger.log")) >= 30, 15, "30 jobs to run")
    victim = worker.children()[0]

    victim.send_signal(signal.SIGKILL)
    killed_at = project.counts().get("succeeded", 0)

    wait_for(lambda: project.counts().get("succeeded", 0) == 200, 30, "all 200 jobs to succeed")
    assert killed_at < 200, "the kill came after the drain"
    assert project.counts() == {"succeeded": 200}
    seen = project.lines("ledger.log")
    assert ids - set(seen) == set(), "jobs lost"
    assert set(seen) <= ids
    # The killed process held leases and they were delivered again (all 200 succeeded, none lost).
    # Only the job it was executing counts as an attempt: killed between two jobs, it held none.
    log = worker.wait_log("killed by signal 9")
    handed_back = re.search(r"died \(killed by signal 9\); (\d+) job\(s\) handed back", log)
    assert handed_back and int(handed_back[1]) >= 1, "the killed process held no leases"
    rerun = [r for r in (project.app.broker.get(i) for i in ids) if r and r.attempts > 1]
    assert len(rerun) <= 1, "only the job being executed counts the lost delivery"
    assert victim.pid not in [c.pid for c in worker.children()]
    assert len(worker.children()) == 2


def test_sigterm_finishes_the_running_job_hands_back_the_rest_and_exits_0(project: Project) -> None:
    # Quick jobs first: once the consumer has seen how short they are it leases the rest in one
    # batch. Fair dispatch hands back the jobs behind the slow one at once (an idle sibling could
    # start them), so they are not held when SIGTERM comes.
    quick = [project.app.enqueue("add", [i, 1], priority=9) for i in range(5)]
    slow = project.app.enqueue("nap", [1.5], priority=5)
    waiting = [project.app.enqueue("add", [i, i]) for i in range(3)]
    worker = project.worker("-c", "1", "--grace", "5")
    project.wait_state(slow.id, "running", timeout=10)
    wait_for(lambda: all(project.app.broker.get(job.id).consumer is None for job in waiting), 1.0,
             "the jobs behind the slow one to be handed back")

    sent = time.monotonic()
    worker.signal(signal.SIGTERM)
    code = worker.wait_exit(10)

    assert code == 0
    assert time.monotonic() - sent < 5
    record = slow.refresh().record
    assert record.state == "succeeded", record
    assert [job.refresh().record.state for job in quick] == ["succeeded"] * 5
    for job in waiting:
        r = job.refresh().record
        assert (r.state, r.attempts, r.consumer, r.history) == ("queued", 0, None, [])
    assert "finishing running jobs" in worker.stderr()
    assert "Traceback" not in worker.stderr()


def test_sigterm_hands_back_the_leased_jobs_not_started_uncounted(project: Project) -> None:
    jobs = project.app.get_task("ledger").enqueue_many([(i,) for i in range(300)])  # 10 ms each
    worker = project.worker("-c", "1", "--grace", "5")
    wait_for(lambda: len(project.lines("ledger.log")) >= 40, 15, "40 jobs to run")  # now leased in batches

    worker.signal(signal.SIGTERM)
    assert worker.wait_exit(10) == 0

    records = [project.app.broker.get(job.id) for job in jobs]
    ran = set(project.lines("ledger.log"))
    assert all(r is not None for r in records)
    assert {r.id for r in records if r.state == "succeeded"} == ran
    rest = [r for r in records if r.state != "succeeded"]
    assert rest, "the drain ended before SIGTERM"
    assert {(r.state, r.attempts, r.consumer) for r in rest} == {("queued", 0, None)}
    assert "Traceback" not in worker.stderr()


def test_ctrl_c_to_the_whole_process_group_is_a_graceful_stop(project: Project) -> None:
    worker = project.worker("-c", "2", "--grace", "5")
    job = project.app.enqueue("nap", [1.0])
    project.wait_state(job.id, "running", timeout=10)

    os.killpg(worker.pid, signal.SIGINT)  # what a terminal does: pool processes get it too, and ignore it

    assert worker.wait_exit(10) == 0
    assert job.refresh().record.state == "succeeded"
    assert "Traceback" not in worker.stderr()


def test_second_sigterm_stops_at_once_and_hands_the_running_job_back(project: Project) -> None:
    worker = project.worker("-c", "1", "--grace", "30")
    job = project.app.enqueue("nap", [60])
    project.wait_state(job.id, "running", timeout=10)

    sent = time.monotonic()
    worker.signal(signal.SIGTERM)
    worker.wait_log("finishing running jobs")
    worker.signal(signal.SIGTERM)
    code = worker.wait_exit(10)

    assert time.monotonic() - sent < 10
    assert code == 0
    record = job.refresh().record
    # Interrupted by the operator, not by its own fault: back in the queue, the attempt not charged.
    assert (record.state, record.consumer, record.attempts, record.history) == ("queued", None, 0, [])
    assert "stopping now" in worker.stderr()


def test_pool_processes_are_recycled_after_max_jobs_per_child(project: Project) -> None:
    project.worker("-c", "2", "--max-jobs-per-child", "5")
    jobs = project.app.get_task("whoami").enqueue_many([() for _ in range(30)])

    pids = Counter(job.result(timeout=30) for job in jobs)

    assert sum(pids.values()) == 30
    assert len(pids) > 2
    assert max(pids.values()) <= 5, pids
    assert project.counts() == {"succeeded": 30}


def test_a_finished_job_is_acked_while_the_next_one_still_runs(project: Project) -> None:
    quick = project.app.enqueue("add", [1, 2], priority=9)
    slow = project.app.enqueue("nap", [4])
    project.worker("-c", "1")  # one fetch leases both

    project.wait_state(slow.id, "running", timeout=10)

    assert project.wait_state(quick.id, "succeeded", timeout=1.5).state == "succeeded"


def test_jobs_fetched_ahead_by_a_process_that_dies_are_not_charged_for_its_death(project: Project) -> None:
    worker = project.worker("-c", "1")
    warm = [project.app.enqueue("add", [i, 1]) for i in range(10)]  # short jobs: the consumer leases in batches
    for job in warm:
        project.wait_state(job.id, "succeeded", timeout=15)
    app = project.app
    crash = app.get_task("crash_now").message([], {}, {"priority": 9, "retries": 0})
    innocent = [app.get_task("add").message([i, i], {}, {"retries": 0}) for i in range(5)]
    app.broker.enqueue([crash, *innocent])  # one transaction: the next fetch leases them together

    failed = project.wait_state(crash.id, "failed", timeout=20)
    assert failed.error is not None and failed.error["type"] == "WorkerLost"
    for msg in innocent:
        r = project.wait_state(msg.id, "succeeded", timeout=20)
        assert (r.attempts, r.history) == (1, []), r
    assert len(project.lines("crash_now.log")) == 1
    worker.wait_log("killed by signal 9")
