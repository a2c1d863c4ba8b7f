"""Contract: ``started_at`` is when a task really began; a leased job is *reserved* until then.

``fetch`` leases (state ``running``) without a start time; ``mark_started`` records it for current
tokens in one call; the ack carries it too, for a job that ended before its mark.
"""

from __future__ import annotations

from collections.abc import Callable

from conveyor.brokers import Broker, Lease, Message, Outcome
from conveyor.testing import FakeClock

LEASE = 30.0
Make = Callable[..., Message]


def fetch(broker: Broker, queue: str = "default", limit: int = 100) -> list[Lease]:
    return broker.fetch([queue], limit, LEASE, "c1")


def started_at(broker: Broker, job_id: str) -> float | None:
    record = broker.get(job_id)
    assert record is not None
    return record.started_at


def test_fetch_leases_without_a_start_time(broker: Broker, make: Make) -> None:
    m = make()
    broker.enqueue([m])
    (lease,) = fetch(broker)
    record = broker.get(lease.job_id)
    assert record is not None
    assert (record.state, record.started_at) == ("running", None)


def test_mark_started_records_the_start(broker: Broker, make: Make, clock: FakeClock) -> None:
    broker.enqueue([make(), make()])
    a, b = fetch(broker)
    clock.advance(2)
    broker.mark_started([(a.job_id, a.token, clock() - 0.5), (b.job_id, b.token, clock())])
    assert started_at(broker, a.job_id) == clock() - 0.5
    assert started_at(broker, b.job_id) == clock()
    assert broker.get(a.job_id).state == "running"  # type: ignore[union-attr]


def test_mark_started_of_nothing_is_a_no_op(broker: Broker) -> None:
    broker.mark_started([])


def test_a_stale_mark_is_ignored(broker: Broker, make: Make, clock: FakeClock) -> None:
    broker.enqueue([make(max_attempts=2)])
    (first,) = fetch(broker)
    clock.advance(LEASE + 1)
    assert broker.recover() == 1
    (second,) = fetch(broker)
    broker.mark_started([(first.job_id, first.token, clock() - 5)])
    assert started_at(broker, second.job_id) is None
    broker.mark_started([(second.job_id, second.token, clock())])
    assert started_at(broker, second.job_id) == clock()
    # a job that ended (or does not exist) is not touched either
    assert broker.ack([Outcome(second.job_id, second.token, "succeeded", finished_at=clock())]) == [True]
    broker.mark_started([(second.job_id, second.token, clock() + 9), ("no-such-job", 1, clock())])
    assert started_at(broker, second.job_id) == clock()


def test_reserved_counts_running_jobs_not_started(broker: Broker, make: Make, clock: FakeClock) -> None:
    assert broker.reserved_counts() == {}
    broker.enqueue([make(queue="a") for _ in range(3)] + [make(queue="b") for _ in range(2)])
    a = fetch(broker, "a")
    b = fetch(broker, "b", limit=1)
    assert broker.reserved_counts() == {"a": 3, "b": 1}
    broker.mark_started([(a[0].job_id, a[0].token, clock()), (b[0].job_id, b[0].token, clock())])
    assert broker.reserved_counts() == {"a": 2}
    assert broker.counts()["a"]["running"] == 3  # reserved jobs still count as running
    broker.mark_started([(x.job_id, x.token, clock()) for x in a[1:]])
    assert broker.reserved_counts() == {}


def test_a_retry_clears_the_previous_start(broker: Broker, make: Make, clock: FakeClock) -> None:
    broker.enqueue([make(max_attempts=3)])
    (first,) = fetch(broker)
    broker.mark_started([(first.job_id, first.token, clock())])
    error = {"type": "ValueError", "message": "boom"}
    outcome = Outcome(first.job_id, first.token, "scheduled", error=error, run_at=clock() + 5,
                      started_at=clock(), finished_at=clock() + 1)
    assert broker.ack([outcome]) == [True]
    clock.advance(10)
    (second,) = fetch(broker)
    assert (second.job_id, second.attempt) == (first.job_id, 2)
    assert started_at(broker, second.job_id) is None
    assert broker.reserved_counts() == {"default": 1}


def test_a_lost_lease_clears_the_start_of_the_next_attempt(broker: Broker, make: Make, clock: FakeClock) -> None:
    broker.enqueue([make(max_attempts=3)])
    (first,) = fetch(broker)
    broker.mark_started([(first.job_id, first.token, clock())])
    clock.advance(LEASE + 1)
    broker.recover()
    (second,) = fetch(broker)
    assert second.attempt == 2
    assert started_at(broker, second.job_id) is None


def test_the_ack_records_the_start_when_no_mark_came(broker: Broker, make: Make, clock: FakeClock) -> None:
    broker.enqueue([make(), make()])
    ok, bad = fetch(broker)
    began = clock()
    clock.advance(3)
    error = {"type": "ValueError", "message": "boom"}
    assert broker.ack([Outcome(ok.job_id, ok.token, "succeeded", result=b"1", started_at=began, finished_at=clock()),
                       Outcome(bad.job_id, bad.token, "failed", error=error, started_at=began + 1,
                               finished_at=clock())]) == [True, True]
    assert started_at(broker, ok.job_id) == began
    assert started_at(broker, bad.job_id) == began + 1
    assert broker.reserved_counts() == {}


def test_the_ack_keeps_the_mark_when_it_carries_no_start(broker: Broker, make: Make, clock: FakeClock) -> None:
    broker.enqueue([make()])
    (lease,) = fetch(broker)
    broker.mark_started([(lease.job_id, lease.token, clock())])
    clock.advance(2)
    assert broker.ack([Outcome(lease.job_id, lease.token, "succeeded", finished_at=clock())]) == [True]
    assert started_at(broker, lease.job_id) == clock() - 2


def test_wait_time_runs_from_creation_to_the_start(broker: Broker, make: Make, clock: FakeClock) -> None:
    since = clock()
    broker.enqueue([make()])
    clock.advance(4)
    (lease,) = fetch(broker)
    clock.advance(1)  # reserved for a second before it began
    broker.mark_started([(lease.job_id, lease.token, clock())])
    clock.advance(2)
    broker.ack([Outcome(lease.job_id, lease.token, "succeeded", started_at=clock() - 2, finished_at=clock())])
    (row,) = broker.stats(since, 60)
    assert row["wait_mean"] == 5 and row["run_mean"] == 2


def test_a_mark_is_a_job_change(broker: Broker, make: Make, clock: FakeClock) -> None:
    broker.enqueue([make()])
    (lease,) = fetch(broker)
    _, cursor = broker.changes(None)
    broker.changes(cursor)
    broker.mark_started([(lease.job_id, lease.token, clock())])
    events, _ = broker.changes(cursor)
    changed = [e.data for e in events if e.kind == "job" and e.data["id"] == lease.job_id]
    assert changed and changed[-1]["state"] == "running"
    assert changed[-1]["started_at"] == clock()
