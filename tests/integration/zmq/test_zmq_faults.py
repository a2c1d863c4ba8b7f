"""Faults of ``zmq://`` with real worker processes: pool processes SIGKILLed every second while
5,000 jobs drain, a whole worker SIGKILLed while holding pushed deliveries (a surviving worker
resends them from the store within the documented time), and malformed frames pushed at a worker."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
import zmq
from zmq_support import Project, free_port

from conveyor.testing import wait_for

#: The recovery bound of docs/brokers/zmq.md for these URLs (resend_after=2, --lease 2): an
#: unclaimed delivery is resent within resend_after + 1 s of the survivor going idle, a claimed job
#: returns within lease + 1 s (maintenance runs every second).
RESEND_AFTER = 2.0
LEASE = 2.0


@pytest.mark.timeout(240)
def test_sigkill_storm_of_pool_processes_loses_no_job(project: Project) -> None:
    """A pool process is SIGKILLed every second while 5,000 jobs drain (while at least two run: the
    supervisor restarts crashed members with back-off, and the drain must go on meanwhile)."""
    worker = project.worker("-c", "3", consumers=3)
    work = project.app.tasks["work"]
    job_ids = [j.id for i in range(0, 5000, 500) for j in work.enqueue_many([(k, 0.004) for k in range(i, i + 500)])]
    rng = random.Random(13)
    kills = 0
    started = time.monotonic()
    while project.succeeded() < len(job_ids):
        time.sleep(1.0)
        children = worker.children()
        if len(children) >= 2 and project.succeeded() < len(job_ids):
            rng.choice(children).kill()
            kills += 1
        assert time.monotonic() - started < 200, f"the drain does not end ({project.succeeded()} done)"
    print(f"storm: {kills} pool processes killed in {time.monotonic() - started:.1f}s")
    assert kills >= 3, "the jobs finished before the pool processes could be killed"
    report = project.ledger_report(job_ids)
    assert report["lost"] == [] and report["overlapping"] == []
    assert project.succeeded() == len(job_ids)
    assert worker.alive()


@pytest.mark.parametrize("store", ["redis", "sqlite"], indirect=True)
def test_jobs_a_dead_worker_held_are_resent_within_the_recovery_time(project: Project) -> None:
    first, second = free_port(), free_port()
    pushes = f"zmq://127.0.0.1:{first},127.0.0.1:{second}"
    options = f"resend_after={RESEND_AFTER:g}"
    producer = Project(project.folder, f"{pushes}?{options}", project.store)
    try:
        doomed = project.worker("-c", "1", url=f"{pushes}?bind=tcp://127.0.0.1:{first}&{options}", consumers=1)
        work = producer.app.tasks["work"]
        job_ids = [j.id for i in range(0, 120, 20) for j in work.enqueue_many([(k, 0.05) for k in range(i, i + 20)])]
        wait_for(lambda: len(project.ledger()) >= 4, 20.0, "the first worker to start running jobs")
        survivor = project.worker("-c", "2", url=f"{pushes}?bind=tcp://127.0.0.1:{second}&{options}")
        doomed.kill_group()  # the supervisor, its hub and its pool: every buffered delivery is gone
        killed_at = time.monotonic()
        held = len(job_ids) - producer.succeeded()
        assert held > 50, "the first worker had not held many deliveries"
        run_time = held * 0.05 / 2
        bound = max(RESEND_AFTER, LEASE) + 1.0 + run_time
        wait_for(lambda: producer.succeeded() == len(job_ids), bound + 10.0, "every job to succeed")
        elapsed = time.monotonic() - killed_at
        print(f"recovery: {held} held jobs ran {elapsed:.2f}s after the kill (bound {bound:.2f}s)")
        assert elapsed <= bound + 3.0, f"recovery took {elapsed:.1f}s, documented bound {bound:.1f}s"
        assert "whose delivery was lost" in survivor.stderr()
        report = project.ledger_report(job_ids)
        assert report["lost"] == [] and report["overlapping"] == []
    finally:
        producer.app.close()


@pytest.mark.parametrize("store", ["sqlite", "redis"], indirect=True)
def test_foreign_job_messages_run_and_malformed_pushes_are_failed_with_the_reason(
        project: Project, ports: tuple[int, int]) -> None:
    """A plain PUSH socket (what a client in any language opens) pushes a job message of the wire
    format, then pushes that do not fit: the first runs; each of the others is recorded as a
    failed job with its reason; a well-formed delivery of no job is dropped; the worker goes on."""
    worker = project.worker("-c", "2")
    sock: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.connect(f"tcp://127.0.0.1:{ports[0]}")
    poison: list[list[bytes]] = [
        [b"not json at all"], [b"{\"id\": 1}"], [b"[1, 2, 3]"], [b"[[\"\", \"default\"]]"],
        [b"[[\"a\", \"default\", \"high\", 0]]"], [b"[]", b"a second frame"], [b"\xff\xfe" * 1_000_000],
    ]
    try:
        sock.send(b'{"task": "add", "args": [2, 3], "id": "from-another-language"}')
        sock.send(b'[["no-such-job", "default"]]')  # well formed, names no job: dropped at claim
        for frames in poison:
            sock.send_multipart(frames)
        add = project.app.tasks["add"]
        jobs = [add.enqueue(i, i) for i in range(20)]
        assert [j.result(timeout=20) for j in jobs] == [2 * i for i in range(20)]
        assert project.app.get_job("from-another-language").result(timeout=20) == 5
        wait_for(lambda: len(project.app.store.list_jobs(state="failed", limit=50).jobs) >= len(poison), 20.0,
                 "every malformed push to be failed")
        failed = project.app.store.list_jobs(state="failed", limit=50).jobs
    finally:
        sock.close()
    assert len(failed) == len(poison)
    assert sorted(r.error["type"] for r in failed if r.error) == ["MalformedMessage"] * 6 + ["PayloadTooLarge"]
    assert worker.alive()
