"""Contract: the store queries of the web app — search, idempotency keys, stats and the change feed."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from conveyor.brokers import Broker, Event, Lease, Message, Outcome, WorkerInfo
from conveyor.testing import FakeClock

LEASE = 30.0
Make = Callable[..., Message]


def with_args(make: Make, text: str, **fields: object) -> Message:
    msg = make(**fields)
    msg.payload = orjson.dumps({"args": [text], "kwargs": {}})
    return msg


def take(broker: Broker, queue: str = "default", limit: int = 100) -> list[Lease]:
    return broker.fetch([queue], limit, LEASE, "c1")


def fail(broker: Broker, lease: Lease, message: str = "boom", started: float | None = None) -> None:
    error = {"type": "ValueError", "message": message, "traceback": "Traceback...\nValueError: " + message}
    assert broker.ack([Outcome(lease.job_id, lease.token, "failed", error=error, started_at=started)]) == [True]


def succeed(broker: Broker, lease: Lease, started: float | None = None, finished: float | None = None) -> None:
    outcome = Outcome(lease.job_id, lease.token, "succeeded", started_at=started, finished_at=finished)
    assert broker.ack([outcome]) == [True]


# -- search_jobs ------------------------------------------------------------------------------------
def test_search_finds_text_in_arguments_any_case(broker: Broker, make: Make) -> None:
    a = with_args(make, "holiday.MOV")
    b = with_args(make, "report.pdf")
    broker.enqueue([a, b])
    assert [j.id for j in broker.search_jobs(search="holiday.mov").jobs] == [a.id]
    assert [j.id for j in broker.search_jobs(search="PDF").jobs] == [b.id]
    assert broker.search_jobs(search="nothing-like-this").jobs == []


def test_search_finds_text_in_errors(broker: Broker, make: Make) -> None:
    broker.enqueue([make(max_attempts=1), make()])
    lease = take(broker, limit=1)[0]
    fail(broker, lease, "disk quota exceeded")
    assert [j.id for j in broker.search_jobs(search="QUOTA").jobs] == [lease.job_id]
    assert [j.id for j in broker.search_jobs(search="quota", state="failed").jobs] == [lease.job_id]
    assert broker.search_jobs(search="quota", state="queued").jobs == []


def test_search_by_time_range_on_created_at(broker: Broker, make: Make, clock: FakeClock) -> None:
    t0 = clock()
    early = make(created_at=t0 - 100)
    middle = make(created_at=t0)
    late = make(created_at=t0 + 100)
    broker.enqueue([early, middle, late])
    assert [j.id for j in broker.search_jobs(since=t0).jobs] == [late.id, middle.id]
    assert [j.id for j in broker.search_jobs(until=t0).jobs] == [early.id]
    assert [j.id for j in broker.search_jobs(since=t0 - 50, until=t0 + 50).jobs] == [middle.id]


def test_search_pages_with_a_cursor(broker: Broker, make: Make) -> None:
    wanted = [with_args(make, f"match-{i}") for i in range(5)]
    others = [with_args(make, f"other-{i}") for i in range(5)]
    ids = broker.enqueue([m for pair in zip(wanted, others) for m in pair])
    expected = [i for i in ids[::-1] if i in {m.id for m in wanted}]
    first = broker.search_jobs(search="match", limit=2)
    assert [j.id for j in first.jobs] == expected[:2]
    assert first.cursor is not None
    second = broker.search_jobs(search="match", limit=2, cursor=first.cursor)
    third = broker.search_jobs(search="match", limit=2, cursor=second.cursor)
    assert [j.id for j in second.jobs + third.jobs] == expected[2:]
    assert third.cursor is None


def test_search_without_text_or_range_is_list_jobs(broker: Broker, make: Make) -> None:
    ids = broker.enqueue([make(queue="a"), make(queue="b"), make(queue="a")])
    assert [j.id for j in broker.search_jobs(queue="a").jobs] == [ids[2], ids[0]]


# -- find_by_key ------------------------------------------------------------------------------------
def test_find_by_key_returns_the_newest_job_in_any_state(broker: Broker, make: Make) -> None:
    assert broker.find_by_key("k") is None
    (first,) = broker.enqueue([make(key="k")])
    found = broker.find_by_key("k")
    assert found is not None and found.id == first and found.state == "queued"
    succeed(broker, take(broker)[0])
    found = broker.find_by_key("k")
    assert found is not None and found.id == first and found.state == "succeeded"
    (second,) = broker.enqueue([make(key="k")])
    assert second != first
    found = broker.find_by_key("k")
    assert found is not None and found.id == second
    assert broker.find_by_key("other") is None


# -- stats ------------------------------------------------------------------------------------------
def test_stats_per_queue_and_bucket(broker: Broker, make: Make, clock: FakeClock) -> None:
    since = clock()
    broker.enqueue([make(queue="a", max_attempts=1) for _ in range(3)] + [make(queue="b")])
    # Created at `since`, started 2 s later, finished after 1, 2, 3 s: all in the first bucket.
    clock.advance(2)
    leases = take(broker, "a")
    for i, lease in enumerate(leases[:2]):
        succeed(broker, lease, started=since + 2, finished=since + 3 + i)
    fail(broker, leases[2], started=since + 2)  # a fetch no longer records a start: the outcome does
    clock.advance(60)  # the next bucket
    succeed(broker, take(broker, "b")[0], started=since + 62, finished=since + 64)
    rows = broker.stats(since, 60.0)
    by_key = {(r["queue"], r["bucket"]): r for r in rows}
    assert set(by_key) == {("a", since), ("b", since + 60)}
    a = by_key[("a", since)]
    assert (a["succeeded"], a["failed"]) == (2, 1)
    assert a["run_mean"] == pytest.approx(1.0, abs=0.01)  # runs of 1, 2 and 0 seconds
    assert a["run_p95"] == pytest.approx(2.0, abs=0.01)
    assert a["wait_mean"] == pytest.approx(2.0, abs=0.01)
    b = by_key[("b", since + 60)]
    assert (b["succeeded"], b["failed"], b["run_mean"]) == (1, 0, pytest.approx(2.0, abs=0.01))
    assert broker.stats(since + 120, 60.0) == []


def test_stats_refuses_an_empty_bucket(broker: Broker) -> None:
    with pytest.raises(ValueError):
        broker.stats(0.0, 0)


# -- changes ----------------------------------------------------------------------------------------
def job_states(events: list[Event], job_id: str) -> list[str]:
    return [e.data["state"] for e in events if e.kind == "job" and e.data.get("id") == job_id]


def test_changes_without_a_cursor_only_gives_the_cursor(broker: Broker, make: Make) -> None:
    broker.enqueue([make()])
    events, cursor = broker.changes(None)
    assert events == [] and isinstance(cursor, str)
    assert broker.changes(cursor) == ([], cursor)


def test_changes_follow_a_job_through_its_life(broker: Broker, make: Make) -> None:
    _, cursor = broker.changes(None)
    msg = make(queue="media", task="tests.transcode")
    broker.enqueue([msg])
    events, cursor = broker.changes(cursor)
    assert job_states(events, msg.id)[-1:] == ["queued"]
    event = next(e for e in events if e.kind == "job")
    assert event.data["task"] == "tests.transcode" and event.data["queue"] == "media"
    assert event.id and isinstance(event.at, float)
    (lease,) = take(broker, "media")
    events, cursor = broker.changes(cursor)
    assert job_states(events, msg.id)[-1:] == ["running"]
    assert broker.progress(lease.job_id, lease.token, 0.5, "half")
    events, cursor = broker.changes(cursor)
    progress = [e.data for e in events if e.kind == "job" and e.data["id"] == msg.id]
    assert progress[-1]["progress"] == 0.5 and progress[-1]["progress_message"] == "half"
    succeed(broker, lease)
    events, cursor = broker.changes(cursor)
    assert job_states(events, msg.id)[-1:] == ["succeeded"]
    assert broker.delete(msg.id)
    events, cursor = broker.changes(cursor)
    assert job_states(events, msg.id)[-1:] == ["deleted"]
    assert broker.changes(cursor) == ([], cursor)


def test_changes_report_queue_pause_and_resume(broker: Broker) -> None:
    _, cursor = broker.changes(None)
    broker.pause("media")
    events, cursor = broker.changes(cursor)
    assert [e.data for e in events if e.kind == "queue"][-1]["paused"] is True
    broker.resume("media")
    events, cursor = broker.changes(cursor)
    queue = [e.data for e in events if e.kind == "queue"][-1]
    assert queue["name"] == "media" and queue["paused"] is False


def test_changes_report_worker_heartbeats(broker: Broker, clock: FakeClock) -> None:
    _, cursor = broker.changes(None)
    worker = WorkerInfo(id="w1", hostname="h", pid=1, queues=["default"], started_at=clock())
    broker.heartbeat(worker)
    events, cursor = broker.changes(cursor)
    assert [(e.data["id"], e.data["state"]) for e in events if e.kind == "worker"][-1] == ("w1", "seen")
    broker.unregister("w1")
    events, cursor = broker.changes(cursor)
    assert [(e.data["id"], e.data["state"]) for e in events if e.kind == "worker"][-1] == ("w1", "gone")


def test_changes_honour_the_limit_and_continue(broker: Broker, make: Make) -> None:
    _, start = broker.changes(None)
    ids = broker.enqueue([make() for _ in range(5)])
    seen: list[str] = []
    cursor = start
    for _ in range(10):
        events, cursor = broker.changes(cursor, limit=2)
        assert len(events) <= 2
        if not events:
            break
        seen += [e.data["id"] for e in events if e.kind == "job"]
    assert set(ids) <= set(seen)


def test_an_unknown_cursor_asks_for_a_reset(broker: Broker, make: Make) -> None:
    broker.enqueue([make()])
    for bogus in ("not-a-cursor", "999999999"):
        events, cursor = broker.changes(bogus)
        assert [e.kind for e in events] == ["reset"]
        assert broker.changes(cursor)[0] == []
