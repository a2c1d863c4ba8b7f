"""Contract of the pairing axis: what a PairedBroker adds over its store — the outbox, duplicate and
stale deliveries, the hand-back in place, wait() — for every store the memory transport pairs with,
and a real worker (thread pool) running jobs carried by the memory transport for a SQLite store and
for a Redis store."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.brokers import Broker, Dispatch, Message, Outcome
from conveyor.brokers.memory_transport import MemoryTransport
from conveyor.brokers.paired import PairedBroker
from conveyor.errors import BrokerError
from conveyor.worker.supervisor import Supervisor

LEASE = 30.0
Make = Callable[..., Message]


class FlakyTransport(MemoryTransport):
    """The memory transport, whose sends fail while ``down`` is set (a lost send)."""

    down = False

    def send(self, dispatches: Sequence[Dispatch]) -> None:
        if self.down:
            raise BrokerError("the transport is down")
        super().send(dispatches)


@pytest.fixture
def paired(paired_store: Broker) -> Iterator[PairedBroker]:
    broker = PairedBroker(FlakyTransport(), paired_store)
    broker.open()
    try:
        yield broker
    finally:
        drop = getattr(paired_store, "drop", None)  # stores on a shared server delete their keys
        if drop is not None:
            drop()
        broker.close()


def transport(broker: PairedBroker) -> FlakyTransport:
    assert isinstance(broker.transport, FlakyTransport)
    return broker.transport


def fetch(broker: PairedBroker, limit: int = 100) -> list[str]:
    return [lease.job_id for lease in broker.fetch(["default"], limit, LEASE, "c1")]


def test_a_lost_send_is_sent_again_by_maintenance(paired: PairedBroker, make: Make) -> None:
    transport(paired).down = True
    m = make()
    assert paired.enqueue([m]) == [m.id]  # written: the job is safe in the store
    assert paired.get(m.id).state == "queued"  # type: ignore[union-attr]
    assert fetch(paired) == []
    transport(paired).down = False
    assert paired.recover() == 0
    assert fetch(paired) == [m.id]
    paired.recover()
    assert transport(paired).depth("default") == 0  # sent once: the outbox was emptied


def test_enqueue_sending_stores_the_jobs_and_calls_send_once(paired: PairedBroker, make: Make) -> None:
    """The store hook under a paired enqueue: ``send`` once, during or after the write."""
    calls: list[int] = []
    batch = [make(), make()]
    assert paired.store.enqueue_sending(batch, lambda: calls.append(len(calls))) == [m.id for m in batch]
    single = make()
    assert paired.store.enqueue_sending([single], lambda: calls.append(len(calls))) == [single.id]
    assert calls == [0, 1]
    assert [r and r.state for r in paired.store.get_many([*[m.id for m in batch], single.id])] == ["queued"] * 3


def test_a_duplicate_delivery_is_dropped(paired: PairedBroker, make: Make) -> None:
    m = make()
    paired.enqueue([m])
    transport(paired).send([Dispatch(m.id, "default")])  # e.g. redelivered after a lost settle
    assert fetch(paired) == [m.id]
    assert fetch(paired) == []
    assert transport(paired).depth("default") == 0
    record = paired.get(m.id)
    assert record is not None and (record.state, record.attempts) == ("running", 1)


@pytest.mark.parametrize("how", ["cancel", "delete"])
def test_deliveries_of_cancelled_and_deleted_jobs_are_dropped(paired: PairedBroker, make: Make, how: str) -> None:
    gone, kept = make(), make()
    paired.enqueue([gone, kept])
    if how == "cancel":
        paired.cancel(gone.id)
    else:
        assert paired.delete(gone.id)
    assert fetch(paired, limit=1) == [kept.id]  # the dropped delivery made room for the next
    assert transport(paired).depth("default") == 0


def test_a_retry_by_hand_in_the_store_alone_is_sent_by_maintenance(paired: PairedBroker, make: Make) -> None:
    """The web app and the CLI may write to app.store directly: the outbox still carries the job."""
    m = make()
    paired.enqueue([m])
    (lease,) = paired.fetch(["default"], 1, LEASE, "c1")
    paired.ack([Outcome(lease.job_id, lease.token, "failed", error={"type": "X"})])
    assert paired.store.retry(m.id) == "queued"
    assert fetch(paired) == []
    paired.recover()
    assert fetch(paired) == [m.id]


def test_a_hand_back_requeues_the_same_delivery(paired: PairedBroker, make: Make) -> None:
    first, second = make(), make()
    paired.enqueue([first, second])
    (lease,) = paired.fetch(["default"], 1, LEASE, "c1")
    assert paired.ack([Outcome(lease.job_id, lease.token, "queued")]) == [True]
    assert transport(paired).depth("default") == 2  # no second delivery of it
    paired.recover()
    assert transport(paired).depth("default") == 2
    assert fetch(paired) == [first.id, second.id]


def test_wait_keeps_the_delivery_for_the_next_fetch(paired: PairedBroker, make: Make) -> None:
    m = make()
    paired.enqueue([m])
    paired.wait(["default"], 1.0)
    assert transport(paired).depth("default") == 0  # received, held for this broker
    assert fetch(paired) == [m.id]


def test_a_paused_queue_keeps_its_deliveries(paired: PairedBroker, make: Make) -> None:
    m = make()
    paired.enqueue([m])
    paired.pause("default")
    assert fetch(paired) == []
    assert transport(paired).depth("default") == 1
    paired.resume("default")
    assert fetch(paired) == [m.id]


def test_jobs_a_lost_memory_transport_held_are_sent_again_on_open(paired: PairedBroker, make: Make) -> None:
    """The memory transport dies with its process: the next one sends the queued jobs again."""
    done, kept = make(), make()
    paired.enqueue([done, kept])
    (lease,) = paired.fetch(["default"], 1, LEASE, "c1")
    assert lease.job_id == done.id
    paired.ack([Outcome(lease.job_id, lease.token, "succeeded")])
    restarted = PairedBroker(MemoryTransport(), paired.store)
    restarted.open()
    assert [x.job_id for x in restarted.fetch(["default"], 10, LEASE, "c2")] == [kept.id]


def test_capabilities_come_from_the_transport(paired: PairedBroker) -> None:
    assert paired.supports_blocking_fetch is True and paired.supports_priorities is True
    assert paired.shared_between_processes is False  # the memory transport lives in one process
    assert paired.scheme == "memory"


def test_a_worker_runs_jobs_the_memory_transport_carries_for_a_sqlite_store(tmp_path: Path) -> None:
    runs_jobs(Conveyor("memory://", store=f"sqlite:///{tmp_path}/jobs.db", pool="thread", concurrency=2, grace=5.0))


def test_a_worker_runs_jobs_the_memory_transport_carries_for_a_redis_store(redis_url: str) -> None:
    from conveyor.brokers.redis import RedisBroker

    app = Conveyor("memory://", store=redis_url, pool="thread", concurrency=2, grace=5.0)
    assert isinstance(app.broker, PairedBroker) and isinstance(app.store, RedisBroker)
    runs_jobs(app)


def runs_jobs(app: Conveyor) -> None:
    """A worker of ``app`` in this process (thread pool) runs 20 jobs and fails one that raises."""

    @app.task(retries=1, backoff=0.01)
    def add(a: int, b: int) -> int:
        return a + b

    @app.task(retries=0)
    def boom() -> None:
        raise RuntimeError("boom")

    jobs = add.enqueue_many([(i, i) for i in range(20)])
    failing = boom.enqueue()
    supervisor = Supervisor(app)
    runner = threading.Thread(target=supervisor.run, kwargs={"install_signals": False}, daemon=True)
    runner.start()
    try:
        assert [j.result(timeout=30) for j in jobs] == [2 * i for i in range(20)]
        with pytest.raises(Exception, match="boom"):
            failing.result(timeout=30)
        assert app.store.get(failing.id).state == "failed"  # type: ignore[union-attr]
    finally:
        supervisor.stop()
        runner.join(30)
    assert not runner.is_alive()
