"""Contract: enqueue, get, fetch under a lease, priorities, queue order and delays."""

from __future__ import annotations

from collections.abc import Callable

import uuid_utils

from conveyor.brokers import Broker, Lease, Message
from conveyor.testing import FakeClock

LEASE = 30.0
Make = Callable[..., Message]


def fetch(broker: Broker, queues: list[str] | None = None, limit: int = 100, consumer: str = "c1") -> list[Lease]:
    return broker.fetch(queues or ["default"], limit, LEASE, consumer)


def ids(leases: list[Lease]) -> list[str]:
    return [lease.job_id for lease in leases]


# -- enqueue and get ------------------------------------------------------------------------------
def test_enqueue_returns_ids_in_order(broker: Broker, make: Make) -> None:
    messages = [make() for _ in range(5)]
    assert broker.enqueue(messages) == [m.id for m in messages]


def test_enqueue_nothing_is_a_no_op(broker: Broker) -> None:
    assert broker.enqueue([]) == []
    assert broker.counts() == {}


def test_get_returns_the_record(broker: Broker, make: Make, clock: FakeClock) -> None:
    m = make(queue="media", task="tests.transcode", priority=3, max_attempts=4, timeout=12.5)
    broker.enqueue([m])
    record = broker.get(m.id)
    assert record is not None
    assert (record.id, record.task, record.queue, record.state) == (m.id, "tests.transcode", "media", "queued")
    assert record.payload == m.payload == b'{"args":[],"kwargs":{}}'
    assert (record.priority, record.max_attempts, record.timeout) == (3, 4, 12.5)
    assert record.attempts == 0
    assert record.created_at == clock()
    assert record.run_at == clock()
    assert record.lease_until is None and record.consumer is None
    assert record.started_at is None and record.finished_at is None
    assert record.result is None and record.error is None and record.history == []
    assert record.cancel_requested is False and record.progress is None


def test_get_unknown_id_is_none(broker: Broker) -> None:
    assert broker.get(str(uuid_utils.uuid7())) is None


def test_get_many_keeps_the_order(broker: Broker, make: Make) -> None:
    a, b = make(), make()
    broker.enqueue([a, b])
    missing = str(uuid_utils.uuid7())
    found = broker.get_many([b.id, missing, a.id])
    assert [r.id if r else None for r in found] == [b.id, None, a.id]


def test_one_enqueue_call_stores_the_whole_batch(broker: Broker, make: Make) -> None:
    messages = [make(queue="a" if i % 3 else "b") for i in range(300)]
    assert broker.enqueue(messages) == [m.id for m in messages]
    assert broker.counts() == {"a": {"queued": 200}, "b": {"queued": 100}}
    assert ids(fetch(broker, ["a"], 1000)) == [m.id for m in messages if m.queue == "a"]


def test_batch_keeps_fifo_order_when_some_messages_have_keys(broker: Broker, make: Make) -> None:
    messages = [make(key="k1"), make(), make(key="k2"), make()]
    broker.enqueue(messages)
    assert ids(fetch(broker)) == [m.id for m in messages]


def test_enqueueing_an_existing_id_again_changes_nothing(broker: Broker, make: Make) -> None:
    m = make()
    broker.enqueue([m])
    (lease,) = fetch(broker)
    assert broker.enqueue([m]) == [m.id]
    record = broker.get(m.id)
    assert record is not None
    assert (record.state, record.token, record.attempts) == ("running", lease.token, 1)
    assert fetch(broker) == []


def test_single_enqueues_and_batches_leave_the_same_store(broker: Broker, make: Make) -> None:
    """A message enqueued alone (Redis has a shorter path for it) is stored, counted, listed and
    fetched exactly like one sent in a batch, in one FIFO order within its priority."""
    first, urgent, second, third = make(), make(priority=5), make(), make()
    broker.enqueue([first])
    broker.enqueue([urgent])
    broker.enqueue([second, third])
    assert broker.counts()["default"]["queued"] == 4
    listed = broker.list_jobs(queue="default", limit=10)
    assert {r.id for r in listed.jobs} == {first.id, urgent.id, second.id, third.id}
    assert all(r.state == "queued" and r.attempts == 0 for r in listed.jobs)
    assert ids(fetch(broker)) == [urgent.id, first.id, second.id, third.id]
    assert broker.counts()["default"]["running"] == 4


def test_a_fork_shares_the_jobs(broker: Broker, make: Make) -> None:
    other = broker.fork()
    try:
        m = make()
        other.enqueue([m])
        assert ids(fetch(broker)) == [m.id]
        assert other.get(m.id).state == "running"  # type: ignore[union-attr]
    finally:
        if other is not broker:
            other.close()


# -- fetch ----------------------------------------------------------------------------------------
def test_fetch_leases_up_to_limit(broker: Broker, make: Make, clock: FakeClock) -> None:
    messages = [make(max_attempts=3, timeout=5.0) for _ in range(5)]
    job_ids = broker.enqueue(messages)
    leases = fetch(broker, limit=3, consumer="c1")
    assert ids(leases) == job_ids[:3]
    for lease in leases:
        assert lease.attempt == 1
        assert lease.token > 0
        assert lease.deadline == clock() + LEASE
        assert (lease.task, lease.queue, lease.payload) == ("tests.noop", "default", messages[0].payload)
        assert (lease.max_attempts, lease.timeout, lease.priority) == (3, 5.0, 0)
        record = broker.get(lease.job_id)
        assert record is not None
        assert record.state == "running"
        assert record.attempts == 1
        assert record.token == lease.token
        assert record.lease_until == clock() + LEASE
        assert record.consumer == "c1"
        assert record.started_at is None  # reserved: the worker marks the start when the task begins
    for job_id in job_ids[3:]:
        assert broker.get(job_id).state == "queued"  # type: ignore[union-attr]


def test_a_second_fetch_never_returns_a_leased_job(broker: Broker, make: Make) -> None:
    job_ids = broker.enqueue([make() for _ in range(5)])
    first = ids(fetch(broker, limit=3))
    second = ids(fetch(broker, limit=3, consumer="c2"))
    assert first == job_ids[:3]
    assert second == job_ids[3:]
    assert fetch(broker) == []


def test_fetch_from_an_empty_or_unknown_queue(broker: Broker, make: Make) -> None:
    assert fetch(broker) == []
    broker.enqueue([make(queue="a")])
    assert fetch(broker, ["nowhere"]) == []


def test_fetch_with_limit_zero_or_less_leases_nothing(broker: Broker, make: Make) -> None:
    broker.enqueue([make()])
    assert fetch(broker, limit=0) == []
    assert fetch(broker, limit=-1) == []
    assert len(fetch(broker)) == 1


# -- priorities and queues ------------------------------------------------------------------------
def test_higher_priority_is_fetched_first(broker: Broker, make: Make) -> None:
    low, high, mid = make(priority=0), make(priority=9), make(priority=5)
    broker.enqueue([low, high, mid])
    leases = fetch(broker)
    assert ids(leases) == [high.id, mid.id, low.id]
    assert [lease.priority for lease in leases] == [9, 5, 0]


def test_negative_priority_runs_last(broker: Broker, make: Make) -> None:
    late, normal = make(priority=-1), make()
    broker.enqueue([late, normal])
    assert ids(fetch(broker)) == [normal.id, late.id]


def test_fifo_within_a_priority(broker: Broker, make: Make) -> None:
    messages = [make(priority=i % 2) for i in range(10)]
    for m in messages:  # one call each: order of arrival, not of a batch
        broker.enqueue([m])
    expected = [m.id for m in messages if m.priority == 1] + [m.id for m in messages if m.priority == 0]
    assert ids(fetch(broker, limit=4)) + ids(fetch(broker, limit=100)) == expected


def test_queues_are_fetched_in_the_given_order(broker: Broker, make: Make) -> None:
    a = [make(queue="a", priority=9) for _ in range(2)]
    b = [make(queue="b") for _ in range(2)]
    broker.enqueue(a + b)
    # The caller's queue order comes before priority.
    assert ids(fetch(broker, ["b", "a"], 3)) == [b[0].id, b[1].id, a[0].id]
    assert ids(fetch(broker, ["a", "b"])) == [a[1].id]


def test_limit_is_honoured_across_queues(broker: Broker, make: Make) -> None:
    a = [make(queue="a") for _ in range(3)]
    b = [make(queue="b") for _ in range(3)]
    c = [make(queue="c") for _ in range(3)]
    broker.enqueue(a + b + c)
    first = fetch(broker, ["a", "b", "c"], 4)
    assert ids(first) == [m.id for m in a] + [b[0].id]
    assert ids(fetch(broker, ["a", "b", "c"], 4)) == [b[1].id, b[2].id, c[0].id, c[1].id]
    assert ids(fetch(broker, ["a", "b", "c"], 4)) == [c[2].id]


# -- delays ---------------------------------------------------------------------------------------
def test_a_future_job_is_scheduled_and_not_fetched(broker: Broker, make: Make, clock: FakeClock) -> None:
    m = make(run_at=clock() + 60)
    broker.enqueue([m])
    record = broker.get(m.id)
    assert record is not None
    assert record.state == "scheduled"
    assert record.run_at == clock() + 60
    assert record.lease_until is None and record.consumer is None and record.token == 0
    assert fetch(broker) == []
    clock.advance(59)
    assert fetch(broker) == []
    assert broker.get(m.id).state == "scheduled"  # type: ignore[union-attr]


def test_a_scheduled_job_is_fetched_once_due(broker: Broker, make: Make, clock: FakeClock) -> None:
    m = make(run_at=clock() + 60)
    broker.enqueue([m])
    clock.advance(61)
    leases = fetch(broker)
    assert ids(leases) == [m.id]
    assert leases[0].attempt == 1


def test_a_job_due_in_the_past_is_queued_at_once(broker: Broker, make: Make, clock: FakeClock) -> None:
    m = make(run_at=clock() - 5)
    broker.enqueue([m])
    assert broker.get(m.id).state == "queued"  # type: ignore[union-attr]
    assert ids(fetch(broker)) == [m.id]


def test_recover_moves_due_scheduled_jobs_to_the_queue(broker: Broker, make: Make, clock: FakeClock) -> None:
    m = make(run_at=clock() + 10)
    broker.enqueue([m])
    clock.advance(11)
    assert broker.recover() == 0  # a promotion is not a recovered lease
    assert broker.get(m.id).state == "queued"  # type: ignore[union-attr]


def test_a_long_delay_never_runs_early_or_twice(broker: Broker, make: Make, clock: FakeClock) -> None:
    m = make(run_at=clock() + 10 * LEASE)
    broker.enqueue([m])
    for _ in range(9):
        clock.advance(LEASE + 1)
        broker.recover()
        assert fetch(broker) == []
    record = broker.get(m.id)
    assert record is not None
    assert (record.state, record.attempts, record.lease_until) == ("scheduled", 0, None)
    clock.advance(LEASE)
    assert ids(fetch(broker)) == [m.id]
    assert fetch(broker) == []


def test_due_jobs_keep_priority_order(broker: Broker, make: Make, clock: FakeClock) -> None:
    later_low = make(run_at=clock() + 5)
    later_high = make(run_at=clock() + 10, priority=5)
    now_mid = make(priority=1)
    broker.enqueue([later_low, later_high, now_mid])
    clock.advance(20)
    assert ids(fetch(broker)) == [later_high.id, now_mid.id, later_low.id]
