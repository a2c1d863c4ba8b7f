"""Contract: the names of the design (add, claim, expire, search_jobs(JobQuery)) on every broker, and
``store`` (the broker itself for a store that claims natively)."""

from __future__ import annotations

from collections.abc import Callable

from conveyor.brokers import Broker, JobQuery, Message
from conveyor.brokers.paired import PairedBroker
from conveyor.testing import FakeClock

Make = Callable[..., Message]


def test_add_claim_and_expire_are_the_lifecycle(broker: Broker, make: Make, clock: FakeClock) -> None:
    m = make(max_attempts=2)
    assert broker.add([m]) == [m.id]
    (lease,) = broker.claim(["default"], 1, 10.0, "c1")
    assert (lease.job_id, lease.attempt) == (m.id, 1)
    clock.advance(11)
    assert broker.expire() == 1
    assert broker.get(m.id).state == "queued"  # type: ignore[union-attr]


def test_search_jobs_takes_one_job_query(broker: Broker, make: Make, clock: FakeClock) -> None:
    a = make(queue="a", task="t.one")
    b = make(queue="b", task="t.two")
    broker.enqueue([a, b])
    assert [j.id for j in broker.search_jobs(JobQuery(queue="a")).jobs] == [a.id]
    query = JobQuery(task="t.two", since=clock() - 1, until=clock() + 1, limit=5)
    assert [j.id for j in broker.search_jobs(query).jobs] == [b.id]
    assert broker.search_jobs(JobQuery(search="no such text")).jobs == []
    assert [j.id for j in broker.search_jobs(JobQuery(limit=1)).jobs] == [b.id]


def test_the_store_behind_the_broker(broker: Broker) -> None:
    if isinstance(broker, PairedBroker):
        assert broker.store is not broker and not isinstance(broker.store, PairedBroker)
    else:
        assert broker.store is broker
