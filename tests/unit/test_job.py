"""The Job handle: ids, fresh status, results, failures, cancellation."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pydantic
import pytest

from conveyor import Conveyor, Job, JobCancelled, JobFailed, JobNotFound, Task
from conveyor.brokers import Lease, Outcome


class Report(pydantic.BaseModel):
    path: str
    frames: int
    done_at: datetime


@pytest.fixture
def transcode(app: Conveyor) -> Task[Any, Report]:
    @app.task(name="transcode", retries=0)
    def transcode(path: str, frames: int = 24) -> Report:
        if path == "bad":
            raise ValueError(f"cannot read {path}")
        return Report(path=path, frames=frames, done_at=datetime(2024, 1, 2, tzinfo=timezone.utc))

    return transcode


def test_id_is_a_uuid7_string(transcode: Task[Any, Report]) -> None:
    job = transcode.enqueue("a")
    assert isinstance(job.id, str)
    assert uuid.UUID(job.id).version == 7
    assert str(uuid.UUID(job.id)) == job.id


def test_ids_sort_by_creation_time(transcode: Task[Any, Report]) -> None:
    jobs = [transcode.enqueue(f"f{i}") for i in range(50)]
    ids = [j.id for j in jobs]
    assert sorted(ids) == ids
    assert len(set(ids)) == 50
    created = [j.record.created_at for j in jobs]
    assert created == sorted(created)


def test_status_reads_fresh(app: Conveyor, transcode: Task[Any, Report],
                            lease_next: Callable[[], Lease]) -> None:
    job = transcode.enqueue("a")
    assert job.status == "queued"
    lease_next()
    assert job.status == "running"  # no refresh() needed


def test_refresh_reloads_the_record(transcode: Task[Any, Report], lease_next: Callable[[], Lease]) -> None:
    job = transcode.enqueue("a")
    assert job.attempts == 0
    assert job.started_at is None
    lease_next()
    assert job.attempts == 0  # cached until refreshed
    assert job.refresh() is job
    assert job.attempts == 1
    assert job.started_at is None  # leased, not yet begun: reserved until the worker marks the start
    assert job.record.state == "running"


def test_job_attributes(transcode: Task[Any, Report]) -> None:
    job = transcode.options(queue="media").enqueue("a", frames=30)
    assert job.task_name == "transcode"
    assert job.queue == "media"
    assert (job.args, job.kwargs) == (["a"], {"frames": 30})
    assert job.max_attempts == 1
    assert job.progress is None and job.progress_message is None
    assert job.error is None and job.history == []
    assert job.created_at is not None and job.created_at.tzinfo is timezone.utc
    assert job.finished_at is None
    assert repr(job) == f"<Job {job.id} transcode queued>"
    assert job == Job(job.app, job.id) and hash(job) == hash(job.id)


def test_result_times_out_when_not_done(transcode: Task[Any, Report]) -> None:
    job = transcode.enqueue("a")
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=job.id):
        job.result(timeout=0.05)
    assert 0.04 <= time.monotonic() - started < 1.0


def test_result_of_succeeded_job_is_decoded_to_return_type(
    app: Conveyor, transcode: Task[Any, Report], work: Callable[[], Outcome]
) -> None:
    job = transcode.enqueue("a", frames=12)
    assert work().state == "succeeded"
    assert job.status == "succeeded"
    value = job.result(timeout=0.05)
    assert value == Report(path="a", frames=12, done_at=datetime(2024, 1, 2, tzinfo=timezone.utc))
    assert isinstance(value, Report)
    # The same through a handle loaded by id.
    assert app.get_job(job.id).result() == value
    assert job.finished_at is not None


def test_result_without_return_hint_is_plain_json(app: Conveyor, work: Callable[[], Outcome]) -> None:
    @app.task(name="pairs")
    def pairs(n: int):  # type: ignore[no-untyped-def]
        return {"n": n, "when": datetime(2024, 1, 1, tzinfo=timezone.utc)}

    job = pairs.enqueue(2)
    work()
    assert job.result() == {"n": 2, "when": "2024-01-01T00:00:00+00:00"}


def test_result_of_async_task_is_decoded(app: Conveyor, work: Callable[[], Outcome]) -> None:
    @app.task(name="stamp")
    async def stamp() -> datetime:
        return datetime(2024, 3, 4, 5, 6, tzinfo=timezone.utc)

    job = stamp.enqueue()
    work()
    assert job.result() == datetime(2024, 3, 4, 5, 6, tzinfo=timezone.utc)


def test_failed_job_raises_job_failed(transcode: Task[Any, Report], work: Callable[[], Outcome]) -> None:
    job = transcode.enqueue("bad")
    assert work().state == "failed"
    with pytest.raises(JobFailed, match="ValueError: cannot read bad") as caught:
        job.result(timeout=1)
    err = caught.value
    assert not isinstance(err, JobCancelled)
    assert (err.job_id, err.state) == (job.id, "failed")
    assert err.error["type"] == "ValueError"
    assert err.error["message"] == "cannot read bad"
    assert "Traceback" in err.error["traceback"]
    assert job.error is not None and job.error["type"] == "ValueError"
    assert [h["state"] for h in job.history] == ["failed"]


def test_cancelled_job_raises_job_cancelled(transcode: Task[Any, Report]) -> None:
    job = transcode.enqueue("a")
    assert job.cancel() == "cancelled"
    assert job.status == "cancelled"
    with pytest.raises(JobCancelled, match="cancelled") as caught:
        job.result(timeout=1)
    assert caught.value.job_id == job.id
    assert isinstance(caught.value, JobFailed)


def test_cancel_a_scheduled_job(transcode: Task[Any, Report]) -> None:
    job = transcode.options(delay=60).enqueue("a")
    assert job.cancel() == "cancelled"


def test_cancel_a_running_job_asks_it_to_stop(
    transcode: Task[Any, Report], lease_next: Callable[[], Lease]
) -> None:
    job = transcode.enqueue("a")
    lease_next()
    assert job.cancel() == "running"
    assert job.refresh().record.cancel_requested


def test_retry_by_hand(transcode: Task[Any, Report], work: Callable[[], Outcome]) -> None:
    job = transcode.enqueue("bad")
    work()
    assert job.retry() == "queued"
    assert job.refresh().attempts == 0
    with pytest.raises(ValueError, match="queued"):
        job.retry()


def test_get_job(app: Conveyor, transcode: Task[Any, Report]) -> None:
    job = transcode.enqueue("a")
    loaded = app.get_job(job.id)
    assert loaded == job
    assert loaded.task_name == "transcode"
    assert loaded.status == "queued"


def test_get_job_unknown(app: Conveyor) -> None:
    missing = "0190f0a0-0000-7000-8000-000000000000"
    with pytest.raises(JobNotFound, match=missing) as caught:
        app.get_job(missing)
    assert caught.value.job_id == missing
    with pytest.raises(JobNotFound):
        Job(app, missing).refresh()
    with pytest.raises(JobNotFound):
        Job(app, missing).result(timeout=0)
