"""Acceptance: what happens to jobs that fail, time out or arrive malformed, with a real worker."""

from __future__ import annotations

import sqlite3
import time

import orjson
import pytest
import uuid_utils

from harness import Project, wait_for

pytestmark = pytest.mark.slow


def test_failing_task_is_retried_per_policy_then_failed_with_traceback(project: Project) -> None:
    project.worker("-c", "1")
    job = project.app.enqueue("boom")

    record = project.wait_state(job.id, "failed", timeout=15)

    assert record.attempts == 3
    assert record.max_attempts == 3
    assert record.error["type"] == "ValueError"
    assert record.error["message"] == "boom on purpose"
    assert "Traceback (most recent call last)" in record.error["traceback"]
    assert 'raise ValueError("boom on purpose")' in record.error["traceback"]
    assert [(h["attempt"], h["state"]) for h in record.history] == [(1, "scheduled"), (2, "scheduled"),
                                                                     (3, "failed")]
    assert all(h["error"]["type"] == "ValueError" for h in record.history)
    assert [line.split()[0] for line in project.lines("boom.log")] == ["1", "2", "3"]


def test_hung_task_is_killed_after_its_timeout_and_the_worker_goes_on(project: Project) -> None:
    worker = project.worker("-c", "1", env={"CONVEYOR_KILL_AFTER": "1"})
    (child,) = worker.children()
    job = project.app.enqueue("hang")

    started = time.monotonic()
    record = project.wait_state(job.id, "failed", timeout=10)

    assert time.monotonic() - started < 6
    assert record.error["type"] == "TimeoutError"
    assert "hard time limit" in record.error["message"]
    assert "soft timeout ignored" in project.lines("hang.log")  # the soft TimeoutError came first
    worker.wait_log("killing pool member")
    assert child.pid not in [c.pid for c in worker.children()]
    later = project.app.enqueue("whoami")
    assert later.result(timeout=10) != child.pid
    assert worker.alive()


def test_soft_timeout_raises_timeout_error_inside_the_task(project: Project) -> None:
    worker = project.worker("-c", "1")  # kill_after is 5 s by default: a hard kill would be late
    (child,) = worker.children()
    job = project.app.enqueue("soft", [5.0])

    record = project.wait_state(job.id, "failed", timeout=4)

    assert record.error["type"] == "TimeoutError"
    assert "hard time limit" not in record.error["message"]
    assert "time.sleep(seconds)" in record.error["traceback"]
    assert record.finished_at - record.started_at < 1.5
    assert project.lines("soft.log") == [str(child.pid), "TimeoutError"]
    # The same pool process (not a replacement) runs the next job.
    assert project.app.enqueue("whoami").result(timeout=10) == child.pid
    assert "killing pool member" not in worker.stderr()


def _insert_raw(db: str, task: str, payload: bytes) -> str:
    job_id = str(uuid_utils.uuid7())
    now = time.time()
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO conveyor_jobs (id, task, queue, state, payload, max_attempts, created_at, run_at, "
            "updated_at) VALUES (?, ?, 'default', 'queued', ?, 3, ?, ?, ?)",
            (job_id, task, payload, now, now, now))
    conn.close()
    return job_id


def test_malformed_messages_in_the_store_fail_with_a_reason_and_the_worker_survives(project: Project) -> None:
    project.app  # noqa: B018 - creates the schema
    db = str(project.db)
    bad_json = _insert_raw(db, "add", b"not json")
    not_an_object = _insert_raw(db, "add", b"[1, 2]")
    unknown = _insert_raw(db, "no.such.task", orjson.dumps({"args": [], "kwargs": {}}))
    misfit = _insert_raw(db, "add", orjson.dumps({"args": ["one"], "kwargs": {"c": 3}}))

    # A job for an unknown task fails at once here (by default it waits for a worker that has it).
    worker = project.worker("-c", "1", env={"CONVEYOR_UNKNOWN_TASK_TIMEOUT": "0"})
    (child,) = worker.children()

    expected = {bad_json: "MalformedMessage", not_an_object: "MalformedMessage", unknown: "UnknownTask",
                misfit: "InvalidArguments"}
    for job_id, reason in expected.items():
        record = project.wait_state(job_id, "failed", timeout=10)
        assert record.error["type"] == reason, record.error
        assert record.error["message"]
        assert record.attempts == 1  # not retried: it can never succeed
    assert "'no.such.task'" in project.app.broker.get(unknown).error["message"]
    assert "'a'" in project.app.broker.get(misfit).error["message"]

    assert project.app.enqueue("add", [2, 3]).result(timeout=10) == 5
    assert worker.alive()
    assert [c.pid for c in worker.children()] == [child.pid]


def test_cancelling_a_running_job_ends_it_cancelled(project: Project) -> None:
    project.worker("-c", "1")
    job = project.app.enqueue("until_cancelled")
    project.wait_state(job.id, "running", timeout=10)

    assert job.cancel() == "running"  # asked to stop: the task sees it at its next check

    record = project.wait_state(job.id, "cancelled", "succeeded", "failed", timeout=10)
    assert record.state == "cancelled"
    assert project.lines("cancel.log") == ["saw cancellation"]
    assert record.finished_at is not None
    wait_for(lambda: project.app.enqueue("add", [1, 1]).result(timeout=10) == 2, 10, "a later job")
