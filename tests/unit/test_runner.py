"""Runner.execute: one leased job to its outcome, on the memory broker. It never raises for a job."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import uuid_utils

from conveyor import Backoff, Conveyor, JobCancelled, Retry, current_job
from conveyor.brokers import Lease, Message, Outcome
from conveyor.testing import FakeClock
from conveyor.worker.runner import Runner


def put(app: Conveyor, task: str, payload: bytes, max_attempts: int = 3) -> str:
    """Put a raw message in the broker, as a foreign or older producer might have."""
    (job_id,) = app.broker.enqueue([Message(id=str(uuid_utils.uuid7()), task=task, queue="default",
                                            payload=payload, max_attempts=max_attempts, created_at=time.time())])
    return job_id


def test_success(app: Conveyor, runner: Runner, lease_next: Callable[[], Lease]) -> None:
    @app.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    job = add.enqueue(2, b=3)
    lease = lease_next()
    before = time.time()
    outcome = runner.execute(lease)
    assert (outcome.job_id, outcome.token, outcome.state) == (job.id, lease.token, "succeeded")
    assert outcome.result == b"5"
    assert outcome.error is None
    assert outcome.started_at is not None and outcome.finished_at is not None
    assert before <= outcome.started_at <= outcome.finished_at <= time.time()
    assert (runner.processed, runner.failed) == (1, 0)
    assert runner.running == {}
    assert app.broker.ack([outcome]) == [True]
    assert job.result() == 5


def test_exception_with_attempts_left_is_scheduled_per_backoff(
    app: Conveyor, work: Callable[[], Outcome]
) -> None:
    @app.task(name="flaky", retries=2, backoff=Backoff(base=10, factor=3, jitter=0))
    def flaky() -> None:
        raise ConnectionError("reset by peer")

    job = flaky.enqueue()
    outcome = work()
    assert outcome.state == "scheduled"
    assert outcome.finished_at is not None and outcome.run_at is not None
    assert outcome.run_at - outcome.finished_at == pytest.approx(10)
    assert outcome.error is not None
    assert (outcome.error["type"], outcome.error["message"]) == ("ConnectionError", "reset by peer")
    job.refresh()
    assert (job.record.state, job.attempts) == ("scheduled", 1)
    assert job.record.run_at == outcome.run_at
    assert job.history[0]["error"]["type"] == "ConnectionError"


def test_backoff_grows_per_attempt_then_fails_with_traceback(
    app: Conveyor, work: Callable[[], Outcome]
) -> None:
    clock = FakeClock()
    app.broker.clock = clock  # move the broker's time instead of sleeping

    @app.task(name="flaky", retries=2, backoff=Backoff(base=10, factor=3, jitter=0))
    def flaky() -> None:
        raise ConnectionError(f"attempt {current_job().attempt}")

    job = flaky.enqueue()
    delays = []
    for _ in range(2):
        outcome = work()
        assert outcome.state == "scheduled"
        assert outcome.run_at is not None and outcome.finished_at is not None
        delays.append(round(outcome.run_at - outcome.finished_at, 3))
        assert app.broker.fetch(["default"], 1, 30.0, "c") == []  # not due yet
        clock.now = outcome.run_at + 0.001
    assert delays == [10, 30]

    last = work()
    assert last.state == "failed"
    assert last.error is not None
    assert last.error["message"] == "attempt 3"
    assert 'raise ConnectionError(f"attempt' in last.error["traceback"]
    job.refresh()
    assert (job.record.state, job.attempts, job.max_attempts) == ("failed", 3, 3)
    assert [h["error"]["message"] for h in job.history] == ["attempt 1", "attempt 2", "attempt 3"]


def test_backoff_callable_gets_the_attempt_number(app: Conveyor, work: Callable[[], Outcome]) -> None:
    @app.task(name="flaky", retries=1, backoff=lambda attempt: attempt * 100.0)
    def flaky() -> None:
        raise RuntimeError("no")

    flaky.enqueue()
    outcome = work()
    assert outcome.run_at is not None and outcome.finished_at is not None
    assert outcome.run_at - outcome.finished_at == pytest.approx(100)


def test_last_attempt_fails_with_traceback(app: Conveyor, work: Callable[[], Outcome]) -> None:
    @app.task(name="doomed", retries=0)
    def doomed(n: int) -> None:
        raise KeyError(n)

    job = doomed.enqueue(4)
    outcome = work()
    assert outcome.state == "failed"
    assert outcome.run_at is None
    assert outcome.error is not None
    assert (outcome.error["type"], outcome.error["message"]) == ("KeyError", "4")
    assert outcome.error["traceback"].startswith("Traceback (most recent call last):")
    assert "raise KeyError(n)" in outcome.error["traceback"]
    assert job.status == "failed"


def test_retry_exception_schedules_at_its_delay(app: Conveyor, work: Callable[[], Outcome]) -> None:
    @app.task(name="poll", retries=3)
    def poll() -> None:
        raise Retry(delay=5, reason="not ready")

    job = poll.enqueue()
    outcome = work()
    assert outcome.state == "scheduled"
    assert outcome.run_at is not None and outcome.finished_at is not None
    assert outcome.run_at - outcome.finished_at == pytest.approx(5)
    assert outcome.error is not None
    assert (outcome.error["type"], outcome.error["message"]) == ("Retry", "not ready")
    assert job.status == "scheduled"


def test_retry_without_delay_uses_backoff_and_counts_attempts(
    app: Conveyor, work: Callable[[], Outcome]
) -> None:
    attempts: list[int] = []

    @app.task(name="poll", retries=2, backoff=lambda attempt: 0.0)
    def poll() -> str:
        attempts.append(current_job().attempt)
        if len(attempts) < 3:
            raise Retry()
        return "ready"

    job = poll.enqueue()
    assert [work().state for _ in range(3)] == ["scheduled", "scheduled", "succeeded"]
    assert attempts == [1, 2, 3]
    assert job.result() == "ready"


def test_unknown_task_fails(app: Conveyor, runner: Runner, work: Callable[[], Outcome]) -> None:
    runner.settings = runner.settings.replace(unknown_task_timeout=0)  # no wait for a worker that has it
    job_id = put(app, "nowhere.ghost", b'{"args":[],"kwargs":{}}')
    outcome = work()
    assert (outcome.job_id, outcome.state) == (job_id, "failed")
    assert outcome.error is not None
    assert outcome.error["type"] == "UnknownTask"
    assert "'nowhere.ghost'" in outcome.error["message"]
    assert app.get_job(job_id).status == "failed"  # with attempts left: not retryable


def test_unknown_task_is_handed_back_uncounted_for_a_worker_that_has_it(
    app: Conveyor, runner: Runner, lease_next: Callable[[], Lease]
) -> None:
    job_id = put(app, "other_app.resize", b'{"args":[],"kwargs":{}}')
    before = time.time()
    outcome = runner.execute(lease_next())
    assert outcome.state == "queued"  # handed back, not failed
    assert outcome.run_at is not None and before + 0.4 <= outcome.run_at <= time.time() + 0.6  # back-off
    assert outcome.error is not None and outcome.error["type"] == "UnknownTask"
    assert outcome.error["refused_by"] == [runner.consumer_id]
    assert runner.failed == 0
    assert app.broker.ack([outcome]) == [True]
    record = app.broker.get(job_id)
    assert record is not None
    assert (record.state, record.attempts) == ("scheduled", 0)  # uncounted

    # A worker that has the task takes it once the back-off has passed, and runs it normally.
    other = Conveyor("memory://")  # only its task registry is used: the runner gets app's broker

    @other.task(name="other_app.resize")
    def resize() -> str:
        return "done"

    time.sleep(max(0.0, outcome.run_at - time.time()) + 0.05)
    app.broker.recover()
    (lease,) = app.broker.fetch(["default"], 1, 30.0, "other-worker")
    assert lease.attempt == 1
    done = Runner(other, app.broker, other.settings, "other-worker").execute(lease)
    assert done.state == "succeeded"
    assert app.broker.ack([done]) == [True]
    assert app.get_job(job_id).result() == "done"


def test_unknown_task_fails_when_no_worker_claims_it_in_time_naming_the_refusers(
    app: Conveyor, runner: Runner, lease_next: Callable[[], Lease]
) -> None:
    runner.settings = runner.settings.replace(unknown_task_timeout=0.3)
    job_id = put(app, "other_app.resize", b'{"args":[],"kwargs":{}}')
    first = runner.execute(lease_next())
    assert first.state == "queued" and first.run_at is not None
    assert app.broker.ack([first]) == [True]
    time.sleep(max(0.0, first.run_at - time.time()) + 0.05)  # at most the timeout: the run_at is capped
    app.broker.recover()
    second_runner = Runner(app, app.broker, runner.settings, "worker-b")
    second = second_runner.execute(lease_next())
    assert second.state == "failed"
    assert second.error is not None and second.error["type"] == "UnknownTask"
    assert second.error["refused_by"] == [runner.consumer_id, "worker-b"]
    assert runner.consumer_id in second.error["message"] and "worker-b" in second.error["message"]
    assert "'other_app.resize'" in second.error["message"]
    assert app.broker.ack([second]) == [True]
    assert app.get_job(job_id).status == "failed"


@pytest.mark.parametrize("payload", [b"{not json", b"[1, 2]", b'{"args": "x"}', b'{"kwargs": [1]}', b""])
def test_malformed_payload_fails(app: Conveyor, work: Callable[[], Outcome], payload: bytes) -> None:
    @app.task(name="echo")
    def echo(text: str = "") -> str:
        return text

    put(app, "echo", payload)
    outcome = work()
    assert outcome.state == "failed"
    assert outcome.error is not None
    assert outcome.error["type"] == "MalformedMessage"


def test_args_that_no_longer_fit_fail(app: Conveyor, work: Callable[[], Outcome]) -> None:
    @app.task(name="resize")
    def resize(path: str, width: int) -> None:
        pass

    put(app, "resize", orjson.dumps({"args": [1], "kwargs": {"height": 3}}))
    outcome = work()
    assert outcome.state == "failed"
    assert outcome.error is not None
    assert outcome.error["type"] == "InvalidArguments"
    assert "argument 'path' (expected str)" in outcome.error["message"]
    assert "'width'" in outcome.error["message"]


def test_runner_goes_on_after_bad_jobs(app: Conveyor, runner: Runner, work: Callable[[], Outcome]) -> None:
    runner.settings = runner.settings.replace(unknown_task_timeout=0)

    @app.task(name="ok")
    def ok() -> int:
        return 1

    put(app, "nowhere", b"{}")
    put(app, "ok", b"garbage")
    job = ok.enqueue()
    assert [work().state for _ in range(3)] == ["failed", "failed", "succeeded"]
    assert (runner.processed, runner.failed) == (1, 2)
    assert job.result() == 1


def test_current_job_inside_a_task(app: Conveyor, work: Callable[[], Outcome]) -> None:
    seen: dict[str, Any] = {}

    @app.task(name="encode", retries=4, queue="media")
    def encode() -> None:
        job = current_job()
        seen.update(id=job.id, task=job.task, queue=job.queue, attempt=job.attempt,
                    max_attempts=job.max_attempts, cancelled=job.cancelled, last=job.is_last_attempt)
        job.progress(0.5, "encoding")
        record = app.broker.get(job.id)
        assert record is not None
        seen["stored"] = (record.progress, record.progress_message)
        with pytest.raises(ValueError, match=r"within 0\.\.1"):
            job.progress(1.5)

    job = encode.enqueue()
    assert work().state == "succeeded"
    assert seen == {"id": job.id, "task": "encode", "queue": "media", "attempt": 1, "max_attempts": 5,
                    "cancelled": False, "last": False, "stored": (0.5, "encoding")}
    job.refresh()
    assert (job.progress, job.progress_message) == (0.5, "encoding")


def test_throttled_progress_is_written_when_the_job_ends(app: Conveyor, work: Callable[[], Outcome]) -> None:
    @app.task(name="steps")
    def steps() -> None:
        for i in range(1, 5):
            current_job().progress(i / 4, f"step {i}")

    job = steps.enqueue()
    work()
    job.refresh()
    assert (job.progress, job.progress_message) == (1.0, "step 4")


def test_cancelled_flag_seen_by_a_running_task(
    app: Conveyor, runner: Runner, lease_next: Callable[[], Lease]
) -> None:
    seen: list[bool] = []

    @app.task(name="long")
    def long() -> None:
        job = current_job()
        seen.append(job.cancelled)
        app.get_job(job.id).cancel()  # someone else asks to stop
        runner.beat()  # the heartbeat learns it
        seen.append(job.cancelled)
        if job.cancelled:
            raise RuntimeError("stopped on request")

    job = long.enqueue()
    lease = lease_next()
    runner.held[lease.job_id] = lease
    outcome = runner.execute(lease)
    assert seen == [False, True]
    assert outcome.state == "cancelled"
    assert app.broker.ack([outcome]) == [True]
    with pytest.raises(JobCancelled, match="stopped on request"):
        job.result()


def test_current_job_outside_a_task_raises() -> None:
    with pytest.raises(RuntimeError, match="only available inside a task"):
        current_job()


def test_current_job_is_reset_after_the_task(app: Conveyor, work: Callable[[], Outcome]) -> None:
    @app.task(name="boom", retries=0)
    def boom() -> None:
        raise ValueError("x")

    boom.enqueue()
    work()
    with pytest.raises(RuntimeError):
        current_job()


def test_async_task_runs(app: Conveyor, work: Callable[[], Outcome]) -> None:
    @app.task(name="double")
    async def double(n: int) -> int:
        await asyncio.sleep(0)
        current_job().progress(1.0, "done")
        return n * 2 + current_job().attempt

    job = double.enqueue(20)
    assert work().state == "succeeded"
    assert job.result() == 41
    assert job.refresh().progress_message == "done"


def test_async_task_on_a_given_loop(app: Conveyor, runner: Runner, lease_next: Callable[[], Lease]) -> None:
    @app.task(name="where")
    async def where() -> bool:
        return asyncio.get_running_loop() is loop

    where.enqueue()
    loop = asyncio.new_event_loop()
    try:
        outcome = runner.execute(lease_next(), loop=loop)
    finally:
        loop.close()
    assert (outcome.state, outcome.result) == ("succeeded", b"true")


def test_async_task_past_its_timeout(app: Conveyor, work: Callable[[], Outcome]) -> None:
    @app.task(name="slow", retries=0, timeout=0.05)
    async def slow() -> None:
        await asyncio.sleep(5)

    slow.enqueue()
    started = time.monotonic()
    outcome = work()
    assert time.monotonic() - started < 2
    assert outcome.state == "failed"
    assert outcome.error is not None and outcome.error["type"] == "TimeoutError"


def test_result_not_json_serializable_fails(app: Conveyor, runner: Runner, work: Callable[[], Outcome]) -> None:
    @app.task(name="opaque", retries=3)
    def opaque() -> object:
        return object()

    job = opaque.enqueue()
    outcome = work()
    assert outcome.state == "failed"
    assert outcome.error is not None
    assert outcome.error["type"] == "SerializationError"
    assert "object is not JSON serializable" in outcome.error["message"]
    assert runner.failed == 1
    assert job.status == "failed"


def test_stale_outcome_is_refused(app: Conveyor, runner: Runner, lease_next: Callable[[], Lease]) -> None:
    @app.task(name="noop")
    def noop() -> None:
        pass

    job = noop.enqueue()
    lease = lease_next()
    outcome = runner.execute(lease)
    assert app.broker.cancel(job.id) == "running"
    assert app.broker.ack([Outcome(job.id, lease.token + 1, "succeeded", result=b"null")]) == [False]
    assert app.broker.ack([outcome]) == [True]


def test_a_job_that_cannot_even_be_prepared_fails_without_raising(
    app: Conveyor, runner: Runner, lease_next: Callable[[], Lease]
) -> None:
    def broken(x: NoSuchType) -> None:  # type: ignore[name-defined]  # noqa: F821 - the point of the test
        raise AssertionError("never runs")

    app.task(name="broken")(broken)
    job_id = put(app, "broken", b'{"args":[1],"kwargs":{}}')
    outcome = runner.execute(lease_next())
    assert (outcome.job_id, outcome.state) == (job_id, "failed")
    assert outcome.error is not None
    assert outcome.error["type"] == "ConfigError"
    assert "NoSuchType" in outcome.error["message"]
    assert runner.running == {}



@pytest.mark.parametrize("declared", [True, False])
def test_started_marks_go_only_to_stores_that_declare_them(
    app: Conveyor, runner: Runner, lease_next: Callable[[], Lease], monkeypatch: pytest.MonkeyPatch,
    declared: bool
) -> None:
    sent: list[object] = []
    monkeypatch.setattr(app.broker, "mark_started", sent.append)
    monkeypatch.setattr(app.broker, "supports_start_marks", declared)
    seen: list[int] = []

    @app.task(name="long")
    def long() -> None:
        job_id, token, _ = runner._marks[0]
        runner._marks[0] = (job_id, token, time.time() - 1.0)  # as if it had run for a second
        runner.flush_marks()
        seen.append(token)

    long.enqueue()
    lease = lease_next()
    runner.execute(lease)
    assert seen == [lease.token]
    assert sent == ([[(lease.job_id, lease.token, pytest.approx(time.time() - 1.0, abs=0.5))]] if declared else [])
