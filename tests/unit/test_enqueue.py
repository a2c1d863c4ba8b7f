"""Enqueueing: batches, per-call options, unique keys."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from conveyor import Conveyor, Job, Task
from conveyor.brokers import Message, Outcome


@pytest.fixture
def transcode(app: Conveyor) -> Task[Any, str]:
    @app.task(name="transcode")
    def transcode(path: str, fmt: str = "mp4") -> str:
        return f"{path}.{fmt}"

    return transcode


@pytest.fixture
def enqueue_calls(app: Conveyor, monkeypatch: pytest.MonkeyPatch) -> list[list[Message]]:
    """Every batch handed to the (real, memory) broker's enqueue."""
    calls: list[list[Message]] = []
    real = app.broker.enqueue

    def counting(messages: Sequence[Message]) -> list[str]:
        calls.append(list(messages))
        return real(messages)

    monkeypatch.setattr(app.broker, "enqueue", counting)
    return calls


def bound(task: Task[Any, Any], job: Job[Any]) -> dict[str, Any]:
    """The call a job will make, with defaults applied."""
    ba = inspect.signature(task.fn).bind(*job.args, **job.kwargs)
    ba.apply_defaults()
    return dict(ba.arguments)


def test_enqueue_stores_a_queued_job(app: Conveyor, transcode: Task[Any, str]) -> None:
    before = time.time()
    job = transcode.enqueue("in.mov", fmt="webm")
    record = job.record
    assert (record.task, record.queue, record.state) == ("transcode", "default", "queued")
    assert (record.max_attempts, record.timeout, record.priority, record.key) == (4, None, 0, None)
    assert before <= record.created_at <= time.time()
    assert bound(transcode, job) == {"path": "in.mov", "fmt": "webm"}
    assert app.broker.counts() == {"default": {"queued": 1}}


def test_enqueue_many_is_one_broker_call(
    app: Conveyor, transcode: Task[Any, str], enqueue_calls: list[list[Message]]
) -> None:
    jobs = transcode.enqueue_many([
        ("a.mov",),
        {"path": "b.mov", "fmt": "webm"},
        (("c.mov",), {"fmt": "ogg"}),
        ["d.mov", "avi"],
    ])
    assert [len(batch) for batch in enqueue_calls] == [4]
    assert [bound(transcode, j) for j in jobs] == [
        {"path": "a.mov", "fmt": "mp4"},
        {"path": "b.mov", "fmt": "webm"},
        {"path": "c.mov", "fmt": "ogg"},
        {"path": "d.mov", "fmt": "avi"},
    ]
    assert [j.id for j in jobs] == [m.id for m in enqueue_calls[0]]
    assert app.broker.counts() == {"default": {"queued": 4}}


def test_enqueue_many_of_nothing_makes_no_call(
    transcode: Task[Any, str], enqueue_calls: list[list[Message]]
) -> None:
    assert transcode.enqueue_many([]) == []
    assert enqueue_calls == []


def test_enqueue_many_bad_item_makes_no_call(
    app: Conveyor, transcode: Task[Any, str], enqueue_calls: list[list[Message]]
) -> None:
    with pytest.raises(ValueError, match=r"\[1\]"):
        transcode.enqueue_many(iter([("a.mov",), ()]))
    assert enqueue_calls == []
    assert app.broker.counts() == {}


def test_enqueue_many_with_options(app: Conveyor, transcode: Task[Any, str]) -> None:
    jobs = transcode.options(queue="media", priority=4).enqueue_many([("a",), ("b",)])
    assert {(j.queue, j.record.priority) for j in jobs} == {("media", 4)}


def test_delay_schedules_the_job(app: Conveyor, transcode: Task[Any, str]) -> None:
    job = transcode.options(delay=30).enqueue("in.mov")
    assert job.status == "scheduled"
    assert job.record.run_at == pytest.approx(time.time() + 30, abs=2)
    assert app.broker.fetch(["default"], 10, 30.0, "c") == []

    later = transcode.options(delay=timedelta(minutes=2)).enqueue("in.mov")
    assert later.record.run_at == pytest.approx(time.time() + 120, abs=2)


def test_at_schedules_the_job(transcode: Task[Any, str]) -> None:
    at = datetime.now(timezone.utc) + timedelta(hours=1)
    job = transcode.options(at=at).enqueue("in.mov")
    assert job.status == "scheduled"
    assert job.record.run_at == pytest.approx(at.timestamp(), abs=1e-3)
    assert job.run_at is not None
    assert abs(job.run_at - at) < timedelta(milliseconds=1)


def test_at_in_the_past_is_queued_now(transcode: Task[Any, str]) -> None:
    job = transcode.options(at=datetime.now(timezone.utc) - timedelta(hours=1)).enqueue("in.mov")
    assert job.status == "queued"


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"delay": -1}, "delay"),
        ({"delay": "soon"}, "delay"),
        ({"at": "tomorrow"}, "at must be"),
        ({"delay": 5, "at": datetime(2030, 1, 1, tzinfo=timezone.utc)}, "not both"),
        ({"priority": "high"}, "priority"),
        ({"retries": -1}, "retries"),
        ({"timeout": 0}, "timeout"),
        ({"queue": ""}, "queue"),
    ],
)
def test_bad_option_values(app: Conveyor, transcode: Task[Any, str], options: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        transcode.options(**options).enqueue("in.mov")
    assert app.broker.counts() == {}


def test_priority_orders_fetch(app: Conveyor, transcode: Task[Any, str]) -> None:
    low = transcode.enqueue("low")
    high = transcode.options(priority=9).enqueue("high")
    assert high.record.priority == 9
    leases = app.broker.fetch(["default"], 2, 30.0, "c")
    assert [lease.job_id for lease in leases] == [high.id, low.id]


def test_task_priority_is_the_default(app: Conveyor) -> None:
    @app.task(name="urgent", priority=5)
    def urgent() -> None:
        pass

    assert urgent.enqueue().record.priority == 5
    assert urgent.options(priority=1).enqueue().record.priority == 1


def test_queue_option(app: Conveyor, transcode: Task[Any, str]) -> None:
    job = transcode.options(queue="media").enqueue("in.mov")
    assert job.queue == "media"
    assert app.broker.counts() == {"media": {"queued": 1}}
    assert transcode.options(queue=None).enqueue("x").queue == "default"
    assert app.broker.fetch(["default"], 1, 30.0, "c")[0].job_id != job.id
    assert [lease.job_id for lease in app.broker.fetch(["media"], 1, 30.0, "c")] == [job.id]


def test_key_makes_a_job_unique_while_active(
    app: Conveyor, transcode: Task[Any, str], work: Callable[[], Outcome]
) -> None:
    first = transcode.options(key="in.mov").enqueue("in.mov")
    again = transcode.options(key="in.mov").enqueue("in.mov", fmt="webm")
    assert again.id == first.id
    assert app.broker.counts() == {"default": {"queued": 1}}

    other = transcode.options(key="other.mov").enqueue("other.mov")
    assert other.id != first.id

    assert work().job_id == first.id
    assert first.status == "succeeded"
    fresh = transcode.options(key="in.mov").enqueue("in.mov")
    assert fresh.id != first.id


def test_key_within_one_batch(app: Conveyor, transcode: Task[Any, str]) -> None:
    jobs = transcode.options(key="same").enqueue_many([("a",), ("b",)])
    assert jobs[0].id == jobs[1].id
    assert app.broker.counts() == {"default": {"queued": 1}}


def test_unknown_option_raises_type_error(app: Conveyor, transcode: Task[Any, str]) -> None:
    with pytest.raises(TypeError, match=r"unknown enqueue option\(s\) \['dela'\]"):
        transcode.options(dela=5)
    with pytest.raises(TypeError, match="'colour'"):
        app.enqueue("transcode", args=["x"], colour="red")
    assert app.broker.counts() == {}


def test_retries_and_timeout_overrides(app: Conveyor) -> None:
    @app.task(name="fetch", retries=1, timeout=10)
    def fetch(url: str) -> None:
        pass

    default = fetch.enqueue("u").record
    assert (default.max_attempts, default.timeout) == (2, 10)
    custom = fetch.options(retries=5, timeout=2.5).enqueue("u").record
    assert (custom.max_attempts, custom.timeout) == (6, 2.5)
    no_retry = fetch.options(retries=0, timeout=timedelta(seconds=90)).enqueue("u").record
    assert (no_retry.max_attempts, no_retry.timeout) == (1, 90.0)
    unlimited = fetch.options(timeout=None).enqueue("u").record
    assert unlimited.timeout is None


def test_options_chain_and_do_not_leak(app: Conveyor, transcode: Task[Any, str]) -> None:
    media = transcode.options(queue="media")
    urgent = media.options(priority=8)
    assert (urgent.enqueue("a").queue, urgent.enqueue("b").record.priority) == ("media", 8)
    assert media.enqueue("c").record.priority == 0
    assert transcode.enqueue("d").queue == "default"
